package compiler

// Parsing of ClusterNetworkPolicy (sigs.k8s.io/network-policy-api v1beta1): tier,
// priority, subject, and every rule's action, peers and protocols. Unlike a
// NetworkPolicy, nothing of a ClusterNetworkPolicy depends on the namespace it lives in
// (it has none), so it is parsed whole once, and its Problems are known without pods.
//
// Invalid input (objects that bypassed the CRD's validation, or a newer CRD with fields
// this agent does not know) fails closed as the API asks: a peer that cannot be
// understood matches nothing in an Accept rule and turns a Deny or Pass rule into
// "deny everything"; a policy whose tier or subject cannot be understood is left out
// whole (which pods it selects, or where it ranks, is unknown).

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// ErrSamePriority marks the Problem of two ClusterNetworkPolicies of one tier with the
// same priority that select a common pod in one direction: the API leaves their order
// undefined; nftpolicy orders them by name.
var ErrSamePriority = errors.New("same tier and priority as another ClusterNetworkPolicy selecting the same pods")

// clusterPolicy is a parsed ClusterNetworkPolicy.
type clusterPolicy struct {
	obj      *cnp.ClusterNetworkPolicy
	key      string // "ClusterNetworkPolicy/<name>"
	ref      ruleset.PolicyRef
	tier     cnp.Tier
	priority int32
	// The subject: pods in namespaces nsSelector matches, of those the ones podSelector
	// matches (nil: every pod there).
	nsSelector, podSelector labels.Selector
	ingress, egress         []*clusterRule
	// usesNodes: some egress rule has a `nodes` peer (its sets depend on the Nodes).
	usesNodes bool
	// audit: the policy is in audit mode (AuditAnnotation).
	audit bool
}

// clusterRule is one parsed rule.
type clusterRule struct {
	index  int
	name   string
	action cnp.ClusterNetworkPolicyRuleAction
	// matchAll: the rule matches every packet (a Deny or Pass rule failing closed), peer
	// and ports are ignored.
	matchAll bool
	peer     *peerSpec
	// hasPorts: the rule lists protocols; numeric and named are what they resolve to
	// (a rule with protocols that all failed to parse matches nothing).
	hasPorts bool
	numeric  []portRange
	named    []namedPort
}

func (p *clusterPolicy) rules(dir Direction) []*clusterRule {
	if dir == Ingress {
		return p.ingress
	}
	return p.egress
}

// selects reports whether the policy's subject selects the pod (the caller checks that
// the pod takes part in policy at all: host-network pods are never subjects).
func (p *clusterPolicy) selects(u universe, pod *model.Pod) bool {
	if !p.nsSelector.Matches(u.namespaceLabels(pod.Namespace)) {
		return false
	}
	return p.podSelector == nil || p.podSelector.Matches(labels.Set(pod.Labels))
}

// describe is the subject in set keys and comments.
func (p *clusterPolicy) describe() string {
	s := "ns(" + p.nsSelector.String() + ")"
	if p.podSelector != nil {
		s += "pod(" + p.podSelector.String() + ")"
	}
	return s
}

// tierRank orders the tiers: Admin before Baseline.
func tierRank(t cnp.Tier) int {
	if t == cnp.AdminTier {
		return 0
	}
	return 1
}

// sortClusterPolicies orders policies as they are evaluated: by tier, by ascending
// priority, and — where the API leaves the order undefined, same tier and priority —
// by name, so that every node and every compile agree.
func sortClusterPolicies(ps []*clusterPolicy) {
	sort.Slice(ps, func(i, j int) bool {
		a, b := ps[i], ps[j]
		if tierRank(a.tier) != tierRank(b.tier) {
			return tierRank(a.tier) < tierRank(b.tier)
		}
		if a.priority != b.priority {
			return a.priority < b.priority
		}
		return a.obj.Name < b.obj.Name
	})
}

// clusterProblem is a Problem on a ClusterNetworkPolicy.
func clusterProblem(p *cnp.ClusterNetworkPolicy, field string, err error) Problem {
	return Problem{Kind: ruleset.KindClusterNetworkPolicy, Name: p.Name, Field: field, Err: err}
}

