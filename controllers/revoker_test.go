package controllers

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// fakeFlows is a conntrack table in memory: it answers lookups by scope and records
// them, and keeps marks.
type fakeFlows struct {
	mu     sync.Mutex
	flows  []dataplane.Flow
	scopes []dataplane.FlowScope
	gen    uint64
	// block, when set, holds lookups until closed (a slow pass); entered tells
	// that a lookup is held.
	block, entered chan struct{}
}

func (f *fakeFlows) Flows(sc dataplane.FlowScope) ([]dataplane.Flow, error) {
	f.mu.Lock()
	block, entered := f.block, f.entered
	f.mu.Unlock()
	if block != nil {
		entered <- struct{}{}
		<-block
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.scopes = append(f.scopes, sc)
	var out []dataplane.Flow
	for _, fl := range f.flows {
		if sc.Contains(fl) {
			out = append(out, fl)
		}
	}
	return out, nil
}

func (f *fakeFlows) SetMark(flows []dataplane.Flow, mask, value uint32) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, m := range flows {
		for i := range f.flows {
			if f.flows[i].Orig == m.Orig && f.flows[i].Proto == m.Proto {
				f.flows[i].Mark = f.flows[i].Mark&^mask | value
				n++
			}
		}
	}
	return n, nil
}

func (f *fakeFlows) Generation() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gen
}

func (f *fakeFlows) revoked(i int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.flows[i].Mark&compiler.CtMarkMask == compiler.RevokedMark
}

func tcpFlow(src, dst string, sport, dport uint16) dataplane.Flow {
	s, d := netip.MustParseAddr(src), netip.MustParseAddr(dst)
	return dataplane.Flow{Proto: 6, Orig: dataplane.Tuple{Src: s, Dst: d, SPort: sport, DPort: dport},
		Reply: dataplane.Tuple{Src: d, Dst: s, SPort: dport, DPort: sport}}
}

// TestRevoker: passes run beside the caller, judge only the flows of the addresses a
// change concerns, revoke and restore, merge changes that arrive during a pass, and
// judge every flow after the flow table was rebuilt.
func TestRevoker(t *testing.T) {
	pod := func(name, ip string, labels map[string]string) *model.Pod {
		return &model.Pod{Namespace: "default", Name: name, NodeName: "node1", Labels: labels, Phase: corev1.PodRunning,
			IPs: []netip.Addr{netip.MustParseAddr(ip)}}
	}
	e := compiler.NewEngine("node1", compiler.Options{Revocation: true})
	e.SetNamespace(&model.Namespace{Name: "default"})
	e.SetPod(pod("server", "10.0.0.10", map[string]string{"app": "server"}))
	e.SetPod(pod("client", "10.0.0.20", map[string]string{"access": "yes"}))
	e.SetPod(pod("other", "10.0.0.30", map[string]string{"access": "yes"}))
	tcp := corev1.ProtocolTCP
	e.SetPolicy(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "server", ResourceVersion: "1"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"access": "yes"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp}},
			}},
		}})
	first, _ := e.Flush()

	ft := &fakeFlows{gen: 1, flows: []dataplane.Flow{
		tcpFlow("10.0.0.20", "10.0.0.10", 40000, 80), // client → server
		tcpFlow("10.0.0.30", "10.0.0.10", 40001, 80), // other → server
		tcpFlow("10.0.0.40", "10.0.0.10", 40002, 80), // a stranger → server: denied from the start
	}}
	passes := make(chan PassResult, 16)
	r := &Revoker{Flows: ft, Log: testr.New(t), Passed: func(p PassResult) { passes <- p }}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = r.Run(ctx) }()
	next := func() PassResult {
		t.Helper()
		select {
		case p := <-passes:
			if p.Err != nil {
				t.Fatal(p.Err)
			}
			return p
		case <-time.After(10 * time.Second):
			t.Fatal("no revocation pass")
		}
		return PassResult{}
	}

	// The first ruleset: every flow is judged; the stranger's is revoked.
	r.Applied(nil, first.Ruleset, nil, true, time.Now())
	if p := next(); !p.All || p.Judged != 3 || p.Revoked != 1 {
		t.Fatalf("first pass %+v: want all 3 flows judged, 1 revoked", p)
	}
	if !ft.revoked(2) || ft.revoked(0) || ft.revoked(1) {
		t.Fatalf("after the first pass: %+v", ft.flows)
	}

	// The client loses its label: only its address is in scope, its flow revoked.
	relabel := func(labels map[string]string) (*ruleset.Ruleset, *ruleset.Changes) {
		e.SetPod(pod("client", "10.0.0.20", labels))
		res, ch := e.Flush()
		return res.Ruleset, ch
	}
	denied, ch := relabel(map[string]string{})
	r.Applied(first.Ruleset, denied, ch, false, time.Now())
	p := next()
	if p.All || p.Judged != 1 || p.Revoked != 1 {
		t.Fatalf("pass after the relabel %+v: want 1 flow judged (the client's), revoked", p)
	}
	if !ft.revoked(0) || ft.revoked(1) {
		t.Fatalf("after the relabel: %+v", ft.flows)
	}

	// Changes that arrive while a pass runs wait, merge into one pass, and the
	// newest ruleset decides: the label back, the client's flow restored.
	ft.mu.Lock()
	ft.block, ft.entered = make(chan struct{}), make(chan struct{}, 1)
	ft.mu.Unlock()
	back, ch2 := relabel(map[string]string{"access": "yes"})
	r.Applied(denied, back, ch2, false, time.Now())
	<-ft.entered // the pass is now held in its lookup
	off, ch3 := relabel(map[string]string{})
	start := time.Now()
	r.Applied(back, off, ch3, false, time.Now())
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("Applied blocked for %v while a pass ran", d)
	}
	again, ch4 := relabel(map[string]string{"access": "yes"})
	r.Applied(off, again, ch4, false, time.Now())
	close(ft.block)
	p = next()
	<-ft.entered // the second pass went through the closed block
	if p.Restored != 1 {
		t.Fatalf("pass after the label came back %+v: want the client's flow restored", p)
	}
	// Denied and allowed again meanwhile: one pass, the newest ruleset's verdict.
	if p2 := next(); p2.Changes != 2 || p2.Judged != 1 || p2.Revoked != 0 {
		t.Fatalf("the changes made during the pass: %+v; want them merged, the client's flow judged and left alone", p2)
	}
	ft.mu.Lock()
	ft.block = nil
	ft.mu.Unlock()
	if ft.revoked(0) {
		t.Fatal("the client's flow is revoked")
	}

	// A rebuilt flow table: every flow once.
	ft.mu.Lock()
	ft.gen++
	ft.mu.Unlock()
	last, ch5 := relabel(map[string]string{})
	r.Applied(again, last, ch5, false, time.Now())
	if p := next(); !p.All || p.Judged != 3 {
		t.Fatalf("pass after a rebuild %+v: want all flows", p)
	}
	// Every scope but the first and the rebuild's named the client alone.
	for _, sc := range ft.scopes {
		if sc.All {
			continue
		}
		for _, r := range append(append([]dataplane.AddrRange{}, sc.Src...), sc.Dst...) {
			if r.From != netip.MustParseAddr("10.0.0.20") || r.To != r.From {
				t.Errorf("scope %+v names more than the client", sc)
			}
		}
	}
}
