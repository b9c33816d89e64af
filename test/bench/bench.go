package bench

import (
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nftpolicy/nftpolicy/test/lab"
)

// Groups of measurements (Options.Groups, nftpolicy-bench --only).
const (
	GroupDataPath     = "datapath"
	GroupControlPlane = "controlplane"
	GroupResources    = "resources"
	GroupGoBench      = "gobench"
	// GroupRevocation is revocation with a full conntrack table (revocation.go).
	GroupRevocation = "revocation"
	// GroupFanout runs many emulated agents against an API server of its own
	// (fanout.go).
	GroupFanout = "fanout"
)

// AllGroups lists the groups in the order they are reported.
var AllGroups = []string{GroupDataPath, GroupControlPlane, GroupRevocation, GroupResources, GroupFanout, GroupGoBench}

// Profile holds every size and duration of a run. Full is what `make bench` runs,
// Quick a short run of the same shape, Tiny the smoke test's.
type Profile struct {
	Name string `json:"name"`
	// Small, Medium and Large are the synthetic cluster sizes (1k/100, 10k/1k and
	// 50k/5k in the full run). The data path's loaded case (d) runs at Medium.
	Small  Scale `json:"small"`
	Medium Scale `json:"medium"`
	Large  Scale `json:"large"`
	// XLarge is the scale point beyond Large (100k/10k in the full run; zero: none):
	// only the cold sync and the resources are measured there, after everything else.
	XLarge Scale `json:"xlarge,omitzero"`

	// Rounds of the data path: every round measures every configuration once,
	// in a rotated order.
	Rounds          int           `json:"rounds"`
	ConnectDuration time.Duration `json:"connect_duration_ns"`
	StreamDuration  time.Duration `json:"stream_duration_ns"`
	FloodRate       int           `json:"flood_rate_pps"`
	FloodDuration   time.Duration `json:"flood_duration_ns"`

	// ColdSyncReps agent starts per scale (LargeColdSyncReps at Large).
	ColdSyncReps      int `json:"cold_sync_reps"`
	LargeColdSyncReps int `json:"large_cold_sync_reps"`
	// IncrementalReps changes of every kind at Small and Large.
	IncrementalReps int `json:"incremental_reps"`
	// LatencyCycles deny+allow cycles of API write → enforced at Medium (two
	// changes each; the deny of each cycle also revokes an established flow), and
	// LargeLatencyCycles at Large.
	LatencyCycles      int `json:"latency_cycles"`
	LargeLatencyCycles int `json:"large_latency_cycles"`
	// ConntrackSweep are the connect-close bursts that fill node2's conntrack
	// table before a revocation (after the cycles at Medium).
	ConntrackSweep []time.Duration `json:"conntrack_sweep_ns"`

	// RevocationEntries conntrack entries fill node2's table for the revocation
	// experiment at Medium, which runs RevocationCycles deny+allow cycles with the
	// table as the traffic left it and as many with it full.
	RevocationEntries int `json:"revocation_entries"`
	RevocationCycles  int `json:"revocation_cycles"`

	IdleWindow   time.Duration `json:"idle_window_ns"`
	ChurnWindow  time.Duration `json:"churn_window_ns"`
	ChurnRate    float64       `json:"churn_pods_per_second"`
	ResyncPeriod time.Duration `json:"resync_period_ns"`
	ResyncWindow time.Duration `json:"resync_window_ns"`

	// The ClusterNetworkPolicy load, on top of Medium: CNPAdmin Admin-tier and
	// CNPBaseline Baseline-tier policies with 10 ingress and 10 egress rules each;
	// CNPClientPolicies of the Admin ones select the client and the server (0: no
	// ClusterNetworkPolicy measurements). CNPLatencyCycles deny+allow cycles of
	// each of the two API write → enforced experiments with the load.
	CNPAdmin          int `json:"cnp_admin"`
	CNPBaseline       int `json:"cnp_baseline"`
	CNPClientPolicies int `json:"cnp_client_policies"`
	CNPLatencyCycles  int `json:"cnp_latency_cycles"`

	// GoBenchTime is go test's -benchtime, GoBenchFilter its -bench.
	GoBenchTime   string `json:"gobench_time"`
	GoBenchFilter string `json:"gobench_filter"`

	// Fanout sizes the fan-out group.
	Fanout FanoutProfile `json:"fanout"`
}