// ValidateCluster returns the Problems of a ClusterNetworkPolicy: the same on every
// node (they depend on nothing else), in Compile's text.
func ValidateCluster(p *cnp.ClusterNetworkPolicy, opts Options) []Problem {
	_, problems := parseClusterPolicy(p, opts)
	return problems
}

// parseClusterPolicy parses a policy; nil when it cannot be used at all.
func parseClusterPolicy(obj *cnp.ClusterNetworkPolicy, opts Options) (*clusterPolicy, []Problem) {
	var problems []Problem
	bad := func(field string, err error) { problems = append(problems, clusterProblem(obj, field, err)) }
	ref := ruleset.PolicyRef{Kind: ruleset.KindClusterNetworkPolicy, Name: obj.Name}
	p := &clusterPolicy{obj: obj, key: ref.String(), ref: ref, tier: obj.Spec.Tier, priority: obj.Spec.Priority}
	if audit, err := auditMode(obj.Annotations); err != nil {
		bad(auditField, err)
	} else {
		p.audit = audit
	}
	switch obj.Spec.Tier {
	case cnp.AdminTier, cnp.BaselineTier:
	default:
		bad("spec.tier", fmt.Errorf("unknown tier %q (Admin or Baseline): the policy is ignored", obj.Spec.Tier))
		return nil, problems
	}
	if obj.Spec.Priority < 0 || obj.Spec.Priority > 1000 {
		// Still ordered by its value: the API server refuses it, so only an object that
		// bypassed validation gets here.
		bad("spec.priority", fmt.Errorf("priority %d is outside 0-1000", obj.Spec.Priority))
	}
	subj := obj.Spec.Subject
	var err error
	switch {
	case subj.Namespaces != nil && subj.Pods == nil:
		p.nsSelector, err = metav1.LabelSelectorAsSelector(subj.Namespaces)
		if err != nil {
			bad("spec.subject.namespaces", fmt.Errorf("%w: the policy is ignored", err))
			return nil, problems
		}
	case subj.Pods != nil && subj.Namespaces == nil:
		p.nsSelector, err = metav1.LabelSelectorAsSelector(&subj.Pods.NamespaceSelector)
		if err == nil {
			p.podSelector, err = metav1.LabelSelectorAsSelector(&subj.Pods.PodSelector)
		}
		if err != nil {
			bad("spec.subject.pods", fmt.Errorf("%w: the policy is ignored", err))
			return nil, problems
		}
	default:
		bad("spec.subject", fmt.Errorf("exactly one of namespaces and pods must be set: the policy is ignored"))
		return nil, problems
	}
	for i, r := range obj.Spec.Ingress {
		peers := make([]cnp.ClusterNetworkPolicyEgressPeer, len(r.From))
		for j, f := range r.From {
			peers[j] = cnp.ClusterNetworkPolicyEgressPeer{Namespaces: f.Namespaces, Pods: f.Pods}
		}
		p.ingress = append(p.ingress, parseClusterRule(obj, Ingress, i, r.Name, r.Action, peers, r.Protocols, opts, bad))
	}
	for i, r := range obj.Spec.Egress {
		cr := parseClusterRule(obj, Egress, i, r.Name, r.Action, r.To, r.Protocols, opts, bad)
		if cr.peer != nil && len(cr.peer.nodes) > 0 {
			p.usesNodes = true
		}
		p.egress = append(p.egress, cr)
	}
	return p, problems
}

