// Package npeval is a small reference evaluator of networking.k8s.io/v1 NetworkPolicy
// and policy.networking.k8s.io/v1beta1 ClusterNetworkPolicy, written from the API
// documentation and deliberately independent of pkg/compiler: it answers "is this
// connection allowed?" by walking the policies directly, with no sets, chains or
// indexes. Tests use it as the oracle the compiled ruleset (judged by pkg/tracer) must
// agree with.
//
// Each end of a connection is judged on its own (egress at the source pod, ingress at
// the destination pod) through the tiers in order: the Admin ClusterNetworkPolicies,
// then the NetworkPolicies, then the Baseline ClusterNetworkPolicies, then the default
// (allowed); see Verdict and cnp.go.
//
// Where a NetworkPolicy is invalid (it would not pass API validation but reached the
// agent anyway), the part that cannot be understood allows nothing and everything else
// still applies; a policy whose podSelector cannot be parsed is ignored as a whole,
// because which pods it isolates is unknown. Invalid ClusterNetworkPolicies fail closed
// as their API prescribes (see cnp.go).
package npeval

import (
	"net/netip"
	"sync"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/pkg/model"
)

// NamespaceNameLabel is the label the API server puts on every namespace.
const NamespaceNameLabel = "kubernetes.io/metadata.name"

// Cluster is the state a verdict depends on.
type Cluster struct {
	Pods       []*model.Pod
	Namespaces map[string]*model.Namespace
	Policies   []*networkingv1.NetworkPolicy
	// ClusterPolicies are the ClusterNetworkPolicies of both tiers, in any order.
	ClusterPolicies []*cnp.ClusterNetworkPolicy
	// Nodes are the cluster's nodes: the addresses `nodes` egress peers match.
	Nodes []*model.Node
}

// ProtocolICMP may be given as Conn.Proto for ICMP (or ICMPv6, by the addresses'
// family): only rules without ports or protocols match it.
const ProtocolICMP corev1.Protocol = "ICMP"

// Conn is the first packet of a connection. Proto is TCP, UDP, SCTP or any other
// protocol (ProtocolICMP, say), for which Port means nothing. Replies are not modelled.
type Conn struct {
	Src, Dst netip.Addr
	Proto    corev1.Protocol
	Port     uint16
}

// Evaluator answers connection verdicts for one cluster state.
type Evaluator struct {
	c      Cluster
	owners map[netip.Addr]*model.Pod
	// admin and baseline are the valid ClusterNetworkPolicies of each tier in the
	// order they are evaluated.
	admin, baseline []*clusterPolicy

	mu   sync.Mutex
	sels map[*metav1.LabelSelector]parsedSelector
}

type parsedSelector struct {
	sel labels.Selector
	err error
}

// selector parses a label selector once per Evaluator (hostile clusters have rules of
// hundreds of selectors, and parsing dominated their evaluation). Selectors are known
// by address: the cluster state must not change while its Evaluator is in use.
func (e *Evaluator) selector(ls *metav1.LabelSelector) (labels.Selector, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if p, ok := e.sels[ls]; ok {
		return p.sel, p.err
	}
	sel, err := metav1.LabelSelectorAsSelector(ls)
	e.sels[ls] = parsedSelector{sel, err}
	return sel, err
}

// New indexes which pod owns each address and orders the ClusterNetworkPolicies.
func New(c Cluster) *Evaluator {
	e := &Evaluator{c: c, owners: map[netip.Addr]*model.Pod{}, sels: map[*metav1.LabelSelector]parsedSelector{}}
	e.admin, e.baseline = orderClusterPolicies(c.ClusterPolicies)
	for _, p := range c.Pods {
		if !participates(p) {
			continue
		}
		for _, ip := range p.IPs {
			ip = ip.Unmap()
			if cur, ok := e.owners[ip]; !ok || betterClaim(p, cur) {
				e.owners[ip] = p
			}
		}
	}
	return e
}

// participates: hostNetwork pods share the node's address and are neither isolated nor
// selected; pods that finished, or have no address yet, carry no traffic.
func participates(p *model.Pod) bool {
	if p.HostNetwork || len(p.IPs) == 0 {
		return false
	}
	return p.Phase != corev1.PodSucceeded && p.Phase != corev1.PodFailed
}

// betterClaim decides which of two pods claiming one address owns it: the Running one,
// otherwise the first by namespace then name (a stale status during IP reuse).
func betterClaim(p, cur *model.Pod) bool {
	pr, cr := p.Phase == corev1.PodRunning, cur.Phase == corev1.PodRunning
	if pr != cr {
		return pr
	}
	if p.Namespace != cur.Namespace {
		return p.Namespace < cur.Namespace
	}
	return p.Name < cur.Name
}

// Owner returns the pod an address belongs to, nil for anything outside the pods.
func (e *Evaluator) Owner(ip netip.Addr) *model.Pod { return e.owners[ip.Unmap()] }

// Allowed reports whether the connection may be opened: the source pod's egress
// policies must allow it, and the destination pod's ingress policies too. An address
// that no pod owns is not subject to policy on its side. Verdict says why.
func (e *Evaluator) Allowed(c Conn) bool { return e.Verdict(c).Allowed }

