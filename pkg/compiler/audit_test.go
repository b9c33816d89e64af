package compiler

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
	"github.com/nftpolicy/nftpolicy/pkg/tracer"
)

func audit[T metav1.Object](o T) T {
	a := o.GetAnnotations()
	if a == nil {
		a = map[string]string{}
	}
	a[AuditAnnotation] = ModeAudit
	o.SetAnnotations(a)
	return o
}

// auditOf judges a TCP connection like verdict and returns, with the verdict, the
// audit chains it counted in: "audit-deny ingress [x/deny-all]".
func (c *cluster) auditOf(from, to string, port uint16) (bool, []string) {
	c.t.Helper()
	src, dst := c.endpoint(from, ruleset.IPv4), c.endpoint(to, ruleset.IPv4)
	rulesets := map[string]*ruleset.Ruleset{}
	j, _ := tracer.Judge(src, dst, tracer.Packet{Proto: 6, DPort: port}, func(node string) (*tracer.Tracer, error) {
		rulesets[node] = c.compile(node).Ruleset
		return tracer.New(rulesets[node]), nil
	})
	var hits []string
	for _, h := range j.Hops {
		for _, s := range h.Result.Steps {
			co := rulesets[h.Node].Owners.Chain(s.Chain)
			if co != nil && (co.Role == ruleset.RoleAuditDeny || co.Role == ruleset.RoleAuditAllow) && s.Verdict != "" {
				var pols []string
				for _, p := range co.Policies {
					pols = append(pols, p.String())
				}
				hits = append(hits, string(co.Role)+" "+string(co.Direction)+" ["+strings.Join(pols, " ")+"]")
			}
		}
	}
	return j.Allowed(), hits
}

func (c *cluster) expectAudit(from, to string, port uint16, allowed bool, hits ...string) {
	c.t.Helper()
	got, gotHits := c.auditOf(from, to, port)
	if got != allowed || !slices.Equal(gotHits, hits) {
		c.t.Errorf("%s -> %s TCP/%d: allowed=%v, audit %q; want allowed=%v, audit %q", from, to, port, got, gotHits, allowed, hits)
	}
}

// TestAuditDenyAll: an audited deny-all drops nothing and counts every connection it
// would deny, in the direction it isolates; nothing else is counted.
func TestAuditDenyAll(t *testing.T) {
	c := upstream(t)
	c.policy(audit(types(netpol("x", "deny-all", nil), networkingv1.PolicyTypeIngress)))
	c.expectAudit("y/a", "x/a", 80, true, "audit-deny ingress [x/deny-all]")
	c.expectAudit("x/b", "x/c", 81, true, "audit-deny ingress [x/deny-all]")
	c.expectAudit("x/a", "y/b", 80, true)
	c.expectAudit("y/a", "z/b", 80, true)
}

// TestAuditBesideEnforced: an audited policy among enforced ones — the enforced
// verdicts stand; audit-deny where the audited policy newly isolates, audit-allow where
// it would open what the enforced ones drop.
func TestAuditBesideEnforced(t *testing.T) {
	c := upstream(t)
	// Enforced: x/a only from pod b. Audited: x/a also from namespace z (would allow
	// more), and x/b only from x (would deny what is open today).
	c.policy(ingress(netpol("x", "a-from-b", m("pod", "a")), from(podSel(m("pod", "b")))))
	c.policy(audit(ingress(netpol("x", "a-from-z", m("pod", "a")), from(nsSel(m(NamespaceNameLabel, "z"))))))
	c.policy(audit(ingress(netpol("x", "b-from-x", m("pod", "b")), from(podSel(nil)))))
	c.expectAudit("x/b", "x/a", 80, true)
	c.expectAudit("z/c", "x/a", 80, false, "audit-allow ingress [x/a-from-z]")
	c.expectAudit("y/c", "x/a", 80, false)
	c.expectAudit("x/c", "x/b", 80, true)
	c.expectAudit("y/a", "x/b", 80, true, "audit-deny ingress [x/b-from-x]")
}

