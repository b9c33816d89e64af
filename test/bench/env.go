package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/test/echo"
	"github.com/nftpolicy/nftpolicy/test/lab"
)

// Addresses the agents serve inside their node namespace.
const (
	agentHealthAddr  = lab.AgentHealthAddr
	agentMetricsAddr = "127.0.0.1:19090"
)

// The bench namespace and its pods: client and attacker on node1, server and denied
// on node2 — every measured flow crosses from one node to the other.
const (
	benchNS = "bench"

	sinkPort    = 8080 // accept and close: connect-close loops, the prober, the flood
	echoPort    = 8081 // the established flow of the revocation test
	discardPort = 8082 // the long stream
)

// env is the lab cluster the measurements share, grown scale by scale.
type env struct {
	opts *Options
	c    *lab.Cluster
	cs   kubernetes.Interface

	n1, n2           *lab.ClusterNode
	denied, attacker *lab.ClusterPod
	deniedSink       *sinkServer
	// pair is client → server, the flow every measurement uses (and the one the
	// ClusterNetworkPolicies select); pair2 is client2 → server2, the same
	// NetworkPolicies' shape with no ClusterNetworkPolicy selecting either pod.
	pair, pair2 *flowPair

	// cnpc writes ClusterNetworkPolicies (JSON: CRDs have no protobuf);
	// cnpInstalled is set from the CRD's installation until its removal, cnpLoaded
	// while the ClusterNetworkPolicy load is in the API server.
	cnpc                    client.Client
	cnpInstalled, cnpLoaded bool

	loaded   Scale
	agentSeq atomic.Int64
	extraSeq int // numbers the pods the measurements add
	// podFlips and nsFlipped track the labels the incremental changes flip (a
	// patch that changes nothing sends no event).
	podFlips  int
	nsFlipped map[int]bool
}

// startEnv starts a two-node routed IPv4 lab cluster without agents, creates the
// bench namespace, its four pods with their servers and the bench policies.
func startEnv(ctx context.Context, opts *Options) (_ *env, err error) {
	if err := lab.CleanupStale(""); err != nil {
		opts.logf("cleaning up stale labs: %v", err)
	}
	logDir := filepath.Join(opts.OutDir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, err
	}
	c, err := lab.StartCluster(ctx, lab.ClusterOptions{
		Nodes: 2, Topology: lab.Routed, ControlPlaneDir: opts.ControlPlaneDir,
		Progress: prefixWriter{opts, "lab: "}, LogDir: logDir,
	})
	if err != nil {
		return nil, err
	}
	e := &env{opts: opts, c: c, n1: c.Node("node1"), n2: c.Node("node2"), nsFlipped: map[int]bool{}}
	defer func() {
		if err != nil {
			err = errors.Join(err, e.Close())
		}
	}()
	cfg := c.RESTConfig()
	// The loader writes tens of thousands of objects: no client-side rate limit,
	// and protobuf, which the API server decodes and encodes faster than JSON.
	cfg.QPS, cfg.Burst = -1, 0
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	if e.cs, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, err
	}

	if err := c.CreateNamespace(ctx, benchNS, map[string]string{"purpose": "bench"}); err != nil {
		return nil, err
	}
	e.pair, e.pair2 = &flowPair{suffix: ""}, &flowPair{suffix: "2"}
	fields := map[string]**lab.ClusterPod{
		"client": &e.pair.client, "server": &e.pair.server, "client2": &e.pair2.client, "server2": &e.pair2.server,
		"attacker": &e.attacker, "denied": &e.denied,
	}
	for _, p := range benchPods {
		// No container ports: the lab would serve them; the bench runs its own
		// servers.
		if *fields[p.name], err = c.CreatePod(ctx, lab.PodSpec{Namespace: benchNS, Name: p.name, Node: p.node, Labels: maps.Clone(p.labels)}); err != nil {
			return nil, err
		}
	}
	for _, p := range []*lab.ClusterPod{e.pair.client, e.pair2.client, e.attacker} {
		// Headroom for the connect-close loops (they close with RST, so ports are
		// free again at once; this only matters if something lingers).
		if err := p.NS.Sysctl("net/ipv4/ip_local_port_range", "1024 65535"); err != nil {
			return nil, err
		}
		if err := p.NS.Sysctl("net/ipv4/tcp_tw_reuse", "1"); err != nil {
			return nil, err
		}
	}
	for _, fp := range []*flowPair{e.pair, e.pair2} {
		if err := fp.serve(); err != nil {
			return nil, err
		}
	}
	if e.deniedSink, err = serveSink(e.denied.NS, sinkPort); err != nil {
		return nil, err
	}
	for _, np := range benchPolicies() {
		if _, err := e.cs.NetworkingV1().NetworkPolicies(benchNS).Create(ctx, np, metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("create policy %s: %w", np.Name, err)
		}
	}
	// ClusterNetworkPolicies are custom resources: JSON only, through a client that
	// knows their types; no client-side rate limit either.
	ccfg := c.RESTConfig()
	ccfg.QPS, ccfg.Burst = -1, 0
	scheme := runtime.NewScheme()
	if err := cnp.Install(scheme); err != nil {
		return nil, err
	}
	if e.cnpc, err = client.New(ccfg, client.Options{Scheme: scheme}); err != nil {
		return nil, err
	}
	return e, nil
}

