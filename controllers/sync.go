// Package controllers holds the agent's reconciler: every Pod, Namespace, NetworkPolicy,
// ClusterNetworkPolicy and Node event folds into one coalesced sync that snapshots the
// informer caches, compiles the node's ruleset and hands it to the dataplane.
package controllers

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// syncRequest is the one key every event maps to: the workqueue deduplicates it, so a
// burst of events becomes one sync.
var syncRequest = reconcile.Request{NamespacedName: types.NamespacedName{Name: "sync"}}

// Syncer keeps the node's nftables table in step with the cluster.
//
// Event handlers note which objects changed and enqueue one sync; the sync reads just
// those objects from the cache and feeds them to the incremental compiler
// (compiler.Engine), which returns the new ruleset and the changes from the previous
// one; the dataplane sends only those. So a sync costs what the change costs, not what
// the cluster costs. The engine is created once, by the first sync, from a walk of the
// informer stores, and never rebuilt: every ResyncPeriod a sync walks the stores again
// and compares them with the engine (objects whose resourceVersion the engine holds are
// skipped, the others set, those the stores no longer hold deleted: a safety net for
// anything an event could have missed), and reads the kernel back to repair drift.
type Syncer struct {
	Client    client.Reader
	Dataplane dataplane.Dataplane
	NodeName  string
	// Table is the nftables table name (compiler default when empty).
	Table string
	// ResyncPeriod is how often the kernel is read back and drift repaired, and the
	// engine compared with the whole cache (0: never; see resync).
	ResyncPeriod time.Duration
	// Flows, when set, is the node's conntrack table: after every ruleset change the
	// established flows the new ruleset denies are marked revoked and dropped, so
	// revoking a policy also stops connections opened before (nil: revocation off).
	// A Revoker does it beside the sync (revoker.go), judging only the flows each
	// change concerns.
	Flows FlowTable
	// LocalAddrs returns this node's own addresses (nil: none); they decide which hook
	// (input, output or forward) a flow went through.
	LocalAddrs func() map[netip.Addr]bool
	// AfterFirstSync, when set, runs once the first ruleset is in the kernel.
	AfterFirstSync func()
	// Recorder reports problems as Kubernetes Events (optional).
	Recorder events.EventRecorder
	Log      logr.Logger

	// SCTPUnsupported tells that the kernel has no SCTP: policies with SCTP ports are
	// still compiled (their rules can never match) and reported as Unsupported
	// (compiler.Options.SCTPUnsupported).
	SCTPUnsupported bool
	// LogDenied adds the rate-limited nflog rule to the isolation chains
	// (compiler.Options.LogDenied); RunDenyLog reports what it logs.
	LogDenied bool
	// Audit puts the whole node in audit mode (compiler.Options.Audit): nothing is
	// dropped, and every connection the policies would deny is counted (and under
	// LogDenied logged as "would deny") instead. Revocation is off under Audit, whatever
	// Flows says: nothing is enforced, so nothing is to be revoked.
	Audit bool
	// ClusterPolicyCheckPeriod is how often discovery is asked whether the
	// ClusterNetworkPolicy CRD is served, so that one installed or removed while the
	// agent runs is followed without a restart (clusterpolicies.go); 0 leaves
	// ClusterNetworkPolicies unwatched. The manager's scheme must know them (cnp.Install).
	ClusterPolicyCheckPeriod time.Duration

	ready   atomic.Bool
	applied atomic.Pointer[ruleset.Ruleset] // the ruleset in the kernel (Applied)
	// applying is the ruleset of the Apply in progress (or of the last one): the kernel
	// may log packets in its new chains before Apply returns and applied is updated.
	applying   atomic.Pointer[ruleset.Ruleset]
	nodeEvents eventLimiter // Node Events already sent (nodeevents.go)
	mu         sync.Mutex
	lastVerify time.Time
	reported   map[string]bool // problems already reported as Events
	// validated are the problems compiler.Validate finds in each policy that has any,
	// whether or not this node compiles it (reporter.go).
	validated map[types.NamespacedName][]compiler.Problem
	// unvalidated are the policies set before the first ruleset, validated after it.
	unvalidated map[types.NamespacedName]bool
	// clusterValidated are the problems compiler.ValidateCluster finds in each
	// ClusterNetworkPolicy that has any: the same on every node, reported by the
	// reporter alone (reporter.go).
	clusterValidated map[string][]compiler.Problem

	// The ClusterNetworkPolicy informer's store (nil while the kind is not served) and
	// whether it changed since a sync compared it with the engine, set by the watcher
	// (clusterpolicies.go) and guarded by cnpMu.
	cnpMu      sync.Mutex
	cnpStore   toolscache.Store
	cnpSwapped bool
	// clusterPoliciesPending holds the first sync until the watcher has asked discovery
	// once, so that the first ruleset includes the ClusterNetworkPolicies in force.
	clusterPoliciesPending atomic.Bool
	// kicks asks for a sync from outside the watched kinds (the watcher's changes).
	kicks chan kickEvent

	// engine is the incremental compiler (nil until the first sync); gen the dataplane
	// Generation of the Apply of its last Flush (zero when that Apply failed), the base
	// of the changes of the next.
	engine *compiler.Engine
	gen    dataplane.Generation
	// dirty are the objects changed since the last sync (guarded by dirtyMu: event
	// handlers run concurrently with a sync).
	dirtyMu sync.Mutex
	dirty   map[dirtyKey]bool
	// revoker judges established flows after each change (nil: revocation off);
	// flushed is the engine's last ruleset, which its next changes start from.
	revoker *Revoker
	flushed *ruleset.Ruleset
}

