package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
)

// The audit load of the data path's configurations (g), (h) and (i): policies
// annotated nftpolicy.io/mode: audit, judged in shadow copies of the class chains of
// the pods they select, never enforced.
//
//   - In the synthetic namespaces whose pods run on node1 and node2 (syn-0000 to
//     syn-0003, 200 pods), an audited deny-all (ingress and egress) and two audited
//     allow policies (ingress from the namespaces of a team on 8080, egress to a DNS
//     address on UDP 53): every synthetic pod of the measured nodes is dispatched to
//     a shadow copy of its class.
//   - In the bench namespace, an audited ingress deny-all selecting server2 only.
//
// No audited policy selects the client or the server, so (g) — (d) plus this load,
// the flow client → server — measures what the load costs pods no audited policy
// selects (the target: unchanged, (g)/(d) ≥ 0.95). (h) is the same ruleset
// with the flow client2 → server2, whose server an audited deny-all selects: its new
// connections walk the shadow copy of server2's class and then the enforced copy the
// shadow's verdict leads to. (i) is (d)'s ruleset with that flow: server2 unselected.
// h/i is the shadow evaluation's cost (reported, no target).

// auditNamespaces are the synthetic namespaces of the pods of node1 and node2 (blocks
// 0 and 1, see synNode) that the scale s has.
func auditNamespaces(s Scale) []string {
	var out []string
	for i := range min(2*synPodsPerNode/synPodsPerNS, synNamespaceCount(s)) {
		out = append(out, synNamespace(i))
	}
	return out
}

// auditServerPolicy is the audited deny-all of configuration (h): server2's ingress.
const auditServerPolicy = "server2-audit-deny-all"

func audited(np *networkingv1.NetworkPolicy) *networkingv1.NetworkPolicy {
	np.Annotations = map[string]string{compiler.AuditAnnotation: compiler.ModeAudit}
	return np
}

// auditPolicies returns the audit load (see above) at scale s.
func auditPolicies(s Scale) []*networkingv1.NetworkPolicy {
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	http, dns := intstr.FromInt32(sinkPort), intstr.FromInt32(53)
	var out []*networkingv1.NetworkPolicy
	for i, ns := range auditNamespaces(s) {
		out = append(out,
			audited(&networkingv1.NetworkPolicy{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "audit-deny-all"},
				Spec: networkingv1.NetworkPolicySpec{
					PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
				},
			}),
			audited(&networkingv1.NetworkPolicy{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "audit-allow-team"},
				Spec: networkingv1.NetworkPolicySpec{
					Ingress: []networkingv1.NetworkPolicyIngressRule{{
						From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("t%d", (i+5)%10)}}}},
						Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &http}},
					}},
					PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
				},
			}),
			audited(&networkingv1.NetworkPolicy{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "audit-allow-dns"},
				Spec: networkingv1.NetworkPolicySpec{
					Egress: []networkingv1.NetworkPolicyEgressRule{{
						To:    []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.96.0.10/32"}}},
						Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: &dns}},
					}},
					PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
				},
			}))
	}
	return append(out, audited(&networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: benchNS, Name: auditServerPolicy},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server2"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		},
	}))
}

// AuditLoad describes the audit load of configurations (g), (h) and (i).
type AuditLoad struct {
	Policies int `json:"policies"`
	// Namespaces is the number of synthetic namespaces holding audited policies.
	Namespaces int `json:"namespaces"`
	// ShadowChains counts, per node, the chains of the captured table (g) that audit
	// mode added: shadow-, enforce-, audit-deny- and audit-allow- chains.
	ShadowChains map[string]int `json:"audit_chains"`
}

// auditRuleset creates the audit load, captures configuration (g) (checking that the
// agents dispatch server2 to a shadow chain and the client and the server to chains of
// their own), and removes the load again, also on failure.
func (a AuditLoad) describe(bg Scale) string {
	return fmt.Sprintf("%d audited NetworkPolicies over %s (a deny-all and two allow policies in each of the %d namespaces of the nodes' synthetic pods, "+
		"an ingress deny-all of server2); none selects client or server; %d/%d chains added by audit mode on node1/node2",
		a.Policies, bg, a.Namespaces, a.ShadowChains["node1"], a.ShadowChains["node2"])
}

