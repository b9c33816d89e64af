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
	// VXLANDevice is every node's IPv4 VTEP (Flannel's flannel.1), over the
	// IPv4 underlay.
	VXLANDevice = "flannel.1"
	// VXLANDeviceV6 is every node's IPv6 VTEP in a dual-stack cluster
	// (Flannel's flannel-v6.1), over the IPv6 underlay.
	VXLANDeviceV6 = "flannel-v6.1"
	// VXLANID and VXLANPort are Flannel's defaults (both devices use them).
	VXLANID   = 1
	VXLANPort = 8472
	// bridgeMTU leaves room for the 50 bytes of VXLAN encapsulation over IPv4
	// on the underlay's 1500, as Flannel sets it for cni0 and the pod veths.
	bridgeMTU = 1450
	// bridgeMTUDualStack leaves room for the 70 bytes of VXLAN over IPv6 (the
	// outer IPv6 header is 20 bytes longer): in a dual-stack cluster the pods'
	// IPv6 packets leave through flannel-v6.1, and an MTU that fits both
	// devices keeps path MTU discovery out of the lab's traffic.
	bridgeMTUDualStack = 1430
)

// vxlanDevice is the VTEP carrying family f between nodes.
func vxlanDevice(f Family) string { return pick(f, VXLANDevice, VXLANDeviceV6) }

// vxlanMTU is the MTU of family f's VTEP: the underlay's 1500 less the
// encapsulation over that family.
func vxlanMTU(f Family) int { return pick(f, bridgeMTU, bridgeMTUDualStack) }

// podMTU is the MTU of cni0 and the pod veths: what fits every VTEP of the
// cluster.
func (c *Cluster) podMTU() int {
	if c.opts.DualStack {
		return bridgeMTUDualStack
	}
	return bridgeMTU
}

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

// vtepMAC is node index's address on family f's VXLAN device (locally
// administered, fixed so that the other nodes' static neighbour and FDB
// entries can be written without reading it back).
func vtepMAC(index int, f Family) string {
	family := 0x62 // "b", after "lab"
	if f == IPv6 {
		family = 0x36 // "6"
	}
	return fmt.Sprintf("0e:6c:61:%02x:%02x:%02x", family, index>>8&0xff, index&0xff)
}

// bridgeMAC is node index's cni0 address, fixed as the CNI bridge plugin fixes
// it. A Linux bridge whose address was never set takes the lowest address of
// its ports and changes it as ports come and go: a pod whose veth sorts lowest
// renames the other pods' gateway when it comes, and again when it goes. IPv4
// pods heal at once (the node's next ARP request for a pod carries the gateway
// address with the new MAC), but IPv6 pods keep the old MAC for their global
// gateway address until neighbour unreachability detection gives up, half a
// minute or more, because the node solicits its pods from its link-local
// address. Meanwhile every packet they route reaches cni0 addressed to another
// port's MAC, goes up as PACKET_OTHERHOST (cni0's "otherhost" receive error
// counter) and is dropped by ipv6_rcv: after br_netfilter's prerouting, before
// any forward or input hook, so the agent's counters never see it.
func bridgeMAC(index int) string {
	return fmt.Sprintf("0e:63:6e:69:%02x:%02x", index>>8&0xff, index&0xff) // "cni"
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

// buildBridgeNode gives node n a pod bridge and, per family, a VXLAN device
// over its underlay address of that family.
func (c *Cluster) buildBridgeNode(ctx context.Context, n *ClusterNode) error {
	if _, err := os.Stat("/proc/sys/net/bridge"); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("node %s: br_netfilter is not available (no /proc/sys/net/bridge; modprobe br_netfilter)", n.Name)
	}
	if err := setSysctls(n.NS, brNetfilterSysctls); err != nil {
		return fmt.Errorf("node %s: enable br_netfilter: %w", n.Name, err)
	}
	mtu := strconv.Itoa(c.podMTU())
	args := [][]string{
		// An address given at creation is one the bridge keeps (see bridgeMAC).
		{"link", "add", BridgeName, "address", bridgeMAC(n.Index), "mtu", mtu, "type", "bridge"},
		{"addr", "add", prefixOf(bridgeGateway(n.Index, IPv4), n.PodCIDRv4), "dev", BridgeName},
	}
	if c.opts.DualStack {
		args = append(args, []string{"-6", "addr", "add", prefixOf(bridgeGateway(n.Index, IPv6), n.PodCIDRv6), "dev", BridgeName, "nodad"})
	}
	args = append(args, []string{"link", "set", BridgeName, "up"})
	for _, f := range c.families() {
		dev := vxlanDevice(f)
		addr := []string{"addr", "add", vtepAddr(n.Index, f).String() + "/32", "dev", dev}
		if f == IPv6 {
			addr = []string{"-6", "addr", "add", vtepAddr(n.Index, f).String() + "/128", "dev", dev, "nodad"}
		}
		args = append(args,
			// nolearning: the FDB is programmed statically below (Flannel's
			// vxlan backend does the same from the Node annotations).
			[]string{"link", "add", dev, "address", vtepMAC(n.Index, f), "mtu", strconv.Itoa(vxlanMTU(f)),
				"type", "vxlan", "id", strconv.Itoa(VXLANID), "local", n.UnderlayAddr(f).String(), "dev", underlayDev,
				"dstport", strconv.Itoa(VXLANPort), "nolearning"},
			addr,
			[]string{"link", "set", dev, "up"},
		)
	}
	for _, a := range args {
		if _, err := n.NS.IP(ctx, a...); err != nil {
			return fmt.Errorf("node %s: bridge and VXLAN: %w", n.Name, err)
		}
	}
	return nil
}

// connectBridgeNodes programs every node's VXLAN devices with the other nodes,
// as Flannel's vxlan backend does, per family: an FDB entry sending the peer
// VTEP's MAC to the peer's underlay address of that family, a permanent
// neighbour entry for the peer's VTEP address, and an onlink route to the
// peer's pod CIDR via that address.
func (c *Cluster) connectBridgeNodes(ctx context.Context) error {
	return c.forEachPeer(func(n, m *ClusterNode, f Family) error {
		dev := vxlanDevice(f)
		if _, err := run(ctx, "bridge", "-n", n.NS.Name(), "fdb", "append", vtepMAC(m.Index, f),
			"dev", dev, "dst", m.UnderlayAddr(f).String()); err != nil {
			return fmt.Errorf("connect node %s to node %s: %w", n.Name, m.Name, err)
		}
		vtep := vtepAddr(m.Index, f).String()
		for _, a := range [][]string{
			ipArgs(f, "neigh", "add", vtep, "lladdr", vtepMAC(m.Index, f), "dev", dev, "nud", "permanent"),
			ipArgs(f, "route", "add", m.PodCIDR(f).String(), "via", vtep, "dev", dev, "onlink"),
		} {
			if _, err := n.NS.IP(ctx, a...); err != nil {
				return fmt.Errorf("connect node %s to node %s: %w", n.Name, m.Name, err)
			}
		}
		return nil
	})
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
		mtu := strconv.Itoa(c.podMTU())
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
