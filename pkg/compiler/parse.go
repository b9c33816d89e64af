package compiler

// Parsing of the NetworkPolicy API: policy types, selectors and ports, and the
// Problems of what cannot be used. Peers are parsed in peers.go; the rules are
// emitted in compiler.go.

import (
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// ErrUnsupported marks Problems of features the node (or nftpolicy) lacks, as opposed
// to invalid input.
var ErrUnsupported = errors.New("unsupported")

// Problem is an input the compiler could not use: the object and field it came from and
// why. The rest of the snapshot is compiled regardless.
type Problem struct {
	Kind, Namespace, Name string
	Field                 string
	Err                   error
}

func (p Problem) Error() string {
	if p.Namespace == "" {
		// Cluster-scoped (ClusterNetworkPolicy).
		return fmt.Sprintf("%s %s: %s: %v", p.Kind, p.Name, p.Field, p.Err)
	}
	return fmt.Sprintf("%s %s/%s: %s: %v", p.Kind, p.Namespace, p.Name, p.Field, p.Err)
}

// policy is a policy with its parsed selector and effective policy types.
type policy struct {
	np              *networkingv1.NetworkPolicy
	key             string
	ref             ruleset.PolicyRef
	selector        labels.Selector
	ingress, egress bool
	// audit: the policy is in audit mode (AuditAnnotation): judged as if enforced, not
	// enforced.
	audit bool
}

func (p *policy) applies(dir Direction) bool {
	if dir == Ingress {
		return p.ingress
	}
	return p.egress
}

func (c *compilation) problem(np *networkingv1.NetworkPolicy, field string, err error) {
	c.problems = append(c.problems, policyProblem(np, field, err))
}

// parsePolicy resolves the policy's selector and policyTypes. When policyTypes is empty
// the API defaults apply: Ingress always, Egress when egress rules are present.
func parsePolicy(np *networkingv1.NetworkPolicy, opts Options) (*policy, []Problem) {
	var problems []Problem
	if opts.SCTPUnsupported {
		problems = sctpProblems(np)
	}
	sel, err := selectorOf(&np.Spec.PodSelector)
	if err != nil {
		return nil, append(problems, policyProblem(np, "spec.podSelector", err))
	}
	ref := ruleset.PolicyRef{Namespace: np.Namespace, Name: np.Name}
	audit, err := auditMode(np.Annotations)
	if err != nil {
		problems = append(problems, policyProblem(np, auditField, err))
	}
	p := &policy{np: np, key: ref.String(), ref: ref, selector: sel, audit: audit}
	if len(np.Spec.PolicyTypes) == 0 {
		p.ingress = true
		p.egress = len(np.Spec.Egress) > 0
	}
	for i, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			p.ingress = true
		case networkingv1.PolicyTypeEgress:
			p.egress = true
		default:
			problems = append(problems, policyProblem(np, fmt.Sprintf("spec.policyTypes[%d]", i), fmt.Errorf("unknown policy type %q", t)))
		}
	}
	return p, problems
}

// parsePorts splits a rule's ports into numeric ranges and named ports.
func (c *compilation) parsePorts(np *networkingv1.NetworkPolicy, field string, ports []networkingv1.NetworkPolicyPort) ([]portRange, []namedPort) {
	var numeric []portRange
	var named []namedPort
	for i, pp := range ports {
		pfield := fmt.Sprintf("%s.ports[%d]", field, i)
		proto := corev1.ProtocolTCP
		if pp.Protocol != nil {
			proto = *pp.Protocol
		}
		pn, ok := ProtocolNumber(proto)
		if !ok {
			c.problem(np, pfield+".protocol", fmt.Errorf("unsupported protocol %q", proto))
			continue
		}
		switch {
		case pp.Port == nil && pp.EndPort != nil:
			// The API server refuses this; an object that bypassed validation gets
			// nothing rather than a guess.
			c.problem(np, pfield+".endPort", fmt.Errorf("endPort %d without a port", *pp.EndPort))
			continue
		case pp.Port == nil:
			numeric = append(numeric, portRange{proto: pn, from: 0, to: 65535})
		case pp.Port.Type == 1: // intstr.String: a named port
			if pp.EndPort != nil {
				c.problem(np, pfield+".endPort", fmt.Errorf("endPort cannot be used with named port %q", pp.Port.StrVal))
				continue
			}
			named = append(named, namedPort{name: pp.Port.StrVal, proto: proto, num: pn})
		default:
			from := pp.Port.IntVal
			to := from
			if pp.EndPort != nil {
				to = *pp.EndPort
			}
			if from < 1 || from > 65535 || to < from || to > 65535 {
				c.problem(np, pfield, fmt.Errorf("invalid port range %d-%d", from, to))
				continue
			}
			numeric = append(numeric, portRange{proto: pn, from: uint16(from), to: uint16(to)})
		}
	}
	return normalizePorts(numeric), named
}

type namedPort struct {
	name  string
	proto corev1.Protocol
	num   uint8
}

// sctpProblems returns a Problem for every port of the policy that names SCTP.
func sctpProblems(np *networkingv1.NetworkPolicy) []Problem {
	var out []Problem
	add := func(field string, ports []networkingv1.NetworkPolicyPort) {
		for j, p := range ports {
			if p.Protocol != nil && *p.Protocol == corev1.ProtocolSCTP {
				out = append(out, policyProblem(np, fmt.Sprintf("%s.ports[%d].protocol", field, j),
					fmt.Errorf("%w on this node: the kernel has no SCTP, so this port allows nothing here", ErrUnsupported)))
			}
		}
	}
	for i, r := range np.Spec.Ingress {
		add(fmt.Sprintf("spec.ingress[%d]", i), r.Ports)
	}
	for i, r := range np.Spec.Egress {
		add(fmt.Sprintf("spec.egress[%d]", i), r.Ports)
	}
	return out
}

// ProtocolNumber is the IP protocol number of a Kubernetes protocol (TCP, UDP, SCTP).
func ProtocolNumber(p corev1.Protocol) (uint8, bool) {
	switch p {
	case corev1.ProtocolTCP:
		return ruleset.ProtoTCP, true
	case corev1.ProtocolUDP:
		return ruleset.ProtoUDP, true
	case corev1.ProtocolSCTP:
		return ruleset.ProtoSCTP, true
	}
	return 0, false
}
