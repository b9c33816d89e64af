package compiler

import (
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// --- ClusterNetworkPolicy builders ---

func clusterPol(tier cnp.Tier, name string, prio int32, subj cnp.ClusterNetworkPolicySubject) *cnp.ClusterNetworkPolicy {
	return &cnp.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: cnp.ClusterNetworkPolicySpec{Tier: tier, Priority: prio, Subject: subj}}
}

func adminPol(name string, prio int32, subj cnp.ClusterNetworkPolicySubject) *cnp.ClusterNetworkPolicy {
	return clusterPol(cnp.AdminTier, name, prio, subj)
}

func baselinePol(name string, prio int32, subj cnp.ClusterNetworkPolicySubject) *cnp.ClusterNetworkPolicy {
	return clusterPol(cnp.BaselineTier, name, prio, subj)
}

// nsSubject selects the pods of the named namespaces.
func nsSubject(names ...string) cnp.ClusterNetworkPolicySubject {
	return cnp.ClusterNetworkPolicySubject{Namespaces: nsNames(names...)}
}

func podSubject(ns *metav1.LabelSelector, pods map[string]string) cnp.ClusterNetworkPolicySubject {
	return cnp.ClusterNetworkPolicySubject{Pods: &cnp.NamespacedPod{NamespaceSelector: *ns, PodSelector: metav1.LabelSelector{MatchLabels: pods}}}
}

// nsNames selects namespaces by name; none: every namespace.
func nsNames(names ...string) *metav1.LabelSelector {
	if len(names) == 0 {
		return &metav1.LabelSelector{}
	}
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
		{Key: NamespaceNameLabel, Operator: metav1.LabelSelectorOpIn, Values: names}}}
}

type cpeer = cnp.ClusterNetworkPolicyEgressPeer

func peerNS(names ...string) cpeer { return cpeer{Namespaces: nsNames(names...)} }
func peerPods(ns *metav1.LabelSelector, pods map[string]string) cpeer {
	return cpeer{Pods: &cnp.NamespacedPod{NamespaceSelector: *ns, PodSelector: metav1.LabelSelector{MatchLabels: pods}}}
}
func peerNets(cidrs ...string) cpeer {
	var out []cnp.CIDR
	for _, c := range cidrs {
		out = append(out, cnp.CIDR(c))
	}
	return cpeer{Networks: out}
}
func peerNodes(l map[string]string) cpeer { return cpeer{Nodes: &metav1.LabelSelector{MatchLabels: l}} }

func cTCP(n int32) cnp.ClusterNetworkPolicyProtocol {
	return cnp.ClusterNetworkPolicyProtocol{TCP: &cnp.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnp.Port{Number: n}}}
}
func cUDP(n int32) cnp.ClusterNetworkPolicyProtocol {
	return cnp.ClusterNetworkPolicyProtocol{UDP: &cnp.ClusterNetworkPolicyProtocolUDP{DestinationPort: &cnp.Port{Number: n}}}
}
func cTCPRange(from, to int32) cnp.ClusterNetworkPolicyProtocol {
	return cnp.ClusterNetworkPolicyProtocol{TCP: &cnp.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnp.Port{Range: &cnp.PortRange{Start: from, End: to}}}}
}
func cNamed(name string) cnp.ClusterNetworkPolicyProtocol {
	return cnp.ClusterNetworkPolicyProtocol{DestinationNamedPort: name}
}

// cIngress adds an ingress rule: peers are given as egress peers and may only use
// namespaces and pods.
func cIngress(p *cnp.ClusterNetworkPolicy, action cnp.ClusterNetworkPolicyRuleAction, name string, peers []cpeer, protos ...cnp.ClusterNetworkPolicyProtocol) *cnp.ClusterNetworkPolicy {
	r := cnp.ClusterNetworkPolicyIngressRule{Name: name, Action: action, Protocols: protos}
	for _, pe := range peers {
		r.From = append(r.From, cnp.ClusterNetworkPolicyIngressPeer{Namespaces: pe.Namespaces, Pods: pe.Pods})
	}
	p.Spec.Ingress = append(p.Spec.Ingress, r)
	return p
}

