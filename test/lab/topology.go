package lab

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Gateways every pod routes through. They are link-local, so the same
// addresses serve every pod on every node (as in Calico).
var (
	// PodGatewayV4 is the IPv4 next hop of every pod. The node owns it (on
	// its loopback), so it answers the pods' ARP requests on every veth.
	PodGatewayV4 = netip.MustParseAddr("169.254.1.1")
	// PodGatewayV6 is the IPv6 next hop of every pod. It is configured on
	// every host-side veth.
	PodGatewayV6 = netip.MustParseAddr("fe80::1")
)

// Family selects an IP family.
type Family int

// IP families.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// pick returns v6 for IPv6 and v4 otherwise: the per-family value of a pair
// of fields.
func pick[T any](f Family, v4, v6 T) T {
	if f == IPv6 {
		return v6
	}
	return v4
}

// ipArgs prefixes an ip(8) command line with -6 for IPv6.
func ipArgs(f Family, args ...string) []string {
	if f == IPv6 {
		return append([]string{"-6"}, args...)
	}
	return args
}

func (f Family) String() string {
	switch f {
	case IPv4:
		return "IPv4"
	case IPv6:
		return "IPv6"
	}
	return "Family(" + strconv.Itoa(int(f)) + ")"
}

// Node is a Kubernetes node: a namespace that routes between its pods (and,
// later, to other nodes over an underlay interface). The agent runs in it.
type Node struct {
	Name string
	NS   *Netns

	lab  *Lab
	mu   sync.Mutex
	pods []*Pod
}

// Pods returns the node's pods in creation order.
func (n *Node) Pods() []*Pod {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]*Pod(nil), n.pods...)
}

// Pod is a pod namespace attached to a node by a veth pair.
type Pod struct {
	Name string
	Node *Node
	NS   *Netns
	// IPv4 and IPv6 are the pod's addresses; either may be invalid (the
	// zero netip.Addr) for a single-stack pod.
	IPv4, IPv6 netip.Addr
	// HostVeth is the name of the host side of the pod's veth in the node
	// namespace. The pod side is always "eth0".
	HostVeth string

	lab *Lab
}

// Addr returns the pod's address of the given family (invalid if none).
func (p *Pod) Addr(f Family) netip.Addr { return pick(f, p.IPv4, p.IPv6) }

// AddrPort returns the pod's address of the given family with port.
func (p *Pod) AddrPort(f Family, port int) netip.AddrPort {
	return netip.AddrPortFrom(p.Addr(f), uint16(port))
}

func (p *Pod) String() string { return p.Name }

// ServeTCP serves TCP on every address of the pod at port, replying with the
// pod name. The server is closed with the lab.
func (p *Pod) ServeTCP(port int) (*Server, error) {
	return p.lab.ServeTCP(p.NS, ":"+strconv.Itoa(port), p.Name)
}

// ServeUDP serves UDP on every address of the pod at port, echoing with the
// pod name. The server is closed with the lab.
func (p *Pod) ServeUDP(port int) (*Server, error) {
	return p.lab.ServeUDP(p.NS, ":"+strconv.Itoa(port), p.Name)
}

// Serve starts TCP and UDP servers on each port (see ServeTCP, ServeUDP).
func (p *Pod) Serve(ports ...int) error {
	for _, port := range ports {
		if _, err := p.ServeTCP(port); err != nil {
			return err
		}
		if _, err := p.ServeUDP(port); err != nil {
			return err
		}
	}
	return nil
}

// nodeSysctls make a namespace a router that accepts asymmetric paths and
// uses IPv6 addresses immediately.
var nodeSysctls = [][2]string{
	{"net/ipv4/ip_forward", "1"},
	{"net/ipv6/conf/all/forwarding", "1"},
	{"net/ipv6/conf/default/forwarding", "1"},
	{"net/ipv4/conf/all/rp_filter", "0"},
	{"net/ipv4/conf/default/rp_filter", "0"},
	{"net/ipv6/conf/all/accept_dad", "0"},
	{"net/ipv6/conf/default/accept_dad", "0"},
}

// podSysctls: without DAD, addresses (including eth0's own link-local
// address) are usable as soon as they are added.
var podSysctls = [][2]string{
	{"net/ipv6/conf/all/accept_dad", "0"},
	{"net/ipv6/conf/default/accept_dad", "0"},
}

