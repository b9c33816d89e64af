package control

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/internal/testns"
	"github.com/nftpolicy/nftpolicy/test/lab"
	"github.com/nftpolicy/nftpolicy/test/reliability/gate"
)

// TestControl runs the suite. Every reason to skip is decided here, before Ginkgo
// starts, so that `go test ./...` passes over the package at once.
func TestControl(t *testing.T) {
	bin := gate.Open(t)
	if _, err := os.Stat(bin); err != nil {
		testns.SkipUnlessRequired(t, "agent binary: %v", err)
	}
	agentBin = bin
	RegisterFailHandler(Fail)
	RunSpecs(t, "reliability: agent restarts, API server outage, drift, coexistence")
}

const (
	ns         = "rel"
	serverPort = 8080
	// ourTable is the agent's table (the default --table).
	ourTable = "inet nftpolicy"
)

var (
	agentBin string
	cl       *lab.Cluster
	n1, n2   *lab.ClusterNode
	// client probes server and denied (both on node2, so node2's agent enforces).
	clientPod, server, denied *lab.ClusterPod
	// agents is the running agent of each node (nil while stopped).
	agents = map[string]*agentRun{}
)

var _ = BeforeSuite(func(ctx SpecContext) {
	Expect(lab.CleanupStale("")).To(Succeed())
	var err error
	cl, err = lab.StartCluster(ctx, lab.ClusterOptions{Nodes: 2, Topology: lab.Routed, Progress: GinkgoWriter})
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(func() {
		for _, n := range cl.Nodes() {
			if a := agents[n.Name]; a != nil {
				_ = a.stop(os.Interrupt)
			}
			// The lab removes the namespaces; cleanup is what an operator runs, and
			// it must not fail on a node whose table is gone.
			out, err := n.NS.Exec(context.Background(), agentBin, "cleanup")
			Expect(err).NotTo(HaveOccurred(), string(out))
		}
		Expect(cl.Close()).To(Succeed())
	})
	n1, n2 = cl.Node("node1"), cl.Node("node2")
	Expect(cl.CreateNamespace(ctx, ns, nil)).To(Succeed())
	ports := []corev1.ContainerPort{{ContainerPort: serverPort, Protocol: corev1.ProtocolTCP}}
	clientPod, err = cl.CreatePod(ctx, lab.PodSpec{Namespace: ns, Name: "client", Node: "node1", Labels: map[string]string{"app": "client"}})
	Expect(err).NotTo(HaveOccurred())
	server, err = cl.CreatePod(ctx, lab.PodSpec{Namespace: ns, Name: "server", Node: "node2", Labels: map[string]string{"app": "server"}, Ports: ports})
	Expect(err).NotTo(HaveOccurred())
	denied, err = cl.CreatePod(ctx, lab.PodSpec{Namespace: ns, Name: "denied", Node: "node2", Labels: map[string]string{"app": "denied"}, Ports: ports})
	Expect(err).NotTo(HaveOccurred())
	// Hundreds of connections a second: free ports quickly; the probes close with
	// RST, so nothing lingers in TIME_WAIT anyway.
	Expect(clientPod.NS.Sysctl("net/ipv4/ip_local_port_range", "1024 65535")).To(Succeed())
	for _, n := range cl.Nodes() {
		// A dropped SYN leaves a SYN_SENT entry in node1's conntrack for 2 minutes by
		// default; at ~170 a second they would swell the table every revocation
		// pass walks. The sysctl exists once conntrack is loaded; best effort.
		_ = n.NS.Sysctl("net/netfilter/nf_conntrack_tcp_timeout_syn_sent", "5")
	}

	Expect(cl.Client().Create(ctx, defaultDeny())).To(Succeed())
	Expect(cl.Client().Create(ctx, allowClient("server"))).To(Succeed())
	for _, n := range cl.Nodes() {
		a, err := startAgent(cl, n, agentBin)
		Expect(err).NotTo(HaveOccurred())
		agents[n.Name] = a
		Expect(a.waitReady(ctx, time.Minute)).To(Succeed())
	}
	// The baseline holds before any test relies on it.
	Expect(probeOnceVerdict(server)).To(Equal(connected))
	Expect(probeOnceVerdict(denied)).To(Equal(timedOut))
}, NodeTimeout(5*time.Minute))

// defaultDeny isolates every pod of the namespace for ingress.
func defaultDeny() *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "default-deny"},
		Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
	}
}

