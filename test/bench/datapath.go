package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/pkg/dataplane/conntrack"
	"github.com/nftpolicy/nftpolicy/test/lab"
)

// The data path configurations. (c), (d) and (e) are the agents' own tables, captured
// from the kernel while the agents ran and loaded back with nft for every run, so
// that the configurations can alternate within a round in seconds. (f) is (e)'s
// table with another flow measured: client2 → server2, which no ClusterNetworkPolicy
// selects. (g), (h) and (i) are the audit configurations (audit.go): (g) is (d) plus
// audited policies selecting other pods than the client and the server, (h) is (g)'s
// table with client2 → server2, whose server an audited deny-all selects, and (i) is
// (d)'s table with that flow. (j) is (d) with what the agent adds to every connection
// beside its table: the conntrack event listener of revocation's flow index.
var dataPathConfigs = []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"}

var dataPathConfigNames = map[string]string{
	"a": "no rules (no table, no conntrack)",
	"b": "conntrack only (forward chains with ct state established,related accept)",
	"c": "nftpolicy, a policy allowing the flow",
	"d": "nftpolicy, the same with the background load",
	"e": "nftpolicy, (d) plus the ClusterNetworkPolicy load; the client and the server are subjects of Admin policies whose rules the flow walks to a Pass",
	"f": "(e)'s ruleset, the flow client2 → server2 between pods no ClusterNetworkPolicy selects (NetworkPolicies of the same shape as (d)'s)",
	"g": "nftpolicy, (d) plus audited policies (nftpolicy.io/mode: audit) selecting the other pods of both nodes, none the client or the server",
	"h": "(g)'s ruleset, the flow client2 → server2, whose server an audited deny-all selects (shadow evaluation)",
	"i": "(d)'s ruleset, the flow client2 → server2 ((h) without the audited policies)",
	"j": "(d) with the agent's conntrack event listeners running on both nodes (revocation's flow index): what the kernel's conntrack events cost each connection",
}

// rulesetOf is the configuration whose table a configuration loads.
func rulesetOf(cfg string) string {
	switch cfg {
	case "f":
		return "e"
	case "h":
		return "g"
	case "i", "j":
		return "d"
	}
	return cfg
}

// flowOf is the pair whose flow a configuration measures.
func (e *env) flowOf(cfg string) *flowPair {
	switch cfg {
	case "f", "h", "i":
		return e.pair2
	}
	return e.pair
}

// measuresStream reports whether a configuration runs the stream test: the audit
// configurations do not, as established packets never reach the audit chains (and
// the rounds stay short).
func measuresStream(cfg string) bool { return cfg < "g" }

// ctOnlyTable is configuration (b): the agent's two forward base chains at the same
// priorities, holding only the conntrack accept every stateful filter starts with.
const ctOnlyTable = `table inet nftpolicy-bench-ct {
	chain egress-forward {
		type filter hook forward priority filter - 10; policy accept;
		ct state established,related accept
	}
	chain ingress-forward {
		type filter hook forward priority filter - 5; policy accept;
		ct state established,related accept
	}
}
`

// resetTables deletes the tables of every configuration (creating them first, so
// that the delete cannot fail), in the same transaction as what follows it.
const resetTables = "table inet nftpolicy\ndelete table inet nftpolicy\n" +
	"table inet nftpolicy-bench-ct\ndelete table inet nftpolicy-bench-ct\n"

// Connect and stream tests of a round.
const (
	testConnect1 = "connect-c1"
	testConnect8 = "connect-c8"
	testStream   = "stream"
)

// DataPathReport holds the data path measurements.
type DataPathReport struct {
	// Background is the synthetic load of configuration (d).
	Background Scale             `json:"background"`
	Configs    map[string]string `json:"configs"`
	// Rulesets is the size of the agents' tables (c) and (d) per node.
	Rulesets map[string]map[string]RulesetSize `json:"rulesets"`
	// Runs are the raw measurements, in the order they ran.
	Runs []DataPathRun `json:"runs"`
	// Summary holds per configuration the median over rounds of each number.
	Summary map[string]*ConfigSummary `json:"summary,omitempty"`
	// Paired holds ratios and differences between configurations computed per
	// round ("cps_c1 d/b": connections per second of (d) divided by (b) in the same
	// round) and their median.
	Paired map[string]PairedStat `json:"paired,omitempty"`
	Flood  *FloodReport          `json:"flood,omitempty"`
	// Audit is the audit load of configurations (g), (h) and (i).
	Audit *AuditLoad `json:"audit,omitempty"`
}

