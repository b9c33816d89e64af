package netpol

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// NamespaceNameLabel is the label the API server sets on every namespace (upstream's
// namespaceLabelKey, v1.LabelMetadataName). Environments without an API server set it
// themselves.
const NamespaceNameLabel = "kubernetes.io/metadata.name"

// PodNameLabel is the label every model pod carries with its name (upstream's
// podNameLabelKey).
const PodNameLabel = "pod"

// The model's namespaces, by the names the cases use.
const (
	X = "x"
	Y = "y"
	Z = "z"
)

// PodRef names a pod: namespace and name, rendered "ns/name" like upstream's PodString.
type PodRef struct {
	Namespace, Name string
}

func (r PodRef) String() string { return r.Namespace + "/" + r.Name }

// Ref parses "ns/name". A malformed reference is a bug in a case, so it panics.
func Ref(s string) PodRef {
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		panic(fmt.Sprintf("netpol: bad pod reference %q, want ns/name", s))
	}
	return PodRef{Namespace: ns, Name: name}
}

// Refs parses several "ns/name" references.
func Refs(ss ...string) []PodRef {
	out := make([]PodRef, len(ss))
	for i, s := range ss {
		out[i] = Ref(s)
	}
	return out
}

// RefNames renders references as "ns/name", the row and column names of matrices.
func RefNames(refs []PodRef) []string {
	out := make([]string, len(refs))
	for i, r := range refs {
		out[i] = r.String()
	}
	return out
}

// Placement puts a pod on a node. It is a parameter of the model so the same cases
// can run with pairs on one node and across nodes: an enforcer that judges same-node
// traffic differently from cross-node traffic fails one placement or the other.
type Placement func(ref PodRef) string

// Node names of the model.
const (
	Node1 = "node-1"
	Node2 = "node-2"
)

// DefaultPlacement puts pods a and c on node-1 and b on node-2, so every namespace has
// a same-node pair (a, c) and cross-node pairs (a, b), (c, b).
func DefaultPlacement(ref PodRef) string {
	if ref.Name == "b" {
		return Node2
	}
	return Node1
}

// SingleNodePlacement puts every pod on node-1: all traffic stays on one node.
func SingleNodePlacement(PodRef) string { return Node1 }

// NamespacePlacement puts namespace y on node-2 and x and z on node-1, so pairs of pods
// with the same name are on different nodes when exactly one of them is in y.
func NamespacePlacement(ref PodRef) string {
	if ref.Namespace == Y {
		return Node2
	}
	return Node1
}

// NamespaceSpec is a namespace of the model with the labels it must carry.
type NamespaceSpec struct {
	Name   string
	Labels map[string]string
}

// Namespace returns the API object.
func (n NamespaceSpec) Namespace() *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: maps.Clone(n.Labels)}}
}

// PodSpec is a pod an environment creates: a model pod or an extra pod a case asks
// for. The environment assigns addresses and status; Phase and StaleIPsOf describe
// pods whose status matters to the case.
type PodSpec struct {
	Namespace, Name string
	Labels          map[string]string
	Node            string
	// HostNetwork pods share the node's network namespace and address: policy never
	// selects them and pod selectors never match them.
	HostNetwork bool
	// Containers and InitContainers carry the container ports (named ports resolve
	// against them). An environment serves every port of the containers and of the
	// restartable init containers (restartPolicy Always, "sidecars"): they run for the
	// pod's whole life. Ports of ordinary init containers are never served.
	Containers     []corev1.Container
	InitContainers []corev1.Container
	// Phase is the pod's phase; "" means Running. A pod in phase Succeeded or Failed is
	// an API object only: nothing runs and it is never a probe endpoint.
	Phase corev1.PodPhase
	// StaleIPsOf, for a pod that has ended, makes its status list the addresses of
	// another, running pod — what the API shows after a completed pod's IP has been
	// handed out again.
	StaleIPsOf *PodRef
}

// Ref returns the pod's reference.
func (p PodSpec) Ref() PodRef { return PodRef{p.Namespace, p.Name} }

// Running reports whether the pod is alive (serves, can be probed).
func (p PodSpec) Running() bool { return p.Phase == "" || p.Phase == corev1.PodRunning }

// Pod returns the API object without status: what a Setup or CreatePod submits.
func (p PodSpec) Pod() *corev1.Pod {
	zero := int64(0)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Labels: maps.Clone(p.Labels)},
		Spec: corev1.PodSpec{
			NodeName:                      p.Node,
			HostNetwork:                   p.HostNetwork,
			TerminationGracePeriodSeconds: &zero,
		},
	}
	for _, c := range p.InitContainers {
		pod.Spec.InitContainers = append(pod.Spec.InitContainers, *c.DeepCopy())
	}
	for _, c := range p.Containers {
		pod.Spec.Containers = append(pod.Spec.Containers, *c.DeepCopy())
	}
	return pod
}

