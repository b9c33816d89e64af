package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/test/echo"
	"github.com/nftpolicy/nftpolicy/test/lab"
)

// RevocationReport is revocation on a node whose conntrack table is full: the agent
// must judge only the flows a change concerns (the scale targets), and revocation
// must never hold up the enforcement of the next change.
//
// The same deny+allow cycles run twice on node2, each time with agents started
// afresh: with the table as the traffic leaves it (Empty), and after Entries
// synthetic established entries were added (Full). Each deny stops Flows established TCP connections; between the
// phases and after, changes that concern no established flow (a pod admitted by
// node2's policies, then no longer) measure what revocation costs when it has
// nothing to do.
type RevocationReport struct {
	Scale   Scale `json:"scale"`
	Entries int   `json:"entries"`
	// FillMs is how long creating the entries took; Tracked the index of node2's
	// agent started on them (nftpolicy_conntrack_tracked_flows), RSSBytes its RSS.
	FillMs   float64 `json:"fill_ms"`
	Tracked  float64 `json:"tracked"`
	RSSBytes int64   `json:"rss_bytes"`
	// FirstPass*: that agent's first revocation pass, over every flow.
	FirstPassMs      float64          `json:"first_pass_ms"`
	FirstPassJudged  float64          `json:"first_pass_judged"`
	FirstPassRevoked float64          `json:"first_pass_revoked"`
	Flows            int              `json:"flows_per_deny"`
	Empty            *RevocationPhase `json:"empty"`
	Full             *RevocationPhase `json:"full"`
	// None are the changes that concern no established flow, with the full table.
	None []NoneTrial `json:"none"`
	// NoneWork is the revocation work per such change (ms).
	NoneWork Summary `json:"none_work"`
}

// RevocationPhase is one series of deny+allow cycles.
type RevocationPhase struct {
	// Entries in node2's conntrack table at the start.
	Entries int               `json:"entries"`
	Trials  []RevocationTrial `json:"trials"`
	// Enforced is API write → enforced (deny and allow); Delay is, for the denies,
	// kernel commit → the last of the flows stopped.
	Enforced Summary `json:"enforced"`
	Delay    Summary `json:"delay"`
	// Judged is the agent's nftpolicy_revocation_flows_judged_total over the phase.
	Judged float64 `json:"judged"`
	Errors int     `json:"errors"`
}

// RevocationTrial is one change of a phase.
type RevocationTrial struct {
	Cycle      int     `json:"cycle"`
	Direction  string  `json:"direction"`
	EnforcedMs float64 `json:"enforced_ms"`
	// DelayMs: kernel commit → last echo of the last flow still echoing (denies).
	DelayMs float64 `json:"delay_ms,omitempty"`
	Error   string  `json:"error,omitempty"`
}

// NoneTrial is one change that concerns no established flow.
type NoneTrial struct {
	Kind string `json:"kind"`
	// WorkMs is the revocation pass's time, kernel commit → done (the agent's
	// nftpolicy_revocation_duration_seconds over the passes the change caused).
	WorkMs float64 `json:"work_ms"`
	Passes float64 `json:"passes"`
	Judged float64 `json:"judged"`
	Error  string  `json:"error,omitempty"`
}

// revocationFlows is how many established flows each deny stops.
const revocationFlows = 10

// revocationScale runs the experiment at the loaded scale.
func (r *runner) revocationScale(ctx context.Context) error {
	e, p := r.env, r.opts.Profile
	rr := &RevocationReport{Scale: e.loaded, Entries: p.RevocationEntries, Flows: revocationFlows}
	r.rep.Revocation = rr
	defer rr.summarize()
	if err := e.flushNodes(ctx); err != nil {
		return err
	}
	defer func() { _ = flushConntrack(context.WithoutCancel(ctx), e.n2.NS) }()
	if err := r.revocationRun(ctx, rr, false); err != nil {
		return err
	}
	// The entries go in before the agents start, as they are on a busy node an agent
	// starts on: its first dump indexes them (entries created through ctnetlink
	// announce themselves only as new, an event the agent does not follow).
	r.opts.logf("   filling node2's conntrack table with %d entries", p.RevocationEntries)
	start := time.Now()
	if err := fillConntrack(e.n2.NS, p.RevocationEntries, e.pair.server.IPv4); err != nil {
		return err
	}
	rr.FillMs = ms(time.Since(start))
	return r.revocationRun(ctx, rr, true)
}

