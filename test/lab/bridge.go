package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
)

// Names and numbers of the bridge + VXLAN topology, as Flannel uses them.
const (
	// BridgeName is the pod bridge in every node (Flannel's cni0).
	BridgeName = "cni0"
	// VXLANDevice is every node's VTEP (Flannel's flannel.1).
	VXLANDevice = "flannel.1"
	// VXLANID and VXLANPort are Flannel's defaults.
	VXLANID   = 1
	VXLANPort = 8472
	// bridgeMTU leaves room for the 50 bytes of VXLAN encapsulation on the
	// underlay's 1500, as Flannel sets it for cni0 and the pod veths.
	bridgeMTU = 1450
)

// brNetfilterSysctls make bridged IPv4 and IPv6 frames traverse the inet
// hooks (prerouting, forward, postrouting) of the node's netfilter: without
// them, two pods on one bridge talk at layer 2 and no forward-hook rule ever
// sees their packets, and the replies of a ClusterIP connection to a pod on
// the same bridge bypass conntrack's reverse NAT. On this kernel the sysctls
// are per network namespace (they exist in every namespace once
// br_netfilter is loaded, default 1), so each node sets its own.
var brNetfilterSysctls = [][2]string{
	{"net/bridge/bridge-nf-call-iptables", "1"},
	{"net/bridge/bridge-nf-call-ip6tables", "1"},
}

// vtepMAC is node index's VXLAN device address (locally administered,
// fixed so that the other nodes' static neighbour and FDB entries can be
// written without reading it back).
func vtepMAC(index int) string {
	return fmt.Sprintf("0e:6c:61:62:%02x:%02x", index>>8&0xff, index&0xff)
}

// vtepAddr is node index's address on its VXLAN device: the network address
// of its pod CIDR, as Flannel assigns it (10.244.N.0/32, fd00:10:244:N::/128).
func vtepAddr(index int, f Family) netip.Addr {
	return nodePodCIDR(index, f).Addr()
}

// bridgeGateway is the address of node index's bridge, the pods' default
// gateway (10.244.N.1, fd00:10:244:N::1).
func bridgeGateway(index int, f Family) netip.Addr {
	return nodePodCIDR(index, f).Addr().Next()
}

// buildBridgeNode gives node n a pod bridge and a VXLAN device over its
// underlay address.
func (c *Cluster) buildBridgeNode(ctx context.Context, n *ClusterNode) error {
	if _, err := os.Stat("/proc/sys/net/bridge"); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("node %s: br_netfilter is not available (no /proc/sys/net/bridge; modprobe br_netfilter)", n.Name)
	}
	if err := setSysctls(n.NS, brNetfilterSysctls); err != nil {
		return fmt.Errorf("node %s: enable br_netfilter: %w", n.Name, err)
	}
	args := [][]string{
		{"link", "add", BridgeName, "type", "bridge"},
		{"link", "set", BridgeName, "mtu", strconv.Itoa(bridgeMTU)},
		{"addr", "add", prefixOf(bridgeGateway(n.Index, IPv4), n.PodCIDRv4), "dev", BridgeName},
	}
	if c.opts.DualStack {
		args = append(args, []string{"-6", "addr", "add", prefixOf(bridgeGateway(n.Index, IPv6), n.PodCIDRv6), "dev", BridgeName, "nodad"})
	}
	args = append(args,
		[]string{"link", "set", BridgeName, "up"},
		// nolearning: the FDB is programmed statically below (Flannel's
		// vxlan backend does the same from the Node annotations).
		[]string{"link", "add", VXLANDevice, "address", vtepMAC(n.Index), "mtu", strconv.Itoa(bridgeMTU),
			"type", "vxlan", "id", strconv.Itoa(VXLANID), "local", n.UnderlayIPv4.String(), "dev", underlayDev,
			"dstport", strconv.Itoa(VXLANPort), "nolearning"},
		[]string{"addr", "add", vtepAddr(n.Index, IPv4).String() + "/32", "dev", VXLANDevice},
	)
	if c.opts.DualStack {
		// One VTEP carries both families over the IPv4 underlay (Flannel
		// makes a second device, flannel-v6.1, over an IPv6 underlay).
		args = append(args, []string{"-6", "addr", "add", vtepAddr(n.Index, IPv6).String() + "/128", "dev", VXLANDevice, "nodad"})
	}
	args = append(args, []string{"link", "set", VXLANDevice, "up"})
	for _, a := range args {
		if _, err := n.NS.IP(ctx, a...); err != nil {
			return fmt.Errorf("node %s: bridge and VXLAN: %w", n.Name, err)
		}
	}
	return nil
}

