package privilege

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	certutil "k8s.io/client-go/util/cert"

	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/internal/testns"
	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	helmchart "github.com/nftpolicy/nftpolicy/test/chart"
	"github.com/nftpolicy/nftpolicy/test/lab"
)

const (
	// testNS holds the probed pods and the deny-all policy.
	testNS = "privilege"
	// rbacNS holds the objects the ServiceAccount tries (and must fail) to change.
	rbacNS = "privilege-rbac"
	// echoPort serves the long-lived flow of the revocation check.
	echoPort = 9000
	// agentMetricsAddr is the agent's metrics endpoint inside node1's namespace.
	agentMetricsAddr = "127.0.0.1:19090"
	// metricsScraper is bound to the chart's metrics-reader ClusterRole;
	// metricsNobody has no role at all.
	metricsScraper, metricsNobody = "metrics-scraper", "metrics-nobody"
	// agentTable is the agent's default nftables table.
	agentTable = "nftpolicy"
	// enforceTimeout bounds every wait for the agent to act; the machine is shared
	// with other test runs, so it is generous.
	enforceTimeout = 60 * time.Second
	// readyTimeout bounds the wait for an agent's /readyz.
	readyTimeout = 2 * time.Minute
)

// agentBinary is $NFTPOLICY_AGENT or bin/nftpolicy-agent; the test skips without it.
func agentBinary(t testing.TB) string {
	t.Helper()
	bin := os.Getenv("NFTPOLICY_AGENT")
	if bin == "" {
		bin = filepath.Join(helmchart.RepoRoot(t), "bin", "nftpolicy-agent")
	}
	abs, err := filepath.Abs(bin)
	if err == nil {
		_, err = os.Stat(abs)
	}
	if err != nil {
		testns.SkipUnlessRequired(t, "no agent binary (%v): build one and set NFTPOLICY_AGENT, or `make build`", err)
	}
	return abs
}

// skipUnlessLab skips unless the lab can run here: root, nft, setpriv, the control
// plane, helm and the agent.
func skipUnlessLab(t testing.TB) (agent string) {
	t.Helper()
	lab.SkipUnlessCluster(t, "setpriv")
	helmBinary(t)
	return agentBinary(t)
}

// env is what the subtests share: a lab cluster with no agent of its own, the chart's
// RBAC applied, a token of the chart's ServiceAccount and the pods to probe.
type env struct {
	c        *lab.Cluster
	agentBin string
	chart    *chart
	admin    kubernetes.Interface
	sa       kubernetes.Interface // the chart's ServiceAccount, by its token
	saDyn    dynamic.Interface    // the same, for ClusterNetworkPolicies
	saConfig *rest.Config
	saUser   string
	// Bearer tokens for the agent's /metrics: of a ServiceAccount bound to the
	// chart's metrics-reader role, and of one with no role.
	scraperToken, nobodyToken string
	kubeconfig                string // the ServiceAccount's kubeconfig, for the agent
	node1                     *lab.ClusterNode

	server, client *lab.ClusterPod // server on node1 (enforced), client on node2
	echo           net.Listener    // in the server's namespace
	agentSeq       int
}

// TestLeastPrivilege runs the lab agent as the chart's ServiceAccount with the chart's
// capabilities and checks it enforces, and that the identity gets nothing more.
func TestLeastPrivilege(t *testing.T) {
	agentBin := skipUnlessLab(t)
	ch := renderChart(t)
	if err := lab.CleanupStale(""); err != nil {
		t.Logf("cleaning up stale labs: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	// No AgentBinary: the lab's own agents run as system:masters; this test starts
	// its own, as the chart's ServiceAccount.
	c, err := lab.StartCluster(ctx, lab.ClusterOptions{Nodes: 2, Topology: lab.Routed, Progress: lab.TestLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close the lab: %v", err)
		}
	})
	e := &env{c: c, agentBin: agentBin, chart: ch, node1: c.Node("node1")}
	e.setup(ctx, t)
	t.Logf("set up in %v", time.Since(start).Round(time.Millisecond))

	t.Run("the ServiceAccount is refused anything else", func(t *testing.T) { e.checkRefused(ctx, t) })
	t.Run("the ServiceAccount may do what the agent needs", func(t *testing.T) { e.checkAllowed(ctx, t) })
	t.Run("the agent enforces as the ServiceAccount", func(t *testing.T) { e.checkAgentAsServiceAccount(ctx, t) })
	t.Run("the agent enforces and revokes with only the chart's capabilities", func(t *testing.T) { e.checkChartCapabilities(ctx, t) })
	t.Run("the agent fails clearly without capabilities", func(t *testing.T) { e.checkNoCapabilities(ctx, t) })
	t.Run("the agent's metrics need a token bound to metrics-reader", func(t *testing.T) { e.checkMetricsAccess(ctx, t) })
	t.Run("the agent serves the metrics certificate it is given", func(t *testing.T) { e.checkMetricsCertificate(ctx, t) })
}

// setup applies the chart's RBAC objects, gets a token for its ServiceAccount, writes
// the agent's kubeconfig and creates the pods.
func (e *env) setup(ctx context.Context, t *testing.T) {
	t.Helper()
	adminCfg := e.c.RESTConfig()
	var err error
	if e.admin, err = kubernetes.NewForConfig(adminCfg); err != nil {
		t.Fatal(err)
	}
	// The API server creates kube-system itself; create it if this one has not yet.
	if _, err := e.admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: releaseNamespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create namespace %s: %v", releaseNamespace, err)
	}
	for _, u := range e.chart.rbacObjects() {
		if err := e.c.Client().Create(ctx, u); err != nil {
			t.Fatalf("apply the chart's %s %s: %v", u.GetKind(), u.GetName(), err)
		}
		t.Logf("applied the chart's %s %s", u.GetKind(), strings.TrimPrefix(u.GetNamespace()+"/"+u.GetName(), "/"))
	}

	sa := e.chart.serviceAccount
	// Only the server and its CA are taken from the admin's configuration: no client
	// certificate, so the token is the only credential.
	e.saConfig = &rest.Config{
		Host:            adminCfg.Host,
		BearerToken:     e.token(ctx, t, sa.Namespace, sa.Name),
		TLSClientConfig: rest.TLSClientConfig{CAData: adminCfg.CAData, CAFile: adminCfg.CAFile},
		QPS:             -1,
	}
	if e.sa, err = kubernetes.NewForConfig(e.saConfig); err != nil {
		t.Fatal(err)
	}
	if e.saDyn, err = dynamic.NewForConfig(e.saConfig); err != nil {
		t.Fatal(err)
	}
	// The token must authenticate as the ServiceAccount and nothing else (no
	// system:masters, which would make every check below meaningless).
	ssr, err := e.sa.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SelfSubjectReview with the token: %v", err)
	}
	e.saUser = "system:serviceaccount:" + sa.Namespace + ":" + sa.Name
	if got := ssr.Status.UserInfo.Username; got != e.saUser {
		t.Fatalf("the token authenticates as %q, want %q", got, e.saUser)
	}
	for _, g := range ssr.Status.UserInfo.Groups {
		if g == "system:masters" {
			t.Fatalf("the token is in system:masters: %v", ssr.Status.UserInfo.Groups)
		}
	}
	t.Logf("token authenticates as %s, groups %v", e.saUser, ssr.Status.UserInfo.Groups)
	e.kubeconfig = writeKubeconfig(t, e.saConfig)
	e.installCNPCRD(ctx, t)

	for _, ns := range []string{testNS, rbacNS} {
		if err := e.c.CreateNamespace(ctx, ns, nil); err != nil {
			t.Fatal(err)
		}
	}
	e.setupScrapers(ctx, t)
	if e.server, err = e.c.CreatePod(ctx, lab.PodSpec{Namespace: testNS, Name: "server", Node: "node1",
		Labels: map[string]string{"app": "server"}, Ports: lab.TCPUDPPorts(80)}); err != nil {
		t.Fatal(err)
	}
	if e.client, err = e.c.CreatePod(ctx, lab.PodSpec{Namespace: testNS, Name: "client", Node: "node2",
		Labels: map[string]string{"app": "client"}}); err != nil {
		t.Fatal(err)
	}
	e.startEcho(t)
}

