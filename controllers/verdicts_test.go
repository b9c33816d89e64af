package controllers

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
	"github.com/nftpolicy/nftpolicy/pkg/tracer"
)

// Counts are attributed through the owners of the applied ruleset: accept rules to the
// policy rule they compile (summed over the rules one policy rule compiles to),
// isolation drops to every policy the chain isolates with, and a chain whose kernel
// rules do not line up with the applied ones (being rewritten) contributes nothing.
func TestAttribute(t *testing.T) {
	acc := func(c string) ruleset.Rule { return ruleset.Rule{Counter: true, Verdict: ruleset.Accept, Comment: c} }
	a, b, c := ruleset.PolicyRef{Namespace: "ns", Name: "a"}, ruleset.PolicyRef{Namespace: "ns", Name: "b"}, ruleset.PolicyRef{Namespace: "ns", Name: "c"}
	allow := func(p ruleset.PolicyRef, i int) ruleset.RuleOwner {
		return ruleset.RuleOwner{Role: ruleset.RoleAllow, Policy: p, Rule: i}
	}
	jump := func(p ruleset.PolicyRef) ruleset.RuleOwner {
		return ruleset.RuleOwner{Role: ruleset.RolePolicyJump, Policy: p}
	}
	drop := ruleset.RuleOwner{Role: ruleset.RoleIsolationDrop}
	rs := &ruleset.Ruleset{Chains: []*ruleset.Chain{
		{Name: "pol-in-aaaa-ns.a", Rules: []ruleset.Rule{acc("ns/a ingress rule 0"), acc("ns/a ingress rule 0"), acc("ns/a ingress rule 1")}},
		{Name: "pol-in-bbbb-ns.b", Rules: []ruleset.Rule{acc("ns/b ingress rule 0")}},
		{Name: "pol-eg-cccc-ns.c", Rules: []ruleset.Rule{acc("ns/c egress rule 0")}},
		{Name: "isolate-in-1111", Rules: []ruleset.Rule{
			{Verdict: ruleset.Jump("pol-in-aaaa-ns.a"), Comment: "ns/a"},
			{Verdict: ruleset.Jump("pol-in-bbbb-ns.b"), Comment: "ns/b"},
			{Counter: true, Verdict: ruleset.Drop, Comment: "drop: no rule of ns/a, ns/b allows it"}}},
		{Name: "isolate-in-2222", Rules: []ruleset.Rule{
			{Verdict: ruleset.Jump("pol-in-aaaa-ns.a"), Comment: "ns/a"},
			{Counter: true, Verdict: ruleset.Drop, Comment: "drop: no rule of ns/a allows it"}}},
		{Name: "isolate-eg-3333", Rules: []ruleset.Rule{
			{Verdict: ruleset.Jump("pol-eg-cccc-ns.c"), Comment: "ns/c"},
			{Counter: true, Verdict: ruleset.Drop, Comment: "drop: no rule of ns/c allows it"}}},
	}, Owners: &ruleset.Owners{Chains: map[string]*ruleset.ChainOwner{
		"pol-in-aaaa-ns.a": {Role: ruleset.RolePolicy, Direction: ruleset.Ingress, Policies: []ruleset.PolicyRef{a}, Rules: []ruleset.RuleOwner{allow(a, 0), allow(a, 0), allow(a, 1)}},
		"pol-in-bbbb-ns.b": {Role: ruleset.RolePolicy, Direction: ruleset.Ingress, Policies: []ruleset.PolicyRef{b}, Rules: []ruleset.RuleOwner{allow(b, 0)}},
		"pol-eg-cccc-ns.c": {Role: ruleset.RolePolicy, Direction: ruleset.Egress, Policies: []ruleset.PolicyRef{c}, Rules: []ruleset.RuleOwner{allow(c, 0)}},
		"isolate-in-1111":  {Role: ruleset.RoleIsolation, Direction: ruleset.Ingress, Policies: []ruleset.PolicyRef{a, b}, Rules: []ruleset.RuleOwner{jump(a), jump(b), drop}},
		"isolate-in-2222":  {Role: ruleset.RoleIsolation, Direction: ruleset.Ingress, Policies: []ruleset.PolicyRef{a}, Rules: []ruleset.RuleOwner{jump(a), drop}},
		"isolate-eg-3333":  {Role: ruleset.RoleIsolation, Direction: ruleset.Egress, Policies: []ruleset.PolicyRef{c}, Rules: []ruleset.RuleOwner{jump(c), drop}},
	}}}
	rc := func(p, b uint64, c string) dataplane.RuleCounter {
		return dataplane.RuleCounter{Packets: p, Bytes: b, Counted: true, Comment: c}
	}
	kernel := map[string][]dataplane.RuleCounter{
		"pol-in-aaaa-ns.a": {rc(1, 60, "ns/a ingress rule 0"), rc(2, 80, "ns/a ingress rule 0"), rc(5, 300, "ns/a ingress rule 1")},
		"pol-in-bbbb-ns.b": {rc(7, 700, "ns/b ingress rule 0")},
		// Rewritten in the kernel already: another rule at this position.
		"pol-eg-cccc-ns.c": {rc(9, 900, "ns/c egress rule 4")},
		"isolate-in-1111":  {{Comment: "ns/a"}, {Comment: "ns/b"}, rc(10, 1000, "drop: no rule of ns/a, ns/b allows it")},
		"isolate-in-2222":  {{Comment: "ns/a"}, rc(3, 100, "drop: no rule of ns/a allows it")},
		"isolate-eg-3333":  {{Comment: "ns/c"}, rc(4, 100, "drop: no rule of ns/c allows it")},
	}
	v := attribute(rs, kernel)
	wantAllowed := map[ruleKey]packetsBytes{
		{"ns", "a", "ingress", "0"}: {3, 140},
		{"ns", "a", "ingress", "1"}: {5, 300},
		{"ns", "b", "ingress", "0"}: {7, 700},
	}
	checkVerdicts(t, v, wantAllowed, map[policyDir]uint64{{"ns", "a", "ingress"}: 13, {"ns", "b", "ingress"}: 10, {"ns", "c", "egress"}: 4}, 3)

	// A ruleset without owners (read from a kernel) attributes nothing.
	if v := attribute(&ruleset.Ruleset{Chains: rs.Chains}, kernel); len(v.allowed)+len(v.dropped)+len(v.policies) != 0 {
		t.Errorf("attributed without owners: %+v", v)
	}
}

