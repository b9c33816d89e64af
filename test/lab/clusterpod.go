package lab

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// PodImage is the image named in the lab's Pod objects (nothing pulls it;
// it is the image the upstream NetworkPolicy tests use).
const PodImage = "registry.k8s.io/e2e-test-images/agnhost:2.66.1"

// PodSpec describes a pod for CreatePod and CreatePodObjectOnly.
type PodSpec struct {
	Namespace, Name string
	// Node names the node (spec.nodeName). Required by CreatePod.
	Node   string
	Labels map[string]string
	// Ports are the ports of the pod's container, named or not, with
	// protocol TCP (default), UDP or SCTP. CreatePod serves each of them.
	Ports []corev1.ContainerPort
	// InitContainers are added to the Pod object as given (an image is
	// filled in if empty). The ports of restartable ones (sidecars,
	// restartPolicy Always) are served too: they run beside the main
	// container.
	InitContainers []corev1.Container
	// HostNetwork makes a host-network pod: no namespace of its own, its
	// servers listen on the node's underlay addresses in the node
	// namespace and its IPs are the node's.
	HostNetwork bool
	// Phase is the status phase (default Running).
	Phase corev1.PodPhase
	// IPs, if set, are the pod's addresses (at most one per family)
	// instead of the next free ones of the node's pod CIDRs. Required by
	// CreatePodObjectOnly unless HostNetwork.
	IPs []netip.Addr
}

// ClusterPod is a pod of a Cluster.
type ClusterPod struct {
	Namespace, Name string
	// Node is nil only for object-only pods created without a node.
	Node        *ClusterNode
	HostNetwork bool
	// ObjectOnly pods exist only in the API (CreatePodObjectOnly).
	ObjectOnly bool
	// IPv4 and IPv6 are the pod's addresses (either may be invalid).
	IPv4, IPv6 netip.Addr
	// NS is where the pod's servers run and its probes start: its own
	// namespace, or the node's for a host-network pod; nil for object-only
	// pods.
	NS *Netns

	c      *Cluster
	labPod *Pod // nil for host-network and object-only pods
	ports  []corev1.ContainerPort

	// guarded by Cluster.mu
	labels  map[string]string
	phase   corev1.PodPhase
	servers []*Server
}

// Key returns "namespace/name", the pod's name in matrices and replies.
func (p *ClusterPod) Key() string { return p.Namespace + "/" + p.Name }

func (p *ClusterPod) String() string { return p.Key() }

// Addr returns the pod's address of family f (invalid if none).
func (p *ClusterPod) Addr(f Family) netip.Addr { return pick(f, p.IPv4, p.IPv6) }

// AddrPort returns the pod's address of family f with port.
func (p *ClusterPod) AddrPort(f Family, port int) netip.AddrPort {
	return netip.AddrPortFrom(p.Addr(f), uint16(port))
}

// IPs returns the pod's valid addresses, IPv4 first.
func (p *ClusterPod) IPs() []netip.Addr { return valid(p.IPv4, p.IPv6) }

// Ports returns the ports the pod serves (its container's and its
// restartable init containers').
func (p *ClusterPod) Ports() []corev1.ContainerPort { return slices.Clone(p.ports) }

// PodKeys returns the pods' keys ("ns/name"), for NewMatrix.
func PodKeys(pods []*ClusterPod) []string {
	keys := make([]string, len(pods))
	for i, p := range pods {
		keys[i] = p.Key()
	}
	return keys
}

// TCPUDPPorts returns container ports serving TCP and UDP on each port,
// named "tcp-<port>" and "udp-<port>".
func TCPUDPPorts(ports ...int32) []corev1.ContainerPort {
	var out []corev1.ContainerPort
	for _, p := range ports {
		out = append(out,
			corev1.ContainerPort{Name: fmt.Sprintf("tcp-%d", p), ContainerPort: p, Protocol: corev1.ProtocolTCP},
			corev1.ContainerPort{Name: fmt.Sprintf("udp-%d", p), ContainerPort: p, Protocol: corev1.ProtocolUDP})
	}
	return out
}