// RulesetSize is the agent's nftpolicy_ruleset_size.
type RulesetSize struct {
	Chains   int `json:"chains"`
	Rules    int `json:"rules"`
	Elements int `json:"elements"`
}

// DataPathRun is one measurement of one configuration.
type DataPathRun struct {
	Round   int         `json:"round"`
	Config  string      `json:"config"`
	Test    string      `json:"test"`
	Connect *ConnectRun `json:"connect,omitempty"`
	Stream  *StreamRun  `json:"stream,omitempty"`
}

// ConfigSummary is the median over rounds.
type ConfigSummary struct {
	CPS1   float64 `json:"cps_c1"`
	CPS8   float64 `json:"cps_c8"`
	P50us1 float64 `json:"p50_us_c1"`
	P99us1 float64 `json:"p99_us_c1"`
	P50us8 float64 `json:"p50_us_c8"`
	P99us8 float64 `json:"p99_us_c8"`
	Gbps   float64 `json:"stream_gbps"`
}

// PairedStat is a per-round comparison and its median.
type PairedStat struct {
	Samples []float64 `json:"samples"`
	Median  float64   `json:"median"`
}

// FloodReport is the SYN flood at a denied pod, with the agents running.
type FloodReport struct {
	RatePPS  int     `json:"rate_pps"`
	Seconds  float64 `json:"seconds"`
	Sent     int     `json:"sent"`
	Accepted int64   `json:"accepted_by_target"`
	// AgentCPUIdleMs and AgentCPUFloodMs are each agent's CPU time during a quiet
	// window and during the flood window of the same length.
	AgentCPUIdleMs  map[string]float64 `json:"agent_cpu_idle_ms"`
	AgentCPUFloodMs map[string]float64 `json:"agent_cpu_flood_ms"`
	// RaisePct is the largest increase over the quiet window, in % of one core.
	RaisePct float64 `json:"raise_pct_of_core"`
}

// captureRuleset runs an agent on both nodes at the current scale, checks that they
// enforce (the client reaches the server, the attacker does not reach the denied
// pod), saves their tables as configuration cfg, and for (d) runs the SYN flood while
// they are still up.
func (r *runner) captureRuleset(ctx context.Context, cfg string) error {
	e := r.env
	agents, stop, err := e.startEnforcing(ctx)
	defer stop()
	if err != nil {
		return fmt.Errorf("agents' ruleset (%s): %w", cfg, err)
	}
	// Kept only when complete: a configuration without its ruleset is left out of
	// the rounds.
	texts, sizes, walked := map[string]string{}, map[string]RulesetSize{}, map[string]int{}
	for _, a := range agents {
		text, err := nft(ctx, a.node.NS, "-s", "list", "table", "inet", "nftpolicy")
		if err != nil {
			return err
		}
		if cfg == "e" {
			if walked[a.node.Name], err = checkCNPTable(text, a.node.Name, r.opts.Profile); err != nil {
				return fmt.Errorf("%s: %w", a.node.Name, err)
			}
		}
		texts[a.node.Name] = text
		m, err := a.metrics(ctx)
		if err != nil {
			return err
		}
		size := func(kind string) int {
			return int(m.Sum("nftpolicy_ruleset_size", map[string]string{"kind": kind}))
		}
		sizes[a.node.Name] = RulesetSize{Chains: size("chains"), Rules: size("rules"), Elements: size("elements")}
	}
	if r.rulesets == nil {
		r.rulesets = map[string]map[string]string{}
	}
	r.rulesets[cfg] = texts
	dp := r.rep.DataPath
	if dp.Rulesets == nil {
		dp.Rulesets = map[string]map[string]RulesetSize{}
	}
	dp.Rulesets[cfg] = sizes
	switch cfg {
	case "d":
		return r.flood(ctx, agents)
	case "e":
		r.rep.CNP.WalkedRules = walked
		r.opts.logf("   rules before the Pass that decides client → server: node1 (egress) %d, node2 (ingress) %d", walked["node1"], walked["node2"])
	}
	return nil
}

// startAgents starts an agent on both nodes (in parallel).
// startEnforcing starts an agent on both nodes, waits until they have synced and are
// quiet, and checks they enforce the benchmark's policy. stop stops the agents (also
// when err is set).
func (e *env) startEnforcing(ctx context.Context) (agents []*agentRun, stop func(), err error) {
	stop = func() {
		for _, a := range agents {
			_ = a.stop()
		}
	}
	if agents, err = e.startAgents(ctx); err != nil {
		return agents, stop, err
	}
	for _, a := range agents {
		if _, err := a.waitQuiet(ctx, 300*time.Millisecond, time.Minute); err != nil {
			return agents, stop, err
		}
	}
	return agents, stop, e.checkEnforced()
}

