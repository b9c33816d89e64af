// Package e2e runs the real agent binary in a node network namespace against a real API
// server and probes real traffic between pod network namespaces.
package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/nftpolicy/nftpolicy/internal/testns"
	echotest "github.com/nftpolicy/nftpolicy/test/echo"
	"github.com/nftpolicy/nftpolicy/test/lab"
)

func TestE2E(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "e2e: agent in a node namespace")
}

var (
	env        *envtest.Environment
	k8s        client.Client
	theLab     *lab.Lab
	node       *lab.Node
	pods       []*lab.Pod
	agent      *lab.Process
	agentBin   string
	kubeconfig string
	probeAddr  = "127.0.0.1:19091"
)

// repoRoot finds the module root from the test's working directory (test/e2e).
func repoRoot() string {
	abs, err := filepath.Abs("../..")
	Expect(err).NotTo(HaveOccurred())
	return abs
}

var _ = BeforeSuite(func() {
	if os.Geteuid() != 0 {
		testns.SkipUnlessRequired(GinkgoT(), "the end-to-end test needs root (network namespaces and nftables)")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		testns.SkipUnlessRequired(GinkgoT(), "nft is not installed (apt-get install nftables)")
	}
	root := repoRoot()
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		os.Setenv("KUBEBUILDER_ASSETS", filepath.Join(root, "bin", "k8s"))
	}
	if _, err := os.Stat(filepath.Join(os.Getenv("KUBEBUILDER_ASSETS"), "kube-apiserver")); err != nil {
		testns.SkipUnlessRequired(GinkgoT(), "no control plane in KUBEBUILDER_ASSETS: run `make test`")
	}
	agentBin = os.Getenv("NFTPOLICY_AGENT")
	if agentBin == "" {
		agentBin = filepath.Join(GinkgoT().TempDir(), "nftpolicy-agent")
		build := exec.Command("go", "build", "-o", agentBin, "./cmd/nftpolicy-agent")
		build.Dir = root
		out, err := build.CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), string(out))
	}

	env = &envtest.Environment{}
	cfg, err := env.Start()
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(func() { Expect(env.Stop()).To(Succeed()) })
	scheme := runtime.NewScheme()
	Expect(clientgoscheme.AddToScheme(scheme)).To(Succeed())
	k8s, err = client.New(cfg, client.Options{Scheme: scheme})
	Expect(err).NotTo(HaveOccurred())

	user, err := env.AddUser(envtest.User{Name: "nftpolicy-agent", Groups: []string{"system:masters"}}, nil)
	Expect(err).NotTo(HaveOccurred())
	kc, err := user.KubeConfig()
	Expect(err).NotTo(HaveOccurred())
	kubeconfig = filepath.Join(GinkgoT().TempDir(), "kubeconfig")
	Expect(os.WriteFile(kubeconfig, kc, 0o600)).To(Succeed())

	theLab, err = lab.New(lab.Options{})
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(func() { Expect(theLab.Close()).To(Succeed()) })
	node, err = theLab.AddNode("n1")
	Expect(err).NotTo(HaveOccurred())

	// The API server listens on the root namespace's loopback: forward the same
	// address inside the node namespace so the kubeconfig (and its TLS names) work.
	api, err := url.Parse(cfg.Host)
	Expect(err).NotTo(HaveOccurred())
	_, err = theLab.ForwardTCP(node.NS, "", api.Host)
	Expect(err).NotTo(HaveOccurred())

	ctx := context.Background()
	for _, ns := range []string{"app", "other"} {
		Expect(k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
	}
	for i, p := range []struct{ ns, name, app string }{
		{"app", "frontend", "frontend"}, {"app", "backend", "backend"}, {"app", "db", "db"}, {"other", "client", "frontend"},
	} {
		ip4 := netip.MustParseAddr(fmt.Sprintf("10.244.1.%d", i+10))
		ip6 := netip.MustParseAddr(fmt.Sprintf("fd00:10:244:1::%x", i+10))
		pod, err := theLab.AddPod(node, p.name, ip4, ip6)
		Expect(err).NotTo(HaveOccurred())
		Expect(pod.Serve(80, 81)).To(Succeed())
		pods = append(pods, pod)
		obj := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: p.ns, Name: p.name, Labels: map[string]string{"app": p.app}},
			Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Image: "agnhost", Ports: []corev1.ContainerPort{
				{Name: "serve-80-tcp", ContainerPort: 80}, {Name: "serve-81-tcp", ContainerPort: 81},
				{Name: "serve-80-udp", ContainerPort: 80, Protocol: corev1.ProtocolUDP}, {Name: "serve-81-udp", ContainerPort: 81, Protocol: corev1.ProtocolUDP},
			}}}},
		}
		Expect(k8s.Create(ctx, obj)).To(Succeed())
		obj.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip4.String(),
			PodIPs: []corev1.PodIP{{IP: ip4.String()}, {IP: ip6.String()}}}
		Expect(k8s.Status().Update(ctx, obj)).To(Succeed())
	}
	startAgent()
	DeferCleanup(func() {
		if agent != nil && !agent.Exited() {
			Expect(agent.Stop(syscall.SIGTERM)).To(Succeed())
		}
		// Leave no table behind in the node namespace (it is deleted with the lab anyway).
		_, _ = node.NS.Exec(context.Background(), agentBin, "cleanup")
	})
})

