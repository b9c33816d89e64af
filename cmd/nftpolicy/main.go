// Command nftpolicy is the operator's tool for nftpolicy (wiring only; the work is in
// pkg/manifest, pkg/render, pkg/explain and pkg/reach):
//
//	nftpolicy render  --node N -f manifests...   the ruleset the agent would program on N
//	nftpolicy render  --node N -f ... --diff     ... compared with this machine's kernel
//	nftpolicy explain --from ns/pod --to ns/pod|ip --port 80/TCP [-f ... | --kubeconfig K] [--node N]
//	nftpolicy reach   [-f ... | --kubeconfig K] [-o text|json|html]   every pod to every pod
//	nftpolicy reach   [--before A] --after B                          only the cells that change
//
// Exit status: 0 success (render --diff: no difference; explain: allowed and no drift;
// reach: a report, or no flow newly denied), 1 a difference (render --diff), a denied
// connection or drift (explain), a flow changed from allowed to denied (reach --after),
// 2 an error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	policyclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane/netlink"
	"github.com/nftpolicy/nftpolicy/pkg/explain"
	"github.com/nftpolicy/nftpolicy/pkg/manifest"
	"github.com/nftpolicy/nftpolicy/pkg/render"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

const usage = `Usage:
  nftpolicy render  --node NODE -f PATH... [--diff] [--table nftpolicy] [--revoke-established=true]
  nftpolicy explain --from NS/POD --to NS/POD|IP [--port 80/TCP] [-f PATH... | --kubeconfig FILE] [--node NODE] [--ipv6]
  nftpolicy reach   [-f PATH... | --kubeconfig FILE] [-n NS]... [--port 80/TCP]... [--to-addr IP]...
                    [--family ipv4|ipv6|both] [-o text|json|html] [--expand]
  nftpolicy reach   [--before PATH...] --after PATH... [same flags]

-f, --before and --after take files, directories (*.yaml, *.yml, *.json) or - for stdin,
and may be repeated (--before/--after also comma-separated). reach --after without
--before compares the cluster (--kubeconfig) with the cluster after applying them.
Exit status: 0 ok; 1 render --diff found a difference, explain: denied or drift,
reach --after: a flow changed from allowed to denied; 2 error.
Every command takes the agent's --table, --revoke-established, --audit and --log-denied,
so that it compiles what that agent programs.
`

// errFound is a non-error outcome reported by exit status 1.
var errFound = errors.New("found")

func main() {
	err := run(os.Args[1:], os.Stdin, os.Stdout)
	switch {
	case err == nil:
	case errors.Is(err, errFound):
		os.Exit(1)
	default:
		fmt.Fprintln(os.Stderr, "nftpolicy:", err)
		os.Exit(2)
	}
}

func run(args []string, stdin io.Reader, out io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return errors.New("no command")
	}
	switch args[0] {
	case "render":
		return runRender(args[1:], stdin, out)
	case "explain":
		return runExplain(args[1:], stdin, out)
	case "reach":
		return runReach(args[1:], stdin, out)
	case "-h", "--help", "help":
		fmt.Fprint(out, usage)
		return nil
	}
	return fmt.Errorf("unknown command %q\n%s", args[0], usage)
}

// paths collects repeated -f flags.
type paths []string

func (p *paths) String() string     { return strings.Join(*p, ",") }
func (p *paths) Set(s string) error { *p = append(*p, s); return nil }

// common are the flags both commands share.
type common struct {
	files  paths
	node   string
	table  string
	revoke bool
	// audit and logDenied are the agent's --audit and --log-denied.
	audit, logDenied bool
}

func (c *common) register(fs *flag.FlagSet) {
	fs.Var(&c.files, "f", "Manifest file, directory or - (stdin); repeatable.")
	fs.StringVar(&c.table, "table", compiler.DefaultTable, "The agent's --table.")
	fs.BoolVar(&c.revoke, "revoke-established", true, "The agent's --revoke-established (adds the revocation rule).")
	fs.BoolVar(&c.audit, "audit", false, "The agent's --audit (the whole node in audit mode: nothing enforced; --revoke-established ignored).")
	fs.BoolVar(&c.logDenied, "log-denied", false, "The agent's --log-denied (adds the log rules).")
}

// options are the compiler options of an agent run with these flags.
func (c *common) options() compiler.Options {
	return compiler.Options{Table: c.table, Revocation: c.revoke && !c.audit, Audit: c.audit, LogDenied: c.logDenied}
}

func parse(fs *flag.FlagSet, args []string) error {
	fs.SetOutput(os.Stderr)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage, "\nFlags:\n"); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return nil
}

func runRender(args []string, stdin io.Reader, out io.Writer) error {
	fs := flag.NewFlagSet("render", flag.ContinueOnError)
	var c common
	c.register(fs)
	fs.StringVar(&c.node, "node", "", "The node whose ruleset to render (required).")
	diff := fs.Bool("diff", false, "Compare with the table in this machine's kernel (run on the node); exit 1 when they differ.")
	if err := parse(fs, args); err != nil {
		return err
	}
	if c.node == "" {
		return errors.New("render: --node is required")
	}
	if len(c.files) == 0 {
		return errors.New("render: no manifests (-f FILE, DIR or -)")
	}
	objs, err := manifest.Load(c.files, stdin)
	if err != nil {
		return fmt.Errorf("render: %w", err)
	}
	res := render.Compile(objs.Snapshot(c.node), c.options())
	for _, p := range res.Problems {
		fmt.Fprintln(os.Stderr, "warning:", p)
	}
	if !*diff {
		_, err := io.WriteString(out, ruleset.Render(res.Ruleset))
		return err
	}
	live, err := readKernel(c.table)
	if err != nil {
		return fmt.Errorf("render --diff: %w", err)
	}
	d := render.Diff(live, res.Ruleset)
	if d == "" {
		fmt.Fprintf(out, "table inet %s in the kernel equals the compiled ruleset for %s\n", c.table, c.node)
		return nil
	}
	fmt.Fprintf(out, "table inet %s: kernel -> compiled for %s (+ missing in the kernel, - only in the kernel)\n%s", c.table, c.node, d)
	return errFound
}

