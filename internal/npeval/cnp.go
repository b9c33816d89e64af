package npeval

// ClusterNetworkPolicy (policy.networking.k8s.io/v1beta1), from the API's types and
// doc comments:
//
//   - Each end is judged on its own: egress at the source pod, ingress at the
//     destination pod; an Accept of the source's egress does not bypass the
//     destination's ingress. An end that is not a participating pod (an outside
//     address, a node, a hostNetwork pod, a finished pod) has no policy.
//   - Tiers: Admin, then NetworkPolicy (if any NetworkPolicy isolates the pod in the
//     direction it decides: allowed iff one of its rules allows), then Baseline, then
//     the default: allowed.
//   - Within a tier, policies by ascending priority, ties by name (the API leaves the
//     order of equal priorities to the implementation; this is nftpolicy's documented
//     tie-break), then rules in the order written. The first rule that matches acts:
//     Accept allows and Deny denies (later tiers are skipped); Pass skips the rest of
//     the tier (in Admin, evaluation goes on with NetworkPolicy; in Baseline, the
//     default applies).
//   - A policy affects a direction only through its rules for it. Its subject selects
//     participating pods by namespace labels (including kubernetes.io/metadata.name) and
//     optionally pod labels.
//   - Peers: namespaces and pods (participating pods only; never hostNetwork pods),
//     egress also networks (the destination address in a CIDR, pod addresses
//     included), nodes (the destination address is an address of a selected node) and
//     domainNames (not supported: matches nothing).
//   - Protocols: each entry is exactly one of tcp, udp, sctp (a destination port
//     number or inclusive range; none: every port of the protocol) or
//     destinationNamedPort (the destination pod's container port of that name, with
//     whichever protocol it is declared; nothing for a destination that is not a pod).
//     No protocols: all traffic, ICMP included.
//   - A pod connecting to its own address is never subject to ClusterNetworkPolicy
//     (api-overview.md, "Hairpin Traffic Semantics").
//
// Invalid input fails closed, as the peer types' doc comments prescribe: an invalid
// part of an Accept rule matches nothing (its other peers and protocol entries still
// apply), while an Accept rule with no peers never matches; a Deny or Pass rule with
// any invalid part, no peers, or a rule with an unknown action, matches every
// connection and denies it. A policy with an unknown tier or an invalid subject is
// ignored: which pods it selects is unknown. What is invalid is what the API's
// validation refuses: a peer, subject or protocol entry with zero or several fields
// set, an empty list where at least one item is required (from/to, networks,
// domainNames, protocols when given), a selector that does not parse, a CIDR that does
// not parse, has bits set past its length or is IPv4-mapped IPv6, a port number
// outside 1-65535, a port with both or neither of number and range, a range whose
// start is above its end or outside 1-65535.
//
// Departures from the API's validation, by decision: a range whose start equals
// its end is that one port (the API wants start < end); tcp, udp or sctp without
// destinationPort is every port of the protocol (the API documents this, though its
// schema wants a field set); a priority outside 0-1000 is still ordered as a number;
// a rule mixing networks or nodes peers with named ports (which the API refuses) is
// evaluated as written: its named ports match pod destinations only.

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/pkg/model"
)

// Tier names what decided one end of a connection.
type Tier string

// The tiers in the order they are evaluated.
const (
	TierAdmin         Tier = "Admin"
	TierNetworkPolicy Tier = "NetworkPolicy"
	TierBaseline      Tier = "Baseline"
	// TierDefault: no tier decided, the end allows the connection.
	TierDefault Tier = ""
)

// RuleRef names a rule: its tier, its policy (a ClusterNetworkPolicy's name, or a
// NetworkPolicy's namespace/name) and its index in the policy's ingress or egress list.
type RuleRef struct {
	Tier   Tier
	Policy string
	Rule   int
}

func (r RuleRef) String() string {
	if r.Tier == TierDefault {
		return "default"
	}
	if r.Policy == "" {
		return string(r.Tier)
	}
	return fmt.Sprintf("%s %s rule %d", r.Tier, r.Policy, r.Rule)
}

// Decision is the judgement of one end of a connection: the source's egress or the
// destination's ingress.
type Decision struct {
	Allowed bool
	// Pod is the pod judged; nil when the end is not a participating pod (no policy
	// applies: allowed by TierDefault).
	Pod *model.Pod
	// RuleRef names the rule that decided. TierDefault: none (Policy "", Rule -1).
	// TierNetworkPolicy: the first NetworkPolicy rule that allows, or, when the pod is
	// isolated and no rule allows, Policy "" and Rule -1.
	RuleRef
	// Action is the effect applied: Accept or Deny ("" for TierDefault). A Pass never
	// decides (see Passes); a rule that fails closed denies.
	Action cnp.ClusterNetworkPolicyRuleAction
	// FailClosed reports that the deciding rule is invalid and denied everything.
	FailClosed bool
	// Passes are the Pass rules that ended their tier, in order (at most one a tier).
	Passes []RuleRef
}