// npSide judges one end by the NetworkPolicies alone: self is the pod whose policies
// apply, peer the pod at the other end (nil: an address outside the pods). isolated
// reports whether any policy selects self for the direction; then the connection is
// allowed iff some rule allows it, and policy (namespace/name) and rule (its index in
// the policy's ingress or egress list) name the first such rule.
func (e *Evaluator) npSide(dir networkingv1.PolicyType, self, peer *model.Pod, c Conn) (isolated, allowed bool, policy string, rule int) {
	peerIP, dst := c.Src, self
	if dir == networkingv1.PolicyTypeEgress {
		peerIP, dst = c.Dst, peer
	}
	for _, np := range e.c.Policies {
		if np.Namespace != self.Namespace {
			continue
		}
		sel, err := e.selector(&np.Spec.PodSelector)
		if err != nil || !sel.Matches(labels.Set(self.Labels)) {
			continue
		}
		if !hasType(np, dir) {
			continue
		}
		isolated = true
		if dir == networkingv1.PolicyTypeIngress {
			for i, r := range np.Spec.Ingress {
				if e.ruleAllows(np, r.From, r.Ports, peer, peerIP, dst, c) {
					return true, true, np.Namespace + "/" + np.Name, i
				}
			}
		} else {
			for i, r := range np.Spec.Egress {
				if e.ruleAllows(np, r.To, r.Ports, peer, peerIP, dst, c) {
					return true, true, np.Namespace + "/" + np.Name, i
				}
			}
		}
	}
	return isolated, !isolated, "", -1
}

// hasType applies the policyTypes default: Ingress always, Egress when there are
// egress rules. Unknown types affect nothing.
func hasType(np *networkingv1.NetworkPolicy, dir networkingv1.PolicyType) bool {
	if len(np.Spec.PolicyTypes) == 0 {
		return dir == networkingv1.PolicyTypeIngress || len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		if t == dir {
			return true
		}
	}
	return false
}

// ruleAllows: an empty peer list is everyone, an empty port list every port.
func (e *Evaluator) ruleAllows(np *networkingv1.NetworkPolicy, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort,
	peer *model.Pod, peerIP netip.Addr, dst *model.Pod, c Conn) bool {
	if len(peers) > 0 {
		ok := false
		for _, p := range peers {
			if e.peerMatches(np, p, peer, peerIP) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		if portMatches(p, dst, c) {
			return true
		}
	}
	return false
}

func (e *Evaluator) peerMatches(np *networkingv1.NetworkPolicy, p networkingv1.NetworkPolicyPeer, peer *model.Pod, peerIP netip.Addr) bool {
	if p.IPBlock != nil {
		// ipBlock excludes the selectors; such a peer is invalid and matches nothing.
		if p.PodSelector != nil || p.NamespaceSelector != nil {
			return false
		}
		return blockContains(p.IPBlock, peerIP)
	}
	if p.PodSelector == nil && p.NamespaceSelector == nil {
		return false // an empty peer is invalid
	}
	if peer == nil {
		return false
	}
	if p.NamespaceSelector == nil {
		if peer.Namespace != np.Namespace {
			return false
		}
	} else {
		sel, err := e.selector(p.NamespaceSelector)
		if err != nil || !sel.Matches(e.namespaceLabels(peer.Namespace)) {
			return false
		}
	}
	if p.PodSelector == nil {
		return true
	}
	sel, err := e.selector(p.PodSelector)
	return err == nil && sel.Matches(labels.Set(peer.Labels))
}

// namespaceLabels: the API server labels every namespace with its name, so even one
// missing from the cluster state (deleted, not yet seen) carries that label.
func (e *Evaluator) namespaceLabels(name string) labels.Set {
	l := labels.Set{}
	if ns := e.c.Namespaces[name]; ns != nil {
		for k, v := range ns.Labels {
			l[k] = v
		}
	}
	if _, ok := l[NamespaceNameLabel]; !ok {
		l[NamespaceNameLabel] = name
	}
	return l
}

// blockContains: inside the CIDR and inside no except of the same family. A CIDR or
// except that does not parse makes the whole block match nothing.
func blockContains(b *networkingv1.IPBlock, ip netip.Addr) bool {
	cidr, ok := parseCIDR(b.CIDR)
	if !ok {
		return false
	}
	in := cidr.Contains(ip)
	for _, s := range b.Except {
		ex, ok := parseCIDR(s)
		if !ok {
			return false
		}
		if ex.Contains(ip) {
			in = false
		}
	}
	return in
}

// parseCIDR reads a CIDR, host bits ignored. An IPv4-mapped IPv6 CIDR that covers only
// mapped addresses (length 96 or more) means the IPv4 CIDR it maps.
func parseCIDR(s string) (netip.Prefix, bool) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, false
	}
	p = p.Masked()
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p, true
}

// portMatches: protocol (TCP by default) and, when given, the port: a number, a range up
// to endPort, or a name resolved on the destination pod. An invalid entry (unknown
// protocol, a number out of 1-65535, a bad range, endPort with a name or without a
// port — the API server refuses both) matches nothing.
func portMatches(p networkingv1.NetworkPolicyPort, dst *model.Pod, c Conn) bool {
	proto := corev1.ProtocolTCP
	if p.Protocol != nil {
		proto = *p.Protocol
	}
	switch proto {
	case corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
	default:
		return false
	}
	if proto != c.Proto {
		return false
	}
	if p.Port == nil {
		return p.EndPort == nil
	}
	if p.Port.Type == intstr.String {
		if p.EndPort != nil || dst == nil {
			return false
		}
		for _, np := range dst.Ports {
			if np.Name == p.Port.StrVal && np.Protocol == proto {
				return int32(c.Port) == np.Port
			}
		}
		return false
	}
	from, to := p.Port.IntVal, p.Port.IntVal
	if p.EndPort != nil {
		to = *p.EndPort
	}
	if from < 1 || to > 65535 || to < from {
		return false
	}
	return int32(c.Port) >= from && int32(c.Port) <= to
}
