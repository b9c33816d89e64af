package netpol

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	k8stesting "k8s.io/client-go/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
	"github.com/nftpolicy/nftpolicy/pkg/tracer"
	"github.com/nftpolicy/nftpolicy/test/lab"
)

// TracerEnv is a pure Env: a controller-runtime fake client holds the objects; Probe
// compiles every node's ruleset from them with pkg/compiler, as the agent on that node
// would, and judges each cell with pkg/tracer the way the kernel would (the source
// node's hook, then the destination node's). It is consistent the moment a write
// returns, so it never retries, and needs neither root nor a network.
type TracerEnv struct {
	model  *Model
	client client.Client
	caps   Capabilities

	mu sync.Mutex
	// next is the last host number handed out per node; addresses are never reused, so
	// only StaleIPsOf makes two pods claim one.
	next     map[string]int
	problems map[string]compiler.Problem

	// mutation plants an enforcer bug, for tests proving that the cases catch it.
	mutation mutation
}

// mutation is a deliberate enforcer bug: it distorts what the compiler sees or how
// packets are judged.
type mutation struct {
	pod    func(*corev1.Pod)
	policy func(*networkingv1.NetworkPolicy)
	// destinationOnly skips the source node's hooks for traffic between nodes, as an
	// enforcer judging everything where the packet arrives would.
	destinationOnly bool
}

// TracerOptions tune a TracerEnv.
type TracerOptions struct {
	// Families the pods get addresses of; both when empty.
	Families []lab.Family
}

// Addresses of the TracerEnv: node i (1-based, in Model.Nodes order) has pod CIDRs
// 10.244.i.0/24 and fd00:10:244:i::/64 and node addresses 172.18.0.(9+i) and
// fd00:172:18::(f+i) (hex), so node-1 is 172.18.0.10 and fd00:172:18::10. Services get
// 10.96.0.n and fd00:10:96::n.
func nodeIndex(m *Model, node string) (int, bool) {
	i := slices.Index(m.Nodes, node)
	return i + 1, i >= 0
}

func nodeAddrs(i int) []netip.Addr {
	return []netip.Addr{
		netip.MustParseAddr(fmt.Sprintf("172.18.0.%d", 9+i)),
		netip.MustParseAddr(fmt.Sprintf("fd00:172:18::%x", 0xf+i)),
	}
}

func podAddrs(node, host int) []netip.Addr {
	return []netip.Addr{
		netip.MustParseAddr(fmt.Sprintf("10.244.%d.%d", node, host)),
		netip.MustParseAddr(fmt.Sprintf("fd00:10:244:%x::%x", node, host)),
	}
}

// NewTracerEnv creates the model's namespaces (with the name label the API server would
// set), pods (Running, with addresses on their node) and Services in a fake client.
func NewTracerEnv(ctx context.Context, m *Model, opts TracerOptions) (*TracerEnv, error) {
	fams := opts.Families
	if len(fams) == 0 {
		fams = []lab.Family{lab.IPv4, lab.IPv6}
	}
	if len(m.Nodes) > 254 {
		return nil, errors.New("tracer env: at most 254 nodes")
	}
	e := &TracerEnv{
		model: m,
		// The plain object tracker: the default, field-managed one builds a REST mapper on
		// every write, a third of the suite's run time, and the cases need no managed
		// fields.
		client: fake.NewClientBuilder().WithScheme(clientgoscheme.Scheme).
			WithObjectTracker(k8stesting.NewObjectTracker(clientgoscheme.Scheme, clientgoscheme.Codecs.UniversalDecoder())).
			Build(),
		caps: Capabilities{
			Families: fams, SCTP: true, Services: true,
			ExtraPods: true, HostNetworkPods: true, CompletedPods: true,
		},
		next:     map[string]int{},
		problems: map[string]compiler.Problem{},
	}
	for _, ns := range m.Namespaces {
		obj := ns.Namespace()
		if obj.Labels == nil {
			obj.Labels = map[string]string{}
		}
		obj.Labels[NamespaceNameLabel] = ns.Name
		if err := e.client.Create(ctx, obj); err != nil {
			return nil, fmt.Errorf("create namespace %s: %w", ns.Name, err)
		}
	}
	for i, p := range m.Pods {
		if err := e.CreatePod(ctx, p); err != nil {
			return nil, err
		}
		svc := m.Service(p.Ref())
		for _, f := range fams {
			ip := fmt.Sprintf("10.96.0.%d", 10+i)
			if f == lab.IPv6 {
				ip = fmt.Sprintf("fd00:10:96::%x", 10+i)
			}
			svc.Spec.ClusterIPs = append(svc.Spec.ClusterIPs, ip)
		}
		svc.Spec.ClusterIP = svc.Spec.ClusterIPs[0]
		if err := e.client.Create(ctx, svc); err != nil {
			return nil, fmt.Errorf("create service %s/%s: %w", svc.Namespace, svc.Name, err)
		}
	}
	return e, nil
}