type objectKind int

const (
	kindPod objectKind = iota
	kindNamespace
	kindPolicy
	kindNode
	kindClusterPolicy
)

type dirtyKey struct {
	kind            objectKind
	namespace, name string
}

// SetupWithManager registers the watches, and, with a ClusterPolicyCheckPeriod, the
// runnable that watches ClusterNetworkPolicies once their CRD is served
// (clusterpolicies.go). Only the cache and discovery are read; nothing is written to
// the API server except Events. Nodes matter twice: their readiness decides which
// agent reports the problems no node's compile reports (reporter.go), and their labels
// and addresses are what ClusterNetworkPolicy `nodes` peers match.
func (s *Syncer) SetupWithManager(mgr ctrl.Manager) error {
	if s.Audit {
		auditMode.Set(1)
	} else {
		auditMode.Set(0)
	}
	s.kicks = make(chan kickEvent, 1)
	if s.Flows != nil && !s.Audit {
		s.revoker = &Revoker{Flows: s.Flows, LocalAddrs: s.LocalAddrs, Log: s.Log.WithName("revoke")}
		if err := mgr.Add(manager.RunnableFunc(s.revoker.Run)); err != nil {
			return fmt.Errorf("adding the revoker: %w", err)
		}
	}
	c, err := ctrl.NewControllerManagedBy(mgr).
		Named("nftpolicy").
		Watches(&networkingv1.NetworkPolicy{}, s.track(kindPolicy)).
		Watches(&corev1.Pod{}, s.track(kindPod), builder.WithPredicates(predicate.Funcs{UpdateFunc: podUpdateMatters})).
		Watches(&corev1.Namespace{}, s.track(kindNamespace), builder.WithPredicates(predicate.Funcs{UpdateFunc: namespaceUpdateMatters})).
		Watches(&corev1.Node{}, s.track(kindNode), builder.WithPredicates(predicate.Funcs{UpdateFunc: nodeUpdateMatters})).
		WatchesRawSource(s.kickSource()).
		// One worker: the engine and the table are one state.
		WithOptions(controller.Options{MaxConcurrentReconciles: 1}).
		Build(s)
	if err != nil {
		return err
	}
	if s.ClusterPolicyCheckPeriod <= 0 {
		return nil
	}
	gvk := schema.GroupVersionKind{Group: cnp.GroupVersion.Group, Version: cnp.GroupVersion.Version, Kind: "ClusterNetworkPolicy"}
	if !mgr.GetScheme().Recognizes(gvk) {
		return fmt.Errorf("watching ClusterNetworkPolicies: the manager's scheme lacks %s (cnp.Install)", gvk)
	}
	dc, err := discovery.NewDiscoveryClientForConfigAndClient(mgr.GetConfig(), mgr.GetHTTPClient())
	if err != nil {
		return fmt.Errorf("creating the discovery client: %w", err)
	}
	s.clusterPoliciesPending.Store(true)
	return mgr.Add(&clusterPolicyWatcher{syncer: s, discovery: dc, informers: mgr.GetCache(), ctrl: c,
		period: s.ClusterPolicyCheckPeriod, log: s.Log.WithName("clusterpolicies")})
}

