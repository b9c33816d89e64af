package traffic

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane/netlink"
	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
	"github.com/nftpolicy/nftpolicy/test/echo"
	"github.com/nftpolicy/nftpolicy/test/lab"
	"github.com/nftpolicy/nftpolicy/test/reliability/gate"
)

// TestTraffic is gated: the suite runs for minutes and is meant for `make
// test-reliability`, so `go test ./...` skips it before anything starts.
func TestTraffic(t *testing.T) {
	gate.Open(t)
	RegisterFailHandler(Fail)
	RunSpecs(t, "reliability: traffic through policy changes and pod lifecycle races")
}

// reportOut is stdout: `go test -v` shows the figures without -ginkgo.v.
var reportOut io.Writer = os.Stdout

const (
	// echoPort is where the echo servers of this suite listen (every pod serves the
	// lab's one-shot servers on podPort).
	echoPort = 7000
	podPort  = 80
	// flowInterval is the pace of every echo flow: one packet per millisecond.
	flowInterval = time.Millisecond
	ns           = "rev"
)

var (
	cluster  *lab.Cluster
	k8s      client.Client
	cs       kubernetes.Interface
	agentBin string
	node1    *lab.ClusterNode
	node2    *lab.ClusterNode

	client1, attacker *lab.ClusterPod // node1
	server, keeper    *lab.ClusterPod // node2

	clientLabels = map[string]string{"role": "client", "access": "granted"}
	serverLabels = map[string]string{"app": "server", "tier": "open"}
)

var _ = BeforeSuite(func(ctx SpecContext) {
	if err := lab.CleanupStale(""); err != nil {
		GinkgoWriter.Printf("cleaning up stale labs: %v\n", err)
	}
	agentBin = os.Getenv("NFTPOLICY_AGENT")
	if agentBin == "" {
		root, err := lab.RepoRoot()
		Expect(err).NotTo(HaveOccurred())
		agentBin = filepath.Join(GinkgoT().TempDir(), "nftpolicy-agent")
		build := exec.Command("go", "build", "-o", agentBin, "./cmd/nftpolicy-agent")
		build.Dir = root
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := build.CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), string(out))
	}
	var err error
	cluster, err = lab.StartCluster(ctx, lab.ClusterOptions{
		Nodes: 2, Topology: lab.Routed, AgentBinary: agentBin, Progress: GinkgoWriter,
		AgentArgs: []string{"-v", "1"},
		// Logs (API server, etcd, agents) outlive the lab when asked to.
		LogDir: os.Getenv("NFTPOLICY_RELIABILITY_LOGS"),
	})
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(func() {
		Expect(cluster.Close()).To(Succeed())
	})
	k8s = cluster.Client()
	cfg := cluster.RESTConfig()
	// The burst writes as fast as the API server takes them: no client-side limit.
	cfg.QPS, cfg.Burst = -1, 0
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	cs, err = kubernetes.NewForConfig(cfg)
	Expect(err).NotTo(HaveOccurred())
	node1, node2 = cluster.Node("node1"), cluster.Node("node2")

	for _, n := range []string{ns, "noise", "race", "burst"} {
		Expect(cluster.CreateNamespace(ctx, n, nil)).To(Succeed())
	}
	mk := func(name, node string, labels map[string]string) *lab.ClusterPod {
		p, err := cluster.CreatePod(ctx, lab.PodSpec{Namespace: ns, Name: name, Node: node, Labels: labels,
			Ports: lab.TCPUDPPorts(podPort)})
		Expect(err).NotTo(HaveOccurred())
		return p
	}
	client1 = mk("client", "node1", clientLabels)
	attacker = mk("attacker", "node1", map[string]string{"role": "attacker"})
	server = mk("server", "node2", serverLabels)
	keeper = mk("keeper", "node2", map[string]string{"app": "keeper"})
	for _, p := range []*lab.ClusterPod{server, keeper} {
		s, err := echo.Serve(p.NS, echoPort, echo.Options{UDP: true, IPv4Only: true})
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(s.Close)
	}
	for _, np := range []*networkingv1.NetworkPolicy{
		isolate(ns, "server-isolate", map[string]string{"app": "server"}),
		serverAllow(),
		allowFrom(ns, "keeper-allow", map[string]string{"app": "keeper"}, nil, map[string]string{"role": "client"}),
	} {
		Expect(k8s.Create(ctx, np)).To(Succeed())
	}
	// The kernel must agree with the compiler before any measurement: this also checks
	// the comparison every convergence test relies on.
	waitConverged(ctx, 30*time.Second)
}, NodeTimeout(5*time.Minute))