// benchPods are the pods of the bench namespace: every measured flow crosses from
// node1 to node2. client and server carry the label the bench's Admin
// ClusterNetworkPolicies select; client2 and server2 have NetworkPolicies of the same
// shape as theirs and no ClusterNetworkPolicy selects them.
var benchPods = []struct {
	name, node string
	labels     map[string]string
}{
	{"client", "node1", map[string]string{"app": "client", "access": "granted", cnpSubjectLabel: cnpSubjectValue}},
	{"attacker", "node1", map[string]string{"app": "attacker"}},
	{"server", "node2", map[string]string{"app": "server", cnpSubjectLabel: cnpSubjectValue}},
	{"denied", "node2", map[string]string{"app": "denied"}},
	{"client2", "node1", map[string]string{"app": "client2", "access": "granted"}},
	{"server2", "node2", map[string]string{"app": "server2"}},
}

// flowPair is a client on node1 and a server on node2 running the bench's servers.
type flowPair struct {
	// suffix ends the names and app labels of the pair's pods and policies: "" for
	// client and server, "2" for client2 and server2.
	suffix         string
	client, server *lab.ClusterPod
	sink           *sinkServer
	echo           *echo.Server
	discard        *discardServer
}

// serve starts the server's sink, echo and discard servers.
func (fp *flowPair) serve() (err error) {
	if fp.sink, err = serveSink(fp.server.NS, sinkPort); err != nil {
		return err
	}
	if fp.echo, err = echo.Serve(fp.server.NS, echoPort, echo.Options{IPv4Only: true}); err != nil {
		return err
	}
	fp.discard, err = serveDiscard(fp.server.NS, discardPort)
	return err
}

func (fp *flowPair) close() error {
	var errs []error
	if fp.sink != nil {
		errs = append(errs, fp.sink.Close())
	}
	if fp.echo != nil {
		errs = append(errs, fp.echo.Close())
	}
	if fp.discard != nil {
		errs = append(errs, fp.discard.Close())
	}
	return errors.Join(errs...)
}

// sinkAddr, echoAddr and streamAddr are the server's ports.
func (fp *flowPair) sinkAddr() netip.AddrPort { return netip.AddrPortFrom(fp.server.IPv4, sinkPort) }
func (fp *flowPair) echoAddr() netip.AddrPort { return netip.AddrPortFrom(fp.server.IPv4, echoPort) }
func (fp *flowPair) streamAddr() netip.AddrPort {
	return netip.AddrPortFrom(fp.server.IPv4, discardPort)
}

