package bench

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ResourcesReport holds the agent's resource use per scale.
type ResourcesReport struct {
	Runs []ResourceRun `json:"runs"`
}

// ResourceRun is one scale's resource measurements, on node1's agent alone.
type ResourceRun struct {
	Scale Scale `json:"scale"`
	// StartCPUms is the CPU time from start to ready (list, compile, full commit).
	StartCPUms float64 `json:"start_cpu_ms"`
	// RSSBytes, HWMBytes: resident set after the idle window and its peak so far;
	// HeapAllocBytes: go_memstats_heap_alloc_bytes then.
	RSSBytes       int64   `json:"rss_bytes"`
	HWMBytes       int64   `json:"hwm_bytes"`
	HeapAllocBytes float64 `json:"heap_alloc_bytes"`
	// MemStats are the agent's other go_memstats_* gauges then (heap_inuse,
	// heap_idle, heap_released, heap_sys, sys, next_gc, stack_inuse, ...), bytes.
	MemStats map[string]float64 `json:"memstats"`
	// IdleCPUPct is CPU use in % of one core over IdleSeconds without changes;
	// IdleAmortizedPct adds one periodic resync per minute (the default
	// --resync-period), which a short window usually misses.
	IdleSeconds      float64 `json:"idle_seconds"`
	IdleCPUPct       float64 `json:"idle_cpu_pct"`
	IdleAmortizedPct float64 `json:"idle_amortized_cpu_pct"`
	// Churn: pods created and deleted at ChurnRate per second for ChurnSeconds.
	ChurnRate    float64 `json:"churn_pods_per_second"`
	ChurnSeconds float64 `json:"churn_seconds"`
	ChurnWrites  int     `json:"churn_writes"`
	ChurnCPUms   float64 `json:"churn_cpu_ms"`
	ChurnCPUPct  float64 `json:"churn_cpu_pct"`
	ChurnSyncs   int     `json:"churn_syncs"`
	// ChurnSyncBusyPct is the share of the churn window the agent spent inside
	// syncs (compute + commit); ChurnAllocBytes what it allocated meanwhile
	// (go_memstats_alloc_bytes_total), ChurnGCs its garbage collections.
	ChurnSyncBusyPct float64 `json:"churn_sync_busy_pct"`
	ChurnAllocBytes  float64 `json:"churn_alloc_bytes"`
	ChurnGCs         float64 `json:"churn_gcs"`
	// Resync: the periodic read-back (recompile, dump of the kernel table, diff),
	// measured with a short --resync-period: CPU per resync beyond idle.
	ResyncPeriodSeconds float64 `json:"resync_period_seconds"`
	ResyncCount         int     `json:"resyncs"`
	ResyncCPUms         float64 `json:"resync_cpu_ms"`
	ResyncCommitMs      float64 `json:"resync_commit_ms"`
	// API requests of the agent for pods, namespaces and networkpolicies by verb
	// (apiserver_request_total): from start to ready, and from ready to the end
	// of the churn.
	StartRequests     map[string]float64 `json:"start_requests"`
	AfterSyncRequests map[string]float64 `json:"after_sync_requests"`
	// AgentRequests and AgentRequestsAfterSync are the agent's own count
	// (rest_client_requests_total by method) at ready and from ready to the end
	// of the churn: list and watch are GETs, so GETs after the sync are re-lists
	// or re-watches, attributable to the agent (the API server's counts include
	// its own internal informers).
	AgentRequests          map[string]float64 `json:"agent_requests"`
	AgentRequestsAfterSync map[string]float64 `json:"agent_requests_after_sync"`
	// OpenWatches is apiserver_longrunning_requests{verb="WATCH"} for those
	// resources once the agent is ready, minus before it started.
	OpenWatches float64 `json:"open_watches"`
}

var watchedResources = []string{"pods", "namespaces", "networkpolicies", "nodes", "clusternetworkpolicies"}