// revocationRun starts the agents and runs one phase (the full one after the fill,
// with the changes that concern no flow).
func (r *runner) revocationRun(ctx context.Context, rr *RevocationReport, full bool) error {
	e, p := r.env, r.opts.Profile
	agents, stop, err := e.startEnforcing(ctx)
	defer stop()
	if err != nil {
		return err
	}
	node2 := agents[1]
	if full {
		// The first pass judges every flow; the measurements start after it.
		if err := waitTracked(ctx, node2, p.RevocationEntries); err != nil {
			return err
		}
		if err := waitFirstPass(ctx, node2); err != nil {
			return err
		}
		m, err := node2.metrics(ctx)
		if err != nil {
			return err
		}
		rr.Tracked = m.Sum("nftpolicy_conntrack_tracked_flows", nil)
		rr.FirstPassMs = m.Sum("nftpolicy_revocation_duration_seconds_sum", nil) * 1000
		rr.FirstPassJudged = m.Sum("nftpolicy_revocation_flows_judged_total", nil)
		rr.FirstPassRevoked = m.Sum("nftpolicy_revoked_flows_total", nil)
		rr.RSSBytes, _ = ProcRSS(node2.Pid())
		r.opts.logf("   %d entries; the agent indexes %.0f, RSS %d MB; its first pass judged %.0f flows and revoked %.0f in %.0f ms",
			conntrackCount(e.n2.NS), rr.Tracked, rr.RSSBytes>>20, rr.FirstPassJudged, rr.FirstPassRevoked, rr.FirstPassMs)
	}
	gw, err := watchGen(e.n2.NS, time.Millisecond)
	if err != nil {
		return err
	}
	defer gw.Close()
	fp := e.pair
	pr := startProber(fp.client.NS, fp.sinkAddr(), probeInterval, probeTimeout)
	defer pr.Close()
	if _, ok := pr.flipAfter(time.Now(), true, probeStreak, effectWait); !ok {
		return errors.New("the prober never got through before the first change")
	}
	ph := &RevocationPhase{Entries: conntrackCount(e.n2.NS)}
	if full {
		rr.Full = ph
	} else {
		rr.Empty = ph
	}
	if err := r.revocationPhase(ctx, node2, gw, pr, ph, p.RevocationCycles); err != nil {
		return err
	}
	if full {
		for range p.RevocationCycles {
			for _, add := range []bool{true, false} {
				rr.None = append(rr.None, r.noneChange(ctx, node2, add))
			}
		}
	}
	return nil
}

// waitFirstPass waits until the agent's first revocation pass (over every flow) is
// done and the agent is quiet.
func waitFirstPass(ctx context.Context, a *agentRun) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		m, err := a.metrics(ctx)
		if err == nil && m.Sum("nftpolicy_revocation_passes_total", map[string]string{"scope": "all"}) >= 1 &&
			m.Sum("nftpolicy_revocation_duration_seconds_count", nil) >= 1 {
			break
		}
		if time.Now().After(deadline) {
			return errors.New("no revocation pass over every flow within 2m of the agent's start")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	_, err := a.waitQuiet(ctx, 500*time.Millisecond, 2*time.Minute)
	return err
}

// revocationPhase runs deny+allow cycles of the server-allow policy; each deny stops
// revocationFlows established echo connections.
func (r *runner) revocationPhase(ctx context.Context, node2 *agentRun, gw *genWatcher, pr *prober, ph *RevocationPhase, cycles int) error {
	fp := r.env.pair
	before, err := node2.metrics(ctx)
	if err != nil {
		return err
	}
	for cycle := range cycles {
		if err := ctx.Err(); err != nil {
			return err
		}
		var flows []*echo.Flow
		closeAll := func() {
			for _, f := range flows {
				f.Close()
			}
		}
		for range revocationFlows {
			f, err := startEchoFlow(fp.client.NS, fp.echoAddr())
			if err != nil {
				closeAll()
				return fmt.Errorf("cycle %d: %w", cycle, err)
			}
			flows = append(flows, f)
		}
		t0 := time.Now()
		deny := r.change(ctx, gw, pr, fp, cycle, "policy-update", false, nil)
		dt := RevocationTrial{Cycle: cycle, Direction: "deny", EnforcedMs: deny.EnforcedMs, Error: deny.Error}
		if commit, ok := gw.waitChangeAfter(t0, effectWait); ok && deny.Error == "" {
			var last time.Time
			for _, f := range flows {
				l, ok := f.WaitStopped(revokedQuiet, effectWait)
				if !ok {
					dt.Error = fmt.Sprintf("an established flow still flowed %v after the deny", effectWait)
					break
				}
				if l.After(last) {
					last = l
				}
			}
			dt.DelayMs = max(0, ms(last.Sub(commit)))
		} else if dt.Error == "" {
			dt.Error = "no nf_tables commit on node2"
		}
		closeAll()
		allow := r.change(ctx, gw, pr, fp, cycle, "policy-update", true, nil)
		at := RevocationTrial{Cycle: cycle, Direction: "allow", EnforcedMs: allow.EnforcedMs, Error: allow.Error}
		ph.Trials = append(ph.Trials, dt, at)
		if dt.Error != "" || at.Error != "" {
			ph.Errors++
			r.opts.logf("   cycle %d: %s %s", cycle, dt.Error, at.Error)
			if allow.Error != "" {
				return fmt.Errorf("cycle %d: allowing again: %s", cycle, allow.Error)
			}
		}
	}
	after, err := node2.metrics(ctx)
	if err != nil {
		return err
	}
	ph.Judged = after.Sum("nftpolicy_revocation_flows_judged_total", nil) - before.Sum("nftpolicy_revocation_flows_judged_total", nil)
	ph.summarize()
	r.opts.logf("   %d entries: write → enforced p99 %.1f ms; revocation of %d flows p99 %.1f ms after the commit; %.0f flows judged",
		ph.Entries, ph.Enforced.P99, revocationFlows, ph.Delay.P99, ph.Judged)
	return nil
}