func ptr[T any](v T) *T { return &v }

// token returns a bearer token of the ServiceAccount ns/name, valid for an hour.
func (e *env) token(ctx context.Context, t *testing.T, ns, name string) string {
	t.Helper()
	tr, err := e.admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(3600))},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest for %s/%s: %v", ns, name, err)
	}
	return tr.Status.Token
}

// setupScrapers creates two ServiceAccounts in rbacNS, binds one to the chart's
// metrics-reader ClusterRole and takes a token of each; it returns once the API server
// authorizes the bound one for GET /metrics, so that no scrape can be refused (and
// the refusal cached by the agent) before RBAC caught up.
func (e *env) setupScrapers(ctx context.Context, t *testing.T) {
	t.Helper()
	for _, name := range []string{metricsScraper, metricsNobody} {
		if _, err := e.admin.CoreV1().ServiceAccounts(rbacNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create ServiceAccount %s/%s: %v", rbacNS, name, err)
		}
	}
	reader := e.chart.metricsReader.Name
	if _, err := e.admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "privilege-" + metricsScraper},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: reader},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: metricsScraper, Namespace: rbacNS}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("bind %s to ClusterRole %s: %v", metricsScraper, reader, err)
	}
	e.scraperToken = e.token(ctx, t, rbacNS, metricsScraper)
	e.nobodyToken = e.token(ctx, t, rbacNS, metricsNobody)
	user := "system:serviceaccount:" + rbacNS + ":" + metricsScraper
	if err := poll(ctx, enforceTimeout, 100*time.Millisecond, func() error {
		sar, err := e.admin.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: user, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + rbacNS, "system:authenticated"},
			NonResourceAttributes: &authorizationv1.NonResourceAttributes{Path: "/metrics", Verb: "get"},
		}}, metav1.CreateOptions{})
		if err != nil {
			return errStop{err}
		}
		if !sar.Status.Allowed {
			return fmt.Errorf("%s may not GET /metrics yet", user)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s is bound to ClusterRole %s; %s/%s has no role", user, reader, rbacNS, metricsNobody)
}

// cnpGVR is where ClusterNetworkPolicies are served.
var cnpGVR = schema.GroupVersionResource{Group: "policy.networking.k8s.io", Version: "v1beta1", Resource: "clusternetworkpolicies"}

// cnpTarget is the ClusterNetworkPolicy the ServiceAccount reads and must not change:
// its subject is namespaces no namespace matches and it has no rule, so it changes no
// verdict of an agent that enforces it.
const cnpTarget = "privilege-target"

// installCNPCRD creates the chart's ClusterNetworkPolicy CRD, as rendered, waits until
// it is served and creates cnpTarget.
func (e *env) installCNPCRD(ctx context.Context, t *testing.T) {
	t.Helper()
	if err := e.c.Client().Create(ctx, e.chart.cnpCRD.DeepCopy()); err != nil {
		t.Fatalf("create the chart's CRD %s: %v", e.chart.cnpCRD.GetName(), err)
	}
	admin, err := dynamic.NewForConfig(e.c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	cnp := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "policy.networking.k8s.io/v1beta1", "kind": "ClusterNetworkPolicy",
		"metadata": map[string]any{"name": cnpTarget},
		"spec": map[string]any{"tier": "Baseline", "priority": int64(1000), "subject": map[string]any{
			"namespaces": map[string]any{"matchLabels": map[string]any{"nftpolicy.io/privilege-test": "no-such-namespace"}},
		}},
	}}
	// Until the CRD is established and its API discovered, creating fails with NotFound.
	if err := poll(ctx, enforceTimeout, 200*time.Millisecond, func() error {
		_, err := admin.Resource(cnpGVR).Create(ctx, cnp, metav1.CreateOptions{})
		return err
	}); err != nil {
		t.Fatalf("create ClusterNetworkPolicy %s: %v", cnpTarget, err)
	}
	t.Logf("installed the chart's CRD %s (%s channel) and ClusterNetworkPolicy %s",
		e.chart.cnpCRD.GetName(), e.chart.cnpCRD.GetAnnotations()["policy.networking.k8s.io/channel"], cnpTarget)
}

// writeKubeconfig writes a kubeconfig holding only cfg's server, CA and bearer token.
func writeKubeconfig(t *testing.T, cfg *rest.Config) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["lab"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData, CertificateAuthority: cfg.CAFile}
	kc.AuthInfos["nftpolicy-agent"] = &clientcmdapi.AuthInfo{Token: cfg.BearerToken}
	kc.Contexts["nftpolicy-agent"] = &clientcmdapi.Context{Cluster: "lab", AuthInfo: "nftpolicy-agent"}
	kc.CurrentContext = "nftpolicy-agent"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatalf("write the ServiceAccount's kubeconfig: %v", err)
	}
	return path
}