func (r *runner) resources(ctx context.Context, s Scale) (err error) {
	e, p := r.env, r.opts.Profile
	run := ResourceRun{Scale: s, ChurnRate: p.ChurnRate}
	defer func() { r.rep.Resource.Runs = append(r.rep.Resource.Runs, run) }()

	if err := e.flushNodes(ctx); err != nil {
		return err
	}
	api0, err := e.apiMetrics(ctx)
	if err != nil {
		return err
	}
	a, err := e.startAgent(ctx, e.n1)
	if err != nil {
		return err
	}
	// On an error path: the success path stops it below (stop is idempotent).
	defer func() { err = errors.Join(err, a.stop()) }()
	cpu, err := a.cpu()
	if err != nil {
		return err
	}
	run.StartCPUms = ms(cpu)
	api1, err := e.apiMetrics(ctx)
	if err != nil {
		return err
	}
	am1, err := a.metrics(ctx)
	if err != nil {
		return err
	}
	run.AgentRequests = am1.By("rest_client_requests_total", "method", nil)
	run.StartRequests = subMaps(requestCounts(api1, watchedResources...), requestCounts(api0, watchedResources...))
	run.OpenWatches = openWatches(api1) - openWatches(api0)
	if _, err := a.waitQuiet(ctx, 500*time.Millisecond, time.Minute); err != nil {
		return err
	}

	// Idle.
	idleCPU, idleWall, err := a.cpuOver(p.IdleWindow)
	if err != nil {
		return err
	}
	run.IdleSeconds = idleWall.Seconds()
	run.IdleCPUPct = ms(idleCPU) / 10 / run.IdleSeconds
	run.RSSBytes, _ = ProcRSS(a.Pid())
	run.HWMBytes, _ = ProcHWM(a.Pid())
	m, err := a.metrics(ctx)
	if err != nil {
		return err
	}
	run.HeapAllocBytes = m.Sum("go_memstats_heap_alloc_bytes", nil)
	run.MemStats = map[string]float64{}
	for _, k := range []string{"heap_inuse", "heap_idle", "heap_released", "heap_sys", "sys", "next_gc", "stack_inuse", "heap_objects"} {
		n := "go_memstats_" + k + "_bytes"
		if k == "heap_objects" {
			n = "go_memstats_heap_objects"
		}
		if m.Has(n) {
			run.MemStats[k] = m.Sum(n, nil)
		}
	}

	// Churn.
	mb, err := a.metrics(ctx)
	if err != nil {
		return err
	}
	before := syncStatsOf(mb)
	c2, err := a.cpuPrecise()
	if err != nil {
		return err
	}
	t1 := time.Now()
	writes, churnErr := r.churn(ctx, p.ChurnRate, p.ChurnWindow)
	run.ChurnSeconds = time.Since(t1).Seconds()
	c3, err := a.cpuPrecise()
	if err != nil {
		return err
	}
	run.ChurnWrites = writes
	run.ChurnCPUms = ms(c3 - c2)
	run.ChurnCPUPct = run.ChurnCPUms / 10 / run.ChurnSeconds
	after, err := a.waitQuiet(ctx, 300*time.Millisecond, time.Minute)
	if err != nil {
		return err
	}
	run.ChurnSyncs = int(after.ComputeCount - before.ComputeCount)
	d := after.sub(before)
	run.ChurnSyncBusyPct = (d.ComputeSum + d.FullSum + d.IncrementalSum) * 100 / run.ChurnSeconds
	ma, err := a.metrics(ctx)
	if err != nil {
		return err
	}
	run.ChurnAllocBytes = ma.Sum("go_memstats_alloc_bytes_total", nil) - mb.Sum("go_memstats_alloc_bytes_total", nil)
	run.ChurnGCs = ma.Sum("go_gc_duration_seconds_count", nil) - mb.Sum("go_gc_duration_seconds_count", nil)
	run.AgentRequestsAfterSync = subMaps(ma.By("rest_client_requests_total", "method", nil), run.AgentRequests)
	api2, err := e.apiMetrics(ctx)
	if err != nil {
		return err
	}
	run.AfterSyncRequests = subMaps(requestCounts(api2, watchedResources...), requestCounts(api1, watchedResources...))
	if err := errors.Join(churnErr, a.stop()); err != nil {
		return err
	}
	r.opts.logf("   %s: RSS %.0f MB, heap %.0f MB, idle CPU %.2f%%, churn %.0f pods/s: CPU %.1f%% (%d syncs, busy %.0f%%, %.0f MB allocated, %.0f GCs); agent requests at start %v, after sync %v",
		s, float64(run.RSSBytes)/1e6, run.HeapAllocBytes/1e6, run.IdleCPUPct, p.ChurnRate, run.ChurnCPUPct, run.ChurnSyncs, run.ChurnSyncBusyPct,
		run.ChurnAllocBytes/1e6, run.ChurnGCs, run.AgentRequests, run.AgentRequestsAfterSync)

	// Periodic resync.
	b, err := e.startAgent(ctx, e.n1, "--resync-period", p.ResyncPeriod.String())
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, b.stop()) }()
	if _, err := b.waitQuiet(ctx, 200*time.Millisecond, time.Minute); err != nil {
		return err
	}
	s0, err := b.syncStats(ctx)
	if err != nil {
		return err
	}
	resyncCPU, resyncWall, err := b.cpuOver(p.ResyncWindow)
	if err != nil {
		return err
	}
	s1, err := b.syncStats(ctx)
	if err != nil {
		return err
	}
	window := resyncWall.Seconds()
	d = s1.sub(s0)
	run.ResyncPeriodSeconds = p.ResyncPeriod.Seconds()
	run.ResyncCount = int(d.ComputeCount)
	if run.ResyncCount > 0 {
		idle := run.IdleCPUPct * 10 * window // ms of CPU the window costs without resyncs
		run.ResyncCPUms = max(0, ms(resyncCPU)-idle) / float64(run.ResyncCount)
		run.ResyncCommitMs = (d.FullSum + d.IncrementalSum) / float64(run.ResyncCount) * 1000
	}
	run.IdleAmortizedPct = run.IdleCPUPct + run.ResyncCPUms/600 // one resync per 60 000 ms
	r.opts.logf("   %s: periodic resync %.0f ms CPU each (%d in %.1fs); idle with one per minute %.2f%% of a core",
		s, run.ResyncCPUms, run.ResyncCount, window, run.IdleAmortizedPct)
	return b.stop()
}

