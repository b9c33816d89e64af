// Package model is the compiler's view of the cluster: plain Go values holding only what
// NetworkPolicy enforcement needs. The agent converts API objects into it (PodFromAPI);
// tests build it by hand. It has no kernel or client-go dependency.
package model

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// Pod is a pod as far as policy is concerned.
type Pod struct {
	// Version is the resourceVersion of the object the pod was read from: a pod whose
	// object has the same version need not be converted again.
	Version         string
	Namespace, Name string
	Labels          map[string]string
	NodeName        string
	// IPs are the pod's addresses (status.podIPs), at most one per family.
	IPs         []netip.Addr
	Phase       corev1.PodPhase
	HostNetwork bool
	// Ports are the named container ports, used to resolve named ports in policies.
	Ports []NamedPort
}

// NamedPort is a container port that has a name.
type NamedPort struct {
	Name     string
	Protocol corev1.Protocol
	Port     int32
}

// Key is namespace/name.
func (p *Pod) Key() string { return p.Namespace + "/" + p.Name }

// Equivalent reports whether two pods are the same for enforcement: equal in every
// field but Version.
func (p *Pod) Equivalent(o *Pod) bool {
	a, b := *p, *o
	a.Version, b.Version = "", ""
	return reflect.DeepEqual(a, b)
}

// Less orders pods by namespace, then name, without building their keys (sorting 50k
// pods by Key allocated most of a compile).
func Less(a, b *Pod) bool {
	if a.Namespace != b.Namespace {
		return a.Namespace < b.Namespace
	}
	return a.Name < b.Name
}

// Terminated pods keep their IP in the API after the IP may have been handed to a new
// pod; they take no part in enforcement.
func (p *Pod) Terminated() bool {
	return p.Phase == corev1.PodSucceeded || p.Phase == corev1.PodFailed
}

// Eligible reports whether the pod takes part in policy at all: hostNetwork pods use the
// node's address (policy cannot tell them from the node), and pods that have ended or
// have no IP have no traffic to judge.
func (p *Pod) Eligible() bool {
	return !p.HostNetwork && !p.Terminated() && len(p.IPs) > 0
}

// ResolvePort returns the port number a named port has on this pod for the protocol.
func (p *Pod) ResolvePort(name string, proto corev1.Protocol) (int32, bool) {
	for _, np := range p.Ports {
		if np.Name == name && np.Protocol == proto {
			return np.Port, true
		}
	}
	return 0, false
}

// Namespace carries the labels namespace selectors match.
type Namespace struct {
	Name   string
	Labels map[string]string
}

// Snapshot is everything the compiler needs for one node.
type Snapshot struct {
	// NodeName selects the local pods: those whose spec.nodeName equals it.
	NodeName   string
	Pods       []*Pod
	Namespaces map[string]*Namespace
	Policies   []*networkingv1.NetworkPolicy
	// ClusterPolicies are the ClusterNetworkPolicies (policy.networking.k8s.io), both
	// tiers; none when the CRD is not installed.
	ClusterPolicies []*cnp.ClusterNetworkPolicy
	// Nodes are the cluster's nodes: ClusterNetworkPolicy egress `nodes` peers select
	// their addresses.
	Nodes []*Node
}

// Node is a node as far as policy is concerned: its labels, which `nodes` peers select,
// and its addresses, which they then match.
type Node struct {
	// Version is the resourceVersion the node was read from.
	Version string
	Name    string
	Labels  map[string]string
	// Addrs are the IP addresses of status.addresses (InternalIP and ExternalIP), each
	// once, in the order listed.
	Addrs []netip.Addr
}

// Equivalent reports whether two nodes are the same for enforcement: equal in every
// field but Version.
func (n *Node) Equivalent(o *Node) bool {
	a, b := *n, *o
	a.Version, b.Version = "", ""
	return reflect.DeepEqual(a, b)
}

// NodeFromAPI converts an API Node into the model. Host names and addresses that do not
// parse are skipped: a peer matches packets by address only.
func NodeFromAPI(n *corev1.Node) *Node {
	out := &Node{Version: n.ResourceVersion, Name: n.Name, Labels: n.Labels}
	seen := map[netip.Addr]bool{}
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err != nil {
			continue
		}
		ip = ip.Unmap()
		if !seen[ip] {
			seen[ip] = true
			out.Addrs = append(out.Addrs, ip)
		}
	}
	return out
}