// connectBridgeNodes programs every node's VXLAN device with the other nodes,
// as Flannel's vxlan backend does: an FDB entry sending the peer VTEP's MAC
// to the peer's underlay address, a permanent neighbour entry for the peer's
// VTEP address, and an onlink route to the peer's pod CIDR via that address.
func (c *Cluster) connectBridgeNodes(ctx context.Context) error {
	for _, n := range c.nodes {
		for _, m := range c.nodes {
			if m == n {
				continue
			}
			if _, err := run(ctx, "bridge", "-n", n.NS.Name(), "fdb", "append", vtepMAC(m.Index),
				"dev", VXLANDevice, "dst", m.UnderlayIPv4.String()); err != nil {
				return fmt.Errorf("connect node %s to node %s: %w", n.Name, m.Name, err)
			}
			for _, f := range c.families() {
				var fam []string
				if f == IPv6 {
					fam = []string{"-6"}
				}
				vtep := vtepAddr(m.Index, f).String()
				for _, a := range [][]string{
					append(fam, "neigh", "add", vtep, "lladdr", vtepMAC(m.Index), "dev", VXLANDevice, "nud", "permanent"),
					append(fam, "route", "add", m.PodCIDR(f).String(), "via", vtep, "dev", VXLANDevice, "onlink"),
				} {
					if _, err := n.NS.IP(ctx, a...); err != nil {
						return fmt.Errorf("connect node %s to node %s: %w", n.Name, m.Name, err)
					}
				}
			}
		}
	}
	return nil
}

// bridgeWiring returns the pod wiring of the bridge topology on node n, as
// the CNI bridge plugin does it: a veth whose host side is a port of cni0
// with hairpin mode on (a pod reaching itself through a ClusterIP gets its
// packet back out of the port it came in on), the pod's addresses in the
// node's pod CIDR and default routes via the bridge's addresses.
func (c *Cluster) bridgeWiring(n *ClusterNode) func(*Pod) error {
	return func(p *Pod) error {
		ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
		defer cancel()
		node, pod, veth := p.Node.NS, p.NS, p.HostVeth
		mtu := strconv.Itoa(bridgeMTU)
		type step struct {
			ns   *Netns
			args []string
		}
		steps := []step{
			{node, []string{"link", "add", veth, "mtu", mtu, "type", "veth", "peer", "name", "eth0", "mtu", mtu, "netns", pod.Name()}},
			{node, []string{"link", "set", veth, "master", BridgeName}},
			{node, []string{"link", "set", "dev", veth, "type", "bridge_slave", "hairpin", "on"}},
			{node, []string{"link", "set", veth, "up"}},
		}
		if p.IPv4.IsValid() {
			steps = append(steps, step{pod, []string{"addr", "add", prefixOf(p.IPv4, n.PodCIDRv4), "dev", "eth0"}})
		}
		if p.IPv6.IsValid() {
			steps = append(steps, step{pod, []string{"-6", "addr", "add", prefixOf(p.IPv6, n.PodCIDRv6), "dev", "eth0", "nodad"}})
		}
		steps = append(steps, step{pod, []string{"link", "set", "eth0", "up"}})
		if p.IPv4.IsValid() {
			steps = append(steps, step{pod, []string{"route", "add", "default", "via", bridgeGateway(n.Index, IPv4).String(), "dev", "eth0"}})
		}
		if p.IPv6.IsValid() {
			steps = append(steps, step{pod, []string{"-6", "route", "add", "default", "via", bridgeGateway(n.Index, IPv6).String(), "dev", "eth0"}})
		}
		// Before eth0 exists, so that it inherits DAD off.
		if err := setSysctls(pod, podSysctls); err != nil {
			return err
		}
		for _, s := range steps {
			if _, err := s.ns.IP(ctx, s.args...); err != nil {
				return err
			}
		}
		return nil
	}
}