func (e *env) startAgents(ctx context.Context, extra ...string) ([]*agentRun, error) {
	nodes := []*lab.ClusterNode{e.n1, e.n2}
	agents := make([]*agentRun, len(nodes))
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() { agents[i], errs[i] = e.startAgent(ctx, n, extra...) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, a := range agents {
			if a != nil {
				_ = a.stop()
			}
		}
		return nil, err
	}
	return agents, nil
}

// checkEnforced checks the bench's flows: client → server and client2 → server2
// allowed, attacker → denied dropped.
func (e *env) checkEnforced() error {
	for _, fp := range []*flowPair{e.pair, e.pair2} {
		if err := e.connect(fp.client, fp.server, sinkPort, 2*time.Second); err != nil {
			return fmt.Errorf("%s → %s should be allowed: %w", fp.client.Name, fp.server.Name, err)
		}
	}
	if err := e.connect(e.attacker, e.denied, sinkPort, 300*time.Millisecond); err == nil {
		return errors.New("attacker → denied should be denied, but it connected")
	}
	return nil
}

// connect opens one connection from pod from to pod to's port.
func (e *env) connect(from, to *lab.ClusterPod, port int, timeout time.Duration) error {
	sa := &unix.SockaddrInet4{Port: port, Addr: to.IPv4.As4()}
	return from.NS.Do(func() error {
		_, err := connectOnce(sa, timeout)
		return err
	})
}

// flood measures both agents' CPU during a quiet window and during a SYN flood from
// the attacker at the denied pod of the same length.
func (r *runner) flood(ctx context.Context, agents []*agentRun) error {
	e, p := r.env, r.opts.Profile
	fr := &FloodReport{RatePPS: p.FloodRate, AgentCPUIdleMs: map[string]float64{}, AgentCPUFloodMs: map[string]float64{}}
	r.rep.DataPath.Flood = fr
	cpus := func() (map[string]time.Duration, error) {
		out := map[string]time.Duration{}
		for _, a := range agents {
			c, err := a.cpuPrecise()
			if err != nil {
				return nil, err
			}
			out[a.node.Name] = c
		}
		return out, nil
	}
	c0, err := cpus()
	if err != nil {
		return err
	}
	time.Sleep(p.FloodDuration)
	c1, err := cpus()
	if err != nil {
		return err
	}
	accepted := e.deniedSink.accepted.Load()
	start := time.Now()
	sent, err := synFlood(e.attacker.NS, e.attacker.IPv4, netip.AddrPortFrom(e.denied.IPv4, sinkPort), p.FloodRate, p.FloodDuration)
	fr.Seconds = time.Since(start).Seconds()
	if err != nil {
		return err
	}
	c2, err := cpus()
	if err != nil {
		return err
	}
	fr.Sent = sent
	fr.Accepted = e.deniedSink.accepted.Load() - accepted
	for n := range c0 {
		idle, flood := ms(c1[n]-c0[n]), ms(c2[n]-c1[n])
		fr.AgentCPUIdleMs[n], fr.AgentCPUFloodMs[n] = idle, flood
		fr.RaisePct = max(fr.RaisePct, (flood-idle)/10/fr.Seconds)
	}
	r.opts.logf("   SYN flood: %d SYNs in %.1fs, agent CPU idle %v ms, during flood %v ms", sent, fr.Seconds, fr.AgentCPUIdleMs, fr.AgentCPUFloodMs)
	// The attacker's node tracked every SYN (SYN_SENT, two minutes): clear it so the
	// next measurements start from the same state.
	return errors.Join(flushConntrack(ctx, e.n1.NS), flushConntrack(ctx, e.n2.NS))
}

