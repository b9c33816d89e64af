package netpol

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The policy builders keep upstream's names and behaviour (policies.go) so a ported case
// can be read side by side with its original.

// SetFunc edits a policy under construction.
type SetFunc func(policy *networkingv1.NetworkPolicy)

// GenNetworkPolicy builds a policy from edits.
func GenNetworkPolicy(fn ...SetFunc) *networkingv1.NetworkPolicy {
	policy := &networkingv1.NetworkPolicy{}
	for _, f := range fn {
		f(policy)
	}
	return policy
}

// GenNetworkPolicyWithNameAndPodMatchLabel builds a policy selecting pods by labels.
func GenNetworkPolicyWithNameAndPodMatchLabel(name string, targetLabels map[string]string, otherFunc ...SetFunc) *networkingv1.NetworkPolicy {
	otherFunc = append(otherFunc, SetObjectMetaName(name), SetSpecPodSelectorMatchLabels(targetLabels))
	return GenNetworkPolicy(otherFunc...)
}

// GenNetworkPolicyWithNameAndPodSelector builds a policy selecting pods by a selector.
func GenNetworkPolicyWithNameAndPodSelector(name string, targetSelector metav1.LabelSelector, otherFunc ...SetFunc) *networkingv1.NetworkPolicy {
	otherFunc = append(otherFunc, SetObjectMetaName(name), SetSpecPodSelector(targetSelector))
	return GenNetworkPolicy(otherFunc...)
}

// SetObjectMetaName sets the name.
func SetObjectMetaName(name string) SetFunc {
	return func(policy *networkingv1.NetworkPolicy) { policy.Name = name }
}

// SetSpecPodSelector sets the pod selector.
func SetSpecPodSelector(targetSelector metav1.LabelSelector) SetFunc {
	return func(policy *networkingv1.NetworkPolicy) { policy.Spec.PodSelector = targetSelector }
}

// SetSpecPodSelectorMatchLabels sets the pod selector to match labels.
func SetSpecPodSelectorMatchLabels(targetLabels map[string]string) SetFunc {
	return func(policy *networkingv1.NetworkPolicy) {
		policy.Spec.PodSelector = metav1.LabelSelector{MatchLabels: targetLabels}
	}
}

// SetSpecIngressRules appends ingress rules. Like upstream, the first call adds Ingress
// to policyTypes, so SetSpecIngressRules() with no rules isolates for ingress and allows
// nothing.
func SetSpecIngressRules(rules ...networkingv1.NetworkPolicyIngressRule) SetFunc {
	return func(policy *networkingv1.NetworkPolicy) {
		appendRules(&policy.Spec, &policy.Spec.Ingress, networkingv1.PolicyTypeIngress, rules)
	}
}

// SetSpecEgressRules appends egress rules; the first call adds Egress to policyTypes.
func SetSpecEgressRules(rules ...networkingv1.NetworkPolicyEgressRule) SetFunc {
	return func(policy *networkingv1.NetworkPolicy) {
		appendRules(&policy.Spec, &policy.Spec.Egress, networkingv1.PolicyTypeEgress, rules)
	}
}

// appendRules appends rules to one direction's list of spec; the first call
// for that direction (list still nil) makes it non-nil and adds its policy
// type, so an empty call isolates that direction.
func appendRules[R any](spec *networkingv1.NetworkPolicySpec, list *[]R, typ networkingv1.PolicyType, rules []R) {
	if *list == nil {
		*list = []R{}
		spec.PolicyTypes = append(spec.PolicyTypes, typ)
	}
	*list = append(*list, rules...)
}

// Small constructors for peers and ports.

// podSelector is a peer of pods in the policy's namespace matching labels.
func podSelector(labels map[string]string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{MatchLabels: labels}}
}

// nsSelector is a peer of every pod in namespaces matching labels.
func nsSelector(labels map[string]string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{MatchLabels: labels}}
}

// nsPodSelector is a peer of pods matching pod labels in namespaces matching ns labels.
func nsPodSelector(ns, pod map[string]string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{
		NamespaceSelector: &metav1.LabelSelector{MatchLabels: ns},
		PodSelector:       &metav1.LabelSelector{MatchLabels: pod},
	}
}

// ipBlock is a peer of addresses.
func ipBlock(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

// nsName is the selector labels of one namespace by its name label.
func nsName(ns string) map[string]string { return map[string]string{NamespaceNameLabel: ns} }

// podName is the selector labels of model pods of one name.
func podName(name string) map[string]string { return map[string]string{PodNameLabel: name} }

// port is a numeric port; a nil proto leaves the protocol to the API default (TCP).
func port(proto *corev1.Protocol, n int32) networkingv1.NetworkPolicyPort {
	p := intstr.FromInt32(n)
	return networkingv1.NetworkPolicyPort{Protocol: proto, Port: &p}
}

// portRange is a numeric port range n..end.
func portRange(proto *corev1.Protocol, n, end int32) networkingv1.NetworkPolicyPort {
	p := port(proto, n)
	p.EndPort = &end
	return p
}

// namedPort is a port by container port name.
func namedPort(proto *corev1.Protocol, name string) networkingv1.NetworkPolicyPort {
	p := intstr.FromString(name)
	return networkingv1.NetworkPolicyPort{Protocol: proto, Port: &p}
}

// proto returns a pointer to a protocol, for NetworkPolicyPort.
func proto(p corev1.Protocol) *corev1.Protocol { return &p }