// FullProfile is `make bench`: about 10 minutes on 2 cores.
func FullProfile() Profile {
	return Profile{
		Name:  "full",
		Small: Scale{1000, 100}, Medium: Scale{10000, 1000}, Large: Scale{50000, 5000}, XLarge: Scale{100000, 10000},
		Rounds: 10, ConnectDuration: time.Second, StreamDuration: 2 * time.Second,
		FloodRate: 20000, FloodDuration: 5 * time.Second,
		ColdSyncReps: 3, LargeColdSyncReps: 2, IncrementalReps: 9, LatencyCycles: 100, LargeLatencyCycles: 30,
		ConntrackSweep:    []time.Duration{0, 300 * time.Millisecond, time.Second},
		RevocationEntries: 250000, RevocationCycles: 30,
		IdleWindow: 10 * time.Second, ChurnWindow: 10 * time.Second, ChurnRate: 10,
		ResyncPeriod: 2 * time.Second, ResyncWindow: 8 * time.Second,
		CNPAdmin: 50, CNPBaseline: 50, CNPClientPolicies: 5, CNPLatencyCycles: 60,
		GoBenchTime: "5x", GoBenchFilter: ".",
		Fanout: fullFanout(),
	}
}

// QuickProfile is --quick: the same measurements, smaller and shorter (about 3
// minutes); its numbers are indicative only.
func QuickProfile() Profile {
	return Profile{
		Name:  "quick",
		Small: Scale{1000, 100}, Medium: Scale{5000, 500}, Large: Scale{10000, 1000},
		Rounds: 3, ConnectDuration: 500 * time.Millisecond, StreamDuration: time.Second,
		FloodRate: 10000, FloodDuration: 2 * time.Second,
		ColdSyncReps: 2, LargeColdSyncReps: 1, IncrementalReps: 3, LatencyCycles: 15, LargeLatencyCycles: 5,
		ConntrackSweep:    []time.Duration{0, 500 * time.Millisecond},
		RevocationEntries: 50000, RevocationCycles: 10,
		IdleWindow: 3 * time.Second, ChurnWindow: 3 * time.Second, ChurnRate: 10,
		ResyncPeriod: time.Second, ResyncWindow: 3 * time.Second,
		CNPAdmin: 50, CNPBaseline: 50, CNPClientPolicies: 5, CNPLatencyCycles: 10,
		GoBenchTime: "1x", GoBenchFilter: ".",
		Fanout: quickFanout(),
	}
}

// TinyProfile is the smoke test's: every measurement once, on a handful of objects.
func TinyProfile() Profile {
	return Profile{
		Name:  "tiny",
		Small: Scale{40, 4}, Medium: Scale{80, 8}, Large: Scale{120, 12}, XLarge: Scale{160, 16},
		Rounds: 1, ConnectDuration: 150 * time.Millisecond, StreamDuration: 200 * time.Millisecond,
		FloodRate: 2000, FloodDuration: 300 * time.Millisecond,
		ColdSyncReps: 1, LargeColdSyncReps: 1, IncrementalReps: 1, LatencyCycles: 2, LargeLatencyCycles: 1,
		ConntrackSweep:    []time.Duration{100 * time.Millisecond},
		RevocationEntries: 2000, RevocationCycles: 2,
		IdleWindow: 300 * time.Millisecond, ChurnWindow: 500 * time.Millisecond, ChurnRate: 10,
		ResyncPeriod: 300 * time.Millisecond, ResyncWindow: 700 * time.Millisecond,
		CNPAdmin: 6, CNPBaseline: 2, CNPClientPolicies: 5, CNPLatencyCycles: 3,
		GoBenchTime: "1x", GoBenchFilter: "DiffOneLabelChange/pods=1000/",
		Fanout: tinyFanout(),
	}
}