func cEgress(p *cnp.ClusterNetworkPolicy, action cnp.ClusterNetworkPolicyRuleAction, name string, peers []cpeer, protos ...cnp.ClusterNetworkPolicyProtocol) *cnp.ClusterNetworkPolicy {
	p.Spec.Egress = append(p.Spec.Egress, cnp.ClusterNetworkPolicyEgressRule{Name: name, Action: action, To: peers, Protocols: protos})
	return p
}

func peers(ps ...cpeer) []cpeer { return ps }

const (
	accept = cnp.ClusterNetworkPolicyRuleActionAccept
	deny   = cnp.ClusterNetworkPolicyRuleActionDeny
	pass   = cnp.ClusterNetworkPolicyRuleActionPass
)

// --- tiers ---

func TestAdminDenyOverridesNetworkPolicy(t *testing.T) {
	c := upstream(t)
	// x allows everything in; the admin denies y → x anyway.
	c.policy(ingress(netpol("x", "allow-all", nil), networkingv1.NetworkPolicyIngressRule{}))
	c.clusterPolicy(cIngress(adminPol("no-y-to-x", 10, nsSubject("x")), deny, "block-y", peers(peerNS("y"))))
	for _, fam := range []ruleset.Family{ruleset.IPv4, ruleset.IPv6} {
		c.expectFamily(fam,
			tcp("y/a", "x/a", 80, false), tcp("y/b", "x/c", 81, false),
			tcp("z/a", "x/a", 80, true), tcp("x/b", "x/a", 80, true),
			tcp("x/a", "y/a", 80, true)) // egress of x is not the subject's ingress
	}
}

func TestAdminAcceptOverridesNetworkPolicyDeny(t *testing.T) {
	c := upstream(t)
	c.policy(types(netpol("x", "deny-all", nil), networkingv1.PolicyTypeIngress))
	c.clusterPolicy(cIngress(adminPol("y-to-x", 10, nsSubject("x")), accept, "", peers(peerNS("y"))))
	c.expect(tcp("y/a", "x/a", 80, true), tcp("y/b", "x/b", 80, true),
		tcp("z/a", "x/a", 80, false), tcp("x/b", "x/a", 80, false))
}

func TestAdminPassHandsOverToNetworkPolicy(t *testing.T) {
	c := upstream(t)
	// Admin: pass y → x, then (priority 20) deny everything into x. x's NetworkPolicy
	// allows y/a only: y/a passes and is allowed, y/b passes and is denied by the
	// NetworkPolicy, z is denied by the admin.
	c.clusterPolicy(cIngress(adminPol("pass-y", 10, nsSubject("x")), pass, "", peers(peerNS("y"))))
	c.clusterPolicy(cIngress(adminPol("deny-into-x", 20, nsSubject("x")), deny, "", peers(peerNS())))
	c.policy(ingress(netpol("x", "from-y-a", nil), from(nsPodSel(m(NamespaceNameLabel, "y"), m("pod", "a")))))
	c.expect(tcp("y/a", "x/a", 80, true), tcp("y/b", "x/a", 80, false), tcp("z/a", "x/a", 80, false))
}

func TestAdminPassWithoutNetworkPolicyReachesBaseline(t *testing.T) {
	c := upstream(t)
	c.clusterPolicy(cIngress(adminPol("pass-y", 10, nsSubject("x")), pass, "", peers(peerNS("y"))))
	c.clusterPolicy(cIngress(adminPol("accept-z", 11, nsSubject("x")), accept, "", peers(peerNS("z"))))
	c.clusterPolicy(cIngress(baselinePol("deny-into-x", 10, nsSubject("x")), deny, "", peers(peerNS())))
	c.expect(tcp("y/a", "x/a", 80, false), tcp("z/a", "x/a", 80, true), tcp("x/b", "x/a", 80, false),
		tcp("x/a", "y/a", 80, true))
}