// benchPolicies: for each pair, the server accepts pods labelled access=granted on the
// bench ports and is isolated by a second policy too, so that deleting the first one
// denies; the client may only reach its server; the denied pod accepts nothing. Both
// pairs' policies have the same shape, so their flows take the same path through the
// NetworkPolicy chains.
func benchPolicies() []*networkingv1.NetworkPolicy {
	var out []*networkingv1.NetworkPolicy
	for _, sfx := range []string{"", "2"} {
		out = append(out,
			serverAllowPolicy(sfx, "granted"),
			&networkingv1.NetworkPolicy{
				ObjectMeta: metav1.ObjectMeta{Namespace: benchNS, Name: "server" + sfx + "-isolate"},
				Spec: networkingv1.NetworkPolicySpec{
					PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server" + sfx}},
					PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
				},
			},
			&networkingv1.NetworkPolicy{
				ObjectMeta: metav1.ObjectMeta{Namespace: benchNS, Name: "client" + sfx + "-egress"},
				Spec: networkingv1.NetworkPolicySpec{
					PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "client" + sfx}},
					Egress: []networkingv1.NetworkPolicyEgressRule{{
						To:    []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "server" + sfx}}}},
						Ports: benchPorts(),
					}},
					PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
				},
			})
	}
	return append(out, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: benchNS, Name: "denied-isolate"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "denied"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		},
	})
}

func benchPorts() []networkingv1.NetworkPolicyPort {
	tcp := corev1.ProtocolTCP
	p, end := intstr.FromInt32(sinkPort), int32(discardPort)
	return []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p, EndPort: &end}}
}

// serverAllowPolicy lets pods labelled access=<access> reach server<sfx>.
func serverAllowPolicy(sfx, access string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: benchNS, Name: "server" + sfx + "-allow"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server" + sfx}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"access": access}}}},
				Ports: benchPorts(),
			}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		},
	}
}

// Close stops everything the env started; the lab's Close removes every namespace
// and process (agents included) and the API server.
func (e *env) Close() error {
	var errs []error
	for _, fp := range []*flowPair{e.pair, e.pair2} {
		if fp != nil {
			errs = append(errs, fp.close())
		}
	}
	if e.deniedSink != nil {
		errs = append(errs, e.deniedSink.Close())
	}
	errs = append(errs, e.c.Close())
	return errors.Join(errs...)
}

// ensureScale grows the synthetic objects to s (never shrinks).
func (e *env) ensureScale(ctx context.Context, s Scale) error {
	if s.Pods <= e.loaded.Pods && s.Policies <= e.loaded.Policies {
		return nil
	}
	to := Scale{Pods: max(s.Pods, e.loaded.Pods), Policies: max(s.Policies, e.loaded.Policies)}
	e.opts.logf("loading synthetic objects: %s -> %s pods/policies", e.loaded, to)
	d, err := loadScale(ctx, e.cs, e.loaded, to, 24)
	if err != nil {
		return fmt.Errorf("load %s: %w", to, err)
	}
	writes := 2*(to.Pods-e.loaded.Pods) + (to.Policies - e.loaded.Policies)
	e.opts.logf("loaded %s in %v (%.0f writes/s)", to, d.Round(time.Millisecond), float64(writes)/d.Seconds())
	e.loaded = to
	return nil
}

// ---- agents ----

// agentRun is one agent process the bench started in a node namespace.
type agentRun struct {
	e       *env
	node    *lab.ClusterNode
	proc    *lab.Process
	logFile string
	// Started is just before the process was started; Ready when /readyz first
	// answered 200 (polled every 10 ms).
	Started, Ready time.Time
	http           *http.Client
	stopped        bool
}

// startAgent starts nftpolicy-agent in node's namespace with the metrics endpoint on
// and waits until it is ready.
func (e *env) startAgent(ctx context.Context, node *lab.ClusterNode, extra ...string) (*agentRun, error) {
	return e.startAgentSeq(ctx, node, int(e.agentSeq.Add(1)), extra...)
}