func startAgent() {
	var err error
	agent, err = theLab.StartProcess(node.NS, "agent", filepath.Join(theLab.Dir(), "agent.log"), agentBin,
		"--kubeconfig", kubeconfig, "--node-name", "n1", "--metrics-bind-address", "0",
		"--health-probe-bind-address", probeAddr, "--resync-period", "2s", "-v", "1")
	Expect(err).NotTo(HaveOccurred())
	Eventually(agentReady, "30s", "100ms").Should(BeTrue(), "agent never became ready; log: %s", agentLog())
}

func agentLog() string {
	b, _ := os.ReadFile(agent.LogFile)
	return string(b)
}

// agentReady asks the agent's /readyz inside the node namespace.
func agentReady() bool {
	c := node.NS.HTTPClient(time.Second)
	resp, err := c.Get("http://" + probeAddr + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// matrix probes every pod pair over the family, protocol and port.
func matrix(fam lab.Family, proto string, port int) *lab.Matrix {
	m, err := lab.ProbeMatrix(context.Background(), pods, pods, fam, proto, port, lab.ProbeOptions{Timeout: 700 * time.Millisecond})
	Expect(err).NotTo(HaveOccurred())
	return m
}

func allAllowed() *lab.Matrix { return lab.NewMatrix(lab.PodNames(pods), lab.PodNames(pods), true) }

// expectMatrix waits until the probed matrix equals want (policy changes take effect
// asynchronously), then prints it.
func expectMatrix(title string, want *lab.Matrix, fam lab.Family, proto string, port int) {
	var got *lab.Matrix
	Eventually(func() string {
		got = matrix(fam, proto, port)
		return lab.Diff(want, got)
	}, "20s", "200ms").Should(BeEmpty(), "%s %s/%d", title, proto, port)
	fmt.Fprintf(GinkgoWriter, "%s (%v %s/%d):\n%s\n", title, fam, proto, port, got)
}

func nftTable() string {
	out, _ := node.NS.Exec(context.Background(), "nft", "list", "table", "inet", "nftpolicy")
	return string(out)
}

var backendPolicy = &networkingv1.NetworkPolicy{
	ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "backend-policy"},
	Spec: networkingv1.NetworkPolicySpec{
		PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "backend"}},
		Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
			{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "frontend"}}},
		}}},
	},
}