// Model implements Env.
func (e *TracerEnv) Model() *Model { return e.model }

// Client implements Env.
func (e *TracerEnv) Client() client.Client { return e.client }

// Capabilities implements Env: everything.
func (e *TracerEnv) Capabilities() Capabilities { return e.caps }

// Retry implements Env: a write is in force the moment it returns, so a mismatch is
// final.
func (e *TracerEnv) Retry() RetryPolicy { return RetryPolicy{} }

// Problems returns every distinct problem the compiler reported since the env was
// created. The cases use only valid policies, so any problem is a finding.
func (e *TracerEnv) Problems() []compiler.Problem {
	e.mu.Lock()
	defer e.mu.Unlock()
	keys := make([]string, 0, len(e.problems))
	for k := range e.problems {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]compiler.Problem, len(keys))
	for i, k := range keys {
		out[i] = e.problems[k]
	}
	return out
}

func (e *TracerEnv) familyAddrs(addrs []netip.Addr) []corev1.PodIP {
	var out []corev1.PodIP
	for _, a := range addrs {
		if e.caps.HasFamily(familyOf(a)) {
			out = append(out, corev1.PodIP{IP: a.String()})
		}
	}
	return out
}

func familyOf(a netip.Addr) lab.Family {
	if a.Unmap().Is4() {
		return lab.IPv4
	}
	return lab.IPv6
}

// CreatePod implements Env. A running pod gets fresh addresses on its node (a
// hostNetwork pod the node's); a pod that has ended gets its phase and the addresses of
// StaleIPsOf, if set.
func (e *TracerEnv) CreatePod(ctx context.Context, spec PodSpec) error {
	ni, ok := nodeIndex(e.model, spec.Node)
	if !ok {
		return fmt.Errorf("pod %s: unknown node %q (nodes are %v)", spec.Ref(), spec.Node, e.model.Nodes)
	}
	pod := spec.Pod()
	nodeIPs := nodeAddrs(ni)
	pod.Status.HostIP = nodeIPs[0].String()
	pod.Status.HostIPs = []corev1.HostIP{{IP: nodeIPs[0].String()}, {IP: nodeIPs[1].String()}}
	switch {
	case !spec.Running():
		pod.Status.Phase = spec.Phase
		if spec.StaleIPsOf != nil {
			var owner corev1.Pod
			key := client.ObjectKey{Namespace: spec.StaleIPsOf.Namespace, Name: spec.StaleIPsOf.Name}
			if err := e.client.Get(ctx, key, &owner); err != nil {
				return fmt.Errorf("pod %s: stale addresses of %s: %w", spec.Ref(), spec.StaleIPsOf, err)
			}
			pod.Status.PodIPs = slices.Clone(owner.Status.PodIPs)
		}
	case spec.HostNetwork:
		pod.Status.Phase = corev1.PodRunning
		pod.Status.PodIPs = e.familyAddrs(nodeIPs)
	default:
		if spec.StaleIPsOf != nil {
			return fmt.Errorf("pod %s: StaleIPsOf is for pods that have ended", spec.Ref())
		}
		e.mu.Lock()
		e.next[spec.Node]++
		host := e.next[spec.Node] + 1 // .1 is the node's gateway in routed CNIs
		e.mu.Unlock()
		if host > 254 {
			return fmt.Errorf("pod %s: node %s has no addresses left", spec.Ref(), spec.Node)
		}
		pod.Status.Phase = corev1.PodRunning
		pod.Status.PodIPs = e.familyAddrs(podAddrs(ni, host))
	}
	if len(pod.Status.PodIPs) > 0 {
		pod.Status.PodIP = pod.Status.PodIPs[0].IP
	}
	if err := e.client.Create(ctx, pod); err != nil {
		return fmt.Errorf("create pod %s: %w", spec.Ref(), err)
	}
	return nil
}

