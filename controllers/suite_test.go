package controllers

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/internal/testns"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane/fake"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
	"github.com/nftpolicy/nftpolicy/pkg/tracer"
)

func TestControllers(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "controllers (envtest)")
}

var (
	testEnv *envtest.Environment
	k8s     client.Client
	dp      *fake.Dataplane
	syncer  *Syncer
	cancel  context.CancelFunc
)

var _ = BeforeSuite(func() {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		// `make test` sets it; running `go test` by hand finds the assets in bin/k8s.
		if abs, err := filepath.Abs("../bin/k8s"); err == nil {
			if _, err := os.Stat(filepath.Join(abs, "kube-apiserver")); err == nil {
				os.Setenv("KUBEBUILDER_ASSETS", abs)
			}
		}
	}
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		testns.SkipUnlessRequired(GinkgoT(), "no control plane: run `make envtest-assets` or `make test` (KUBEBUILDER_ASSETS unset)")
	}
	logf.SetLogger(zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))
	testEnv = &envtest.Environment{}
	// Policies created before Kubernetes 1.36 may hold CIDRs (leading zeros) that strict
	// IP validation, on by default since, refuses and the compiler cannot parse; the API
	// server keeps accepting them in such policies, and this one, with the validation
	// off, accepts them in new ones (reporter_envtest_test.go).
	testEnv.ControlPlane.GetAPIServer().Configure().Append("feature-gates", "StrictIPCIDRValidation=false")
	cfg, err := testEnv.Start()
	Expect(err).NotTo(HaveOccurred())

	scheme := runtime.NewScheme()
	Expect(clientgoscheme.AddToScheme(scheme)).To(Succeed())
	Expect(cnp.Install(scheme)).To(Succeed())
	k8s, err = client.New(cfg, client.Options{Scheme: scheme})
	Expect(err).NotTo(HaveOccurred())

	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:  scheme,
		Metrics: metricsserver.Options{BindAddress: "0"},
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}:       {Transform: TrimPod},
			&corev1.Namespace{}: {Transform: TrimNamespace},
		}, DefaultWatchErrorHandler: WatchErrorHandler(logf.Log.WithName("watch"))},
	})
	Expect(err).NotTo(HaveOccurred())
	dp = fake.New()
	// Watching for ClusterNetworkPolicies as the agent does: the CRD is absent until
	// clusterpolicies_envtest_test.go installs it.
	syncer = &Syncer{Client: mgr.GetCache(), Dataplane: dp, NodeName: "n1", ResyncPeriod: 300 * time.Millisecond,
		ClusterPolicyCheckPeriod: 200 * time.Millisecond,
		Recorder:                 mgr.GetEventRecorder("nftpolicy-agent"), Log: logf.Log.WithName("sync")}
	Expect(syncer.SetupWithManager(mgr)).To(Succeed())
	var ctx context.Context
	ctx, cancel = context.WithCancel(context.Background())
	go func() {
		defer GinkgoRecover()
		Expect(mgr.Start(ctx)).To(Succeed())
	}()
})

var _ = AfterSuite(func() {
	if dp != nil {
		// The incremental path carried most syncs, and every one of its changes led
		// exactly to the ruleset a full compile gives (the fake checks each).
		patches, mismatched := dp.PatchCounts()
		Expect(patches).To(BeNumerically(">", 0), "no sync took the incremental path")
		Expect(mismatched).To(BeZero(), "incremental changes that did not produce the desired ruleset")
	}
	if cancel != nil {
		cancel()
	}
	if testEnv != nil {
		Expect(testEnv.Stop()).To(Succeed())
	}
})

// --- helpers ---

func createNS(name string, labels map[string]string) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	Expect(k8s.Create(context.Background(), ns)).To(Succeed())
}

func createPod(ns, name, node, ip string, labels map[string]string, ports ...corev1.ContainerPort) *corev1.Pod {
	ctx := context.Background()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "agnhost", Ports: ports}}},
	}
	Expect(k8s.Create(ctx, p)).To(Succeed())
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
	Expect(k8s.Status().Update(ctx, p)).To(Succeed())
	return p
}

func objKey(ns, name string) client.ObjectKey { return client.ObjectKey{Namespace: ns, Name: name} }

// allowed traces a new TCP connection through the fake kernel's table of node n1.
func allowed(src, dst string, port uint16) bool {
	rs := dp.Table()
	if rs == nil {
		return false
	}
	return tracer.Trace(rs, tracer.Packet{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), Proto: 6, DPort: port}).Allowed()
}

func allowedFn(src, dst string, port uint16) func() bool {
	return func() bool { return allowed(src, dst, port) }
}

const (
	frontendIP = "10.244.1.10"
	backendIP  = "10.244.1.11"
	otherIP    = "10.244.2.12"
	remoteIP   = "10.244.2.13"
)