// startEcho serves a line echo in the server pod, for a connection that stays open
// across a policy change.
func (e *env) startEcho(t *testing.T) {
	t.Helper()
	ln, err := e.server.NS.Listen("tcp", netip.AddrPortFrom(e.server.IPv4, echoPort).String())
	if err != nil {
		t.Fatalf("echo server: %v", err)
	}
	e.echo = ln
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	var conns sync.Map
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				// Closed by the cleanup: close the open connections too.
				conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
				return
			}
			conns.Store(c, true)
			wg.Go(func() {
				defer conns.Delete(c)
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(line)); err != nil {
						return
					}
				}
			})
		}
	})
}

// ---- the API server's side ----

// checkRefused tries, with the ServiceAccount's token, what the agent never needs.
// Each must be Forbidden: not NotFound or Invalid, which would mean RBAC let the
// request through to the storage layer.
func (e *env) checkRefused(ctx context.Context, t *testing.T) {
	// Targets that exist, so that a wrong grant would show as success.
	pod, err := e.admin.CoreV1().Pods(testNS).Get(ctx, "server", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	np, err := e.admin.NetworkingV1().NetworkPolicies(rbacNS).Create(ctx, denyAll(rbacNS, "target"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm, err := e.admin.CoreV1().ConfigMaps(rbacNS).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "target"}, Data: map[string]string{"k": "v"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.CoreV1().Secrets(rbacNS).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "target"}, StringData: map[string]string{"k": "v"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ev, err := e.admin.CoreV1().Events(rbacNS).Create(ctx, coreEvent(rbacNS, "target"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	adminDyn, err := dynamic.NewForConfig(e.c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	cnp, err := adminDyn.Resource(cnpGVR).Get(ctx, cnpTarget, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	impersonating := rest.CopyConfig(e.saConfig)
	impersonating.Impersonate = rest.ImpersonationConfig{UserName: "admin", Groups: []string{"system:masters"}}
	imp, err := kubernetes.NewForConfig(impersonating)
	if err != nil {
		t.Fatal(err)
	}

	sa := e.sa
	newPod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "intruder"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: lab.PodImage}}}}
	relabeled := pod.DeepCopy()
	relabeled.Labels["app"] = "relabeled"
	changedNP := np.DeepCopy()
	changedNP.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	escalate := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "nftpolicy-agent-escalate"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "cluster-admin"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: e.chart.serviceAccount.Name, Namespace: e.chart.serviceAccount.Namespace}},
	}
	mergePatch := []byte(`{"metadata":{"labels":{"app":"patched"}}}`)
	for _, tc := range []struct {
		what string
		do   func() error
	}{
		{"list secrets (all namespaces)", func() error { _, err := sa.CoreV1().Secrets("").List(ctx, metav1.ListOptions{}); return err }},
		{"get a secret", func() error {
			_, err := sa.CoreV1().Secrets(rbacNS).Get(ctx, "target", metav1.GetOptions{})
			return err
		}},
		{"get a configmap", func() error {
			_, err := sa.CoreV1().ConfigMaps(rbacNS).Get(ctx, cm.Name, metav1.GetOptions{})
			return err
		}},
		{"list configmaps", func() error { _, err := sa.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{}); return err }},
		{"create a pod", func() error {
			_, err := sa.CoreV1().Pods(testNS).Create(ctx, newPod, metav1.CreateOptions{})
			return err
		}},
		{"update a pod", func() error {
			_, err := sa.CoreV1().Pods(testNS).Update(ctx, relabeled, metav1.UpdateOptions{})
			return err
		}},
		{"patch a pod", func() error {
			_, err := sa.CoreV1().Pods(testNS).Patch(ctx, pod.Name, types.MergePatchType, mergePatch, metav1.PatchOptions{})
			return err
		}},
		{"update a pod's status", func() error {
			_, err := sa.CoreV1().Pods(testNS).UpdateStatus(ctx, relabeled, metav1.UpdateOptions{})
			return err
		}},
		{"delete a pod", func() error { return sa.CoreV1().Pods(testNS).Delete(ctx, pod.Name, metav1.DeleteOptions{}) }},
		{"exec into a pod (create pods/exec)", func() error {
			return sa.CoreV1().RESTClient().Post().Namespace(testNS).Resource("pods").Name(pod.Name).SubResource("exec").
				Param("command", "true").Param("stdout", "true").Do(ctx).Error()
		}},
		{"create a networkpolicy", func() error {
			_, err := sa.NetworkingV1().NetworkPolicies(rbacNS).Create(ctx, denyAll(rbacNS, "intruder"), metav1.CreateOptions{})
			return err
		}},
		{"update a networkpolicy", func() error {
			_, err := sa.NetworkingV1().NetworkPolicies(rbacNS).Update(ctx, changedNP, metav1.UpdateOptions{})
			return err
		}},
		{"patch a networkpolicy", func() error {
			_, err := sa.NetworkingV1().NetworkPolicies(rbacNS).Patch(ctx, np.Name, types.MergePatchType, mergePatch, metav1.PatchOptions{})
			return err
		}},
		{"delete a networkpolicy", func() error {
			return sa.NetworkingV1().NetworkPolicies(rbacNS).Delete(ctx, np.Name, metav1.DeleteOptions{})
		}},
		{"update a namespace", func() error {
			_, err := sa.CoreV1().Namespaces().Patch(ctx, rbacNS, types.MergePatchType, mergePatch, metav1.PatchOptions{})
			return err
		}},
		{"delete a namespace", func() error { return sa.CoreV1().Namespaces().Delete(ctx, rbacNS, metav1.DeleteOptions{}) }},
		{"patch a node", func() error {
			_, err := sa.CoreV1().Nodes().Patch(ctx, "node1", types.MergePatchType, mergePatch, metav1.PatchOptions{})
			return err
		}},
		{"list services", func() error { _, err := sa.CoreV1().Services("").List(ctx, metav1.ListOptions{}); return err }},
		{"list events", func() error { _, err := sa.CoreV1().Events("").List(ctx, metav1.ListOptions{}); return err }},
		{"delete an event", func() error { return sa.CoreV1().Events(rbacNS).Delete(ctx, ev.Name, metav1.DeleteOptions{}) }},
		{"create a ClusterRoleBinding to cluster-admin", func() error {
			_, err := sa.RbacV1().ClusterRoleBindings().Create(ctx, escalate, metav1.CreateOptions{})
			return err
		}},
		{"update its own ClusterRole", func() error {
			_, err := sa.RbacV1().ClusterRoles().Patch(ctx, e.chart.clusterRole.Name, types.MergePatchType, []byte(`{"rules":[]}`), metav1.PatchOptions{})
			return err
		}},
		{"mint a token for its ServiceAccount", func() error {
			_, err := sa.CoreV1().ServiceAccounts(e.chart.serviceAccount.Namespace).CreateToken(ctx, e.chart.serviceAccount.Name, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
			return err
		}},
		{"impersonate a user in system:masters", func() error { _, err := imp.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); return err }},
		{"create a clusternetworkpolicy", func() error {
			u := cnp.DeepCopy()
			u.SetName("intruder")
			u.SetResourceVersion("")
			_, err := e.saDyn.Resource(cnpGVR).Create(ctx, u, metav1.CreateOptions{})
			return err
		}},
		{"update a clusternetworkpolicy", func() error {
			u := cnp.DeepCopy()
			_ = unstructured.SetNestedField(u.Object, int64(999), "spec", "priority")
			_, err := e.saDyn.Resource(cnpGVR).Update(ctx, u, metav1.UpdateOptions{})
			return err
		}},
		{"patch a clusternetworkpolicy", func() error {
			_, err := e.saDyn.Resource(cnpGVR).Patch(ctx, cnpTarget, types.MergePatchType, mergePatch, metav1.PatchOptions{})
			return err
		}},
		{"update a clusternetworkpolicy's status", func() error {
			u := cnp.DeepCopy()
			_ = unstructured.SetNestedSlice(u.Object, []any{map[string]any{
				"type": "Accepted", "status": "True", "reason": "Intruder", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z",
			}}, "status", "conditions")
			_, err := e.saDyn.Resource(cnpGVR).UpdateStatus(ctx, u, metav1.UpdateOptions{})
			return err
		}},
		{"patch a clusternetworkpolicy's status", func() error {
			_, err := e.saDyn.Resource(cnpGVR).Patch(ctx, cnpTarget, types.MergePatchType, []byte(`{"status":{"conditions":[]}}`), metav1.PatchOptions{}, "status")
			return err
		}},
		{"delete a clusternetworkpolicy", func() error {
			return e.saDyn.Resource(cnpGVR).Delete(ctx, cnpTarget, metav1.DeleteOptions{})
		}},
		{"delete the ClusterNetworkPolicy CRD", func() error {
			return e.saDyn.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}).
				Delete(ctx, e.chart.cnpCRD.GetName(), metav1.DeleteOptions{})
		}},
	} {
		err := tc.do()
		if !apierrors.IsForbidden(err) {
			t.Errorf("%s: got %v, want Forbidden", tc.what, err)
			continue
		}
		t.Logf("refused: %s (%v)", tc.what, truncate(err.Error(), 140))
	}
	// Nothing was changed behind a misleading error.
	if got, err := e.admin.CoreV1().Pods(testNS).Get(ctx, pod.Name, metav1.GetOptions{}); err != nil || got.Labels["app"] != "server" {
		t.Errorf("server pod after the refused writes: labels %v, err %v", got.Labels, err)
	}
	if _, err := e.admin.NetworkingV1().NetworkPolicies(rbacNS).Get(ctx, np.Name, metav1.GetOptions{}); err != nil {
		t.Errorf("policy after the refused delete: %v", err)
	}
	if got, err := adminDyn.Resource(cnpGVR).Get(ctx, cnpTarget, metav1.GetOptions{}); err != nil || got.GetResourceVersion() != cnp.GetResourceVersion() {
		t.Errorf("ClusterNetworkPolicy %s after the refused writes: err %v, changed: %v", cnpTarget, err, err == nil)
	}
}

