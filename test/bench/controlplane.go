package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/nftpolicy/nftpolicy/test/echo"
	"github.com/nftpolicy/nftpolicy/test/lab"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// ControlPlaneReport holds the control plane measurements.
type ControlPlaneReport struct {
	// Cold are the agent starts against a preloaded API server, raw.
	Cold []ColdSyncRun `json:"cold_sync"`
	// ColdSummary is the median per scale (keyed by Scale.String()).
	ColdSummary map[string]*ColdSyncRun `json:"cold_sync_summary,omitempty"`
	// Incremental are the single changes, raw.
	Incremental []IncrementalRun `json:"incremental"`
	// IncrementalSummary is, per scale and kind, the run with the median time per
	// sync (its Rep holds the number of runs).
	IncrementalSummary map[string]map[string]*IncrementalRun `json:"incremental_summary,omitempty"`
	// Enforce is API write → enforced, per scale.
	Enforce []*EnforceReport `json:"enforce,omitempty"`
}

// ColdSyncRun is one agent start on node1 against an API server holding Scale.
type ColdSyncRun struct {
	Scale Scale `json:"scale"`
	Rep   int   `json:"rep"`
	// ReadyMs is process start → /readyz answering 200 (caches listed, first
	// ruleset computed and committed).
	ReadyMs float64 `json:"ready_ms"`
	// SyncMs is the agent's own "first ruleset applied" duration: snapshot,
	// compile, commit (and the revocation pass).
	SyncMs float64 `json:"sync_ms"`
	// ComputeMs and CommitMs are the first sync's phases from the
	// nftpolicy_sync_duration_seconds histogram (compute; full).
	ComputeMs float64 `json:"compute_ms"`
	CommitMs  float64 `json:"commit_ms"`
	// Chains, Rules, Elements: the size of the transaction.
	Chains   int `json:"chains"`
	Rules    int `json:"rules"`
	Elements int `json:"elements"`
	// Transactions is how many nf_tables transactions committed between the
	// start and /readyz (the kernel's generation counter).
	Transactions int `json:"transactions"`
	// CPUms is the agent's CPU time from start to ready; RSSBytes its RSS then.
	CPUms    float64 `json:"cpu_ms"`
	RSSBytes int64   `json:"rss_bytes"`
}

// IncrementalRun is one change measured through the agent's metrics.
type IncrementalRun struct {
	Scale Scale  `json:"scale"`
	Kind  string `json:"kind"`
	Rep   int    `json:"rep"`
	// Syncs is how many syncs the change caused (a pod add is two writes:
	// create and status).
	Syncs int `json:"syncs"`
	// ComputeMs and CommitMs are the sums over those syncs; TotalMs their sum;
	// PerSyncMs is TotalMs per sync: the time from an event to the kernel.
	ComputeMs float64 `json:"compute_ms"`
	CommitMs  float64 `json:"commit_ms"`
	TotalMs   float64 `json:"total_ms"`
	PerSyncMs float64 `json:"per_sync_ms"`
	// FullReplaces counts syncs that replaced the table instead of a diff.
	FullReplaces int `json:"full_replaces"`
	Transactions int `json:"transactions"`
	// CPUms is the agent's CPU time from the write until it was quiet again:
	// also what the histogram leaves out (event handling, the revocation pass,
	// garbage collection).
	CPUms float64 `json:"cpu_ms"`
}

// incrementalKinds are the changes measured, in order; pod-delete removes what
// pod-add created.
var incrementalKinds = []string{"pod-add", "pod-label", "policy-add", "policy-delete", "namespace-relabel", "pod-delete"}

// coldAndIncremental starts the agent on node1 reps times at scale s and, with
// incremental, measures single changes with the last of them.
func (r *runner) coldAndIncremental(ctx context.Context, s Scale, reps int, incremental bool) {
	var last *agentRun
	r.step(ctx, "controlplane: cold sync at "+s.String(), 10*time.Minute, func(ctx context.Context) error {
		var err error
		last, err = r.coldSync(ctx, s, reps)
		return err
	})
	if last == nil {
		return
	}
	defer func() {
		if err := last.stop(); err != nil {
			r.rep.Errors = append(r.rep.Errors, "controlplane: stop the agent: "+err.Error())
		}
	}()
	if incremental {
		r.step(ctx, "controlplane: incremental changes at "+s.String(), 10*time.Minute, func(ctx context.Context) error {
			return r.incremental(ctx, last, s)
		})
	}
}

