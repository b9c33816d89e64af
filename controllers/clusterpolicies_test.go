package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	fakeclient "sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane/fake"
)

// fakeDiscovery answers for policy.networking.k8s.io/v1beta1: err, or a list holding
// clusternetworkpolicies when served, or NotFound.
type fakeDiscovery struct {
	mu     sync.Mutex
	served bool
	err    error
}

func (d *fakeDiscovery) set(served bool, err error) {
	d.mu.Lock()
	d.served, d.err = served, err
	d.mu.Unlock()
}

func (d *fakeDiscovery) ServerResourcesForGroupVersion(gv string) (*metav1.APIResourceList, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err != nil {
		return nil, d.err
	}
	if !d.served {
		return nil, apierrors.NewNotFound(schema.GroupResource{}, "")
	}
	return &metav1.APIResourceList{GroupVersion: gv, APIResources: []metav1.APIResource{{Name: "clusternetworkpolicies", Kind: "ClusterNetworkPolicy"}}}, nil
}

// fakeInformer is an informer with a store; nothing else is called by the watcher.
type fakeInformer struct {
	cache.Informer
	store toolscache.Store
}

func (f *fakeInformer) GetStore() toolscache.Store { return f.store }

// fakeInformers hands out one informer per start and counts starts and stops.
type fakeInformers struct {
	mu           sync.Mutex
	err          error
	gets, stops  int
	lastInformer *fakeInformer
}

func (f *fakeInformers) GetInformer(context.Context, client.Object, ...cache.InformerGetOption) (cache.Informer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gets++
	if f.err != nil {
		return nil, f.err
	}
	f.lastInformer = &fakeInformer{store: toolscache.NewStore(toolscache.MetaNamespaceKeyFunc)}
	return f.lastInformer, nil
}

func (f *fakeInformers) RemoveInformer(context.Context, client.Object) error {
	f.mu.Lock()
	f.stops++
	f.mu.Unlock()
	return nil
}

type fakeController struct{ watches int }

func (c *fakeController) Watch(source.TypedSource[reconcile.Request]) error {
	c.watches++
	return nil
}

func TestClusterPoliciesServed(t *testing.T) {
	d := &fakeDiscovery{}
	if served, err := ClusterPoliciesServed(d); served || err != nil {
		t.Errorf("group version not found: served %v, error %v; want false, nil", served, err)
	}
	d.set(true, nil)
	if served, err := ClusterPoliciesServed(d); !served || err != nil {
		t.Errorf("served: %v, %v; want true, nil", served, err)
	}
	d.set(false, apierrors.NewServiceUnavailable("etcd"))
	if _, err := ClusterPoliciesServed(d); err == nil || !apierrors.IsServiceUnavailable(err) {
		t.Errorf("error %v, want the discovery error wrapped", err)
	}
	other := discoveryFunc(func(string) (*metav1.APIResourceList, error) {
		return &metav1.APIResourceList{APIResources: []metav1.APIResource{{Name: "adminnetworkpolicies"}}}, nil
	})
	if served, err := ClusterPoliciesServed(other); served || err != nil {
		t.Errorf("group served without the resource: %v, %v; want false, nil", served, err)
	}
}

type discoveryFunc func(string) (*metav1.APIResourceList, error)

func (f discoveryFunc) ServerResourcesForGroupVersion(gv string) (*metav1.APIResourceList, error) {
	return f(gv)
}

// The watcher starts the informer when the kind is served, once, hands its store to
// the sync, stops it when the kind goes, and stops an informer that failed to start.
func TestClusterPolicyWatcherFollowsDiscovery(t *testing.T) {
	ctx := context.Background()
	d, inf, c := &fakeDiscovery{}, &fakeInformers{}, &fakeController{}
	s := &Syncer{Log: logr.Discard()}
	w := &clusterPolicyWatcher{syncer: s, discovery: d, informers: inf, ctrl: c, period: time.Hour, log: logr.Discard()}
	step := func(name string, wantErr bool, wantGets, wantStops, wantWatches int, wantStore, wantSwapped bool) {
		t.Helper()
		err := w.check(ctx)
		if (err != nil) != wantErr {
			t.Errorf("%s: error %v, want error %v", name, err, wantErr)
		}
		st, swapped := s.clusterPolicyStore()
		if inf.gets != wantGets || inf.stops != wantStops || c.watches != wantWatches || (st != nil) != wantStore || swapped != wantSwapped {
			t.Errorf("%s: informer started %d, stopped %d, watched %d, store %v, swapped %v; want %d, %d, %d, %v, %v",
				name, inf.gets, inf.stops, c.watches, st != nil, swapped, wantGets, wantStops, wantWatches, wantStore, wantSwapped)
		}
	}
	d.set(false, errors.New("connection refused"))
	step("discovery fails", true, 0, 0, 0, false, false)
	d.set(false, nil)
	step("not served", false, 0, 0, 0, false, false)
	d.set(true, nil)
	step("served", false, 1, 0, 1, true, true)
	step("still served", false, 1, 0, 1, true, false)
	d.set(true, errors.New("timeout"))
	step("discovery fails while served: the store stays", true, 1, 0, 1, true, false)
	d.set(false, nil)
	step("gone", false, 1, 1, 1, false, true)
	inf.err = errors.New("failed waiting for the informer to sync")
	d.set(true, nil)
	step("informer fails", true, 2, 2, 1, false, false)
	inf.err = nil
	step("informer starts on the retry", false, 3, 2, 2, true, true)
}

