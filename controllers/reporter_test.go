package controllers

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"
	fakeclient "sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/event"

	"github.com/nftpolicy/nftpolicy/pkg/dataplane/fake"
)

func testNode(name string, ready corev1.ConditionStatus) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: ready}}}}
}

// badPolicy selects app=<app> in ns and has a rule whose ipBlock does not parse (the
// fake client does no validation).
func badPolicy(ns, name, app string) *networkingv1.NetworkPolicy {
	np := hostilePolicy(ns, name, map[string]string{"app": app})
	np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
		{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/33"}}}}}
	return np
}

// The reporter rule over two agents sharing one (fake) API server: the problems of a
// policy compiled nowhere are reported once, by the first Ready node's agent; those of
// a policy compiled on a Ready node by that node only; a pod on a NotReady node does
// not count as compiling; when the reporter goes NotReady the next Ready node takes
// over, and when it is deleted too, the next one.
func TestUncompiledPoliciesAreReportedByTheFirstReadyNode(t *testing.T) {
	ctx := context.Background()
	busy := hostilePod("busy", "web", "10.0.0.1", map[string]string{"app": "web"})
	busy.Spec.NodeName = "node-b"
	stranded := hostilePod("stranded", "web", "10.0.0.2", map[string]string{"app": "web"})
	stranded.Spec.NodeName = "node-0" // NotReady: its agent may be gone
	c := fakeclient.NewClientBuilder().WithObjects(
		testNode("node-0", corev1.ConditionFalse), testNode("node-a", corev1.ConditionTrue),
		testNode("node-b", corev1.ConditionTrue), testNode("node-c", corev1.ConditionTrue),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "empty"}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "busy"}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "stranded"}},
		busy, stranded,
		badPolicy("empty", "orphan", "web"), badPolicy("busy", "compiled", "web"),
		badPolicy("busy", "selects-nothing", "none"), badPolicy("stranded", "stranded", "web"),
	).Build()
	agents := map[string]*Syncer{}
	recs := map[string]*namingRecorder{}
	for _, n := range []string{"node-a", "node-b", "node-c"} {
		recs[n] = &namingRecorder{FakeRecorder: events.NewFakeRecorder(100)}
		agents[n] = &Syncer{Client: c, Dataplane: fake.New(), NodeName: n, Recorder: recs[n], Log: logr.Discard()}
	}
	// sync runs every agent once and returns the policies each reported since the last
	// call, with "compile" or "validate" (the Event's action, read from its note).
	sync := func() map[string][]string {
		t.Helper()
		out := map[string][]string{}
		for n, s := range agents {
			if _, err := s.Reconcile(ctx, syncRequest); err != nil {
				t.Fatalf("%s: Reconcile: %v", n, err)
			}
			r := recs[n]
			r.mu.Lock()
			for i, about := range r.about {
				how := "compile"
				if strings.Contains(r.notes[i], "no node compiles this policy") {
					how = "validate"
				}
				if !strings.Contains(r.notes[i], "spec.ingress[0].from[0].ipBlock") || !strings.Contains(r.notes[i], n) {
					t.Errorf("%s: event %q lacks the field or the node", n, r.notes[i])
				}
				out[n] = append(out[n], strings.TrimPrefix(about, "NetworkPolicy ")+" "+how)
			}
			r.about, r.notes = nil, nil
			r.mu.Unlock()
			drain(r.FakeRecorder)
			slices.Sort(out[n])
		}
		return out
	}
	expect := func(step string, got map[string][]string, want map[string][]string) {
		t.Helper()
		for _, n := range []string{"node-a", "node-b", "node-c"} {
			w := slices.Clone(want[n])
			slices.Sort(w)
			if !slices.Equal(got[n], w) {
				t.Errorf("%s: %s reported %q, want %q", step, n, got[n], want[n])
			}
		}
	}
	expect("first sync", sync(), map[string][]string{
		"node-a": {"empty/orphan validate", "busy/selects-nothing validate", "stranded/stranded validate"},
		"node-b": {"busy/compiled compile"},
	})
	expect("steady state", sync(), nil)

	setReady := func(name string, status corev1.ConditionStatus) {
		t.Helper()
		var n corev1.Node
		if err := c.Get(ctx, client.ObjectKey{Name: name}, &n); err != nil {
			t.Fatal(err)
		}
		n.Status.Conditions[0].Status = status
		if err := c.Status().Update(ctx, &n); err != nil {
			t.Fatal(err)
		}
	}
	setReady("node-a", corev1.ConditionFalse)
	expect("reporter NotReady", sync(), map[string][]string{
		"node-b": {"empty/orphan validate", "busy/selects-nothing validate", "stranded/stranded validate"},
	})
	// A new problem after the takeover is reported by the new reporter alone.
	if err := c.Create(ctx, badPolicy("empty", "later", "web")); err != nil {
		t.Fatal(err)
	}
	for _, s := range agents {
		s.markDirty(dirtyKey{kind: kindPolicy, namespace: "empty", name: "later"})
	}
	expect("new problem after the takeover", sync(), map[string][]string{"node-b": {"empty/later validate"}})

	// The reporter's Node deleted: node-c takes over, and busy/compiled, whose only pod
	// ran on node-b, is compiled on no Ready node any more.
	if err := c.Delete(ctx, testNode("node-b", corev1.ConditionTrue)); err != nil {
		t.Fatal(err)
	}
	expect("reporter deleted", sync(), map[string][]string{
		"node-c": {"empty/later validate", "empty/orphan validate", "busy/compiled validate", "busy/selects-nothing validate", "stranded/stranded validate"},
	})
}