func (d Decision) String() string {
	var b strings.Builder
	switch {
	case d.Pod == nil:
		b.WriteString("no policy")
	case d.Tier == TierDefault:
		b.WriteString("default")
	case d.Tier == TierNetworkPolicy && d.Policy == "":
		b.WriteString("NetworkPolicy isolation")
	default:
		b.WriteString(d.RuleRef.String())
	}
	if d.Action != "" {
		fmt.Fprintf(&b, ": %s", d.Action)
	}
	if d.FailClosed {
		b.WriteString(" (fail closed)")
	}
	for _, p := range d.Passes {
		fmt.Fprintf(&b, ", after Pass by %s", p)
	}
	if d.Allowed {
		b.WriteString(" => allowed")
	} else {
		b.WriteString(" => denied")
	}
	return b.String()
}

// Verdict is the judgement of a connection: allowed iff both ends allow it.
type Verdict struct {
	Allowed bool
	// Egress is the source's egress, Ingress the destination's ingress.
	Egress, Ingress Decision
}

func (v Verdict) String() string {
	return fmt.Sprintf("allowed=%v (egress: %s; ingress: %s)", v.Allowed, v.Egress, v.Ingress)
}

// Verdict judges the connection and says which tier, policy and rule decided each end.
func (e *Evaluator) Verdict(c Conn) Verdict {
	c.Src, c.Dst = c.Src.Unmap(), c.Dst.Unmap()
	src, dst := e.Owner(c.Src), e.Owner(c.Dst)
	v := Verdict{Egress: e.decide(false, src, dst, c), Ingress: e.decide(true, dst, src, c)}
	v.Allowed = v.Egress.Allowed && v.Ingress.Allowed
	return v
}

// decide judges one end through the tiers: self is the pod whose policies apply (nil:
// none), peer the pod at the other end (nil: an address outside the pods).
func (e *Evaluator) decide(ingress bool, self, peer *model.Pod, c Conn) Decision {
	d := Decision{Allowed: true, Pod: self, RuleRef: RuleRef{Rule: -1}}
	if self == nil {
		return d
	}
	hairpin := self == peer
	if !hairpin && e.tier(TierAdmin, e.admin, ingress, self, peer, c, &d) {
		return d
	}
	dir := networkingv1.PolicyTypeEgress
	if ingress {
		dir = networkingv1.PolicyTypeIngress
	}
	if isolated, allowed, pol, rule := e.npSide(dir, self, peer, c); isolated {
		d.Allowed, d.RuleRef, d.Action = allowed, RuleRef{TierNetworkPolicy, pol, rule}, cnp.ClusterNetworkPolicyRuleActionDeny
		if allowed {
			d.Action = cnp.ClusterNetworkPolicyRuleActionAccept
		}
		return d
	}
	if !hairpin {
		e.tier(TierBaseline, e.baseline, ingress, self, peer, c, &d)
	}
	return d
}

// clusterPolicy is a ClusterNetworkPolicy with a valid tier and subject.
type clusterPolicy struct {
	p *cnp.ClusterNetworkPolicy
	// ns selects the namespaces of the subject, pod (nil: every pod) its pods.
	ns, pod labels.Selector
}

// orderClusterPolicies keeps the policies with a known tier and a valid subject and
// orders each tier by priority, then name.
func orderClusterPolicies(ps []*cnp.ClusterNetworkPolicy) (admin, baseline []*clusterPolicy) {
	for _, p := range ps {
		if p == nil {
			continue
		}
		cp := subject(p)
		if cp == nil {
			continue
		}
		switch p.Spec.Tier {
		case cnp.AdminTier:
			admin = append(admin, cp)
		case cnp.BaselineTier:
			baseline = append(baseline, cp)
		}
	}
	order := func(a, b *clusterPolicy) int {
		return cmp.Or(cmp.Compare(a.p.Spec.Priority, b.p.Spec.Priority), strings.Compare(a.p.Name, b.p.Name))
	}
	slices.SortStableFunc(admin, order)
	slices.SortStableFunc(baseline, order)
	return admin, baseline
}