// The first sync waits for the watcher's first check, which lets it go even when the
// check fails (and retries soon).
func TestFirstSyncWaitsForTheFirstClusterPolicyCheckOnly(t *testing.T) {
	g := NewWithT(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d := &fakeDiscovery{}
	d.set(false, errors.New("connection refused"))
	c := fakeclient.NewClientBuilder().Build()
	dp := fake.New()
	s := &Syncer{Client: c, Dataplane: dp, NodeName: "n1", Log: logr.Discard(), kicks: make(chan kickEvent, 1)}
	s.clusterPoliciesPending.Store(true)
	if _, err := s.Reconcile(ctx, syncRequest); err != nil || s.Ready() {
		t.Fatalf("before the first check: error %v, ready %v; want no sync", err, s.Ready())
	}
	w := &clusterPolicyWatcher{syncer: s, discovery: d, informers: &fakeInformers{}, ctrl: &fakeController{}, period: time.Hour, log: logr.Discard()}
	go func() { _ = w.Start(ctx) }()
	g.Eventually(s.kicks).Should(Receive())
	g.Expect(s.clusterPoliciesPending.Load()).To(BeFalse())
	if _, err := s.Reconcile(ctx, syncRequest); err != nil || !s.Ready() {
		t.Fatalf("after the first check: error %v, ready %v; want the first ruleset", err, s.Ready())
	}
	// The failed check is retried within clusterPolicyRetry, not the hour.
	d.set(true, nil)
	g.Eventually(func() bool { st, _ := s.clusterPolicyStore(); return st != nil }, 3*clusterPolicyRetry).Should(BeTrue())
}

func testCNP(name string, priority int32) *cnp.ClusterNetworkPolicy {
	return &cnp.ClusterNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("uid-" + name), ResourceVersion: "1"},
		Spec: cnp.ClusterNetworkPolicySpec{Tier: cnp.AdminTier, Priority: priority,
			Subject: cnp.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "x"}}},
			Ingress: []cnp.ClusterNetworkPolicyIngressRule{{Action: cnp.ClusterNetworkPolicyRuleActionDeny,
				From: []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}}}},
		}}
}