// checkAllowed does, with the ServiceAccount's token, what the agent does: list and
// watch the kinds it caches (ClusterNetworkPolicies included), create and patch Events
// (core and events.k8s.io, which client-go's recorders use), and review a scraper's
// token and access.
func (e *env) checkAllowed(ctx context.Context, t *testing.T) {
	sa := e.sa
	watch := func(w interface{ Stop() }, err error) error {
		if err == nil {
			w.Stop()
		}
		return err
	}
	for _, tc := range []struct {
		what string
		do   func() error
	}{
		{"list pods (all namespaces)", func() error {
			l, err := sa.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
			if err == nil && len(l.Items) < 2 {
				err = fmt.Errorf("listed %d pods, want the lab's 2", len(l.Items))
			}
			return err
		}},
		{"watch pods", func() error { return watch(sa.CoreV1().Pods("").Watch(ctx, metav1.ListOptions{})) }},
		{"get a pod", func() error { _, err := sa.CoreV1().Pods(testNS).Get(ctx, "server", metav1.GetOptions{}); return err }},
		{"list namespaces", func() error { _, err := sa.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); return err }},
		{"watch namespaces", func() error { return watch(sa.CoreV1().Namespaces().Watch(ctx, metav1.ListOptions{})) }},
		{"list networkpolicies (all namespaces)", func() error {
			_, err := sa.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{})
			return err
		}},
		{"watch networkpolicies", func() error { return watch(sa.NetworkingV1().NetworkPolicies("").Watch(ctx, metav1.ListOptions{})) }},
		// Node readiness decides which agent reports policies no node compiles.
		{"get a node", func() error { _, err := sa.CoreV1().Nodes().Get(ctx, "node1", metav1.GetOptions{}); return err }},
		{"list nodes", func() error { _, err := sa.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); return err }},
		{"watch nodes", func() error { return watch(sa.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{})) }},
		// ClusterNetworkPolicies, through the chart's CRD.
		{"list clusternetworkpolicies", func() error {
			l, err := e.saDyn.Resource(cnpGVR).List(ctx, metav1.ListOptions{})
			if err == nil && len(l.Items) != 1 {
				err = fmt.Errorf("listed %d clusternetworkpolicies, want %s", len(l.Items), cnpTarget)
			}
			return err
		}},
		{"watch clusternetworkpolicies", func() error { return watch(e.saDyn.Resource(cnpGVR).Watch(ctx, metav1.ListOptions{})) }},
		{"get a clusternetworkpolicy", func() error {
			_, err := e.saDyn.Resource(cnpGVR).Get(ctx, cnpTarget, metav1.GetOptions{})
			return err
		}},
		{"create and patch an Event", func() error {
			ev, err := sa.CoreV1().Events(testNS).Create(ctx, coreEvent(testNS, "server"), metav1.CreateOptions{})
			if err != nil {
				return err
			}
			_, err = sa.CoreV1().Events(testNS).Patch(ctx, ev.Name, types.MergePatchType, []byte(`{"count":2}`), metav1.PatchOptions{})
			return err
		}},
		{"create a TokenReview (the metrics endpoint authenticates a scraper)", func() error {
			_, err := sa.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: e.nobodyToken}}, metav1.CreateOptions{})
			return err
		}},
		{"create a SubjectAccessReview (the metrics endpoint authorizes a scraper)", func() error {
			_, err := sa.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
				User: "system:serviceaccount:" + rbacNS + ":" + metricsNobody, NonResourceAttributes: &authorizationv1.NonResourceAttributes{Path: "/metrics", Verb: "get"},
			}}, metav1.CreateOptions{})
			return err
		}},
		{"create and patch an events.k8s.io Event", func() error {
			ev, err := sa.EventsV1().Events(testNS).Create(ctx, &eventsv1.Event{
				ObjectMeta:          metav1.ObjectMeta{GenerateName: "server-"},
				EventTime:           metav1.NowMicro(),
				ReportingController: "nftpolicy.io/agent", ReportingInstance: "node1",
				Action: "Check", Reason: "PrivilegeTest", Type: corev1.EventTypeNormal, Note: "least-privilege test",
				Regarding: corev1.ObjectReference{Kind: "Pod", Namespace: testNS, Name: "server", APIVersion: "v1"},
			}, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			// Most of an events.k8s.io Event is immutable; the series is what a
			// recorder patches, metadata is enough to exercise the verb.
			_, err = sa.EventsV1().Events(testNS).Patch(ctx, ev.Name, types.MergePatchType, []byte(`{"metadata":{"labels":{"patched":"true"}}}`), metav1.PatchOptions{})
			return err
		}},
	} {
		if err := tc.do(); err != nil {
			t.Errorf("%s: %v", tc.what, err)
			continue
		}
		t.Logf("allowed: %s", tc.what)
	}
}

