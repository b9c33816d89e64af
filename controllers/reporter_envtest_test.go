package controllers

import (
	"context"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/nftpolicy/nftpolicy/pkg/dataplane/fake"
)

// Two agents against one API server, on nodes events-a and events-b, report the
// problems of policies no node compiles: only the first Ready node's agent does, and the
// second takes over when the first becomes NotReady. The suite's own agent (node n1,
// which has no Node object, so is never Ready) reports none of them either.
var _ = Describe("Problems of policies no node compiles", Ordered, func() {
	ctx := context.Background()
	const ns = "quiet" // no pods anywhere
	var stop context.CancelFunc

	startAgent := func(ctx context.Context, node string) {
		mgr, err := ctrl.NewManager(testEnv.Config, ctrl.Options{
			Scheme:  k8s.Scheme(),
			Metrics: metricsserver.Options{BindAddress: "0"},
			// Two agents in one process register the same controller name.
			Controller: config.Controller{SkipNameValidation: ptr.To(true)},
			Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
				&corev1.Pod{}:       {Transform: TrimPod},
				&corev1.Namespace{}: {Transform: TrimNamespace},
				&corev1.Node{}:      {Transform: TrimNode},
			}},
		})
		Expect(err).NotTo(HaveOccurred())
		s := &Syncer{Client: mgr.GetCache(), Dataplane: fake.New(), NodeName: node,
			Recorder: mgr.GetEventRecorder("nftpolicy-agent"), Log: logf.Log.WithName(node)}
		Expect(s.SetupWithManager(mgr)).To(Succeed())
		go func() {
			defer GinkgoRecover()
			Expect(mgr.Start(ctx)).To(Succeed())
		}()
		Eventually(s.Ready).Should(BeTrue())
	}
	setReady := func(node string, status corev1.ConditionStatus) {
		var n corev1.Node
		Expect(k8s.Get(ctx, client.ObjectKey{Name: node}, &n)).To(Succeed())
		n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: status, LastHeartbeatTime: metav1.Now()}}
		Expect(k8s.Status().Update(ctx, &n)).To(Succeed())
	}
	// reports returns the Warning Events on the policy whose note names node as the
	// reporter; an Event recorded more than once (the recorder then makes it a series)
	// is returned as often as it was recorded.
	reports := func(policy, node string) func() []string {
		return func() []string {
			var evs corev1.EventList
			Expect(k8s.List(ctx, &evs, client.InNamespace(ns))).To(Succeed())
			var out []string
			for _, e := range evs.Items {
				if e.InvolvedObject.Kind == "NetworkPolicy" && e.InvolvedObject.Name == policy && e.Type == corev1.EventTypeWarning &&
					strings.Contains(e.Message, "reported by node "+node+",") {
					out = append(out, e.Reason+" "+e.Message)
					if e.Series != nil {
						for range e.Series.Count - 1 {
							out = append(out, "repeated: "+e.Message)
						}
					}
				}
			}
			return out
		}
	}
	// A CIDR with a leading zero: the API server of a cluster whose policies predate
	// strict IP validation accepts it (the suite runs it with StrictIPCIDRValidation
	// off), the compiler does not parse it.
	badPolicy := func(name string) *networkingv1.NetworkPolicy {
		return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
					{IPBlock: &networkingv1.IPBlock{CIDR: "010.0.0.0/8"}}}}},
			}}
	}

	BeforeAll(func() {
		for _, n := range []string{"events-a", "events-b"} {
			Expect(k8s.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}})).To(Succeed())
			setReady(n, corev1.ConditionTrue)
		}
		createNS(ns, nil)
		var agentCtx context.Context
		agentCtx, stop = context.WithCancel(context.Background())
		startAgent(agentCtx, "events-a")
		startAgent(agentCtx, "events-b")
	})
	AfterAll(func() {
		if stop != nil {
			stop()
		}
		for _, name := range []string{"bad", "later"} {
			Expect(client.IgnoreNotFound(k8s.Delete(ctx, badPolicy(name)))).To(Succeed())
		}
		for _, n := range []string{"events-a", "events-b"} {
			Expect(client.IgnoreNotFound(k8s.Delete(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}))).To(Succeed())
		}
	})

	It("reports once, from the first Ready node's agent", func() {
		Expect(k8s.Create(ctx, badPolicy("bad"))).To(Succeed())
		Eventually(reports("bad", "events-a"), "10s").Should(HaveLen(1))
		Expect(reports("bad", "events-a")()[0]).To(And(ContainSubstring("CompileError"), ContainSubstring("spec.ingress[0].from[0].ipBlock"),
			ContainSubstring("010.0.0.0/8"), ContainSubstring("no node compiles this policy")))
		// Later syncs (a pod elsewhere, the other agents' resyncs) add nothing.
		createNS("quiet-neighbour", nil)
		createPod("quiet-neighbour", "web", "events-b", "10.244.3.1", map[string]string{"app": "web"})
		Consistently(reports("bad", "events-a"), "2s").Should(HaveLen(1))
		Expect(reports("bad", "events-b")()).To(BeEmpty())
		Expect(reports("bad", "n1")()).To(BeEmpty())
	})

	It("is taken over by the next Ready node when the first becomes NotReady", func() {
		setReady("events-a", corev1.ConditionFalse)
		// The problem that stands is reported by the new reporter, once.
		Eventually(reports("bad", "events-b"), "10s").Should(HaveLen(1))
		Expect(k8s.Create(ctx, badPolicy("later"))).To(Succeed())
		Eventually(reports("later", "events-b"), "10s").Should(HaveLen(1))
		Consistently(reports("later", "events-a"), "2s").Should(BeEmpty())
		Expect(reports("bad", "events-a")()).To(HaveLen(1))
		Expect(reports("bad", "events-b")()).To(HaveLen(1))
	})
})
