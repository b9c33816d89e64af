// Command nftpolicy-lab runs a Kubernetes cluster stand-in made of network
// namespaces (test/lab): a real API server, nodes, pods and ClusterIPs, with
// the nftpolicy agent on every node. It needs root.
//
//	nftpolicy-lab demo    the README's demo: policies enforced, matrices before and after
//	nftpolicy-lab up      start a cluster and keep it running until Ctrl-C
//	nftpolicy-lab probe   probe the running cluster's pods (a reachability matrix)
//	nftpolicy-lab down    remove every lab leftover of this machine
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nftpolicy/nftpolicy/test/lab"
)

const usage = `Usage:
  nftpolicy-lab demo  [flags]   start a lab, enforce the demo's policies, show the matrices, tear down
  nftpolicy-lab up    [flags]   start a lab cluster and keep it running until SIGINT/SIGTERM
  nftpolicy-lab probe [flags]   probe between the pods of the running lab cluster
  nftpolicy-lab down  [--all]   remove every lab leftover of this machine

Run "nftpolicy-lab <command> -h" for the command's flags. Everything needs root.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "demo":
		err = demo(ctx, args)
	case "up":
		err = up(ctx, args)
	case "probe":
		err = probe(ctx, args)
	case "down":
		err = down(args)
	case "help", "-h", "--help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "nftpolicy-lab: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "nftpolicy-lab:", err)
		os.Exit(1)
	}
}

// parseAsRoot parses a subcommand's flags and refuses to go on unless root: every
// subcommand creates or removes network namespaces.
func parseAsRoot(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, veth, nftables); run it with sudo")
	}
	return nil
}

// clusterFlags are the flags up and demo share.
type clusterFlags struct {
	nodes        int
	topology     string
	agent        string
	controlPlane string
	stateDir     string
	logDir       string
}

func (f *clusterFlags) register(fs *flag.FlagSet, defaultAgent string) {
	fs.IntVar(&f.nodes, "nodes", 2, "number of nodes")
	fs.StringVar(&f.topology, "topology", string(lab.Routed), "routed (kindnet/Calico style) or bridge-vxlan (Flannel style)")
	fs.StringVar(&f.agent, "agent", defaultAgent, "nftpolicy-agent binary to run on every node (empty: none)")
	fs.StringVar(&f.controlPlane, "control-plane", "", "directory with kube-apiserver and etcd (default $KUBEBUILDER_ASSETS or bin/k8s)")
	fs.StringVar(&f.stateDir, "state-dir", lab.DefaultStateDir, "where labs register themselves")
	fs.StringVar(&f.logDir, "log-dir", "", "keep the API server, etcd and agent logs here (default: inside the lab's state, removed with it)")
}

// defaultAgent is bin/nftpolicy-agent of the repository, if it exists.
func defaultAgent() string {
	root, err := lab.RepoRoot()
	if err != nil {
		return ""
	}
	p := filepath.Join(root, "bin", "nftpolicy-agent")
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

func demo(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	var cf clusterFlags
	cf.register(fs, defaultAgent())
	ipv4Only := fs.Bool("ipv4-only", false, "IPv4 only (default dual-stack)")
	timeout := fs.Duration("timeout", lab.DefaultEnforceTimeout, "how long to wait for the agents to enforce the policies")
	if err := parseAsRoot(fs, args); err != nil {
		return err
	}
	topo, err := lab.ParseTopology(cf.topology)
	if err != nil {
		return err
	}
	if cf.agent == "" {
		return errors.New("demo: no agent binary (build it with `make build` or pass --agent)")
	}
	if err := lab.CleanupStale(cf.stateDir); err != nil {
		fmt.Fprintln(os.Stderr, "nftpolicy-lab: cleaning up leftovers of crashed labs:", err)
	}
	return lab.RunDemo(ctx, lab.DemoOptions{
		Out: os.Stdout, AgentBinary: cf.agent, ControlPlaneDir: cf.controlPlane,
		Topology: topo, Nodes: cf.nodes, IPv4Only: *ipv4Only, EnforceTimeout: *timeout,
		StateDir: cf.stateDir, LogDir: cf.logDir,
	})
}

func up(ctx context.Context, args []string) (err error) {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	var cf clusterFlags
	cf.register(fs, "")
	dualStack := fs.Bool("dual-stack", true, "IPv6 besides IPv4")
	scenario := fs.String("scenario", "", `"demo": create the demo's namespaces, pods and Service`)
	policies := fs.Bool("policies", false, "with --scenario demo: also apply the demo's two NetworkPolicies")
	if err := parseAsRoot(fs, args); err != nil {
		return err
	}
	topo, err := lab.ParseTopology(cf.topology)
	if err != nil {
		return err
	}
	if *scenario != "" && *scenario != "demo" {
		return fmt.Errorf("unknown scenario %q (want demo)", *scenario)
	}
	if err := lab.CleanupStale(cf.stateDir); err != nil {
		fmt.Fprintln(os.Stderr, "nftpolicy-lab: cleaning up leftovers of crashed labs:", err)
	}
	c, err := lab.StartCluster(ctx, lab.ClusterOptions{
		Nodes: cf.nodes, Topology: topo, DualStack: *dualStack, AgentBinary: cf.agent,
		ControlPlaneDir: cf.controlPlane, Progress: os.Stdout, StateDir: cf.stateDir, LogDir: cf.logDir,
	})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("\nstopping the lab ...")
		err = errors.Join(err, c.Close())
		if err == nil {
			fmt.Println("removed: agents, API server, namespaces and state")
		}
	}()
	if *scenario == "demo" {
		if _, err := lab.CreateDemoScenario(ctx, c); err != nil {
			return err
		}
		if *policies {
			for _, np := range lab.DemoPolicies() {
				if err := c.Client().Create(ctx, np); err != nil {
					return fmt.Errorf("create policy %s/%s: %w", np.Namespace, np.Name, err)
				}
				fmt.Printf("policy %s/%s created\n", np.Namespace, np.Name)
			}
		}
	}
	node := c.Nodes()[0].NS.Name()
	fmt.Printf(`
The lab %s is up. It runs until Ctrl-C (or SIGTERM, or "nftpolicy-lab down --all").
  kubeconfig:  %s   (e.g. KUBECONFIG=%[2]s kubectl get pods -A)
  logs:        %s
  probe:       nftpolicy-lab probe --port 80            (matrix between all pods)
               nftpolicy-lab probe --from app/frontend --to 10.244.2.11:80 --proto tcp
  inspect:     ip netns exec %s nft list ruleset
  shell:       ip netns exec %[4]s bash                (a node; pods are %[5]s<ns>.<name>)
`, c.Prefix(), c.Kubeconfig(), c.LogDir(), node, c.Prefix())
	<-ctx.Done()
	return nil
}