// ---- policies ----

func isolate(namespace, name string, sel map[string]string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: sel},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		},
	}
}

// allowFrom isolates the pods sel selects for ingress and allows the peers (nsSel nil:
// the policy's namespace).
func allowFrom(namespace, name string, sel, nsSel, podSel map[string]string) *networkingv1.NetworkPolicy {
	np := isolate(namespace, name, sel)
	peer := networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{MatchLabels: podSel}}
	if nsSel != nil {
		peer.NamespaceSelector = &metav1.LabelSelector{MatchLabels: nsSel}
	}
	np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{peer}}}
	return np
}

// serverAllow lets pods labelled access=granted reach pods labelled tier=open.
func serverAllow() *networkingv1.NetworkPolicy {
	return allowFrom(ns, "server-allow", map[string]string{"tier": "open"}, nil, map[string]string{"access": "granted"})
}

// patchLabels replaces an object's labels with one merge patch (null removes a key)
// and returns when the API server has answered.
func patchLabels(ctx context.Context, obj client.Object, labels map[string]string) error {
	cur := map[string]any{}
	for k, v := range labels {
		cur[k] = v
	}
	for k := range obj.GetLabels() {
		if _, ok := labels[k]; !ok {
			cur[k] = nil
		}
	}
	b, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": cur}})
	if err != nil {
		return err
	}
	if err := k8s.Patch(ctx, obj, client.RawPatch(types.MergePatchType, b)); err != nil {
		return fmt.Errorf("patch labels of %s: %w", obj.GetName(), err)
	}
	return nil
}

// ---- the kernel against the compiler ----

// kernelTable reads node's table from the kernel over netlink.
func kernelTable(ctx context.Context, n *lab.ClusterNode) (*ruleset.Ruleset, error) {
	dp, err := netlink.New(netlink.WithNetNSPath(n.NS.Path()))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", n.Name, err)
	}
	rs, err := dp.Read(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", n.Name, err)
	}
	return rs, nil
}

// expectedTable compiles node's ruleset from what the API server holds now, as the
// agent would (revocation on: the agents run with its default).
func expectedTable(ctx context.Context, node string) (*ruleset.Ruleset, error) {
	snap := &model.Snapshot{NodeName: node, Namespaces: map[string]*model.Namespace{}}
	pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	for i := range pods.Items {
		snap.Pods = append(snap.Pods, model.PodFromAPI(&pods.Items[i]))
	}
	nss, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	for _, n := range nss.Items {
		snap.Namespaces[n.Name] = &model.Namespace{Name: n.Name, Labels: n.Labels}
	}
	nps, err := cs.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list policies: %w", err)
	}
	for i := range nps.Items {
		snap.Policies = append(snap.Policies, &nps.Items[i])
	}
	rs := compiler.Compile(snap, compiler.Options{Revocation: true}).Ruleset
	rs.Normalize()
	return rs, nil
}

// tableDiff describes how node's kernel table differs from the compiled one ("" if not).
func tableDiff(ctx context.Context, n *lab.ClusterNode) (string, error) {
	want, err := expectedTable(ctx, n.Name)
	if err != nil {
		return "", err
	}
	got, err := kernelTable(ctx, n)
	if err != nil {
		return "", err
	}
	if got == nil {
		return "no table in the kernel", nil
	}
	ch := ruleset.Diff(got, want)
	if ch.Empty() {
		return "", nil
	}
	return fmt.Sprintf("%d changes from the kernel to the compiled ruleset: %+v", ch.Ops(), summarize(ch)), nil
}

// summarize keeps a diff's description short (a burst can differ by thousands of
// elements).
func summarize(ch *ruleset.Changes) string {
	s := fmt.Sprintf("%+v", *ch)
	if len(s) > 2000 {
		s = s[:2000] + "…"
	}
	return s
}