// subject parses the policy's subject: exactly one of namespaces and pods, with
// selectors that parse; nil otherwise.
func subject(p *cnp.ClusterNetworkPolicy) *clusterPolicy {
	s := p.Spec.Subject
	switch {
	case s.Namespaces != nil && s.Pods == nil:
		ns, err := metav1.LabelSelectorAsSelector(s.Namespaces)
		if err != nil {
			return nil
		}
		return &clusterPolicy{p: p, ns: ns}
	case s.Pods != nil && s.Namespaces == nil:
		ns, err := metav1.LabelSelectorAsSelector(&s.Pods.NamespaceSelector)
		if err != nil {
			return nil
		}
		pod, err := metav1.LabelSelectorAsSelector(&s.Pods.PodSelector)
		if err != nil {
			return nil
		}
		return &clusterPolicy{p: p, ns: ns, pod: pod}
	}
	return nil
}

// tier walks one tier's policies for one end and reports whether a rule decided (d
// then says which). A Pass is recorded in d.Passes and ends the tier undecided.
func (e *Evaluator) tier(t Tier, pols []*clusterPolicy, ingress bool, self, peer *model.Pod, c Conn, d *Decision) bool {
	for _, cp := range pols {
		if !cp.ns.Matches(e.namespaceLabels(self.Namespace)) || (cp.pod != nil && !cp.pod.Matches(labels.Set(self.Labels))) {
			continue
		}
		var rules []rule
		if ingress {
			for _, r := range cp.p.Spec.Ingress {
				rules = append(rules, ingressRule(r))
			}
		} else {
			for _, r := range cp.p.Spec.Egress {
				rules = append(rules, rule{action: r.Action, peers: r.To, protocols: r.Protocols})
			}
		}
		peerIP, dst := c.Dst, peer
		if ingress {
			peerIP, dst = c.Src, self
		}
		for i, r := range rules {
			action, failClosed, ok := e.ruleMatches(r, peer, peerIP, dst, c)
			if !ok {
				continue
			}
			ref := RuleRef{t, cp.p.Name, i}
			if action == cnp.ClusterNetworkPolicyRuleActionPass {
				d.Passes = append(d.Passes, ref)
				return false
			}
			d.RuleRef, d.Action, d.FailClosed = ref, action, failClosed
			d.Allowed = action == cnp.ClusterNetworkPolicyRuleActionAccept
			return true
		}
	}
	return false
}

// rule is an ingress or egress rule; ingress peers are egress peers with only
// namespaces and pods.
type rule struct {
	action    cnp.ClusterNetworkPolicyRuleAction
	peers     []cnp.ClusterNetworkPolicyEgressPeer
	protocols []cnp.ClusterNetworkPolicyProtocol
}

func ingressRule(r cnp.ClusterNetworkPolicyIngressRule) rule {
	out := rule{action: r.Action, protocols: r.Protocols}
	if r.From != nil {
		out.peers = make([]cnp.ClusterNetworkPolicyEgressPeer, 0, len(r.From))
	}
	for _, p := range r.From {
		out.peers = append(out.peers, cnp.ClusterNetworkPolicyEgressPeer{Namespaces: p.Namespaces, Pods: p.Pods})
	}
	return out
}

// ruleMatches reports whether the rule applies to the connection (ok) and with what
// action: the rule's own, or Deny when it fails closed. peer is the pod at the other end
// (nil: none) and peerIP its address; dst is the destination pod (nil: none).
func (e *Evaluator) ruleMatches(r rule, peer *model.Pod, peerIP netip.Addr, dst *model.Pod, c Conn) (action cnp.ClusterNetworkPolicyRuleAction, failClosed, ok bool) {
	deny := cnp.ClusterNetworkPolicyRuleActionDeny
	switch r.action {
	case cnp.ClusterNetworkPolicyRuleActionAccept, cnp.ClusterNetworkPolicyRuleActionDeny, cnp.ClusterNetworkPolicyRuleActionPass:
	default:
		return deny, true, true
	}
	strict := r.action != cnp.ClusterNetworkPolicyRuleActionAccept
	if len(r.peers) == 0 {
		return deny, true, strict
	}
	if r.protocols != nil && len(r.protocols) == 0 {
		return deny, true, strict
	}
	peerOK := false
	for _, p := range r.peers {
		m, valid := e.cnpPeerMatches(p, peer, peerIP)
		if !valid && strict {
			return deny, true, true
		}
		peerOK = peerOK || m
	}
	protoOK := r.protocols == nil
	for _, p := range r.protocols {
		m, valid := protocolMatches(p, dst, c)
		if !valid && strict {
			return deny, true, true
		}
		protoOK = protoOK || m
	}
	return r.action, false, peerOK && protoOK
}

