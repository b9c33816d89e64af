package bench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// GoBenchReport holds the Go benchmarks of ./pkg/... (pkg/compiler's Compile and
// Diff at 1k/10k/50k pods, and whatever else is there).
type GoBenchReport struct {
	Command string          `json:"command"`
	Results []GoBenchResult `json:"results"`
}

// GoBenchResult is one benchmark line.
type GoBenchResult struct {
	Package string `json:"package"`
	Name    string `json:"name"`
	N       int    `json:"n"`
	// Metrics maps unit to value: ns/op, B/op, allocs/op and custom ones
	// (elements, rules, ops).
	Metrics map[string]float64 `json:"metrics"`
}

func runGoBench(ctx context.Context, o *Options) (*GoBenchReport, error) {
	goBin := os.Getenv("GO")
	if goBin == "" {
		goBin = "go"
	}
	args := []string{"test", "-run", "^$", "-bench", o.Profile.GoBenchFilter, "-benchtime", o.Profile.GoBenchTime, "-benchmem", "./pkg/..."}
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = o.RepoRoot
	out, err := cmd.CombinedOutput()
	_ = os.WriteFile(filepath.Join(o.OutDir, "gobench.txt"), out, 0o644)
	rep := &GoBenchReport{Command: goBin + " " + strings.Join(args, " "), Results: ParseGoBench(string(out))}
	if err != nil {
		return rep, fmt.Errorf("%s: %w (output in gobench.txt)", rep.Command, err)
	}
	for _, r := range rep.Results {
		o.logf("   %s %s: %.3g ns/op", r.Package, r.Name, r.Metrics["ns/op"])
	}
	return rep, nil
}

// ParseGoBench parses `go test -bench` output.
func ParseGoBench(out string) []GoBenchResult {
	var res []GoBenchResult
	pkg := ""
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimSpace(p)
			continue
		}
		if !strings.HasPrefix(line, "Benchmark") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || len(f)%2 != 0 {
			continue
		}
		n, err := strconv.Atoi(f[1])
		if err != nil {
			continue
		}
		name := f[0]
		// Drop the -GOMAXPROCS suffix.
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		r := GoBenchResult{Package: pkg, Name: name, N: n, Metrics: map[string]float64{}}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			r.Metrics[f[i+1]] = v
		}
		res = append(res, r)
	}
	return res
}
