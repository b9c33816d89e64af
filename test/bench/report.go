package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
)

// Target is one of issue 5's goals, judged from numbers of this run.
type Target struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
	// Op is "<", "<=" or ">=": Value Op Limit must hold.
	Op    string  `json:"op"`
	Limit float64 `json:"limit"`
	Pass  bool    `json:"pass"`
	// Missing is set when the run did not measure it (group not run, or failed).
	Missing bool   `json:"missing,omitempty"`
	Detail  string `json:"detail,omitempty"`
}

func (t *Target) judge() {
	switch t.Op {
	case "<":
		t.Pass = t.Value < t.Limit
	case "<=":
		t.Pass = t.Value <= t.Limit
	case ">=":
		t.Pass = t.Value >= t.Limit
	case "":
		// A figure reported without a goal (target "—").
		t.Pass = true
	}
	t.Pass = t.Pass && !t.Missing
}

// Result is PASS, FAIL or "n/a".
func (t Target) Result() string {
	switch {
	case t.Missing:
		return "n/a"
	case t.Op == "":
		return "—"
	case t.Pass:
		return "PASS"
	}
	return "FAIL"
}

func evaluateTargets(rep *Report) []Target {
	var ts []Target
	add := func(t Target, ok bool) {
		t.Missing = !ok
		t.judge()
		ts = append(ts, t)
	}
	p := rep.Profile

	// Data path.
	dp := rep.DataPath
	paired := func(name string) (float64, bool) {
		if dp == nil || dp.Paired == nil {
			return 0, false
		}
		s, ok := dp.Paired[name]
		return s.Median, ok
	}
	bg := p.Medium.String()
	for _, c := range []string{"c1", "c8"} {
		v, ok := paired("cps_" + c + " d/b")
		add(Target{Name: fmt.Sprintf("new connections/s (d)/(b), %s", loopsText(c)), Value: v, Op: ">=", Limit: 0.95,
			Detail: "median of per-round ratios; (d) = nftpolicy with " + bg + " pods/policies"}, ok)
	}
	v, ok := paired("p50_us_c1 d-b")
	add(Target{Name: "added p50 connect latency (d)-(b)", Value: v, Unit: "µs", Op: "<=", Limit: 2,
		Detail: "1 loop; median of per-round differences"}, ok)
	v, ok = paired("stream d/b")
	add(Target{Name: "established throughput (d)/(b)", Value: v, Op: ">=", Limit: 0.98,
		Detail: "one TCP stream; median of per-round ratios"}, ok)
	if p.cnpWanted() {
		cnpDetail := ""
		if c := rep.CNP; c != nil {
			cnpDetail = fmt.Sprintf("; (e) = (d) + %d ClusterNetworkPolicies, the flow crosses %d + %d Admin rules (node1 + node2) to a Pass", c.objects(), c.WalkedRules["node1"], c.WalkedRules["node2"])
		}
		for _, c := range []string{"c1", "c8"} {
			v, ok := paired("cps_" + c + " e/b")
			add(Target{Name: fmt.Sprintf("new connections/s (e)/(b), %s", loopsText(c)), Value: v, Op: ">=", Limit: 0.95,
				Detail: "median of per-round ratios" + cnpDetail}, ok)
		}
		v, ok := paired("p50_us_c1 e-b")
		add(Target{Name: "added p50 connect latency (e)-(b)", Value: v, Unit: "µs", Op: "<=", Limit: 2,
			Detail: "1 loop; median of per-round differences; the client under ClusterNetworkPolicies"}, ok)
		for _, c := range []string{"c1", "c8"} {
			v, ok := paired("cps_" + c + " f/b")
			add(Target{Name: fmt.Sprintf("new connections/s (f)/(b), %s", loopsText(c)), Value: v, Op: ">=", Limit: 0.95,
				Detail: "median of per-round ratios; (f) = (e)'s ruleset, client2 → server2, which no ClusterNetworkPolicy selects"}, ok)
		}
		for _, c := range []string{"c1", "c8"} {
			v, ok := paired("cps_" + c + " f/d")
			add(Target{Name: fmt.Sprintf("pods no CNP selects: new connections/s (f)/(d), %s", loopsText(c)), Value: v, Op: ">=", Limit: 0.95,
				Detail: "median of per-round ratios; the same NetworkPolicy path with and without the ClusterNetworkPolicy load"}, ok)
		}
	}
	for _, c := range []string{"c1", "c8"} {
		v, ok := paired("cps_" + c + " g/d")
		add(Target{Name: fmt.Sprintf("pods no audited policy selects: new connections/s (g)/(d), %s", loopsText(c)), Value: v, Op: ">=", Limit: 0.95,
			Detail: "median of per-round ratios; (g) = (d) + audited policies selecting other pods of both nodes"}, ok)
	}
	for _, c := range []string{"c1", "c8"} {
		v, ok := paired("cps_" + c + " j/d")
		add(Target{Name: fmt.Sprintf("conntrack event listener (revocation's index): new connections/s (j)/(d), %s", loopsText(c)), Value: v, Op: ">=", Limit: 0.95,
			Detail: "median of per-round ratios; (j) = (d) with the agent's conntrack event listeners on both nodes"}, ok)
	}
	if dp != nil && dp.Flood != nil {
		f := dp.Flood
		add(Target{Name: "SYN flood at a denied pod: agent CPU increase", Value: f.RaisePct, Unit: "% core", Op: "<=", Limit: 0.5,
			Detail: fmt.Sprintf("%d SYNs at %d/s; %d accepted by the target", f.Sent, f.RatePPS, f.Accepted)}, f.Accepted == 0)
	} else {
		add(Target{Name: "SYN flood at a denied pod: agent CPU increase", Unit: "% core", Op: "<=", Limit: 0.5}, false)
	}

	// Control plane.
	cp := rep.Control
	var large, small map[string]*IncrementalRun
	if cp != nil && cp.IncrementalSummary != nil {
		large, small = cp.IncrementalSummary[p.Large.String()], cp.IncrementalSummary[p.Small.String()]
	}
	{
		var xs []float64
		if cp != nil {
			for _, r := range cp.Incremental {
				if r.Scale == p.Large && r.Syncs > 0 {
					xs = append(xs, r.PerSyncMs)
				}
			}
		}
		add(Target{Name: "pod/policy change → kernel inside the agent, p99 at " + p.Large.String(), Value: Percentile(xs, 0.99), Unit: "ms", Op: "<", Limit: 50,
			Detail: fmt.Sprintf("compute + commit per sync, %d changes of %d kinds", len(xs), len(incrementalKinds))}, len(xs) > 0)
	}
	enforceTargets := func(er *EnforceReport, what, revocation, at string) {
		ok := er != nil && er.Enforced.N > 0
		detail := ""
		if ok {
			detail = fmt.Sprintf("%d changes, %d failed; new connection every 1 ms", len(er.Trials), er.Failures)
		}
		add(Target{Name: what + " → enforced, p99 at " + at, Value: val(ok, func() float64 { return er.Enforced.P99 }), Unit: "ms", Op: "<", Limit: 300, Detail: detail}, ok && er.Failures == 0)
		ok = er != nil && er.Revoked.N > 0
		add(Target{Name: revocation + ", p99 at " + at, Value: val(ok, func() float64 { return er.Revoked.P99 }), Unit: "ms", Op: "<", Limit: 500,
			Detail: val2(ok, func() string {
				return fmt.Sprintf("%d denies; last echo after the write; %.0f ms of it after the commit (median)", er.Revoked.N, er.RevocationDelay.P50)
			})}, ok)
	}
	enforceAt := func(sc Scale, what string) *EnforceReport {
		if cp == nil {
			return nil
		}
		for _, x := range cp.Enforce {
			if x.Scale == sc && x.What == what {
				return x
			}
		}
		return nil
	}
	for _, sc := range []Scale{p.Medium, p.Large} {
		enforceTargets(enforceAt(sc, enforceNP), "API write", "revocation of an established flow", sc.String())
	}
	scaleTargets(rep, add)
	if p.cnpWanted() {
		at := p.Medium.String() + " + CNPs"
		if c := rep.CNP; c != nil {
			at = fmt.Sprintf("%s + %d CNPs", c.Background, c.objects())
		}
		enforceTargets(enforceAt(p.Medium, enforceCNP), "ClusterNetworkPolicy write", "revocation by a ClusterNetworkPolicy write", at)
		enforceTargets(enforceAt(p.Medium, enforceNPUnselected), "pods no CNP selects: NetworkPolicy write", "pods no CNP selects: revocation", at)
	}
	for _, c := range []struct {
		s     Scale
		limit float64
	}{{p.Medium, 500}, {p.Large, 2000}} {
		var cs *ColdSyncRun
		if cp != nil && cp.ColdSummary != nil {
			cs = cp.ColdSummary[c.s.String()]
		}
		t := Target{Name: "cold full sync " + c.s.String() + " (compute + commit), one transaction", Unit: "ms", Op: "<", Limit: c.limit}
		if cs != nil {
			t.Value = cs.ComputeMs + cs.CommitMs
			t.Detail = fmt.Sprintf("%d transaction(s), %d elements; ready after %.0f ms", cs.Transactions, cs.Elements, cs.ReadyMs)
		}
		add(t, cs != nil)
		if cs != nil && cs.Transactions != 1 {
			ts[len(ts)-1].Pass = false
		}
	}
	{
		worst, which := 0.0, ""
		var parts []string
		for _, k := range incrementalKinds {
			l, s := large[k], small[k]
			if l == nil || s == nil || s.PerSyncMs == 0 {
				continue
			}
			ratio := l.PerSyncMs / s.PerSyncMs
			parts = append(parts, fmt.Sprintf("%s %.1fx", k, ratio))
			if ratio > worst {
				worst, which = ratio, k
			}
		}
		add(Target{Name: fmt.Sprintf("incremental change at %s vs %s (worst kind)", p.Large, p.Small), Value: worst, Unit: "x", Op: "<=", Limit: 1.2,
			Detail: strings.TrimSpace(which + ": " + strings.Join(parts, ", "))}, len(parts) > 0)
	}

	revocationTargets(rep, add)

	// Resources.
	res := func(s Scale) *ResourceRun {
		if rep.Resource == nil {
			return nil
		}
		for i := range rep.Resource.Runs {
			if rep.Resource.Runs[i].Scale == s && rep.Resource.Runs[i].RSSBytes > 0 {
				return &rep.Resource.Runs[i]
			}
		}
		return nil
	}
	for _, c := range []struct {
		s     Scale
		limit float64
	}{{p.Medium, 100}} {
		rr := res(c.s)
		t := Target{Name: fmt.Sprintf("agent RSS at %s pods", count(c.s.Pods)), Unit: "MB", Op: "<", Limit: c.limit}
		if rr != nil {
			t.Value = float64(rr.RSSBytes) / 1e6
			t.Detail = fmt.Sprintf("idle; Go heap %.0f MB; peak RSS %.0f MB", rr.HeapAllocBytes/1e6, float64(rr.HWMBytes)/1e6)
		}
		add(t, rr != nil)
	}
	{
		worst, okIdle, detail := 0.0, false, ""
		for _, s := range []Scale{p.Medium, p.Large} {
			if rr := res(s); rr != nil {
				okIdle = true
				if rr.IdleAmortizedPct >= worst {
					worst = rr.IdleAmortizedPct
					detail = fmt.Sprintf("at %s: %.2f%% over %.0f s + one periodic resync a minute (%.0f ms CPU)", s, rr.IdleCPUPct, rr.IdleSeconds, rr.ResyncCPUms)
				}
			}
		}
		add(Target{Name: "idle agent CPU", Value: worst, Unit: "% core", Op: "<", Limit: 1, Detail: detail}, okIdle)
	}
	{
		// Counted at the API server for the resources the agent watches: a LIST after
		// the initial sync is a relist, a WATCH one that ended (and was restarted). The
		// agent's own GETs also count its discovery check for the ClusterNetworkPolicy
		// CRD (--cluster-policy-check-period), which is neither.
		gets, relists, okL := 0.0, 0.0, false
		for _, s := range []Scale{p.Medium, p.Large} {
			if rr := res(s); rr != nil && rr.AgentRequests != nil {
				okL = true
				gets += rr.AgentRequestsAfterSync["GET"]
				relists += rr.AfterSyncRequests["LIST"] + rr.AfterSyncRequests["WATCH"]
			}
		}
		add(Target{Name: "LIST/WATCH requests after the initial sync", Value: relists, Op: "<=", Limit: 0,
			Detail: fmt.Sprintf("API server LISTs and ended WATCHes of the watched resources through idle and churn; the agent's GETs (watches and discovery checks): %.0f", gets)}, okL)
	}
	if slices.Contains(rep.Groups, GroupFanout) {
		// Only when asked for: the smoke test of the lab groups requires every target
		// it reports to be measured.
		fanoutTargets(rep, add)
	}
	return ts
}

