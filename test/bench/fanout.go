package bench

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/nftpolicy/nftpolicy/test/lab"
)

// FanoutProfile sizes the fan-out group: many emulated agents watching one API
// server while pods churn.
type FanoutProfile struct {
	// Pods are the cluster sizes, in increasing order (one policy per 10 pods).
	Pods []int `json:"pods"`
	// Clients lists, per implementation (FanoutNFTProtobuf, ...), the numbers of
	// emulated agents to run at every size.
	Clients map[string][]int `json:"clients"`
	// ChurnWrites pod writes (a multiple of 4: whole lifecycles) at ChurnRate per
	// second while the agents watch.
	ChurnWrites int     `json:"churn_writes"`
	ChurnRate   float64 `json:"churn_writes_per_second"`
	// StartParallel agents start at a time.
	StartParallel int `json:"start_parallel"`
}

// The implementations in the order they are run and reported.
var fanoutImpls = []string{FanoutNFTProtobuf, FanoutNFTJSON, FanoutNFTNoGzip, FanoutKNP}

func fullFanout() FanoutProfile {
	return FanoutProfile{
		Pods: []int{1000, 5000},
		Clients: map[string][]int{
			FanoutNFTProtobuf: {25, 50, 100, 200},
			FanoutNFTJSON:     {25, 100},
			FanoutNFTNoGzip:   {25, 100},
			// Two sizes are enough for bytes and memory per agent; every agent keeps whole
			// pods, so 200 of them at 5k pods would need gigabytes of this machine.
			FanoutKNP: {25, 50},
		},
		ChurnWrites: 400, ChurnRate: 40, StartParallel: 10,
	}
}

func quickFanout() FanoutProfile {
	return FanoutProfile{
		Pods:        []int{500, 2000},
		Clients:     map[string][]int{FanoutNFTProtobuf: {10, 40}, FanoutNFTJSON: {10, 40}, FanoutNFTNoGzip: {10, 40}, FanoutKNP: {10, 20}},
		ChurnWrites: 200, ChurnRate: 40, StartParallel: 10,
	}
}

func tinyFanout() FanoutProfile {
	return FanoutProfile{
		Pods:        []int{40, 80},
		Clients:     map[string][]int{FanoutNFTProtobuf: {2, 4}, FanoutNFTJSON: {2, 4}, FanoutNFTNoGzip: {2, 4}, FanoutKNP: {2}},
		ChurnWrites: 20, ChurnRate: 50, StartParallel: 4,
	}
}

func (p FanoutProfile) maxClients() int {
	n := 0
	for _, cs := range p.Clients {
		for _, c := range cs {
			n = max(n, c)
		}
	}
	return n
}

// FanoutReport is the fan-out group's numbers.
type FanoutReport struct {
	Profile FanoutProfile `json:"profile"`
	// PodBytes is the size of one background pod object as the API server sends it
	// (managedFields included), per encoding.
	PodBytes map[string]int `json:"pod_bytes"`
	Points   []FanoutPoint  `json:"points"`
	// Wire is what the first nftpolicy agent (protobuf) of the first point received,
	// per request kind: the evidence of the wire format.
	Wire map[string]wireStream `json:"wire"`
	// Slopes are fitted over the points (see fitSlopes).
	Slopes []FanoutSlope `json:"slopes"`
}