func (e *env) startAgentSeq(ctx context.Context, node *lab.ClusterNode, seq int, extra ...string) (*agentRun, error) {
	name := fmt.Sprintf("bench-agent-%s-%d", node.Name, seq)
	a := &agentRun{e: e, node: node, logFile: filepath.Join(e.c.LogDir(), name+".log"), http: node.NS.HTTPClient(10 * time.Second)}
	args := append([]string{e.opts.AgentBinary,
		"--kubeconfig", e.c.Kubeconfig(), "--node-name", node.Name,
		"--health-probe-bind-address", agentHealthAddr,
		"--metrics-bind-address", agentMetricsAddr,
		// Plain HTTP on the namespace's loopback: a secure endpoint would add a
		// TokenReview and a SubjectAccessReview to the API server's load the bench
		// measures, and the figures are the metrics, not their transport.
		"--metrics-secure=false",
	}, e.opts.AgentArgs...)
	args = append(args, extra...)
	// The lab appends to log files, and the figures are read back from this one: start
	// it empty, or a previous run's lines would be read as this run's.
	if err := os.Remove(a.logFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	a.Started = time.Now()
	p, err := e.c.Lab().StartProcess(node.NS, name, a.logFile, args...)
	if err != nil {
		return nil, err
	}
	a.proc = p
	if err := a.waitReady(ctx, 5*time.Minute); err != nil {
		b, _ := os.ReadFile(a.logFile)
		return nil, errors.Join(fmt.Errorf("agent on %s: %w; log:\n%s", node.Name, err, tailLines(string(b), 15)), a.stop())
	}
	return a, nil
}

func (a *agentRun) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+agentHealthAddr+"/readyz", nil)
		if resp, err := a.http.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				a.Ready = time.Now()
				return nil
			}
		}
		select {
		case <-a.proc.Done():
			return fmt.Errorf("agent exited before it was ready: %w", a.proc.ExitErr())
		case <-ctx.Done():
			return fmt.Errorf("agent not ready: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Pid is the agent's process ID ("ip netns exec" execs the agent).
func (a *agentRun) Pid() int { return a.proc.Pid() }

// metrics scrapes the agent's /metrics inside the node namespace.
func (a *agentRun) metrics(ctx context.Context) (Metrics, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+agentMetricsAddr+"/metrics", nil)
	resp, err := a.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape agent on %s: %w", a.node.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape agent on %s: %s", a.node.Name, resp.Status)
	}
	return ParseMetrics(resp.Body)
}

func (a *agentRun) syncStats(ctx context.Context) (syncStats, error) {
	m, err := a.metrics(ctx)
	if err != nil {
		return syncStats{}, err
	}
	return syncStatsOf(m), nil
}

// cpu is the agent's CPU time so far, from /proc/<pid>/stat (utime + stime).
func (a *agentRun) cpu() (time.Duration, error) { return ProcCPU(a.Pid()) }

// cpuPrecise is the agent's CPU time from the threads' schedstat (ns resolution),
// for short windows.
func (a *agentRun) cpuPrecise() (time.Duration, error) { return ProcCPUPrecise(a.Pid()) }

// cpuOver sleeps for window and returns the agent's CPU time meanwhile (cpuPrecise) and
// the wall time the measured window took.
func (a *agentRun) cpuOver(window time.Duration) (cpu, wall time.Duration, err error) {
	c0, err := a.cpuPrecise()
	if err != nil {
		return 0, 0, err
	}
	t0 := time.Now()
	time.Sleep(window)
	c1, err := a.cpuPrecise()
	if err != nil {
		return 0, 0, err
	}
	return c1 - c0, time.Since(t0), nil
}

// firstApplied is the agent's "first ruleset applied" log line.
type firstApplied struct {
	Chains   int     `json:"chains"`
	Rules    int     `json:"rules"`
	Elements int     `json:"elements"`
	Seconds  float64 `json:"seconds"`
}

