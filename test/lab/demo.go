package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/explain"
)

// DefaultEnforceTimeout bounds the demo's wait for the agents to enforce.
const DefaultEnforceTimeout = time.Minute

// DemoOptions configures RunDemo.
type DemoOptions struct {
	// Out receives the demo's narration.
	Out io.Writer
	// AgentBinary is the nftpolicy-agent to run on every node (required).
	AgentBinary string
	// ControlPlaneDir is as in ClusterOptions.
	ControlPlaneDir string
	// Topology defaults to Routed, Nodes to 2.
	Topology Topology
	Nodes    int
	// IPv4Only turns dual-stack off.
	IPv4Only bool
	// EnforceTimeout bounds the wait for enforcement
	// (DefaultEnforceTimeout if zero).
	EnforceTimeout time.Duration
	// StateDir and LogDir are as in ClusterOptions.
	StateDir string
	LogDir   string
}

// The demo's scenario: the ingress controller, an app of two tiers and an
// unrelated client.
const (
	demoPort       = 80
	ingressNS      = "ingress-nginx"
	ingressNameKey = "app.kubernetes.io/name"
)

// DemoPolicies are the two policies the demo applies: the seed's
// backend-policy (backend only from frontend) and the ingress policy (the
// frontend only from the ingress controller).
func DemoPolicies() []*networkingv1.NetworkPolicy {
	return []*networkingv1.NetworkPolicy{
		{
			ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "backend-policy"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "backend"}},
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
					{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "frontend"}}},
				}}},
			},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "frontend-from-ingress"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "frontend"}},
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
					NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ingressNS}},
					PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{ingressNameKey: "ingress-nginx"}},
				}}}},
			},
		},
	}
}

// DemoClusterPolicy is the demo's cluster admin rule: an Admin-tier
// ClusterNetworkPolicy that lets the client of namespace other (say, the cluster's
// monitoring) reach the backend, whatever the app's own NetworkPolicies say — an admin
// rule overriding a NetworkPolicy.
func DemoClusterPolicy() *cnp.ClusterNetworkPolicy {
	return &cnp.ClusterNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "monitoring-reaches-backend"},
		Spec: cnp.ClusterNetworkPolicySpec{
			Tier:     cnp.AdminTier,
			Priority: 10,
			Subject: cnp.ClusterNetworkPolicySubject{Pods: &cnp.NamespacedPod{
				NamespaceSelector: metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "app"}},
				PodSelector:       metav1.LabelSelector{MatchLabels: map[string]string{"app": "backend"}},
			}},
			Ingress: []cnp.ClusterNetworkPolicyIngressRule{{
				Name:   "from-monitoring",
				Action: cnp.ClusterNetworkPolicyRuleActionAccept,
				From: []cnp.ClusterNetworkPolicyIngressPeer{{
					Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "other"}},
				}},
				Protocols: []cnp.ClusterNetworkPolicyProtocol{{TCP: &cnp.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnp.Port{Number: demoPort}}}},
			}},
		},
	}
}

// DemoScenario is the demo's workload: namespace ingress-nginx with the
// ingress controller, namespace app with frontend and backend on different
// nodes, namespace other with an unrelated client, and a ClusterIP Service
// app/backend.
type DemoScenario struct {
	Ingress, Frontend, Backend, Client *ClusterPod
	Service                            *Service
}

// Pods returns the scenario's pods in matrix order.
func (s *DemoScenario) Pods() []*ClusterPod {
	return []*ClusterPod{s.Ingress, s.Frontend, s.Backend, s.Client}
}

// CreateDemoScenario creates the demo's namespaces, pods (serving TCP and
// UDP port 80, named "http" and "http-udp") and Service in c.
func CreateDemoScenario(ctx context.Context, c *Cluster) (*DemoScenario, error) {
	nodes := c.Nodes()
	nodeFor := func(i int) string { return nodes[i%len(nodes)].Name }
	for _, ns := range []string{ingressNS, "app", "other"} {
		if err := c.CreateNamespace(ctx, ns, nil); err != nil {
			return nil, err
		}
	}
	specs := []PodSpec{
		{Namespace: ingressNS, Name: "ingress-nginx-controller", Node: nodeFor(1), Labels: map[string]string{ingressNameKey: "ingress-nginx"}},
		{Namespace: "app", Name: "frontend", Node: nodeFor(0), Labels: map[string]string{"app": "frontend"}},
		{Namespace: "app", Name: "backend", Node: nodeFor(1), Labels: map[string]string{"app": "backend"}},
		{Namespace: "other", Name: "client", Node: nodeFor(0), Labels: map[string]string{"app": "client"}},
	}
	var pods []*ClusterPod
	for _, s := range specs {
		s.Ports = []corev1.ContainerPort{
			{Name: "http", ContainerPort: demoPort, Protocol: corev1.ProtocolTCP},
			{Name: "http-udp", ContainerPort: demoPort, Protocol: corev1.ProtocolUDP},
		}
		p, err := c.CreatePod(ctx, s)
		if err != nil {
			return nil, err
		}
		pods = append(pods, p)
	}
	svc, err := c.CreateService(ctx, "app", "backend", map[string]string{"app": "backend"},
		[]corev1.ServicePort{{Name: "http", Port: demoPort, TargetPort: intstr.FromString("http")}})
	if err != nil {
		return nil, err
	}
	return &DemoScenario{Ingress: pods[0], Frontend: pods[1], Backend: pods[2], Client: pods[3], Service: svc}, nil
}