// coldSync starts the agent reps times; the last one is left running.
func (r *runner) coldSync(ctx context.Context, s Scale, reps int) (*agentRun, error) {
	e, cp := r.env, r.rep.Control
	if err := e.flushNodes(ctx); err != nil {
		return nil, err
	}
	g, err := dialGen(e.n1.NS)
	if err != nil {
		return nil, err
	}
	defer g.Close()
	var runs []ColdSyncRun
	for rep := range reps {
		gen0, err := g.Gen()
		if err != nil {
			return nil, err
		}
		a, err := e.startAgent(ctx, e.n1)
		if err != nil {
			return nil, err
		}
		run, err := func() (ColdSyncRun, error) {
			run := ColdSyncRun{Scale: s, Rep: rep, ReadyMs: ms(a.Ready.Sub(a.Started))}
			cpu, err := a.cpu()
			if err != nil {
				return run, err
			}
			run.CPUms = ms(cpu)
			run.RSSBytes, _ = ProcRSS(a.Pid())
			gen1, err := g.Gen()
			if err != nil {
				return run, err
			}
			run.Transactions = int(gen1 - gen0)
			st, err := a.syncStats(ctx)
			if err != nil {
				return run, err
			}
			if st.ComputeCount >= 1 {
				run.ComputeMs = st.ComputeSum / st.ComputeCount * 1000
			}
			if st.FullCount >= 1 {
				run.CommitMs = st.FullSum / st.FullCount * 1000
			}
			fa, err := a.firstApplied()
			if err != nil {
				return run, err
			}
			run.Chains, run.Rules, run.Elements, run.SyncMs = fa.Chains, fa.Rules, fa.Elements, fa.Seconds*1000
			return run, nil
		}()
		if err != nil || rep < reps-1 {
			err = errors.Join(err, a.stop())
		}
		if err != nil {
			return nil, err
		}
		r.opts.logf("   %s: ready in %.0f ms (sync %.0f ms: compute %.0f + commit %.0f; %d chains, %d rules, %d elements; %d transaction(s); CPU %.0f ms, RSS %.0f MiB)",
			s, run.ReadyMs, run.SyncMs, run.ComputeMs, run.CommitMs, run.Chains, run.Rules, run.Elements, run.Transactions, run.CPUms, float64(run.RSSBytes)/(1<<20))
		runs = append(runs, run)
		cp.Cold = append(cp.Cold, run)
		if rep == reps-1 {
			cp.summarizeCold(s, runs)
			return a, nil
		}
	}
	return nil, errors.New("no repetition")
}

func (cp *ControlPlaneReport) summarizeCold(s Scale, runs []ColdSyncRun) {
	if cp.ColdSummary == nil {
		cp.ColdSummary = map[string]*ColdSyncRun{}
	}
	med := func(f func(ColdSyncRun) float64) float64 {
		var xs []float64
		for _, r := range runs {
			xs = append(xs, f(r))
		}
		return Median(xs)
	}
	last := runs[len(runs)-1]
	cp.ColdSummary[s.String()] = &ColdSyncRun{
		Scale: s, Rep: len(runs),
		ReadyMs:   med(func(r ColdSyncRun) float64 { return r.ReadyMs }),
		SyncMs:    med(func(r ColdSyncRun) float64 { return r.SyncMs }),
		ComputeMs: med(func(r ColdSyncRun) float64 { return r.ComputeMs }),
		CommitMs:  med(func(r ColdSyncRun) float64 { return r.CommitMs }),
		CPUms:     med(func(r ColdSyncRun) float64 { return r.CPUms }),
		RSSBytes:  int64(med(func(r ColdSyncRun) float64 { return float64(r.RSSBytes) })),
		Chains:    last.Chains, Rules: last.Rules, Elements: last.Elements,
		Transactions: slices.MaxFunc(runs, func(a, b ColdSyncRun) int { return a.Transactions - b.Transactions }).Transactions,
	}
}

