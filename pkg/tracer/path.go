package tracer

import (
	"fmt"
	"net/netip"

	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// Endpoint is one end of a connection in a cluster.
type Endpoint struct {
	Addr netip.Addr
	// Node is the node the endpoint is on; empty outside the cluster.
	Node string
	// Host is set when the endpoint is the node itself (or a hostNetwork pod).
	Host bool
}

// Hop is one node's judgement of a connection: the ruleset of Node sees the first
// packet on Hook.
type Hop struct {
	Node string
	Hook ruleset.Hook
}

// Hops lists the nodes whose rulesets judge a new connection src → dst, in the order
// the packet meets them: the source's node first — forward hook for a pod, output for
// the node itself, input when a pod talks to its own node — then, when the destination
// is elsewhere in the cluster, the destination's node — forward for a pod, input for
// the node. Endpoints outside the cluster have no hop of their own.
func Hops(src, dst Endpoint) []Hop {
	var hops []Hop
	if src.Node != "" {
		hook := ruleset.HookForward
		switch {
		case src.Host:
			hook = ruleset.HookOutput
		case dst.Host && dst.Node == src.Node:
			hook = ruleset.HookInput
		}
		hops = append(hops, Hop{Node: src.Node, Hook: hook})
	}
	if dst.Node != "" && dst.Node != src.Node {
		hook := ruleset.HookForward
		if dst.Host {
			hook = ruleset.HookInput
		}
		hops = append(hops, Hop{Node: dst.Node, Hook: hook})
	}
	return hops
}

// HopTrace is one node's trace of a connection's first packet.
type HopTrace struct {
	Hop
	// Packet is the packet traced, its Hook the hop's.
	Packet Packet
	Result Result
}

// Judgement is what every node on a connection's path makes of its first packet.
type Judgement struct {
	Hops []HopTrace
}

// Allowed reports whether the connection passes: every node on its path accepts it (a
// connection no node judges, between two addresses outside the cluster, passes).
func (j Judgement) Allowed() bool {
	for _, h := range j.Hops {
		if !h.Result.Allowed() {
			return false
		}
	}
	return true
}

// Judge traces the first packet of a new connection src → dst through the ruleset of
// every node that judges it (Hops), in path order. pkt carries the protocol and port;
// its addresses are taken from src and dst and its hook from each hop. tracerOf returns
// the tracer of a node's ruleset; its error ends the walk. Every hop is traced, also
// after one drops, so that the judgement shows each node's view of the connection.
func Judge(src, dst Endpoint, pkt Packet, tracerOf func(node string) (*Tracer, error)) (Judgement, error) {
	var j Judgement
	pkt.Src, pkt.Dst = src.Addr, dst.Addr
	for _, h := range Hops(src, dst) {
		t, err := tracerOf(h.Node)
		if err != nil {
			return j, fmt.Errorf("ruleset of node %s: %w", h.Node, err)
		}
		p := pkt
		p.Hook = h.Hook
		j.Hops = append(j.Hops, HopTrace{Hop: h, Packet: p, Result: t.Trace(p)})
	}
	return j, nil
}

// Allowed is Judge's verdict alone: the same hops, traced by the same evaluation
// without recording their paths (Tracer.Allowed), stopping at the first node that
// drops. For callers that judge many connections and explain few (`nftpolicy reach`).
func Allowed(src, dst Endpoint, pkt Packet, tracerOf func(node string) (*Tracer, error)) (bool, error) {
	pkt.Src, pkt.Dst = src.Addr, dst.Addr
	for _, h := range Hops(src, dst) {
		t, err := tracerOf(h.Node)
		if err != nil {
			return false, fmt.Errorf("ruleset of node %s: %w", h.Node, err)
		}
		p := pkt
		p.Hook = h.Hook
		if !t.Allowed(p) {
			return false, nil
		}
	}
	return true, nil
}
