package compiler

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// NamespaceNameLabel is set by the API server on every namespace; a namespace the
// snapshot lacks (not yet cached, or deleted) still carries it for selector matching.
const NamespaceNameLabel = "kubernetes.io/metadata.name"

// podPeer selects pods: in the policy's namespace when nsSelector is nil, otherwise in
// every namespace nsSelector matches; podSelector nil means every pod there.
type podPeer struct {
	namespace   string
	nsSelector  labels.Selector
	podSelector labels.Selector
}

// peerSpec is the union of a rule's peers. Its canonical keys name the sets, so rules
// with identical peers (in any policy) share them: podKey the set of the pods' addresses,
// cidrKey the interval set of the ipBlocks.
type peerSpec struct {
	podKey, cidrKey string
	pods            []podPeer
	blocks          map[ruleset.Family]addrSet
	// nodeKey and nodes: the `nodes` peers of a ClusterNetworkPolicy egress rule, which
	// match the addresses of the nodes they select.
	nodeKey string
	nodes   []labels.Selector
}

// parsePeers resolves a rule's from/to list. A peer that cannot be parsed is reported
// and matches nothing; the other peers still apply.
func (c *compilation) parsePeers(np *networkingv1.NetworkPolicy, field string, peers []networkingv1.NetworkPolicyPeer) *peerSpec {
	spec := &peerSpec{blocks: map[ruleset.Family]addrSet{}}
	var podKeys, cidrKeys []string
	var cidrs = map[ruleset.Family]addrSet{}
	for i, peer := range peers {
		pfield := fmt.Sprintf("%s.to[%d]", field, i)
		if strings.HasPrefix(field, "spec.ingress") {
			pfield = fmt.Sprintf("%s.from[%d]", field, i)
		}
		if peer.IPBlock != nil {
			if peer.PodSelector != nil || peer.NamespaceSelector != nil {
				c.problem(np, pfield, fmt.Errorf("ipBlock cannot be combined with podSelector or namespaceSelector"))
				continue
			}
			block, fam, key, err := parseIPBlock(peer.IPBlock)
			if err != nil {
				c.problem(np, pfield+".ipBlock", err)
				continue
			}
			cidrs[fam] = append(cidrs[fam], block...)
			cidrKeys = append(cidrKeys, key)
			continue
		}
		if peer.PodSelector == nil && peer.NamespaceSelector == nil {
			c.problem(np, pfield, fmt.Errorf("peer has no podSelector, namespaceSelector or ipBlock"))
			continue
		}
		var key strings.Builder
		// selector parses one of the peer's selectors (nil: none, a nil Selector) and
		// adds it to the key as tag(selector); false after reporting a problem.
		selector := func(ls *metav1.LabelSelector, name, tag string) (labels.Selector, bool) {
			if ls == nil {
				return nil, true
			}
			sel, err := selectorOf(ls)
			if err != nil {
				c.problem(np, pfield+"."+name, err)
				return nil, false
			}
			fmt.Fprintf(&key, "%s(%s)", tag, sel.String())
			return sel, true
		}
		nsSel, ok := selector(peer.NamespaceSelector, "namespaceSelector", "ns")
		if !ok {
			continue
		}
		if peer.NamespaceSelector == nil {
			fmt.Fprintf(&key, "in(%s)", np.Namespace)
		}
		podSel, ok := selector(peer.PodSelector, "podSelector", "pod")
		if !ok {
			continue
		}
		spec.pods = append(spec.pods, podPeer{namespace: np.Namespace, nsSelector: nsSel, podSelector: podSel})
		podKeys = append(podKeys, key.String())
	}
	for fam, s := range cidrs {
		spec.blocks[fam] = s.normalize()
	}
	sort.Strings(podKeys)
	sort.Strings(cidrKeys)
	spec.podKey, spec.cidrKey = strings.Join(podKeys, "|"), strings.Join(cidrKeys, "|")
	return spec
}

// parseIPBlock turns cidr minus excepts into address ranges. Excepts of the other
// family or outside the CIDR are harmless and simply cut nothing.
func parseIPBlock(b *networkingv1.IPBlock) (addrSet, ruleset.Family, string, error) {
	p, err := netip.ParsePrefix(b.CIDR)
	if err != nil {
		return nil, 0, "", fmt.Errorf("cidr %q: %w", b.CIDR, err)
	}
	p = canonicalPrefix(p)
	fam := ruleset.IPv4
	if p.Addr().Is6() {
		fam = ruleset.IPv6
	}
	var cut addrSet
	excepts := make([]string, 0, len(b.Except))
	for i, e := range b.Except {
		ep, err := netip.ParsePrefix(e)
		if err != nil {
			return nil, 0, "", fmt.Errorf("except[%d] %q: %w", i, e, err)
		}
		ep = canonicalPrefix(ep)
		if ep.Addr().Is4() != p.Addr().Is4() {
			continue
		}
		cut = append(cut, prefixRange(ep))
		excepts = append(excepts, ep.String())
	}
	sort.Strings(excepts)
	set := addrSet{prefixRange(p)}.subtract(cut.normalize())
	return set, fam, "cidr(" + p.String() + "-" + strings.Join(excepts, ",") + ")", nil
}

