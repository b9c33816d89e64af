package controllers

import (
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	fakeclient "sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/event"

	"github.com/go-logr/logr"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
)

func TestReportEmitsOneEventPerDistinctProblem(t *testing.T) {
	rec := events.NewFakeRecorder(10)
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "bad", UID: "u1"}}
	s := &Syncer{Recorder: rec, Log: logr.Discard(), NodeName: "n1", Client: fakeclient.NewClientBuilder().WithObjects(np).Build()}
	p := compiler.Problem{Kind: "NetworkPolicy", Namespace: "x", Name: "bad", Field: "spec.ingress[0].from[0].ipBlock", Err: errors.New(`cidr "nope": invalid`)}
	s.report([]compiler.Problem{p})
	s.report([]compiler.Problem{p}) // same problem on the next sync: no new Event
	if got := len(rec.Events); got != 1 {
		t.Fatalf("got %d events, want 1", got)
	}
	ev := <-rec.Events
	for _, want := range []string{"Warning", "CompileError", "spec.ingress[0].from[0].ipBlock", "n1"} {
		if !strings.Contains(ev, want) {
			t.Errorf("event %q lacks %q", ev, want)
		}
	}
	// Once fixed and broken again, it is reported again.
	s.report(nil)
	s.report([]compiler.Problem{p})
	if got := len(rec.Events); got != 1 {
		t.Fatalf("got %d events after recurrence, want 1", got)
	}
}

func TestUpdatesThatChangeNothingEnforcedAreFiltered(t *testing.T) {
	base := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "a", ResourceVersion: "1", Labels: map[string]string{"app": "a"}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.1"}}
	conditions := base.DeepCopy()
	conditions.ResourceVersion = "2"
	conditions.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	relabelled := base.DeepCopy()
	relabelled.Labels["app"] = "b"
	if podUpdateMatters(event.UpdateEvent{ObjectOld: &base, ObjectNew: conditions}) {
		t.Error("a conditions-only update triggers a sync")
	}
	if !podUpdateMatters(event.UpdateEvent{ObjectOld: &base, ObjectNew: relabelled}) {
		t.Error("a label change does not trigger a sync")
	}
	ns := corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "x", Labels: map[string]string{"a": "1"}}}
	annotated := ns.DeepCopy()
	annotated.Annotations = map[string]string{"note": "x"}
	if namespaceUpdateMatters(event.UpdateEvent{ObjectOld: &ns, ObjectNew: annotated}) {
		t.Error("an annotation-only namespace update triggers a sync")
	}
}
