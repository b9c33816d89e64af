package tracer

import (
	"fmt"
	"net/netip"
	"testing"
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