// track returns the event handler of one kind of object: it notes the object as
// changed and enqueues the one sync request, which the workqueue deduplicates, so a
// burst of events becomes one sync.
func (s *Syncer) track(kind objectKind) handler.EventHandler {
	mark := func(o client.Object, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		s.markDirty(dirtyKey{kind: kind, namespace: o.GetNamespace(), name: o.GetName()})
		q.Add(syncRequest)
	}
	return handler.Funcs{
		CreateFunc: func(_ context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			mark(e.Object, q)
		},
		UpdateFunc: func(_ context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			mark(e.ObjectNew, q)
		},
		DeleteFunc: func(_ context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			mark(e.Object, q)
		},
		GenericFunc: func(_ context.Context, e event.GenericEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			mark(e.Object, q)
		},
	}
}

func (s *Syncer) markDirty(k dirtyKey) {
	s.dirtyMu.Lock()
	defer s.dirtyMu.Unlock()
	if s.dirty == nil {
		s.dirty = map[dirtyKey]bool{}
	}
	s.dirty[k] = true
}

func (s *Syncer) takeDirty() map[dirtyKey]bool {
	s.dirtyMu.Lock()
	defer s.dirtyMu.Unlock()
	d := s.dirty
	s.dirty = nil
	return d
}

// podUpdateMatters filters out pod updates that change nothing enforcement reads —
// most pod updates are status conditions and container states.
func podUpdateMatters(e event.UpdateEvent) bool {
	o, ok1 := cachedModel(e.ObjectOld)
	n, ok2 := cachedModel(e.ObjectNew)
	if !ok1 || !ok2 {
		return true
	}
	return !o.Equivalent(n)
}

// nodeUpdateMatters passes the Node updates that change what the agent reads of a
// node: its readiness (reporter.go), its labels or its InternalIP and ExternalIP
// addresses (ClusterNetworkPolicy `nodes` peers). Status heartbeats, the bulk of Node
// updates, do not pass.
func nodeUpdateMatters(e event.UpdateEvent) bool {
	o, ok1 := e.ObjectOld.(*corev1.Node)
	n, ok2 := e.ObjectNew.(*corev1.Node)
	if !ok1 || !ok2 {
		return true
	}
	return nodeReady(o) != nodeReady(n) || !model.NodeFromAPI(o).Equivalent(model.NodeFromAPI(n))
}

// namespaceUpdateMatters passes namespace updates that change labels.
func namespaceUpdateMatters(e event.UpdateEvent) bool {
	return !maps.Equal(e.ObjectOld.GetLabels(), e.ObjectNew.GetLabels())
}

// Ready reports whether the first ruleset is in the kernel; the readiness probe uses it.
func (s *Syncer) Ready() bool { return s.ready.Load() }

// ReadyCheck is a healthz.Checker for readyz.
func (s *Syncer) ReadyCheck(_ *http.Request) error {
	if !s.ready.Load() {
		return fmt.Errorf("no ruleset applied yet")
	}
	return nil
}