// scaleTargets are the targets of the issue "Scale" (target 3): the 100k/10k point
// (XLarge) and a stricter 50k/5k (Large). A first sync is the agent's own "first
// ruleset applied" duration (cache walk, compile, commit); RSS is the idle agent's.
func scaleTargets(rep *Report, add func(Target, bool)) {
	p, cp := rep.Profile, rep.Control
	cold := func(s Scale) *ColdSyncRun {
		if cp == nil || cp.ColdSummary == nil {
			return nil
		}
		return cp.ColdSummary[s.String()]
	}
	rss := func(s Scale) *ResourceRun {
		if rep.Resource == nil {
			return nil
		}
		for i := range rep.Resource.Runs {
			if r := &rep.Resource.Runs[i]; r.Scale == s && r.RSSBytes > 0 {
				return r
			}
		}
		return nil
	}
	firstSync := func(s Scale, limit float64) {
		c := cold(s)
		t := Target{Name: "first sync at " + s.String(), Unit: "ms", Op: "<", Limit: limit}
		if c != nil {
			t.Value = c.SyncMs
			t.Detail = fmt.Sprintf("median of %d starts; compute %.0f + commit %.0f ms, %d elements in %d transaction(s)", c.Rep, c.ComputeMs, c.CommitMs, c.Elements, c.Transactions)
		}
		add(t, c != nil)
	}
	ready := func(s Scale, limit float64) {
		c := cold(s)
		t := Target{Name: "start → ready at " + s.String(), Unit: "ms", Op: "<", Limit: limit}
		if c != nil {
			t.Value = c.ReadyMs
			t.Detail = fmt.Sprintf("process start to /readyz: lists decoded into the cache, first sync; CPU %.0f ms, RSS %.0f MB at ready", c.CPUms, float64(c.RSSBytes)/1e6)
		}
		add(t, c != nil)
	}
	memory := func(s Scale, limit float64) {
		rr := rss(s)
		t := Target{Name: fmt.Sprintf("agent RSS at %s pods", count(s.Pods)), Unit: "MB", Op: "<", Limit: limit}
		if rr != nil {
			t.Value = float64(rr.RSSBytes) / 1e6
			t.Detail = fmt.Sprintf("idle; Go heap %.0f MB; peak RSS %.0f MB", rr.HeapAllocBytes/1e6, float64(rr.HWMBytes)/1e6)
		}
		add(t, rr != nil)
	}
	if x := p.XLarge; x.Pods > 0 {
		firstSync(x, 500)
		ready(x, 3000)
		memory(x, 250)
	}
	firstSync(p.Large, 250)
	memory(p.Large, 150)
	{
		var er *EnforceReport
		if cp != nil {
			for _, x := range cp.Enforce {
				if x.Scale == p.Large && x.What == enforceNP {
					er = x
				}
			}
		}
		ok := er != nil && er.Enforced.N > 0
		t := Target{Name: "API write → enforced, p99 at " + p.Large.String() + " (scale target)", Unit: "ms", Op: "<", Limit: 30}
		if ok {
			t.Value = er.Enforced.P99
			t.Detail = fmt.Sprintf("%d changes, %d failed; kernel commit p99 %.0f ms; node2's agent %.1f ms compute + %.1f ms commit per sync",
				len(er.Trials), er.Failures, er.Kernel.P99, er.AgentComputeMs, er.AgentCommitMs)
		}
		add(t, ok && er.Failures == 0)
	}
	{
		var l, s *IncrementalRun
		if cp != nil && cp.IncrementalSummary != nil {
			l, s = cp.IncrementalSummary[p.Large.String()]["pod-add"], cp.IncrementalSummary[p.Small.String()]["pod-add"]
		}
		ok := l != nil && s != nil && s.PerSyncMs > 0
		t := Target{Name: fmt.Sprintf("pod-add at %s vs %s", p.Large, p.Small), Unit: "x", Op: "<=", Limit: 1.2}
		if ok {
			t.Value = l.PerSyncMs / s.PerSyncMs
			t.Detail = fmt.Sprintf("median ms per sync (compute + commit): %.2f vs %.2f", l.PerSyncMs, s.PerSyncMs)
		}
		add(t, ok)
	}
}