// demoMatrices is one round of the demo's probes: pod to pod and pod to the
// backend's ClusterIP, per family.
type demoMatrices struct {
	pods, svc []*Matrix
}

// RunDemo runs the README's demo: a cluster with an agent per node, the
// scenario's pods and a ClusterIP Service, the reachability matrix before
// and after the policies (waiting until the agents enforce them), the
// agent's table on one node, and teardown. It returns an error (after
// tearing down) if the observed matrix never equals the expected one.
func RunDemo(ctx context.Context, opts DemoOptions) (err error) {
	out := opts.Out
	if out == nil {
		out = io.Discard
	}
	if opts.AgentBinary == "" {
		return errors.New("demo: no agent binary")
	}
	if opts.EnforceTimeout <= 0 {
		opts.EnforceTimeout = DefaultEnforceTimeout
	}
	if opts.Nodes == 0 {
		opts.Nodes = 2
	}
	began := time.Now()
	step := 0
	say := func(format string, args ...any) {
		step++
		fmt.Fprintf(out, "\n==> [%d] %s\n", step, fmt.Sprintf(format, args...))
	}
	indent := &prefixWriter{w: out, prefix: "    "}

	copts := ClusterOptions{
		Nodes: opts.Nodes, Topology: opts.Topology, DualStack: !opts.IPv4Only,
		AgentBinary: opts.AgentBinary, AgentArgs: []string{"--resync-period", "10s"},
		ControlPlaneDir: opts.ControlPlaneDir, Progress: indent, StateDir: opts.StateDir, LogDir: opts.LogDir,
	}
	say("Starting the lab: a real kube-apiserver + etcd (envtest), %s as network namespaces on an underlay bridge (%s topology, %s), nftpolicy-agent on every node",
		plural(copts.Nodes, "node"), orDefault(string(copts.Topology), string(Routed)), map[bool]string{true: "dual-stack", false: "IPv4 only"}[copts.DualStack])
	c, err := StartCluster(ctx, copts)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer func() {
		say("Tearing down: agents stopped and their tables removed, API server stopped, namespaces and state deleted")
		if cerr := c.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("demo: %w", cerr))
			return
		}
		fmt.Fprintf(indent, "done; the whole demo took %v\n", time.Since(began).Round(100*time.Millisecond))
	}()

	nodes := c.Nodes()
	say("Creating namespaces, pods (each serves TCP and UDP port %d and answers with its name) and a ClusterIP Service", demoPort)
	sc, err := CreateDemoScenario(ctx, c)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	pods, svc := sc.Pods(), sc.Service
	ingress, frontend, backend, client := sc.Ingress, sc.Frontend, sc.Backend, sc.Client
	svcFroms := []*ClusterPod{ingress, frontend, client}
	svcName := "svc " + svc.Key()

	probe := func() (demoMatrices, error) {
		var m demoMatrices
		fams := c.Families()
		m.pods, m.svc = make([]*Matrix, len(fams)), make([]*Matrix, len(fams))
		errs := make([]error, 2*len(fams))
		var wg sync.WaitGroup
		for i, f := range fams {
			wg.Go(func() {
				m.pods[i], errs[2*i] = c.ProbeMatrix(ctx, pods, pods, PodTarget(f, demoPort), "tcp", ProbeOptions{})
			})
			wg.Go(func() {
				m.svc[i], errs[2*i+1] = c.ProbeTargets(ctx, svcFroms,
					[]Target{{Name: svcName, Addr: svc.AddrPort(f, demoPort), ExpectReply: backend.Key()}}, "tcp", ProbeOptions{})
			})
		}
		wg.Wait()
		return m, errors.Join(errs...)
	}
	show := func(m demoMatrices) {
		fmt.Fprintf(indent, "TCP port %d; rows: from, columns: to; . = connection allowed, X = denied\n", demoPort)
		for _, x := range m.pods {
			fmt.Fprintf(indent, "\n%s", x)
		}
		fmt.Fprintf(indent, "\nthrough the ClusterIP Service app/backend (%s port %d, DNAT in the client's node as kube-proxy does):\n", joinList(svc.ClusterIPs), demoPort)
		for _, x := range m.svc {
			fmt.Fprintf(indent, "\n%s", x)
		}
	}
	names := PodKeys(pods)
	svcRows := PodKeys(svcFroms)
	wantBefore := demoMatrices{}
	wantAfter := demoMatrices{}
	for range c.Families() {
		wantBefore.pods = append(wantBefore.pods, NewMatrix(names, names, true))
		wantBefore.svc = append(wantBefore.svc, NewMatrix(svcRows, []string{svcName}, true))
		wantAfter.pods = append(wantAfter.pods, NewMatrix(names, names, true).
			DenyTo(frontend.Key()).Allow(ingress.Key(), frontend.Key()).
			DenyTo(backend.Key()).Allow(frontend.Key(), backend.Key()).
			AllowSelf())
		wantAfter.svc = append(wantAfter.svc, NewMatrix(svcRows, []string{svcName}, false).Allow(frontend.Key(), svcName))
	}

	say("Reachability before any NetworkPolicy: everything is open")
	before, err := probe()
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	show(before)
	if d := before.diff(wantBefore); d != "" {
		return fmt.Errorf("demo: without policies every connection should pass:\n%s", d)
	}

	say("Applying two NetworkPolicies")
	for _, np := range DemoPolicies() {
		if err := c.Client().Create(ctx, np); err != nil {
			return fmt.Errorf("demo: create policy %s/%s: %w", np.Namespace, np.Name, err)
		}
	}
	fmt.Fprintf(indent, "app/backend-policy:        pods app=backend accept only pods app=frontend (of namespace app)\n")
	fmt.Fprintf(indent, "app/frontend-from-ingress: pods app=frontend accept only pods %s=ingress-nginx of the namespace\n", ingressNameKey)
	fmt.Fprintf(indent, "                           kubernetes.io/metadata.name=%s (the ingress controller)\n", ingressNS)

	// enforced probes until the matrices are want, prints how long that took, and on
	// failure the agents' last log lines.
	enforced := func(want demoMatrices) (demoMatrices, error) {
		start := time.Now()
		got, err := waitMatrices(ctx, opts.EnforceTimeout, probe, want)
		if err != nil {
			for _, n := range nodes {
				fmt.Fprintf(indent, "agent log of %s (last lines):\n%s\n", n.Name, tail(c.AgentLog(n.Name), 15))
			}
			return got, fmt.Errorf("demo: %w", err)
		}
		fmt.Fprintf(indent, "enforced after %v\n", time.Since(start).Round(10*time.Millisecond))
		return got, nil
	}
	say("Waiting for the agents to enforce them (probing until the matrix is the expected one, at most %v)", opts.EnforceTimeout)
	after, err := enforced(wantAfter)
	if err != nil {
		return err
	}

	say("Reachability with the policies: only the ingress controller reaches the frontend, only the frontend reaches the backend")
	show(after)
	fmt.Fprintf(indent, "\nOK: the observed matrices equal the expected ones\n")

	say("nftpolicy explain (pkg/explain: the agent's compiler and the packet tracer over the API server's state): one allowed and one denied pair")
	if err := demoExplain(ctx, c, indent, []explainPair{{frontend, backend, true}, {client, backend, false}}); err != nil {
		return fmt.Errorf("demo: %w", err)
	}

	say("A cluster admin's rule over the app's NetworkPolicy: installing the ClusterNetworkPolicy CRD (the agents notice it without a restart) and an Admin-tier policy")
	crdAt := time.Now()
	if err := c.InstallCNPCRD(ctx, "standard"); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	// The agents look for the CRD every --cluster-policy-check-period (10s): wait for
	// them to watch it, so that the enforcement time below is the policy's alone.
	if err := c.WaitAgentsLog(ctx, ClusterPoliciesWatchedLog, 30*time.Second); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	fmt.Fprintf(indent, "every agent watches ClusterNetworkPolicies %v after the CRD was created\n", time.Since(crdAt).Round(100*time.Millisecond))
	if err := c.Client().Create(ctx, DemoClusterPolicy()); err != nil {
		return fmt.Errorf("demo: create ClusterNetworkPolicy: %w", err)
	}
	fmt.Fprintf(indent, "monitoring-reaches-backend (Admin tier, priority 10): pods app=backend of namespace app accept TCP/%d\n", demoPort)
	fmt.Fprintf(indent, "                           from namespace other, before any NetworkPolicy is consulted\n")
	wantAdmin := demoMatrices{}
	for i := range c.Families() {
		wantAdmin.pods = append(wantAdmin.pods, wantAfter.pods[i].Clone().Allow(client.Key(), backend.Key()))
		wantAdmin.svc = append(wantAdmin.svc, wantAfter.svc[i].Clone().Allow(client.Key(), svcName))
	}
	admin, err := enforced(wantAdmin)
	if err != nil {
		return err
	}
	say("Reachability with the admin rule: other/client now reaches the backend, the rest is unchanged")
	show(admin)
	fmt.Fprintf(indent, "\nOK: the observed matrices equal the expected ones\n")
	say("nftpolicy explain: the Admin tier decides before the NetworkPolicy")
	if err := demoExplain(ctx, c, indent, []explainPair{{client, backend, true}, {client, frontend, false}}); err != nil {
		return fmt.Errorf("demo: %w", err)
	}

	node := backend.Node
	say("The agent's ruleset on %s (runs %s and %s): ip netns exec %s nft list table inet nftpolicy", node.Name, backend.Key(), ingress.Key(), node.NS.Name())
	table, err := node.NS.Exec(ctx, "nft", "list", "table", "inet", "nftpolicy")
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	fmt.Fprintf(indent, "%s", table)
	return nil
}

