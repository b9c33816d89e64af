package compiler

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// podSetKind tells what a pod set holds.
type podSetKind int

const (
	// podsOfPeers: the addresses of the pods a rule's pod-selecting peers select.
	podsOfPeers podSetKind = iota
	// namedIngress: `address . proto . port` of the local pods a policy selects,
	// for the named ports of an ingress rule.
	namedIngress
	// namedEgress: `address . proto . port` of the peer pods of an egress rule (every
	// pod when the rule has no peers), for its named ports.
	namedEgress
)

// podSet is a set whose elements come from pods, each pod contributing its own: the
// addresses a pod owns belong to it alone (model.IPOwners), so the contributions of
// two pods never share an element. That is what lets the Engine keep these sets up to
// date pod by pod, and what Compile uses to fill them all at once.
type podSet struct {
	name string
	// key describes the membership completely: two pod sets with the same name and key
	// hold the same elements in the same cluster.
	key    string
	kind   podSetKind
	fam    ruleset.Family
	peer   *peerSpec // podsOfPeers, namedEgress (nil: every pod)
	subj   subject   // namedIngress
	named  []namedPort
	node   string // namedIngress: the local node
	keyTyp []ruleset.KeyType
	empty  *ruleset.Set // the set without elements, as the Engine's structure diff sees it
}

func newPeerPodSet(name string, peer *peerSpec, fam ruleset.Family) *podSet {
	return &podSet{name: name, key: fmt.Sprintf("pods %d %s", fam, peer.podKey), kind: podsOfPeers, fam: fam, peer: peer}
}

// subject is what selects the local pods of a namedIngress set: a NetworkPolicy's pod
// selector in its namespace, or a ClusterNetworkPolicy's subject.
type subject interface {
	selects(u universe, pod *model.Pod) bool
	describe() string
}

func (p *policy) selects(_ universe, pod *model.Pod) bool {
	return pod.Namespace == p.np.Namespace && p.selector.Matches(labels.Set(pod.Labels))
}

func (p *policy) describe() string { return p.np.Namespace + " " + p.selector.String() }

func newNamedPodSet(name string, p subject, dir Direction, node string, peer *peerSpec, named []namedPort, fam ruleset.Family) *podSet {
	var key strings.Builder
	fmt.Fprintf(&key, "named %d %s", fam, dir)
	for _, n := range named {
		fmt.Fprintf(&key, " %s/%s", n.name, n.proto)
	}
	ps := &podSet{name: name, kind: namedEgress, fam: fam, named: named}
	if dir == Ingress {
		ps.kind, ps.subj, ps.node = namedIngress, p, node
		fmt.Fprintf(&key, " selected %s on %s", p.describe(), node)
	} else if peer != nil {
		ps.peer = peer
		fmt.Fprintf(&key, " peers %s %s", peer.podKey, peer.cidrKey)
	}
	ps.key = key.String()
	return ps
}

// contribute appends the elements pod adds to the set when it owns ips; u supplies the
// namespace labels peers select on.
func (ps *podSet) contribute(u universe, pod *model.Pod, ips []netip.Addr, out []ruleset.Element) []ruleset.Element {
	switch ps.kind {
	case podsOfPeers:
		matched := false
		for _, ip := range ips {
			if ip.Is4() != (ps.fam == ruleset.IPv4) {
				continue
			}
			if !matched {
				if !ps.peer.selectsPod(u, pod) {
					return out
				}
				matched = true
			}
			out = append(out, ruleset.Element{Key: []ruleset.Range{ruleset.Addr(ip)}})
		}
	case namedIngress:
		if pod.NodeName != ps.node || !ps.subj.selects(u, pod) {
			return out
		}
		out = ps.namedElements(u, pod, ips, out)
	case namedEgress:
		out = ps.namedElements(u, pod, ips, out)
	}
	return out
}

func (ps *podSet) namedElements(u universe, pod *model.Pod, ips []netip.Addr, out []ruleset.Element) []ruleset.Element {
	first := len(out)
	for _, ip := range ips {
		if ip.Is4() != (ps.fam == ruleset.IPv4) {
			continue
		}
		if ps.kind == namedEgress && ps.peer != nil && !ps.peer.has(u, pod, ip) {
			continue
		}
	ports:
		for _, np := range ps.named {
			port, ok := pod.ResolvePort(np.name, np.proto)
			if !ok {
				continue
			}
			e := ruleset.Element{Key: []ruleset.Range{ruleset.Addr(ip), ruleset.Proto(np.num), ruleset.PortRange(uint16(port), uint16(port))}}
			// Two port names may resolve to the same port: one element.
			for _, o := range out[first:] {
				if o.Equal(e) {
					continue ports
				}
			}
			out = append(out, e)
		}
	}
	return out
}

// fill computes the set's elements from every pod that can contribute.
func (ps *podSet) fill(u universe) []ruleset.Element {
	var out []ruleset.Element
	visit := func(p *model.Pod) { out = ps.contribute(u, p, u.ownedIPs(p), out) }
	switch {
	case ps.kind == namedIngress:
		for _, p := range u.localPods() {
			visit(p)
		}
	case ps.peer == nil || len(ps.peer.blocks[ps.fam]) > 0:
		// Egress named ports to anywhere, or to ipBlocks that may hold any pod.
		u.eachPod(visit)
	case ps.kind == podsOfPeers:
		ps.peer.eachNamespace(u, func(ns string) { out = ps.fillNamespace(u, ns, out) })
	default:
		ps.peer.eachNamespace(u, func(ns string) { u.eachPodIn(ns, visit) })
	}
	return out
}

// fillNamespace appends the elements of the pods of ns to a podsOfPeers set: contribute
// for each of them, with the namespace half of every peer decided once for the
// namespace rather than per pod (a team's namespace selector fills a set with a tenth
// of the cluster on the first Flush). Elements come from one block of ranges, not two
// allocations each.
func (ps *podSet) fillNamespace(u universe, ns string, out []ruleset.Element) []ruleset.Element {
	var sels []labels.Selector // nil: every pod of ns
	matched, everyPod := false, false
	l := u.namespaceLabels(ns)
	for _, pp := range ps.peer.pods {
		if pp.nsSelector == nil && pp.namespace != ns || pp.nsSelector != nil && !pp.nsSelector.Matches(l) {
			continue
		}
		matched = true
		if pp.podSelector == nil {
			everyPod = true
			break
		}
		sels = append(sels, pp.podSelector)
	}
	if !matched {
		return out
	}
	var ranges []ruleset.Range
	var addrs []byte
	u.eachPodIn(ns, func(p *model.Pod) {
		if !everyPod && !slices.ContainsFunc(sels, func(s labels.Selector) bool { return s.Matches(labels.Set(p.Labels)) }) {
			return
		}
		for _, ip := range u.ownedIPs(p) {
			if ip.Is4() != (ps.fam == ruleset.IPv4) {
				continue
			}
			if len(ranges) == cap(ranges) {
				ranges = make([]ruleset.Range, 0, 64)
				addrs = make([]byte, 0, 64*ip.BitLen()/8)
			}
			n := len(addrs)
			if ip.Is4() {
				a4 := ip.As4()
				addrs = append(addrs, a4[:]...)
			} else {
				a16 := ip.As16()
				addrs = append(addrs, a16[:]...)
			}
			a := addrs[n:len(addrs):len(addrs)]
			ranges = append(ranges, ruleset.Range{From: a, To: a})
			out = append(out, ruleset.Element{Key: ranges[len(ranges)-1 : len(ranges) : len(ranges)]})
		}
	})
	return out
}