// waitConverged waits until both nodes' tables equal the compiled ones and returns how
// long that took.
func waitConverged(ctx context.Context, timeout time.Duration) time.Duration {
	GinkgoHelper()
	start := time.Now()
	Eventually(func(g Gomega) {
		for _, n := range []*lab.ClusterNode{node1, node2} {
			d, err := tableDiff(ctx, n)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(d).To(BeEmpty(), n.Name)
		}
	}).WithContext(ctx).WithTimeout(timeout).WithPolling(100 * time.Millisecond).Should(Succeed())
	return time.Since(start)
}

// mapHas reports whether node's kernel map (e.g. ingress-pods-v4) has an element for a.
func mapHas(ctx context.Context, n *lab.ClusterNode, mapName string, a netip.Addr) (bool, error) {
	rs, err := kernelTable(ctx, n)
	if err != nil || rs == nil {
		return false, err
	}
	for _, s := range rs.Sets {
		if s.Name != mapName {
			continue
		}
		if _, ok := s.Lookup([][]byte{a.AsSlice()}); ok {
			return true, nil
		}
	}
	return false, nil
}

// probeOnce reports whether a new TCP connection from p reaches to.
func probeOnce(ctx context.Context, p *lab.ClusterPod, to netip.AddrPort) bool {
	r, err := cluster.Probe(ctx, p, to, "tcp", 400*time.Millisecond)
	Expect(err).NotTo(HaveOccurred())
	return r.OK
}

// ---- agents with other flags ----

// startCustomAgents stops the lab's agents (their tables stay: fail closed) and starts
// agents with extra flags in both nodes, waiting until each is ready. The returned
// function stops them and starts the lab's agents again.
func startCustomAgents(ctx context.Context, extra ...string) func() {
	GinkgoHelper()
	var procs []*lab.Process
	for _, n := range []*lab.ClusterNode{node1, node2} {
		Expect(cluster.StopAgent(n.Name, syscall.SIGTERM)).To(Succeed())
		args := append([]string{agentBin, "--kubeconfig", cluster.Kubeconfig(), "--node-name", n.Name,
			"--health-probe-bind-address", lab.AgentHealthAddr, "--metrics-bind-address", "0", "-v", "1"}, extra...)
		p, err := cluster.Lab().StartProcess(n.NS, "custom-agent-"+n.Name,
			filepath.Join(cluster.LogDir(), "custom-agent-"+n.Name+".log"), args...)
		Expect(err).NotTo(HaveOccurred())
		procs = append(procs, p)
		waitReady(ctx, n, p)
	}
	return func() {
		// Runs as a cleanup, after the spec's context is cancelled.
		ctx, cancel := context.WithTimeout(context.Background(), 2*lab.DefaultAgentReadyTimeout)
		defer cancel()
		for i, n := range []*lab.ClusterNode{node1, node2} {
			Expect(procs[i].Stop(syscall.SIGTERM)).To(Succeed())
			Expect(cluster.StartAgent(ctx, n.Name)).To(Succeed())
		}
	}
}

func waitReady(ctx context.Context, n *lab.ClusterNode, p *lab.Process) {
	GinkgoHelper()
	hc := n.NS.HTTPClient(time.Second)
	Eventually(func() (int, error) {
		if p.Exited() {
			return 0, StopTrying("agent exited: " + fmt.Sprint(p.Err()))
		}
		resp, err := hc.Get("http://" + lab.AgentHealthAddr + "/readyz")
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}).WithContext(ctx).WithTimeout(lab.DefaultAgentReadyTimeout).WithPolling(50 * time.Millisecond).Should(Equal(http.StatusOK))
}

// durations formats p50/p99/max of ds.
func durations(ds []time.Duration) string {
	if len(ds) == 0 {
		return "no samples"
	}
	return fmt.Sprintf("p50 %v p99 %v max %v n=%d", percentile(ds, 50).Round(time.Millisecond),
		percentile(ds, 99).Round(time.Millisecond), slices.Max(ds).Round(time.Millisecond), len(ds))
}

// clientRawMerge is a JSON merge patch.
func clientRawMerge(b []byte) client.Patch { return client.RawPatch(types.MergePatchType, b) }
