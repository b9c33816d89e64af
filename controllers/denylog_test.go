package controllers

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/nflog"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
	"github.com/nftpolicy/nftpolicy/pkg/tracer"
)

// TestDescribeDenied: a packet logged with the prefix of an isolation chain becomes a
// line naming both pods (or the address of a non-pod), the port and exactly the
// policies that isolate the destination; packets with other prefixes are ignored. The
// prefix is the one the compiler puts in the chain the tracer says drops the packet.
func TestDescribeDenied(t *testing.T) {
	pod := func(ns, name, ip string, l map[string]string) *model.Pod {
		return &model.Pod{Namespace: ns, Name: name, NodeName: "n1", Labels: l, Phase: corev1.PodRunning, IPs: []netip.Addr{netip.MustParseAddr(ip)}}
	}
	sel := metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}
	snap := &model.Snapshot{NodeName: "n1",
		Pods: []*model.Pod{
			pod("app", "db", "10.0.0.2", map[string]string{"app": "db"}),
			pod("app", "web", "10.0.0.3", map[string]string{"app": "web"}),
		},
		Namespaces: map[string]*model.Namespace{"app": {Name: "app"}},
		Policies: []*networkingv1.NetworkPolicy{
			{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "deny-all"}, Spec: networkingv1.NetworkPolicySpec{PodSelector: sel}},
			{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "also"}, Spec: networkingv1.NetworkPolicySpec{PodSelector: sel,
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "192.0.2.0/24"}}}}}}},
		},
	}
	rs := compiler.Compile(snap, compiler.Options{LogDenied: true}).Ruleset
	pods := map[netip.Addr]string{netip.MustParseAddr("10.0.0.2"): "app/db", netip.MustParseAddr("10.0.0.3"): "app/web"}

	for _, tc := range []struct {
		src, want string
	}{
		{"10.0.0.3", "src=app/web dst=app/db proto=tcp port=5432 direction=ingress policies=[app/also app/deny-all]"},
		{"198.51.100.7", "src=198.51.100.7 dst=app/db proto=tcp port=5432 direction=ingress policies=[app/also app/deny-all]"},
	} {
		src, dst := netip.MustParseAddr(tc.src), netip.MustParseAddr("10.0.0.2")
		tr := tracer.Trace(rs, tracer.Packet{Src: src, Dst: dst, Proto: 6, DPort: 5432})
		if tr.Allowed() {
			t.Fatalf("%s -> db allowed: %v", tc.src, tr.Steps)
		}
		chain := tr.Last().Chain
		kv, ok := describeDenied(nflog.Packet{Prefix: compiler.DenyLogPrefix(chain), Src: src, Dst: dst, Proto: 6, SPort: 40000, DPort: 5432}, rs, func(a netip.Addr) string { return pods[a] })
		if !ok {
			t.Fatalf("prefix of %s not recognised", chain)
		}
		var parts []string
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i] == "chain" {
				if kv[i+1] != chain {
					t.Errorf("chain %v, want %s", kv[i+1], chain)
				}
				continue
			}
			parts = append(parts, fmt.Sprintf("%v=%v", kv[i], kv[i+1]))
		}
		if got := strings.Join(parts, " "); got != tc.want {
			t.Errorf("line\n %s\nwant\n %s", got, tc.want)
		}
	}
	if _, ok := describeDenied(nflog.Packet{Prefix: "something else "}, rs, func(a netip.Addr) string { return pods[a] }); ok {
		t.Error("a foreign prefix was described")
	}
	// Before the first sync there is no ruleset: the line is still written, without policies.
	kv, ok := describeDenied(nflog.Packet{Prefix: "isolate-eg-0123 ", Src: netip.MustParseAddr("10.0.0.2"), Dst: netip.MustParseAddr("10.0.0.9"), Proto: 17, DPort: 53}, nil, func(a netip.Addr) string { return pods[a] })
	if !ok || fmt.Sprint(kv[:10]) != "[src app/db dst 10.0.0.9 proto udp port 53 direction egress]" {
		t.Errorf("got %v", kv)
	}
}

