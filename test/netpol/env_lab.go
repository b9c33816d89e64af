package netpol

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/test/lab"
)

// LabEnv runs the cases for real: the model's namespaces and pods live in a lab.Cluster
// (a real API server, nodes and pods as network namespaces, the agent in every node),
// every model pod has a ClusterIP Service s-<ns>-<pod>, and probes are real connections.
type LabEnv struct {
	cluster  *lab.Cluster
	model    *Model
	nodes    map[string]string // model node name → cluster node name
	services map[PodRef]*lab.Service
	// ProbeTimeout bounds one connection attempt (a denied probe costs this much).
	ProbeTimeout time.Duration
}

var _ Env = (*LabEnv)(nil)

// NewLabEnv creates the model in the cluster: namespaces, pods with their servers and
// one Service per pod. The cluster needs at least as many nodes as the model; model
// nodes map to cluster nodes in order.
func NewLabEnv(ctx context.Context, c *lab.Cluster, m *Model) (*LabEnv, error) {
	nodes := c.Nodes()
	if len(nodes) < len(m.Nodes) {
		return nil, fmt.Errorf("lab env: the model has %d nodes, the cluster %d", len(m.Nodes), len(nodes))
	}
	e := &LabEnv{cluster: c, model: m, nodes: map[string]string{}, services: map[PodRef]*lab.Service{}, ProbeTimeout: 400 * time.Millisecond}
	for i, n := range m.Nodes {
		e.nodes[n] = nodes[i].Name
	}
	for _, ns := range m.Namespaces {
		if err := c.CreateNamespace(ctx, ns.Name, ns.Labels); err != nil {
			return nil, fmt.Errorf("lab env: %w", err)
		}
	}
	for _, p := range m.Pods {
		if err := e.CreatePod(ctx, p); err != nil {
			return nil, fmt.Errorf("lab env: %w", err)
		}
		svc := m.Service(p.Ref())
		s, err := c.CreateService(ctx, svc.Namespace, svc.Name, svc.Spec.Selector, svc.Spec.Ports)
		if err != nil {
			return nil, fmt.Errorf("lab env: service for %s: %w", p.Ref(), err)
		}
		e.services[p.Ref()] = s
	}
	return e, nil
}

// Model returns the model the environment was built from.
func (e *LabEnv) Model() *Model { return e.model }

// Client is the real API server's client.
func (e *LabEnv) Client() client.Client { return e.cluster.Client() }

// Capabilities: everything but SCTP on kernels without it.
func (e *LabEnv) Capabilities() Capabilities {
	return Capabilities{Families: e.cluster.Families(), SCTP: lab.SCTPSupported(), Services: true,
		ExtraPods: true, HostNetworkPods: true, CompletedPods: true}
}

// Retry polls like upstream does: policy reaches the kernel asynchronously.
func (e *LabEnv) Retry() RetryPolicy {
	return RetryPolicy{Timeout: 15 * time.Second, Interval: 100 * time.Millisecond}
}

// Probe connects from every From to every To, over the pod IP or the To's Service.
func (e *LabEnv) Probe(ctx context.Context, spec ProbeSpec) (*lab.Matrix, error) {
	froms, err := e.pods(spec.Froms)
	if err != nil {
		return nil, err
	}
	tos, err := e.pods(spec.Tos)
	if err != nil {
		return nil, err
	}
	var targets []lab.Target
	for _, t := range tos {
		addr := t.AddrPort(spec.Family, int(spec.Port))
		if spec.ViaService {
			s := e.services[PodRef{t.Namespace, t.Name}]
			if s == nil {
				return nil, fmt.Errorf("probe: no service for %s", t.Key())
			}
			addr = s.AddrPort(spec.Family, int(spec.Port))
		}
		targets = append(targets, lab.Target{Name: t.Key(), Addr: addr, ExpectReply: t.Key()})
	}
	return e.cluster.ProbeTargets(ctx, froms, targets, strings.ToLower(string(spec.Protocol)), lab.ProbeOptions{Timeout: e.ProbeTimeout})
}

func (e *LabEnv) pods(refs []PodRef) ([]*lab.ClusterPod, error) {
	out := make([]*lab.ClusterPod, 0, len(refs))
	for _, r := range refs {
		p := e.cluster.Pod(r.Namespace, r.Name)
		if p == nil {
			return nil, fmt.Errorf("probe: no pod %s", r)
		}
		out = append(out, p)
	}
	return out, nil
}

// CreatePod creates a running pod with its servers, a host-network pod in its node, or
// (for an ended pod) only the API object, listing the addresses of StaleIPsOf.
func (e *LabEnv) CreatePod(ctx context.Context, spec PodSpec) error {
	node, ok := e.nodes[spec.Node]
	if !ok && spec.Node != "" {
		return fmt.Errorf("create pod %s: unknown node %q", spec.Ref(), spec.Node)
	}
	ls := lab.PodSpec{Namespace: spec.Namespace, Name: spec.Name, Node: node, Labels: spec.Labels,
		InitContainers: spec.InitContainers, HostNetwork: spec.HostNetwork, Phase: spec.Phase}
	for _, c := range spec.Containers {
		ls.Ports = append(ls.Ports, c.Ports...)
	}
	if spec.Running() {
		_, err := e.cluster.CreatePod(ctx, ls)
		return err
	}
	if spec.StaleIPsOf != nil {
		owner := e.cluster.Pod(spec.StaleIPsOf.Namespace, spec.StaleIPsOf.Name)
		if owner == nil {
			return fmt.Errorf("create pod %s: no pod %s to take addresses from", spec.Ref(), spec.StaleIPsOf)
		}
		ls.IPs = owner.IPs()
	}
	_, err := e.cluster.CreatePodObjectOnly(ctx, ls)
	return err
}

// DeletePod removes the pod; a pod that does not exist is not an error.
func (e *LabEnv) DeletePod(ctx context.Context, ref PodRef) error {
	p := e.cluster.Pod(ref.Namespace, ref.Name)
	if p == nil {
		return nil
	}
	return e.cluster.DeletePod(ctx, p)
}

// HostSourceAddrs are the source addresses of traffic from a host-network pod on the
// node (a model node, or the cluster's own name for it as spec.nodeName has it; see
// lab.ClusterNode.SourceAddrs).
func (e *LabEnv) HostSourceAddrs(node string, f lab.Family) []netip.Addr {
	if n, ok := e.nodes[node]; ok {
		node = n
	}
	n := e.cluster.Node(node)
	if n == nil {
		return nil
	}
	return n.SourceAddrs(f)
}

// WaitIdle waits until no agent holds a policy chain: after Reset, the next case must
// not pass on enforcement left over from the previous one.
func (e *LabEnv) WaitIdle(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		busy := ""
		for _, n := range e.cluster.Nodes() {
			out, err := n.NS.Exec(ctx, "nft", "list", "table", "inet", "nftpolicy")
			if err != nil {
				busy = fmt.Sprintf("%s: %v", n.Name, err)
				break
			}
			if strings.Contains(string(out), "chain pol-") {
				busy = n.Name + " still has policy chains"
				break
			}
		}
		if busy == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agents not idle after %s: %s", timeout, busy)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