// allowClient lets the client reach the pods labelled app=<app> on serverPort.
func allowClient(app string) *networkingv1.NetworkPolicy {
	port := intstr.FromInt32(serverPort)
	tcp := corev1.ProtocolTCP
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "allow-client"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": app}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
			}},
		},
	}
}

// allowOnly points allow-client at app (server or denied): the other pod is then
// denied by default-deny. Switching it flips both pods at once (allow → deny and
// deny → allow) in one API write.
func allowOnly(ctx context.Context, app string) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		np := &networkingv1.NetworkPolicy{}
		if err := cl.Client().Get(ctx, client.ObjectKey{Namespace: ns, Name: "allow-client"}, np); err != nil {
			return err
		}
		np.Spec.PodSelector.MatchLabels = map[string]string{"app": app}
		return cl.Client().Update(ctx, np)
	})
}

// targets are the prober's destinations.
func targets() []target {
	return []target{
		{name: "server", addr: server.AddrPort(lab.IPv4, serverPort)},
		{name: "denied", addr: denied.AddrPort(lab.IPv4, serverPort)},
	}
}

// baseline is what the policies allow while allow-client selects the server.
var baseline = map[string]bool{"server": true, "denied": false}

// probeOnceVerdict probes p once from the client.
func probeOnceVerdict(p *lab.ClusterPod) outcome {
	out, err := probeOnce(clientPod.NS, p.AddrPort(lab.IPv4, serverPort), probeTimeout)
	Expect(err).NotTo(HaveOccurred())
	return out
}

// expectEnforced waits until the client reaches exactly the pods of allowed.
func expectEnforced(ctx context.Context, allowed map[string]bool) {
	GinkgoHelper()
	for _, p := range []*lab.ClusterPod{server, denied} {
		want := timedOut
		if allowed[p.Name] {
			want = connected
		}
		Eventually(ctx, func() outcome { return probeOnceVerdict(p) }).WithTimeout(30*time.Second).WithPolling(50*time.Millisecond).
			Should(Equal(want), "client → %s", p.Name)
	}
}

// nft runs nft in node's namespace.
func nft(ctx context.Context, node *lab.ClusterNode, args ...string) (string, error) {
	out, err := node.NS.Exec(ctx, append([]string{"nft"}, args...)...)
	return string(out), err
}

// counters are what traffic changes in a listing; the rest must be identical.
var counters = regexp.MustCompile(`counter packets \d+ bytes \d+`)

// listTable returns `nft list table <family name>` with counters zeroed ("" and no
// error if the table does not exist).
func listTable(ctx context.Context, node *lab.ClusterNode, table string) (string, error) {
	out, err := nft(ctx, node, append([]string{"list", "table"}, strings.Fields(table)...)...)
	if err != nil {
		if strings.Contains(out, "No such file or directory") || strings.Contains(err.Error(), "No such file or directory") {
			return "", nil
		}
		return "", err
	}
	return counters.ReplaceAllString(out, "counter"), nil
}

// report prints a measured figure (the report of `make test-reliability`).
func report(format string, args ...any) {
	fmt.Fprintf(GinkgoWriter, "FIGURE: "+format+"\n", args...)
	AddReportEntry("figure", fmt.Sprintf(format, args...))
}

// ensureBaseline brings back what every test starts from — both agents running,
// allow-client on the server, enforced — whatever a failed test left behind.
func ensureBaseline(ctx context.Context) {
	GinkgoHelper()
	Expect(allowOnly(ctx, "server")).To(Succeed())
	for _, n := range cl.Nodes() {
		if a := agents[n.Name]; a != nil && !a.proc.Exited() {
			continue
		}
		a, err := startAgent(cl, n, agentBin)
		Expect(err).NotTo(HaveOccurred())
		agents[n.Name] = a
		Expect(a.waitReady(ctx, time.Minute)).To(Succeed())
	}
	expectEnforced(ctx, baseline)
}

// settle waits until the prober has at least n complete samples started after t
// (a window of observation, awaited rather than slept).
func settle(ctx context.Context, p *prober, t time.Time, n int) time.Time {
	GinkgoHelper()
	var end time.Time
	Eventually(ctx, func() int {
		end = time.Now().Add(-probeTimeout - 100*time.Millisecond)
		return len(p.Samples(t, end))
	}).WithTimeout(time.Minute).WithPolling(50 * time.Millisecond).Should(BeNumerically(">=", n))
	return end
}

var _ = BeforeEach(func(ctx SpecContext) { ensureBaseline(ctx) }, NodeTimeout(3*time.Minute))
