package lab

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
)

// The cluster's addressing plan. IPv6 addresses repeat the IPv4 digits in
// their last group (172.18.0.11 ↔ fd00:172:18::11, 10.244.1.10 ↔
// fd00:10:244:1::10) so that the two families read alike in matrices and
// rulesets.
var (
	// UnderlayCIDRv4 and UnderlayCIDRv6 hold the node addresses:
	// node N has 172.18.0.(10+N) and fd00:172:18::(10+N).
	UnderlayCIDRv4 = netip.MustParsePrefix("172.18.0.0/24")
	UnderlayCIDRv6 = netip.MustParsePrefix("fd00:172:18::/64")
	// ClusterCIDRv4 and ClusterCIDRv6 hold the pod addresses: node N's
	// pods are in 10.244.N.0/24 and fd00:10:244:N::/64.
	ClusterCIDRv4 = netip.MustParsePrefix("10.244.0.0/16")
	ClusterCIDRv6 = netip.MustParsePrefix("fd00:10:244::/56")
	// ServiceCIDRv4 and ServiceCIDRv6 hold the ClusterIPs (the API
	// server's --service-cluster-ip-range).
	ServiceCIDRv4 = netip.MustParsePrefix("10.96.0.0/16")
	ServiceCIDRv6 = netip.MustParsePrefix("fd00:10:96::/112")
)

// maxNodes keeps every node's addresses inside the plan above.
const maxNodes = 200

// firstPodHost is the host number of a node's first pod: .0 and .1 are
// taken by the bridge topology's VXLAN and bridge addresses.
const firstPodHost = 10

// underlayDev is the name of every node's uplink to the underlay bridge.
const underlayDev = "eth0"

func nodeUnderlayAddr(index int, f Family) netip.Addr {
	if f == IPv6 {
		return netip.MustParseAddr(fmt.Sprintf("fd00:172:18::%d", 10+index))
	}
	return netip.MustParseAddr(fmt.Sprintf("172.18.0.%d", 10+index))
}

func nodePodCIDR(index int, f Family) netip.Prefix {
	if f == IPv6 {
		return netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%d::/64", index))
	}
	return netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", index))
}

// podAddr returns host number host of node index's pod CIDR.
func podAddr(index, host int, f Family) netip.Addr {
	if f == IPv6 {
		return netip.MustParseAddr(fmt.Sprintf("fd00:10:244:%d::%d", index, host))
	}
	return netip.MustParseAddr(fmt.Sprintf("10.244.%d.%d", index, host))
}

// serviceAddr returns the n-th ClusterIP handed out (n from 0), leaving the
// first ten addresses to the API server (10.96.0.1 is "kubernetes").
func serviceAddr(n int, f Family) netip.Addr {
	if f == IPv6 {
		return netip.MustParseAddr(fmt.Sprintf("fd00:10:96::%d", 10+n))
	}
	a := ServiceCIDRv4.Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += uint32(10 + n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// families returns the families the cluster uses.
func (c *Cluster) families() []Family {
	if c.opts.DualStack {
		return []Family{IPv4, IPv6}
	}
	return []Family{IPv4}
}

// linkName returns name if it is a valid interface name (at most 15 bytes),
// else a short hash of it with the given first letter.
func linkName(letter, name string) string {
	if len(name) <= 15 {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return letter + hex.EncodeToString(sum[:])[:10]
}

// buildUnderlay creates the underlay namespace with one bridge, the "switch"
// every node's uplink is plugged into. It has no addresses: nodes talk to
// each other directly on 172.18.0.0/24 and fd00:172:18::/64.
func (c *Cluster) buildUnderlay(ctx context.Context) error {
	u, err := c.lab.NewNetns("underlay")
	if err != nil {
		return fmt.Errorf("underlay: %w", err)
	}
	c.underlay = u
	for _, args := range [][]string{
		{"link", "add", "br0", "type", "bridge"},
		{"link", "set", "br0", "up"},
	} {
		if _, err := u.IP(ctx, args...); err != nil {
			return fmt.Errorf("underlay: %w", err)
		}
	}
	return nil
}

// attachNode plugs node n into the underlay: a veth pair, eth0 in the node
// with the node's addresses, the other end enslaved to the underlay bridge.
// It also routes the service CIDRs to eth0: real nodes have a default route,
// and a locally generated connection (host-network pods, the node itself)
// needs some route to a ClusterIP before the output hook's DNAT re-routes it.
func (c *Cluster) attachNode(ctx context.Context, n *ClusterNode) error {
	uplink := linkName("u", "veth-"+n.Name)
	ns := n.NS
	type step struct {
		ns   *Netns
		args []string
	}
	steps := []step{
		{c.underlay, []string{"link", "add", uplink, "type", "veth", "peer", "name", underlayDev, "netns", ns.Name()}},
		{c.underlay, []string{"link", "set", uplink, "master", "br0", "up"}},
		{ns, []string{"addr", "add", prefixOf(n.UnderlayIPv4, UnderlayCIDRv4), "dev", underlayDev}},
	}
	if c.opts.DualStack {
		steps = append(steps, step{ns, []string{"-6", "addr", "add", prefixOf(n.UnderlayIPv6, UnderlayCIDRv6), "dev", underlayDev, "nodad"}})
	}
	steps = append(steps,
		step{ns, []string{"link", "set", underlayDev, "up"}},
		step{ns, []string{"route", "add", ServiceCIDRv4.String(), "dev", underlayDev}},
	)
	if c.opts.DualStack {
		steps = append(steps, step{ns, []string{"-6", "route", "add", ServiceCIDRv6.String(), "dev", underlayDev}})
	}
	for _, s := range steps {
		if _, err := s.ns.IP(ctx, s.args...); err != nil {
			return fmt.Errorf("attach node %s to the underlay: %w", n.Name, err)
		}
	}
	return nil
}

// prefixOf renders addr with the length of the prefix it lives in
// ("172.18.0.11/24").
func prefixOf(addr netip.Addr, p netip.Prefix) string {
	return netip.PrefixFrom(addr, p.Bits()).String()
}

// routeNodes programs the routed topology between nodes: in every node, a
// route to each other node's pod CIDRs via that node's underlay address (as
// kindnet does, or Calico without encapsulation). Within a node, AddPod's
// /32 and /128 routes lead to the pods.
func (c *Cluster) routeNodes(ctx context.Context) error {
	return c.forEachPeer(func(n, m *ClusterNode, f Family) error {
		if _, err := n.NS.IP(ctx, ipArgs(f, "route", "add", m.PodCIDR(f).String(), "via", m.UnderlayAddr(f).String(), "dev", underlayDev)...); err != nil {
			return fmt.Errorf("route node %s to node %s: %w", n.Name, m.Name, err)
		}
		return nil
	})
}

// forEachPeer calls fn for every ordered pair of distinct nodes and every
// family the cluster runs: n is the node being programmed, m its peer. It
// stops at the first error.
func (c *Cluster) forEachPeer(fn func(n, m *ClusterNode, f Family) error) error {
	for _, n := range c.nodes {
		for _, m := range c.nodes {
			if m == n {
				continue
			}
			for _, f := range c.families() {
				if err := fn(n, m, f); err != nil {
					return err
				}
			}
		}
	}
	return nil
}