// PodFromAPI converts an API Pod into the model, keeping only what enforcement needs.
// Named ports come from containers and from restartable init containers (sidecars,
// restartPolicy Always), which serve traffic for the pod's whole life.
func PodFromAPI(p *corev1.Pod) *Pod {
	out := &Pod{
		Version:     p.ResourceVersion,
		Namespace:   p.Namespace,
		Name:        p.Name,
		Labels:      p.Labels,
		NodeName:    p.Spec.NodeName,
		Phase:       p.Status.Phase,
		HostNetwork: p.Spec.HostNetwork,
	}
	// A pod has one or two addresses: a scan finds duplicates without the map that
	// would be allocated for every pod of the initial list.
	addIP := func(s string) {
		if a, err := netip.ParseAddr(s); err == nil {
			a = a.Unmap()
			if !slices.Contains(out.IPs, a) {
				out.IPs = append(out.IPs, a)
			}
		}
	}
	for _, ip := range p.Status.PodIPs {
		addIP(ip.IP)
	}
	if p.Status.PodIP != "" {
		addIP(p.Status.PodIP)
	}
	addPorts := func(c corev1.Container) {
		for _, cp := range c.Ports {
			if cp.Name == "" {
				continue
			}
			proto := cp.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			out.Ports = append(out.Ports, NamedPort{Name: cp.Name, Protocol: proto, Port: cp.ContainerPort})
		}
	}
	if v, ok := p.Annotations[NamedPortsAnnotation]; ok && len(p.Spec.Containers) == 0 {
		out.Ports = ParseNamedPorts(v)
		return out
	}
	for _, c := range p.Spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			addPorts(c)
		}
	}
	for _, c := range p.Spec.Containers {
		addPorts(c)
	}
	return out
}

// IPOwners maps every pod IP to the one pod that owns it. Ineligible pods own nothing.
// When two eligible pods claim one IP (a stale status during IP reuse), a Running pod
// wins over one that is not; among equals the first by namespace, then name, wins so the
// result is deterministic.
func IPOwners(pods []*Pod) map[netip.Addr]*Pod {
	owners := make(map[netip.Addr]*Pod, len(pods))
	for _, p := range pods {
		if !p.Eligible() {
			continue
		}
		for _, ip := range p.IPs {
			if cur, ok := owners[ip]; !ok || ownsBefore(p, cur) {
				owners[ip] = p
			}
		}
	}
	return owners
}

// Owner returns the pod that owns an address the given eligible pods all claim (nil
// when there are none), by the rule IPOwners applies.
func Owner(claims []*Pod) *Pod {
	var best *Pod
	for _, p := range claims {
		if best == nil || ownsBefore(p, best) {
			best = p
		}
	}
	return best
}

// ownsBefore reports whether p has the better claim to an IP than cur: a Running pod
// over one that is not, then the first by namespace and name — independent of the
// order pods are listed in.
func ownsBefore(p, cur *Pod) bool {
	pr, cr := p.Phase == corev1.PodRunning, cur.Phase == corev1.PodRunning
	if pr != cr {
		return pr
	}
	return Less(p, cur)
}

// NamedPortsAnnotation carries a pod's named ports on the trimmed copy the agent caches
// (see controllers.TrimPod): a container takes 400 bytes even when only its ports are
// kept, which is a fifth of a cached pod. It is read only on objects without
// containers, so a pod from the API server can never supply it.
const NamedPortsAnnotation = "nftpolicy.io/named-ports"

// FormatNamedPorts encodes named ports for NamedPortsAnnotation: name/PROTO/port,...
func FormatNamedPorts(ports []NamedPort) string {
	var b strings.Builder
	for i, p := range ports {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s/%s/%d", p.Name, p.Protocol, p.Port)
	}
	return b.String()
}

// ParseNamedPorts decodes FormatNamedPorts; malformed entries are skipped.
func ParseNamedPorts(s string) []NamedPort {
	var out []NamedPort
	for part := range strings.SplitSeq(s, ",") {
		f := strings.Split(part, "/")
		if len(f) != 3 {
			continue
		}
		n, err := strconv.ParseInt(f[2], 10, 32)
		if err != nil {
			continue
		}
		out = append(out, NamedPort{Name: f[0], Protocol: corev1.Protocol(f[1]), Port: int32(n)})
	}
	return out
}