// incremental measures single changes of every kind, reps times, with the agent a
// running on node1: the deltas of its sync histogram from before the write until it
// has been quiet for a while.
func (r *runner) incremental(ctx context.Context, a *agentRun, s Scale) error {
	e, cp := r.env, r.rep.Control
	if err := e.flushNodes(ctx); err != nil {
		return err
	}
	g, err := dialGen(e.n1.NS)
	if err != nil {
		return err
	}
	defer g.Close()
	if _, err := a.waitQuiet(ctx, 300*time.Millisecond, time.Minute); err != nil {
		return err
	}
	var runs []IncrementalRun
	for rep := range r.opts.Profile.IncrementalReps {
		var addedPod string
		var addedPolicy string
		for _, kind := range incrementalKinds {
			before, err := a.syncStats(ctx)
			if err != nil {
				return err
			}
			gen0, err := g.Gen()
			if err != nil {
				return err
			}
			cpu0, err := a.cpuPrecise()
			if err != nil {
				return err
			}
			switch kind {
			case "pod-add":
				e.extraSeq++
				addedPod = fmt.Sprintf("extra-%d", e.extraSeq)
				// On node1, selected by pol-0 (app-0) of its namespace and a peer
				// of its tier-1 rules.
				p, st := podObject(synNamespace(0), addedPod, "node1", map[string]string{"app": "app-0", "tier": "tier-1"}, addrPlus(extraPodBase, e.extraSeq))
				err = createPod(ctx, e.cs, p, st)
			case "pod-delete":
				err = deletePod(ctx, e.cs, synNamespace(0), addedPod)
			case "pod-label":
				// p-0 runs on node1; moving it between app-0 and app-1 changes the
				// policies selecting it.
				e.podFlips++
				app := []string{"app-0", "app-1"}[e.podFlips%2]
				err = e.patch(ctx, "pods", synNamespace(0), "p-0", map[string]any{"metadata": map[string]any{"labels": map[string]string{"app": app}}})
			case "policy-add":
				addedPolicy = fmt.Sprintf("bench-inc-%d", rep)
				np := synPolicy(2)
				np.Name, np.Namespace = addedPolicy, synNamespace(0)
				_, err = e.cs.NetworkingV1().NetworkPolicies(np.Namespace).Create(ctx, np, metav1.CreateOptions{})
			case "policy-delete":
				err = e.cs.NetworkingV1().NetworkPolicies(synNamespace(0)).Delete(ctx, addedPolicy, metav1.DeleteOptions{})
			case "namespace-relabel":
				// Namespace 1 (team t1) holds node1's pods 50-99: its team decides
				// which namespaceSelector peers and sets it belongs to.
				ns := min(1, synNamespaceCount(e.loaded)-1)
				e.nsFlipped[ns] = !e.nsFlipped[ns]
				team := fmt.Sprintf("t%d", ns%10)
				if e.nsFlipped[ns] {
					team = "t-bench"
				}
				err = e.patch(ctx, "namespaces", "", synNamespace(ns), map[string]any{"metadata": map[string]any{"labels": map[string]string{"team": team}}})
			}
			if err != nil {
				return fmt.Errorf("%s: %w", kind, err)
			}
			after, err := a.waitSynced(ctx, before, 150*time.Millisecond, 30*time.Second)
			if err != nil {
				return fmt.Errorf("%s: %w", kind, err)
			}
			cpu1, err := a.cpuPrecise()
			if err != nil {
				return err
			}
			gen1, err := g.Gen()
			if err != nil {
				return err
			}
			d := after.sub(before)
			run := IncrementalRun{
				Scale: s, Kind: kind, Rep: rep, Syncs: int(d.ComputeCount),
				ComputeMs: d.ComputeSum * 1000, CommitMs: (d.FullSum + d.IncrementalSum) * 1000,
				FullReplaces: int(d.FullCount), Transactions: int(gen1 - gen0), CPUms: ms(cpu1 - cpu0),
			}
			run.TotalMs = run.ComputeMs + run.CommitMs
			if run.Syncs > 0 {
				run.PerSyncMs = run.TotalMs / float64(run.Syncs)
			}
			runs = append(runs, run)
			cp.Incremental = append(cp.Incremental, run)
		}
	}
	cp.summarizeIncremental(s, runs)
	for _, kind := range incrementalKinds {
		if m := cp.IncrementalSummary[s.String()][kind]; m != nil {
			r.opts.logf("   %s %-17s %6.1f ms per sync (compute %.1f + commit %.1f), %d sync(s), %d transaction(s), agent CPU %.0f ms",
				s, kind, m.PerSyncMs, m.ComputeMs/float64(max(m.Syncs, 1)), m.CommitMs/float64(max(m.Syncs, 1)), m.Syncs, m.Transactions, m.CPUms)
		}
	}
	return nil
}