// Reconcile runs one sync. The manager starts reconciling only after the caches have
// synced, so the first write never sees a partial cluster.
func (s *Syncer) Reconcile(ctx context.Context, _ reconcile.Request) (reconcile.Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.clusterPoliciesPending.Load() {
		// Before the first ruleset: the watcher's first check (one discovery request,
		// and the ClusterNetworkPolicies' list when the CRD is there) kicks a sync when
		// done, successful or not. A cluster without the CRD waits for one request.
		s.Log.V(1).Info("first sync waits for the first ClusterNetworkPolicy check")
		return reconcile.Result{}, nil
	}
	start := time.Now()
	verify := s.ResyncPeriod > 0 && time.Since(s.lastVerify) >= s.ResyncPeriod
	dirty := s.takeDirty()
	if err := s.update(ctx, dirty, verify); err != nil {
		// Nothing was lost: the objects stay dirty for the next sync.
		for k := range dirty {
			s.markDirty(k)
		}
		return reconcile.Result{}, fmt.Errorf("reading the cache: %w", err)
	}
	res, changes := s.engine.Flush()
	prevFlushed, old := s.flushed, s.applied.Load()
	s.flushed = res.Ruleset
	s.report(res.Problems)
	compiled := time.Now()

	opts := dataplane.ApplyOptions{ReadBack: verify, Changes: changes, BaseGeneration: s.gen}
	s.applying.Store(res.Ruleset)
	out, err := s.Dataplane.Apply(ctx, res.Ruleset, opts)
	s.gen = out.Generation
	syncDuration.WithLabelValues(phaseCompute).Observe(compiled.Sub(start).Seconds())
	if err != nil {
		syncFailures.Inc()
		s.Log.Error(err, "applying the ruleset failed; the previous ruleset stays in force and the next sync replaces the table")
		s.reportNodeFailure(err)
		return reconcile.Result{}, fmt.Errorf("applying the ruleset: %w", err)
	}
	committed := time.Now()
	kind := "incremental"
	if out.Full {
		kind = "full"
	}
	syncDuration.WithLabelValues(kind).Observe(committed.Sub(compiled).Seconds())
	s.noteApplied(res.Ruleset)
	if verify {
		s.lastVerify = time.Now()
	}
	if out.Drift {
		driftRepairs.Inc()
		s.Log.Info("kernel table differed from the applied ruleset; repaired", "ops", out.Ops)
	}
	if out.Ops > 0 && s.revoker != nil {
		// Handed over, not waited for: the revoker judges the flows the change
		// concerns in its own goroutine (revoker.go). The engine's changes lead from
		// the kernel's previous ruleset when the previous flush is what was applied;
		// after a failed Apply they do not, and the revoker diffs. A replaced table
		// or repaired drift may have let anything through meanwhile: every flow.
		var ch *ruleset.Changes
		if prevFlushed == old {
			ch = changes
		}
		s.revoker.Applied(old, res.Ruleset, ch, out.Full || out.Drift, committed)
	}
	st := res.Ruleset.Stats()
	rulesetSize.WithLabelValues("chains").Set(float64(st.Chains))
	rulesetSize.WithLabelValues("rules").Set(float64(st.Rules))
	rulesetSize.WithLabelValues("elements").Set(float64(st.Elements))
	if !s.ready.Swap(true) {
		s.Log.Info("first ruleset applied", "chains", st.Chains, "rules", st.Rules, "elements", st.Elements, "duration", time.Since(start))
		if s.validatePending() {
			s.report(res.Problems) // now with the problems of the policies validated late
		}
		if s.AfterFirstSync != nil {
			s.AfterFirstSync()
		}
	}
	s.Log.V(1).Info("synced", "kind", kind, "changed", len(dirty), "ops", out.Ops, "compute", compiled.Sub(start), "apply", time.Since(compiled))

	if s.ResyncPeriod > 0 {
		return reconcile.Result{RequeueAfter: s.ResyncPeriod - time.Since(s.lastVerify)}, nil
	}
	return reconcile.Result{}, nil
}

// update brings the engine up to date: by reading only the objects that changed, or,
// when resync is set (and on the first sync, which creates the engine), by comparing
// the whole cache with the engine (see resync).
func (s *Syncer) update(ctx context.Context, dirty map[dirtyKey]bool, resync bool) error {
	if s.engine == nil {
		s.engine = compiler.NewEngine(s.NodeName, s.compilerOptions())
		resync = true
	}
	// The ClusterNetworkPolicies come from the watcher's store, not the cache: reading
	// a kind through the cache would start an informer on it, served or not.
	cnps, swapped := s.clusterPolicyStore()
	if swapped || (resync && cnps != nil) {
		s.syncClusterPolicies(cnps)
	}
	if resync {
		return s.resync(ctx)
	}
	for k := range dirty {
		key := types.NamespacedName{Namespace: k.namespace, Name: k.name}
		var err error
		switch k.kind {
		case kindPod:
			var p *model.Pod
			if p, err = s.cachedPod(ctx, key); err == nil {
				// Events the first sync already covered (the initial list arrives as
				// create events, some after it) change nothing: skip them cheaply.
				if cur := s.engine.Pod(p.Namespace, p.Name); cur == nil || cur.Version != p.Version || p.Version == "" {
					s.engine.SetPod(p)
				}
			} else if apierrors.IsNotFound(err) {
				s.engine.DeletePod(k.namespace, k.name)
				err = nil
			}
		case kindNamespace:
			var ns corev1.Namespace
			if err = s.Client.Get(ctx, key, &ns, client.UnsafeDisableDeepCopy); err == nil {
				s.engine.SetNamespace(&model.Namespace{Name: ns.Name, Labels: ns.Labels})
			} else if apierrors.IsNotFound(err) {
				s.engine.DeleteNamespace(k.name)
				err = nil
			}
		case kindPolicy:
			np := &networkingv1.NetworkPolicy{}
			if err = s.Client.Get(ctx, key, np, client.UnsafeDisableDeepCopy); err == nil {
				if cur := s.engine.Policy(np.Namespace, np.Name); cur == nil || cur.ResourceVersion != np.ResourceVersion || np.ResourceVersion == "" {
					s.setPolicy(np)
				}
			} else if apierrors.IsNotFound(err) {
				s.deletePolicy(k.namespace, k.name)
				err = nil
			}
		case kindNode:
			var n corev1.Node
			if err = s.Client.Get(ctx, key, &n, client.UnsafeDisableDeepCopy); err == nil {
				s.setNode(&n)
			} else if apierrors.IsNotFound(err) {
				s.engine.DeleteNode(k.name)
				err = nil
			}
		case kindClusterPolicy:
			// No store: the kind went away after the event, and the swap that noted it
			// has emptied the engine.
			if cnps != nil {
				err = s.syncClusterPolicy(cnps, k.name)
			}
		}
		if err != nil {
			return fmt.Errorf("reading %s: %w", key, err)
		}
	}
	return nil
}

