package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/controllers"
	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/model"
)

// The emulated agents of the fan-out harness.
const (
	// FanoutNFTProtobuf is nftpolicy's watch path as the agent runs it: its manager's
	// cache (controllers.CacheOptions, the rest.Config's ContentType left empty so
	// controller-runtime asks for protobuf per built-in kind) feeding a compiler.Engine.
	FanoutNFTProtobuf = "nftpolicy-protobuf"
	// FanoutNFTJSON is the same with ContentType application/json on the rest.Config:
	// the "before" of the wire format.
	FanoutNFTJSON = "nftpolicy-json"
	// FanoutNFTNoGzip is FanoutNFTProtobuf with the rest.Config's DisableCompression:
	// the client does not offer gzip, so the API server does not compress the watch
	// streams (Kubernetes 1.37 gzips every flush of a WatchList watch — the informers'
	// — for clients that accept it: WatchListCompression, beta and on by default).
	FanoutNFTNoGzip = "nftpolicy-protobuf-nogzip"
	// FanoutKNP is kube-network-policies v0.8.0's watch path (cmd/main.go and
	// pkg/networkpolicy/controller.go): one client-go clientset with ContentType
	// protobuf and AcceptContentTypes "protobuf,json", a SharedInformerFactory with no
	// resync, informers on Pods, Namespaces and NetworkPolicies of all namespaces
	// (Nodes only with the alpha AdminNetworkPolicy flags, off by default), the pod
	// informer's transform clearing managedFields only, its pod-IP indexer, and its event
	// handlers (pods of other nodes dropped; a local pod or a policy queues a sync when
	// a policy selects it). What follows the queue — the nftables rules and the
	// userspace verdicts of nfqueue — is not reproduced: it costs no API traffic.
	FanoutKNP = "kube-network-policies"
)

// fanClient is one emulated agent: its watch connection and what it keeps.
type fanClient interface {
	// PodEvents counts the pod add, update and delete events delivered so far.
	PodEvents() int64
	Meter() *wireMeter
	// Stop ends its watches and waits for its goroutines.
	Stop()
}

func fanScheme() (*runtime.Scheme, error) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	// The agent's scheme knows ClusterNetworkPolicies (their informer only starts once
	// the CRD is served, which the fan-out cluster never does).
	if err := cnp.Install(scheme); err != nil {
		return nil, err
	}
	return scheme, nil
}

// nftClient emulates one nftpolicy agent without its kernel: the manager and cache the
// agent builds, every event handed to its own compiler.Engine as the agent's sync does
// (model.PodFromAPI, pod updates that change nothing enforcement reads skipped), and a
// coalesced Flush after each burst of events once the caches have synced.
type nftClient struct {
	meter  *wireMeter
	cancel context.CancelFunc
	done   chan struct{}
	wg     sync.WaitGroup

	mu     sync.Mutex
	engine *compiler.Engine
	kick   chan struct{}

	podEvents atomic.Int64
	flushes   atomic.Int64
}