// waitSynced waits until the agent has synced at least once since before and then
// stayed quiet for quiet.
func (a *agentRun) waitSynced(ctx context.Context, before syncStats, quiet, maxWait time.Duration) (syncStats, error) {
	deadline := time.Now().Add(maxWait)
	for {
		s, err := a.syncStats(ctx)
		if err != nil {
			return s, err
		}
		if s.ComputeCount > before.ComputeCount {
			return a.waitQuiet(ctx, quiet, time.Until(deadline))
		}
		if time.Now().After(deadline) {
			return s, fmt.Errorf("agent on %s did not sync within %v", a.node.Name, maxWait)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (cp *ControlPlaneReport) summarizeIncremental(s Scale, runs []IncrementalRun) {
	if cp.IncrementalSummary == nil {
		cp.IncrementalSummary = map[string]map[string]*IncrementalRun{}
	}
	byKind := map[string]*IncrementalRun{}
	for _, kind := range incrementalKinds {
		var sel []IncrementalRun
		for _, r := range runs {
			if r.Kind == kind {
				sel = append(sel, r)
			}
		}
		if len(sel) == 0 {
			continue
		}
		// The representative is the run with the median time per sync, so that
		// its phases add up.
		slices.SortFunc(sel, func(a, b IncrementalRun) int { return cmpFloat(a.PerSyncMs, b.PerSyncMs) })
		med := sel[(len(sel)-1)/2]
		med.Rep = len(sel)
		byKind[kind] = &med
	}
	cp.IncrementalSummary[s.String()] = byKind
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// patch sends a JSON merge patch.
func (e *env) patch(ctx context.Context, resource, ns, name string, patch any) error {
	b, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	switch resource {
	case "pods":
		_, err = e.cs.CoreV1().Pods(ns).Patch(ctx, name, types.MergePatchType, b, metav1.PatchOptions{})
	case "namespaces":
		_, err = e.cs.CoreV1().Namespaces().Patch(ctx, name, types.MergePatchType, b, metav1.PatchOptions{})
	case "networkpolicies":
		_, err = e.cs.NetworkingV1().NetworkPolicies(ns).Patch(ctx, name, types.MergePatchType, b, metav1.PatchOptions{})
	default:
		err = fmt.Errorf("patch: unknown resource %q", resource)
	}
	return err
}

// ---- API write → enforced ----

// EnforceReport is API write → enforced in the kernel, measured from outside the
// agent: a prober opens a new connection from the client to the server every
// millisecond, an established connection sends every millisecond, and node2's
// nf_tables generation is polled every millisecond.
type EnforceReport struct {
	Scale Scale `json:"scale"`
	// What was changed and measured: "" NetworkPolicy changes on client → server
	// (without ClusterNetworkPolicies); enforceCNP ClusterNetworkPolicy changes on
	// client → server with the ClusterNetworkPolicy load; enforceNPUnselected
	// NetworkPolicy changes on client2 → server2, which no ClusterNetworkPolicy
	// selects, with the load.
	What string `json:"what,omitempty"`
	// ClusterPolicies is the number of ClusterNetworkPolicies loaded meanwhile.
	ClusterPolicies int            `json:"cluster_policies,omitempty"`
	Trials          []EnforceTrial `json:"trials"`
	// Enforced is write returned → first probe (by its start) with the new
	// outcome, over every change; Deny and Allow split it.
	Enforced Summary `json:"enforced_ms"`
	Deny     Summary `json:"deny_ms"`
	Allow    Summary `json:"allow_ms"`
	// Kernel is write returned → node2's nf_tables generation changed.
	Kernel Summary `json:"kernel_ms"`
	// Revoked is write returned → last echo of the established flow, over the
	// deny changes.
	Revoked Summary `json:"revoked_ms"`
	// Failures counts changes whose effect was not seen within the timeout.
	Failures int `json:"failures"`
	// AgentSyncs, AgentComputeMs and AgentCommitMs: node2's agent over the whole
	// experiment (syncs, and the mean time per sync of each phase).
	AgentSyncs     int     `json:"agent_syncs"`
	AgentComputeMs float64 `json:"agent_compute_ms_per_sync"`
	AgentCommitMs  float64 `json:"agent_commit_ms_per_sync"`
	// ConntrackEntries is the size of node2's conntrack table at the end (the
	// prober's closed connections linger there for 10 s; the revocation pass
	// judges each of them on every change).
	ConntrackEntries int `json:"conntrack_entries"`
	// RevocationDelay is, per deny change, the established flow's last echo minus
	// node2's commit: the time the revocation pass takes after the rules are in
	// the kernel.
	RevocationDelay Summary `json:"revocation_delay_ms"`
	// Sweep repeats a deny with node2's conntrack table filled by a connect-close
	// burst: how the revocation pass grows with the number of tracked flows.
	Sweep []SweepPoint `json:"conntrack_sweep,omitempty"`
}

// SweepPoint is one deny change with a given conntrack table size.
type SweepPoint struct {
	// Entries is node2's conntrack table size just before the write.
	Entries   int     `json:"conntrack_entries"`
	KernelMs  float64 `json:"kernel_ms"`
	RevokedMs float64 `json:"revoked_ms"`
	// DelayMs is RevokedMs - KernelMs.
	DelayMs float64 `json:"revocation_delay_ms"`
	Error   string  `json:"error,omitempty"`
}

// EnforceTrial is one change.
type EnforceTrial struct {
	Cycle     int     `json:"cycle"`
	Kind      string  `json:"kind"`
	Direction string  `json:"direction"`
	WriteMs   float64 `json:"write_ms"`
	// EnforcedMs, KernelMs and RevokedMs are relative to the write returning
	// (negative: the effect was visible before the API call returned).
	EnforcedMs float64 `json:"enforced_ms"`
	KernelMs   float64 `json:"kernel_ms"`
	RevokedMs  float64 `json:"revoked_ms,omitempty"`
	Error      string  `json:"error,omitempty"`
}

var enforceKinds = []string{"policy-update", "pod-label", "policy-delete-create"}

// What an enforcement experiment measures (EnforceReport.What).
const (
	enforceNP           = ""
	enforceCNP          = "cnp"
	enforceNPUnselected = "np-unselected-cnp"
)

// enforceSpec is one API write → enforced experiment: its changes are made in turn
// (kinds[cycle % len]) on pair's flow.
type enforceSpec struct {
	what   string
	pair   *flowPair
	kinds  []string
	cycles int
	// sweep are the conntrack fills of the revocation sweep after the cycles.
	sweep []time.Duration
}

const (
	probeInterval = time.Millisecond
	probeTimeout  = 100 * time.Millisecond
	// probeStreak consecutive probes must agree before a change counts as seen.
	probeStreak  = 5
	effectWait   = 5 * time.Second
	revokedQuiet = 200 * time.Millisecond
)

// enforceLatency runs the experiment's deny+allow cycles with agents on both nodes
// and then its conntrack sweep.
func (r *runner) enforceLatency(ctx context.Context, spec enforceSpec) error {
	e := r.env
	er := &EnforceReport{Scale: e.loaded, What: spec.what}
	if e.cnpLoaded {
		er.ClusterPolicies = r.opts.Profile.CNPAdmin + r.opts.Profile.CNPBaseline
	}
	r.rep.Control.Enforce = append(r.rep.Control.Enforce, er)
	defer er.summarize()
	if err := e.flushNodes(ctx); err != nil {
		return err
	}
	agents, stop, err := e.startEnforcing(ctx)
	defer stop()
	if err != nil {
		return err
	}
	node2 := agents[1]
	if spec.what == enforceCNP {
		// Every change would time out against agents that ignore them.
		text, err := nft(ctx, e.n2.NS, "-s", "list", "table", "inet", "nftpolicy")
		if err != nil {
			return err
		}
		if _, err := checkCNPTable(text, e.n2.Name, r.opts.Profile); err != nil {
			return fmt.Errorf("node2: %w", err)
		}
	}
	before, err := node2.syncStats(ctx)
	if err != nil {
		return err
	}
	gw, err := watchGen(e.n2.NS, time.Millisecond)
	if err != nil {
		return err
	}
	defer gw.Close()
	fp := spec.pair
	pr := startProber(fp.client.NS, fp.sinkAddr(), probeInterval, probeTimeout)
	defer pr.Close()
	if _, ok := pr.flipAfter(time.Now(), true, probeStreak, effectWait); !ok {
		return errors.New("the prober never got through before the first change")
	}
	for cycle := range spec.cycles {
		if err := ctx.Err(); err != nil {
			return err
		}
		kind := spec.kinds[cycle%len(spec.kinds)]
		flow, err := startEchoFlow(fp.client.NS, fp.echoAddr())
		if err != nil {
			return fmt.Errorf("cycle %d: %w", cycle, err)
		}
		deny := r.change(ctx, gw, pr, fp, cycle, kind, false, flow)
		flow.Close()
		allow := r.change(ctx, gw, pr, fp, cycle, kind, true, nil)
		er.Trials = append(er.Trials, deny, allow)
		if deny.Error != "" || allow.Error != "" {
			er.Failures++
			r.opts.logf("   cycle %d (%s): %s %s", cycle, kind, deny.Error, allow.Error)
		}
		if (cycle+1)%10 == 0 || cycle == spec.cycles-1 {
			r.opts.logf("   %d/%d cycles; last: deny %.0f ms (kernel %.0f ms, revoked %.0f ms), allow %.0f ms",
				cycle+1, spec.cycles, deny.EnforcedMs, deny.KernelMs, deny.RevokedMs, allow.EnforcedMs)
		}
	}
	for _, fill := range spec.sweep {
		pt, err := r.sweepPoint(ctx, gw, pr, fp, fill)
		if err != nil {
			return err
		}
		er.Sweep = append(er.Sweep, pt)
		r.opts.logf("   revocation with %d conntrack entries on node2: commit after %.0f ms, flow stopped after %.0f ms (+%.0f ms)",
			pt.Entries, pt.KernelMs, pt.RevokedMs, pt.DelayMs)
	}
	after, err := node2.syncStats(ctx)
	if err != nil {
		return err
	}
	d := after.sub(before)
	er.AgentSyncs = int(d.ComputeCount)
	if d.ComputeCount > 0 {
		er.AgentComputeMs = d.ComputeSum / d.ComputeCount * 1000
	}
	if c := d.commits(); c > 0 {
		er.AgentCommitMs = (d.FullSum + d.IncrementalSum) / c * 1000
	}
	er.ConntrackEntries = conntrackCount(e.n2.NS)
	return nil
}

// startEchoFlow starts the established flow whose revocation the enforcement trials
// time: one TCP connection from ns to the echo server at to, an echo every millisecond.
// It returns once echoes come back.
func startEchoFlow(ns *lab.Netns, to netip.AddrPort) (*echo.Flow, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	flow, err := echo.Dial(ctx, ns, "tcp", to, time.Millisecond)
	if err != nil {
		return nil, err
	}
	if !flow.WaitEcho(2 * time.Second) {
		flow.Close()
		return nil, fmt.Errorf("the established flow %s does not flow", flow)
	}
	return flow, nil
}

// sweepPoint fills the conntrack tables with a connect-close burst of length fill
// from the client to the server, then denies the client (a policy update) with an
// established flow running, and allows it again.
func (r *runner) sweepPoint(ctx context.Context, gw *genWatcher, pr *prober, fp *flowPair, fill time.Duration) (SweepPoint, error) {
	e := r.env
	var pt SweepPoint
	flow, err := startEchoFlow(fp.client.NS, fp.echoAddr())
	if err != nil {
		return pt, fmt.Errorf("sweep: %w", err)
	}
	defer flow.Close()
	if fill > 0 {
		if _, err := connectLoad(fp.client.NS, fp.sinkAddr(), 8, fill); err != nil {
			return pt, err
		}
	}
	pt.Entries = conntrackCount(e.n2.NS)
	deny := r.change(ctx, gw, pr, fp, -1, "policy-update", false, flow)
	pt.KernelMs, pt.RevokedMs, pt.Error = deny.KernelMs, deny.RevokedMs, deny.Error
	pt.DelayMs = pt.RevokedMs - pt.KernelMs
	allow := r.change(ctx, gw, pr, fp, -1, "policy-update", true, nil)
	if allow.Error != "" {
		return pt, fmt.Errorf("sweep: allowing again: %s", allow.Error)
	}
	return pt, nil
}

// change makes one deny (allow=false) or allow change of the given kind on fp's flow
// and measures when it took effect.
func (r *runner) change(ctx context.Context, gw *genWatcher, pr *prober, fp *flowPair, cycle int, kind string, allow bool, flow *echo.Flow) EnforceTrial {
	e := r.env
	t := EnforceTrial{Cycle: cycle, Kind: kind, Direction: "deny"}
	if allow {
		t.Direction = "allow"
	}
	access := "revoked"
	if allow {
		access = "granted"
	}
	t0 := time.Now()
	var err error
	switch kind {
	case "policy-update":
		err = e.patch(ctx, "networkpolicies", benchNS, "server"+fp.suffix+"-allow", map[string]any{"spec": serverAllowPolicy(fp.suffix, access).Spec})
	case "pod-label":
		label := "none"
		if allow {
			label = "granted"
		}
		err = e.patch(ctx, "pods", benchNS, fp.client.Name, map[string]any{"metadata": map[string]any{"labels": map[string]string{"access": label}}})
	case "policy-delete-create":
		if allow {
			_, err = e.cs.NetworkingV1().NetworkPolicies(benchNS).Create(ctx, serverAllowPolicy(fp.suffix, "granted"), metav1.CreateOptions{})
		} else {
			err = e.cs.NetworkingV1().NetworkPolicies(benchNS).Delete(ctx, "server"+fp.suffix+"-allow", metav1.DeleteOptions{})
		}
	default:
		err = e.changeCNP(ctx, fp, kind, allow)
	}
	tw := time.Now()
	t.WriteMs = ms(tw.Sub(t0))
	if err != nil {
		t.Error = err.Error()
		return t
	}
	var errs []error
	lat, ok := pr.flipAfter(tw, allow, probeStreak, effectWait)
	if ok {
		t.EnforcedMs = ms(lat)
	} else {
		errs = append(errs, fmt.Errorf("%s not seen by the prober within %v", t.Direction, effectWait))
	}
	if at, ok := gw.waitChangeAfter(t0, effectWait); ok {
		t.KernelMs = ms(at.Sub(tw))
	} else {
		errs = append(errs, errors.New("no nf_tables commit on node2"))
	}
	if flow != nil {
		last, ok := flow.WaitStopped(revokedQuiet, effectWait)
		if ok {
			t.RevokedMs = ms(last.Sub(tw))
		} else {
			errs = append(errs, fmt.Errorf("the established flow still flowed %v after the deny", effectWait))
		}
	}
	if err := errors.Join(errs...); err != nil {
		t.Error = err.Error()
	}
	return t
}

func (er *EnforceReport) summarize() {
	var all, deny, allow, kernel, revoked, delay []float64
	for _, t := range er.Trials {
		if t.Error != "" {
			continue
		}
		all = append(all, t.EnforcedMs)
		kernel = append(kernel, t.KernelMs)
		if t.Direction == "deny" {
			deny = append(deny, t.EnforcedMs)
			revoked = append(revoked, t.RevokedMs)
			delay = append(delay, t.RevokedMs-t.KernelMs)
		} else {
			allow = append(allow, t.EnforcedMs)
		}
	}
	er.Enforced, er.Deny, er.Allow = Summarize(all), Summarize(deny), Summarize(allow)
	er.Kernel, er.Revoked, er.RevocationDelay = Summarize(kernel), Summarize(revoked), Summarize(delay)
}
