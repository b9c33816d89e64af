package hostile

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/internal/npeval"
	"github.com/nftpolicy/nftpolicy/pkg/model"
)

// Random ClusterNetworkPolicies and Nodes for fuzzers. Nothing here is used by Cluster
// or CNPCluster: a test opts in by calling RandomNodes and RandomClusterPolicies, and
// the same Source gives the same objects.

// Source picks numbers: IntN returns one in [0, n). A *rand.Rand of math/rand/v2
// satisfies it, and so does Bytes, for a fuzz input.
type Source interface{ IntN(n int) int }

// Bytes reads a fuzz input a byte at a time, modulo n; past the end it yields 0, so
// every input decodes to something, and a short input to something small (choice 0 is
// always the simplest valid one).
type Bytes struct {
	B []byte
	i int
}

// IntN returns the next byte modulo n (0 when n < 1 or the input is spent).
func (b *Bytes) IntN(n int) int {
	if n < 1 || b.i >= len(b.B) {
		return 0
	}
	b.i++
	return int(b.B[b.i-1]) % n
}

// RandomNodes returns a node for each name of addrs (sorted by name) with those
// addresses, labelled role=worker or role=control and zone=a or zone=b (either may be
// missing).
func RandomNodes(src Source, addrs map[string][]netip.Addr) []*model.Node {
	var out []*model.Node
	for _, name := range slices.Sorted(maps.Keys(addrs)) {
		l := map[string]string{"kubernetes.io/hostname": name}
		if r := src.IntN(3); r > 0 {
			l["role"] = []string{"", "worker", "control"}[r]
		}
		if z := src.IntN(3); z > 0 {
			l["zone"] = []string{"", "a", "b"}[z]
		}
		out = append(out, &model.Node{Name: name, Labels: l, Addrs: slices.Clone(addrs[name])})
	}
	return out
}

// RandomClusterPolicies returns n ClusterNetworkPolicies named cnp0, cnp1, ... whose
// selectors, CIDRs and ports are drawn from the cluster (its namespaces, pod and node
// labels, addresses and named ports) so that they match something, with priorities
// that often tie. With invalid, about one choice in eight takes a shape the API refuses
// (unknown tier or action, a subject, peer or protocol with zero or two fields, empty
// lists, selectors and CIDRs that do not parse, bad ports, priorities out of 0-1000).
func RandomClusterPolicies(src Source, c npeval.Cluster, n int, invalid bool) []*cnp.ClusterNetworkPolicy {
	g := newGen(src, c, invalid)
	var out []*cnp.ClusterNetworkPolicy
	for i := range n {
		out = append(out, g.policy(fmt.Sprintf("cnp%d", i)))
	}
	return out
}

type gen struct {
	src     Source
	invalid bool
	// Vocabulary drawn from the cluster, sorted.
	nsLabels, podLabels, nodeLabels [][2]string
	addrs                           []netip.Addr
	portNames                       []string
	ports                           []int32
}

func newGen(src Source, c npeval.Cluster, invalid bool) *gen {
	g := &gen{src: src, invalid: invalid}
	pairs := func(into map[[2]string]bool, l map[string]string) {
		for k, v := range l {
			into[[2]string{k, v}] = true
		}
	}
	ns, pod, node := map[[2]string]bool{}, map[[2]string]bool{}, map[[2]string]bool{}
	addrs, names, ports := map[netip.Addr]bool{}, map[string]bool{"nope": true}, map[int32]bool{80: true, 53: true}
	for name, n := range c.Namespaces {
		ns[[2]string{npeval.NamespaceNameLabel, name}] = true
		if n != nil {
			pairs(ns, n.Labels)
		}
	}
	for _, p := range c.Pods {
		ns[[2]string{npeval.NamespaceNameLabel, p.Namespace}] = true
		pairs(pod, p.Labels)
		for _, a := range p.IPs {
			addrs[a.Unmap()] = true
		}
		for _, np := range p.Ports {
			names[np.Name] = true
			if np.Port >= 1 && np.Port <= 65535 {
				ports[np.Port] = true
			}
		}
	}
	for _, n := range c.Nodes {
		pairs(node, n.Labels)
		for _, a := range n.Addrs {
			addrs[a.Unmap()] = true
		}
	}
	less := func(a, b [2]string) int { return cmp.Or(cmp.Compare(a[0], b[0]), cmp.Compare(a[1], b[1])) }
	g.nsLabels = slices.SortedFunc(maps.Keys(ns), less)
	g.podLabels = slices.SortedFunc(maps.Keys(pod), less)
	g.nodeLabels = slices.SortedFunc(maps.Keys(node), less)
	g.addrs = slices.SortedFunc(maps.Keys(addrs), netip.Addr.Compare)
	g.portNames = slices.Sorted(maps.Keys(names))
	g.ports = slices.Sorted(maps.Keys(ports))
	return g
}

// bad reports whether to take an invalid shape this time.
func (g *gen) bad() bool { return g.invalid && g.src.IntN(8) == 7 }