// dataPathRounds alternates the configurations: every round measures each of them
// once (connect-close loops with 1 and 8 connections in flight, one long stream), in
// an order rotated per round, with conntrack flushed before every run.
func (r *runner) dataPathRounds(ctx context.Context) error {
	e, p, dp := r.env, r.opts.Profile, r.rep.DataPath
	dp.Configs = dataPathConfigNames
	configs := slices.DeleteFunc(slices.Clone(dataPathConfigs), func(c string) bool {
		return c != "a" && c != "b" && r.rulesets[rulesetOf(c)] == nil
	})
	dir := filepath.Join(r.opts.OutDir, "rulesets")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	scripts := map[string]map[string]string{} // config → node → file
	for _, cfg := range configs {
		scripts[cfg] = map[string]string{}
		for _, n := range []*lab.ClusterNode{e.n1, e.n2} {
			body := resetTables
			switch cfg {
			case "b":
				body += ctOnlyTable
			default:
				body += r.rulesets[rulesetOf(cfg)][n.Name]
			}
			f := filepath.Join(dir, fmt.Sprintf("%s-%s.nft", cfg, n.Name))
			if err := os.WriteFile(f, []byte(body), 0o644); err != nil {
				return err
			}
			scripts[cfg][n.Name] = f
		}
	}
	apply := func(cfg string) error {
		for _, n := range []*lab.ClusterNode{e.n1, e.n2} {
			if _, err := nft(ctx, n.NS, "-f", scripts[cfg][n.Name]); err != nil {
				return fmt.Errorf("configuration %s: %w", cfg, err)
			}
		}
		return nil
	}
	defer func() { _ = apply("a") }()
	// listening stops configuration (j)'s conntrack listeners (also on an error).
	var listening func()
	defer func() {
		if listening != nil {
			listening()
		}
	}()
	flush := func() error { return errors.Join(flushConntrack(ctx, e.n1.NS), flushConntrack(ctx, e.n2.NS)) }
	for round := range p.Rounds {
		order := slices.Concat(configs[round%len(configs):], configs[:round%len(configs)])
		for _, cfg := range order {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := apply(cfg); err != nil {
				return err
			}
			if cfg == "j" {
				var err error
				if listening, err = e.listenConntrack(ctx); err != nil {
					return err
				}
			}
			fp := e.flowOf(cfg)
			if round == 0 {
				// The reloaded tables must still enforce.
				if err := e.connect(fp.client, fp.server, sinkPort, 2*time.Second); err != nil {
					return fmt.Errorf("configuration %s: %s → %s: %w", cfg, fp.client.Name, fp.server.Name, err)
				}
				if cfg != "a" && cfg != "b" {
					if err := e.connect(e.attacker, e.denied, sinkPort, 300*time.Millisecond); err == nil {
						return fmt.Errorf("configuration %s: attacker → denied connected", cfg)
					}
				}
			}
			for _, conc := range []int{1, 8} {
				if err := flush(); err != nil {
					return err
				}
				run, err := connectLoad(fp.client.NS, fp.sinkAddr(), conc, p.ConnectDuration)
				if err != nil {
					return err
				}
				run.ConntrackEntries = conntrackCount(e.n1.NS) + conntrackCount(e.n2.NS)
				if run.Conns == 0 {
					return fmt.Errorf("configuration %s: no connection succeeded (%d errors)", cfg, run.Errors)
				}
				test := testConnect1
				if conc == 8 {
					test = testConnect8
				}
				dp.Runs = append(dp.Runs, DataPathRun{Round: round, Config: cfg, Test: test, Connect: &run})
			}
			if listening != nil {
				listening()
				listening = nil
			}
			if !measuresStream(cfg) {
				continue
			}
			if err := flush(); err != nil {
				return err
			}
			st, err := streamLoad(fp.client.NS, fp.streamAddr(), fp.discard, p.StreamDuration)
			if err != nil {
				return fmt.Errorf("configuration %s: %w", cfg, err)
			}
			dp.Runs = append(dp.Runs, DataPathRun{Round: round, Config: cfg, Test: testStream, Stream: &st})
		}
		r.opts.logf("   round %d/%d: %s", round+1, p.Rounds, dp.roundLine(round))
	}
	return nil
}

func (dp *DataPathReport) roundLine(round int) string {
	var parts []string
	for _, cfg := range dataPathConfigs {
		var s []string
		for _, run := range dp.Runs {
			if run.Round != round || run.Config != cfg {
				continue
			}
			switch {
			case run.Connect != nil:
				s = append(s, fmt.Sprintf("%.0f/s p50 %.0fµs", run.Connect.CPS, run.Connect.P50us))
			case run.Stream != nil:
				s = append(s, fmt.Sprintf("%.1f Gbit/s", run.Stream.Gbps))
			}
		}
		if len(s) > 0 {
			parts = append(parts, cfg+": "+strings.Join(s, ", "))
		}
	}
	return strings.Join(parts, "; ")
}

// series returns, per round, the value f picks from the run of cfg and test (NaN
// rounds are skipped by the pairing).
func (dp *DataPathReport) series(cfg, test string, f func(DataPathRun) float64) []float64 {
	rounds := 0
	for _, run := range dp.Runs {
		rounds = max(rounds, run.Round+1)
	}
	out := make([]float64, rounds)
	for _, run := range dp.Runs {
		if run.Config == cfg && run.Test == test {
			out[run.Round] = f(run)
		}
	}
	return out
}