// FanoutPoint is one run: Clients agents of Impl on a cluster of Pods pods.
type FanoutPoint struct {
	Impl    string `json:"impl"`
	Pods    int    `json:"pods"`
	Clients int    `json:"clients"`

	// Start: every agent's caches synced (the initial list or streaming list).
	StartSeconds float64 `json:"start_seconds"`
	// StartAPICPUms is the API server's CPU over the start; StartConnBytes what each
	// agent read from its connection (mean).
	StartAPICPUms  float64 `json:"start_api_cpu_ms"`
	StartConnBytes float64 `json:"start_conn_bytes_per_client"`
	// APIRSSBefore and APIRSSAfter bracket the agents' arrival (after the start, watches
	// open, no churn).
	APIRSSBefore int64 `json:"api_rss_before"`
	APIRSSAfter  int64 `json:"api_rss_after"`
	// APIHeapBefore and APIHeapAfter are the API server's live Go heap at the same
	// moments, after a GC it is asked to run (/debug/pprof/heap?gc=1): RSS keeps the
	// garbage of the agents' initial lists, the live heap is what the watchers hold.
	APIHeapBefore int64 `json:"api_heap_before"`
	APIHeapAfter  int64 `json:"api_heap_after"`
	// HeapBefore and HeapAfter are this process's live Go heap (after a GC) before the
	// agents started and once they had synced; RSSAfter its RSS then.
	HeapBefore uint64 `json:"heap_before"`
	HeapAfter  uint64 `json:"heap_after"`
	RSSAfter   int64  `json:"rss_after"`

	// Churn: ChurnWrites pod writes (five pod events per four writes), until every agent
	// had received every event.
	ChurnWrites     int     `json:"churn_writes"`
	ChurnSeconds    float64 `json:"churn_seconds"`
	ChurnAPICPUms   float64 `json:"churn_api_cpu_ms"`
	ChurnEtcdCPUms  float64 `json:"churn_etcd_cpu_ms"`
	ChurnAgentCPUms float64 `json:"churn_agents_cpu_ms"` // this process: all the agents
	// Per agent (means): pod events received, the pod watches' body bytes, and the
	// bytes read from the connection (TLS and HTTP/2 framing included).
	PodEvents        float64 `json:"pod_events_per_client"`
	PodWatchBytes    float64 `json:"pod_watch_bytes_per_client"`
	ChurnConnBytes   float64 `json:"churn_conn_bytes_per_client"`
	APIRSSAfterChurn int64   `json:"api_rss_after_churn"`
	// ContentTypes of the responses, per request kind, as the first agent saw them.
	ContentTypes map[string][]string `json:"content_types"`
	// StreamingList is set when the agents' initial state came as a watch with
	// sendInitialEvents=true (WatchList) instead of a LIST.
	StreamingList bool `json:"streaming_list"`
}

// BytesPerUpdate is the pod watch body bytes per pod event per agent.
func (p FanoutPoint) BytesPerUpdate() float64 {
	if p.PodEvents == 0 {
		return 0
	}
	return p.PodWatchBytes / p.PodEvents
}

// WireBytesPerUpdate is what each agent's connection carried per pod event.
func (p FanoutPoint) WireBytesPerUpdate() float64 {
	if p.PodEvents == 0 {
		return 0
	}
	return p.ChurnConnBytes / p.PodEvents
}

// HeapPerClient is the live heap each agent added.
func (p FanoutPoint) HeapPerClient() float64 {
	if p.Clients == 0 || p.HeapAfter < p.HeapBefore {
		return 0
	}
	return float64(p.HeapAfter-p.HeapBefore) / float64(p.Clients)
}

// APICPUPerUpdate is the API server's CPU per pod update during the churn, in ms. An
// update is a watch event: every agent receives each one, so the mean of PodEvents is
// what the API server sent each watcher. (A lifecycle of four writes makes five
// events: the delete of a pod bound to a node is seen as its deletionTimestamp being
// set, then as the deletion.)
func (p FanoutPoint) APICPUPerUpdate() float64 {
	if p.PodEvents == 0 {
		return 0
	}
	return p.ChurnAPICPUms / p.PodEvents
}