func (g *gen) pick(n int) int { return g.src.IntN(n) }

// selector draws a label selector from the pairs: everything, one pair, a pair's key In
// its value and one more, NotIn, Exists, DoesNotExist, a value no object has; when bad,
// one that does not parse.
func (g *gen) selector(pairs [][2]string) *metav1.LabelSelector {
	if g.bad() {
		switch g.pick(3) {
		case 0:
			return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: "Bogus"}}}
		case 1:
			return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: metav1.LabelSelectorOpIn}}}
		default:
			return &metav1.LabelSelector{MatchLabels: map[string]string{"app": "not valid!"}}
		}
	}
	if len(pairs) == 0 {
		return &metav1.LabelSelector{}
	}
	p := pairs[g.pick(len(pairs))]
	req := func(op metav1.LabelSelectorOperator, vals ...string) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: p[0], Operator: op, Values: vals}}}
	}
	switch g.pick(7) {
	case 0:
		return &metav1.LabelSelector{}
	case 1:
		return &metav1.LabelSelector{MatchLabels: map[string]string{p[0]: p[1]}}
	case 2:
		return req(metav1.LabelSelectorOpIn, p[1], pairs[g.pick(len(pairs))][1])
	case 3:
		return req(metav1.LabelSelectorOpNotIn, p[1])
	case 4:
		return req(metav1.LabelSelectorOpExists)
	case 5:
		return req(metav1.LabelSelectorOpDoesNotExist)
	default:
		return &metav1.LabelSelector{MatchLabels: map[string]string{p[0]: "absent"}}
	}
}

func (g *gen) namespacedPod() *cnp.NamespacedPod {
	return &cnp.NamespacedPod{NamespaceSelector: *g.selector(g.nsLabels), PodSelector: *g.selector(g.podLabels)}
}

var (
	randomTiers      = []cnp.Tier{cnp.AdminTier, cnp.BaselineTier}
	randomPriorities = []int32{0, 1, 1, 5, 1000}
	randomActions    = []cnp.ClusterNetworkPolicyRuleAction{
		cnp.ClusterNetworkPolicyRuleActionAccept, cnp.ClusterNetworkPolicyRuleActionDeny, cnp.ClusterNetworkPolicyRuleActionPass,
	}
)

func (g *gen) policy(name string) *cnp.ClusterNetworkPolicy {
	p := &cnp.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}
	p.Spec.Tier = randomTiers[g.pick(2)]
	if g.bad() {
		p.Spec.Tier = []cnp.Tier{"", "Middle"}[g.pick(2)]
	}
	p.Spec.Priority = randomPriorities[g.pick(len(randomPriorities))]
	if g.bad() {
		p.Spec.Priority = []int32{-1, 1001}[g.pick(2)]
	}
	switch {
	case g.bad():
		if g.pick(2) == 0 {
			p.Spec.Subject = cnp.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{}, Pods: &cnp.NamespacedPod{}}
		} // else neither field
	case g.pick(2) == 0:
		p.Spec.Subject.Namespaces = g.selector(g.nsLabels)
	default:
		p.Spec.Subject.Pods = g.namespacedPod()
	}
	for range g.pick(4) {
		r := cnp.ClusterNetworkPolicyIngressRule{Action: g.action()}
		for _, e := range g.peers(false) {
			if e == nil {
				r.From = []cnp.ClusterNetworkPolicyIngressPeer{}
				continue
			}
			r.From = append(r.From, cnp.ClusterNetworkPolicyIngressPeer{Namespaces: e.Namespaces, Pods: e.Pods})
		}
		r.Protocols = g.protocols()
		p.Spec.Ingress = append(p.Spec.Ingress, r)
	}
	for range g.pick(4) {
		r := cnp.ClusterNetworkPolicyEgressRule{Action: g.action()}
		for _, e := range g.peers(true) {
			if e == nil {
				r.To = []cnp.ClusterNetworkPolicyEgressPeer{}
				continue
			}
			r.To = append(r.To, *e)
		}
		r.Protocols = g.protocols()
		p.Spec.Egress = append(p.Spec.Egress, r)
	}
	return p
}

func (g *gen) action() cnp.ClusterNetworkPolicyRuleAction {
	if g.bad() {
		return "Allow"
	}
	return randomActions[g.pick(3)]
}

// peers returns one to three peers; when bad, none (a single nil: an empty, non-nil
// list). Egress peers may be of every kind.
func (g *gen) peers(egress bool) []*cnp.ClusterNetworkPolicyEgressPeer {
	if g.bad() && g.pick(3) == 0 {
		return []*cnp.ClusterNetworkPolicyEgressPeer{nil}
	}
	var out []*cnp.ClusterNetworkPolicyEgressPeer
	for range 1 + g.pick(3) {
		out = append(out, g.peer(egress))
	}
	return out
}