func TestAdminPassWithNothingAfterAllows(t *testing.T) {
	c := upstream(t)
	c.clusterPolicy(cIngress(cIngress(adminPol("pass-then-deny", 10, nsSubject("x")), pass, "", peers(peerNS("y"))),
		deny, "", peers(peerNS())))
	c.expect(tcp("y/a", "x/a", 80, true), tcp("z/a", "x/a", 80, false))
}

func TestBaselineOnlyWhereNoNetworkPolicyIsolates(t *testing.T) {
	c := upstream(t)
	c.clusterPolicy(cIngress(baselinePol("deny-into-x", 10, nsSubject("x")), deny, "", peers(peerNS())))
	// x/a is isolated by a NetworkPolicy allowing z: the baseline does not apply to it.
	c.policy(ingress(netpol("x", "a-from-z", m("pod", "a")), from(nsSel(m(NamespaceNameLabel, "z")))))
	c.expect(tcp("z/a", "x/a", 80, true), tcp("y/a", "x/a", 80, false),
		tcp("z/a", "x/b", 80, false), tcp("y/a", "x/c", 80, false), tcp("y/a", "y/b", 80, true))
}

func TestBaselinePassSkipsTheRestOfTheTier(t *testing.T) {
	c := upstream(t)
	c.clusterPolicy(cIngress(baselinePol("pass-y", 5, nsSubject("x")), pass, "", peers(peerNS("y"))))
	c.clusterPolicy(cIngress(baselinePol("deny-all", 6, nsSubject("x")), deny, "", peers(peerNS())))
	c.expect(tcp("y/a", "x/a", 80, true), tcp("z/a", "x/a", 80, false))
}

func TestPriorityOrder(t *testing.T) {
	for _, tc := range []struct {
		acceptPrio, denyPrio int32
		allowed              bool
	}{{10, 5, false}, {5, 10, true}} {
		c := upstream(t)
		c.clusterPolicy(cIngress(adminPol("accept-y", tc.acceptPrio, nsSubject("x")), accept, "", peers(peerNS("y"))))
		c.clusterPolicy(cIngress(adminPol("deny-y", tc.denyPrio, nsSubject("x")), deny, "", peers(peerNS("y"))))
		c.expect(tcp("y/a", "x/a", 80, tc.allowed), tcp("y/b", "x/c", 80, tc.allowed))
		if probs := c.compile("n1").Problems; len(probs) != 0 {
			t.Errorf("different priorities: problems %v", probs)
		}
	}
}

func TestRuleOrderWithinAPolicy(t *testing.T) {
	c := upstream(t)
	p := adminPol("ordered", 10, nsSubject("x"))
	cIngress(p, accept, "y-80", peers(peerNS("y")), cTCP(80))
	cIngress(p, deny, "rest-of-y", peers(peerNS("y")))
	c.clusterPolicy(p)
	c.expect(tcp("y/a", "x/a", 80, true), tcp("y/a", "x/a", 81, false), udp("y/a", "x/a", 80, false),
		tcp("z/a", "x/a", 81, true))
}

func TestSamePriorityIsOrderedByNameAndReported(t *testing.T) {
	c := upstream(t)
	c.clusterPolicy(cIngress(adminPol("b-deny", 10, nsSubject("x")), deny, "", peers(peerNS("y"))))
	c.clusterPolicy(cIngress(adminPol("a-accept", 10, nsSubject("x")), accept, "", peers(peerNS("y"))))
	c.expect(tcp("y/a", "x/a", 80, true)) // a-accept first, by name
	var named []string
	for _, p := range c.compile("n1").Problems {
		if !errors.Is(p.Err, ErrSamePriority) || p.Kind != ruleset.KindClusterNetworkPolicy || p.Field != "spec.priority" {
			t.Errorf("unexpected problem %v", p)
			continue
		}
		named = append(named, p.Name)
	}
	if strings.Join(named, ",") != "a-accept,b-deny" && strings.Join(named, ",") != "b-deny,a-accept" {
		t.Errorf("same-priority problems name %v, want both policies", named)
	}
	// Disjoint subjects of one priority are not a conflict.
	d := upstream(t)
	d.clusterPolicy(cIngress(adminPol("p1", 10, nsSubject("x")), deny, "", peers(peerNS("y"))))
	d.clusterPolicy(cIngress(adminPol("p2", 10, nsSubject("z")), deny, "", peers(peerNS("y"))))
	if probs := d.compile("n1").Problems; len(probs) != 0 {
		t.Errorf("disjoint subjects: problems %v", probs)
	}
}