// explainPair is a pair the demo explains and the verdict its matrix observed.
type explainPair struct {
	from, to *ClusterPod
	allowed  bool
}

// demoExplain prints `nftpolicy explain --from A --to B --port 80/TCP` for each pair,
// over the cluster's current Namespaces, Pods and NetworkPolicies, and checks that its
// verdict is the one the demo just observed (the pairs are the matrix's).
func demoExplain(ctx context.Context, c *Cluster, out io.Writer, pairs []explainPair) error {
	objs, err := c.Objects(ctx)
	if err != nil {
		return fmt.Errorf("explain: %w", err)
	}
	for i, pr := range pairs {
		fmt.Fprintf(out, "%s$ nftpolicy explain --from %s --to %s --port %d/TCP\n", map[bool]string{true: "\n"}[i > 0], pr.from.Key(), pr.to.Key(), demoPort)
		ex, err := explain.Explain(objs.Snapshot(""), explain.Request{From: pr.from.Key(), To: pr.to.Key(), Protocol: corev1.ProtocolTCP, Port: demoPort},
			compiler.Options{Table: compiler.DefaultTable, Revocation: true})
		if err != nil {
			return err
		}
		fmt.Fprint(out, ex.Format())
		if ex.Allowed != pr.allowed {
			return fmt.Errorf("explain %s -> %s: allowed=%v, but the probes observed allowed=%v", pr.from.Key(), pr.to.Key(), ex.Allowed, pr.allowed)
		}
	}
	return nil
}