func loopsText(c string) string { return map[string]string{"c1": "1 loop", "c8": "8 loops"}[c] }

func val(ok bool, f func() float64) float64 {
	if !ok {
		return 0
	}
	return f()
}

func val2(ok bool, f func() string) string {
	if !ok {
		return ""
	}
	return f()
}

// ReadReport reads a bench.json written by WriteJSON.
func ReadReport(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &rep, nil
}

// WriteJSON writes the report as indented JSON to path.
func (rep *Report) WriteJSON(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// PrintTable writes the human-readable summary: one section per group, then the
// targets with PASS/FAIL.
func (rep *Report) PrintTable(w io.Writer) {
	p := rep.Profile
	code := "agent " + short(rep.Host.AgentRevision)
	if rep.Host.AgentRevision == "" {
		// Binaries built without VCS stamping: name the working tree instead.
		code = "tree " + short(rep.Host.GitCommit)
		if rep.Host.GitDirty {
			code += "+dirty"
		}
	}
	fmt.Fprintf(w, "nftpolicy bench (%s profile): %d CPUs, kernel %s, %s; %s; %.0f s\n",
		p.Name, rep.Host.CPUs, rep.Host.Kernel, rep.Host.GoVersion, code, rep.Seconds)
	if p.Name != "full" {
		fmt.Fprintf(w, "(scaled down: the targets are set for 10k/1k and 50k/5k; this run's %s and %s stand in for them, so its verdicts are indicative only)\n", p.Medium, p.Large)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	defer tw.Flush()
	row := func(cells ...any) {
		s := make([]string, len(cells))
		for i, c := range cells {
			s[i] = fmt.Sprint(c)
		}
		fmt.Fprintln(tw, strings.Join(s, "\t"))
	}
	if dp := rep.DataPath; dp != nil && len(dp.Summary) > 0 {
		rounds := 0
		for _, r := range dp.Runs {
			rounds = max(rounds, r.Round+1)
		}
		row()
		row(fmt.Sprintf("DATA PATH: client (node1) → server (node2), TCP; medians of %d interleaved rounds", rounds))
		row("config", "conn/s 1 loop", "p50/p99 µs", "conn/s 8 loops", "p50/p99 µs", "stream Gbit/s", "ruleset node1/node2 (elements)")
		for _, cfg := range dataPathConfigs {
			s := dp.Summary[cfg]
			if s == nil {
				continue
			}
			name := "(" + cfg + ") " + map[string]string{"a": "no rules", "b": "conntrack only", "c": "nftpolicy", "d": "nftpolicy + " + dp.Background.String(),
				"e": "(d) + CNPs, client under Admin", "f": "(e), pods no CNP selects",
				"g": "(d) + audited policies, other pods", "h": "(g), server2 under audited deny-all", "i": "(d), client2 → server2", "j": "(d) + conntrack event listeners"}[cfg]
			size := ""
			if rs := dp.Rulesets[rulesetOf(cfg)]; rs != nil {
				size = fmt.Sprintf("%d/%d", rs["node1"].Elements, rs["node2"].Elements)
			}
			stream := "-"
			if measuresStream(cfg) {
				stream = fmt.Sprintf("%.2f", s.Gbps)
			}
			row(name, fmt.Sprintf("%.0f", s.CPS1), fmt.Sprintf("%.0f/%.0f", s.P50us1, s.P99us1),
				fmt.Sprintf("%.0f", s.CPS8), fmt.Sprintf("%.0f/%.0f", s.P50us8, s.P99us8), stream, size)
		}
		row()
		row("paired per round", "median", "middle half of the rounds")
		for _, k := range []string{"cps_c1 d/b", "cps_c8 d/b", "cps_c1 c/b", "cps_c8 c/b", "cps_c1 d/c", "cps_c1 b/a",
			"cps_c1 e/b", "cps_c8 e/b", "cps_c1 e/d", "cps_c8 e/d", "cps_c1 f/b", "cps_c8 f/b", "cps_c1 f/d", "cps_c8 f/d",
			"cps_c1 g/d", "cps_c8 g/d", "cps_c1 h/i", "cps_c8 h/i", "cps_c1 h/g", "cps_c8 h/g", "cps_c1 j/d", "cps_c8 j/d",
			"stream d/b", "stream c/b", "stream b/a", "stream e/b", "stream f/b"} {
			if s, ok := dp.Paired[k]; ok {
				row(k, fmt.Sprintf("%.3f", s.Median), fmt.Sprintf("%.3f – %.3f", Percentile(s.Samples, 0.25), Percentile(s.Samples, 0.75)))
			}
		}
		for _, k := range []string{"p50_us_c1 d-b", "p50_us_c1 c-b", "p50_us_c1 d-c", "p50_us_c1 b-a", "p50_us_c1 e-b", "p50_us_c1 e-d", "p50_us_c1 f-d", "p50_us_c1 g-d", "p50_us_c1 h-i"} {
			if s, ok := dp.Paired[k]; ok {
				row(k, fmt.Sprintf("%+.2f µs", s.Median), fmt.Sprintf("%+.2f – %+.2f", Percentile(s.Samples, 0.25), Percentile(s.Samples, 0.75)))
			}
		}
		if c := rep.CNP; c != nil && dp.Summary["e"] != nil {
			row(fmt.Sprintf("(e), (f): %s", c.describe()))
		}
		if a := dp.Audit; a != nil && dp.Summary["g"] != nil {
			row(fmt.Sprintf("(g), (h): %s", a.describe(dp.Background)))
		}
		if f := dp.Flood; f != nil {
			var cpu []string
			for _, n := range []string{"node1", "node2"} {
				cpu = append(cpu, fmt.Sprintf("%s %.0f→%.0f ms", n, f.AgentCPUIdleMs[n], f.AgentCPUFloodMs[n]))
			}
			row(fmt.Sprintf("SYN flood at the denied pod: %d SYNs in %.1f s (%d accepted); agent CPU quiet→flood window: %s",
				f.Sent, f.Seconds, f.Accepted, strings.Join(cpu, ", ")))
		}
	}
	if cp := rep.Control; cp != nil {
		if len(cp.ColdSummary) > 0 {
			row()
			row("COLD FULL SYNC: agent start on node1 against a preloaded API server (median)")
			row("pods/policies", "start→ready ms", "first sync ms", "compute ms", "commit ms", "chains/rules/elements", "transactions", "CPU ms", "RSS MB")
			for _, s := range []Scale{p.Small, p.Medium, p.Large, p.XLarge} {
				c := cp.ColdSummary[s.String()]
				if c == nil {
					continue
				}
				row(s, fmt.Sprintf("%.0f", c.ReadyMs), fmt.Sprintf("%.0f", c.SyncMs), fmt.Sprintf("%.0f", c.ComputeMs), fmt.Sprintf("%.0f", c.CommitMs),
					fmt.Sprintf("%d/%d/%d", c.Chains, c.Rules, c.Elements), c.Transactions, fmt.Sprintf("%.0f", c.CPUms), fmt.Sprintf("%.0f", float64(c.RSSBytes)/1e6))
			}
		}
		if len(cp.IncrementalSummary) > 0 {
			row()
			row("INCREMENTAL CHANGE → KERNEL inside the agent: ms per sync (compute + commit), median")
			var scales []Scale
			for _, s := range []Scale{p.Small, p.Large} {
				if cp.IncrementalSummary[s.String()] != nil {
					scales = append(scales, s)
				}
			}
			head := []any{"change"}
			for _, s := range scales {
				head = append(head, s.String(), "(compute+commit, syncs; CPU)")
			}
			if len(scales) == 2 {
				head = append(head, "ratio")
			}
			row(head...)
			for _, k := range incrementalKinds {
				cells := []any{k}
				var vals []float64
				for _, s := range scales {
					m := cp.IncrementalSummary[s.String()][k]
					if m == nil {
						cells = append(cells, "-", "")
						vals = append(vals, 0)
						continue
					}
					n := float64(max(m.Syncs, 1))
					cells = append(cells, fmt.Sprintf("%.1f", m.PerSyncMs), fmt.Sprintf("(%.1f+%.1f, %d; %.0f ms)", m.ComputeMs/n, m.CommitMs/n, m.Syncs, m.CPUms))
					vals = append(vals, m.PerSyncMs)
				}
				if len(vals) == 2 && vals[0] > 0 {
					cells = append(cells, fmt.Sprintf("%.1fx", vals[1]/vals[0]))
				}
				row(cells...)
			}
		}
		// NetworkPolicy alone first, then the experiments with ClusterNetworkPolicies.
		var enforce []*EnforceReport
		for _, np := range []bool{true, false} {
			for _, er := range cp.Enforce {
				if (er.What == enforceNP) == np {
					enforce = append(enforce, er)
				}
			}
		}
		for _, er := range enforce {
			if er.Enforced.N == 0 {
				continue
			}
			row()
			title := fmt.Sprintf("API WRITE → ENFORCED at %s", er.Scale)
			at := fmt.Sprintf("%s + %d CNPs", er.Scale, er.ClusterPolicies)
			switch er.What {
			case enforceCNP:
				title = fmt.Sprintf("CLUSTERNETWORKPOLICY WRITE → ENFORCED at %s (client → server under the Admin policies; %s)", at, strings.Join(cnpEnforceKinds, ", "))
			case enforceNPUnselected:
				title = fmt.Sprintf("NETWORKPOLICY WRITE → ENFORCED for pods no CNP selects at %s (client2 → server2; %s)", at, strings.Join(enforceKinds, ", "))
			}
			row(fmt.Sprintf("%s: %d changes (%d failed); node2's agent %.0f ms compute + %.0f ms commit per sync; %d conntrack entries on node2 at the end",
				title, len(er.Trials), er.Failures, er.AgentComputeMs, er.AgentCommitMs, er.ConntrackEntries))
			row("ms after the write returned", "p50", "p90", "p99", "max", "n")
			for _, x := range []struct {
				name string
				s    Summary
			}{{"enforced (prober, all)", er.Enforced}, {"  deny", er.Deny}, {"  allow", er.Allow},
				{"kernel commit (node2 generation)", er.Kernel}, {"established flow revoked", er.Revoked},
				{"  revocation after the commit", er.RevocationDelay}} {
				row(x.name, f0(x.s.P50), f0(x.s.P90), f0(x.s.P99), f0(x.s.Max), x.s.N)
			}
			if len(er.Sweep) > 0 {
				var pts []string
				for _, pt := range er.Sweep {
					pts = append(pts, fmt.Sprintf("%.0f ms with %d", pt.DelayMs, pt.Entries))
				}
				row("  revocation after the commit by conntrack entries on node2: " + strings.Join(pts, ", "))
			}
		}
	}
	if rs := rep.Resource; rs != nil && len(rs.Runs) > 0 {
		row()
		row("RESOURCES: node1's agent alone")
		row("pods/policies", "RSS MB (peak)", "heap MB", "idle CPU %", "+resync/min %", "resync CPU ms", "churn", "CPU %", "syncs", "in sync %", "alloc MB", "requests at start", "after sync")
		for _, r := range rs.Runs {
			row(r.Scale, fmt.Sprintf("%.0f (%.0f)", float64(r.RSSBytes)/1e6, float64(r.HWMBytes)/1e6), fmt.Sprintf("%.0f", r.HeapAllocBytes/1e6), fmt.Sprintf("%.2f", r.IdleCPUPct),
				fmt.Sprintf("%.2f", r.IdleAmortizedPct), fmt.Sprintf("%.0f", r.ResyncCPUms), fmt.Sprintf("%.0f pods/s", r.ChurnRate),
				fmt.Sprintf("%.0f", r.ChurnCPUPct), r.ChurnSyncs, fmt.Sprintf("%.0f", r.ChurnSyncBusyPct), fmt.Sprintf("%.0f", r.ChurnAllocBytes/1e6),
				fmt.Sprintf("agent %s; API %s, %.0f watches open", methods(r.AgentRequests), verbs(r.StartRequests), r.OpenWatches),
				fmt.Sprintf("agent %s; API %s", methods(r.AgentRequestsAfterSync), verbs(r.AfterSyncRequests)))
		}
	}
	if f := rep.Fanout; f != nil && len(f.Points) > 0 {
		f.printTable(row)
	}
	if gb := rep.GoBench; gb != nil && len(gb.Results) > 0 {
		row()
		row("GO BENCHMARKS: " + gb.Command)
		row("benchmark", "ms/op", "MB/op", "allocs/op", "other")
		for _, r := range gb.Results {
			var other []string
			for k, v := range r.Metrics {
				if k != "ns/op" && k != "B/op" && k != "allocs/op" {
					other = append(other, fmt.Sprintf("%g %s", v, k))
				}
			}
			slices.Sort(other)
			row(strings.TrimPrefix(r.Package, "github.com/nftpolicy/nftpolicy/")+"."+strings.TrimPrefix(r.Name, "Benchmark"),
				fmt.Sprintf("%.2f", r.Metrics["ns/op"]/1e6), fmt.Sprintf("%.1f", r.Metrics["B/op"]/1e6), fmt.Sprintf("%.0f", r.Metrics["allocs/op"]), strings.Join(other, ", "))
		}
	}
	if len(rep.Targets) > 0 {
		row()
		row("TARGETS")
		row("target", "value", "goal", "result", "how")
		for _, t := range rep.Targets {
			v := "-"
			if !t.Missing {
				v = fmtVal(t.Value, t.Unit)
			}
			goal := t.Op + " " + fmtVal(t.Limit, t.Unit)
			if t.Op == "" {
				goal = "—"
			}
			row(t.Name, v, goal, t.Result(), t.Detail)
		}
	}
	if len(rep.Errors) > 0 {
		row()
		row("FAILED STEPS")
		for _, e := range rep.Errors {
			row("  " + firstLine(e))
		}
	}
}

func fmtVal(v float64, unit string) string {
	var s string
	switch {
	case v == 0:
		s = "0"
	case v < 10 && v > -10:
		s = fmt.Sprintf("%.3g", v)
	default:
		s = fmt.Sprintf("%.0f", v)
	}
	if unit != "" && unit != "x" {
		return s + " " + unit
	}
	return s + unit
}

func f0(v float64) string { return fmt.Sprintf("%.0f", v) }

func methods(m map[string]float64) string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if v := m[k]; v != 0 {
			out = append(out, fmt.Sprintf("%s %.0f", k, v))
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, " ")
}

func verbs(m map[string]float64) string {
	var out []string
	for _, k := range []string{"LIST", "WATCH", "GET"} {
		if v := m[k]; v != 0 {
			out = append(out, fmt.Sprintf("%s %.0f", k, v))
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, " ")
}

func short(s string) string {
	if rev, dirty := strings.CutSuffix(s, "+dirty"); dirty && len(rev) > 12 {
		return rev[:12] + "+dirty"
	}
	if len(s) > 12 {
		return s[:12]
	}
	if s == "" {
		return "unknown"
	}
	return s
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " …"
	}
	return s
}