func setSysctls(ns *Netns, kvs [][2]string) error {
	for _, kv := range kvs {
		if err := ns.Sysctl(kv[0], kv[1]); err != nil {
			return err
		}
	}
	return nil
}

// AddNode creates a node namespace named Prefix()+name with IPv4/IPv6
// forwarding on, rp_filter off, DAD off, loopback up and the IPv4 pod
// gateway address on loopback.
//
// Multi-node seam: a node has no uplink yet. Connecting nodes later only
// needs an underlay interface in each node namespace plus routes for the
// other nodes' pod addresses; AddPod does not depend on any of that.
func (l *Lab) AddNode(name string) (*Node, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.nodeLocked(name) != nil {
		return nil, fmt.Errorf("add node %s: already exists", name)
	}
	ns, err := l.newNetnsLocked(name)
	if err != nil {
		return nil, fmt.Errorf("add node %s: %w", name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	err = setSysctls(ns, nodeSysctls)
	if err == nil {
		// A local address answers the pods' ARP requests for the gateway
		// on every veth. proxy_arp alone is not enough: it only answers
		// for targets the node has a route to, and a node without an
		// uplink has no default route.
		_, err = ns.IP(ctx, "addr", "add", PodGatewayV4.String()+"/32", "dev", "lo")
	}
	if err != nil {
		return nil, fmt.Errorf("add node %s: %w", name, err)
	}
	n := &Node{Name: name, NS: ns, lab: l}
	l.nodes = append(l.nodes, n)
	return n, nil
}

// hostVethName derives a stable, short (≤15 bytes) interface name.
func hostVethName(podNetns string) string {
	sum := sha256.Sum256([]byte(podNetns))
	return "v" + hex.EncodeToString(sum[:])[:10]
}

// AddPod creates a pod namespace named Prefix()+name on node and wires it up
// routed-CNI style:
//
//	pod:  eth0 with ipv4/32 and ipv6/128 (nodad),
//	      169.254.1.1 dev eth0 scope link; default via 169.254.1.1 dev eth0;
//	      ::/0 via fe80::1 dev eth0
//	node: host veth with proxy_arp=1 and fe80::1/64 (nodad),
//	      ipv4/32 dev <veth>; ipv6/128 dev <veth>
//
// Either address may be the zero netip.Addr (single stack), not both.
func (l *Lab) AddPod(node *Node, name string, ipv4, ipv6 netip.Addr) (*Pod, error) {
	return l.addPod(node, name, ipv4, ipv6, (*Pod).wireRouted)
}

// addPod creates the pod namespace and runs wire to connect it to its node.
// wire runs with the lab locked; on failure the pod namespace is deleted.
func (l *Lab) addPod(node *Node, name string, ipv4, ipv6 netip.Addr, wire func(*Pod) error) (*Pod, error) {
	if node == nil || node.lab != l {
		return nil, fmt.Errorf("add pod %s: node does not belong to this lab", name)
	}
	if !ipv4.IsValid() && !ipv6.IsValid() {
		return nil, fmt.Errorf("add pod %s: no address", name)
	}
	if ipv4.IsValid() && !ipv4.Is4() {
		return nil, fmt.Errorf("add pod %s: %s is not an IPv4 address", name, ipv4)
	}
	if ipv6.IsValid() && (!ipv6.Is6() || ipv6.Is4In6()) {
		return nil, fmt.Errorf("add pod %s: %s is not an IPv6 address", name, ipv6)
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range l.pods {
		if p.Name == name {
			return nil, fmt.Errorf("add pod %s: already exists", name)
		}
		if (ipv4.IsValid() && p.IPv4 == ipv4) || (ipv6.IsValid() && p.IPv6 == ipv6) {
			return nil, fmt.Errorf("add pod %s: address already used by pod %s", name, p.Name)
		}
	}
	if l.nodeLocked(name) != nil {
		return nil, fmt.Errorf("add pod %s: name already used by a node", name)
	}
	ns, err := l.newNetnsLocked(name)
	if err != nil {
		return nil, fmt.Errorf("add pod %s: %w", name, err)
	}
	p := &Pod{Name: name, Node: node, NS: ns, IPv4: ipv4, IPv6: ipv6, HostVeth: hostVethName(ns.Name()), lab: l}
	if err := wire(p); err != nil {
		// Deleting the pod namespace also deletes the veth pair and with
		// it the node's routes over it.
		return nil, errors.Join(fmt.Errorf("add pod %s: %w", name, err), ns.Delete())
	}
	l.pods = append(l.pods, p)
	node.mu.Lock()
	node.pods = append(node.pods, p)
	node.mu.Unlock()
	return p, nil
}

// wireRouted connects the pod routed-CNI style (see AddPod).
func (p *Pod) wireRouted() error {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	node, pod, veth := p.Node.NS, p.NS, p.HostVeth

	type step struct {
		ns   *Netns
		args []string
	}
	var steps []step
	add := func(ns *Netns, args ...string) { steps = append(steps, step{ns, args}) }

	// The peer is created directly in the pod namespace, so the name eth0
	// never clashes in the node namespace. DAD is already off in both
	// namespaces (podSysctls, nodeSysctls), so the veth inherits that.
	add(node, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", pod.Name())
	add(node, "link", "set", veth, "up")
	if p.IPv6.IsValid() {
		add(node, "-6", "addr", "add", PodGatewayV6.String()+"/64", "dev", veth, "nodad")
	}
	if p.IPv4.IsValid() {
		add(pod, "addr", "add", p.IPv4.String()+"/32", "dev", "eth0")
	}
	if p.IPv6.IsValid() {
		add(pod, "-6", "addr", "add", p.IPv6.String()+"/128", "dev", "eth0", "nodad")
	}
	add(pod, "link", "set", "eth0", "up")
	if p.IPv4.IsValid() {
		add(pod, "route", "add", PodGatewayV4.String(), "dev", "eth0", "scope", "link")
		add(pod, "route", "add", "0.0.0.0/0", "via", PodGatewayV4.String(), "dev", "eth0")
		add(node, "route", "add", p.IPv4.String()+"/32", "dev", veth)
	}
	if p.IPv6.IsValid() {
		add(pod, "-6", "route", "add", "::/0", "via", PodGatewayV6.String(), "dev", "eth0")
		add(node, "-6", "route", "add", p.IPv6.String()+"/128", "dev", veth)
	}

	// Before eth0 exists, so that it inherits DAD off.
	if err := setSysctls(pod, podSysctls); err != nil {
		return err
	}
	for i, s := range steps {
		if _, err := s.ns.IP(ctx, s.args...); err != nil {
			return err
		}
		if i == 0 {
			// Calico sets proxy_arp on the host veth. Here the gateway
			// is answered through the node's own 169.254.1.1 (see
			// AddNode); proxy_arp is kept for parity with Calico.
			if err := node.Sysctl("net/ipv4/conf/"+veth+"/proxy_arp", "1"); err != nil {
				return err
			}
		}
	}
	return nil
}

// RemovePod deletes the pod: servers the lab runs in its namespace are closed
// first (an open socket keeps a deleted namespace, and with it the veth pair
// and the node's routes over it, alive), then the host side of the veth is
// deleted (which takes the pod side and the node's routes with it) and the
// namespace is removed.
func (l *Lab) RemovePod(p *Pod) error {
	if p == nil || p.lab != l {
		return errors.New("remove pod: pod does not belong to this lab")
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return errors.New("remove pod: lab is closed")
	}
	i := slices.Index(l.pods, p)
	if i < 0 {
		l.mu.Unlock()
		return fmt.Errorf("remove pod %s: not in the lab (removed twice?)", p.Name)
	}
	l.pods = slices.Delete(l.pods, i, i+1)
	l.netns = slices.DeleteFunc(l.netns, func(ns *Netns) bool { return ns == p.NS })
	var servers []*Server
	l.servers = slices.DeleteFunc(l.servers, func(s *Server) bool {
		if s.ns == p.NS.Name() {
			servers = append(servers, s)
			return true
		}
		return false
	})
	l.mu.Unlock()
	p.Node.mu.Lock()
	p.Node.pods = slices.DeleteFunc(p.Node.pods, func(q *Pod) bool { return q == p })
	p.Node.mu.Unlock()

	var errs []error
	for _, s := range servers {
		errs = append(errs, s.Close())
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if out, err := p.Node.NS.IP(ctx, "link", "del", p.HostVeth); err != nil && !strings.Contains(string(out), "Cannot find device") {
		errs = append(errs, err)
	}
	errs = append(errs, p.NS.Delete())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove pod %s: %w", p.Name, err)
	}
	return nil
}