func TestEgressAcceptDoesNotBypassIngress(t *testing.T) {
	c := upstream(t)
	c.clusterPolicy(cEgress(adminPol("x-out", 1, nsSubject("x")), accept, "", peers(peerNS())))
	c.clusterPolicy(cIngress(adminPol("y-in", 2, nsSubject("y")), deny, "", peers(peerNS("x"))))
	c.expect(tcp("x/a", "y/a", 80, false), tcp("x/a", "y/b", 80, false), tcp("x/a", "z/b", 80, true))
	// And an egress Deny at the source is final whatever the destination allows.
	d := upstream(t)
	d.clusterPolicy(cEgress(adminPol("x-out", 1, nsSubject("x")), deny, "", peers(peerNS("z"))))
	d.clusterPolicy(cIngress(adminPol("z-in", 2, nsSubject("z")), accept, "", peers(peerNS())))
	d.expect(tcp("x/a", "z/a", 80, false), tcp("x/b", "z/b", 80, false), tcp("y/a", "z/a", 80, true))
}

func TestNetworksMatchPodsAndFamilies(t *testing.T) {
	c := upstream(t)
	c.clusterPolicy(cEgress(adminPol("no-y-v4", 1, nsSubject("x")), deny, "", peers(peerNets("10.2.0.0/16"))))
	c.expectFamily(ruleset.IPv4, tcp("x/a", "y/a", 80, false), tcp("x/b", "y/c", 80, false), tcp("x/a", "z/a", 80, true))
	c.expectFamily(ruleset.IPv6, tcp("x/a", "y/a", 80, true))
	c.expect(tcp("x/a", "10.2.7.7", 443, false), tcp("x/a", "10.3.7.7", 443, true))
}

func TestNodePeers(t *testing.T) {
	c := upstream(t)
	c.nodeLabels = map[string]map[string]string{"n2": {"role": "infra"}}
	p := adminPol("nodes", 1, nsSubject("x"))
	cEgress(p, accept, "infra-6443", peers(peerNodes(m("role", "infra"))), cTCP(6443))
	cEgress(p, deny, "other-node-ports", peers(peerNodes(nil)))
	c.clusterPolicy(p)
	for _, fam := range []ruleset.Family{ruleset.IPv4, ruleset.IPv6} {
		c.expectFamily(fam, tcp("x/a", "node:n2", 6443, true), tcp("x/a", "node:n2", 10250, false),
			tcp("x/a", "node:n1", 6443, false), tcp("x/b", "node:n1", 22, false),
			tcp("y/a", "node:n1", 22, true), tcp("x/a", "y/a", 80, true))
	}
	// Node labels change: the node set follows, in Compile and in the Engine.
	c.nodeLabels = map[string]map[string]string{"n1": {"role": "infra"}}
	c.expect(tcp("x/a", "node:n1", 6443, true), tcp("x/a", "node:n2", 6443, false))
}

func TestClusterNamedPortsAndRanges(t *testing.T) {
	c := upstream(t)
	p := adminPol("ports", 1, nsSubject("x"))
	cIngress(p, accept, "named", peers(peerNS("y")), cNamed("serve-81-udp"))
	cIngress(p, deny, "range", peers(peerNS("y")), cTCPRange(80, 81))
	c.clusterPolicy(p)
	c.expect(udp("y/a", "x/a", 81, true), udp("y/a", "x/b", 81, true), tcp("y/a", "x/a", 81, false),
		tcp("y/a", "x/a", 80, false), tcp("y/a", "x/a", 82, true), udp("y/a", "x/a", 80, true))
	// Egress: the named port resolves on the destination pod.
	d := upstream(t)
	e := adminPol("egress-named", 1, nsSubject("x"))
	cEgress(e, accept, "", peers(peerPods(nsNames("y"), m("pod", "b"))), cNamed("serve-80-tcp"))
	cEgress(e, deny, "", peers(peerNS()))
	d.clusterPolicy(e)
	d.expect(tcp("x/a", "y/b", 80, true), tcp("x/a", "y/b", 81, false), tcp("x/a", "y/a", 80, false))
	d.expectFamily(ruleset.IPv6, tcp("x/c", "y/b", 80, true), udp("x/c", "y/b", 80, false))
}

