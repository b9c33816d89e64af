package controllers

import (
	"context"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/discovery"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/pkg/dataplane/fake"
	"github.com/nftpolicy/nftpolicy/pkg/model"
)

// An agent started without the ClusterNetworkPolicy CRD syncs and is ready; the CRD
// installed later is followed without a restart (objects created afterwards reach the
// compiler, v1alpha2 ones too, and a bad one gets a Warning Event from the reporter);
// the CRD's removal empties the compiler's ClusterNetworkPolicies, and its return is
// followed again. Node labels and addresses reach the compiler. The agent runs on node
// cnp-a, the only Ready node (and so the reporter) while this runs; the suite's agent
// (n1, no Node) watches for the CRD too, and reports none of the problems.
var _ = Describe("ClusterNetworkPolicies and Nodes", Ordered, func() {
	ctx := context.Background()
	const node = "cnp-a"
	var (
		agent   *Syncer
		stop    context.CancelFunc
		crdPath string
		disc    *discovery.DiscoveryClient
	)
	crdOptions := func() envtest.CRDInstallOptions {
		return envtest.CRDInstallOptions{Paths: []string{crdPath}, ErrorIfPathMissing: true}
	}
	served := func() bool {
		ok, err := ClusterPoliciesServed(disc)
		Expect(err).NotTo(HaveOccurred())
		return ok
	}
	held := func(name string) func() *cnp.ClusterNetworkPolicy {
		return func() *cnp.ClusterNetworkPolicy { return agent.ClusterPolicy(name) }
	}
	// denyInto is a valid policy whose subject is a namespace label no namespace has,
	// so that whatever the compiler makes of it changes no traffic of the other specs.
	denyInto := func(name string, priority int32) *cnp.ClusterNetworkPolicy {
		return &cnp.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: cnp.ClusterNetworkPolicySpec{Tier: cnp.AdminTier, Priority: priority,
				Subject: cnp.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"cnp-test": "nobody"}}},
				Ingress: []cnp.ClusterNetworkPolicyIngressRule{{Action: cnp.ClusterNetworkPolicyRuleActionDeny,
					From: []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}}}},
			}}
	}
	// warnings returns the Warning Events on the ClusterNetworkPolicy (cluster-scoped:
	// in namespace default), each as often as it was recorded.
	warnings := func(name string) func() []string {
		return func() []string {
			var evs corev1.EventList
			Expect(k8s.List(ctx, &evs, client.InNamespace(metav1.NamespaceDefault))).To(Succeed())
			var out []string
			for _, e := range evs.Items {
				if e.InvolvedObject.Kind != "ClusterNetworkPolicy" || e.InvolvedObject.Name != name || e.Type != corev1.EventTypeWarning {
					continue
				}
				out = append(out, e.Reason+" "+e.Message)
				if e.Series != nil {
					for range e.Series.Count - 1 {
						out = append(out, "repeated: "+e.Message)
					}
				}
			}
			return out
		}
	}
	setNode := func(change func(n *corev1.Node)) {
		var n corev1.Node
		Expect(k8s.Get(ctx, client.ObjectKey{Name: node}, &n)).To(Succeed())
		change(&n)
		Expect(k8s.Update(ctx, &n)).To(Succeed())
	}
	setNodeStatus := func(change func(n *corev1.Node)) {
		var n corev1.Node
		Expect(k8s.Get(ctx, client.ObjectKey{Name: node}, &n)).To(Succeed())
		change(&n)
		Expect(k8s.Status().Update(ctx, &n)).To(Succeed())
	}
	heldNode := func() *model.Node { return agent.Node(node) }

	BeforeAll(func() {
		out, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/network-policy-api").Output()
		Expect(err).NotTo(HaveOccurred(), "finding sigs.k8s.io/network-policy-api in the module cache")
		// The experimental channel: its domainNames peers are what the agent reports as
		// unsupported.
		crdPath = filepath.Join(strings.TrimSpace(string(out)), "config", "crd", "experimental", "policy.networking.k8s.io_clusternetworkpolicies.yaml")
		disc, err = discovery.NewDiscoveryClientForConfig(testEnv.Config)
		Expect(err).NotTo(HaveOccurred())
		Expect(served()).To(BeFalse(), "the suite starts without the CRD")

		Expect(k8s.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node, Labels: map[string]string{"zone": "a"}}})).To(Succeed())
		setNodeStatus(func(n *corev1.Node) {
			n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now()}}
			n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.168.10.1"}, {Type: corev1.NodeHostName, Address: node}}
		})

		mgr, err := ctrl.NewManager(testEnv.Config, ctrl.Options{
			Scheme:     k8s.Scheme(),
			Metrics:    metricsserver.Options{BindAddress: "0"},
			Controller: config.Controller{SkipNameValidation: ptr.To(true)},
			Cache: cache.Options{
				DefaultTransform:         cache.TransformStripManagedFields(),
				DefaultWatchErrorHandler: WatchErrorHandler(logf.Log.WithName(node).WithName("watch")),
				ByObject: map[client.Object]cache.ByObject{
					&corev1.Pod{}:       {Transform: TrimPod},
					&corev1.Namespace{}: {Transform: TrimNamespace},
					&corev1.Node{}:      {Transform: TrimNode},
				},
			},
		})
		Expect(err).NotTo(HaveOccurred())
		agent = &Syncer{Client: mgr.GetCache(), Dataplane: fake.New(), NodeName: node, ClusterPolicyCheckPeriod: DefaultClusterPolicyCheckPeriod / 50,
			Recorder: mgr.GetEventRecorder("nftpolicy-agent"), Log: logf.Log.WithName(node)}
		Expect(agent.SetupWithManager(mgr)).To(Succeed())
		var agentCtx context.Context
		agentCtx, stop = context.WithCancel(context.Background())
		go func() {
			defer GinkgoRecover()
			Expect(mgr.Start(agentCtx)).To(Succeed())
		}()
	})
	AfterAll(func() {
		if stop != nil {
			stop()
		}
		if crdPath != "" {
			Expect(envtest.UninstallCRDs(testEnv.Config, crdOptions())).To(Succeed())
		}
		Expect(client.IgnoreNotFound(k8s.Delete(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}))).To(Succeed())
	})

	It("syncs and becomes ready without the CRD", func() {
		Eventually(agent.Ready, "10s").Should(BeTrue())
		Expect(served()).To(BeFalse())
		Expect(agent.ClusterPolicy("anything")).To(BeNil())
	})

	It("follows the labels and addresses of Nodes", func() {
		Eventually(heldNode).ShouldNot(BeNil())
		Expect(heldNode().Labels).To(Equal(map[string]string{"zone": "a"}))
		Expect(heldNode().Addrs).To(Equal([]netip.Addr{netip.MustParseAddr("192.168.10.1")}))

		setNode(func(n *corev1.Node) { n.Labels["role"] = "edge" })
		Eventually(func() string { return heldNode().Labels["role"] }, "5s").Should(Equal("edge"))
		setNodeStatus(func(n *corev1.Node) {
			n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "203.0.113.10"})
		})
		Eventually(func() []netip.Addr { return heldNode().Addrs }, "5s").Should(ConsistOf(
			netip.MustParseAddr("192.168.10.1"), netip.MustParseAddr("203.0.113.10")))

		// A node that comes and goes (NotReady: the reporter stays cnp-a).
		other := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "cnp-z"}}
		Expect(k8s.Create(ctx, other)).To(Succeed())
		Eventually(func() *model.Node { return agent.Node("cnp-z") }, "5s").ShouldNot(BeNil())
		Expect(k8s.Delete(ctx, other)).To(Succeed())
		Eventually(func() *model.Node { return agent.Node("cnp-z") }, "5s").Should(BeNil())
	})

	It("follows a CRD installed after start, without a restart", func() {
		_, err := envtest.InstallCRDs(testEnv.Config, crdOptions())
		Expect(err).NotTo(HaveOccurred())
		Expect(served()).To(BeTrue())

		p := denyInto("cnp-deny", 100)
		Expect(k8s.Create(ctx, p)).To(Succeed())
		Eventually(held("cnp-deny"), "10s").ShouldNot(BeNil())
		Expect(held("cnp-deny")().Spec.Priority).To(BeEquivalentTo(100))
		// The suite's agent watches for it as well.
		Eventually(func() *cnp.ClusterNetworkPolicy { return syncer.ClusterPolicy("cnp-deny") }, "10s").ShouldNot(BeNil())

		Expect(k8s.Get(ctx, client.ObjectKey{Name: "cnp-deny"}, p)).To(Succeed())
		p.Spec.Priority = 200
		Expect(k8s.Update(ctx, p)).To(Succeed())
		Eventually(func() int32 { return held("cnp-deny")().Spec.Priority }, "5s").Should(BeEquivalentTo(200))

		// A v1alpha2 object is served through v1beta1 (no conversion: same schema).
		alpha := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
			"metadata": map[string]any{"name": "cnp-alpha"},
			"spec": map[string]any{"tier": "Baseline", "priority": int64(5),
				"subject": map[string]any{"namespaces": map[string]any{"matchLabels": map[string]any{"cnp-test": "nobody"}}},
				"ingress": []any{map[string]any{"action": "Deny", "from": []any{map[string]any{"namespaces": map[string]any{}}}}},
			},
		}}
		Expect(k8s.Create(ctx, alpha)).To(Succeed())
		Eventually(held("cnp-alpha"), "5s").ShouldNot(BeNil())
		Expect(held("cnp-alpha")().Spec.Tier).To(Equal(cnp.BaselineTier))
		Expect(agent.Ready()).To(BeTrue())
	})

	It("reports a bad ClusterNetworkPolicy once, as a Warning Event naming the object and the field", func() {
		p := denyInto("cnp-domains", 300)
		p.Spec.Ingress = nil
		p.Spec.Egress = []cnp.ClusterNetworkPolicyEgressRule{{Action: cnp.ClusterNetworkPolicyRuleActionAccept,
			To: []cnp.ClusterNetworkPolicyEgressPeer{{DomainNames: []cnp.DomainName{"example.com"}}}}}
		Expect(k8s.Create(ctx, p)).To(Succeed())
		Eventually(warnings("cnp-domains"), "10s").Should(HaveLen(1))
		Expect(warnings("cnp-domains")()[0]).To(And(HavePrefix("Unsupported "), ContainSubstring("spec.egress[0].to[0].domainNames"),
			ContainSubstring("not supported yet"), ContainSubstring("reported by node "+node+",")))
		// Later syncs (a node update, resyncs, the suite's agent) add nothing.
		setNode(func(n *corev1.Node) { n.Labels["poke"] = "1" })
		Consistently(warnings("cnp-domains"), "2s").Should(HaveLen(1))
		// The valid ones have none.
		Expect(warnings("cnp-deny")()).To(BeEmpty())
	})

	It("tolerates the CRD's removal, and follows its return", func() {
		Expect(envtest.UninstallCRDs(testEnv.Config, crdOptions())).To(Succeed())
		// The CRD's deletion deletes its objects first; the agent drops them.
		Eventually(held("cnp-deny"), "20s").Should(BeNil())
		Eventually(held("cnp-alpha"), "5s").Should(BeNil())
		crd := &metav1.PartialObjectMetadata{TypeMeta: metav1.TypeMeta{APIVersion: "apiextensions.k8s.io/v1", Kind: "CustomResourceDefinition"}}
		Eventually(func() bool {
			err := k8s.Get(ctx, client.ObjectKey{Name: "clusternetworkpolicies.policy.networking.k8s.io"}, crd)
			return apierrors.IsNotFound(err)
		}, "20s").Should(BeTrue(), "the CRD is deleted")
		Eventually(served, "5s").Should(BeFalse())
		Expect(agent.Ready()).To(BeTrue())

		_, err := envtest.InstallCRDs(testEnv.Config, crdOptions())
		Expect(err).NotTo(HaveOccurred())
		Expect(k8s.Create(ctx, denyInto("cnp-back", 100))).To(Succeed())
		Eventually(held("cnp-back"), "10s").ShouldNot(BeNil())
		Expect(held("cnp-deny")()).To(BeNil())
	})
})
