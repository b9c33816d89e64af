package tracer

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

func TestHops(t *testing.T) {
	a := netip.MustParseAddr("10.0.0.1")
	pod1 := Endpoint{Addr: a, Node: "n1"}
	pod1b := Endpoint{Addr: a, Node: "n1"}
	pod2 := Endpoint{Addr: a, Node: "n2"}
	node1 := Endpoint{Addr: a, Node: "n1", Host: true}
	node2 := Endpoint{Addr: a, Node: "n2", Host: true}
	outside := Endpoint{Addr: a}
	for _, c := range []struct {
		src, dst Endpoint
		want     string
	}{
		{pod1, pod1b, "[{n1 forward}]"},
		{pod1, pod2, "[{n1 forward} {n2 forward}]"},
		{pod1, node1, "[{n1 input}]"},
		{pod1, node2, "[{n1 forward} {n2 input}]"},
		{node1, pod1, "[{n1 output}]"},
		{node1, pod2, "[{n1 output} {n2 forward}]"},
		{outside, pod2, "[{n2 forward}]"},
		{pod1, outside, "[{n1 forward}]"},
	} {
		if got := fmt.Sprint(Hops(c.src, c.dst)); got != c.want {
			t.Errorf("%+v → %+v: %s, want %s", c.src, c.dst, got, c.want)
		}
	}
}

// Judge traces the packet on every hop of the path, with each hop's hook and the
// endpoints' addresses, also after a hop drops; the connection passes only when every
// hop accepts it, and a node whose ruleset cannot be had ends the walk with its error.
func TestJudge(t *testing.T) {
	accept := New(&ruleset.Ruleset{Table: "t"})
	drop := New(&ruleset.Ruleset{Table: "t", Chains: []*ruleset.Chain{{Name: "f",
		Base: &ruleset.BaseChain{Hook: ruleset.HookForward}, Rules: []ruleset.Rule{{Verdict: ruleset.Drop}}}}})
	src := Endpoint{Addr: netip.MustParseAddr("10.0.1.2"), Node: "n1"}
	dst := Endpoint{Addr: netip.MustParseAddr("10.0.2.2"), Node: "n2"}
	tracers := map[string]*Tracer{"n1": drop, "n2": accept}
	of := func(node string) (*Tracer, error) {
		if tr := tracers[node]; tr != nil {
			return tr, nil
		}
		return nil, fmt.Errorf("no ruleset")
	}
	j, err := Judge(src, dst, Packet{Proto: 6, DPort: 80, Src: dst.Addr}, of)
	if err != nil {
		t.Fatal(err)
	}
	if j.Allowed() || len(j.Hops) != 2 {
		t.Fatalf("judgement %+v: want two hops, denied", j)
	}
	for i, want := range []struct {
		node    string
		hook    ruleset.Hook
		allowed bool
	}{{"n1", ruleset.HookForward, false}, {"n2", ruleset.HookForward, true}} {
		h := j.Hops[i]
		if h.Node != want.node || h.Packet.Hook != want.hook || h.Result.Allowed() != want.allowed ||
			h.Packet.Src != src.Addr || h.Packet.Dst != dst.Addr || h.Packet.DPort != 80 {
			t.Errorf("hop %d: %+v, want %+v from %s to %s", i, h, want, src.Addr, dst.Addr)
		}
	}
	if ok, err := Allowed(src, dst, Packet{Proto: 6, DPort: 80}, of); ok || err != nil {
		t.Errorf("Allowed: %v, %v; want denied as Judge", ok, err)
	}
	tracers["n1"] = accept
	if j, _ := Judge(src, dst, Packet{Proto: 6, DPort: 80}, of); !j.Allowed() {
		t.Errorf("both nodes accept, judgement %+v", j)
	}
	if ok, err := Allowed(src, dst, Packet{Proto: 6, DPort: 80}, of); !ok || err != nil {
		t.Errorf("Allowed: %v, %v; want allowed as Judge", ok, err)
	}
	if _, err := Judge(src, Endpoint{Addr: dst.Addr, Node: "n3"}, Packet{}, of); err == nil {
		t.Error("a node without a ruleset gave no error")
	}
	if _, err := Allowed(src, Endpoint{Addr: dst.Addr, Node: "n3"}, Packet{}, of); err == nil {
		t.Error("Allowed: a node without a ruleset gave no error")
	}
}