// noneChange labels the attacker pod (on node1) access=granted, or takes the label
// away: the servers' policies on node2 admit it, or no longer, so its address enters
// or leaves a set of node2's ruleset — a change that concerns no established flow
// (the attacker has none on node2).
func (r *runner) noneChange(ctx context.Context, node2 *agentRun, add bool) NoneTrial {
	e := r.env
	t := NoneTrial{Kind: "pod-label: admitted"}
	var label any = "granted"
	if !add {
		// null: the merge patch removes the label, as the pod had it before.
		t.Kind, label = "pod-label: no longer admitted", nil
	}
	before, err := node2.metrics(ctx)
	if err != nil {
		t.Error = err.Error()
		return t
	}
	if err := e.patch(ctx, "pods", benchNS, e.attacker.Name, map[string]any{"metadata": map[string]any{"labels": map[string]any{"access": label}}}); err != nil {
		t.Error = err.Error()
		return t
	}
	// One pass per ruleset change: wait for it, then for quiet.
	deadline := time.Now().Add(effectWait)
	var after Metrics
	for {
		after, err = node2.metrics(ctx)
		if err == nil && after.Sum("nftpolicy_revocation_duration_seconds_count", nil) > before.Sum("nftpolicy_revocation_duration_seconds_count", nil) {
			break
		}
		if time.Now().After(deadline) {
			t.Error = "no revocation pass on node2"
			return t
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := node2.waitQuiet(ctx, 200*time.Millisecond, effectWait); err == nil {
		if m, err := node2.metrics(ctx); err == nil {
			after = m
		}
	}
	t.Passes = after.Sum("nftpolicy_revocation_duration_seconds_count", nil) - before.Sum("nftpolicy_revocation_duration_seconds_count", nil)
	work := after.Sum("nftpolicy_revocation_duration_seconds_sum", nil) - before.Sum("nftpolicy_revocation_duration_seconds_sum", nil)
	// The passes' own judgments: flows learnt of just after an earlier change (the
	// prober's connections) are judged apart (judged="late").
	change := map[string]string{"judged": "change"}
	t.Judged = after.Sum("nftpolicy_revocation_flows_judged_total", change) - before.Sum("nftpolicy_revocation_flows_judged_total", change)
	if t.Passes > 0 {
		t.WorkMs = work / t.Passes * 1000
	}
	return t
}

// waitTracked waits until node2's agent indexes at least n conntrack entries.
func waitTracked(ctx context.Context, a *agentRun, n int) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		m, err := a.metrics(ctx)
		if err == nil && m.Sum("nftpolicy_conntrack_tracked_flows", nil) >= float64(n) {
			return nil
		}
		if time.Now().After(deadline) {
			got := 0.0
			if err == nil {
				got = m.Sum("nftpolicy_conntrack_tracked_flows", nil)
			}
			return fmt.Errorf("the agent indexes %.0f conntrack entries after 2m, want %d", got, n)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// fillConntrack creates n UDP entries in ns's conntrack table, as a busy node holds
// them: clients from 10.200.0.0/16 talking to node2's pods — one in fifty to the
// server through a Service address (so the server's entries are many), the rest
// spread over node2's synthetic pods. They live ten minutes, longer than the
// experiment, and are flushed after it.
func fillConntrack(ns *lab.Netns, n int, server netip.Addr) error {
	f, err := os.Open(ns.Path())
	if err != nil {
		return fmt.Errorf("opening %s: %w", ns, err)
	}
	defer f.Close()
	c, err := ct.Dial(&netlink.Config{NetNS: int(f.Fd())})
	if err != nil {
		return fmt.Errorf("opening conntrack netlink socket in %s: %w", ns, err)
	}
	defer c.Close()
	vip := netip.MustParseAddr("10.96.0.80")
	for i := range n {
		src := netip.AddrFrom4([4]byte{10, 200, byte(i >> 8), byte(i)})
		sport := uint16(1024 + i>>16)
		// Answered flows (seen reply, assured), as established ones are.
		status := ct.StatusSeenReply | ct.StatusAssured | ct.StatusConfirmed
		var fl ct.Flow
		if i%50 == 0 {
			fl = ct.NewFlow(unix.IPPROTO_UDP, status, src, vip, sport, 53, 600, 0)
			fl.TupleReply.IP.SourceAddress = server
		} else {
			dst := addrPlus(synPodBase, synPodsPerNode+i%synPodsPerNode)
			fl = ct.NewFlow(unix.IPPROTO_UDP, status, src, dst, sport, 53, 600, 0)
		}
		if err := c.Create(fl); err != nil {
			return fmt.Errorf("creating conntrack entry %d of %d in %s: %w", i, n, ns, err)
		}
	}
	return nil
}

func (ph *RevocationPhase) summarize() {
	var enforced, delay []float64
	for _, t := range ph.Trials {
		if t.Error != "" {
			continue
		}
		enforced = append(enforced, t.EnforcedMs)
		if t.Direction == "deny" {
			delay = append(delay, t.DelayMs)
		}
	}
	ph.Enforced, ph.Delay = Summarize(enforced), Summarize(delay)
}

func (rr *RevocationReport) summarize() {
	var work []float64
	for _, t := range rr.None {
		if t.Error == "" {
			work = append(work, t.WorkMs)
		}
	}
	rr.NoneWork = Summarize(work)
}

// revocationTargets are the scale targets of revocation.
func revocationTargets(rep *Report, add func(Target, bool)) {
	rr := rep.Revocation
	entries := rep.Profile.RevocationEntries
	full := rr != nil && rr.Full != nil && rr.Full.Delay.N > 0
	var delay, work, ratio float64
	var detail1, detail2, detail3 string
	if full {
		delay = rr.Full.Delay.P99
		detail1 = fmt.Sprintf("%d denies × %d flows; %d entries (%.0f indexed, agent RSS %d MB; first pass over all %.0f ms, %.0f revoked); %.0f flows judged in the phase; p50 %.1f ms; empty table: p99 %.1f ms",
			rr.Full.Delay.N, rr.Flows, rr.Full.Entries, rr.Tracked, rr.RSSBytes>>20, rr.FirstPassMs, rr.FirstPassRevoked, rr.Full.Judged, rr.Full.Delay.P50, rr.Empty.Delay.P99)
	}
	noneOK := rr != nil && rr.NoneWork.N > 0
	if noneOK {
		work = rr.NoneWork.P99
		var judged float64
		for _, t := range rr.None {
			judged += t.Judged
		}
		detail2 = fmt.Sprintf("%d pod label changes concerning no flow; kernel commit → pass done, p50 %.2f ms; %.0f flows judged in all", rr.NoneWork.N, rr.NoneWork.P50, judged)
	}
	ratioOK := full && rr.Empty != nil && rr.Empty.Enforced.N > 0 && rr.Full.Enforced.N > 0
	if ratioOK {
		ratio = rr.Full.Enforced.P99 / rr.Empty.Enforced.P99
		detail3 = fmt.Sprintf("p99 %.1f ms with %d entries vs %.1f ms with %d; %d changes each",
			rr.Full.Enforced.P99, rr.Full.Entries, rr.Empty.Enforced.P99, rr.Empty.Entries, rr.Full.Enforced.N)
	}
	n := count(entries)
	add(Target{Name: fmt.Sprintf("revocation of %d flows with %s conntrack entries, p99 after the commit", revocationFlows, n), Value: delay, Unit: "ms", Op: "<", Limit: 50, Detail: detail1}, full)
	add(Target{Name: fmt.Sprintf("revocation work, change denying no flow, p99 with %s entries", n), Value: work, Unit: "ms", Op: "<", Limit: 5, Detail: detail2}, noneOK)
	add(Target{Name: fmt.Sprintf("API write → enforced p99, %s entries / empty table", n), Value: ratio, Unit: "x", Op: "<=", Limit: 1.2, Detail: detail3}, ratioOK)
}