// A packet denied by policies whose namespace and name are at the API's limits (63 and
// 253 characters), cut short in the chain's comments, is logged with them whole.
func TestDescribeDeniedLongNames(t *testing.T) {
	ns, name := strings.Repeat("n", 63), strings.Repeat("p", 253)
	rs := longNamesRuleset(t, ns, name, true)
	src, dst := netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("10.0.0.2")
	tr := tracer.Trace(rs, tracer.Packet{Src: src, Dst: dst, Proto: 6, DPort: 80})
	if tr.Allowed() {
		t.Fatalf("allowed: %v", tr.Steps)
	}
	kv, ok := describeDenied(nflog.Packet{Prefix: compiler.DenyLogPrefix(tr.Last().Chain), Src: src, Dst: dst, Proto: 6, DPort: 80}, rs,
		func(netip.Addr) string { return "" })
	if !ok {
		t.Fatalf("prefix of %s not recognised", tr.Last().Chain)
	}
	want := fmt.Sprint([]any{"src", "198.51.100.7", "dst", "10.0.0.2", "proto", "tcp", "port", 80, "direction", "ingress",
		"policies", []string{ns + "/other", ns + "/" + name}})
	if got := fmt.Sprint(kv[:12]); got != want {
		t.Errorf("line\n %s\nwant\n %s", got, want)
	}
}

// A packet dropped by a ClusterNetworkPolicy Deny rule is logged with the policy and
// the rule (tier, priority, name).
func TestDescribeDeniedClusterRule(t *testing.T) {
	pod := func(ns, name, ip string) *model.Pod {
		return &model.Pod{Namespace: ns, Name: name, NodeName: "n1", Phase: corev1.PodRunning, IPs: []netip.Addr{netip.MustParseAddr(ip)}}
	}
	snap := &model.Snapshot{NodeName: "n1",
		Pods:       []*model.Pod{pod("app", "db", "10.0.0.2"), pod("other", "web", "10.0.0.3")},
		Namespaces: map[string]*model.Namespace{"app": {Name: "app"}, "other": {Name: "other"}},
		ClusterPolicies: []*cnp.ClusterNetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Name: "guard"}, Spec: cnp.ClusterNetworkPolicySpec{
			Tier: cnp.AdminTier, Priority: 7,
			Subject: cnp.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "app"}}},
			Ingress: []cnp.ClusterNetworkPolicyIngressRule{{Name: "no-other", Action: cnp.ClusterNetworkPolicyRuleActionDeny,
				From: []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}}}},
		}}},
	}
	rs := compiler.Compile(snap, compiler.Options{LogDenied: true}).Ruleset
	src, dst := netip.MustParseAddr("10.0.0.3"), netip.MustParseAddr("10.0.0.2")
	tr := tracer.Trace(rs, tracer.Packet{Src: src, Dst: dst, Proto: 6, DPort: 5432})
	if tr.Allowed() {
		t.Fatalf("web -> db allowed: %v", tr.Steps)
	}
	kv, ok := describeDenied(nflog.Packet{Prefix: compiler.DenyLogPrefix(tr.Last().Chain), Src: src, Dst: dst, Proto: 6, DPort: 5432}, rs,
		func(a netip.Addr) string { return map[netip.Addr]string{src: "other/web", dst: "app/db"}[a] })
	got := fmt.Sprint(kv)
	if !ok || !strings.Contains(got, "policies [ClusterNetworkPolicy/guard]") ||
		!strings.Contains(got, "rule ClusterNetworkPolicy guard, rule no-other, Admin tier, priority 7") {
		t.Errorf("got %v", kv)
	}
}

// loggedPrefix traces a first packet from src to dst (TCP 80) through rs and returns
// the prefix of the log rule on its path ("" when none) and whether it passed.
func loggedPrefix(t *testing.T, rs *ruleset.Ruleset, src, dst string) (string, bool) {
	t.Helper()
	tr := tracer.Trace(rs, tracer.Packet{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), Proto: 6, DPort: 80})
	prefix := ""
	for _, s := range tr.Steps {
		if ch := rs.Chain(s.Chain); ch != nil && s.Rule >= 0 && ch.Rules[s.Rule].Log != nil {
			prefix = ch.Rules[s.Rule].Log.Prefix
		}
	}
	return prefix, tr.Allowed()
}