func cps(r DataPathRun) float64   { return r.Connect.CPS }
func p50us(r DataPathRun) float64 { return r.Connect.P50us }
func p99us(r DataPathRun) float64 { return r.Connect.P99us }
func gbps(r DataPathRun) float64  { return r.Stream.Gbps }

// summarize fills Summary and Paired from Runs.
func (dp *DataPathReport) summarize() {
	if len(dp.Runs) == 0 {
		return
	}
	dp.Summary = map[string]*ConfigSummary{}
	for _, cfg := range dataPathConfigs {
		if !slices.ContainsFunc(dp.Runs, func(r DataPathRun) bool { return r.Config == cfg }) {
			continue
		}
		med := func(test string, f func(DataPathRun) float64) float64 {
			return Median(nonZero(dp.series(cfg, test, f)))
		}
		dp.Summary[cfg] = &ConfigSummary{
			CPS1: med(testConnect1, cps), CPS8: med(testConnect8, cps),
			P50us1: med(testConnect1, p50us), P99us1: med(testConnect1, p99us),
			P50us8: med(testConnect8, p50us), P99us8: med(testConnect8, p99us),
			Gbps: med(testStream, gbps),
		}
	}
	dp.Paired = map[string]PairedStat{}
	pair := func(name string, samples []float64) {
		if len(samples) > 0 {
			dp.Paired[name] = PairedStat{Samples: samples, Median: Median(samples)}
		}
	}
	for _, cmp := range [][2]string{{"d", "b"}, {"c", "b"}, {"b", "a"}, {"d", "c"}, {"e", "b"}, {"f", "b"}, {"e", "d"}, {"f", "d"}, {"g", "d"}, {"h", "i"}, {"h", "g"}, {"j", "d"}} {
		x, y := cmp[0], cmp[1]
		if dp.Summary[x] == nil || dp.Summary[y] == nil {
			continue
		}
		ratio := func(test string, f func(DataPathRun) float64) []float64 {
			return pairedRatios(dp.series(x, test, f), dp.series(y, test, f))
		}
		diff := func(test string, f func(DataPathRun) float64) []float64 {
			return pairedDiffs(dp.series(x, test, f), dp.series(y, test, f))
		}
		pair(fmt.Sprintf("cps_c1 %s/%s", x, y), ratio(testConnect1, cps))
		pair(fmt.Sprintf("cps_c8 %s/%s", x, y), ratio(testConnect8, cps))
		pair(fmt.Sprintf("stream %s/%s", x, y), ratio(testStream, gbps))
		pair(fmt.Sprintf("p50_us_c1 %s-%s", x, y), diff(testConnect1, p50us))
		pair(fmt.Sprintf("p99_us_c1 %s-%s", x, y), diff(testConnect1, p99us))
		pair(fmt.Sprintf("p50_us_c8 %s-%s", x, y), diff(testConnect8, p50us))
	}
}

func nonZero(xs []float64) []float64 {
	return slices.DeleteFunc(slices.Clone(xs), func(x float64) bool { return x == 0 })
}

// pairedRatios and pairedDiffs skip rounds where either value is missing.
func pairedRatios(a, b []float64) []float64 { return ratios(paired(a, b)) }

func pairedDiffs(a, b []float64) []float64 { return diffs(paired(a, b)) }

// paired returns the rounds where both a and b have a value (non-zero).
func paired(a, b []float64) (x, y []float64) {
	for i := range min(len(a), len(b)) {
		if a[i] != 0 && b[i] != 0 {
			x, y = append(x, a[i]), append(y, b[i])
		}
	}
	return x, y
}

// listenConntrack runs, in both nodes, the conntrack tracker the agent runs for
// revocation (subscribed to update and destroy events through its filter) until stop
// is called: configuration (j) measures what those events cost each connection.
func (e *env) listenConntrack(ctx context.Context) (stop func(), err error) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var files []*os.File
	stop = func() {
		cancel()
		wg.Wait()
		for _, f := range files {
			_ = f.Close()
		}
	}
	for _, n := range []*lab.ClusterNode{e.n1, e.n2} {
		f, err := os.Open(n.NS.Path())
		if err != nil {
			stop()
			return nil, fmt.Errorf("opening %s: %w", n.NS, err)
		}
		files = append(files, f)
		tr := &conntrack.Tracker{NetNS: int(f.Fd()), Log: logr.Discard()}
		wg.Go(func() { _ = tr.Run(ctx) })
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		err = tr.WaitReady(wctx)
		wcancel()
		if err == nil && tr.Stats().Polling {
			err = errors.New("no conntrack events in this kernel")
		}
		if err != nil {
			stop()
			return nil, fmt.Errorf("conntrack listener in %s: %w", n.NS, err)
		}
	}
	return stop, nil
}