// Node heartbeats and changes the agent does not read (other conditions, hostnames) do
// not trigger a sync; a change of readiness, labels or IP addresses does.
func TestOnlyNodeUpdatesThatMatterSync(t *testing.T) {
	withAddrs := func(n *corev1.Node, addrs ...corev1.NodeAddress) *corev1.Node {
		n.Status.Addresses = addrs
		return n
	}
	internal := corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "192.168.0.1"}
	base := func() *corev1.Node {
		n := withAddrs(testNode("n", corev1.ConditionTrue), internal, corev1.NodeAddress{Type: corev1.NodeHostName, Address: "n"})
		n.Labels = map[string]string{"zone": "a"}
		return n
	}
	for _, tc := range []struct {
		name   string
		change func(n *corev1.Node)
		want   bool
	}{
		{"heartbeat", func(n *corev1.Node) { n.Status.Conditions[0].LastHeartbeatTime = metav1.Now() }, false},
		{"another condition", func(n *corev1.Node) {
			n.Status.Conditions = append(n.Status.Conditions, corev1.NodeCondition{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionTrue})
		}, false},
		{"hostname", func(n *corev1.Node) { n.Status.Addresses[1].Address = "renamed" }, false},
		{"annotation", func(n *corev1.Node) { n.Annotations = map[string]string{"a": "b"} }, false},
		{"NotReady", func(n *corev1.Node) { n.Status.Conditions[0].Status = corev1.ConditionFalse }, true},
		{"Unknown", func(n *corev1.Node) { n.Status.Conditions[0].Status = corev1.ConditionUnknown }, true},
		{"label", func(n *corev1.Node) { n.Labels["zone"] = "b" }, true},
		{"new label", func(n *corev1.Node) { n.Labels["role"] = "edge" }, true},
		{"InternalIP", func(n *corev1.Node) { n.Status.Addresses[0].Address = "192.168.0.2" }, true},
		{"ExternalIP added", func(n *corev1.Node) {
			n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "203.0.113.1"})
		}, true},
	} {
		n := base()
		tc.change(n)
		if got := nodeUpdateMatters(event.UpdateEvent{ObjectOld: base(), ObjectNew: n}); got != tc.want {
			t.Errorf("%s: sync %v, want %v", tc.name, got, tc.want)
		}
	}
}