// diff compares all matrices with want.
func (m demoMatrices) diff(want demoMatrices) string {
	var ds []string
	for i := range want.pods {
		if d := Diff(want.pods[i], m.pods[i]); d != "" {
			ds = append(ds, d)
		}
		if d := Diff(want.svc[i], m.svc[i]); d != "" {
			ds = append(ds, d)
		}
	}
	return strings.Join(ds, "\n")
}

// waitMatrices probes until the observation equals want or timeout passes.
func waitMatrices(ctx context.Context, timeout time.Duration, probe func() (demoMatrices, error), want demoMatrices) (demoMatrices, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		got, err := probe()
		if err != nil {
			return got, err
		}
		d := got.diff(want)
		if d == "" {
			return got, nil
		}
		select {
		case <-ctx.Done():
			return got, fmt.Errorf("not enforced within %v: %w\n%s", timeout, ctx.Err(), d)
		case <-tick.C:
		}
	}
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// prefixWriter indents every line written through it.
type prefixWriter struct {
	w      io.Writer
	prefix string
	mu     sync.Mutex
	mid    bool // inside a line
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var sb strings.Builder
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if line == "" {
			continue
		}
		if !p.mid && line != "\n" {
			sb.WriteString(p.prefix)
		}
		sb.WriteString(line)
		p.mid = !strings.HasSuffix(line, "\n")
	}
	if _, err := io.WriteString(p.w, sb.String()); err != nil {
		return 0, err
	}
	return len(b), nil
}