// DeletePod implements Env.
func (e *TracerEnv) DeletePod(ctx context.Context, ref PodRef) error {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ref.Namespace, Name: ref.Name}}
	if err := e.client.Delete(ctx, pod); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete pod %s: %w", ref, err)
	}
	return nil
}

// endpoint is where a probe starts or ends: a pod's address and node, or the node
// itself for a hostNetwork pod.
type endpoint struct {
	ref  PodRef
	ip   netip.Addr
	node string
	host bool
}

// Probe implements Env. Each node's ruleset is compiled from one consistent read of the
// cluster, as each node's agent would compile it from its caches.
func (e *TracerEnv) Probe(ctx context.Context, spec ProbeSpec) (*lab.Matrix, error) {
	pn, ok := compiler.ProtocolNumber(spec.Protocol)
	if !ok {
		return nil, fmt.Errorf("probe: unsupported protocol %q", spec.Protocol)
	}
	if spec.Port < 1 || spec.Port > 65535 {
		return nil, fmt.Errorf("probe: bad port %d", spec.Port)
	}
	if !e.caps.HasFamily(spec.Family) {
		return nil, fmt.Errorf("probe: no %s addresses", spec.Family)
	}
	snap, err := e.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	rulesets := map[string]*ruleset.Ruleset{}
	compile := func(node string) (*ruleset.Ruleset, error) {
		if rs, ok := rulesets[node]; ok {
			return rs, nil
		}
		s := *snap
		s.NodeName = node
		res := compiler.Compile(&s, compiler.Options{})
		if err := res.Ruleset.Validate(); err != nil {
			return nil, fmt.Errorf("compiled ruleset of %s is invalid (the kernel would reject it): %w\n%s", node, err, ruleset.Render(res.Ruleset))
		}
		e.mu.Lock()
		for _, p := range res.Problems {
			e.problems[p.Error()] = p
		}
		e.mu.Unlock()
		rulesets[node] = res.Ruleset
		return res.Ruleset, nil
	}
	resolve := func(ref PodRef, dest bool) (endpoint, error) {
		var pod corev1.Pod
		if err := e.client.Get(ctx, client.ObjectKey{Namespace: ref.Namespace, Name: ref.Name}, &pod); err != nil {
			return endpoint{}, fmt.Errorf("probe endpoint %s: %w", ref, err)
		}
		if pod.Status.Phase != corev1.PodRunning {
			return endpoint{}, fmt.Errorf("probe endpoint %s is %s, not Running", ref, pod.Status.Phase)
		}
		if dest && spec.ViaService {
			// The Service only has to exist: kube-proxy DNATs its ClusterIP to the pod IP
			// before the filter hooks, so the enforcer judges the pod-IP packet.
			var svc corev1.Service
			if err := e.client.Get(ctx, client.ObjectKey{Namespace: ref.Namespace, Name: ServiceName(ref)}, &svc); err != nil {
				return endpoint{}, fmt.Errorf("probe via service to %s: %w", ref, err)
			}
		}
		ep := endpoint{ref: ref, node: pod.Spec.NodeName, host: pod.Spec.HostNetwork}
		for _, ip := range pod.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err == nil && familyOf(a) == spec.Family {
				ep.ip = a.Unmap()
				return ep, nil
			}
		}
		return endpoint{}, fmt.Errorf("probe endpoint %s has no %s address", ref, spec.Family)
	}
	froms := make([]endpoint, len(spec.Froms))
	for i, ref := range spec.Froms {
		if froms[i], err = resolve(ref, false); err != nil {
			return nil, err
		}
	}
	tos := make([]endpoint, len(spec.Tos))
	for i, ref := range spec.Tos {
		if tos[i], err = resolve(ref, true); err != nil {
			return nil, err
		}
	}
	var cases []lab.Case
	var results []lab.ProbeResult
	for _, f := range froms {
		for _, t := range tos {
			ok, why, err := judge(compile, f, t, pn, uint16(spec.Port), e.mutation.destinationOnly)
			if err != nil {
				return nil, err
			}
			cases = append(cases, lab.Case{FromName: f.ref.String(), ToName: t.ref.String()})
			results = append(results, lab.ProbeResult{OK: ok, Err: errors.New(why)})
		}
	}
	path := "pod IP"
	if spec.ViaService {
		path = "Service"
	}
	title := fmt.Sprintf("%s/%d %s %s", strings.ToLower(string(spec.Protocol)), spec.Port, spec.Family, path)
	return lab.MatrixFromResults(title, cases, results), nil
}