// churn creates a pod and deletes the one created ten ticks earlier, rate times per
// second, for d: a steady replacement of rate pods per second. The pods are spread
// over node1 and virtual nodes, with labels the synthetic policies select. It
// returns the number of API writes.
func (r *runner) churn(ctx context.Context, rate float64, d time.Duration) (int, error) {
	e := r.env
	const live = 10
	var created []string
	writes := 0
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer tick.Stop()
	end := time.Now().Add(d)
	nsCount := synNamespaceCount(e.loaded)
	var err error
	for k := 0; time.Now().Before(end); k++ {
		select {
		case <-ctx.Done():
			return writes, ctx.Err()
		case <-tick.C:
		}
		e.extraSeq++
		name := fmt.Sprintf("churn-%d", e.extraSeq)
		ns := synNamespace(k % min(nsCount, 4))
		node := "node1"
		if k%2 == 1 {
			node = synNode(synPodsPerNode * (2 + k%8))
		}
		p, st := podObject(ns, name, node, synPodLabels(k), addrPlus(extraPodBase, e.extraSeq))
		if err = createPod(ctx, e.cs, p, st); err != nil {
			break
		}
		writes += 2
		created = append(created, ns+"/"+name)
		if len(created) > live {
			victim := created[0]
			created = created[1:]
			if err = deletePodKey(ctx, e, victim); err != nil {
				break
			}
			writes++
		}
	}
	for _, key := range created {
		err = errors.Join(err, deletePodKey(ctx, e, key))
	}
	return writes, err
}

func deletePodKey(ctx context.Context, e *env, key string) error {
	for i := range len(key) {
		if key[i] == '/' {
			return deletePod(ctx, e.cs, key[:i], key[i+1:])
		}
	}
	return fmt.Errorf("bad pod key %q", key)
}

func openWatches(m Metrics) float64 {
	var v float64
	for _, res := range watchedResources {
		v += m.Sum("apiserver_longrunning_requests", map[string]string{"verb": "WATCH", "resource": res})
	}
	return v
}

func subMaps(a, b map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range a {
		if d := v - b[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}