// A policy whose namespace and name are at the API's limits (63 and 253 characters),
// whose chain names and rule comments the compiler cuts short, is attributed under its
// whole namespace and name, rule by rule, in a ruleset the compiler built.
func TestAttributeLongNames(t *testing.T) {
	ns, name := strings.Repeat("n", 63), strings.Repeat("p", 253)
	v := attribute(longNamesRuleset(t, ns, name, false), nil)
	if len(v.policies) != 2 || !v.policies[ruleset.PolicyRef{Namespace: ns, Name: name}] {
		t.Errorf("policies in force = %v, want the long one and %s/other", v.policies, ns)
	}
	rs := longNamesRuleset(t, ns, name, false)
	// The kernel's counters of the same table: every counted rule counted 1 packet.
	kernel := map[string][]dataplane.RuleCounter{}
	for _, ch := range rs.Chains {
		for _, r := range ch.Rules {
			kernel[ch.Name] = append(kernel[ch.Name], dataplane.RuleCounter{Packets: 1, Bytes: 100, Counted: r.Counter, Comment: r.Comment})
		}
	}
	v = attribute(rs, kernel)
	// Rule 0 allows TCP and UDP from two peer kinds: pods (IPv4, IPv6) and an ipBlock
	// (IPv4): three allow rules; rule 1 one per family.
	checkVerdicts(t, v, map[ruleKey]packetsBytes{
		{ns, name, "ingress", "0"}: {3, 300},
		{ns, name, "ingress", "1"}: {2, 200},
	}, map[policyDir]uint64{{ns, name, "ingress"}: 1, {ns, "other", "ingress"}: 1}, 2)
}