func (a *agentRun) firstApplied() (firstApplied, error) {
	f, err := os.Open(a.logFile)
	if err != nil {
		return firstApplied{}, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if !strings.Contains(string(line), "first ruleset applied") {
			continue
		}
		var v struct {
			Chains, Rules, Elements int
			Duration                any
		}
		if err := json.Unmarshal(line, &v); err != nil {
			return firstApplied{}, fmt.Errorf("agent log line %q: %w", line, err)
		}
		out := firstApplied{Chains: v.Chains, Rules: v.Rules, Elements: v.Elements}
		switch d := v.Duration.(type) {
		case float64:
			out.Seconds = d
		case string:
			pd, err := time.ParseDuration(d)
			if err != nil {
				return out, fmt.Errorf("agent log duration %q: %w", d, err)
			}
			out.Seconds = pd.Seconds()
		}
		return out, nil
	}
	return firstApplied{}, errors.New("no \"first ruleset applied\" line in the agent log")
}

// stop stops the agent (SIGTERM; its table stays in the kernel) and removes the table
// with `nftpolicy-agent cleanup`, so the next run starts cold.
func (a *agentRun) stop() error {
	if a.stopped {
		return nil
	}
	a.stopped = true
	var errs []error
	if a.proc != nil {
		errs = append(errs, a.proc.Stop(syscall.SIGTERM))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := a.node.NS.Exec(ctx, a.e.opts.AgentBinary, "cleanup"); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// waitQuiet waits until the agent's sync count has not changed for quiet (the agent
// has caught up with the API server), up to maxWait.
func (a *agentRun) waitQuiet(ctx context.Context, quiet, maxWait time.Duration) (syncStats, error) {
	deadline := time.Now().Add(maxWait)
	var last syncStats
	lastChange := time.Now()
	for first := true; ; first = false {
		s, err := a.syncStats(ctx)
		if err != nil {
			return s, err
		}
		if first || s.ComputeCount != last.ComputeCount {
			last, lastChange = s, time.Now()
		} else if time.Since(lastChange) >= quiet {
			return s, nil
		}
		if time.Now().After(deadline) {
			return s, fmt.Errorf("agent on %s still syncing after %v", a.node.Name, maxWait)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// apiMetrics scrapes the API server's /metrics.
func (e *env) apiMetrics(ctx context.Context) (Metrics, error) {
	b, err := e.cs.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("scrape API server: %w", err)
	}
	return ParseMetrics(strings.NewReader(string(b)))
}

// nft runs nft in ns.
func nft(ctx context.Context, ns *lab.Netns, args ...string) (string, error) {
	out, err := ns.Exec(ctx, append([]string{"nft"}, args...)...)
	return string(out), err
}

// conntrackCount is the number of conntrack entries of ns (0 when conntrack is not
// loaded there).
func conntrackCount(ns *lab.Netns) int {
	n := 0
	_ = ns.Do(func() error {
		b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_count")
		if err == nil {
			n, _ = strconv.Atoi(strings.TrimSpace(string(b))) // a decimal, from the kernel
		}
		return nil
	})
	return n
}

// flushNodes empties both nodes' conntrack tables: every sync that changes the
// ruleset makes the agent judge each tracked flow of its node (revocation), so
// flows left over from an earlier measurement would be charged to the next one.
func (e *env) flushNodes(ctx context.Context) error {
	return errors.Join(flushConntrack(ctx, e.n1.NS), flushConntrack(ctx, e.n2.NS))
}

// flushConntrack empties ns's conntrack table.
func flushConntrack(ctx context.Context, ns *lab.Netns) error {
	_, err := ns.Exec(ctx, "conntrack", "-F")
	return err
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// prefixWriter sends the lab's progress lines to the bench's log.
type prefixWriter struct {
	o      *Options
	prefix string
}

func (w prefixWriter) Write(b []byte) (int, error) {
	for line := range strings.SplitSeq(strings.TrimRight(string(b), "\n"), "\n") {
		w.o.logf("%s%s", w.prefix, line)
	}
	return len(b), nil
}
