package controllers

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	fakeclient "sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane/fake"
	"github.com/nftpolicy/nftpolicy/pkg/tracer"
)

// A mode annotation with an unknown value is a compile problem that reaches the
// policy's Events like any other, naming the annotation, for a NetworkPolicy and a
// ClusterNetworkPolicy alike, and the policies are enforced: a typo must not open
// what the policy closes. The audited one next to them is not enforced.
func TestUnknownModeIsReportedAndEnforced(t *testing.T) {
	ctx := context.Background()
	db := hostilePod("app", "db", "10.0.0.2", map[string]string{"app": "db"})
	cache := hostilePod("app", "cache", "10.0.0.5", map[string]string{"app": "cache"})
	web := hostilePod("app", "web", "10.0.0.3", map[string]string{"app": "web"})
	typo := hostilePolicy("app", "typo", map[string]string{"app": "db"})
	typo.Annotations = map[string]string{compiler.AuditAnnotation: "Audit"}
	audited := hostilePolicy("app", "audited", map[string]string{"app": "cache"})
	audited.Annotations = map[string]string{compiler.AuditAnnotation: compiler.ModeAudit}
	c := fakeclient.NewClientBuilder().WithObjects(testNode("n1", corev1.ConditionTrue),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "app"}}, db, cache, web, typo, audited).Build()
	guard := testCNP("guard", 10)
	guard.Spec.Subject.Namespaces = &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "other"}}
	guard.Annotations = map[string]string{compiler.AuditAnnotation: "dry-run"}
	store := toolscache.NewStore(toolscache.MetaNamespaceKeyFunc)
	if err := store.Add(guard); err != nil {
		t.Fatal(err)
	}
	rec := &namingRecorder{FakeRecorder: events.NewFakeRecorder(100)}
	s := &Syncer{Client: c, Dataplane: fake.New(), NodeName: "n1", Recorder: rec, Log: logr.Discard()}
	s.setClusterPolicyStore(store)
	if _, err := s.Reconcile(ctx, syncRequest); err != nil {
		t.Fatal(err)
	}
	field := "metadata.annotations[" + compiler.AuditAnnotation + "]"
	reported := map[string]bool{}
	rec.mu.Lock()
	for i, about := range rec.about {
		if strings.Contains(rec.notes[i], field) {
			reported[about] = true
		}
	}
	rec.mu.Unlock()
	for _, want := range []string{"NetworkPolicy app/typo", "ClusterNetworkPolicy /guard"} {
		if !reported[want] {
			t.Errorf("no Event about %s naming %s; events about %q", want, field, rec.about)
		}
	}
	if reported["NetworkPolicy app/audited"] {
		t.Error("the audited policy was reported")
	}
	rs := s.Applied()
	for dst, wantAllowed := range map[string]bool{"10.0.0.2": false, "10.0.0.5": true} {
		if got := tracer.Trace(rs, tracer.Packet{Src: netip.MustParseAddr("10.0.0.3"), Dst: netip.MustParseAddr(dst), Proto: 6, DPort: 8080}).Allowed(); got != wantAllowed {
			t.Errorf("web -> %s allowed %v, want %v", dst, got, wantAllowed)
		}
	}
}