// longNamesRuleset compiles, for node n1, the pod db in namespace ns isolated by the
// policy name (two ingress rules) and by "other" (no rules).
func longNamesRuleset(t *testing.T, ns, name string, logDenied bool) *ruleset.Ruleset {
	t.Helper()
	sel := metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}
	port := intstr.FromInt32(5432)
	snap := &model.Snapshot{NodeName: "n1",
		Pods: []*model.Pod{
			{Namespace: ns, Name: "db", NodeName: "n1", Labels: map[string]string{"app": "db"}, Phase: corev1.PodRunning, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("fd00::2")}},
			{Namespace: ns, Name: "web", NodeName: "n2", Labels: map[string]string{"app": "web"}, Phase: corev1.PodRunning, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.3")}},
		},
		Namespaces: map[string]*model.Namespace{ns: {Name: ns}},
		Policies: []*networkingv1.NetworkPolicy{
			{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: networkingv1.NetworkPolicySpec{PodSelector: sel,
				Ingress: []networkingv1.NetworkPolicyIngressRule{
					{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{}}, {IPBlock: &networkingv1.IPBlock{CIDR: "192.0.2.0/24"}}}},
					{Ports: []networkingv1.NetworkPolicyPort{{Port: &port}}, From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{}}}},
				}}},
			{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "other"}, Spec: networkingv1.NetworkPolicySpec{PodSelector: sel}},
		},
	}
	res := compiler.Compile(snap, compiler.Options{LogDenied: logDenied})
	if len(res.Problems) > 0 {
		t.Fatalf("problems: %v", res.Problems)
	}
	return res.Ruleset
}

func checkVerdicts(t *testing.T, v verdicts, wantAllowed map[ruleKey]packetsBytes, wantDropped map[policyDir]uint64, policies int) {
	t.Helper()
	if len(v.allowed) != len(wantAllowed) {
		t.Errorf("allowed = %v, want %v", v.allowed, wantAllowed)
	}
	for k, w := range wantAllowed {
		if v.allowed[k] != w {
			t.Errorf("allowed %v = %v, want %v", k, v.allowed[k], w)
		}
	}
	if len(v.dropped) != len(wantDropped) {
		t.Errorf("dropped = %v, want %v", v.dropped, wantDropped)
	}
	for k, w := range wantDropped {
		if v.dropped[k] != w {
			t.Errorf("dropped %v = %v, want %v", k, v.dropped[k], w)
		}
	}
	if len(v.policies) != policies {
		t.Errorf("policies in force = %v, want %d", v.policies, policies)
	}
}

// ClusterNetworkPolicy rules are counted per rule and action where the tier chains
// match them: a rule inlined in the tier chains of two sets of pods sums both, and a
// Deny rule's deny-log chain (--log-denied) is not counted again.
func TestAttributeClusterRules(t *testing.T) {
	pod := func(ns, name, ip string, l map[string]string) *model.Pod {
		return &model.Pod{Namespace: ns, Name: name, NodeName: "n1", Labels: l, Phase: corev1.PodRunning, IPs: []netip.Addr{netip.MustParseAddr(ip)}}
	}
	all := &metav1.LabelSelector{}
	snap := &model.Snapshot{NodeName: "n1",
		Pods: []*model.Pod{pod("app", "db", "10.0.0.2", map[string]string{"app": "db"}), pod("app", "web", "10.0.0.3", nil)},
		Policies: []*networkingv1.NetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "db-only"},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}}}},
		ClusterPolicies: []*cnp.ClusterNetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Name: "guard"}, Spec: cnp.ClusterNetworkPolicySpec{
			Tier: cnp.AdminTier, Priority: 7, Subject: cnp.ClusterNetworkPolicySubject{Namespaces: all},
			Ingress: []cnp.ClusterNetworkPolicyIngressRule{
				{Name: "no-imds", Action: cnp.ClusterNetworkPolicyRuleActionDeny, From: []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"x": "y"}}}}},
				{Action: cnp.ClusterNetworkPolicyRuleActionPass, From: []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: all}}},
			},
		}}},
	}
	rs := compiler.Compile(snap, compiler.Options{LogDenied: true}).Ruleset
	kernel := map[string][]dataplane.RuleCounter{}
	tierChains := 0
	for _, ch := range rs.Chains {
		if co := rs.Owners.Chain(ch.Name); co.Role == ruleset.RoleAdminTier {
			tierChains++
		}
		for _, r := range ch.Rules {
			kernel[ch.Name] = append(kernel[ch.Name], dataplane.RuleCounter{Packets: 1, Bytes: 100, Counted: r.Counter, Comment: r.Comment})
		}
	}
	if tierChains != 2 {
		t.Fatalf("%d admin tier chains, want 2 (db is isolated by a NetworkPolicy, web is not)", tierChains)
	}
	v := attribute(rs, kernel)
	// Each rule compiles to one kernel rule per family, in the IPv4 chain (the pods
	// have no IPv6 address) of each of the two classes.
	want := map[clusterRuleKey]packetsBytes{
		{"guard", "Admin", "ingress", "no-imds", "Deny"}: {2, 200},
		{"guard", "Admin", "ingress", "1", "Pass"}:       {2, 200},
	}
	if fmt.Sprint(v.cluster) != fmt.Sprint(want) {
		t.Errorf("cluster rules %v, want %v", v.cluster, want)
	}
}