func TestPodSubjectsAndNamespaceLabels(t *testing.T) {
	c := upstream(t)
	c.ns("y", m("team", "blue"))
	c.clusterPolicy(cIngress(adminPol("b-pods", 1, podSubject(&metav1.LabelSelector{MatchLabels: m("team", "blue")}, m("pod", "b"))),
		deny, "", peers(peerNS())))
	c.expect(tcp("x/a", "y/b", 80, false), tcp("x/a", "y/a", 80, true), tcp("x/a", "x/b", 80, true))
}

func TestHostNetworkPodsAreNeitherSubjectsNorPeers(t *testing.T) {
	c := upstream(t)
	c.pod("x", "host", "n1", "192.168.0.1", m("pod", "a")).HostNetwork = true
	c.clusterPolicy(cIngress(adminPol("deny-x-in", 1, nsSubject("x")), deny, "", peers(peerNS("y"))))
	c.clusterPolicy(cEgress(adminPol("deny-to-x", 1, nsSubject("z")), deny, "", peers(peerNS("x"))))
	c.expect(tcp("y/a", "x/host", 80, true), tcp("z/a", "x/host", 80, true), tcp("z/a", "x/a", 80, false))
}

func TestClusterFailsClosed(t *testing.T) {
	c := upstream(t)
	// A Deny rule with a peer of no field: deny everything into x.
	c.clusterPolicy(cIngress(adminPol("broken-deny", 1, nsSubject("x")), deny, "", peers(cpeer{})))
	// An Accept rule with a peer of two fields: matches nothing.
	c.clusterPolicy(cIngress(adminPol("broken-accept", 1, nsSubject("z")), accept, "",
		peers(cpeer{Namespaces: nsNames("y"), Pods: &cnp.NamespacedPod{}})))
	c.clusterPolicy(cIngress(adminPol("then-deny", 2, nsSubject("z")), deny, "", peers(peerNS("y"))))
	// A Pass rule with no peers at all: denies everything into y.
	c.clusterPolicy(cIngress(adminPol("broken-pass", 1, nsSubject("y")), pass, "", nil))
	c.expect(tcp("z/a", "x/a", 80, false), tcp("x/b", "x/a", 80, false),
		tcp("y/a", "z/a", 80, false), tcp("x/a", "z/a", 80, true),
		tcp("x/a", "y/a", 80, false), tcp("z/a", "y/b", 80, false))
	probs := c.compile("n1").Problems
	fields := map[string]bool{}
	for _, p := range probs {
		fields[p.Name+" "+p.Field] = true
	}
	for _, want := range []string{"broken-deny spec.ingress[0].from[0]", "broken-accept spec.ingress[0].from[0]", "broken-pass spec.ingress[0].from"} {
		if !fields[want] {
			t.Errorf("no problem on %s; got %v", want, probs)
		}
	}
}

func TestDomainNamesMatchNothingYet(t *testing.T) {
	c := upstream(t)
	p := adminPol("dns", 1, nsSubject("x"))
	cEgress(p, accept, "", peers(cpeer{DomainNames: []cnp.DomainName{"example.com"}}, peerNS("y")))
	cEgress(p, deny, "", peers(peerNets("0.0.0.0/0")))
	c.clusterPolicy(p)
	c.expect(tcp("x/a", "y/a", 80, true), tcp("x/a", "z/a", 80, false), tcp("x/a", "203.0.113.1", 443, false))
	var unsupported bool
	for _, pr := range c.compile("n1").Problems {
		if errors.Is(pr.Err, ErrUnsupported) && pr.Field == "spec.egress[0].to[0].domainNames" {
			unsupported = true
		}
	}
	if !unsupported {
		t.Errorf("no unsupported-domainNames problem")
	}
}