// TestAuditClusterPolicy: an audited Admin Deny overriding an enforced NetworkPolicy
// allow, and an audited Admin Accept over an enforced deny-all.
func TestAuditClusterPolicy(t *testing.T) {
	c := upstream(t)
	c.policy(ingress(netpol("x", "allow-all", nil), networkingv1.NetworkPolicyIngressRule{}))
	c.clusterPolicy(audit(cIngress(adminPol("no-y-to-x", 10, nsSubject("x")), deny, "block-y", peers(peerNS("y")))))
	c.expectAudit("y/a", "x/a", 80, true, "audit-deny ingress [ClusterNetworkPolicy/no-y-to-x]")
	c.expectAudit("z/a", "x/a", 80, true)

	c = upstream(t)
	c.policy(types(netpol("y", "deny-all", nil), networkingv1.PolicyTypeIngress))
	c.clusterPolicy(audit(cIngress(adminPol("x-to-y", 10, nsSubject("y")), accept, "", peers(peerNS("x")))))
	c.expectAudit("x/a", "y/a", 80, false, "audit-allow ingress [ClusterNetworkPolicy/x-to-y]")
	c.expectAudit("z/a", "y/a", 80, false)
}

// TestAuditWholeNode: Options.Audit enforces nothing and counts every drop, charged to
// what drops: the isolating NetworkPolicies or the ClusterNetworkPolicy Deny rule.
func TestAuditWholeNode(t *testing.T) {
	c := upstream(t)
	c.opts = Options{Audit: true, LogDenied: true}
	c.policy(types(netpol("x", "deny-all", nil), networkingv1.PolicyTypeIngress))
	c.policy(types(egress(netpol("y", "to-z", m("pod", "a")), to(nsSel(m(NamespaceNameLabel, "z")))), networkingv1.PolicyTypeEgress))
	c.clusterPolicy(cIngress(adminPol("no-x-to-z", 10, nsSubject("z")), deny, "block-x", peers(peerNS("x"))))
	c.expectAudit("y/b", "x/a", 80, true, "audit-deny ingress [x/deny-all]")
	c.expectAudit("y/a", "x/a", 80, true, "audit-deny egress [y/to-z]", "audit-deny ingress [x/deny-all]")
	c.expectAudit("y/a", "z/b", 80, true)
	c.expectAudit("x/a", "z/b", 80, true, "audit-deny ingress [ClusterNetworkPolicy/no-x-to-z]")
	c.expectAudit("z/a", "y/b", 80, true)
	for _, node := range []string{"n1", "n2"} {
		rs := c.compile(node).Ruleset
		for _, ch := range rs.Chains {
			for _, r := range ch.Rules {
				if r.Verdict == ruleset.Drop {
					t.Errorf("%s: chain %s drops under Options.Audit: %s", node, ch.Name, ruleset.FormatRule(r))
				}
			}
		}
	}
}