func startNFTClient(ctx context.Context, base *rest.Config, scheme *runtime.Scheme, node, impl string) (_ *nftClient, err error) {
	c := &nftClient{meter: newWireMeter(), done: make(chan struct{}), kick: make(chan struct{}, 1),
		engine: compiler.NewEngine(node, compiler.Options{Table: compiler.DefaultTable, Revocation: true})}
	cfg := c.meter.instrument(base)
	switch impl {
	case FanoutNFTJSON:
		cfg.ContentType = "application/json"
	case FanoutNFTNoGzip:
		cfg.DisableCompression = true
	}
	log := logr.Discard()
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Logger:                 log,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Cache:                  controllers.CacheOptions(log),
	})
	if err != nil {
		return nil, fmt.Errorf("client %s: manager: %w", node, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	c.cancel = cancel
	defer func() {
		if err != nil {
			cancel()
		}
	}()
	type kind struct {
		obj client.Object
		h   toolscache.ResourceEventHandlerFuncs
	}
	kinds := []kind{
		{&corev1.Pod{}, toolscache.ResourceEventHandlerFuncs{
			// The agent's cache holds CachedPods (controllers.TrimPod): read
			// their models as its sync does.
			AddFunc: func(o any) {
				c.podEvents.Add(1)
				if m, ok := controllers.PodModel(o); ok {
					c.setPod(m)
				}
			},
			UpdateFunc: func(old, cur any) {
				c.podEvents.Add(1)
				o, ok1 := controllers.PodModel(old)
				n, ok2 := controllers.PodModel(cur)
				if ok2 && (!ok1 || !o.Equivalent(n)) {
					c.setPod(n)
				}
			},
			DeleteFunc: func(o any) {
				c.podEvents.Add(1)
				if m, err := meta.Accessor(tombstone(o)); err == nil {
					c.change(func(e *compiler.Engine) { e.DeletePod(m.GetNamespace(), m.GetName()) })
				}
			},
		}},
		{&corev1.Namespace{}, toolscache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { c.setNamespace(o.(*corev1.Namespace)) },
			UpdateFunc: func(_, cur any) { c.setNamespace(cur.(*corev1.Namespace)) },
			DeleteFunc: func(o any) {
				if m, err := meta.Accessor(tombstone(o)); err == nil {
					c.change(func(e *compiler.Engine) { e.DeleteNamespace(m.GetName()) })
				}
			},
		}},
		{&networkingv1.NetworkPolicy{}, toolscache.ResourceEventHandlerFuncs{
			AddFunc: func(o any) { c.change(func(e *compiler.Engine) { e.SetPolicy(o.(*networkingv1.NetworkPolicy)) }) },
			UpdateFunc: func(_, cur any) {
				c.change(func(e *compiler.Engine) { e.SetPolicy(cur.(*networkingv1.NetworkPolicy)) })
			},
			DeleteFunc: func(o any) {
				if m, err := meta.Accessor(tombstone(o)); err == nil {
					c.change(func(e *compiler.Engine) { e.DeletePolicy(m.GetNamespace(), m.GetName()) })
				}
			},
		}},
		{&corev1.Node{}, toolscache.ResourceEventHandlerFuncs{
			AddFunc: func(o any) { c.change(func(e *compiler.Engine) { e.SetNode(model.NodeFromAPI(o.(*corev1.Node))) }) },
			UpdateFunc: func(_, cur any) {
				c.change(func(e *compiler.Engine) { e.SetNode(model.NodeFromAPI(cur.(*corev1.Node))) })
			},
			DeleteFunc: func(o any) {
				if m, err := meta.Accessor(tombstone(o)); err == nil {
					c.change(func(e *compiler.Engine) { e.DeleteNode(m.GetName()) })
				}
			},
		}},
	}
	for _, k := range kinds {
		inf, err := mgr.GetCache().GetInformer(ctx, k.obj)
		if err != nil {
			return nil, fmt.Errorf("client %s: informer for %T: %w", node, k.obj, err)
		}
		if _, err := inf.AddEventHandler(k.h); err != nil {
			return nil, fmt.Errorf("client %s: handler for %T: %w", node, k.obj, err)
		}
	}
	c.wg.Go(func() {
		defer close(c.done)
		if err := mgr.Start(ctx); err != nil && ctx.Err() == nil {
			// Reported by the sync wait timing out; the harness has no log to write it to
			// per client.
			_ = err
		}
	})
	if !mgr.GetCache().WaitForCacheSync(ctx) {
		return nil, errors.Join(fmt.Errorf("client %s: caches did not sync", node), ctx.Err())
	}
	// As the agent: the first compile once the caches hold the cluster, then one per
	// burst of events.
	c.flush()
	c.wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-c.kick:
				c.flush()
			}
		}
	})
	return c, nil
}

func tombstone(o any) any {
	if t, ok := o.(toolscache.DeletedFinalStateUnknown); ok {
		return t.Obj
	}
	return o
}

func (c *nftClient) setPod(m *model.Pod) {
	c.change(func(e *compiler.Engine) { e.SetPod(m) })
}

func (c *nftClient) setNamespace(ns *corev1.Namespace) {
	c.change(func(e *compiler.Engine) { e.SetNamespace(&model.Namespace{Name: ns.Name, Labels: ns.Labels}) })
}

func (c *nftClient) change(fn func(*compiler.Engine)) {
	c.mu.Lock()
	fn(c.engine)
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

func (c *nftClient) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.engine.Flush()
	c.flushes.Add(1)
}

func (c *nftClient) PodEvents() int64  { return c.podEvents.Load() }
func (c *nftClient) Meter() *wireMeter { return c.meter }
func (c *nftClient) Stop() {
	c.cancel()
	c.wg.Wait()
}

// knpClient reproduces kube-network-policies' watch path (see FanoutKNP).
type knpClient struct {
	meter     *wireMeter
	stop      chan struct{}
	factory   informers.SharedInformerFactory
	podEvents atomic.Int64
	// syncs counts what would have queued a sync of its rules.
	syncs atomic.Int64
}

const knpPodIPIndex = "podIPKeyIndex"