// runFanout starts its own API server (a one-node lab cluster without agents, so that
// nothing else watches or writes), loads each size, runs every implementation at every
// client count, and fits the slopes.
func runFanout(ctx context.Context, o *Options, p FanoutProfile, rep *FanoutReport) (err error) {
	// The emulated agents' reflectors log through controller-runtime's logger, which
	// otherwise complains on stderr that none was set; their errors surface as sync
	// timeouts.
	ctrllog.SetLogger(logr.Discard())
	c, err := lab.StartCluster(ctx, lab.ClusterOptions{Nodes: 1, ControlPlaneDir: o.ControlPlaneDir,
		LogDir: filepath.Join(o.OutDir, "fanout-logs"), Progress: prefixWriter{o: o, prefix: "  fan-out lab: "}})
	if err != nil {
		return fmt.Errorf("fan-out cluster: %w", err)
	}
	defer func() { err = errors.Join(err, c.Close()) }()
	pids := map[string]int{}
	for _, name := range []string{"kube-apiserver", "etcd"} {
		b, err := os.ReadFile(filepath.Join(c.Lab().PidDir(), name+".pid"))
		if err != nil {
			return fmt.Errorf("fan-out: %s PID: %w", name, err)
		}
		if pids[name], err = strconv.Atoi(strings.TrimSpace(string(b))); err != nil {
			return fmt.Errorf("fan-out: %s PID %q: %w", name, b, err)
		}
	}
	base := c.RESTConfig()
	// No client-side rate limit: the emulated agents must not be slowed by a limiter a
	// real agent (one per node) never hits.
	base.QPS, base.Burst = -1, 0
	wcfg := rest.CopyConfig(base)
	wcfg.ContentType = "application/vnd.kubernetes.protobuf"
	writer, err := kubernetes.NewForConfig(wcfg)
	if err != nil {
		return fmt.Errorf("fan-out: writer client: %w", err)
	}
	nodes := max(p.maxClients(), 1)
	if err := createFanNodes(ctx, writer, nodes, 16); err != nil {
		return fmt.Errorf("fan-out: nodes: %w", err)
	}
	ch := &churner{cs: writer, nodes: nodes}
	loaded := 0
	rep.PodBytes = map[string]int{}
	for _, pods := range p.Pods {
		o.logf("fan-out: loading %d pods", pods)
		if err := loadFanout(ctx, writer, loaded, pods, nodes, 24); err != nil {
			return fmt.Errorf("fan-out: loading %d pods: %w", pods, err)
		}
		loaded = pods
		ch.nsN = synNamespaceCount(Scale{Pods: pods, Policies: pods / 10})
		if len(rep.PodBytes) == 0 {
			if err := podSizes(ctx, base, rep.PodBytes); err != nil {
				return err
			}
		}
		for _, impl := range fanoutImpls {
			for _, n := range p.Clients[impl] {
				pt, wire, err := fanoutPoint(ctx, o, p, base, ch, pids, impl, pods, n)
				if err != nil {
					return fmt.Errorf("fan-out %s × %d at %d pods: %w", impl, n, pods, err)
				}
				rep.Points = append(rep.Points, pt)
				if rep.Wire == nil && impl == FanoutNFTProtobuf {
					rep.Wire = wire
				}
				o.logf("fan-out: %s × %d at %d pods: start %.1f s (API %.0f ms CPU), %.0f B/pod event (wire %.0f), API %.2f ms CPU/event, API RSS +%.1f MB, live heap +%.1f MB, agent heap %.2f MB",
					impl, n, pods, pt.StartSeconds, pt.StartAPICPUms, pt.BytesPerUpdate(), pt.WireBytesPerUpdate(), pt.APICPUPerUpdate(),
					float64(pt.APIRSSAfter-pt.APIRSSBefore)/1e6, float64(pt.APIHeapAfter-pt.APIHeapBefore)/1e6, pt.HeapPerClient()/1e6)
			}
		}
	}
	rep.Slopes = fitSlopes(rep.Points)
	return nil
}

// podSizes records the size of one background pod as the API server encodes it.
func podSizes(ctx context.Context, base *rest.Config, out map[string]int) error {
	for enc, ct := range map[string]string{"json": "application/json", "protobuf": "application/vnd.kubernetes.protobuf"} {
		cfg := rest.CopyConfig(base)
		cfg.AcceptContentTypes = ct
		cfg.ContentType = ct
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return err
		}
		raw, err := cs.CoreV1().RESTClient().Get().AbsPath("/api/v1/namespaces", synNamespace(0), "pods", "p-0").DoRaw(ctx)
		if err != nil {
			return fmt.Errorf("fan-out: reading a pod as %s: %w", enc, err)
		}
		out[enc] = len(raw)
	}
	return nil
}