func (g *gen) peer(egress bool) *cnp.ClusterNetworkPolicyEgressPeer {
	if g.bad() {
		switch g.pick(3) {
		case 0:
			return &cnp.ClusterNetworkPolicyEgressPeer{}
		case 1:
			return &cnp.ClusterNetworkPolicyEgressPeer{Namespaces: &metav1.LabelSelector{}, Pods: &cnp.NamespacedPod{}}
		default:
			if egress {
				return &cnp.ClusterNetworkPolicyEgressPeer{Networks: []cnp.CIDR{}}
			}
			return &cnp.ClusterNetworkPolicyEgressPeer{}
		}
	}
	kinds := 2
	if egress {
		kinds = 5
	}
	switch g.pick(kinds) {
	case 0:
		return &cnp.ClusterNetworkPolicyEgressPeer{Namespaces: g.selector(g.nsLabels)}
	case 1:
		return &cnp.ClusterNetworkPolicyEgressPeer{Pods: g.namespacedPod()}
	case 2:
		var nets []cnp.CIDR
		for range 1 + g.pick(3) {
			nets = append(nets, g.cidr())
		}
		return &cnp.ClusterNetworkPolicyEgressPeer{Networks: nets}
	case 3:
		return &cnp.ClusterNetworkPolicyEgressPeer{Nodes: g.selector(g.nodeLabels)}
	default:
		return &cnp.ClusterNetworkPolicyEgressPeer{DomainNames: []cnp.DomainName{"example.com"}}
	}
}

// cidr is a cluster address as a host prefix or within a shorter one, or everything of
// a family; when bad, one the API refuses.
func (g *gen) cidr() cnp.CIDR {
	if g.bad() {
		return cnp.CIDR([]string{"garbage", "10.0.0.1/24", "10.0.0.0/33", "::ffff:10.0.0.0/120", "fd00::1/64"}[g.pick(5)])
	}
	if len(g.addrs) == 0 || g.pick(5) == 4 {
		return cnp.CIDR([]string{"0.0.0.0/0", "::/0"}[g.pick(2)])
	}
	a := g.addrs[g.pick(len(g.addrs))]
	bits := []int{32, 30, 24, 8}[g.pick(4)]
	if a.Is6() {
		bits += 96
	}
	return cnp.CIDR(netip.PrefixFrom(a, bits).Masked().String())
}

// protocols: none (all traffic) half the time, else one to three entries.
func (g *gen) protocols() []cnp.ClusterNetworkPolicyProtocol {
	if g.bad() && g.pick(3) == 0 {
		return []cnp.ClusterNetworkPolicyProtocol{}
	}
	if g.pick(2) == 0 {
		return nil
	}
	var out []cnp.ClusterNetworkPolicyProtocol
	for range 1 + g.pick(3) {
		out = append(out, g.protocol())
	}
	return out
}

func (g *gen) protocol() cnp.ClusterNetworkPolicyProtocol {
	if g.bad() {
		switch g.pick(6) {
		case 0:
			return cnp.ClusterNetworkPolicyProtocol{}
		case 1:
			return cnp.ClusterNetworkPolicyProtocol{TCP: &cnp.ClusterNetworkPolicyProtocolTCP{}, UDP: &cnp.ClusterNetworkPolicyProtocolUDP{}}
		case 2:
			return cnp.ClusterNetworkPolicyProtocol{TCP: &cnp.ClusterNetworkPolicyProtocolTCP{}, DestinationNamedPort: g.portNames[0]}
		default:
			bad := []cnp.Port{{}, {Number: 70000}, {Number: 80, Range: &cnp.PortRange{Start: 80, End: 81}}, {Range: &cnp.PortRange{Start: 81, End: 80}}}
			p := bad[g.pick(len(bad))]
			return cnp.ClusterNetworkPolicyProtocol{SCTP: &cnp.ClusterNetworkPolicyProtocolSCTP{DestinationPort: &p}}
		}
	}
	var port *cnp.Port
	switch g.pick(4) {
	case 0:
		port = &cnp.Port{Number: g.ports[g.pick(len(g.ports))]}
	case 1:
		start := g.ports[g.pick(len(g.ports))]
		end := min(start+int32(g.pick(3)), 65535) // a one-port range now and then
		port = &cnp.Port{Range: &cnp.PortRange{Start: start, End: end}}
	case 2: // every port of the protocol
	default:
		return cnp.ClusterNetworkPolicyProtocol{DestinationNamedPort: g.portNames[g.pick(len(g.portNames))]}
	}
	switch g.pick(3) {
	case 0:
		return cnp.ClusterNetworkPolicyProtocol{TCP: &cnp.ClusterNetworkPolicyProtocolTCP{DestinationPort: port}}
	case 1:
		return cnp.ClusterNetworkPolicyProtocol{UDP: &cnp.ClusterNetworkPolicyProtocolUDP{DestinationPort: port}}
	default:
		return cnp.ClusterNetworkPolicyProtocol{SCTP: &cnp.ClusterNetworkPolicyProtocolSCTP{DestinationPort: port}}
	}
}
