package controllers

import (
	"maps"
	"slices"
	"unique"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/pkg/model"
)

// Label sets and named-port lists of cached pods are shared (see interner).
var (
	podLabels = newInterner(1 << 16)
	podPorts  = newKeyedInterner[[]model.NamedPort](1 << 12)
)

// CachedPod is what the informer cache keeps of a Pod: its UID and its model (the
// fields enforcement reads; Version is the resourceVersion). A *corev1.Pod takes 1.2 KB
// even with every field but those zero — a third of the agent's memory at 50k pods —
// where a CachedPod takes under 200 bytes. It is a client.Object (the informer's store
// and event handlers need one) but not a registered kind: read it from the informer's
// store (Syncer.each, Syncer.cachedPod), never through client.Get or client.List, which
// would ask the scheme for it. Cached objects are never modified.
type CachedPod struct {
	UID types.UID
	Pod model.Pod
}

// TrimPod is the cache transform for Pods: it turns a Pod into a CachedPod, so that the
// agent's memory grows with the number of pods, not with the size of their specs.
// Equal label sets and port lists are shared, and the strings many pods repeat
// (namespace, node, phase) are interned.
func TrimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		// Tombstones, already trimmed pods and other types pass through untouched.
		return obj, nil
	}
	m := model.PodFromAPI(p)
	out := &CachedPod{UID: p.UID, Pod: *m}
	out.Pod.Namespace = unique.Make(m.Namespace).Value()
	out.Pod.NodeName = unique.Make(m.NodeName).Value()
	out.Pod.Phase = corev1.PodPhase(unique.Make(string(m.Phase)).Value())
	out.Pod.Labels = podLabels.intern(m.Labels)
	if len(m.Ports) > 0 {
		out.Pod.Ports = podPorts.intern(model.FormatNamedPorts(m.Ports), m.Ports)
	}
	return out, nil
}

// cachedModel returns the model of a Pod read from the cache: a CachedPod's own, which
// the engine then shares with the cache (neither modifies it: a change is a new
// object), or the model of a full Pod (a cache without the transform, as the tests'
// clients have).
func cachedModel(o any) (*model.Pod, bool) {
	switch p := o.(type) {
	case *CachedPod:
		return &p.Pod, true
	case *corev1.Pod:
		return model.PodFromAPI(p), true
	}
	return nil, false
}

// PodModel is the model of a Pod object an informer with the agent's cache options
// hands out (a CachedPod) or of a full Pod: what event handlers outside the Syncer (the
// fan-out bench's emulated agents) read.
func PodModel(o any) (*model.Pod, bool) { return cachedModel(o) }

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

// CachedPod is a client.Object: the identity and labels are its model's; the fields
// the agent never keeps read as empty and ignore writes.

var _ client.Object = (*CachedPod)(nil)

func (p *CachedPod) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

func (p *CachedPod) DeepCopyObject() runtime.Object {
	out := &CachedPod{UID: p.UID, Pod: p.Pod}
	out.Pod.Labels = maps.Clone(p.Pod.Labels)
	out.Pod.IPs = slices.Clone(p.Pod.IPs)
	out.Pod.Ports = slices.Clone(p.Pod.Ports)
	return out
}

func (p *CachedPod) GetNamespace() string                          { return p.Pod.Namespace }
func (p *CachedPod) SetNamespace(ns string)                        { p.Pod.Namespace = ns }
func (p *CachedPod) GetName() string                               { return p.Pod.Name }
func (p *CachedPod) SetName(name string)                           { p.Pod.Name = name }
func (p *CachedPod) GetGenerateName() string                       { return "" }
func (p *CachedPod) SetGenerateName(string)                        {}
func (p *CachedPod) GetUID() types.UID                             { return p.UID }
func (p *CachedPod) SetUID(uid types.UID)                          { p.UID = uid }
func (p *CachedPod) GetResourceVersion() string                    { return p.Pod.Version }
func (p *CachedPod) SetResourceVersion(v string)                   { p.Pod.Version = v }
func (p *CachedPod) GetGeneration() int64                          { return 0 }
func (p *CachedPod) SetGeneration(int64)                           {}
func (p *CachedPod) GetSelfLink() string                           { return "" }
func (p *CachedPod) SetSelfLink(string)                            {}
func (p *CachedPod) GetCreationTimestamp() metav1.Time             { return metav1.Time{} }
func (p *CachedPod) SetCreationTimestamp(metav1.Time)              {}
func (p *CachedPod) GetDeletionTimestamp() *metav1.Time            { return nil }
func (p *CachedPod) SetDeletionTimestamp(*metav1.Time)             {}
func (p *CachedPod) GetDeletionGracePeriodSeconds() *int64         { return nil }
func (p *CachedPod) SetDeletionGracePeriodSeconds(*int64)          {}
func (p *CachedPod) GetLabels() map[string]string                  { return p.Pod.Labels }
func (p *CachedPod) SetLabels(l map[string]string)                 { p.Pod.Labels = l }
func (p *CachedPod) GetAnnotations() map[string]string             { return nil }
func (p *CachedPod) SetAnnotations(map[string]string)              {}
func (p *CachedPod) GetFinalizers() []string                       { return nil }
func (p *CachedPod) SetFinalizers([]string)                        {}
func (p *CachedPod) GetOwnerReferences() []metav1.OwnerReference   { return nil }
func (p *CachedPod) SetOwnerReferences([]metav1.OwnerReference)    {}
func (p *CachedPod) GetManagedFields() []metav1.ManagedFieldsEntry { return nil }
func (p *CachedPod) SetManagedFields([]metav1.ManagedFieldsEntry)  {}