var _ = Describe("the agent in a node namespace", Ordered, func() {
	ctx := context.Background()

	It("allows everything before any policy", func() {
		for _, fam := range []lab.Family{lab.IPv4, lab.IPv6} {
			expectMatrix("no policy", allAllowed(), fam, "tcp", 80)
		}
		expectMatrix("no policy", allAllowed(), lab.IPv4, "udp", 81)
	})

	It("enforces backend-policy: backend only from frontend (same namespace)", func() {
		Expect(k8s.Create(ctx, backendPolicy.DeepCopy())).To(Succeed())
		want := allAllowed().DenyTo("backend").Allow("frontend", "backend").AllowSelf()
		for _, fam := range []lab.Family{lab.IPv4, lab.IPv6} {
			expectMatrix("backend-policy", want, fam, "tcp", 80)
			expectMatrix("backend-policy", want, fam, "udp", 81)
		}
		Expect(nftTable()).To(ContainSubstring("app/backend-policy"))
	})

	It("follows a policy update (only TCP port 80 by name)", func() {
		var np networkingv1.NetworkPolicy
		Expect(k8s.Get(ctx, client.ObjectKey{Namespace: "app", Name: "backend-policy"}, &np)).To(Succeed())
		port := intstr.FromString("serve-80-tcp")
		np.Spec.Ingress[0].Ports = []networkingv1.NetworkPolicyPort{{Port: &port}}
		Expect(k8s.Update(ctx, &np)).To(Succeed())
		deniedToBackend := allAllowed().DenyTo("backend").AllowSelf()
		expectMatrix("named port 80", deniedToBackend.Clone().Allow("frontend", "backend"), lab.IPv4, "tcp", 80)
		expectMatrix("named port 80", deniedToBackend, lab.IPv4, "tcp", 81)
		expectMatrix("named port 80", deniedToBackend, lab.IPv6, "udp", 80)
	})

	It("keeps enforcing while the agent is stopped and after it restarts", func() {
		want80 := allAllowed().DenyTo("backend").Allow("frontend", "backend").AllowSelf()
		// Probe an allowed and a denied flow continuously across stop and start: no
		// probe may see the node without rules or with a half-built table.
		stop := make(chan struct{})
		done := make(chan [2]int)
		go func() {
			defer GinkgoRecover()
			wrongAllowed, wrongDenied := 0, 0
			backend := pods[1].AddrPort(lab.IPv4, 80)
			for {
				select {
				case <-stop:
					done <- [2]int{wrongAllowed, wrongDenied}
					return
				default:
				}
				if ok, _ := lab.Probe(ctx, pods[3].NS, backend, "tcp", 300*time.Millisecond); ok {
					wrongAllowed++
				}
				if ok, _ := lab.Probe(ctx, pods[0].NS, backend, "tcp", 300*time.Millisecond); !ok {
					wrongDenied++
				}
			}
		}()
		Expect(agent.Stop(syscall.SIGTERM)).To(Succeed())
		Expect(nftTable()).To(ContainSubstring("app/backend-policy"), "SIGTERM must leave the rules in the kernel")
		expectMatrix("agent stopped", want80, lab.IPv4, "tcp", 80)
		startAgent()
		expectMatrix("agent restarted", want80, lab.IPv4, "tcp", 80)
		close(stop)
		wrong := <-done
		Expect(wrong).To(Equal([2]int{0, 0}), "probes wrongly allowed / wrongly denied during the restart")
	})

	It("egress default deny with an exception to the database", func() {
		np := &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "other", Name: "client-egress"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{},
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
				Egress: []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{
					NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "app"}},
					PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
				}}}},
			},
		}
		Expect(k8s.Create(ctx, np)).To(Succeed())
		want := allAllowed().DenyTo("backend").Allow("frontend", "backend").DenyFrom("client").Allow("client", "db").AllowSelf()
		expectMatrix("client egress", want, lab.IPv4, "tcp", 80)
		expectMatrix("client egress", want, lab.IPv6, "tcp", 80)
		Expect(k8s.Delete(ctx, np)).To(Succeed())
	})

	It("stops established TCP and UDP flows a policy change denies, and only those", func() {
		db, frontend, client := pods[2], pods[0], pods[3]
		echoServers(db, 9000)
		echoServers(frontend, 9000)
		toDB := dialEcho(client, "tcp", db.AddrPort(lab.IPv4, 9000))
		toDBUDP := dialEcho(client, "udp", db.AddrPort(lab.IPv4, 9000))
		toFrontend := dialEcho(client, "tcp", frontend.AddrPort(lab.IPv4, 9000))
		for _, c := range []net.Conn{toDB, toDBUDP, toFrontend} {
			Expect(echo(c)).To(Succeed(), "before the policy")
		}
		np := &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "db-deny"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			},
		}
		Expect(k8s.Create(ctx, np)).To(Succeed())
		Eventually(func() error { return echo(toDB) }, "10s", "50ms").ShouldNot(Succeed(), "established TCP flow to db must stop")
		Eventually(func() error { return echo(toDBUDP) }, "10s", "50ms").ShouldNot(Succeed(), "UDP flow to db must stop")
		Consistently(func() error { return echo(toFrontend) }, "1s", "100ms").Should(Succeed(), "an allowed flow must not be cut")
		// Lifting the policy lifts the revocation: the same connections carry on.
		Expect(k8s.Delete(ctx, np)).To(Succeed())
		Eventually(func() error { return echo(toDBUDP) }, "10s", "50ms").Should(Succeed(), "UDP flow to db must resume")
		Eventually(func() error { return echo(toDB) }, "20s", "100ms").Should(Succeed(), "TCP flow to db must resume")
		for _, c := range []net.Conn{toDB, toDBUDP, toFrontend} {
			c.Close()
		}
	})

	It("removes enforcement when the policy is deleted", func() {
		Expect(k8s.Delete(ctx, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "backend-policy"}})).To(Succeed())
		expectMatrix("policy deleted", allAllowed(), lab.IPv4, "tcp", 80)
		expectMatrix("policy deleted", allAllowed(), lab.IPv6, "udp", 81)
	})

	It("`cleanup` removes the table", func() {
		Expect(agent.Stop(syscall.SIGTERM)).To(Succeed())
		out, err := node.NS.Exec(ctx, agentBin, "cleanup")
		Expect(err).NotTo(HaveOccurred(), string(out))
		tables, err := node.NS.Exec(ctx, "nft", "list", "tables")
		Expect(err).NotTo(HaveOccurred())
		Expect(strings.Contains(string(tables), "nftpolicy")).To(BeFalse(), string(tables))
	})
})

// echoServers serves a long-lived echo on TCP and UDP port in the pod (the lab's own
// servers answer once and close, which cannot show an established flow being cut).
func echoServers(p *lab.Pod, port int) {
	s, err := echotest.Serve(p.NS, port, echotest.Options{UDP: true})
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(s.Close)
}

// dialEcho opens a connection from the pod that later echoes reuse (same 5-tuple).
func dialEcho(p *lab.Pod, network string, to netip.AddrPort) net.Conn {
	c, err := p.NS.DialContext(context.Background(), network, to.String())
	Expect(err).NotTo(HaveOccurred())
	return c
}

// echo sends a line on an existing connection and waits briefly for it to come back.
func echo(c net.Conn) error {
	if err := c.SetDeadline(time.Now().Add(300 * time.Millisecond)); err != nil {
		return err
	}
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return err
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "ping\n" {
		return fmt.Errorf("echo returned %q", buf)
	}
	return nil
}
