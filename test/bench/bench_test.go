package bench

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nftpolicy/nftpolicy/test/lab"
)

func TestSummarize(t *testing.T) {
	var xs []float64
	for i := 100; i >= 1; i-- {
		xs = append(xs, float64(i))
	}
	s := Summarize(xs)
	if s.N != 100 || s.Min != 1 || s.Max != 100 || s.P50 != 50 || s.P90 != 90 || s.P99 != 99 || s.Mean != 50.5 {
		t.Errorf("Summarize(1..100) = %+v", s)
	}
	if got := Percentile([]float64{3, 1, 2}, 0.99); got != 3 {
		t.Errorf("p99 of 3 samples = %v, want the maximum", got)
	}
	if got := Median(nil); got != 0 {
		t.Errorf("Median(nil) = %v", got)
	}
	if got := pairedRatios([]float64{10, 0, 9}, []float64{5, 3, 0}); len(got) != 1 || got[0] != 2 {
		t.Errorf("pairedRatios skips missing rounds: %v", got)
	}
}

func TestParseMetrics(t *testing.T) {
	text := `# HELP nftpolicy_sync_duration_seconds Time of one sync
# TYPE nftpolicy_sync_duration_seconds histogram
nftpolicy_sync_duration_seconds_bucket{phase="compute",le="0.0001"} 0
nftpolicy_sync_duration_seconds_sum{phase="compute"} 0.25
nftpolicy_sync_duration_seconds_count{phase="compute"} 5
nftpolicy_sync_duration_seconds_sum{phase="full"} 0.1
nftpolicy_sync_duration_seconds_count{phase="full"} 1
nftpolicy_sync_duration_seconds_sum{phase="incremental"} 0.05
nftpolicy_sync_duration_seconds_count{phase="incremental"} 4
go_memstats_heap_alloc_bytes 1.2345e+07
apiserver_request_total{code="200",component="apiserver",resource="pods",verb="LIST"} 2
apiserver_request_total{code="200",component="apiserver",resource="pods",verb="POST"} 7
apiserver_request_total{code="0",resource="networkpolicies",verb="WATCH",weird="a \"b\", c"} 3
`
	m, err := ParseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	st := syncStatsOf(m)
	if st.ComputeCount != 5 || st.ComputeSum != 0.25 || st.commits() != 5 || st.FullSum != 0.1 {
		t.Errorf("syncStats = %+v", st)
	}
	if v := m.Sum("go_memstats_heap_alloc_bytes", nil); v != 12345000 {
		t.Errorf("heap = %v", v)
	}
	got := requestCounts(m, "pods", "networkpolicies")
	if got["LIST"] != 2 || got["WATCH"] != 3 || got["POST"] != 0 {
		t.Errorf("requestCounts = %v", got)
	}
	if _, err := ParseMetrics(strings.NewReader(`x{a="b} 1`)); err == nil {
		t.Error("unterminated label value accepted")
	}
}

func TestParseGoBench(t *testing.T) {
	out := `goos: linux
pkg: github.com/nftpolicy/nftpolicy/pkg/compiler
cpu: Intel(R) Xeon(R) Processor
BenchmarkCompile/pods=1000/policies=100-2         	       2	   7069928 ns/op	       162.0 elements	       106.0 rules	  600000 B/op	    5746 allocs/op
BenchmarkDiffOneLabelChange/pods=50000/policies=5000-2       	       2	   8724705 ns/op	         3.000 ops
PASS
ok  	github.com/nftpolicy/nftpolicy/pkg/compiler	2.489s
`
	rs := ParseGoBench(out)
	if len(rs) != 2 {
		t.Fatalf("got %d results: %+v", len(rs), rs)
	}
	r := rs[0]
	if r.Package != "github.com/nftpolicy/nftpolicy/pkg/compiler" || r.Name != "BenchmarkCompile/pods=1000/policies=100" || r.N != 2 ||
		r.Metrics["ns/op"] != 7069928 || r.Metrics["elements"] != 162 || r.Metrics["allocs/op"] != 5746 {
		t.Errorf("first result = %+v", r)
	}
	if rs[1].Metrics["ops"] != 3 {
		t.Errorf("second result = %+v", rs[1])
	}
}

func TestParseStatCPU(t *testing.T) {
	// utime 150 and stime 50 ticks (fields 14 and 15); the name has a space and
	// a parenthesis.
	stat := "1234 (nftpolicy (x) a) S 1 1234 1234 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 12 0 100 0 0"
	got, err := parseStatCPU([]byte(stat))
	if err != nil || got != 2*time.Second {
		t.Errorf("parseStatCPU = %v, %v; want 2s", got, err)
	}
	if kb, err := parseStatusKB([]byte("Name:\tx\nVmRSS:\t  2048 kB\n"), "VmRSS:"); err != nil || kb != 2048*1024 {
		t.Errorf("parseStatusKB = %v, %v", kb, err)
	}
}

func TestBuildSYN(t *testing.T) {
	b := make([]byte, 20)
	src, dst := netip.MustParseAddr("10.244.1.11"), netip.MustParseAddrPort("10.244.2.11:8080")
	buildSYN(b, src, dst, 40000, 12345)
	// A correct checksum makes the one's complement sum over the pseudo header
	// and the segment 0xffff.
	var sum uint32
	s4, d4 := src.As4(), dst.Addr().As4()
	for _, w := range [][]byte{s4[:], d4[:], b} {
		for i := 0; i < len(w); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(w[i:]))
		}
	}
	sum += 6 + 20
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	if sum != 0xffff {
		t.Errorf("checksum does not verify: %#x", sum)
	}
	if b[13] != 0x02 || binary.BigEndian.Uint16(b[2:]) != 8080 {
		t.Errorf("not a SYN to 8080: % x", b)
	}
}