// auditSnapshot is node n1 with, in namespace app, db (tier=backend, app=db), cache
// (tier=backend), locked (app=locked), and the clients web and other:
//   - deny-all (audited) isolates db and cache for ingress, allowing nothing;
//   - allow-web (enforced) isolates db, allowing web;
//   - lock (enforced) isolates locked, allowing nothing, and open (audited) allows all
//     to locked.
func auditSnapshot() *model.Snapshot {
	pod := func(name, ip string, l map[string]string) *model.Pod {
		return &model.Pod{Namespace: "app", Name: name, NodeName: "n1", Labels: l, Phase: corev1.PodRunning, IPs: []netip.Addr{netip.MustParseAddr(ip)}}
	}
	sel := func(k, v string) metav1.LabelSelector {
		return metav1.LabelSelector{MatchLabels: map[string]string{k: v}}
	}
	audited := map[string]string{compiler.AuditAnnotation: compiler.ModeAudit}
	webSel := sel("app", "web")
	return &model.Snapshot{NodeName: "n1",
		Pods: []*model.Pod{
			pod("db", "10.0.0.2", map[string]string{"app": "db", "tier": "backend"}),
			pod("cache", "10.0.0.5", map[string]string{"app": "cache", "tier": "backend"}),
			pod("locked", "10.0.0.6", map[string]string{"app": "locked"}),
			pod("web", "10.0.0.3", map[string]string{"app": "web"}),
			pod("other", "10.0.0.4", map[string]string{"app": "other"}),
		},
		Namespaces: map[string]*model.Namespace{"app": {Name: "app"}},
		Policies: []*networkingv1.NetworkPolicy{
			{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "deny-all", Annotations: audited}, Spec: networkingv1.NetworkPolicySpec{PodSelector: sel("tier", "backend")}},
			{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "allow-web"}, Spec: networkingv1.NetworkPolicySpec{PodSelector: sel("app", "db"),
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &webSel}}}}}},
			{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "lock"}, Spec: networkingv1.NetworkPolicySpec{PodSelector: sel("app", "locked")}},
			{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "open", Annotations: audited}, Spec: networkingv1.NetworkPolicySpec{PodSelector: sel("app", "locked"),
				Ingress: []networkingv1.NetworkPolicyIngressRule{{}}}},
		},
	}
}

// countTraffic is a kernel that saw the connections: each first packet (100 bytes),
// traced through rs, adds one to the counter of every counted rule on its path.
func countTraffic(t *testing.T, rs *ruleset.Ruleset, conns [][2]string) map[string][]dataplane.RuleCounter {
	t.Helper()
	kernel := map[string][]dataplane.RuleCounter{}
	for _, ch := range rs.Chains {
		for _, r := range ch.Rules {
			kernel[ch.Name] = append(kernel[ch.Name], dataplane.RuleCounter{Counted: r.Counter, Comment: r.Comment})
		}
	}
	tr := tracer.New(rs)
	for _, c := range conns {
		res := tr.Trace(tracer.Packet{Src: netip.MustParseAddr(c[0]), Dst: netip.MustParseAddr(c[1]), Proto: 6, DPort: 80})
		for _, s := range res.Steps {
			if s.Rule >= 0 && kernel[s.Chain][s.Rule].Counted {
				kernel[s.Chain][s.Rule].Packets++
				kernel[s.Chain][s.Rule].Bytes += 100
			}
		}
	}
	return kernel
}