// resync makes the engine hold exactly what the cache holds, without rebuilding it: it
// walks the informer stores and sets only what differs — namespaces whose labels
// changed (SetNamespace compares them), policies and pods whose resourceVersion the
// engine does not hold (a pod whose update the event filter dropped as irrelevant only
// has its version noted) — and deletes what the stores no longer hold. The engine's
// indexes and compiled structure stay, so an unchanged cluster costs a lookup per
// object and a Flush with no changes.
func (s *Syncer) resync(ctx context.Context) error {
	e := s.engine
	var nsNames []string
	if err := s.each(ctx, &corev1.Namespace{}, &corev1.NamespaceList{}, func(o client.Object) {
		ns := o.(*corev1.Namespace)
		nsNames = append(nsNames, ns.Name)
		e.SetNamespace(&model.Namespace{Name: ns.Name, Labels: ns.Labels}) // no-op when unchanged
	}); err != nil {
		return err
	}
	seen := make(map[types.NamespacedName]bool)
	if err := s.each(ctx, &networkingv1.NetworkPolicy{}, &networkingv1.NetworkPolicyList{}, func(o client.Object) {
		np := o.(*networkingv1.NetworkPolicy)
		seen[types.NamespacedName{Namespace: np.Namespace, Name: np.Name}] = true
		if cur := e.Policy(np.Namespace, np.Name); cur == nil || cur.ResourceVersion != np.ResourceVersion || np.ResourceVersion == "" {
			s.setPolicy(np)
		}
	}); err != nil {
		return err
	}
	var gone []types.NamespacedName
	e.EachPolicy(func(np *networkingv1.NetworkPolicy) {
		if k := (types.NamespacedName{Namespace: np.Namespace, Name: np.Name}); !seen[k] {
			gone = append(gone, k)
		}
	})
	for _, k := range gone {
		s.deletePolicy(k.Namespace, k.Name)
	}
	clear(seen)
	if err := s.each(ctx, &corev1.Pod{}, &corev1.PodList{}, func(o client.Object) {
		seen[types.NamespacedName{Namespace: o.GetNamespace(), Name: o.GetName()}] = true
		// Converting 50k pods on every resync would cost tens of milliseconds.
		cur := e.Pod(o.GetNamespace(), o.GetName())
		if cur != nil && cur.Version == o.GetResourceVersion() && o.GetResourceVersion() != "" {
			return
		}
		// An update the event filter dropped (status conditions and the like) only
		// replaces the engine's object (SetPod of an equivalent pod), so that the next
		// resync skips the pod.
		if m, ok := cachedModel(o); ok {
			e.SetPod(m)
		}
	}); err != nil {
		return err
	}
	gone = gone[:0]
	e.EachPod(func(p *model.Pod) {
		if k := (types.NamespacedName{Namespace: p.Namespace, Name: p.Name}); !seen[k] {
			gone = append(gone, k)
		}
	})
	for _, k := range gone {
		e.DeletePod(k.Namespace, k.Name)
	}
	have := make(map[string]bool, len(nsNames))
	for _, n := range nsNames {
		have[n] = true
	}
	var goneNS []string
	e.EachNamespace(func(name string) {
		if !have[name] {
			goneNS = append(goneNS, name)
		}
	})
	for _, n := range goneNS {
		e.DeleteNamespace(n)
	}
	return s.resyncNodes(ctx)
}