// canonicalPrefix masks the host bits and turns an IPv4-mapped IPv6 prefix into the
// IPv4 prefix it maps (::ffff:10.0.0.0/104 is 10.0.0.0/8). Only a prefix of /96 or
// longer covers mapped addresses alone; a shorter one (::ffff:10.0.0.0/80 is ::/80)
// covers IPv6 addresses too and stays IPv6 — unmapping it gave a negative length, an
// invalid prefix, and a panic building its range (found by FuzzCompile).
func canonicalPrefix(p netip.Prefix) netip.Prefix {
	p = p.Masked()
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p
}

// selectsPod reports whether a pod-selecting peer selects the pod.
func (pp podPeer) selectsPod(u universe, pod *model.Pod) bool {
	if pp.nsSelector == nil {
		if pod.Namespace != pp.namespace {
			return false
		}
	} else if !pp.nsSelector.Matches(u.namespaceLabels(pod.Namespace)) {
		return false
	}
	return pp.podSelector == nil || pp.podSelector.Matches(labels.Set(pod.Labels))
}

// selectsPod reports whether one of the pod-selecting peers selects the pod.
func (s *peerSpec) selectsPod(u universe, pod *model.Pod) bool {
	for _, pp := range s.pods {
		if pp.selectsPod(u, pod) {
			return true
		}
	}
	return false
}

// has reports whether the peers match this pod's address ip.
func (s *peerSpec) has(u universe, pod *model.Pod, ip netip.Addr) bool {
	fam := ruleset.IPv4
	if ip.Is6() {
		fam = ruleset.IPv6
	}
	return s.blocks[fam].contains(ip) || s.selectsPod(u, pod)
}

// eachNamespace calls fn once for every namespace whose pods the pod-selecting peers
// may select (callers still check the pod selectors).
func (s *peerSpec) eachNamespace(u universe, fn func(ns string)) {
	all := false
	fixed := map[string]bool{}
	for _, pp := range s.pods {
		if pp.nsSelector == nil {
			fixed[pp.namespace] = true
		} else {
			all = true
		}
	}
	if !all {
		for ns := range fixed {
			fn(ns)
		}
		return
	}
	u.eachNamespace(func(ns string) {
		if fixed[ns] {
			fn(ns)
			return
		}
		l := u.namespaceLabels(ns)
		for _, pp := range s.pods {
			if pp.nsSelector != nil && pp.nsSelector.Matches(l) {
				fn(ns)
				return
			}
		}
	})
}

// peerSets returns the sets holding the addresses of the family the peers match: a
// hash set of the selected pods' addresses (one element per pod, so pod churn is one
// element and a lookup is O(1)) and an interval set of the ipBlock ranges, excepts cut
// out. Each is shared by every rule with the same peers of its kind.
func (c *compilation) peerSets(s *peerSpec, fam ruleset.Family, key ruleset.KeyType, suffix string) []string {
	var out []string
	if len(s.pods) > 0 {
		name := "pods-" + shortHash(s.podKey) + "-" + suffix
		if _, ok := c.sets[name]; !ok {
			set := &ruleset.Set{Name: name, Key: []ruleset.KeyType{key}, Comment: truncate("pods "+s.podKey, ruleset.MaxCommentLen)}
			c.addPodSet(set, ruleset.RolePodPeers, newPeerPodSet(name, s, fam))
		}
		out = append(out, name)
	}
	if blocks := s.blocks[fam]; len(blocks) > 0 {
		name := "cidr-" + shortHash(s.cidrKey) + "-" + suffix
		if _, ok := c.sets[name]; !ok {
			c.addSet(&ruleset.Set{Name: name, Key: []ruleset.KeyType{key}, Interval: true,
				Comment: truncate("ipBlocks "+s.cidrKey, ruleset.MaxCommentLen), Elements: blocks.elements()},
				ruleset.SetOwner{Role: ruleset.RoleBlockPeers})
		}
		out = append(out, name)
	}
	if len(s.nodes) > 0 {
		name := "nodes-" + shortHash(s.nodeKey) + "-" + suffix
		if _, ok := c.sets[name]; !ok {
			c.addSet(&ruleset.Set{Name: name, Key: []ruleset.KeyType{key},
				Comment: truncate("nodes "+s.nodeKey, ruleset.MaxCommentLen), Elements: c.nodeElements(s, fam)},
				ruleset.SetOwner{Role: ruleset.RoleNodePeers})
		}
		out = append(out, name)
	}
	return out
}

// nodeElements are the addresses of the family of the nodes the `nodes` peers select.
// Nodes are few and change rarely: their sets are part of the structure, rebuilt when a
// node changes (Engine.SetNode).
func (c *compilation) nodeElements(s *peerSpec, fam ruleset.Family) []ruleset.Element {
	var out []ruleset.Element
	seen := map[netip.Addr]bool{}
	c.u.eachNode(func(n *model.Node) {
		l := labels.Set(n.Labels)
		match := false
		for _, sel := range s.nodes {
			if sel.Matches(l) {
				match = true
				break
			}
		}
		if !match {
			return
		}
		for _, a := range n.Addrs {
			if a.Is4() != (fam == ruleset.IPv4) || seen[a] {
				continue
			}
			seen[a] = true
			out = append(out, ruleset.Element{Key: []ruleset.Range{ruleset.Addr(a)}})
		}
	})
	return out
}
