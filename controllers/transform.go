package controllers

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftpolicy/nftpolicy/pkg/model"
)

// Label sets and named-port annotations of cached pods are shared (see interner).
var (
	podLabels      = newInterner(1 << 16)
	podAnnotations = newInterner(1 << 12)
)

// TrimPod is the cache transform for Pods: it keeps only the fields enforcement reads
// (identity, labels, node, hostNetwork, phase and IPs) and replaces the containers by
// their named ports in one annotation (model.NamedPortsAnnotation), so that the agent's
// memory grows with the number of pods, not with the size of their specs.
func TrimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		// Tombstones and other types pass through untouched.
		return obj, nil
	}
	out := &corev1.Pod{
		TypeMeta: p.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
			Labels: podLabels.intern(p.Labels), DeletionTimestamp: p.DeletionTimestamp, CreationTimestamp: p.CreationTimestamp,
		},
		Spec:   corev1.PodSpec{NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork},
		Status: corev1.PodStatus{Phase: p.Status.Phase, PodIP: p.Status.PodIP, PodIPs: p.Status.PodIPs},
	}
	if len(p.Spec.Containers) == 0 {
		// Already trimmed (a transform may run on its own output).
		if v, ok := p.Annotations[model.NamedPortsAnnotation]; ok {
			out.Annotations = podAnnotations.intern(map[string]string{model.NamedPortsAnnotation: v})
		}
		return out, nil
	}
	if ports := model.PodFromAPI(p).Ports; len(ports) > 0 {
		out.Annotations = podAnnotations.intern(map[string]string{model.NamedPortsAnnotation: model.FormatNamedPorts(ports)})
	}
	return out, nil
}

// TrimNamespace keeps a namespace's name and labels.
func TrimNamespace(obj any) (any, error) {
	ns, ok := obj.(*corev1.Namespace)
	if !ok {
		return obj, nil
	}
	return &corev1.Namespace{TypeMeta: ns.TypeMeta, ObjectMeta: metav1.ObjectMeta{
		Name: ns.Name, UID: ns.UID, ResourceVersion: ns.ResourceVersion, Labels: ns.Labels,
	}}, nil
}

// TrimNode is the cache transform for Nodes: it keeps what the agent reads of a node —
// its name, labels, the status of its Ready condition (the first Ready node by name
// reports the problems no node's compile reports: reporter.go) and its InternalIP and
// ExternalIP addresses (ClusterNetworkPolicy `nodes` peers select nodes by label and
// match their addresses: model.NodeFromAPI). A node's images, other conditions and
// heartbeat times are kilobytes that change every few seconds; the trimmed node is a
// few hundred bytes.
func TrimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	out := &corev1.Node{TypeMeta: n.TypeMeta, ObjectMeta: metav1.ObjectMeta{
		Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion, Labels: n.Labels,
	}}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			// Only type and status: heartbeat times change without changing readiness.
			out.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: c.Status}}
			break
		}
	}
	for _, a := range n.Status.Addresses {
		// Hostnames and DNS names are not matched by a `nodes` peer (it matches packets
		// by address), so they are dropped like the rest.
		if a.Type == corev1.NodeInternalIP || a.Type == corev1.NodeExternalIP {
			out.Status.Addresses = append(out.Status.Addresses, a)
		}
	}
	return out, nil
}