var _ = Describe("Syncer", Ordered, func() {
	ctx := context.Background()
	var policy *networkingv1.NetworkPolicy

	It("applies a ruleset once the caches have synced and becomes ready", func() {
		createNS("app", nil)
		createNS("other", map[string]string{"team": "other"})
		createPod("app", "frontend", "n1", frontendIP, map[string]string{"app": "frontend"})
		createPod("app", "backend", "n1", backendIP, map[string]string{"app": "backend"},
			corev1.ContainerPort{Name: "http", ContainerPort: 8080})
		createPod("other", "client", "n1", otherIP, map[string]string{"app": "client"})
		createPod("other", "remote", "n2", remoteIP, map[string]string{"app": "frontend"})
		Eventually(syncer.Ready).Should(BeTrue())
		Eventually(allowedFn(otherIP, backendIP, 80)).Should(BeTrue())
	})

	It("enforces the seed policy: backend only from frontend", func() {
		policy = &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "backend-policy"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "backend"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
					{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "frontend"}}},
				}}},
			},
		}
		Expect(k8s.Create(ctx, policy)).To(Succeed())
		Eventually(allowedFn(otherIP, backendIP, 80)).Should(BeFalse())
		Expect(allowed(frontendIP, backendIP, 80)).To(BeTrue())
		Expect(allowed(backendIP, frontendIP, 80)).To(BeTrue())
	})

	It("follows pod label changes with element updates only", func() {
		_, fullBefore, _ := dp.Counts()
		Expect(allowed(otherIP, backendIP, 80)).To(BeFalse())
		// A pod in another namespace with the right label still does not match a
		// namespace-local podSelector; moving the label onto app/... does.
		p := createPod("app", "late", "n2", "10.244.2.20", map[string]string{"app": "nothing"})
		Consistently(allowedFn("10.244.2.20", backendIP, 80), "300ms").Should(BeFalse())
		p.Labels["app"] = "frontend"
		Expect(k8s.Update(ctx, p)).To(Succeed())
		Eventually(allowedFn("10.244.2.20", backendIP, 80)).Should(BeTrue())
		_, fullAfter, _ := dp.Counts()
		Expect(fullAfter).To(Equal(fullBefore), "a label change must not rebuild the table")
	})

	It("follows policy updates", func() {
		Expect(k8s.Get(ctx, objKey("app", "backend-policy"), policy)).To(Succeed())
		policy.Spec.Ingress[0].From = append(policy.Spec.Ingress[0].From, networkingv1.NetworkPolicyPeer{
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "other"}},
		})
		Expect(k8s.Update(ctx, policy)).To(Succeed())
		Eventually(allowedFn(otherIP, backendIP, 80)).Should(BeTrue())
	})

	It("follows namespace label changes", func() {
		var ns corev1.Namespace
		Expect(k8s.Get(ctx, objKey("", "other"), &ns)).To(Succeed())
		ns.Labels["team"] = "gone"
		Expect(k8s.Update(ctx, &ns)).To(Succeed())
		Eventually(allowedFn(otherIP, backendIP, 80)).Should(BeFalse())
	})

	It("drops pods that completed", func() {
		var p corev1.Pod
		Expect(k8s.Get(ctx, objKey("app", "frontend"), &p)).To(Succeed())
		p.Status.Phase = corev1.PodSucceeded
		Expect(k8s.Status().Update(ctx, &p)).To(Succeed())
		Eventually(allowedFn(frontendIP, backendIP, 80)).Should(BeFalse())
	})

	It("repairs drift at the resync period", func() {
		dp.Mutate(func(*ruleset.Ruleset) *ruleset.Ruleset { return nil }) // table deleted behind our back
		Expect(allowed(otherIP, backendIP, 80)).To(BeFalse())             // tracer on no table: no rules → false
		Eventually(func() bool { return dp.Table() != nil }).Should(BeTrue())
		Expect(allowed("10.244.2.20", backendIP, 80)).To(BeTrue())
		Expect(allowed(otherIP, backendIP, 80)).To(BeFalse())
	})

	It("keeps the last ruleset when an apply fails and retries in full", func() {
		_, fullBefore, _ := dp.Counts()
		dp.FailNextApply(errors.New("injected"))
		createPod("app", "late2", "n2", "10.244.2.21", map[string]string{"app": "frontend"})
		Eventually(allowedFn("10.244.2.21", backendIP, 80)).Should(BeTrue())
		_, fullAfter, _ := dp.Counts()
		Expect(fullAfter).To(BeNumerically(">", fullBefore))
	})

	It("removes isolation when the policy is deleted", func() {
		Expect(k8s.Delete(ctx, policy)).To(Succeed())
		Eventually(allowedFn(otherIP, backendIP, 80)).Should(BeTrue())
		Expect(dp.Table().Set("ingress-pods-v4").Elements).To(BeEmpty())
	})
})