// parseClusterRule parses one rule; ingress peers arrive as egress peers with only
// namespaces and pods set.
func parseClusterRule(obj *cnp.ClusterNetworkPolicy, dir Direction, i int, name string, action cnp.ClusterNetworkPolicyRuleAction,
	peers []cnp.ClusterNetworkPolicyEgressPeer, protocols []cnp.ClusterNetworkPolicyProtocol, opts Options, bad func(string, error)) *clusterRule {
	field := fmt.Sprintf("spec.%s[%d]", dir, i)
	peersField := field + ".to"
	if dir == Ingress {
		peersField = field + ".from"
	}
	r := &clusterRule{index: i, name: name, action: action}
	switch action {
	case cnp.ClusterNetworkPolicyRuleActionAccept, cnp.ClusterNetworkPolicyRuleActionDeny, cnp.ClusterNetworkPolicyRuleActionPass:
	default:
		bad(field+".action", fmt.Errorf("unknown action %q (Accept, Deny or Pass): the rule denies everything (fails closed)", action))
		r.action, r.matchAll = cnp.ClusterNetworkPolicyRuleActionDeny, true
		return r
	}
	// failClosed handles a peer or protocol that cannot be understood: an Accept rule
	// loses only that part (it matches nothing), a Deny or Pass rule denies everything.
	failed := false
	failClosed := func(f string, err error) {
		if action == cnp.ClusterNetworkPolicyRuleActionAccept {
			bad(f, fmt.Errorf("%w: it matches nothing (fails closed)", err))
			return
		}
		bad(f, fmt.Errorf("%w: the rule denies everything (fails closed)", err))
		failed = true
	}
	if len(peers) == 0 {
		failClosed(peersField, fmt.Errorf("no peers"))
	}
	spec := &peerSpec{blocks: map[ruleset.Family]addrSet{}}
	var podKeys, cidrKeys, nodeKeys []string
	cidrs := map[ruleset.Family]addrSet{}
	for j, peer := range peers {
		pf := fmt.Sprintf("%s[%d]", peersField, j)
		set := 0
		for _, b := range []bool{peer.Namespaces != nil, peer.Pods != nil, peer.Nodes != nil, peer.Networks != nil, peer.DomainNames != nil} {
			if b {
				set++
			}
		}
		if set != 1 {
			failClosed(pf, fmt.Errorf("a peer must set exactly one of namespaces, pods, nodes, networks and domainNames (an unknown field from a newer API?)"))
			continue
		}
		switch {
		case peer.Namespaces != nil:
			sel, err := metav1.LabelSelectorAsSelector(peer.Namespaces)
			if err != nil {
				failClosed(pf+".namespaces", err)
				continue
			}
			spec.pods = append(spec.pods, podPeer{nsSelector: sel})
			podKeys = append(podKeys, "ns("+sel.String()+")")
		case peer.Pods != nil:
			nsSel, err := metav1.LabelSelectorAsSelector(&peer.Pods.NamespaceSelector)
			if err != nil {
				failClosed(pf+".pods.namespaceSelector", err)
				continue
			}
			podSel, err := metav1.LabelSelectorAsSelector(&peer.Pods.PodSelector)
			if err != nil {
				failClosed(pf+".pods.podSelector", err)
				continue
			}
			spec.pods = append(spec.pods, podPeer{nsSelector: nsSel, podSelector: podSel})
			podKeys = append(podKeys, "ns("+nsSel.String()+")pod("+podSel.String()+")")
		case peer.Nodes != nil:
			sel, err := metav1.LabelSelectorAsSelector(peer.Nodes)
			if err != nil {
				failClosed(pf+".nodes", err)
				continue
			}
			spec.nodes = append(spec.nodes, sel)
			nodeKeys = append(nodeKeys, "nodes("+sel.String()+")")
		case peer.Networks != nil:
			if len(peer.Networks) == 0 {
				failClosed(pf+".networks", fmt.Errorf("no networks"))
			}
			// The API accepts only canonical CIDRs (no host bits, no IPv4-mapped IPv6):
			// anything else bypassed validation, and the whole peer fails closed (the API
			// would refuse the whole object; keeping the peer's other CIDRs would be a
			// guess at what was meant).
			peerCIDRs := map[ruleset.Family]addrSet{}
			var peerKeys []string
			valid := true
			for k, cidr := range peer.Networks {
				p, err := netip.ParsePrefix(string(cidr))
				if err != nil || p != p.Masked() || p.Addr().Is4In6() {
					failClosed(fmt.Sprintf("%s.networks[%d]", pf, k), fmt.Errorf("%q is not a CIDR in canonical form: the peer is ignored", cidr))
					valid = false
					break
				}
				block, fam, key, err := parseIPBlock(&networkingv1.IPBlock{CIDR: string(cidr)})
				if err != nil {
					failClosed(fmt.Sprintf("%s.networks[%d]", pf, k), fmt.Errorf("%w: the peer is ignored", err))
					valid = false
					break
				}
				peerCIDRs[fam] = append(peerCIDRs[fam], block...)
				peerKeys = append(peerKeys, key)
			}
			if valid {
				for fam, b := range peerCIDRs {
					cidrs[fam] = append(cidrs[fam], b...)
				}
				cidrKeys = append(cidrKeys, peerKeys...)
			}
		case len(peer.DomainNames) == 0:
			failClosed(pf+".domainNames", fmt.Errorf("no domain names"))
		case peer.DomainNames != nil:
			// The subject of a later issue: until then the peer matches nothing.
			bad(pf+".domainNames", fmt.Errorf("%w: domainNames peers are not supported yet by nftpolicy; this peer matches nothing", ErrUnsupported))
		}
	}
	if failed {
		r.matchAll, r.action = true, cnp.ClusterNetworkPolicyRuleActionDeny
		return r
	}
	for fam, s := range cidrs {
		spec.blocks[fam] = s.normalize()
	}
	sort.Strings(podKeys)
	sort.Strings(cidrKeys)
	sort.Strings(nodeKeys)
	spec.podKey, spec.cidrKey, spec.nodeKey = strings.Join(podKeys, "|"), strings.Join(cidrKeys, "|"), strings.Join(nodeKeys, "|")
	r.peer = spec

	if protocols != nil {
		r.hasPorts = true
		if len(protocols) == 0 {
			failClosed(field+".protocols", fmt.Errorf("an empty list (omit protocols to match every protocol)"))
		}
	}
	for j, pr := range protocols {
		pf := fmt.Sprintf("%s.protocols[%d]", field, j)
		set := 0
		for _, b := range []bool{pr.TCP != nil, pr.UDP != nil, pr.SCTP != nil, pr.DestinationNamedPort != ""} {
			if b {
				set++
			}
		}
		if set != 1 {
			failClosed(pf, fmt.Errorf("a protocol must set exactly one of tcp, udp, sctp and destinationNamedPort"))
			continue
		}
		var proto corev1.Protocol
		var port *cnp.Port
		switch {
		case pr.TCP != nil:
			proto, port = corev1.ProtocolTCP, pr.TCP.DestinationPort
		case pr.UDP != nil:
			proto, port = corev1.ProtocolUDP, pr.UDP.DestinationPort
		case pr.SCTP != nil:
			proto, port = corev1.ProtocolSCTP, pr.SCTP.DestinationPort
			if opts.SCTPUnsupported {
				bad(pf+".sctp", fmt.Errorf("%w on this node: the kernel has no SCTP, so this protocol matches nothing here", ErrUnsupported))
			}
		default:
			// A named port is resolved on the destination pod with whatever protocol its
			// container port has.
			for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP} {
				num, _ := ProtocolNumber(proto)
				r.named = append(r.named, namedPort{name: pr.DestinationNamedPort, proto: proto, num: num})
			}
			continue
		}
		num, _ := ProtocolNumber(proto)
		switch {
		case port == nil:
			r.numeric = append(r.numeric, portRange{proto: num, from: 0, to: 65535})
		case port.Range != nil && port.Number == 0:
			from, to := port.Range.Start, port.Range.End
			if from < 1 || to > 65535 || from > to {
				failClosed(pf, fmt.Errorf("invalid port range %d-%d", from, to))
				continue
			}
			r.numeric = append(r.numeric, portRange{proto: num, from: uint16(from), to: uint16(to)})
		case port.Range == nil && port.Number >= 1 && port.Number <= 65535:
			r.numeric = append(r.numeric, portRange{proto: num, from: uint16(port.Number), to: uint16(port.Number)})
		default:
			failClosed(pf, fmt.Errorf("destinationPort must set exactly one of number (1-65535) and range"))
		}
	}
	if failed {
		r.matchAll, r.action, r.peer, r.numeric, r.named = true, cnp.ClusterNetworkPolicyRuleActionDeny, nil, nil, nil
		return r
	}
	r.numeric = normalizePorts(r.numeric)
	return r
}
