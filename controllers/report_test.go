package controllers

import (
	"errors"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"

	"github.com/go-logr/logr"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/model"
)

func TestReportEmitsOneEventPerDistinctProblem(t *testing.T) {
	rec := events.NewFakeRecorder(10)
	s := &Syncer{Recorder: rec, Log: logr.Discard(), NodeName: "n1"}
	snap := &model.Snapshot{Policies: []*networkingv1.NetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "bad", UID: "u1"}}}}
	p := compiler.Problem{Kind: "NetworkPolicy", Namespace: "x", Name: "bad", Field: "spec.ingress[0].from[0].ipBlock", Err: errors.New(`cidr "nope": invalid`)}
	s.report(snap, []compiler.Problem{p})
	s.report(snap, []compiler.Problem{p}) // same problem on the next sync: no new Event
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
	s.report(snap, nil)
	s.report(snap, []compiler.Problem{p})
	if got := len(rec.Events); got != 1 {
		t.Fatalf("got %d events after recurrence, want 1", got)
	}
}