// Audited policies: the audit-deny chain's count goes to the audited policy that would
// deny, the audit-allow chain's to the audited policy that would allow; the enforced
// policies' allow and drop counters, in the copies audit mode makes of their chains,
// count what really passed and was dropped, once; audited policies are not in force.
func TestAttributeAudit(t *testing.T) {
	res := compiler.Compile(auditSnapshot(), compiler.Options{})
	if len(res.Problems) > 0 {
		t.Fatal(res.Problems)
	}
	const db, cache, locked, web, other = "10.0.0.2", "10.0.0.5", "10.0.0.6", "10.0.0.3", "10.0.0.4"
	kernel := countTraffic(t, res.Ruleset, [][2]string{
		{other, cache}, {other, cache}, {web, cache}, // deny-all would deny; passes
		{other, db}, {other, db}, // allow-web denies (and deny-all would)
		{web, db},     // allowed either way
		{web, locked}, // lock denies, open would allow
	})
	v := attribute(res.Ruleset, kernel)
	checkVerdicts(t, v, map[ruleKey]packetsBytes{{"app", "allow-web", "ingress", "0"}: {1, 100}},
		map[policyDir]uint64{{"app", "allow-web", "ingress"}: 2, {"app", "lock", "ingress"}: 1}, 2)
	wantDenied := map[policyDir]packetsBytes{{"app", "deny-all", "ingress"}: {3, 300}}
	// db's audit-allow chain exists (allow-web drops there) but nothing in the class
	// would allow what allow-web drops: its series is 0.
	wantAllowed := map[policyDir]packetsBytes{{"app", "open", "ingress"}: {1, 100}, {"app", "deny-all", "ingress"}: {0, 0}}
	if fmt.Sprint(v.auditDenied) != fmt.Sprint(wantDenied) || fmt.Sprint(v.auditAllowed) != fmt.Sprint(wantAllowed) {
		t.Errorf("audit denied %v, allowed %v; want %v, %v", v.auditDenied, v.auditAllowed, wantDenied, wantAllowed)
	}
}

// Under --audit (Options.Audit) nothing is enforced: every would-be drop is counted
// for the policies dropping it, a ClusterNetworkPolicy's with an empty namespace, and
// no policy allows, drops or is in force.
func TestAttributeAuditNode(t *testing.T) {
	snap := auditSnapshot()
	snap.Policies = snap.Policies[1:3] // allow-web and lock, unannotated: --audit audits them
	snap.ClusterPolicies = []*cnp.ClusterNetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Name: "guard"}, Spec: cnp.ClusterNetworkPolicySpec{
		Tier: cnp.AdminTier, Priority: 7,
		Subject: cnp.ClusterNetworkPolicySubject{Pods: &cnp.NamespacedPod{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "cache"}}}},
		Ingress: []cnp.ClusterNetworkPolicyIngressRule{{Name: "no-other", Action: cnp.ClusterNetworkPolicyRuleActionDeny,
			From: []cnp.ClusterNetworkPolicyIngressPeer{{Pods: &cnp.NamespacedPod{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "other"}}}}}}},
	}}}
	res := compiler.Compile(snap, compiler.Options{Audit: true, LogDenied: true})
	if len(res.Problems) > 0 {
		t.Fatal(res.Problems)
	}
	const db, cache, locked, web, other = "10.0.0.2", "10.0.0.5", "10.0.0.6", "10.0.0.3", "10.0.0.4"
	conns := [][2]string{{other, cache}, {web, cache}, {other, db}, {other, db}, {web, db}, {web, locked}}
	for _, c := range conns {
		if tr := tracer.Trace(res.Ruleset, tracer.Packet{Src: netip.MustParseAddr(c[0]), Dst: netip.MustParseAddr(c[1]), Proto: 6, DPort: 80}); !tr.Allowed() {
			t.Errorf("%v dropped under --audit: %v", c, tr.Steps)
		}
	}
	v := attribute(res.Ruleset, countTraffic(t, res.Ruleset, conns))
	checkVerdicts(t, v, nil, nil, 0)
	want := map[policyDir]packetsBytes{
		{"", "guard", "ingress"}:        {1, 100},
		{"app", "allow-web", "ingress"}: {2, 200},
		{"app", "lock", "ingress"}:      {1, 100},
	}
	if fmt.Sprint(v.auditDenied) != fmt.Sprint(want) || len(v.auditAllowed) != 0 {
		t.Errorf("audit denied %v, allowed %v; want %v and none", v.auditDenied, v.auditAllowed, want)
	}
}