// ClusterNetworkPolicy problems over two agents sharing one (fake) API server: the
// cluster-wide ones are reported once, by the first Ready node's agent, as Events on the
// policy naming the field, and taken over by the next Ready node; what a node's compile
// finds besides (a same-priority overlap) is reported by that node. The engine follows
// the store: set, updated, deleted, and emptied when the kind goes.
func TestClusterPolicyProblemsAreReportedByTheReporter(t *testing.T) {
	ctx := context.Background()
	c := fakeclient.NewClientBuilder().WithObjects(testNode("node-a", corev1.ConditionTrue), testNode("node-b", corev1.ConditionTrue)).Build()
	bad := testCNP("both-subjects", 10)
	bad.Spec.Subject.Pods = &cnp.NamespacedPod{} // the CRD refuses it; the agent must not trust that
	dns := testCNP("dns", 20)
	dns.Spec.Ingress = nil
	dns.Spec.Egress = []cnp.ClusterNetworkPolicyEgressRule{{Action: cnp.ClusterNetworkPolicyRuleActionAccept,
		To: []cnp.ClusterNetworkPolicyEgressPeer{{DomainNames: []cnp.DomainName{"example.com"}}}}}
	good := testCNP("good", 30)
	store := toolscache.NewStore(toolscache.MetaNamespaceKeyFunc)
	for _, p := range []*cnp.ClusterNetworkPolicy{bad, dns, good} {
		if err := store.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	nodes := []string{"node-a", "node-b"}
	agents := map[string]*Syncer{}
	recs := map[string]*namingRecorder{}
	for _, n := range nodes {
		recs[n] = &namingRecorder{FakeRecorder: events.NewFakeRecorder(100)}
		agents[n] = &Syncer{Client: c, Dataplane: fake.New(), NodeName: n, Recorder: recs[n], Log: logr.Discard()}
		agents[n].setClusterPolicyStore(store)
	}
	// sync runs every agent once and returns what each reported since the last call:
	// "<object> <type> <reason> <note>".
	taken := func() map[string][]string {
		out := map[string][]string{}
		for _, n := range nodes {
			r := recs[n]
			r.mu.Lock()
			for i, about := range r.about {
				out[n] = append(out[n], about+" "+r.notes[i])
			}
			r.about, r.notes = nil, nil
			r.mu.Unlock()
			drain(r.FakeRecorder)
			slices.Sort(out[n])
		}
		return out
	}
	sync := func() map[string][]string {
		t.Helper()
		for n, s := range agents {
			if _, err := s.Reconcile(ctx, syncRequest); err != nil {
				t.Fatalf("%s: Reconcile: %v", n, err)
			}
		}
		return taken()
	}
	got := sync()
	if len(got["node-b"]) != 0 {
		t.Errorf("node-b, not the reporter, reported %q", got["node-b"])
	}
	want := []string{
		"ClusterNetworkPolicy /both-subjects Warning CompileError spec.subject: exactly one of namespaces and pods must be set",
		"ClusterNetworkPolicy /dns Warning Unsupported spec.egress[0].to[0].domainNames: not supported yet",
	}
	if len(got["node-a"]) != len(want) {
		t.Fatalf("node-a reported %q, want %d events", got["node-a"], len(want))
	}
	for i, w := range want {
		e := got["node-a"][i]
		for _, part := range append(strings.SplitN(w, ": ", 2), "reported by node node-a,") {
			if !strings.Contains(e, part) {
				t.Errorf("event %q lacks %q", e, part)
			}
		}
	}
	if got := sync(); len(got["node-a"])+len(got["node-b"]) != 0 {
		t.Errorf("steady state: reported again: %q", got)
	}
	for _, n := range nodes {
		if agents[n].ClusterPolicy("good") == nil || agents[n].ClusterPolicy("dns") == nil {
			t.Errorf("%s: the engine lacks the policies of the store", n)
		}
	}

	// A problem the engine finds on one node only (two policies of one tier and
	// priority selecting its pods) is that node's to report, once.
	same := compiler.Problem{Kind: "ClusterNetworkPolicy", Name: "good", Field: "spec.priority", Err: fmt.Errorf("%w (dns)", compiler.ErrSamePriority)}
	agents["node-b"].report([]compiler.Problem{same})
	agents["node-b"].report([]compiler.Problem{same})
	if got := taken(); len(got["node-b"]) != 1 || !strings.Contains(got["node-b"][0], "SamePriority spec.priority") || !strings.Contains(got["node-b"][0], "(node node-b)") {
		t.Errorf("same priority: node-b reported %q, want one SamePriority Event naming node-b", got["node-b"])
	}

	// The reporter goes NotReady: node-b reports what stands.
	var n corev1.Node
	if err := c.Get(ctx, client.ObjectKey{Name: "node-a"}, &n); err != nil {
		t.Fatal(err)
	}
	n.Status.Conditions[0].Status = corev1.ConditionFalse
	if err := c.Status().Update(ctx, &n); err != nil {
		t.Fatal(err)
	}
	got = sync()
	if len(got["node-a"]) != 0 || len(got["node-b"]) != 2 || !strings.Contains(got["node-b"][0], "reported by node node-b,") {
		t.Errorf("takeover: reported %q, want node-b's 2 Events", got)
	}

	// Fixed, deleted, and the kind gone: the engine follows the store.
	fixed := bad.DeepCopy()
	fixed.Spec.Subject.Pods, fixed.ResourceVersion = nil, "2"
	if err := store.Update(fixed); err != nil {
		t.Fatal(err)
	}
	if err := store.Delete(dns); err != nil {
		t.Fatal(err)
	}
	for _, s := range agents {
		s.markDirty(dirtyKey{kind: kindClusterPolicy, name: "both-subjects"})
		s.markDirty(dirtyKey{kind: kindClusterPolicy, name: "dns"})
	}
	if got := sync(); len(got["node-a"])+len(got["node-b"]) != 0 {
		t.Errorf("after the fixes: reported %q", got)
	}
	for _, n := range nodes {
		s := agents[n]
		if p := s.ClusterPolicy("both-subjects"); p == nil || p.ResourceVersion != "2" || s.ClusterPolicy("dns") != nil || len(s.clusterValidated) != 0 {
			t.Errorf("%s: the engine does not hold the fixed policy without the deleted one", n)
		}
		s.setClusterPolicyStore(nil)
	}
	sync()
	for _, n := range nodes {
		if agents[n].ClusterPolicy("good") != nil || agents[n].ClusterPolicy("both-subjects") != nil {
			t.Errorf("%s: ClusterNetworkPolicies left after the kind went", n)
		}
	}
}
