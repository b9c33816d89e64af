package controllers

// ClusterNetworkPolicies (policy.networking.k8s.io), whose CRD a cluster may lack.
//
// Most clusters have no ClusterNetworkPolicy CRD, and one may be installed or removed
// while the agents run. controller-runtime's Watches fails at start on a kind the API
// server does not serve, and an informer on a kind that disappears retries its list
// forever, so the agent does not watch ClusterNetworkPolicies from the start: a small
// runnable, clusterPolicyWatcher, asks discovery (which needs no RBAC) at start and then
// every ClusterPolicyCheckPeriod whether policy.networking.k8s.io/v1beta1 serves
// clusternetworkpolicies (v1alpha2 objects are served through v1beta1 as well). When it
// does, the watcher gets the informer from the manager's cache, waits for its first
// list, and hands the controller an event source on it; the events mark the object
// dirty like those of the other kinds. When the kind is gone, the watcher stops the
// informer.
//
// What the sync holds follows the informer's store: the first sync after the store
// appeared (or went) compares the whole store with the engine, later ones read only
// the dirty objects. Until an informer has listed once, the engine's
// ClusterNetworkPolicies are left alone — a failed discovery request or a slow list
// drops nothing. When discovery says the kind is no longer served, no
// ClusterNetworkPolicy exists any more: the CRD's deletion deletes every object first,
// whose delete events normally emptied the engine already, and whatever is left is
// dropped.

import (
	"context"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/model"
)

// DefaultClusterPolicyCheckPeriod is how often the agent asks whether the
// ClusterNetworkPolicy CRD is served, unless told otherwise: a CRD installed while the
// agents run is enforced within this time, at the cost of one small discovery request
// per agent per period.
const DefaultClusterPolicyCheckPeriod = 10 * time.Second

const (
	// clusterPolicyResource is the resource discovery must list.
	clusterPolicyResource = "clusternetworkpolicies"
	// clusterPolicyRetry is the first wait after a failed check; it doubles up to the
	// check period.
	clusterPolicyRetry = time.Second
	// clusterPolicySyncTimeout bounds the wait for the informer's first list: a list
	// that cannot succeed (RBAC without clusternetworkpolicies) must not hold up the
	// first ruleset for ever.
	clusterPolicySyncTimeout = 30 * time.Second
)

// groupVersionDiscovery is the part of discovery.DiscoveryInterface the watcher uses.
type groupVersionDiscovery interface {
	ServerResourcesForGroupVersion(groupVersion string) (*metav1.APIResourceList, error)
}

// informerStarter is the part of cache.Informers the watcher uses.
type informerStarter interface {
	GetInformer(ctx context.Context, obj client.Object, opts ...cache.InformerGetOption) (cache.Informer, error)
	RemoveInformer(ctx context.Context, obj client.Object) error
}

// eventSourceWatcher is the part of controller.Controller the watcher uses.
type eventSourceWatcher interface {
	Watch(src source.TypedSource[reconcile.Request]) error
}

// ClusterPoliciesServed reports whether the API server serves ClusterNetworkPolicies
// in policy.networking.k8s.io/v1beta1. A group version the server does not know is
// not an error: the CRD is simply absent.
func ClusterPoliciesServed(d groupVersionDiscovery) (bool, error) {
	list, err := d.ServerResourcesForGroupVersion(cnp.GroupVersion.String())
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("discovery of %s: %w", cnp.GroupVersion, err)
	}
	for _, r := range list.APIResources {
		if r.Name == clusterPolicyResource {
			return true, nil
		}
	}
	return false, nil
}

// clusterPolicyWatcher starts and stops the ClusterNetworkPolicy informer as the CRD
// comes and goes (a manager Runnable).
type clusterPolicyWatcher struct {
	syncer    *Syncer
	discovery groupVersionDiscovery
	informers informerStarter
	ctrl      eventSourceWatcher
	period    time.Duration
	log       logr.Logger

	// watching: the informer is running and its events reach the controller.
	watching bool
}

// NeedLeaderElection is false: every agent enforces ClusterNetworkPolicies.
func (w *clusterPolicyWatcher) NeedLeaderElection() bool { return false }