func TestUnselectedPodsCostOneMapMiss(t *testing.T) {
	c := upstream(t)
	c.clusterPolicy(cIngress(adminPol("x-only", 1, nsSubject("x")), deny, "", peers(peerNS("y"))))
	rs := c.compile("n1").Ruleset
	for _, s := range rs.Sets {
		if s.IsMap && s.Name == MapIngressV4 {
			if len(s.Elements) != 2 { // x/a and x/c live on n1
				t.Errorf("ingress map has %d elements, want the 2 local pods of x", len(s.Elements))
			}
		}
		if s.IsMap && (s.Name == MapEgressV4 || s.Name == MapEgressV6) && len(s.Elements) != 0 {
			t.Errorf("%s has %d elements: no policy selects any pod for egress", s.Name, len(s.Elements))
		}
	}
}

func TestClusterExplainOwners(t *testing.T) {
	c := upstream(t)
	c.clusterPolicy(cIngress(adminPol("deny-metadata", 10, nsSubject("x")), deny, "block-imds", peers(peerNS("y"))))
	_, results := c.verdict("y/a", "x/a", corev1.ProtocolTCP, 80, ruleset.IPv4)
	rs := c.compile("n1").Ruleset
	var found bool
	for _, r := range results {
		for _, s := range r.Steps {
			if ro, ok := rs.Owners.Rule(s.Chain, s.Rule); ok && ro.Role == ruleset.RoleClusterDeny {
				found = ro.Policy.Name == "deny-metadata" && ro.Cluster.Name == "block-imds" && ro.Cluster.Tier == "Admin" && ro.Cluster.Priority == 10
			}
		}
	}
	if !found {
		t.Errorf("the deny is not attributed to deny-metadata/block-imds: %+v", results)
	}
}

// Rules that can never match are left out of a tier chain: one whose matches an
// earlier rule has (every tier rule ends in a verdict), and every rule after one that
// matches everything. Verdicts are those of the policies as written.
func TestUnreachableTierRulesLeftOut(t *testing.T) {
	c := upstream(t)
	c.clusterPolicy(cIngress(adminPol("first", 1, nsSubject("x")), deny, "y-80", peers(peerNS("y")), cTCP(80)))
	second := adminPol("second", 2, nsSubject("x"))
	cIngress(second, accept, "y-80-again", peers(peerNS("y")), cTCP(80)) // shadowed by first
	cIngress(second, accept, "z", peers(peerNS("z")))
	c.clusterPolicy(second)
	c.clusterPolicy(cIngress(cIngress(adminPol("third", 3, nsSubject("x")), deny, "all", nil), accept, "after-all", peers(peerNS("y"))))
	c.expect(tcp("y/a", "x/a", 80, false), tcp("z/a", "x/a", 80, true), tcp("y/a", "x/a", 81, false), tcp("x/b", "x/a", 80, false))
	rs := c.compile("n1").Ruleset
	checked := 0
	for _, ch := range rs.Chains {
		co := rs.Owners.Chain(ch.Name)
		if co.Role != ruleset.RoleAdminTier || !strings.HasSuffix(ch.Name, "-v4") {
			continue
		}
		checked++
		var names []string
		for _, ro := range co.Rules {
			if ro.Cluster != nil {
				names = append(names, ro.Cluster.Name)
			} else {
				names = append(names, string(ro.Role))
			}
		}
		// first's rule, second's z rule, third's match-all deny; no goto after it.
		if got := strings.Join(names, ","); got != "y-80,z,all" {
			t.Errorf("%s holds rules %s, want y-80,z,all\n%s", ch.Name, got, ruleset.Render(rs))
		}
	}
	if checked == 0 {
		t.Fatal("no Admin chain for IPv4 on n1")
	}
}