// judge decides one new connection the way the kernel of each node on the path would
// (tracer.Judge). A pod talking to its own address never leaves it. The reason names
// each node and the step that decided there.
func judge(compile func(string) (*ruleset.Ruleset, error), src, dst endpoint, proto uint8, port uint16, destinationOnly bool) (bool, string, error) {
	if src.ip == dst.ip && src.node == dst.node {
		return true, "loopback: never leaves the pod", nil
	}
	from := tracer.Endpoint{Addr: src.ip, Node: src.node, Host: src.host}
	if destinationOnly && dst.node != src.node {
		// The planted bug: the source's node does not judge traffic leaving it.
		from.Node = ""
	}
	j, err := tracer.Judge(from, tracer.Endpoint{Addr: dst.ip, Node: dst.node, Host: dst.host}, tracer.Packet{Proto: proto, DPort: port},
		func(node string) (*tracer.Tracer, error) {
			rs, err := compile(node)
			if err != nil {
				return nil, err
			}
			return tracer.New(rs), nil
		})
	if err != nil {
		return false, "", err
	}
	var why []string
	for _, h := range j.Hops {
		step := h.Result.Last()
		desc := step.String()
		if step.Comment != "" {
			desc += " /* " + step.Comment + " */"
		}
		why = append(why, fmt.Sprintf("%s %s: %s: %s", h.Node, h.Hook, h.Result.Verdict, desc))
	}
	return j.Allowed(), strings.Join(why, "; "), nil
}

// snapshot reads the cluster into the compiler's model, as the agent's caches hold it.
func (e *TracerEnv) snapshot(ctx context.Context) (*model.Snapshot, error) {
	var pods corev1.PodList
	if err := e.client.List(ctx, &pods); err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	var nss corev1.NamespaceList
	if err := e.client.List(ctx, &nss); err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	var pols networkingv1.NetworkPolicyList
	if err := e.client.List(ctx, &pols); err != nil {
		return nil, fmt.Errorf("list policies: %w", err)
	}
	snap := &model.Snapshot{Namespaces: map[string]*model.Namespace{}}
	for i := range pods.Items {
		if e.mutation.pod != nil {
			e.mutation.pod(&pods.Items[i])
		}
		snap.Pods = append(snap.Pods, model.PodFromAPI(&pods.Items[i]))
	}
	for _, ns := range nss.Items {
		snap.Namespaces[ns.Name] = &model.Namespace{Name: ns.Name, Labels: ns.Labels}
	}
	for i := range pols.Items {
		if e.mutation.policy != nil {
			e.mutation.policy(&pols.Items[i])
		}
		snap.Policies = append(snap.Policies, &pols.Items[i])
	}
	return snap, nil
}