// servedPorts returns the container ports plus those of restartable init
// containers (sidecars).
func servedPorts(spec PodSpec) []corev1.ContainerPort {
	ports := slices.Clone(spec.Ports)
	for _, ic := range spec.InitContainers {
		if ic.RestartPolicy != nil && *ic.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			ports = append(ports, ic.Ports...)
		}
	}
	for i := range ports {
		if ports[i].Protocol == "" {
			ports[i].Protocol = corev1.ProtocolTCP
		}
	}
	return ports
}

// Pod returns the pod namespace/name, or nil.
func (c *Cluster) Pod(namespace, name string) *ClusterPod {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.podLocked(namespace, name)
}

func (c *Cluster) podLocked(namespace, name string) *ClusterPod {
	for _, p := range c.pods {
		if p.Namespace == namespace && p.Name == name {
			return p
		}
	}
	return nil
}

// Pods returns all pods in creation order.
func (c *Cluster) Pods() []*ClusterPod {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.pods)
}

// Labels returns a copy of the pod's labels.
func (p *ClusterPod) Labels() map[string]string {
	p.c.mu.Lock()
	defer p.c.mu.Unlock()
	return maps.Clone(p.labels)
}

// Phase returns the pod's phase.
func (p *ClusterPod) Phase() corev1.PodPhase {
	p.c.mu.Lock()
	defer p.c.mu.Unlock()
	return p.phase
}

// CreatePod creates a pod the way kubelet and the CNI would: it allocates
// the pod's addresses from its node's pod CIDRs (both families when
// dual-stack), creates and wires the pod namespace per topology, starts a
// server on every port and protocol of the pod (TCP and UDP servers reply
// with the pod's key "ns/name"; SCTP ones only where SCTPSupported,
// otherwise the port is skipped with a progress message), then creates
// the Pod object and sets its status (phase, podIP(s), hostIP(s)). The
// Services' endpoints are re-synced.
func (c *Cluster) CreatePod(ctx context.Context, spec PodSpec) (*ClusterPod, error) {
	return c.createPodOp(ctx, spec, false)
}

// CreatePodObjectOnly creates only the Pod object, with the given addresses
// and phase and no namespace or servers: e.g. a Completed pod still
// claiming an address that a running pod reuses. Node may be empty.
func (c *Cluster) CreatePodObjectOnly(ctx context.Context, spec PodSpec) (*ClusterPod, error) {
	return c.createPodOp(ctx, spec, true)
}

// createPodOp is createPod as one pod operation, its error naming the pod.
func (c *Cluster) createPodOp(ctx context.Context, spec PodSpec, objectOnly bool) (*ClusterPod, error) {
	c.podOps.Lock()
	defer c.podOps.Unlock()
	p, err := c.createPod(ctx, spec, objectOnly)
	if err != nil {
		what := "pod"
		if objectOnly {
			what = "pod object"
		}
		return nil, fmt.Errorf("create %s %s/%s: %w", what, spec.Namespace, spec.Name, err)
	}
	return p, nil
}