// TestAuditLeavesOthersAlone: pods no audited policy selects keep their dispatch
// element and chain; removing the annotation gives the enforced ruleset of the policy
// exactly, in one compile.
func TestAuditLeavesOthersAlone(t *testing.T) {
	c := upstream(t)
	c.policy(ingress(netpol("y", "from-x", nil), from(nsSel(m(NamespaceNameLabel, "x")))))
	plain := c.compile("n1").Ruleset
	deny := types(netpol("x", "deny-all", m("pod", "a")), networkingv1.PolicyTypeIngress)
	c.policy(audit(deny))
	audited := c.compile("n1").Ruleset
	elems := func(rs *ruleset.Ruleset, pod string) string {
		ip := c.find(pod).IPs[0]
		for _, e := range rs.Set(MapIngressV4).Elements {
			if bytes.Equal(ip.AsSlice(), e.Key[0].From) {
				return e.Verdict.String()
			}
		}
		return ""
	}
	if a, b := elems(plain, "y/a"), elems(audited, "y/a"); a == "" || a != b {
		t.Errorf("y/a dispatch changed by an audit of x: %q -> %q", a, b)
	}
	if got := elems(audited, "x/a"); !strings.HasPrefix(got, "jump shadow-in-") {
		t.Errorf("x/a dispatch %q, want the shadow chain", got)
	}
	if got := elems(audited, "x/c"); got != "" {
		t.Errorf("x/c (not selected) dispatched to %q", got)
	}
	delete(deny.Annotations, AuditAnnotation)
	enforced := c.compile("n1").Ruleset
	c2 := upstream(t)
	c2.policy(ingress(netpol("y", "from-x", nil), from(nsSel(m(NamespaceNameLabel, "x")))))
	c2.policy(types(netpol("x", "deny-all", m("pod", "a")), networkingv1.PolicyTypeIngress))
	if d := ruleset.Diff(c2.compile("n1").Ruleset, enforced); !d.Empty() {
		t.Errorf("without the annotation the ruleset differs from the enforced policy's:\n%s", ruleset.Render(enforced))
	}
	c.expectAudit("y/a", "x/a", 80, false)
}

// TestAuditAnnotationValues: enforce is the default, an unknown mode is reported and
// enforced (a typo must not open anything).
func TestAuditAnnotationValues(t *testing.T) {
	for _, tc := range []struct {
		mode    string
		allowed bool
		problem string
	}{
		{ModeEnforce, false, ""},
		{ModeAudit, true, ""},
		{"Audit", false, `NetworkPolicy x/deny-all: metadata.annotations[nftpolicy.io/mode]: unknown mode "Audit" (want "audit" or "enforce"): the policy is enforced`},
	} {
		c := upstream(t)
		np := types(netpol("x", "deny-all", nil), networkingv1.PolicyTypeIngress)
		np.Annotations = map[string]string{AuditAnnotation: tc.mode}
		c.policy(np)
		c.expectAudit("y/a", "x/a", 80, tc.allowed, map[bool][]string{true: {"audit-deny ingress [x/deny-all]"}}[tc.allowed]...)
		var problems []string
		for _, p := range c.compile("n1").Problems {
			problems = append(problems, p.Error())
		}
		if want := map[bool][]string{true: {tc.problem}}[tc.problem != ""]; !slices.Equal(problems, want) {
			t.Errorf("mode %q: problems %q, want %q", tc.mode, problems, want)
		}
	}
}

// TestAuditDenyLog: under LogDenied the audit-deny chain logs with its name as prefix,
// which AuditDenyChainOf reads back (and IsolationChainOf does not claim).
func TestAuditDenyLog(t *testing.T) {
	c := upstream(t)
	c.opts = Options{LogDenied: true}
	c.policy(audit(types(netpol("x", "deny-all", nil), networkingv1.PolicyTypeIngress)))
	rs := c.compile("n1").Ruleset
	found := false
	for _, ch := range rs.Chains {
		co := rs.Owners.Chain(ch.Name)
		for _, r := range ch.Rules {
			if r.Log == nil {
				continue
			}
			if co.Role != ruleset.RoleAuditDeny {
				t.Errorf("log rule in %s chain %s", co.Role, ch.Name)
				continue
			}
			found = true
			name, dir, ok := AuditDenyChainOf(r.Log.Prefix)
			if !ok || name != ch.Name || dir != Ingress {
				t.Errorf("AuditDenyChainOf(%q) = %q, %s, %v", r.Log.Prefix, name, dir, ok)
			}
			if _, _, ok := IsolationChainOf(r.Log.Prefix); ok {
				t.Errorf("IsolationChainOf claims %q", r.Log.Prefix)
			}
		}
	}
	if !found {
		t.Fatalf("no audit log rule:\n%s", ruleset.Render(rs))
	}
	_ = corev1.ProtocolTCP
}