func TestParseGroups(t *testing.T) {
	if g, err := ParseGroups("all"); err != nil || len(g) != len(AllGroups) {
		t.Errorf("all: %v %v", g, err)
	}
	if g, err := ParseGroups("datapath, gobench,datapath"); err != nil || strings.Join(g, ",") != "datapath,gobench" {
		t.Errorf("list: %v %v", g, err)
	}
	if _, err := ParseGroups("nope"); err == nil {
		t.Error("unknown group accepted")
	}
}

// TestSmoke runs every lab measurement once at a tiny scale (TinyProfile), the
// ClusterNetworkPolicy ones included: about half a minute. It needs root, nft, conntrack and the control plane; the agent is
// $NFTPOLICY_AGENT (make test sets it) or built here. The Go benchmarks are left
// out: they would run go test inside go test; their parser is tested above.
func TestSmoke(t *testing.T) {
	lab.SkipUnlessCluster(t, "conntrack")
	agent := os.Getenv("NFTPOLICY_AGENT")
	if agent == "" {
		root, err := lab.RepoRoot()
		if err != nil {
			t.Fatal(err)
		}
		agent = filepath.Join(t.TempDir(), "nftpolicy-agent")
		build := exec.Command("go", "build", "-o", agent, "./cmd/nftpolicy-agent")
		build.Dir = root
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("building the agent: %v\n%s", err, out)
		}
	}
	out := t.TempDir()
	opts := &Options{
		Profile: TinyProfile(), Groups: []string{GroupDataPath, GroupControlPlane, GroupRevocation, GroupResources},
		OutDir: out, AgentBinary: agent, Progress: lab.TestLog(t),
	}
	rep := runLogged(t, opts)

	if err := rep.WriteJSON(filepath.Join(out, "bench.json")); err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	b, _ := os.ReadFile(filepath.Join(out, "bench.json"))
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("bench.json: %v", err)
	}
	for _, k := range []string{"datapath", "controlplane", "resources", "targets", "host", "profile", "steps"} {
		if back[k] == nil {
			t.Errorf("bench.json has no %q", k)
		}
	}
	// Every measurement produced its numbers (pass or fail does not matter at
	// this scale).
	for _, tg := range rep.Targets {
		if tg.Missing {
			t.Errorf("target %q was not measured", tg.Name)
		}
	}
	if dp := rep.DataPath; dp == nil || len(dp.Summary) != len(dataPathConfigs) {
		t.Errorf("data path: want %d configurations, got %+v", len(dataPathConfigs), dp)
	} else if dp.Flood == nil || dp.Flood.Sent == 0 || dp.Flood.Accepted != 0 {
		t.Errorf("SYN flood: %+v", dp.Flood)
	}
	// The ClusterNetworkPolicy path: the agents' tables held the load, the flow of
	// (e) walked the bench policies' rules.
	if c := rep.CNP; c == nil || c.WalkedRules["node1"] < cnpRulesPerDirection || c.WalkedRules["node2"] < cnpRulesPerDirection {
		t.Errorf("ClusterNetworkPolicy load: %+v", c)
	}
	if cp := rep.Control; cp != nil {
		for _, c := range cp.Cold {
			if c.Transactions != 1 || c.Elements == 0 {
				t.Errorf("cold sync %s: %d transactions, %d elements", c.Scale, c.Transactions, c.Elements)
			}
		}
		// Two scales without ClusterNetworkPolicies, two experiments with them.
		if len(cp.Enforce) != 4 {
			t.Errorf("API write → enforced: want 4 experiments, got %d", len(cp.Enforce))
		}
		for _, er := range cp.Enforce {
			if er.Failures != 0 || er.Revoked.N == 0 || len(er.Trials) == 0 {
				t.Errorf("API write → enforced at %s %q: %d failures, %d revocations", er.Scale, er.What, er.Failures, er.Revoked.N)
			}
		}
	}
	// Revocation with a full conntrack table: every deny stopped its flows, the
	// agent indexed the entries, and the changes that concern no flow judged none
	// (the scope of a label change is the pod's address alone).
	if rr := rep.Revocation; rr == nil || rr.Full == nil || rr.Empty == nil {
		t.Errorf("revocation: %+v", rr)
	} else {
		if rr.Full.Errors != 0 || rr.Empty.Errors != 0 || rr.Full.Delay.N == 0 {
			t.Errorf("revocation: %d and %d failed cycles, %d denies measured", rr.Empty.Errors, rr.Full.Errors, rr.Full.Delay.N)
		}
		if rr.Tracked < float64(rr.Entries) {
			t.Errorf("revocation: the agent indexed %.0f conntrack entries, want at least %d", rr.Tracked, rr.Entries)
		}
		for _, n := range rr.None {
			if n.Error != "" || n.Passes == 0 || n.Judged != 0 {
				t.Errorf("revocation: change concerning no flow %+v: want a pass judging no flow", n)
			}
		}
	}
	// Everything the run started is gone.
	if rep.LabPrefix == "" {
		t.Error("no lab prefix in the report")
	} else if left, _ := lab.ListNetns(rep.LabPrefix); len(left) > 0 {
		t.Errorf("namespaces left behind: %v", left)
	}
}

// runLogged runs the bench (3 minutes at most), logs its table and fails the test on
// an error.
func runLogged(t *testing.T, opts *Options) *Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := Run(ctx, opts)
	if rep != nil {
		var b strings.Builder
		rep.PrintTable(&b)
		t.Log("\n" + b.String())
	}
	if err != nil {
		t.Fatal(err)
	}
	return rep
}