func (c *Cluster) createPod(ctx context.Context, spec PodSpec, objectOnly bool) (_ *ClusterPod, err error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	if spec.Namespace == "" || spec.Name == "" {
		return nil, errors.New("namespace and name are required")
	}
	if spec.Phase == "" {
		spec.Phase = corev1.PodRunning
	}
	var node *ClusterNode
	if spec.Node != "" {
		if node = c.Node(spec.Node); node == nil {
			return nil, fmt.Errorf("no node %q", spec.Node)
		}
	} else if !objectOnly || spec.HostNetwork {
		return nil, errors.New("no node given")
	}
	if c.Pod(spec.Namespace, spec.Name) != nil {
		return nil, errors.New("already exists")
	}
	p := &ClusterPod{
		Namespace: spec.Namespace, Name: spec.Name, Node: node, c: c,
		HostNetwork: spec.HostNetwork, ObjectOnly: objectOnly,
		ports: servedPorts(spec), labels: maps.Clone(spec.Labels), phase: spec.Phase,
	}
	if err := c.assignAddrs(p, spec); err != nil {
		return nil, err
	}

	if !objectOnly {
		if spec.HostNetwork {
			p.NS = node.NS
		} else {
			lp, err := c.addNetwork(node, p)
			if err != nil {
				return nil, err
			}
			p.labPod, p.NS = lp, lp.NS
			defer func() {
				if err != nil {
					err = errors.Join(err, c.lab.RemovePod(lp))
				}
			}()
		}
		if err := c.servePod(p); err != nil {
			return nil, errors.Join(err, p.closeServers())
		}
		defer func() {
			if err != nil {
				err = errors.Join(err, p.closeServers())
			}
		}()
	}

	obj := p.object(spec)
	if err := c.client.Create(ctx, obj); err != nil {
		return nil, fmt.Errorf("create Pod object: %w", err)
	}
	obj.Status = p.status(spec.Phase)
	if err := c.client.Status().Update(ctx, obj); err != nil {
		return nil, errors.Join(fmt.Errorf("set Pod status: %w", err), c.deletePodObject(ctx, p))
	}
	c.mu.Lock()
	c.pods = append(c.pods, p)
	c.mu.Unlock()
	where := "API only"
	if node != nil {
		where = "on " + node.Name
	}
	c.logf("pod %s %s: %s %s", p.Key(), where, joinList(p.IPs()), spec.Phase)
	return p, errors.Join(c.syncServices(ctx), c.saveState())
}

// assignAddrs sets the pod's addresses: the node's for host-network pods,
// spec.IPs if given, else the node's next free host number in both pod
// CIDRs.
func (c *Cluster) assignAddrs(p *ClusterPod, spec PodSpec) error {
	switch {
	case spec.HostNetwork:
		if len(spec.IPs) > 0 {
			return errors.New("a host-network pod has its node's addresses; IPs must be empty")
		}
		p.IPv4, p.IPv6 = p.Node.UnderlayIPv4, p.Node.UnderlayIPv6
	case len(spec.IPs) > 0:
		for _, a := range spec.IPs {
			a = a.Unmap()
			switch {
			case !a.IsValid():
				return errors.New("invalid address in IPs")
			case a.Is4() && !p.IPv4.IsValid():
				p.IPv4 = a
			case a.Is6() && !p.IPv6.IsValid():
				if !c.opts.DualStack && !p.ObjectOnly {
					return fmt.Errorf("IPv6 address %s in an IPv4-only cluster", a)
				}
				p.IPv6 = a
			default:
				return fmt.Errorf("more than one address of the family of %s", a)
			}
		}
	case p.ObjectOnly:
		return errors.New("an object-only pod needs IPs (or HostNetwork)")
	default:
		c.mu.Lock()
		host := p.Node.nextHost
		if host > 254 {
			c.mu.Unlock()
			return fmt.Errorf("node %s has no free pod address", p.Node.Name)
		}
		p.Node.nextHost++
		c.mu.Unlock()
		p.IPv4 = podAddr(p.Node.Index, host, IPv4)
		if c.opts.DualStack {
			p.IPv6 = podAddr(p.Node.Index, host, IPv6)
		}
	}
	return nil
}