// Start checks discovery until ctx ends: every period, sooner after a failure. The
// first check, successful or not, lets the first sync go ahead.
func (w *clusterPolicyWatcher) Start(ctx context.Context) error {
	retry := clusterPolicyRetry
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		wait := w.period
		if err := w.check(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			// Until a check succeeds, what the engine holds stays as it was.
			w.log.Error(err, "checking for ClusterNetworkPolicies failed; retrying", "in", retry)
			wait, retry = retry, min(2*retry, w.period)
		} else {
			retry = clusterPolicyRetry
		}
		if w.syncer.clusterPoliciesPending.Swap(false) {
			w.syncer.kick()
		}
		timer.Reset(wait)
	}
}

// check brings the informer in line with discovery.
func (w *clusterPolicyWatcher) check(ctx context.Context) error {
	served, err := ClusterPoliciesServed(w.discovery)
	if err != nil {
		return err
	}
	switch {
	case served && !w.watching:
		return w.startInformer(ctx)
	case !served && w.watching:
		w.stopInformer(ctx)
		w.log.Info("ClusterNetworkPolicies are no longer served (CRD removed); not watching them any more")
	}
	return nil
}

// startInformer gets the informer from the cache, waits for its first list, and only
// then hands its store to the sync and its events to the controller.
func (w *clusterPolicyWatcher) startInformer(ctx context.Context) error {
	obj := &cnp.ClusterNetworkPolicy{}
	syncCtx, cancel := context.WithTimeout(ctx, clusterPolicySyncTimeout)
	defer cancel()
	inf, err := w.informers.GetInformer(syncCtx, obj)
	if err != nil {
		// The informer may have been created and be running; stop it, or it would go on
		// listing (and failing) in the background until the next try.
		w.stopInformer(ctx)
		return fmt.Errorf("starting the ClusterNetworkPolicy informer: %w", err)
	}
	st, ok := inf.(interface{ GetStore() toolscache.Store })
	if !ok {
		w.stopInformer(ctx)
		return fmt.Errorf("the ClusterNetworkPolicy informer (%T) has no store", inf)
	}
	if err := w.ctrl.Watch(&source.Informer{Informer: inf, Handler: w.syncer.track(kindClusterPolicy)}); err != nil {
		w.stopInformer(ctx)
		return fmt.Errorf("watching ClusterNetworkPolicies: %w", err)
	}
	w.watching = true
	w.syncer.setClusterPolicyStore(st.GetStore())
	w.log.Info("ClusterNetworkPolicies are served; watching them", "count", len(st.GetStore().ListKeys()))
	return nil
}

func (w *clusterPolicyWatcher) stopInformer(ctx context.Context) {
	if err := w.informers.RemoveInformer(ctx, &cnp.ClusterNetworkPolicy{}); err != nil {
		// Only a type missing from the scheme fails here: a bug, not a state.
		w.log.Error(err, "stopping the ClusterNetworkPolicy informer")
	}
	if w.watching {
		w.watching = false
		w.syncer.setClusterPolicyStore(nil)
	}
}

// WatchErrorHandler is the informers' watch error handler: a list or watch failing
// because the kind is not served any more (a CRD removed; the ClusterNetworkPolicy
// watcher stops that informer within its check period) is logged at V(1) instead of as
// an error on every retry; everything else goes to client-go's default handler.
func WatchErrorHandler(log logr.Logger) toolscache.WatchErrorHandlerWithContext {
	return func(ctx context.Context, r *toolscache.Reflector, err error) {
		if apierrors.IsNotFound(err) || meta.IsNoMatchError(err) {
			log.V(1).Info("watch failed: the kind is not served (CRD removed?)", "reflector", r.Name(), "type", r.TypeDescription(), "error", err.Error())
			return
		}
		toolscache.DefaultWatchErrorHandler(ctx, r, err)
	}
}

// setClusterPolicyStore hands the sync the store of a synced informer (nil: the kind is
// no longer served) and asks for a sync, which compares it with the engine.
func (s *Syncer) setClusterPolicyStore(st toolscache.Store) {
	s.cnpMu.Lock()
	s.cnpStore, s.cnpSwapped = st, true
	s.cnpMu.Unlock()
	s.kick()
}

// clusterPolicyStore returns the current store and whether it changed since the last
// call.
func (s *Syncer) clusterPolicyStore() (toolscache.Store, bool) {
	s.cnpMu.Lock()
	defer s.cnpMu.Unlock()
	swapped := s.cnpSwapped
	s.cnpSwapped = false
	return s.cnpStore, swapped
}

// kickEvent is a request for a sync that no object change carries.
type kickEvent = event.TypedGenericEvent[struct{}]