// readKernel reads the agent's table from this network namespace.
func readKernel(table string) (*ruleset.Ruleset, error) {
	dp, err := netlink.New(netlink.WithTable(table))
	if err != nil {
		return nil, fmt.Errorf("opening nftables: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rs, err := dp.Read(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading table inet %s: %w", table, err)
	}
	return rs, nil
}

func runExplain(args []string, stdin io.Reader, out io.Writer) error {
	fs := flag.NewFlagSet("explain", flag.ContinueOnError)
	var c common
	c.register(fs)
	fs.StringVar(&c.node, "node", "", "This machine is that node: also check its kernel holds what the verdict depends on.")
	from := fs.String("from", "", "Source pod, namespace/name (required).")
	to := fs.String("to", "", "Destination pod (namespace/name) or IP address (required).")
	port := fs.String("port", "80/TCP", "Destination port and protocol.")
	kubeconfig := fs.String("kubeconfig", "", "Read the cluster's state through this kubeconfig (default: $KUBECONFIG or ~/.kube/config when no -f is given).")
	ipv6 := fs.Bool("ipv6", false, "Use the IPv6 addresses (default IPv4 when both ends have one).")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *from == "" || *to == "" {
		return errors.New("explain: --from and --to are required")
	}
	proto, num, err := explain.ParsePort(*port)
	if err != nil {
		return fmt.Errorf("explain: %w", err)
	}
	var objs *manifest.Objects
	if len(c.files) > 0 {
		objs, err = manifest.Load(c.files, stdin)
	} else {
		objs, err = fromCluster(*kubeconfig)
	}
	if err != nil {
		return fmt.Errorf("explain: %w", err)
	}
	req := explain.Request{From: *from, To: *to, Protocol: proto, Port: num}
	if *ipv6 {
		req.Family = ruleset.IPv6
	}
	ex, err := explain.Explain(objs.Snapshot(""), req, c.options())
	if err != nil {
		return fmt.Errorf("explain: %w", err)
	}
	if _, err := io.WriteString(out, ex.Format()); err != nil {
		return fmt.Errorf("explain: write: %w", err)
	}
	found := !ex.Allowed
	if c.node != "" {
		live, err := readKernel(c.table)
		if err != nil {
			return fmt.Errorf("explain --node: %w", err)
		}
		d := explain.CheckKernel(ex, c.node, live)
		if d == nil {
			fmt.Fprintf(out, "kernel of %s: no hop of this connection is judged by %s; nothing to check\n", c.node, c.node)
		} else {
			if _, err := io.WriteString(out, d.Format()); err != nil {
				return fmt.Errorf("explain: write the kernel check: %w", err)
			}
			found = found || len(d.Differences) > 0
		}
	}
	if found {
		return errFound
	}
	return nil
}

// fromCluster lists namespaces, pods, NetworkPolicies, nodes and — when their CRD is
// installed — ClusterNetworkPolicies from the API server.
func fromCluster(kubeconfig string) (*manifest.Objects, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if kubeconfig != "" {
		rules.ExplicitPath = kubeconfig
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("loading kubeconfig: %w", err)
	}
	return fromConfig(cfg)
}

// fromConfig lists what fromCluster lists, through cfg.
func fromConfig(cfg *rest.Config) (*manifest.Objects, error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating a client: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	objs := &manifest.Objects{}
	nss, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing namespaces: %w", err)
	}
	for i := range nss.Items {
		objs.Namespaces = append(objs.Namespaces, &nss.Items[i])
	}
	pods, err := cs.CoreV1().Pods(corev1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing pods: %w", err)
	}
	for i := range pods.Items {
		objs.Pods = append(objs.Pods, &pods.Items[i])
	}
	nps, err := cs.NetworkingV1().NetworkPolicies(corev1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing networkpolicies: %w", err)
	}
	for i := range nps.Items {
		objs.Policies = append(objs.Policies, &nps.Items[i])
	}
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing nodes: %w", err)
	}
	for i := range nodes.Items {
		objs.Nodes = append(objs.Nodes, &nodes.Items[i])
	}
	pcs, err := policyclient.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating a client: %w", err)
	}
	cnps, err := pcs.PolicyV1beta1().ClusterNetworkPolicies().List(ctx, metav1.ListOptions{})
	switch {
	case apierrors.IsNotFound(err):
		// The CRD is not installed (most clusters): no ClusterNetworkPolicies, as the
		// agent sees it.
	case err != nil:
		return nil, fmt.Errorf("listing clusternetworkpolicies: %w", err)
	default:
		for i := range cnps.Items {
			objs.ClusterPolicies = append(objs.ClusterPolicies, &cnps.Items[i])
		}
	}
	return objs, nil
}