func coreEvent(ns, pod string) *corev1.Event {
	now := metav1.Now()
	return &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: pod + "-"},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pod, APIVersion: "v1"},
		Reason:         "PrivilegeTest", Message: "least-privilege test", Type: corev1.EventTypeNormal,
		Source:         corev1.EventSource{Component: "nftpolicy-agent"},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// ---- the agent ----

// agentRun is one agent process in node1's namespace.
type agentRun struct {
	e       *env
	proc    *lab.Process
	logFile string
	http    *http.Client
}

// startAgent starts the agent in node1's namespace as the chart's ServiceAccount,
// behind wrapper (e.g. setpriv ...), with the metrics endpoint on (secure, the
// binary's default as the chart's) and extra arguments. It does not wait.
func (e *env) startAgent(t *testing.T, wrapper []string, extra ...string) *agentRun {
	t.Helper()
	e.agentSeq++
	name := fmt.Sprintf("privilege-agent-%d", e.agentSeq)
	// The agent's metrics certificate is self-signed by default: accept any.
	a := &agentRun{e: e, logFile: filepath.Join(e.c.LogDir(), name+".log"), http: nsHTTPClient(e.node1.NS, &tls.Config{InsecureSkipVerify: true})}
	args := append(append([]string{}, wrapper...), e.agentBin,
		"--kubeconfig", e.kubeconfig, "--node-name", e.node1.Name,
		"--health-probe-bind-address", lab.AgentHealthAddr,
		"--metrics-bind-address", agentMetricsAddr)
	args = append(args, extra...)
	p, err := e.c.Lab().StartProcess(e.node1.NS, name, a.logFile, args...)
	if err != nil {
		t.Fatalf("start the agent: %v", err)
	}
	a.proc = p
	t.Logf("started %s", strings.Join(args, " "))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log (%s):\n%s", a.logFile, a.log())
		}
		a.stop(t)
	})
	return a
}