func startKNPClient(ctx context.Context, base *rest.Config, node string) (_ *knpClient, err error) {
	c := &knpClient{meter: newWireMeter(), stop: make(chan struct{})}
	cfg := c.meter.instrument(base)
	// cmd/main.go: "use protobuf for better performance at scale".
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("knp client %s: %w", node, err)
	}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
	c.factory = informers.NewSharedInformerFactory(cs, 0)
	pods := c.factory.Core().V1().Pods()
	nss := c.factory.Core().V1().Namespaces()
	nps := c.factory.Networking().V1().NetworkPolicies()
	podInf := pods.Informer()
	if err := podInf.AddIndexers(toolscache.Indexers{knpPodIPIndex: func(obj any) ([]string, error) {
		pod, ok := obj.(*corev1.Pod)
		if !ok || pod.Spec.HostNetwork {
			return nil, nil
		}
		out := make([]string, 0, len(pod.Status.PodIPs))
		for _, ip := range pod.Status.PodIPs {
			out = append(out, ip.IP)
		}
		return out, nil
	}}); err != nil {
		return nil, fmt.Errorf("knp client %s: %w", node, err)
	}
	// "reduce memory usage only care about Labels and Status": managedFields only.
	if err := podInf.SetTransform(func(obj any) (any, error) {
		if a, err := meta.Accessor(obj); err == nil {
			a.SetManagedFields(nil)
		}
		return obj, nil
	}); err != nil {
		return nil, fmt.Errorf("knp client %s: %w", node, err)
	}
	npLister, podLister := nps.Lister(), pods.Lister()
	policiesFor := func(pod *corev1.Pod) int {
		list, err := npLister.NetworkPolicies(pod.Namespace).List(labels.Everything())
		if err != nil {
			return 0
		}
		n := 0
		for _, np := range list {
			if sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector); err == nil && sel.Matches(labels.Set(pod.Labels)) {
				n++
			}
		}
		return n
	}
	localPod := func(o any) {
		c.podEvents.Add(1)
		pod, ok := tombstone(o).(*corev1.Pod)
		if ok && pod.Spec.NodeName == node && policiesFor(pod) > 0 {
			c.syncs.Add(1)
		}
	}
	if _, err := podInf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc: localPod, UpdateFunc: func(_, cur any) { localPod(cur) }, DeleteFunc: localPod,
	}); err != nil {
		return nil, fmt.Errorf("knp client %s: %w", node, err)
	}
	policy := func(o any) {
		np, ok := tombstone(o).(*networkingv1.NetworkPolicy)
		if !ok {
			return
		}
		sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err != nil {
			return
		}
		list, err := podLister.Pods(np.Namespace).List(sel)
		if err != nil {
			return
		}
		for _, p := range list {
			if p.Spec.NodeName == node {
				c.syncs.Add(1)
				return
			}
		}
	}
	if _, err := nps.Informer().AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc: policy, UpdateFunc: func(_, cur any) { policy(cur) }, DeleteFunc: policy,
	}); err != nil {
		return nil, fmt.Errorf("knp client %s: %w", node, err)
	}
	_ = nss.Informer() // the controller reads namespaces through its lister
	c.factory.Start(c.stop)
	for typ, ok := range c.factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return nil, fmt.Errorf("knp client %s: %v did not sync: %w", node, typ, ctx.Err())
		}
	}
	return c, nil
}

func (c *knpClient) PodEvents() int64  { return c.podEvents.Load() }
func (c *knpClient) Meter() *wireMeter { return c.meter }
func (c *knpClient) Stop() {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	if c.factory != nil {
		c.factory.Shutdown()
	}
}

// startClients starts n emulated agents of one implementation, a few at a time (an
// agent's start is an initial list of the cluster: starting hundreds at once measures
// a thundering herd, not a fan-out), on nodes named by node(i).
func startClients(ctx context.Context, impl string, base *rest.Config, n, parallel int, node func(int) string) ([]fanClient, time.Duration, error) {
	scheme, err := fanScheme()
	if err != nil {
		return nil, 0, err
	}
	start := time.Now()
	out := make([]fanClient, n)
	errs := make([]error, n)
	sem := make(chan struct{}, max(parallel, 1))
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if ctx.Err() != nil {
				errs[i] = ctx.Err()
				return
			}
			switch impl {
			case FanoutNFTProtobuf, FanoutNFTJSON, FanoutNFTNoGzip:
				var c *nftClient
				c, errs[i] = startNFTClient(ctx, base, scheme, node(i), impl)
				if c != nil {
					out[i] = c
				}
			case FanoutKNP:
				var c *knpClient
				c, errs[i] = startKNPClient(ctx, base, node(i))
				if c != nil {
					out[i] = c
				}
			default:
				errs[i] = fmt.Errorf("unknown client %q", impl)
			}
		})
	}
	wg.Wait()
	var started []fanClient
	for _, c := range out {
		if c != nil {
			started = append(started, c)
		}
	}
	if err := errors.Join(errs...); err != nil {
		stopClients(started)
		return nil, 0, err
	}
	return started, time.Since(start), nil
}

func stopClients(cs []fanClient) {
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Go(c.Stop)
	}
	wg.Wait()
}