func fanoutPoint(ctx context.Context, o *Options, p FanoutProfile, base *rest.Config, ch *churner, pids map[string]int,
	impl string, pods, n int) (pt FanoutPoint, wire map[string]wireStream, err error) {
	pt = FanoutPoint{Impl: impl, Pods: pods, Clients: n}
	api, etcd := pids["kube-apiserver"], pids["etcd"]
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	debug.FreeOSMemory()
	pt.HeapBefore = heap()
	if pt.APIRSSBefore, err = ProcRSS(api); err != nil {
		return pt, nil, fmt.Errorf("API server RSS: %w", err)
	}
	if pt.APIHeapBefore, err = apiLiveHeap(ctx, base); err != nil {
		return pt, nil, err
	}
	cpu0, err := ProcCPU(api)
	if err != nil {
		return pt, nil, fmt.Errorf("API server CPU: %w", err)
	}
	clients, took, err := startClients(ctx, impl, base, n, p.StartParallel, fanNodeName)
	if err != nil {
		return pt, nil, fmt.Errorf("starting the agents: %w", err)
	}
	defer stopClients(clients)
	cpu1, err := ProcCPU(api)
	if err != nil {
		return pt, nil, fmt.Errorf("API server CPU: %w", err)
	}
	pt.StartSeconds, pt.StartAPICPUms = took.Seconds(), ms(cpu1-cpu0)
	connStart := make([]int64, n)
	var sum int64
	for i, c := range clients {
		connStart[i] = c.Meter().ConnBytes()
		sum += connStart[i]
	}
	pt.StartConnBytes = float64(sum) / float64(n)
	pt.HeapAfter = heap()
	pt.RSSAfter, _ = ProcRSS(os.Getpid())
	if pt.APIRSSAfter, err = ProcRSS(api); err != nil {
		return pt, nil, fmt.Errorf("API server RSS: %w", err)
	}
	if pt.APIHeapAfter, err = apiLiveHeap(ctx, base); err != nil {
		return pt, nil, err
	}

	// Churn, from a quiet start, until every agent has received every event.
	evStart, podStart := make([]int64, n), make([]int64, n)
	for i, c := range clients {
		evStart[i], podStart[i] = c.PodEvents(), c.Meter().Body("pods watch")
		connStart[i] = c.Meter().ConnBytes()
	}
	a0, err1 := ProcCPU(api)
	e0, err2 := ProcCPU(etcd)
	s0, err3 := ProcCPU(os.Getpid())
	if err := errors.Join(err1, err2, err3); err != nil {
		return pt, nil, fmt.Errorf("CPU of the API server, etcd or the agents: %w", err)
	}
	start := time.Now()
	writes, events, err := ch.run(ctx, p.ChurnWrites, p.ChurnRate)
	if err != nil {
		return pt, nil, err
	}
	if err := waitEvents(ctx, clients, evStart, int64(events), time.Minute); err != nil {
		return pt, nil, fmt.Errorf("after the churn: %w", err)
	}
	pt.ChurnSeconds = time.Since(start).Seconds()
	a1, err1 := ProcCPU(api)
	e1, err2 := ProcCPU(etcd)
	s1, err3 := ProcCPU(os.Getpid())
	if err := errors.Join(err1, err2, err3); err != nil {
		return pt, nil, fmt.Errorf("CPU of the API server, etcd or the agents: %w", err)
	}
	pt.ChurnWrites, pt.ChurnAPICPUms, pt.ChurnEtcdCPUms, pt.ChurnAgentCPUms = writes, ms(a1-a0), ms(e1-e0), ms(s1-s0)
	var ev, body, conn int64
	for i, c := range clients {
		ev += c.PodEvents() - evStart[i]
		body += c.Meter().Body("pods watch") - podStart[i]
		conn += c.Meter().ConnBytes() - connStart[i]
	}
	pt.PodEvents, pt.PodWatchBytes, pt.ChurnConnBytes = float64(ev)/float64(n), float64(body)/float64(n), float64(conn)/float64(n)
	pt.APIRSSAfterChurn, _ = ProcRSS(api)

	wire = clients[0].Meter().Snapshot()
	pt.ContentTypes = map[string][]string{}
	for _, k := range slices.Sorted(maps.Keys(wire)) {
		pt.ContentTypes[k] = slices.Sorted(maps.Keys(wire[k].ContentTypes))
		if strings.HasSuffix(k, " watch") && wire[k].InitialEvents > 0 {
			pt.StreamingList = true
		}
	}
	return pt, wire, nil
}

// apiLiveHeap asks the API server for a GC and its heap profile's memory statistics
// (kube-apiserver serves pprof by default, --profiling) and returns HeapAlloc: the live
// heap right after the collection.
func apiLiveHeap(ctx context.Context, base *rest.Config) (int64, error) {
	cs, err := kubernetes.NewForConfig(base)
	if err != nil {
		return 0, err
	}
	raw, err := cs.CoreV1().RESTClient().Get().AbsPath("/debug/pprof/heap").Param("debug", "1").Param("gc", "1").DoRaw(ctx)
	if err != nil {
		return 0, fmt.Errorf("API server heap profile: %w", err)
	}
	return parseHeapAlloc(string(raw))
}

// parseHeapAlloc reads "# HeapAlloc = N" from a debug=1 heap profile.
func parseHeapAlloc(profile string) (int64, error) {
	for line := range strings.SplitSeq(profile, "\n") {
		if v, ok := strings.CutPrefix(line, "# HeapAlloc = "); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, errors.New("API server heap profile: no HeapAlloc")
}

// waitEvents waits until every client has received want pod events since from.
func waitEvents(ctx context.Context, clients []fanClient, from []int64, want int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		behind, least := 0, want
		for i, c := range clients {
			if got := c.PodEvents() - from[i]; got < want {
				behind++
				least = min(least, got)
			}
		}
		if behind == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d agents behind after %v (the slowest has %d of %d pod events)", behind, len(clients), timeout, least, want)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}