// resyncNodes makes the engine's nodes those of the cache.
func (s *Syncer) resyncNodes(ctx context.Context) error {
	seen := map[string]bool{}
	if err := s.each(ctx, &corev1.Node{}, &corev1.NodeList{}, func(o client.Object) {
		n := o.(*corev1.Node)
		seen[n.Name] = true
		s.setNode(n)
	}); err != nil {
		return err
	}
	var gone []string
	s.engine.EachNode(func(n *model.Node) {
		if !seen[n.Name] {
			gone = append(gone, n.Name)
		}
	})
	for _, n := range gone {
		s.engine.DeleteNode(n)
	}
	return nil
}

// informerSource is what a controller-runtime cache offers besides client.Reader.
type informerSource interface {
	GetInformer(ctx context.Context, obj client.Object, opts ...cache.InformerGetOption) (cache.Informer, error)
}

// each calls fn for every cached object of obj's type. From an informer cache it
// walks the informer's store, which holds pointers: listing would copy every object
// (about 60 MB for 50k pods) on every resync. Objects are the cache's own: read only.
func (s *Syncer) each(ctx context.Context, obj client.Object, list client.ObjectList, fn func(client.Object)) error {
	if src, ok := s.Client.(informerSource); ok {
		inf, err := src.GetInformer(ctx, obj)
		if err != nil {
			return fmt.Errorf("informer for %T: %w", obj, err)
		}
		if st, ok := inf.(interface{ GetStore() toolscache.Store }); ok {
			for _, item := range st.GetStore().List() {
				if o, ok := item.(client.Object); ok {
					fn(o)
				}
			}
			return nil
		}
	}
	if err := s.Client.List(ctx, list, client.UnsafeDisableDeepCopy); err != nil {
		return fmt.Errorf("listing %T: %w", list, err)
	}
	return meta.EachListItem(list, func(o runtime.Object) error {
		if co, ok := o.(client.Object); ok {
			fn(co)
		}
		return nil
	})
}

// cachedPod reads one pod from the cache: from the informer's store, which holds
// CachedPods (TrimPod) that client.Get cannot return, or through the client from a
// cache without the transform. A pod the cache lacks is a NotFound error.
func (s *Syncer) cachedPod(ctx context.Context, key types.NamespacedName) (*model.Pod, error) {
	if src, ok := s.Client.(informerSource); ok {
		inf, err := src.GetInformer(ctx, &corev1.Pod{})
		if err != nil {
			return nil, fmt.Errorf("informer for pods: %w", err)
		}
		if st, ok := inf.(interface{ GetStore() toolscache.Store }); ok {
			item, exists, err := st.GetStore().GetByKey(key.String())
			if err != nil {
				return nil, fmt.Errorf("reading pod %s from the cache: %w", key, err)
			}
			if !exists {
				return nil, apierrors.NewNotFound(corev1.Resource("pods"), key.Name)
			}
			if m, ok := cachedModel(item); ok {
				return m, nil
			}
			return nil, fmt.Errorf("pod %s: unexpected %T in the cache", key, item)
		}
	}
	var p corev1.Pod
	if err := s.Client.Get(ctx, key, &p, client.UnsafeDisableDeepCopy); err != nil {
		return nil, err
	}
	return model.PodFromAPI(&p), nil
}

// problemSource tells why this node reports a problem.
type problemSource int

const (
	// fromCompile: this node's compile found it.
	fromCompile problemSource = iota
	// fromUncompiled: a problem of a policy no node compiles; this node is the reporter.
	fromUncompiled
	// fromCluster: a ClusterNetworkPolicy's problem, the same on every node; this node
	// is the reporter.
	fromCluster
)