// Options configures Run.
type Options struct {
	Profile Profile
	// Groups to run (default AllGroups).
	Groups []string
	// OutDir receives bench.json, the agents' and API server's logs and the
	// rulesets of the data path configurations.
	OutDir string
	// AgentBinary is nftpolicy-agent (default $NFTPOLICY_AGENT, else
	// bin/nftpolicy-agent of the repository).
	AgentBinary string
	// AgentArgs are extra flags for every agent (e.g. -v=1 to debug).
	AgentArgs []string
	// ControlPlaneDir holds kube-apiserver and etcd (default as lab.StartCluster).
	ControlPlaneDir string
	// RepoRoot is where the Go benchmarks run (default: found from the working
	// directory).
	RepoRoot string
	// Progress receives a line per step (nil discards).
	Progress io.Writer

	logMu sync.Mutex
}

func (o *Options) logf(format string, args ...any) {
	if o.Progress == nil {
		return
	}
	o.logMu.Lock()
	defer o.logMu.Unlock()
	fmt.Fprintf(o.Progress, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func (o *Options) want(group string) bool { return slices.Contains(o.Groups, group) }

// ParseGroups splits a comma-separated list of groups and checks the names.
func ParseGroups(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" || s == "all" {
		return slices.Clone(AllGroups), nil
	}
	var out []string
	for g := range strings.SplitSeq(s, ",") {
		g = strings.TrimSpace(g)
		if !slices.Contains(AllGroups, g) {
			return nil, fmt.Errorf("unknown group %q (want %s)", g, strings.Join(AllGroups, ", "))
		}
		if !slices.Contains(out, g) {
			out = append(out, g)
		}
	}
	return out, nil
}

// Report is everything a run measured; bench.json holds it.
type Report struct {
	Schema  int       `json:"schema"`
	Started time.Time `json:"started"`
	Seconds float64   `json:"seconds"`
	Host    Host      `json:"host"`
	Profile Profile   `json:"profile"`
	Groups  []string  `json:"groups"`
	// LabPrefix starts the names of the run's network namespaces.
	LabPrefix string              `json:"lab_prefix,omitempty"`
	DataPath  *DataPathReport     `json:"datapath,omitempty"`
	Control   *ControlPlaneReport `json:"controlplane,omitempty"`
	Resource  *ResourcesReport    `json:"resources,omitempty"`
	// Revocation is revocation with a full conntrack table (controlplane group).
	Revocation *RevocationReport `json:"revocation,omitempty"`
	// CNP describes the ClusterNetworkPolicy load of the data path's (e) and (f) and
	// of the control plane's experiments with it.
	CNP     *CNPReport     `json:"cnp,omitempty"`
	Fanout  *FanoutReport  `json:"fanout,omitempty"`
	GoBench *GoBenchReport `json:"gobench,omitempty"`
	Targets []Target       `json:"targets"`
	// Steps times every step of the run.
	Steps []Step `json:"steps"`
	// Errors lists the steps that failed; the rest of the run went on.
	Errors []string `json:"errors,omitempty"`
}

// Step is one timed part of the run.
type Step struct {
	Name    string  `json:"name"`
	Seconds float64 `json:"seconds"`
	Error   string  `json:"error,omitempty"`
}

// Host describes the machine and the code measured.
type Host struct {
	Kernel    string `json:"kernel"`
	CPUs      int    `json:"cpus"`
	GoVersion string `json:"go"`
	Agent     string `json:"agent"`
	// AgentRevision is the VCS revision stamped into the agent binary (with
	// "+dirty" when built from a modified tree).
	AgentRevision string `json:"agent_revision,omitempty"`
	GitCommit     string `json:"git_commit,omitempty"`
	GitDirty      bool   `json:"git_dirty"`
	LoadBefore    string `json:"loadavg_before,omitempty"`
}

// SchemaVersion of bench.json.
const SchemaVersion = 1

// Run runs the selected measurements and returns the report (also when some steps
// failed: they are listed in Report.Errors, and the error says how many).
func Run(ctx context.Context, opts *Options) (*Report, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	// The load loops run on OS threads locked into pod namespaces (8 connect
	// loops, the sink's accept threads, the prober, pollers): with GOMAXPROCS at the
	// number of CPUs they would queue for the Go scheduler's Ps instead of sharing
	// the CPUs through the kernel's scheduler, and the servers would fall behind.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(max(runtime.GOMAXPROCS(0), 16)))
	start := time.Now()
	rep := &Report{Schema: SchemaVersion, Started: start, Profile: opts.Profile, Groups: opts.Groups, Host: hostInfo(opts)}
	r := &runner{opts: opts, rep: rep}

	if labGroups(opts.Groups) {
		r.step(ctx, "lab", 3*time.Minute, func(ctx context.Context) error {
			var err error
			r.env, err = startEnv(ctx, opts)
			if r.env != nil {
				rep.LabPrefix = r.env.c.Prefix()
			}
			return err
		})
		if r.env != nil {
			r.runLab(ctx)
			// Also after an interrupt or the overall timeout.
			r.step(context.WithoutCancel(ctx), "lab teardown", 3*time.Minute, func(context.Context) error { return r.env.Close() })
		}
	}
	if opts.want(GroupFanout) {
		// After the lab's teardown: its API server and agents would share the CPUs the
		// fan-out measures.
		rep.Fanout = &FanoutReport{Profile: opts.Profile.Fanout}
		r.step(ctx, "fan-out", 60*time.Minute, func(ctx context.Context) error {
			return runFanout(ctx, opts, opts.Profile.Fanout, rep.Fanout)
		})
	}
	if opts.want(GroupGoBench) {
		r.step(ctx, "go benchmarks", 10*time.Minute, func(ctx context.Context) error {
			var err error
			rep.GoBench, err = runGoBench(ctx, opts)
			return err
		})
	}
	rep.Targets = evaluateTargets(rep)
	rep.Seconds = time.Since(start).Seconds()
	if len(rep.Errors) > 0 {
		return rep, fmt.Errorf("%d of %d steps failed: %s", len(rep.Errors), len(rep.Steps), strings.Join(rep.Errors, "; "))
	}
	return rep, nil
}

// runLab grows the cluster scale by scale and runs at each scale what the selected
// groups measure there: loading 50k pods takes a while, so it is done once.
func (r *runner) runLab(ctx context.Context) {
	p, o := r.opts.Profile, r.opts
	dp := o.want(GroupDataPath)
	cp := o.want(GroupControlPlane)
	rs := o.want(GroupResources)
	rv := o.want(GroupRevocation)
	if dp {
		r.rep.DataPath = &DataPathReport{Background: p.Medium}
		r.step(ctx, "datapath: ruleset (c) without background", 3*time.Minute, func(ctx context.Context) error {
			return r.captureRuleset(ctx, "c")
		})
	}
	if cp {
		r.rep.Control = &ControlPlaneReport{}
		r.scale(ctx, p.Small)
		r.coldAndIncremental(ctx, p.Small, p.ColdSyncReps, true)
	}
	if dp || cp || rs || rv {
		r.scale(ctx, p.Medium)
	}
	if dp {
		r.step(ctx, "datapath: ruleset (d) and SYN flood at "+p.Medium.String(), 5*time.Minute, func(ctx context.Context) error {
			return r.captureRuleset(ctx, "d")
		})
		r.step(ctx, "datapath: ruleset (g) with audited policies at "+p.Medium.String(), 5*time.Minute, r.auditRuleset)
	}
	if (dp || cp) && p.cnpWanted() {
		r.clusterPolicies(ctx, dp, cp)
	}
	if dp {
		r.step(ctx, "datapath: rounds", 15*time.Minute, r.dataPathRounds)
		r.rep.DataPath.summarize()
	}
	if cp {
		r.coldAndIncremental(ctx, p.Medium, p.ColdSyncReps, false)
		r.step(ctx, "controlplane: API write → enforced at "+p.Medium.String(), 10*time.Minute, func(ctx context.Context) error {
			return r.enforceLatency(ctx, enforceSpec{what: enforceNP, pair: r.env.pair, kinds: enforceKinds, cycles: p.LatencyCycles, sweep: p.ConntrackSweep})
		})
	}
	if rv {
		r.step(ctx, fmt.Sprintf("revocation with %s conntrack entries at %s", count(p.RevocationEntries), p.Medium), 10*time.Minute, r.revocationScale)
	}
	if rs {
		r.rep.Resource = &ResourcesReport{}
		r.step(ctx, "resources at "+p.Medium.String(), 10*time.Minute, func(ctx context.Context) error {
			return r.resources(ctx, p.Medium)
		})
	}
	if cp || rs {
		r.scale(ctx, p.Large)
	}
	if cp {
		r.coldAndIncremental(ctx, p.Large, p.LargeColdSyncReps, true)
		r.step(ctx, "controlplane: API write → enforced at "+p.Large.String(), 10*time.Minute, func(ctx context.Context) error {
			return r.enforceLatency(ctx, enforceSpec{what: enforceNP, pair: r.env.pair, kinds: enforceKinds, cycles: p.LargeLatencyCycles})
		})
	}
	if rs {
		r.step(ctx, "resources at "+p.Large.String(), 10*time.Minute, func(ctx context.Context) error {
			return r.resources(ctx, p.Large)
		})
	}
	if x := p.XLarge; x.Pods > 0 && (cp || rs) {
		r.scale(ctx, x)
		if cp {
			r.coldAndIncremental(ctx, x, p.LargeColdSyncReps, false)
		}
		if rs {
			r.step(ctx, "resources at "+x.String(), 10*time.Minute, func(ctx context.Context) error {
				return r.resources(ctx, x)
			})
		}
	}
}

// clusterPolicies loads the ClusterNetworkPolicies over the current scale, captures
// the data path's configuration (e) and runs the enforcement experiments with them,
// then removes them (CRD and all) so that what follows measures NetworkPolicies alone,
// as before.
func (r *runner) clusterPolicies(ctx context.Context, dp, cp bool) {
	p, e := r.opts.Profile, r.env
	r.rep.CNP = &CNPReport{Channel: cnpChannel, Background: e.loaded, Admin: p.CNPAdmin, Baseline: p.CNPBaseline,
		RulesPerDirection: cnpRulesPerDirection, ClientPolicies: p.cnpBench()}
	at := e.loaded.String() + fmt.Sprintf(" + %d ClusterNetworkPolicies", r.rep.CNP.objects())
	r.step(ctx, fmt.Sprintf("cnp: the CRD and %d ClusterNetworkPolicies", r.rep.CNP.objects()), 5*time.Minute, func(ctx context.Context) error {
		return e.loadCNP(ctx, p, r.rep.CNP)
	})
	if e.cnpLoaded {
		if dp {
			r.step(ctx, "datapath: ruleset (e) at "+at, 5*time.Minute, func(ctx context.Context) error {
				return r.captureRuleset(ctx, "e")
			})
		}
		if cp {
			r.step(ctx, "controlplane: ClusterNetworkPolicy write → enforced at "+at, 10*time.Minute, func(ctx context.Context) error {
				return r.enforceLatency(ctx, enforceSpec{what: enforceCNP, pair: e.pair, kinds: cnpEnforceKinds, cycles: p.CNPLatencyCycles})
			})
			r.step(ctx, "controlplane: NetworkPolicy write → enforced for pods no ClusterNetworkPolicy selects at "+at, 10*time.Minute, func(ctx context.Context) error {
				return r.enforceLatency(ctx, enforceSpec{what: enforceNPUnselected, pair: e.pair2, kinds: enforceKinds, cycles: p.CNPLatencyCycles})
			})
		}
	}
	if e.cnpInstalled {
		// Also after an interrupt: the rest of the run (if any) must not see them.
		r.step(context.WithoutCancel(ctx), "cnp: remove the ClusterNetworkPolicies and the CRD", 3*time.Minute, e.unloadCNP)
	}
}

func (r *runner) scale(ctx context.Context, s Scale) {
	r.step(ctx, "load "+s.String(), 15*time.Minute, func(ctx context.Context) error { return r.env.ensureScale(ctx, s) })
}

// runner carries a run's state.
type runner struct {
	opts *Options
	rep  *Report
	env  *env

	// rulesets[config][node] is the nft script of a data path configuration.
	rulesets map[string]map[string]string
}

// step runs fn with a timeout, times it and records a failure without stopping the
// run.
func (r *runner) step(ctx context.Context, name string, timeout time.Duration, fn func(context.Context) error) {
	if ctx.Err() != nil {
		r.rep.Steps = append(r.rep.Steps, Step{Name: name, Error: "skipped: " + ctx.Err().Error()})
		r.rep.Errors = append(r.rep.Errors, name+": skipped")
		return
	}
	r.opts.logf("== %s", name)
	start := time.Now()
	sctx, cancel := context.WithTimeout(ctx, timeout)
	err := func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("panic: %v", p)
			}
		}()
		return fn(sctx)
	}()
	cancel()
	st := Step{Name: name, Seconds: time.Since(start).Seconds()}
	if err != nil {
		st.Error = err.Error()
		r.rep.Errors = append(r.rep.Errors, name+": "+err.Error())
		r.opts.logf("   FAILED after %.1fs: %v", st.Seconds, err)
	} else {
		r.opts.logf("   done in %.1fs", st.Seconds)
	}
	r.rep.Steps = append(r.rep.Steps, st)
}

