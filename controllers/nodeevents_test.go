package controllers

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/tools/events"
	fakeclient "sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/nftpolicy/nftpolicy/pkg/dataplane/fake"
)

// drain returns the events recorded so far.
func drain(rec *events.FakeRecorder) []string {
	var out []string
	for {
		select {
		case e := <-rec.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

// A failing apply records one Warning Event on the Node per distinct error per
// NodeEventInterval: repeats are suppressed, a different error is reported, and the
// same error is reported again once the interval has passed.
func TestApplyFailureIsANodeEventRateLimited(t *testing.T) {
	rec := events.NewFakeRecorder(20)
	dp := fake.New()
	now := time.Unix(1000, 0)
	s := &Syncer{Client: fakeclient.NewClientBuilder().Build(), Dataplane: dp, NodeName: "node-a", Recorder: rec, Log: logr.Discard()}
	s.nodeEvents.now = func() time.Time { return now }
	ctx := context.Background()
	fail := func(msg string) {
		t.Helper()
		dp.FailNextApply(errors.New(msg))
		if _, err := s.Reconcile(ctx, syncRequest); err == nil || !strings.Contains(err.Error(), msg) {
			t.Fatalf("Reconcile with a failing dataplane: %v, want the failure", err)
		}
	}
	fail("netlink: EPERM")
	got := drain(rec)
	if len(got) != 1 {
		t.Fatalf("after one failure: events %q, want 1", got)
	}
	for _, want := range []string{"Warning", "DataplaneError", "netlink: EPERM"} {
		if !strings.Contains(got[0], want) {
			t.Errorf("event %q lacks %q", got[0], want)
		}
	}
	fail("netlink: EPERM")
	now = now.Add(NodeEventInterval - time.Second)
	fail("netlink: EPERM")
	if got := drain(rec); len(got) != 0 {
		t.Errorf("repeats within the interval: events %q, want none", got)
	}
	fail("netlink: ENOBUFS")
	if got := drain(rec); len(got) != 1 || !strings.Contains(got[0], "ENOBUFS") {
		t.Errorf("a different error: events %q, want one naming it", got)
	}
	now = now.Add(2 * time.Second)
	fail("netlink: EPERM")
	if got := drain(rec); len(got) != 1 || !strings.Contains(got[0], "EPERM") {
		t.Errorf("the same error after the interval: events %q, want one", got)
	}
	// A successful apply records nothing and the applied ruleset becomes visible.
	if _, err := s.Reconcile(ctx, syncRequest); err != nil {
		t.Fatal(err)
	}
	if got := drain(rec); len(got) != 0 {
		t.Errorf("a successful apply recorded %q", got)
	}
	if s.Applied() == nil || dp.Table() == nil || s.Applied().Table != dp.Table().Table {
		t.Errorf("Applied() = %v after a successful apply (kernel %v)", s.Applied(), dp.Table())
	}
}

// The Event names the Node the way kubectl describe node finds it.
func TestNodeEventReference(t *testing.T) {
	rec := &refRecorder{}
	s := &Syncer{NodeName: "node-b", Recorder: rec}
	s.reportNodeFailure(errors.New("boom"))
	if rec.ref == nil || rec.ref.Kind != "Node" || rec.ref.Name != "node-b" || string(rec.ref.UID) != "node-b" || rec.ref.Namespace != "" {
		t.Errorf("regarding = %+v, want Node node-b", rec.ref)
	}
}

// refRecorder keeps the object the last Event was about.
type refRecorder struct {
	events.EventRecorder // nil: only Eventf is used
	ref                  *corev1.ObjectReference
}

func (r *refRecorder) Eventf(regarding, _ runtime.Object, _, _, _, _ string, _ ...interface{}) {
	r.ref, _ = regarding.(*corev1.ObjectReference)
}

// With SCTPUnsupported, a policy with an SCTP port gets one Warning "Unsupported" Event
// naming the field, and its rules are still compiled; without it, none.
func TestSCTPUnsupportedEvent(t *testing.T) {
	sctp, tcp := corev1.ProtocolSCTP, corev1.ProtocolTCP
	p := intstr.FromInt32(9)
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "uses-sctp", UID: "u"},
		Spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{
			{Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p}, {Protocol: &sctp, Port: &p}}}}}}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "x"}}
	for _, unsupported := range []bool{true, false} {
		rec := events.NewFakeRecorder(10)
		s := &Syncer{Client: fakeclient.NewClientBuilder().WithObjects(np, ns).Build(), Dataplane: fake.New(), NodeName: "n",
			Recorder: rec, Log: logr.Discard(), SCTPUnsupported: unsupported}
		for range 2 { // the second sync reports nothing new
			s.markDirty(dirtyKey{kind: kindPolicy, namespace: "x", name: "uses-sctp"})
			if _, err := s.Reconcile(context.Background(), syncRequest); err != nil {
				t.Fatal(err)
			}
		}
		got := drain(rec)
		if !unsupported {
			if len(got) != 0 {
				t.Errorf("kernel with SCTP: events %q, want none", got)
			}
			continue
		}
		if len(got) != 1 {
			t.Fatalf("kernel without SCTP: events %q, want 1", got)
		}
		for _, want := range []string{"Warning", "Unsupported", "spec.ingress[0].ports[1].protocol", "SCTP"} {
			if !strings.Contains(got[0], want) {
				t.Errorf("event %q lacks %q", got[0], want)
			}
		}
	}
}

func TestProtocolsListSCTP(t *testing.T) {
	const without = "protocol  size sockets  memory press maxhdr  slab module     cl co di ac io in de sh ss gs se re sp bi br ha uh gp em\nUDP       1024      0       0   NI       0   yes  kernel      y  y  y  n  y  y  y  n  y  y  y  y  y  n  n  y  y  y  n\nTCP       2432      1       1   no     320   yes  kernel      y  y  y  y  y  y  y  y  y  y  y  y  y  n  y  y  y  y  y\n"
	if protocolsListSCTP(without) {
		t.Error("SCTP found in a list without it")
	}
	if !protocolsListSCTP(without + "SCTPv6    1600      0      -1   NI       0   yes  sctp        y  y  y  y  y  y  y  y  y  y  y  y  y  n  y  y  y  y  y\n") {
		t.Error("SCTPv6 not found")
	}
}
