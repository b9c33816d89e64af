package compiler

import (
	"fmt"
	"math/rand"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/revoke"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
	"github.com/nftpolicy/nftpolicy/pkg/tracer"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// scopeAddrs are the addresses the random worlds use (pods, nodes, ipBlock edges) and
// some outside all of them.
func scopeAddrs() []netip.Addr {
	var out []netip.Addr
	for i := range 10 {
		out = append(out, netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), netip.MustParseAddr(fmt.Sprintf("fd00::%d", i)))
	}
	for i := 1; i <= 3; i++ {
		out = append(out, netip.AddrFrom4([4]byte{192, 168, 0, byte(i)}), netip.MustParseAddr(fmt.Sprintf("fd00:1::%d", i)))
	}
	return append(out, netip.MustParseAddr("10.0.0.200"), netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1"))
}

// TestRevocationScopeIsSound: after any change of a random world, every connection
// whose verdict differs between the previous ruleset and the new one lies in
// revoke.Scope of the change — revocation, which judges only those, misses none.
func TestRevocationScopeIsSound(t *testing.T) {
	addrs := scopeAddrs()
	type probe struct {
		proto uint8
		port  uint16
	}
	probes := []probe{{ruleset.ProtoTCP, 80}, {ruleset.ProtoTCP, 82}, {ruleset.ProtoTCP, 8080}, {ruleset.ProtoTCP, 8081}, {ruleset.ProtoUDP, 53}}
	hooks := []ruleset.Hook{ruleset.HookForward, ruleset.HookInput, ruleset.HookOutput}
	var judged, changedVerdicts, narrow int
	for seed := int64(1); seed <= 60; seed++ {
		w := &randomWorld{r: rand.New(rand.NewSource(seed)), pods: map[string]*model.Pod{},
			namespaces: map[string]*model.Namespace{}, policies: map[string]*networkingv1.NetworkPolicy{}}
		if seed%2 == 0 {
			w.cnps, w.nodes = map[string]*cnp.ClusterNetworkPolicy{}, map[string]*model.Node{}
		}
		w.audit = seed%5 == 1
		opts := Options{Revocation: true, LogDenied: seed%3 == 0}
		e := NewEngine("node-0", opts)
		var prev *ruleset.Ruleset
		for i := 0; i < 80; i++ {
			step := w.step(e)
			res, ch := e.Flush()
			if prev == nil {
				prev = res.Ruleset
				continue
			}
			sc := revoke.Scope(prev, res.Ruleset, ch)
			if !sc.All {
				narrow++
			}
			before, after := tracer.New(prev), tracer.New(res.Ruleset)
			for _, src := range addrs {
				for _, dst := range addrs {
					if src == dst || src.Is4() != dst.Is4() {
						continue
					}
					// One port and hook per pair and step keeps the test quick; the
					// seeds cover them all.
					{
						{
							p, h := probes[w.r.Intn(len(probes))], hooks[w.r.Intn(len(hooks))]
							pkt := tracer.Packet{Src: src, Dst: dst, Proto: p.proto, DPort: p.port, Hook: h}
							judged++
							if before.Allowed(pkt) == after.Allowed(pkt) {
								continue
							}
							changedVerdicts++
							f := dataplane.Flow{Proto: p.proto, Orig: dataplane.Tuple{Src: src, Dst: dst, DPort: p.port},
								Reply: dataplane.Tuple{Src: dst, Dst: src, SPort: p.port}}
							if !sc.Contains(f) {
								t.Fatalf("seed %d step %d (%s): %v changed verdict (%v → %v) but is outside the scope %+v\nbefore:\n%s\nafter:\n%s",
									seed, i, step, pkt, before.Allowed(pkt), after.Allowed(pkt), sc, ruleset.Render(prev), ruleset.Render(res.Ruleset))
							}
						}
					}
				}
			}
			prev = res.Ruleset
		}
	}
	// The test must have seen verdicts change, and scopes narrower than everything
	// (a Scope that always said All would pass the check above and be useless).
	if changedVerdicts == 0 || narrow == 0 {
		t.Fatalf("judged %d packets: %d changed verdict, %d scopes narrower than All", judged, changedVerdicts, narrow)
	}
	t.Logf("judged %d packets, %d changed verdict; %d scopes narrower than All", judged, changedVerdicts, narrow)
}

// TestRevocationScopeIsNarrow: in a cluster of thousands of pods, the scope of one
// pod's change names that pod's addresses, not the cluster's.
func TestRevocationScopeIsNarrow(t *testing.T) {
	snap := synthetic(5000, 500, 50)
	e := newEngineFrom(snap, Options{Revocation: true})
	res, _ := e.Flush()
	prev := res.Ruleset
	var local, remote *model.Pod
	for _, p := range snap.Pods {
		if p.NodeName == snap.NodeName && local == nil && len(p.IPs) > 0 {
			local = p
		}
		if p.NodeName != snap.NodeName && remote == nil && len(p.IPs) > 0 {
			remote = p
		}
	}
	if local == nil || remote == nil {
		t.Fatal("the synthetic cluster has no local or no remote pod")
	}
	cases := []struct {
		name string
		pod  *model.Pod
		ip   netip.Addr
	}{
		{"relabel a remote pod", remote, remote.IPs[0]},
		{"relabel a local pod", local, local.IPs[0]},
	}
	for _, c := range cases {
		p := *c.pod
		p.Labels = map[string]string{"relabelled": "yes"}
		e.SetPod(&p)
		res, ch := e.Flush()
		sc := revoke.Scope(prev, res.Ruleset, ch)
		if sc.All || sc.Empty() {
			t.Fatalf("%s: scope %+v, want the pod's address alone", c.name, sc)
		}
		for _, r := range append(append([]dataplane.AddrRange{}, sc.Src...), sc.Dst...) {
			if r.From != c.ip || r.To != c.ip {
				t.Fatalf("%s: scope names %v-%v, want only %v (scope %+v)", c.name, r.From, r.To, c.ip, sc)
			}
		}
		prev = res.Ruleset
	}
}

// BenchmarkRevocationScope: what revocation spends to know which flows a change
// concerns, for one pod's label change at 50k pods / 5k policies (the walk of both
// rulesets' rules and verdict maps; set elements are not read).
func BenchmarkRevocationScope(b *testing.B) {
	snap := synthetic(50000, 5000, 50)
	e := newEngineFrom(snap, Options{Revocation: true})
	res, _ := e.Flush()
	var remote *model.Pod
	for _, p := range snap.Pods {
		if p.NodeName != snap.NodeName && len(p.IPs) > 0 {
			remote = p
			break
		}
	}
	p := *remote
	p.Labels = map[string]string{"relabelled": "yes"}
	e.SetPod(&p)
	cur, ch := e.Flush()
	b.ReportAllocs()
	for b.Loop() {
		if sc := revoke.Scope(res.Ruleset, cur.Ruleset, ch); sc.All {
			b.Fatal("scope of a pod's change is everything")
		}
	}
}

// TestRevocationScopeOfASelectorEdit: a policy whose peer selector is edited has its
// rule look another set up; the scope is the pods that enter or leave the peers, not
// every flow to the policy's pods.
func TestRevocationScopeOfASelectorEdit(t *testing.T) {
	ip := netip.MustParseAddr
	pod := func(name, node, addr string, l map[string]string) *model.Pod {
		return &model.Pod{Namespace: "default", Name: name, NodeName: node, Labels: l, Phase: corev1.PodRunning, IPs: []netip.Addr{ip(addr)}}
	}
	e := NewEngine("node-0", Options{Revocation: true})
	e.SetNamespace(&model.Namespace{Name: "default"})
	e.SetPod(pod("server", "node-0", "10.0.0.10", map[string]string{"app": "server"}))
	e.SetPod(pod("client", "node-1", "10.0.1.20", map[string]string{"access": "granted"}))
	e.SetPod(pod("other", "node-1", "10.0.1.30", map[string]string{"access": "revoked"}))
	e.SetPod(pod("bystander", "node-1", "10.0.1.40", map[string]string{"app": "x"}))
	allow := func(access string) *networkingv1.NetworkPolicy {
		return ingress(netpol("default", "server-allow", m("app", "server")), from(podSel(m("access", access))))
	}
	e.SetPolicy(allow("granted"))
	before, _ := e.Flush()
	e.SetPolicy(allow("revoked"))
	after, ch := e.Flush()
	sc := revoke.Scope(before.Ruleset, after.Ruleset, ch)
	if sc.All {
		t.Fatal("scope of a selector edit is every flow")
	}
	for _, r := range append(append([]dataplane.AddrRange{}, sc.Src...), sc.Dst...) {
		if r.From != r.To || (r.From != ip("10.0.1.20") && r.From != ip("10.0.1.30")) {
			t.Errorf("scope names %v-%v; want the client and the other pod only (%+v)", r.From, r.To, sc)
		}
	}
	for _, c := range []struct {
		src     string
		changed bool
	}{{"10.0.1.20", true}, {"10.0.1.30", true}, {"10.0.1.40", false}} {
		pkt := tracer.Packet{Src: ip(c.src), Dst: ip("10.0.0.10"), Proto: ruleset.ProtoTCP, DPort: 80}
		if got := tracer.New(before.Ruleset).Allowed(pkt) != tracer.New(after.Ruleset).Allowed(pkt); got != c.changed {
			t.Fatalf("%v: verdict changed %v, want %v", pkt, got, c.changed)
		}
		f := dataplane.Flow{Proto: ruleset.ProtoTCP, Orig: dataplane.Tuple{Src: pkt.Src, Dst: pkt.Dst, DPort: 80}, Reply: dataplane.Tuple{Src: pkt.Dst, SPort: 80}}
		if c.changed && !sc.Contains(f) {
			t.Errorf("%v changed verdict but is outside the scope %+v", pkt, sc)
		}
	}
}