// stop stops the agent (SIGTERM) and removes its table with `nftpolicy-agent
// cleanup` (full capabilities), so that the next agent starts from nothing.
func (a *agentRun) stop(t *testing.T) {
	t.Helper()
	if err := a.proc.Stop(syscall.SIGTERM); err != nil {
		t.Errorf("stop the agent: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := a.e.node1.NS.Exec(ctx, a.e.agentBin, "cleanup"); err != nil {
		t.Errorf("agent cleanup: %v\n%s", err, out)
	}
}

func (a *agentRun) log() string {
	b, _ := os.ReadFile(a.logFile)
	return string(b)
}

// nsHTTPClient reaches addresses inside ns, with tlsConfig for HTTPS. It offers
// HTTP/2, which the agent must decline.
func nsHTTPClient(ns *lab.Netns, tlsConfig *tls.Config) *http.Client {
	hc := ns.HTTPClient(5 * time.Second)
	tr := hc.Transport.(*http.Transport)
	tr.TLSClientConfig = tlsConfig
	tr.ForceAttemptHTTP2 = true
	return hc
}

// ready reports whether /readyz answers 200.
func (a *agentRun) ready(ctx context.Context) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+lab.AgentHealthAddr+"/readyz", nil)
	if err != nil {
		return false
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// waitReady waits until /readyz answers 200 (the first ruleset is in the kernel).
func (a *agentRun) waitReady(ctx context.Context, t *testing.T) {
	t.Helper()
	start := time.Now()
	err := poll(ctx, readyTimeout, 100*time.Millisecond, func() error {
		if a.proc.Exited() {
			return errStop{fmt.Errorf("the agent exited: %w", a.proc.ExitErr())}
		}
		if !a.ready(ctx) {
			return errors.New("/readyz is not 200")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("agent not ready: %v; log:\n%s", err, a.log())
	}
	t.Logf("agent ready in %v", time.Since(start).Round(time.Millisecond))
}

// scrape GETs the agent's /metrics over scheme (http or https), with token as the
// bearer token unless it is empty.
func (a *agentRun) scrape(ctx context.Context, scheme, token string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+agentMetricsAddr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", req.URL, err)
	}
	return resp, nil
}

// metric scrapes one unlabelled counter or gauge from the agent's /metrics, as the
// metrics-reader scraper.
func (a *agentRun) metric(ctx context.Context, name string) (float64, error) {
	resp, err := a.scrape(ctx, "https", a.e.scraperToken)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("scrape: %s", resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == name {
			return strconv.ParseFloat(f[1], 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("scrape: %w", err)
	}
	return 0, fmt.Errorf("no metric %s", name)
}

// errStop ends a poll at once.
type errStop struct{ error }

// poll calls f every interval until it returns nil, returns errStop, or timeout
// passes; it returns f's last error.
func poll(ctx context.Context, timeout, interval time.Duration, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		err := f()
		if err == nil {
			return nil
		}
		var stop errStop
		if errors.As(err, &stop) {
			return stop.error
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("after %v: %w", timeout, err)
		case <-tick.C:
		}
	}
}

func denyAll(ns, name string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		},
	}
}

// waitReach waits until a fresh TCP connection from the client pod (node2) to the
// server pod (node1) succeeds (want) or fails (!want).
func (e *env) waitReach(ctx context.Context, t *testing.T, want bool) {
	t.Helper()
	start := time.Now()
	var last lab.ProbeResult
	err := poll(ctx, enforceTimeout, 200*time.Millisecond, func() error {
		r, err := e.c.Probe(ctx, e.client, e.server.AddrPort(lab.IPv4, 80), "tcp", 0)
		if err != nil {
			return errStop{err}
		}
		last = r
		if r.OK != want {
			return fmt.Errorf("client -> server: ok=%v, want ok=%v: %w", r.OK, want, r.Err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v (last probe %+v)", err, last)
	}
	t.Logf("client -> server reachable=%v after %v", want, time.Since(start).Round(time.Millisecond))
}

// checkEnforces proves the running agent enforces: the client reaches the server;
// a deny-all ingress policy on the server stops new connections; deleting it lets
// them through again. With flow, it also checks that the connection open before the
// deny is stopped (conntrack revocation) and returns how many flows the agent says
// it revoked.
func (e *env) checkEnforces(ctx context.Context, t *testing.T, a *agentRun, flow bool) (revoked float64) {
	t.Helper()
	e.waitReach(ctx, t, true)
	var conn *echoConn
	if flow {
		var err error
		if conn, err = e.dialEcho(ctx); err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if err := conn.roundTrip(); err != nil {
			t.Fatalf("the flow before the deny: %v", err)
		}
	}
	np, err := e.admin.NetworkingV1().NetworkPolicies(testNS).Create(ctx, denyAll(testNS, "deny-all"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.waitReach(ctx, t, false)
	if flow {
		start := time.Now()
		err := poll(ctx, enforceTimeout, 0+50*time.Millisecond, func() error {
			if err := conn.roundTrip(); err == nil {
				return errors.New("the established flow still passes")
			}
			return nil
		})
		if err != nil {
			t.Fatalf("established flow after the deny: %v", err)
		}
		t.Logf("established flow stopped %v after new connections were denied", time.Since(start).Round(time.Millisecond))
		e.checkRevokedMark(ctx, t)
		if err := poll(ctx, enforceTimeout, 200*time.Millisecond, func() error {
			v, err := a.metric(ctx, "nftpolicy_revoked_flows_total")
			if err != nil {
				return err
			}
			if revoked = v; v < 1 {
				return fmt.Errorf("nftpolicy_revoked_flows_total = %v", v)
			}
			return nil
		}); err != nil {
			t.Errorf("revocation metric: %v", err)
		}
	}
	if err := e.admin.NetworkingV1().NetworkPolicies(testNS).Delete(ctx, np.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitReach(ctx, t, true)
	return revoked
}

// checkRevokedMark checks, in node1's conntrack table, that the echo flow's entry
// carries the revoked mark: the flow stopped because the agent marked it, not for
// another reason.
func (e *env) checkRevokedMark(ctx context.Context, t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("conntrack"); err != nil {
		t.Log("conntrack is not installed (apt-get install conntrack): the entry's mark is not checked")
		return
	}
	mark := fmt.Sprintf("%#x/%#x", compiler.RevokedMark, compiler.CtMarkMask)
	cmd := e.node1.NS.Command(ctx, "conntrack", "-L", "-p", "tcp", "--dst", e.server.IPv4.String(), "--dport", strconv.Itoa(echoPort), "--mark", mark)
	out, err := cmd.Output() // the entries; the summary line goes to stderr
	if err != nil {
		t.Fatalf("conntrack -L in node1: %v", err)
	}
	if !strings.Contains(string(out), "dport="+strconv.Itoa(echoPort)) {
		t.Errorf("no conntrack entry of the echo flow with mark %s in node1; entries:\n%s", mark, out)
		return
	}
	t.Logf("node1 conntrack, mark %s: %s", mark, strings.TrimSpace(string(out)))
}

// echoConn is a connection to the server pod's echo server.
type echoConn struct {
	net.Conn
	r *bufio.Reader
	n int
}

func (e *env) dialEcho(ctx context.Context) (*echoConn, error) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := e.client.NS.DialContext(dctx, "tcp", netip.AddrPortFrom(e.server.IPv4, echoPort).String())
	if err != nil {
		return nil, fmt.Errorf("dial the echo server: %w", err)
	}
	return &echoConn{Conn: c, r: bufio.NewReader(c)}, nil
}

// roundTrip sends a numbered line and waits a second for its echo.
func (c *echoConn) roundTrip() error {
	c.n++
	msg := fmt.Sprintf("ping %d\n", c.n)
	if err := c.SetDeadline(time.Now().Add(time.Second)); err != nil {
		return err
	}
	if _, err := c.Write([]byte(msg)); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got, err := c.r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if got != msg {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

// forbiddenLine matches an API refusal in the agent's log.
var forbiddenLine = regexp.MustCompile(`(?i)forbidden|cannot (list|watch|get|create|patch)`)

// checkLogClean fails on any API refusal or error line in the agent's log.
func checkLogClean(t *testing.T, log string) {
	t.Helper()
	for _, line := range strings.Split(log, "\n") {
		if forbiddenLine.MatchString(line) {
			t.Errorf("agent log has a refusal: %s", line)
		}
		if strings.Contains(line, `"level":"error"`) || strings.Contains(line, "\tERROR\t") {
			t.Errorf("agent log has an error: %s", line)
		}
	}
}

// checkAgentAsServiceAccount runs the agent with the ServiceAccount's kubeconfig (and
// the test's full capabilities) and checks it enforces with no refusal in its log.
func (e *env) checkAgentAsServiceAccount(ctx context.Context, t *testing.T) {
	a := e.startAgent(t, nil)
	a.waitReady(ctx, t)
	e.checkEnforces(ctx, t, a, false)
	checkLogClean(t, a.log())
}

// capMask is the bit mask of the named capabilities (setpriv's spelling).
func capMask(t *testing.T, names []string) uint64 {
	t.Helper()
	bits := map[string]int{
		"net_admin": unix.CAP_NET_ADMIN, "net_raw": unix.CAP_NET_RAW, "sys_admin": unix.CAP_SYS_ADMIN,
		"net_bind_service": unix.CAP_NET_BIND_SERVICE, "sys_resource": unix.CAP_SYS_RESOURCE,
	}
	var m uint64
	for _, n := range names {
		b, ok := bits[n]
		if !ok {
			t.Fatalf("unknown capability %q in the chart", n)
		}
		m |= 1 << b
	}
	return m
}

// procCaps reads the capability sets of pid from /proc.
func procCaps(pid int) (map[string]uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || !strings.HasPrefix(k, "Cap") && k != "NoNewPrivs" {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		if err != nil {
			return nil, fmt.Errorf("/proc/%d/status %s: %w", pid, k, err)
		}
		out[k] = n
	}
	return out, nil
}

// setprivArgs runs the agent with exactly caps in every capability set and with
// no_new_privs, as the chart's securityContext does (allowPrivilegeEscalation:
// false). As UID 0 the agent's permitted set after exec is its bounding set, so
// the bounding set is what limits it.
func setprivArgs(caps []string) []string {
	set := "-all"
	for _, c := range caps {
		set += ",+" + c
	}
	return []string{"setpriv", "--no-new-privs", "--inh-caps=" + set, "--ambient-caps=" + set, "--bounding-set=" + set, "--"}
}

// checkChartCapabilities runs the agent with only the capabilities the chart adds and
// checks it programs its table, enforces and revokes an established flow.
func (e *env) checkChartCapabilities(ctx context.Context, t *testing.T) {
	caps := e.chart.addedCaps(t)
	want := capMask(t, caps)
	a := e.startAgent(t, setprivArgs(caps))
	a.waitReady(ctx, t)
	got, err := procCaps(a.proc.Pid())
	if err != nil {
		t.Fatal(err)
	}
	for _, set := range []string{"CapEff", "CapPrm", "CapBnd"} {
		if got[set] != want {
			t.Errorf("agent %s = %#x, want %#x (%v)", set, got[set], want, caps)
		}
	}
	if got["NoNewPrivs"] != 1 {
		t.Errorf("agent NoNewPrivs = %d, want 1", got["NoNewPrivs"])
	}
	t.Logf("agent pid %d runs with CapEff=%#x CapPrm=%#x CapBnd=%#x NoNewPrivs=%d (%v)",
		a.proc.Pid(), got["CapEff"], got["CapPrm"], got["CapBnd"], got["NoNewPrivs"], caps)
	out, err := e.node1.NS.Exec(ctx, "nft", "list", "table", "inet", agentTable)
	if err != nil {
		t.Fatalf("the agent's table is not in node1: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "chain ingress-forward") {
		t.Errorf("table inet %s lacks chain ingress-forward:\n%s", agentTable, out)
	}
	revoked := e.checkEnforces(ctx, t, a, true)
	t.Logf("with only %v: table programmed, policy enforced, %v established flow(s) revoked", caps, revoked)
	checkLogClean(t, a.log())
}

// notPermitted matches the agent's report of a refused netlink request.
var notPermitted = regexp.MustCompile(`(?i)operation not permitted|permission denied|EPERM`)

// checkNoCapabilities runs the agent with no capability at all: it must not become
// ready, must program nothing, and must say why (nftables, not permitted).
func (e *env) checkNoCapabilities(ctx context.Context, t *testing.T) {
	a := e.startAgent(t, setprivArgs(nil))
	var line string
	err := poll(ctx, enforceTimeout, 200*time.Millisecond, func() error {
		for _, l := range strings.Split(a.log(), "\n") {
			if notPermitted.MatchString(l) {
				line = l
				return nil
			}
		}
		if a.proc.Exited() {
			return errStop{fmt.Errorf("the agent exited without saying it was not permitted: %w", a.proc.ExitErr())}
		}
		return errors.New("no 'not permitted' in the agent's log yet")
	})
	if err != nil {
		t.Fatalf("%v; log:\n%s", err, a.log())
	}
	t.Logf("agent without capabilities reports: %s", line)
	if !regexp.MustCompile(`(?i)nftables|netlink|table`).MatchString(line) {
		t.Errorf("the refusal does not say it concerns nftables: %s", line)
	}
	if a.ready(ctx) {
		t.Error("the agent without capabilities reports ready")
	}
	if out, err := e.node1.NS.Exec(ctx, "nft", "list", "table", "inet", agentTable); err == nil {
		t.Errorf("table inet %s exists although the agent had no capability:\n%s", agentTable, out)
	}
	// Failing to open nftables is fatal: the agent exits non-zero rather than run
	// unready. (A process still running would be checked for its capabilities.)
	if err := poll(ctx, enforceTimeout, 100*time.Millisecond, func() error {
		if !a.proc.Exited() {
			return errors.New("the agent is still running")
		}
		return nil
	}); err != nil {
		if caps, cerr := procCaps(a.proc.Pid()); cerr == nil && caps["CapEff"] != 0 {
			t.Errorf("agent CapEff = %#x, want 0", caps["CapEff"])
		}
		t.Errorf("the agent without capabilities does not exit: %v", err)
	} else if a.proc.Err() == nil {
		t.Error("the agent without capabilities exited with status 0")
	} else {
		t.Logf("the agent exited: %v", a.proc.Err())
	}
	// Unenforced: the deny-all policy has no effect on node1.
	np, err := e.admin.NetworkingV1().NetworkPolicies(testNS).Create(ctx, denyAll(testNS, "deny-all"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := e.admin.NetworkingV1().NetworkPolicies(testNS).Delete(context.Background(), np.Name, metav1.DeleteOptions{}); err != nil {
			t.Error(err)
		}
	}()
	if r, err := e.c.Probe(ctx, e.client, e.server.AddrPort(lab.IPv4, 80), "tcp", 0); err != nil || !r.OK {
		t.Errorf("client -> server with a deny-all policy and no working agent: ok=%v err=%v %v (something else enforces?)", r.OK, r.Err, err)
	}
}

// checkMetricsAccess runs the agent as the chart's ServiceAccount with the chart's
// capabilities and checks its metrics endpoint: TLS only, HTTP/1.1 only; no token, a
// token without the metrics-reader role and the agent's own token are refused (401,
// 403, 403), and so is a token the API server does not know; the token bound to
// metrics-reader gets the metrics. The TokenReviews and SubjectAccessReviews behind
// these answers are made with the chart's ClusterRole: none fails.
func (e *env) checkMetricsAccess(ctx context.Context, t *testing.T) {
	a := e.startAgent(t, setprivArgs(e.chart.addedCaps(t)))
	a.waitReady(ctx, t)
	a.waitMetrics(ctx, t)
	// Plain HTTP to the TLS server: Go's answers 400 and closes, which can reset the
	// connection before the client reads it all; either way, no metrics.
	if resp, err := a.scrape(ctx, "http", e.scraperToken); err != nil {
		t.Logf("plain HTTP: %v", err)
	} else {
		body, err := readBody(resp)
		if resp.StatusCode == http.StatusOK || strings.Contains(body, "nftpolicy_") {
			t.Errorf("plain HTTP GET /metrics: %s, want no metrics:\n%s", resp.Status, truncate(body, 300))
		}
		t.Logf("plain HTTP: %s (%s; read: %v)", resp.Status, truncate(strings.TrimSpace(body), 80), err)
	}

	for _, tc := range []struct {
		who, token string
		want       int
	}{
		{"anonymous", "", http.StatusUnauthorized},
		{"a ServiceAccount without the role", e.nobodyToken, http.StatusForbidden},
		{"the agent's own ServiceAccount", e.saConfig.BearerToken, http.StatusForbidden},
		{"the metrics-reader ServiceAccount", e.scraperToken, http.StatusOK},
	} {
		resp, err := a.scrape(ctx, "https", tc.token)
		if err != nil {
			t.Errorf("%s: %v", tc.who, err)
			continue
		}
		body, err := readBody(resp)
		if err != nil {
			t.Errorf("%s: %v", tc.who, err)
			continue
		}
		if resp.ProtoMajor != 1 {
			t.Errorf("%s: the agent negotiated %s, want HTTP/1.1 only", tc.who, resp.Proto)
		}
		if resp.StatusCode != tc.want {
			t.Errorf("%s: GET /metrics answers %s, want %d:\n%s", tc.who, resp.Status, tc.want, truncate(body, 300))
			continue
		}
		hasMetrics := strings.Contains(body, "nftpolicy_sync_duration_seconds_count")
		if hasMetrics != (tc.want == http.StatusOK) {
			t.Errorf("%s: %s, metrics in the body: %v:\n%s", tc.who, resp.Status, hasMetrics, truncate(body, 300))
			continue
		}
		t.Logf("%s: %s over %s, %d bytes", tc.who, resp.Status, resp.Proto, len(body))
	}
	checkLogClean(t, a.log())

	// A token the API server does not know is refused too. controller-runtime's filter
	// answers it 500 "Authentication failed" and logs an error (the token
	// authenticator reports an unauthenticated token as an error), hence last, after
	// the log check, and only "refused" is asserted.
	resp, err := a.scrape(ctx, "https", "not-a-token")
	if err != nil {
		t.Fatalf("an unknown token: %v", err)
	}
	body, err := readBody(resp)
	if err != nil {
		t.Fatalf("an unknown token: %v", err)
	}
	if resp.StatusCode == http.StatusOK || strings.Contains(body, "nftpolicy_") {
		t.Errorf("an unknown token: GET /metrics answers %s with metrics", resp.Status)
	}
	t.Logf("an unknown token: %s (%s)", resp.Status, strings.TrimSpace(body))
}

func readBody(resp *http.Response) (string, error) {
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("read the answer of %s: %w", resp.Request.URL, err)
	}
	return string(b), nil
}

// waitMetrics waits until the metrics endpoint answers at all: the metrics server
// starts beside the controller, not before readiness.
func (a *agentRun) waitMetrics(ctx context.Context, t *testing.T) {
	t.Helper()
	if err := poll(ctx, enforceTimeout, 50*time.Millisecond, func() error {
		resp, err := a.scrape(ctx, "https", "")
		if err == nil {
			resp.Body.Close()
		}
		return err
	}); err != nil {
		t.Fatalf("the metrics endpoint does not answer: %v", err)
	}
}

// checkMetricsCertificate runs the agent with --metrics-cert-dir (where the chart
// mounts metrics.certSecret) and checks that a client trusting only that
// certificate's CA, and naming the server as the certificate does, reads the metrics:
// the agent serves the given certificate, not its self-signed fallback.
func (e *env) checkMetricsCertificate(ctx context.Context, t *testing.T) {
	const serverName = "nftpolicy-agent-metrics"
	certPEM, keyPEM, err := certutil.GenerateSelfSignedCertKey(serverName, []net.IP{net.IPv4(127, 0, 0, 1)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, b := range map[string][]byte{"tls.crt": certPEM, "tls.key": keyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(certPEM) {
		t.Fatal("no certificate in the generated PEM")
	}
	a := e.startAgent(t, setprivArgs(e.chart.addedCaps(t)), "--metrics-cert-dir", dir)
	a.http = nsHTTPClient(e.node1.NS, &tls.Config{RootCAs: pool, ServerName: serverName})
	a.waitReady(ctx, t)
	a.waitMetrics(ctx, t)
	v, err := a.metric(ctx, "nftpolicy_revoked_flows_total")
	if err != nil {
		t.Fatalf("scrape with the certificate verified: %v", err)
	}
	t.Logf("scraped over TLS verified against the given certificate (%s): nftpolicy_revoked_flows_total %v", serverName, v)
	checkLogClean(t, a.log())
}
