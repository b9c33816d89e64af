// Command nftpolicy-bench measures nftpolicy on the lab (test/bench): the data path,
// the control plane, the agent's resources, plus the Go benchmarks of ./pkg/...; it
// prints one table and writes the raw numbers to <out>/bench.json. It needs root.
//
//	nftpolicy-bench [--quick] [--only datapath,controlplane,resources,fanout,gobench] [--out _out/bench]
//	nftpolicy-bench --render _out/bench/bench.json   # the table of an earlier run
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nftpolicy/nftpolicy/test/bench"
)

func main() {
	if err := run(); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "nftpolicy-bench:", err)
		os.Exit(1)
	}
}

func run() error {
	fs := flag.NewFlagSet("nftpolicy-bench", flag.ContinueOnError)
	quick := fs.Bool("quick", false, "a short run (smaller scales, fewer rounds; about 3 minutes): indicative numbers only")
	profile := fs.String("profile", "", "full, quick or tiny (the smoke test's); overrides --quick")
	only := fs.String("only", "all", "comma-separated groups to run: "+strings.Join(bench.AllGroups, ", "))
	out := fs.String("out", "", "directory for bench.json, table.txt and the logs (default <repo>/_out/bench)")
	agent := fs.String("agent", "", "nftpolicy-agent binary (default $NFTPOLICY_AGENT, else bin/nftpolicy-agent)")
	agentArgs := fs.String("agent-args", "", "extra flags for every agent, space-separated (e.g. -v=1)")
	controlPlane := fs.String("control-plane", "", "directory with kube-apiserver and etcd (default $KUBEBUILDER_ASSETS or bin/k8s)")
	timeout := fs.Duration("timeout", 30*time.Minute, "stop the run (cleanly) after this long")
	strict := fs.Bool("strict", false, "exit with status 3 when a target FAILs")
	quiet := fs.Bool("quiet", false, "no progress lines, only the table")
	render := fs.String("render", "", "print the table of an earlier run's bench.json and exit (no root needed)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return err
	}
	if *render != "" {
		rep, err := bench.ReadReport(*render)
		if err != nil {
			return err
		}
		rep.PrintTable(os.Stdout)
		return nil
	}
	groups, err := bench.ParseGroups(*only)
	if err != nil {
		return err
	}
	p := bench.FullProfile()
	if *quick {
		p = bench.QuickProfile()
	}
	switch *profile {
	case "":
	case "full":
		p = bench.FullProfile()
	case "quick":
		p = bench.QuickProfile()
	case "tiny":
		p = bench.TinyProfile()
	default:
		return fmt.Errorf("--profile %q: want full, quick or tiny", *profile)
	}
	var progress io.Writer = os.Stderr
	if *quiet {
		progress = nil
	}
	opts := &bench.Options{Profile: p, Groups: groups, OutDir: *out, AgentBinary: *agent, AgentArgs: strings.Fields(*agentArgs), ControlPlaneDir: *controlPlane, Progress: progress}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	rep, runErr := bench.Run(ctx, opts)
	if rep == nil {
		return runErr
	}
	var table bytes.Buffer
	rep.PrintTable(&table)
	fmt.Print(table.String())
	jsonPath := filepath.Join(opts.OutDir, "bench.json")
	// The results are for anyone on the machine to read, like bench.json beside them.
	err = errors.Join(rep.WriteJSON(jsonPath), os.WriteFile(filepath.Join(opts.OutDir, "table.txt"), table.Bytes(), 0o644)) //nolint:gosec // G306: see above
	fmt.Printf("\nraw numbers: %s; logs and rulesets: %s\n", jsonPath, opts.OutDir)
	if err := errors.Join(runErr, err); err != nil {
		return err
	}
	if *strict {
		for _, t := range rep.Targets {
			if !t.Pass {
				os.Exit(3)
			}
		}
	}
	return nil
}