// report logs each problem and records it as a Warning Event on the policy, once per
// distinct problem: a sync runs on every pod event, and the same complaint repeated on
// every one of them would flood the API server. problems are this node's compile's,
// less the ClusterNetworkPolicy problems every node's compile gives alike; on the
// reporter, those and the problems of policies no node compiles are added
// (reporter.go).
func (s *Syncer) report(problems []compiler.Problem) {
	ctx := context.Background()
	current := map[string]bool{}
	problems = s.withoutClusterWide(problems)
	sortProblems(problems)
	for _, p := range problems {
		s.reportProblem(ctx, p, fromCompile, current)
	}
	uncompiled, cluster, err := s.reporterProblems(ctx, problems)
	if err != nil {
		// Not reported now; they stay out of current, so the next sync tries again.
		s.Log.Error(err, "finding the problems the reporter reports")
	}
	sortProblems(uncompiled)
	for _, p := range uncompiled {
		s.reportProblem(ctx, p, fromUncompiled, current)
	}
	sortProblems(cluster)
	for _, p := range cluster {
		s.reportProblem(ctx, p, fromCluster, current)
	}
	s.reported = current
}

func sortProblems(ps []compiler.Problem) {
	sort.Slice(ps, func(i, j int) bool { return ps[i].Error() < ps[j].Error() })
}

// reportProblem logs and records p unless it was reported by the previous report, and
// notes it in current. A problem this node reports as the reporter and the same one
// from this node's compile share a key, so a policy whose pods come to this node is
// not reported again.
func (s *Syncer) reportProblem(ctx context.Context, p compiler.Problem, src problemSource, current map[string]bool) {
	msg := p.Error()
	current[msg] = true
	if s.reported[msg] {
		return
	}
	switch src {
	case fromUncompiled:
		s.Log.Error(p.Err, "policy compiled on no node is invalid; reported by this node, the first Ready one", "kind", p.Kind, "namespace", p.Namespace, "name", p.Name, "field", p.Field)
	case fromCluster:
		s.Log.Error(p.Err, "ClusterNetworkPolicy cannot be fully enforced; reported by this node, the first Ready one", "kind", p.Kind, "name", p.Name, "field", p.Field)
	default:
		s.Log.Error(p.Err, "policy cannot be fully compiled; the rest is enforced", "kind", p.Kind, "namespace", p.Namespace, "name", p.Name, "field", p.Field)
	}
	if s.Recorder == nil {
		return
	}
	ref := s.problemRef(ctx, p)
	if ref == nil {
		return // gone already, or a kind without Events
	}
	reason := "CompileError"
	switch {
	case errors.Is(p.Err, compiler.ErrUnsupported):
		reason = "Unsupported"
	case errors.Is(p.Err, compiler.ErrSamePriority):
		reason = "SamePriority"
	}
	switch src {
	case fromUncompiled:
		s.Recorder.Eventf(ref, nil, corev1.EventTypeWarning, reason, "Validate",
			"%s: %v (no node compiles this policy: it selects no pod on a Ready node; reported by node %s, the first Ready node)", p.Field, p.Err, s.NodeName)
	case fromCluster:
		s.Recorder.Eventf(ref, nil, corev1.EventTypeWarning, reason, "Validate",
			"%s: %v (the same on every node; reported by node %s, the first Ready node)", p.Field, p.Err, s.NodeName)
	default:
		s.Recorder.Eventf(ref, nil, corev1.EventTypeWarning, reason, "Compile", "%s: %v (node %s)", p.Field, p.Err, s.NodeName)
	}
}

// problemRef is the object an Event about p is recorded on; nil when it is gone. A
// ClusterNetworkPolicy is cluster-scoped: the recorder puts its Events in namespace
// "default", as kubectl does.
func (s *Syncer) problemRef(ctx context.Context, p compiler.Problem) *corev1.ObjectReference {
	switch p.Kind {
	case "NetworkPolicy":
		var np networkingv1.NetworkPolicy
		if err := s.Client.Get(ctx, types.NamespacedName{Namespace: p.Namespace, Name: p.Name}, &np, client.UnsafeDisableDeepCopy); err != nil {
			return nil
		}
		return &corev1.ObjectReference{Kind: "NetworkPolicy", APIVersion: "networking.k8s.io/v1",
			Namespace: np.Namespace, Name: np.Name, UID: np.UID, ResourceVersion: np.ResourceVersion}
	case ruleset.KindClusterNetworkPolicy:
		// From the engine, which holds what the store held at this sync: reading the
		// cache would start an informer on a kind that may not be served.
		if s.engine == nil {
			return nil
		}
		c := s.engine.ClusterPolicy(p.Name)
		if c == nil {
			return nil
		}
		return &corev1.ObjectReference{Kind: ruleset.KindClusterNetworkPolicy, APIVersion: cnp.GroupVersion.String(),
			Name: c.Name, UID: c.UID, ResourceVersion: c.ResourceVersion}
	}
	return nil
}