// Audited policies under --log-denied: a connection an audited policy would deny
// passes and its logged packet becomes a "would deny" line naming the pods, the port
// and the audited policy; one the enforced policies drop is still a "denied
// connection" naming only the enforced policies, through the owner of audit mode's copy
// of the isolation chain (the chain its log rule names).
func TestDescribeWouldDeny(t *testing.T) {
	rs := compiler.Compile(auditSnapshot(), compiler.Options{LogDenied: true}).Ruleset
	pods := map[netip.Addr]string{}
	for _, p := range auditSnapshot().Pods {
		pods[p.IPs[0]] = p.Key()
	}
	podAt := func(a netip.Addr) string { return pods[a] }
	line := func(src, dst string) (string, bool) {
		t.Helper()
		prefix, allowed := loggedPrefix(t, rs, src, dst)
		if prefix == "" {
			t.Fatalf("%s -> %s: nothing logged", src, dst)
		}
		pkt := nflog.Packet{Prefix: prefix, Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), Proto: 6, SPort: 40000, DPort: 80}
		denied, dok := describeDenied(pkt, rs, podAt)
		would, wok := describeWouldDeny(pkt, rs, podAt)
		if dok == wok {
			t.Fatalf("prefix %q: denied %v, would deny %v; want exactly one", prefix, dok, wok)
		}
		if wok {
			return "would deny " + fmt.Sprint(would), allowed
		}
		return "denied " + fmt.Sprint(denied), allowed
	}
	const db, cache, other = "10.0.0.2", "10.0.0.5", "10.0.0.4"
	got, allowed := line(other, cache)
	if want := "would deny [src app/other dst app/cache proto tcp port 80 direction ingress policies [app/deny-all] chain audit-deny-in-"; !allowed || !strings.HasPrefix(got, want) {
		t.Errorf("other -> cache (allowed %v):\n %s\nwant allowed,\n %s...", allowed, got, want)
	}
	got, allowed = line(other, db)
	if want := "denied [src app/other dst app/db proto tcp port 80 direction ingress policies [app/allow-web] chain enforce-in-"; allowed || !strings.HasPrefix(got, want) {
		t.Errorf("other -> db (allowed %v):\n %s\nwant denied,\n %s...", allowed, got, want)
	}
	if _, ok := describeWouldDeny(nflog.Packet{Prefix: "isolate-in-0123 "}, rs, podAt); ok {
		t.Error("an isolation chain's prefix was described as a would-be denial")
	}
}

// Under --audit a ClusterNetworkPolicy's Deny rule logs "would deny" naming the policy.
func TestDescribeWouldDenyAuditNode(t *testing.T) {
	snap := auditSnapshot()
	snap.Policies = nil
	snap.ClusterPolicies = []*cnp.ClusterNetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Name: "guard"}, Spec: cnp.ClusterNetworkPolicySpec{
		Tier: cnp.AdminTier, Priority: 7,
		Subject: cnp.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{}},
		Ingress: []cnp.ClusterNetworkPolicyIngressRule{{Name: "no-other", Action: cnp.ClusterNetworkPolicyRuleActionDeny,
			From: []cnp.ClusterNetworkPolicyIngressPeer{{Pods: &cnp.NamespacedPod{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "other"}}}}}}},
	}}}
	rs := compiler.Compile(snap, compiler.Options{Audit: true, LogDenied: true}).Ruleset
	prefix, allowed := loggedPrefix(t, rs, "10.0.0.4", "10.0.0.2")
	if !allowed {
		t.Fatal("dropped under --audit")
	}
	kv, ok := describeWouldDeny(nflog.Packet{Prefix: prefix, Src: netip.MustParseAddr("10.0.0.4"), Dst: netip.MustParseAddr("10.0.0.2"), Proto: 6, DPort: 80}, rs,
		func(netip.Addr) string { return "" })
	if got := fmt.Sprint(kv[:12]); !ok || got != "[src 10.0.0.4 dst 10.0.0.2 proto tcp port 80 direction ingress policies [ClusterNetworkPolicy/guard]]" {
		t.Errorf("prefix %q: got %v", prefix, kv)
	}
}

// Between the kernel commit of a ruleset and the Syncer noting it, packets are logged
// in the new chains: their policies are read from the ruleset being applied.
func TestRulesetForPacketsOfTheRulesetBeingApplied(t *testing.T) {
	old := compiler.Compile(&model.Snapshot{NodeName: "n1", Namespaces: map[string]*model.Namespace{}}, compiler.Options{LogDenied: true}).Ruleset
	next := compiler.Compile(auditSnapshot(), compiler.Options{LogDenied: true}).Ruleset
	prefix, _ := loggedPrefix(t, next, "10.0.0.4", "10.0.0.5")
	s := &Syncer{}
	s.applied.Store(old)
	s.applying.Store(next)
	if got := s.rulesetFor(prefix); got != next {
		t.Errorf("prefix %q of the ruleset being applied: got the applied one", prefix)
	}
	if got := s.rulesetFor("isolate-in-unknown "); got != old {
		t.Error("a prefix no ruleset has: want the applied ruleset")
	}
	s.applied.Store(next)
	if got := s.rulesetFor(prefix); got != next {
		t.Error("once applied: want the applied ruleset")
	}
}