// servePod starts a server for every port and protocol of the pod: on
// every address of its own namespace, or on the node's underlay addresses
// for a host-network pod.
func (c *Cluster) servePod(p *ClusterPod) error {
	hosts := []netip.Addr{{}} // every address
	if p.HostNetwork {
		hosts = p.IPs()
	}
	seen := map[string]bool{}
	for _, cp := range p.ports {
		proto := strings.ToLower(string(cp.Protocol))
		key := proto + "/" + strconv.Itoa(int(cp.ContainerPort))
		if seen[key] {
			continue
		}
		seen[key] = true
		if proto == "sctp" && !SCTPSupported() {
			c.logf("pod %s: SCTP is not supported by this kernel: not serving sctp/%d", p.Key(), cp.ContainerPort)
			continue
		}
		for _, h := range hosts {
			addr := ":" + strconv.Itoa(int(cp.ContainerPort))
			if h.IsValid() {
				addr = net.JoinHostPort(h.String(), strconv.Itoa(int(cp.ContainerPort)))
			}
			var s *Server
			var err error
			switch proto {
			case "tcp":
				s, err = ServeTCP(p.NS, addr, p.Key())
			case "udp":
				s, err = ServeUDP(p.NS, addr, p.Key())
			case "sctp":
				s, err = ServeSCTP(p.NS, netip.AddrPortFrom(h, uint16(cp.ContainerPort)), p.Key())
			default:
				err = fmt.Errorf("port %d: unknown protocol %q", cp.ContainerPort, cp.Protocol)
			}
			if err != nil {
				return err
			}
			c.mu.Lock()
			p.servers = append(p.servers, s)
			c.mu.Unlock()
		}
	}
	return nil
}

// closeServers closes the pod's servers.
func (p *ClusterPod) closeServers() error {
	p.c.mu.Lock()
	servers := p.servers
	p.servers = nil
	p.c.mu.Unlock()
	var errs []error
	for _, s := range servers {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}

// object returns the Pod object of a new pod.
func (p *ClusterPod) object(spec PodSpec) *corev1.Pod {
	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Labels: maps.Clone(spec.Labels)},
		Spec: corev1.PodSpec{
			HostNetwork:    p.HostNetwork,
			InitContainers: slices.Clone(spec.InitContainers),
			Containers:     []corev1.Container{{Name: "main", Image: PodImage, Ports: slices.Clone(spec.Ports)}},
		},
	}
	if p.Node != nil {
		obj.Spec.NodeName = p.Node.Name
	}
	for i := range obj.Spec.InitContainers {
		if obj.Spec.InitContainers[i].Image == "" {
			obj.Spec.InitContainers[i].Image = PodImage
		}
	}
	return obj
}

// status returns the pod status kubelet would report.
func (p *ClusterPod) status(phase corev1.PodPhase) corev1.PodStatus {
	now := metav1.Now()
	st := corev1.PodStatus{Phase: phase, StartTime: &now}
	if p.Node != nil {
		for i, a := range p.Node.addrs() {
			if i == 0 {
				st.HostIP = a.String()
			}
			st.HostIPs = append(st.HostIPs, corev1.HostIP{IP: a.String()})
		}
	}
	for i, a := range p.IPs() {
		if i == 0 {
			st.PodIP = a.String()
		}
		st.PodIPs = append(st.PodIPs, corev1.PodIP{IP: a.String()})
	}
	ready := corev1.ConditionFalse
	if phase == corev1.PodRunning {
		ready = corev1.ConditionTrue
	}
	st.Conditions = []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.PodReady, Status: ready, LastTransitionTime: now},
	}
	return st
}

func (c *Cluster) deletePodObject(ctx context.Context, p *ClusterPod) error {
	obj := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name}}
	// Grace period 0: there is no kubelet to confirm a graceful deletion.
	if err := c.client.Delete(ctx, obj, client.GracePeriodSeconds(0)); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete Pod object %s: %w", p.Key(), err)
	}
	return nil
}