func probe(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	stateDir := fs.String("state-dir", lab.DefaultStateDir, "where labs register themselves")
	prefix := fs.String("lab", "", "the lab's prefix (default: the only running lab cluster)")
	from := fs.String("from", "", "probe once from this pod (ns/name) to --to; default: the whole matrix")
	to := fs.String("to", "", "with --from: target address:port")
	proto := fs.String("proto", "tcp", "tcp, udp or sctp")
	port := fs.Int("port", 80, "matrix: target port")
	family := fs.String("family", "all", "matrix: ipv4, ipv6 or all")
	timeout := fs.Duration("timeout", lab.DefaultClusterProbeTimeout, "per probe")
	if err := parseAsRoot(fs, args); err != nil {
		return err
	}
	st, err := lab.LoadClusterState(*stateDir, *prefix)
	if err != nil {
		return err
	}
	opts := lab.ProbeOptions{Timeout: *timeout}
	if *from != "" {
		target, err := netip.ParseAddrPort(*to)
		if err != nil {
			return fmt.Errorf("--to: %w", err)
		}
		r, err := st.Probe(ctx, *from, target, *proto, opts)
		if err != nil {
			return err
		}
		if !r.OK {
			return fmt.Errorf("%s %s -> %s: denied or unreachable after %v: %w", *proto, *from, target, r.Elapsed.Round(time.Millisecond), r.Err)
		}
		fmt.Printf("%s %s -> %s: answered by %s in %v\n", *proto, *from, target, r.Reply, r.Elapsed.Round(time.Millisecond))
		return nil
	}
	fams := []lab.Family{lab.IPv4, lab.IPv6}
	switch strings.ToLower(*family) {
	case "ipv4":
		fams = fams[:1]
	case "ipv6":
		fams = fams[1:]
	case "all":
		if len(st.Pods) > 0 && !st.Pods[0].Addr(lab.IPv6).IsValid() {
			fams = fams[:1]
		}
	default:
		return fmt.Errorf("--family %q: want ipv4, ipv6 or all", *family)
	}
	fmt.Println("rows: from, columns: to; . = allowed, X = denied")
	for _, f := range fams {
		m, err := st.ProbeMatrix(ctx, f, *proto, *port, opts)
		if err != nil {
			return err
		}
		fmt.Printf("\n%s", m)
	}
	return nil
}

func down(args []string) error {
	fs := flag.NewFlagSet("down", flag.ContinueOnError)
	stateDir := fs.String("state-dir", lab.DefaultStateDir, "where labs register themselves")
	all := fs.Bool("all", false, "also stop live labs (SIGTERM to their owner, which tears them down)")
	wait := fs.Duration("wait", time.Minute, "with --all: how long to wait for live labs to stop")
	if err := parseAsRoot(fs, args); err != nil {
		return err
	}
	before, _ := lab.ListNetns(lab.DefaultPrefixBase)
	if *all {
		live, err := lab.LiveLabs(*stateDir)
		if err != nil {
			return err
		}
		if err := lab.StopLiveLabs(live, *wait); err != nil {
			return err
		}
	}
	live, err := lab.CleanupAll(*stateDir)
	after, _ := lab.ListNetns(lab.DefaultPrefixBase)
	fmt.Printf("removed %d lab network namespaces (and the processes and state of dead labs)\n", len(before)-len(after))
	for _, l := range live {
		fmt.Printf("left alone: live lab %s (owner pid %d); stop it with Ctrl-C or `nftpolicy-lab down --all`\n", l.Prefix, l.OwnerPID)
	}
	return err
}