func (o *Options) defaults() error {
	if o.Profile.Name == "" {
		o.Profile = FullProfile()
	}
	if len(o.Groups) == 0 {
		o.Groups = slices.Clone(AllGroups)
	}
	if o.RepoRoot == "" {
		root, err := lab.RepoRoot()
		if err != nil && o.want(GroupGoBench) {
			return err
		}
		o.RepoRoot = root
	}
	if o.OutDir == "" {
		o.OutDir = filepath.Join(o.RepoRoot, "_out", "bench")
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return err
	}
	if !labGroups(o.Groups) && !o.want(GroupFanout) {
		return nil
	}
	if os.Geteuid() != 0 {
		return errors.New("the lab measurements need root (network namespaces, nftables); run as root or --only gobench")
	}
	for _, tool := range []string{"ip", "nft", "conntrack"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found (make deps installs it)", tool)
		}
	}
	if !labGroups(o.Groups) {
		// The fan-out emulates its agents in this process: no agent binary.
		_, err := lab.ControlPlaneDir(o.ControlPlaneDir)
		return err
	}
	if o.AgentBinary == "" {
		o.AgentBinary = os.Getenv("NFTPOLICY_AGENT")
	}
	if o.AgentBinary == "" && o.RepoRoot != "" {
		o.AgentBinary = filepath.Join(o.RepoRoot, "bin", "nftpolicy-agent")
	}
	abs, err := filepath.Abs(o.AgentBinary)
	if err == nil {
		_, err = os.Stat(abs)
	}
	if err != nil {
		return fmt.Errorf("agent binary: %w (make build builds it)", err)
	}
	o.AgentBinary = abs
	if _, err := lab.ControlPlaneDir(o.ControlPlaneDir); err != nil {
		return err
	}
	return nil
}

// labGroups reports whether groups include one measured on the shared lab cluster.
func labGroups(groups []string) bool {
	return slices.ContainsFunc(groups, func(g string) bool {
		return g == GroupDataPath || g == GroupControlPlane || g == GroupRevocation || g == GroupResources
	})
}

func hostInfo(o *Options) Host {
	h := Host{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), Agent: o.AgentBinary}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		h.Kernel = strings.TrimSpace(string(b))
	}
	if bi, err := buildinfo.ReadFile(o.AgentBinary); err == nil {
		dirty := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				h.AgentRevision = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if dirty {
			h.AgentRevision += "+dirty"
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		h.LoadBefore = strings.TrimSpace(string(b))
	}
	if o.RepoRoot != "" {
		if out, err := exec.Command("git", "-C", o.RepoRoot, "rev-parse", "HEAD").Output(); err == nil {
			h.GitCommit = strings.TrimSpace(string(out))
		}
		if out, err := exec.Command("git", "-C", o.RepoRoot, "status", "--porcelain", "--untracked-files=no").Output(); err == nil {
			h.GitDirty = len(strings.TrimSpace(string(out))) > 0
		}
	}
	return h
}
