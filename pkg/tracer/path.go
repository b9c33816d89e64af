package tracer

import (
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