// kick asks for one sync. The channel holds one request: a kick while one is pending
// adds nothing, since the pending one's sync reads everything marked before it.
func (s *Syncer) kick() {
	if s.kicks == nil {
		return
	}
	select {
	case s.kicks <- kickEvent{}:
	default:
	}
}

// kickSource turns kicks into the sync request.
func (s *Syncer) kickSource() source.Source {
	return source.Channel(s.kicks, handler.TypedFuncs[struct{}, reconcile.Request]{
		GenericFunc: func(_ context.Context, _ kickEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			q.Add(syncRequest)
		},
	})
}

// syncClusterPolicies makes the engine hold what the store holds (st nil: nothing, the
// kind being gone), setting the policies whose resourceVersion it does not hold.
func (s *Syncer) syncClusterPolicies(st toolscache.Store) {
	seen := map[string]bool{}
	if st != nil {
		for _, item := range st.List() {
			p, ok := item.(*cnp.ClusterNetworkPolicy)
			if !ok {
				continue
			}
			seen[p.Name] = true
			s.updateClusterPolicy(p)
		}
	}
	var gone []string
	s.engine.EachClusterPolicy(func(p *cnp.ClusterNetworkPolicy) {
		if !seen[p.Name] {
			gone = append(gone, p.Name)
		}
	})
	if st == nil && len(gone) > 0 {
		s.Log.Info("dropping the ClusterNetworkPolicies left from a kind no longer served", "policies", gone)
	}
	for _, name := range gone {
		s.deleteClusterPolicy(name)
	}
}

// syncClusterPolicy reads one ClusterNetworkPolicy from the store into the engine.
func (s *Syncer) syncClusterPolicy(st toolscache.Store, name string) error {
	item, exists, err := st.GetByKey(name) // cluster-scoped: the key is the name
	if err != nil {
		return fmt.Errorf("reading ClusterNetworkPolicy %s: %w", name, err)
	}
	p, ok := item.(*cnp.ClusterNetworkPolicy)
	if !exists || !ok {
		s.deleteClusterPolicy(name)
		return nil
	}
	s.updateClusterPolicy(p)
	return nil
}

// updateClusterPolicy hands a policy to the engine unless it holds that version.
func (s *Syncer) updateClusterPolicy(p *cnp.ClusterNetworkPolicy) {
	if cur := s.engine.ClusterPolicy(p.Name); cur != nil && cur.ResourceVersion == p.ResourceVersion && p.ResourceVersion != "" {
		return
	}
	s.engine.SetClusterPolicy(p)
	problems := compiler.ValidateCluster(p, s.clusterValidateOptions())
	if len(problems) == 0 {
		delete(s.clusterValidated, p.Name)
		return
	}
	if s.clusterValidated == nil {
		s.clusterValidated = map[string][]compiler.Problem{}
	}
	s.clusterValidated[p.Name] = problems
}

func (s *Syncer) deleteClusterPolicy(name string) {
	s.engine.DeleteClusterPolicy(name)
	delete(s.clusterValidated, name)
}

// clusterValidateOptions are the options of the cluster-wide validation: this node's,
// less what depends on this node's kernel (SCTP), whose problem each node without SCTP
// reports from its own compile.
func (s *Syncer) clusterValidateOptions() compiler.Options {
	o := s.compilerOptions()
	o.SCTPUnsupported = false
	return o
}

// setNode hands a node to the engine unless it holds that version (heartbeats change
// the version every few seconds; the resync then converts it, and SetNode finds that
// nothing it reads changed).
func (s *Syncer) setNode(n *corev1.Node) {
	if cur := s.engine.Node(n.Name); cur != nil && cur.Version == n.ResourceVersion && n.ResourceVersion != "" {
		return
	}
	s.engine.SetNode(model.NodeFromAPI(n))
}

// ClusterPolicy returns the ClusterNetworkPolicy of that name as the agent's compiler
// holds it (nil when it holds none). The object is shared: read only.
func (s *Syncer) ClusterPolicy(name string) *cnp.ClusterNetworkPolicy {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.engine == nil {
		return nil
	}
	return s.engine.ClusterPolicy(name)
}

// Node returns the node of that name as the agent's compiler holds it (nil when it
// holds none). The node is shared: read only.
func (s *Syncer) Node(name string) *model.Node {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.engine == nil {
		return nil
	}
	return s.engine.Node(name)
}