// ServedPort is a port a pod listens on.
type ServedPort struct {
	Port     int32
	Protocol corev1.Protocol
}

// ServedPorts lists the ports an environment must serve for the pod: those of its
// containers and restartable init containers, deduplicated. Pods that are not running
// serve nothing.
func (p PodSpec) ServedPorts() []ServedPort {
	if !p.Running() {
		return nil
	}
	var out []ServedPort
	add := func(c corev1.Container) {
		for _, cp := range c.Ports {
			proto := cp.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			sp := ServedPort{Port: cp.ContainerPort, Protocol: proto}
			if !slices.Contains(out, sp) {
				out = append(out, sp)
			}
		}
	}
	for _, c := range p.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			add(c)
		}
	}
	for _, c := range p.Containers {
		add(c)
	}
	return out
}

// PortName is upstream's container port name: serve-<port>-<protocol>.
func PortName(port int32, proto corev1.Protocol) string {
	return fmt.Sprintf("serve-%d-%s", port, strings.ToLower(string(proto)))
}

// ServingContainer is upstream's agnhost container: one named container port per port
// and protocol (serve-80-tcp, serve-81-udp, ...). The image and command are upstream's
// for environments that run real containers; others only read the ports.
func ServingContainer(ports []int32, protocols []corev1.Protocol) corev1.Container {
	c := corev1.Container{
		Name:    "agnhost",
		Image:   "registry.k8s.io/e2e-test-images/agnhost:2.53",
		Command: []string{"/agnhost", "porter"},
	}
	for _, proto := range protocols {
		for _, port := range ports {
			c.Env = append(c.Env, corev1.EnvVar{Name: fmt.Sprintf("SERVE_%s_PORT_%d", proto, port), Value: "foo"})
			c.Ports = append(c.Ports, corev1.ContainerPort{Name: PortName(port, proto), Protocol: proto, ContainerPort: port})
		}
	}
	return c
}

// Model is the cluster the cases run against: upstream's namespaces, pods, ports and
// protocols, plus the nodes the pods are placed on. It is a description: an
// environment's Setup creates it, the cases only read it.
type Model struct {
	Nodes      []string
	Namespaces []NamespaceSpec
	Pods       []PodSpec
	Ports      []int32
	Protocols  []corev1.Protocol
}

// NewModel returns upstream's model — namespaces x, y, z; pods a, b, c in each, labelled
// pod=<name>; ports 80 and 81 over TCP, UDP and SCTP — with pods placed by placement
// (DefaultPlacement when nil).
func NewModel(placement Placement) *Model {
	if placement == nil {
		placement = DefaultPlacement
	}
	m := &Model{
		Nodes:     []string{Node1, Node2},
		Ports:     []int32{80, 81},
		Protocols: []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP},
	}
	for _, ns := range []string{X, Y, Z} {
		m.Namespaces = append(m.Namespaces, NamespaceSpec{Name: ns, Labels: map[string]string{NamespaceNameLabel: ns}})
		for _, name := range []string{"a", "b", "c"} {
			ref := PodRef{ns, name}
			m.Pods = append(m.Pods, PodSpec{
				Namespace:  ns,
				Name:       name,
				Labels:     map[string]string{PodNameLabel: name},
				Node:       placement(ref),
				Containers: []corev1.Container{ServingContainer(m.Ports, m.Protocols)},
			})
		}
	}
	return m
}

// PodRefs returns the references of every model pod, namespace by namespace.
func (m *Model) PodRefs() []PodRef {
	out := make([]PodRef, len(m.Pods))
	for i, p := range m.Pods {
		out[i] = p.Ref()
	}
	return out
}

// Pod returns the model pod ref names (false when ref is not a model pod).
func (m *Model) Pod(ref PodRef) (PodSpec, bool) {
	for _, p := range m.Pods {
		if p.Ref() == ref {
			return p, true
		}
	}
	return PodSpec{}, false
}

// NamespaceSpec returns the model namespace of that name, or false.
func (m *Model) NamespaceSpec(name string) (NamespaceSpec, bool) {
	for _, n := range m.Namespaces {
		if n.Name == name {
			return n, true
		}
	}
	return NamespaceSpec{}, false
}

// ServiceName is upstream's per-pod service: s-<ns>-<pod>.
func ServiceName(ref PodRef) string { return fmt.Sprintf("s-%s-%s", ref.Namespace, ref.Name) }

// Service returns upstream's Service for a model pod: selecting the pod by its name
// label, one port per model port and protocol. Upstream probes through its ClusterIP.
func (m *Model) Service(ref PodRef) *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ref.Namespace, Name: ServiceName(ref)},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{PodNameLabel: ref.Name}},
	}
	for _, proto := range m.Protocols {
		for _, port := range m.Ports {
			svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{
				Name:     fmt.Sprintf("service-port-%s-%d", strings.ToLower(string(proto)), port),
				Protocol: proto,
				Port:     port,
			})
		}
	}
	return svc
}