// cnpPeerMatches reports whether the peer is valid and whether it matches the other
// end: peer is its pod (nil: none), peerIP its address.
func (e *Evaluator) cnpPeerMatches(p cnp.ClusterNetworkPolicyEgressPeer, peer *model.Pod, peerIP netip.Addr) (match, valid bool) {
	set := 0
	for _, isSet := range []bool{p.Namespaces != nil, p.Pods != nil, p.Nodes != nil, p.Networks != nil, p.DomainNames != nil} {
		if isSet {
			set++
		}
	}
	if set != 1 {
		return false, false
	}
	switch {
	case p.Namespaces != nil:
		sel, err := e.selector(p.Namespaces)
		if err != nil {
			return false, false
		}
		return peer != nil && sel.Matches(e.namespaceLabels(peer.Namespace)), true
	case p.Pods != nil:
		ns, err := e.selector(&p.Pods.NamespaceSelector)
		if err != nil {
			return false, false
		}
		pod, err := e.selector(&p.Pods.PodSelector)
		if err != nil {
			return false, false
		}
		return peer != nil && ns.Matches(e.namespaceLabels(peer.Namespace)) && pod.Matches(labels.Set(peer.Labels)), true
	case p.Nodes != nil:
		sel, err := e.selector(p.Nodes)
		if err != nil {
			return false, false
		}
		for _, n := range e.c.Nodes {
			if n == nil || !sel.Matches(labels.Set(n.Labels)) {
				continue
			}
			for _, a := range n.Addrs {
				if a.Unmap() == peerIP {
					return true, true
				}
			}
		}
		return false, true
	case p.Networks != nil:
		if len(p.Networks) == 0 {
			return false, false
		}
		match = false
		for _, s := range p.Networks {
			n, ok := parseCNPCIDR(string(s))
			if !ok {
				return false, false
			}
			match = match || n.Contains(peerIP)
		}
		return match, true
	default: // domainNames: not supported, matches nothing
		return false, len(p.DomainNames) > 0
	}
}

// parseCNPCIDR reads a CIDR as the API validates it: it parses, is not IPv4-mapped
// IPv6, and has no bits set past its length.
func parseCNPCIDR(s string) (netip.Prefix, bool) {
	p, err := netip.ParsePrefix(s)
	if err != nil || p.Addr().Is4In6() || p.Masked() != p {
		return netip.Prefix{}, false
	}
	return p, true
}

// protocolMatches reports whether the entry is valid and whether the connection
// matches it. dst is the destination pod (nil: none), which named ports resolve on.
func protocolMatches(p cnp.ClusterNetworkPolicyProtocol, dst *model.Pod, c Conn) (match, valid bool) {
	var proto corev1.Protocol
	var port *cnp.Port
	set := 0
	if p.TCP != nil {
		set++
		proto, port = corev1.ProtocolTCP, p.TCP.DestinationPort
	}
	if p.UDP != nil {
		set++
		proto, port = corev1.ProtocolUDP, p.UDP.DestinationPort
	}
	if p.SCTP != nil {
		set++
		proto, port = corev1.ProtocolSCTP, p.SCTP.DestinationPort
	}
	if p.DestinationNamedPort != "" {
		set++
	}
	if set != 1 {
		return false, false
	}
	if p.DestinationNamedPort != "" {
		if dst == nil {
			return false, true
		}
		// The first declaration of the name for the connection's protocol counts, as
		// for NetworkPolicy's named ports.
		for _, np := range dst.Ports {
			if np.Name == p.DestinationNamedPort && np.Protocol == c.Proto {
				return int32(c.Port) == np.Port, true
			}
		}
		return false, true
	}
	from, to := int32(1), int32(65535)
	if port != nil {
		var ok bool
		if from, to, ok = portRange(*port); !ok {
			return false, false
		}
	}
	return c.Proto == proto && int32(c.Port) >= from && int32(c.Port) <= to, true
}

// portRange reads a destinationPort: a number in 1-65535, or a range within it whose
// start is not above its end; not both.
func portRange(p cnp.Port) (from, to int32, ok bool) {
	if p.Range != nil {
		r := p.Range
		if p.Number != 0 || r.Start < 1 || r.End > 65535 || r.Start > r.End {
			return 0, 0, false
		}
		return r.Start, r.End, true
	}
	if p.Number < 1 || p.Number > 65535 {
		return 0, 0, false
	}
	return p.Number, p.Number, true
}