// DeletePod deletes the Pod object (immediately, as kubelet confirms a
// deletion), then the pod's servers and namespace, and re-syncs the
// Services' endpoints.
func (c *Cluster) DeletePod(ctx context.Context, p *ClusterPod) error {
	c.podOps.Lock()
	defer c.podOps.Unlock()
	if err := c.checkOpen(); err != nil {
		return fmt.Errorf("delete pod %s: %w", p.Key(), err)
	}
	c.mu.Lock()
	i := slices.Index(c.pods, p)
	if i >= 0 {
		c.pods = slices.Delete(c.pods, i, i+1)
	}
	c.mu.Unlock()
	if i < 0 {
		return fmt.Errorf("delete pod %s: not in the cluster", p.Key())
	}
	errs := []error{c.deletePodObject(ctx, p), p.closeServers()}
	if p.labPod != nil {
		errs = append(errs, c.lab.RemovePod(p.labPod))
	}
	errs = append(errs, c.syncServices(ctx), c.saveState())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete pod %s: %w", p.Key(), err)
	}
	c.logf("pod %s deleted", p.Key())
	return nil
}

// SetPodLabels replaces the pod's labels and re-syncs the Services'
// endpoints.
func (c *Cluster) SetPodLabels(ctx context.Context, p *ClusterPod, labels map[string]string) error {
	c.podOps.Lock()
	defer c.podOps.Unlock()
	if err := c.checkOpen(); err != nil {
		return fmt.Errorf("set labels of pod %s: %w", p.Key(), err)
	}
	obj := &corev1.Pod{}
	if err := c.client.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: p.Name}, obj); err != nil {
		return fmt.Errorf("set labels of pod %s: %w", p.Key(), err)
	}
	orig := obj.DeepCopy()
	obj.Labels = maps.Clone(labels)
	if err := c.client.Patch(ctx, obj, client.MergeFrom(orig)); err != nil {
		return fmt.Errorf("set labels of pod %s: %w", p.Key(), err)
	}
	c.mu.Lock()
	p.labels = maps.Clone(labels)
	c.mu.Unlock()
	if err := c.syncServices(ctx); err != nil {
		return fmt.Errorf("set labels of pod %s: %w", p.Key(), err)
	}
	return nil
}

// SetPodPhase sets the pod's status phase (and its Ready condition) and
// re-syncs the Services' endpoints (only Running pods are endpoints). The
// pod keeps its addresses and servers, as a Completed pod's IP stays in its
// status.
func (c *Cluster) SetPodPhase(ctx context.Context, p *ClusterPod, phase corev1.PodPhase) error {
	c.podOps.Lock()
	defer c.podOps.Unlock()
	if err := c.checkOpen(); err != nil {
		return fmt.Errorf("set phase of pod %s: %w", p.Key(), err)
	}
	if err := c.writeStatus(ctx, p, phase, func(st, old *corev1.PodStatus) { st.StartTime = old.StartTime }); err != nil {
		return fmt.Errorf("set phase of pod %s: %w", p.Key(), err)
	}
	if err := c.syncServices(ctx); err != nil {
		return fmt.Errorf("set phase of pod %s: %w", p.Key(), err)
	}
	return nil
}

// writeStatus writes the status kubelet would report for p in phase, adjusted
// by edit (which also sees the stored status), retrying on conflict, and then
// records the phase in p. The caller holds c.podOps.
func (c *Cluster) writeStatus(ctx context.Context, p *ClusterPod, phase corev1.PodPhase, edit func(st, old *corev1.PodStatus)) error {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		obj := &corev1.Pod{}
		if err := c.client.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: p.Name}, obj); err != nil {
			return err
		}
		st := p.status(phase)
		edit(&st, &obj.Status)
		obj.Status = st
		return c.client.Status().Update(ctx, obj)
	})
	if err != nil {
		return err
	}
	c.mu.Lock()
	p.phase = phase
	c.mu.Unlock()
	return nil
}

// addNetwork gives the pod its network namespace, wired the way the topology wires pods.
func (c *Cluster) addNetwork(node *ClusterNode, p *ClusterPod) (*Pod, error) {
	var wire func(*Pod) error = (*Pod).wireRouted
	if c.opts.Topology == BridgeVXLAN {
		wire = c.bridgeWiring(node)
	}
	return c.lab.addPod(node.node, p.Namespace+"."+p.Name, p.IPv4, p.IPv6, wire)
}