func (r *runner) auditRuleset(ctx context.Context) (err error) {
	e := r.env
	pols := auditPolicies(e.loaded)
	r.rep.DataPath.Audit = &AuditLoad{Policies: len(pols), Namespaces: len(auditNamespaces(e.loaded)), ShadowChains: map[string]int{}}
	defer func() {
		// Also after an interrupt: (e) and everything after must not see them.
		// A failure fails the step: what follows would measure with them.
		err = errors.Join(err, e.deletePolicies(context.WithoutCancel(ctx), pols))
	}()
	for _, np := range pols {
		if _, err := e.cs.NetworkingV1().NetworkPolicies(np.Namespace).Create(ctx, np, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create audited policy %s/%s: %w", np.Namespace, np.Name, err)
		}
	}
	if err := r.captureRuleset(ctx, "g"); err != nil {
		return err
	}
	for node, text := range r.rulesets["g"] {
		checks := map[string]bool{}
		switch node {
		case "node1":
			checks[e.pair.client.IPv4.String()] = false
		case "node2":
			checks[e.pair.server.IPv4.String()] = false
			checks[e.pair2.server.IPv4.String()] = true
		}
		n, err := checkAuditTable(text, compiler.MapIngressV4, checks)
		if node == "node1" && err == nil {
			// The client is isolated for egress: its egress dispatch must not be shadowed.
			n, err = checkAuditTable(text, compiler.MapEgressV4, checks)
		}
		if err != nil {
			delete(r.rulesets, "g") // (g), (h) are left out of the rounds
			return fmt.Errorf("%s: %w", node, err)
		}
		r.rep.DataPath.Audit.ShadowChains[node] = n
	}
	r.opts.logf("   audit chains in the captured tables: node1 %d, node2 %d", r.rep.DataPath.Audit.ShadowChains["node1"], r.rep.DataPath.Audit.ShadowChains["node2"])
	return nil
}

func (e *env) deletePolicies(ctx context.Context, pols []*networkingv1.NetworkPolicy) error {
	var errs []error
	for _, np := range pols {
		err := e.cs.NetworkingV1().NetworkPolicies(np.Namespace).Delete(ctx, np.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete policy %s/%s: %w", np.Namespace, np.Name, err))
		}
	}
	return errors.Join(errs...)
}

// auditChainPrefixes start the names of the chains audit mode adds (pkg/compiler's
// audit.go).
var auditChainPrefixes = []string{"shadow-", "enforce-", "audit-deny-", "audit-allow-"}

// checkAuditTable checks an agent's table (nft -s list table): in the verdict map
// dispatch, each address of want (an IP) must have an element whose chain is a
// shadow chain (want true) or not (want false); the table must have some shadow
// chain. It returns the number of chains audit mode added.
func checkAuditTable(text, dispatch string, want map[string]bool) (int, error) {
	chains := 0
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if name, ok := strings.CutPrefix(line, "chain "); ok {
			name = strings.Trim(strings.TrimSuffix(name, " {"), `"`)
			for _, p := range auditChainPrefixes {
				if strings.HasPrefix(name, p) {
					chains++
					break
				}
			}
		}
	}
	if chains == 0 {
		return 0, errors.New("the agent's table has no audit chain (does the agent read the nftpolicy.io/mode annotation?)")
	}
	for ip, shadow := range want {
		chain, ok := dispatchChain(text, dispatch, ip)
		switch {
		case !ok && shadow:
			return 0, fmt.Errorf("map %s has no element for %s", dispatch, ip)
		case !ok:
			continue // not isolated in that direction: not shadowed either
		case shadow != strings.HasPrefix(chain, "shadow-"):
			return 0, fmt.Errorf("map %s sends %s to %s; want a shadow chain: %v", dispatch, ip, chain, shadow)
		}
	}
	return chains, nil
}

// dispatchChain returns the chain the verdict map named mapName (in nft's listing of a
// table) jumps or goes to for the address ip.
func dispatchChain(text, mapName, ip string) (string, bool) {
	start := -1
	for _, head := range []string{"map " + mapName + " {", `map "` + mapName + `" {`} {
		if i := strings.Index(text, head); i >= 0 {
			start = i + len(head)
			break
		}
	}
	if start < 0 {
		return "", false
	}
	body := text[start:]
	// The map ends at the first line holding only a closing brace (its elements'
	// braces share lines with elements).
	if end := regexp.MustCompile(`(?m)^\s*}\s*$`).FindStringIndex(body); end != nil {
		body = body[:end[0]]
	}
	m := regexp.MustCompile(`(?:^|[\s{,])` + regexp.QuoteMeta(ip) + ` : (?:jump|goto) "?([^\s,"}]+)`).FindStringSubmatch(body)
	if m == nil {
		return "", false
	}
	return m[1], true
}
