package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// Topology selects how pods are wired to their node and nodes to each other.
type Topology string

const (
	// Routed is the kindnet / Calico (no encapsulation) style: each pod
	// has a veth to its node with a /32 and /128 (AddPod), and every node
	// routes the other nodes' pod CIDRs via their underlay addresses.
	Routed Topology = "routed"
	// BridgeVXLAN is the Flannel style: pods' veths are ports of a bridge
	// (cni0) in their node, nodes reach each other's pod CIDRs through a
	// VXLAN device per family (flannel.1 over the IPv4 underlay,
	// flannel-v6.1 over the IPv6 one), and br_netfilter makes bridged
	// traffic pass the node's inet hooks.
	BridgeVXLAN Topology = "bridge-vxlan"
)

// ParseTopology accepts "routed" and "bridge-vxlan" (also "bridge").
func ParseTopology(s string) (Topology, error) {
	switch s {
	case string(Routed):
		return Routed, nil
	case string(BridgeVXLAN), "bridge":
		return BridgeVXLAN, nil
	}
	return "", fmt.Errorf("unknown topology %q (want %q or %q)", s, Routed, BridgeVXLAN)
}

// AgentHealthAddr is where each node's agent serves /healthz and /readyz,
// inside the node namespace.
const AgentHealthAddr = "127.0.0.1:19091"

// DefaultAgentReadyTimeout bounds the wait for an agent's /readyz.
const DefaultAgentReadyTimeout = 60 * time.Second

// ClusterOptions configures StartCluster.
type ClusterOptions struct {
	// Nodes is the number of nodes (default 2), named node1, node2, ...
	Nodes int
	// Topology is Routed (default) or BridgeVXLAN.
	Topology Topology
	// DualStack adds IPv6 everywhere (nodes, pods, services); IPv4 is
	// always on.
	DualStack bool
	// AgentBinary is the nftpolicy-agent to run in every node; empty runs
	// no agent.
	AgentBinary string
	// AgentArgs are extra flags for every agent.
	AgentArgs []string
	// AgentReadyTimeout bounds the wait for an agent's /readyz
	// (DefaultAgentReadyTimeout if zero).
	AgentReadyTimeout time.Duration
	// ControlPlaneDir holds kube-apiserver and etcd; default
	// $KUBEBUILDER_ASSETS, else <repo>/bin/k8s.
	ControlPlaneDir string
	// Progress receives one line per step (nil discards).
	Progress io.Writer
	// LogDir receives the logs of the API server, etcd and the agents;
	// default a directory inside the lab's state, removed by Close.
	LogDir string
	// Prefix and StateDir are as in Options.
	Prefix   string
	StateDir string
}

// Cluster is a Kubernetes cluster stand-in: a real API server (envtest's
// kube-apiserver and etcd) and nodes, pods and an underlay network made of
// network namespaces, with a ClusterIP implementation (kube-proxy's DNAT)
// and optionally the nftpolicy agent on every node. See StartCluster.
//
// A Cluster is safe for concurrent use.
type Cluster struct {
	opts     ClusterOptions
	lab      *Lab
	logDir   string
	progress io.Writer

	env        *envtest.Environment
	cfg        *rest.Config
	client     client.Client
	kubeconfig string
	apiHost    string // 127.0.0.1:port

	underlay *Netns
	nodes    []*ClusterNode

	// podOps serializes pod and service changes (API object, network,
	// DNAT resync), so that endpoints are always computed from a settled
	// set of pods.
	podOps sync.Mutex

	mu       sync.Mutex
	closed   bool
	pods     []*ClusterPod
	services []*Service
	nextSvc  int
	svcTable bool // the service table exists in the nodes
}

// ClusterNode is a node of a Cluster.
type ClusterNode struct {
	Name string
	// Index numbers nodes from 1; it picks the node's addresses.
	Index int
	// NS is the node's network namespace (the agent and host-network pods
	// run in it).
	NS *Netns
	// UnderlayIPv4 and UnderlayIPv6 are the node's addresses (Node status
	// InternalIP); UnderlayIPv6 is invalid unless dual-stack.
	UnderlayIPv4, UnderlayIPv6 netip.Addr
	// PodCIDRv4 and PodCIDRv6 hold the node's pod addresses.
	PodCIDRv4, PodCIDRv6 netip.Prefix

	node *Node
	c    *Cluster

	// guarded by c.mu
	nextHost int
	agent    *Process
}

func (n *ClusterNode) String() string { return n.Name }

// SourceAddrs are the addresses the node's own traffic to pods carries as its source
// (what a pod sees of a host-network pod): the underlay address, and in the bridge
// topology also the family's VXLAN device's, which — as with Flannel — sources the
// node's traffic to pods on other nodes.
func (n *ClusterNode) SourceAddrs(f Family) []netip.Addr {
	var out []netip.Addr
	if a := n.UnderlayIPv4; f == IPv4 && a.IsValid() {
		out = append(out, a)
	}
	if a := n.UnderlayIPv6; f == IPv6 && a.IsValid() {
		out = append(out, a)
	}
	if n.c.opts.Topology == BridgeVXLAN {
		out = append(out, vtepAddr(n.Index, f))
	}
	return out
}

// UnderlayAddr returns the node's address of family f.
func (n *ClusterNode) UnderlayAddr(f Family) netip.Addr {
	return pick(f, n.UnderlayIPv4, n.UnderlayIPv6)
}

// PodCIDR returns the node's pod CIDR of family f.
func (n *ClusterNode) PodCIDR(f Family) netip.Prefix { return pick(f, n.PodCIDRv4, n.PodCIDRv6) }

// addrs returns the node's valid underlay addresses, IPv4 first.
func (n *ClusterNode) addrs() []netip.Addr {
	return valid(n.UnderlayIPv4, n.UnderlayIPv6)
}

// valid returns the valid ones of xs (addresses or prefixes; the zero value
// stands for a family the cluster does not run), in order.
func valid[T interface{ IsValid() bool }](xs ...T) []T {
	var out []T
	for _, x := range xs {
		if x.IsValid() {
			out = append(out, x)
		}
	}
	return out
}

// StartCluster starts an API server, builds the underlay and the nodes of
// the chosen topology, registers the nodes with the API server, forwards
// the API server into every node and, with AgentBinary, starts an agent in
// every node and waits until each is ready. On error everything started so
// far is removed.
func StartCluster(ctx context.Context, opts ClusterOptions) (_ *Cluster, err error) {
	start := time.Now()
	if opts.Nodes == 0 {
		opts.Nodes = 2
	}
	if opts.Nodes < 1 || opts.Nodes > maxNodes {
		return nil, fmt.Errorf("start cluster: %d nodes (want 1 to %d)", opts.Nodes, maxNodes)
	}
	if opts.Topology == "" {
		opts.Topology = Routed
	}
	if _, err := ParseTopology(string(opts.Topology)); err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	if opts.AgentBinary != "" {
		abs, err := filepath.Abs(opts.AgentBinary)
		if err == nil {
			_, err = os.Stat(abs)
		}
		if err != nil {
			return nil, fmt.Errorf("start cluster: agent binary: %w", err)
		}
		opts.AgentBinary = abs
	}
	if opts.AgentReadyTimeout <= 0 {
		opts.AgentReadyTimeout = DefaultAgentReadyTimeout
	}
	cpDir, err := ControlPlaneDir(opts.ControlPlaneDir)
	if err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	opts.ControlPlaneDir = cpDir

	l, err := New(Options{Prefix: opts.Prefix, StateDir: opts.StateDir})
	if err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	c := &Cluster{opts: opts, lab: l, progress: opts.Progress}
	if c.progress == nil {
		c.progress = io.Discard
	}
	defer func() {
		if err != nil {
			err = errors.Join(fmt.Errorf("start cluster %s: %w", l.Prefix(), err), c.Close())
		}
	}()
	c.logDir = opts.LogDir
	if c.logDir == "" {
		c.logDir = filepath.Join(l.Dir(), "logs")
	}
	if err := os.MkdirAll(c.logDir, 0o755); err != nil {
		return nil, err
	}
	c.logf("lab %s: %s, %s topology, %s; state in %s", l.Prefix(), plural(opts.Nodes, "node"), opts.Topology, c.stackName(), l.Dir())

	// The API server takes a few seconds to start: build the network
	// meanwhile.
	cpDone := make(chan error, 1)
	go func() { cpDone <- c.startControlPlane() }()
	netErr := c.buildNetwork(ctx)
	cpErr := <-cpDone
	if err := errors.Join(cpErr, netErr); err != nil {
		return nil, err
	}
	if err := c.registerNodes(ctx); err != nil {
		return nil, err
	}
	if opts.AgentBinary != "" {
		var wg sync.WaitGroup
		errs := make([]error, len(c.nodes))
		for i, n := range c.nodes {
			wg.Go(func() { errs[i] = c.StartAgent(ctx, n.Name) })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return nil, err
		}
	}
	if err := c.saveState(); err != nil {
		return nil, err
	}
	c.logf("cluster up in %v", time.Since(start).Round(10*time.Millisecond))
	return c, nil
}

// ControlPlaneDir resolves the directory holding kube-apiserver and etcd:
// dir if not empty, else $KUBEBUILDER_ASSETS, else bin/k8s of the
// repository containing the working directory. It fails if either binary
// is missing.
func ControlPlaneDir(dir string) (string, error) {
	if dir == "" {
		dir = os.Getenv("KUBEBUILDER_ASSETS")
	}
	if dir == "" {
		root, err := RepoRoot()
		if err != nil {
			return "", fmt.Errorf("control plane: no KUBEBUILDER_ASSETS and %w", err)
		}
		dir = filepath.Join(root, "bin", "k8s")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("control plane dir %s: %w", dir, err)
	}
	for _, bin := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(abs, bin)); err != nil {
			return "", fmt.Errorf("control plane: %w (build it with `make envtest-assets`)", err)
		}
	}
	return abs, nil
}

// RepoRoot returns the root of the nftpolicy module containing the working
// directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("repository root: %w", err)
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(b), "module github.com/nftpolicy/nftpolicy\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("the working directory is not inside the nftpolicy repository")
		}
		dir = parent
	}
}

// plural returns "1 node", "2 nodes".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func (c *Cluster) stackName() string {
	if c.opts.DualStack {
		return "dual-stack"
	}
	return "IPv4"
}

func (c *Cluster) logf(format string, args ...any) {
	fmt.Fprintf(c.progress, format+"\n", args...)
}

// startControlPlane starts envtest's kube-apiserver and etcd with their
// state, certificates and logs in the lab, writes the agents' kubeconfig
// and creates the test client.
//
// envtest starts both binaries as child processes in their own process
// groups; if this process is killed they keep running. They are therefore
// started through small wrapper scripts that record their PIDs (exec keeps
// the PID) with the lab's marker in the lab's PID directory, where Cleanup
// and CleanupStale find them.
func (c *Cluster) startControlPlane() error {
	dir := c.lab.Dir()
	wrapper := func(name string) (string, error) {
		pidFile := filepath.Join(c.lab.PidDir(), name+".pid")
		script := fmt.Sprintf("#!/bin/sh\n"+
			"# nftpolicy lab: record the PID (exec keeps it) so that cleanup finds %s after a crash.\n"+
			"echo $$ > %s\nexport %s=%s\nexec %s \"$@\"\n",
			name, shellQuote(pidFile), pidEnv, shellQuote(pidFile), shellQuote(filepath.Join(c.opts.ControlPlaneDir, name)))
		path := filepath.Join(dir, "bin", name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return "", err
		}
		return path, os.WriteFile(path, []byte(script), 0o755)
	}
	apiPath, err := wrapper("kube-apiserver")
	if err != nil {
		return fmt.Errorf("control plane: %w", err)
	}
	etcdPath, err := wrapper("etcd")
	if err != nil {
		return fmt.Errorf("control plane: %w", err)
	}
	apiLog, err := os.Create(filepath.Join(c.logDir, "kube-apiserver.log"))
	if err != nil {
		return fmt.Errorf("control plane: %w", err)
	}
	etcdLog, err := os.Create(filepath.Join(c.logDir, "etcd.log"))
	if err != nil {
		apiLog.Close()
		return fmt.Errorf("control plane: %w", err)
	}
	// The files stay open in the children; ours can go.
	defer apiLog.Close()
	defer etcdLog.Close()

	env := &envtest.Environment{
		ControlPlaneStartTimeout: time.Minute,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	api := env.ControlPlane.GetAPIServer()
	api.Path = apiPath
	api.CertDir = filepath.Join(dir, "kube-apiserver")
	api.Out, api.Err = apiLog, apiLog
	ranges := ServiceCIDRv4.String()
	if c.opts.DualStack {
		ranges += "," + ServiceCIDRv6.String()
	}
	api.Configure().Set("service-cluster-ip-range", ranges)
	env.ControlPlane.Etcd = &envtest.Etcd{Path: etcdPath, DataDir: filepath.Join(dir, "etcd"), Out: etcdLog, Err: etcdLog}
	for _, d := range []string{api.CertDir, env.ControlPlane.Etcd.DataDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("control plane: %w", err)
		}
	}
	c.env = env
	cfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("control plane (logs in %s): %w", c.logDir, err)
	}
	c.cfg = cfg
	u, err := url.Parse(cfg.Host)
	if err != nil {
		return fmt.Errorf("control plane: API server URL %q: %w", cfg.Host, err)
	}
	c.apiHost = u.Host

	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return fmt.Errorf("control plane: %w", err)
	}
	if err := cnp.Install(scheme); err != nil {
		return fmt.Errorf("control plane: %w", err)
	}
	if c.client, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		return fmt.Errorf("control plane: client: %w", err)
	}
	// The agents' identity. system:masters is more than they need (RBAC
	// in config/rbac is the real thing) but keeps the lab independent of it.
	user, err := env.AddUser(envtest.User{Name: "nftpolicy-agent", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fmt.Errorf("control plane: agent user: %w", err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return fmt.Errorf("control plane: agent kubeconfig: %w", err)
	}
	c.kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(c.kubeconfig, kc, 0o600); err != nil {
		return fmt.Errorf("control plane: %w", err)
	}
	c.logf("API server %s (kubeconfig %s, logs in %s)", cfg.Host, c.kubeconfig, c.logDir)
	return nil
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// buildNetwork creates the underlay and the nodes of the topology.
func (c *Cluster) buildNetwork(ctx context.Context) error {
	if err := c.buildUnderlay(ctx); err != nil {
		return err
	}
	for i := 1; i <= c.opts.Nodes; i++ {
		name := fmt.Sprintf("node%d", i)
		ln, err := c.lab.AddNode(name)
		if err != nil {
			return err
		}
		n := &ClusterNode{
			Name: name, Index: i, NS: ln.NS, node: ln, c: c,
			UnderlayIPv4: nodeUnderlayAddr(i, IPv4),
			PodCIDRv4:    nodePodCIDR(i, IPv4),
			nextHost:     firstPodHost,
		}
		if c.opts.DualStack {
			n.UnderlayIPv6 = nodeUnderlayAddr(i, IPv6)
			n.PodCIDRv6 = nodePodCIDR(i, IPv6)
		}
		c.nodes = append(c.nodes, n)
		if err := c.attachNode(ctx, n); err != nil {
			return err
		}
		if c.opts.Topology == BridgeVXLAN {
			if err := c.buildBridgeNode(ctx, n); err != nil {
				return err
			}
		}
		c.logf("%s: netns %s, underlay %s, pods %s", n.Name, n.NS.Name(),
			joinList(n.addrs()), joinList(valid(n.PodCIDRv4, n.PodCIDRv6)))
	}
	if c.opts.Topology == BridgeVXLAN {
		return c.connectBridgeNodes(ctx)
	}
	return c.routeNodes(ctx)
}

// joinList lists xs for a log line.
func joinList[T fmt.Stringer](xs []T) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = x.String()
	}
	return strings.Join(s, ", ")
}

// registerNodes creates the Node objects and forwards the API server into
// every node namespace at the same 127.0.0.1:port, so the kubeconfig (and
// its certificate's 127.0.0.1 SAN) work unchanged inside.
func (c *Cluster) registerNodes(ctx context.Context) error {
	for _, n := range c.nodes {
		obj := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{
				"kubernetes.io/hostname": n.Name, "kubernetes.io/os": "linux",
			}},
		}
		for _, p := range valid(n.PodCIDRv4, n.PodCIDRv6) {
			obj.Spec.PodCIDRs = append(obj.Spec.PodCIDRs, p.String())
		}
		obj.Spec.PodCIDR = obj.Spec.PodCIDRs[0]
		if err := c.client.Create(ctx, obj); err != nil {
			return fmt.Errorf("register node %s: %w", n.Name, err)
		}
		obj.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: n.Name}}
		for _, a := range n.addrs() {
			obj.Status.Addresses = append(obj.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a.String()})
		}
		obj.Status.Conditions = []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "LabNode",
			LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(),
		}}
		if err := c.client.Status().Update(ctx, obj); err != nil {
			return fmt.Errorf("register node %s: status: %w", n.Name, err)
		}
		if _, err := c.lab.ForwardTCP(n.NS, "", c.apiHost); err != nil {
			return fmt.Errorf("register node %s: %w", n.Name, err)
		}
	}
	return nil
}

// Client returns a client of the API server with full rights.
func (c *Cluster) Client() client.Client { return c.client }

// RESTConfig returns the test client's configuration.
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.cfg) }

// Kubeconfig returns the path of the agents' kubeconfig (usable from the
// root namespace too).
func (c *Cluster) Kubeconfig() string { return c.kubeconfig }

// Lab returns the underlying lab (namespaces, processes, state).
func (c *Cluster) Lab() *Lab { return c.lab }

// Prefix returns the prefix of every namespace of the cluster.
func (c *Cluster) Prefix() string { return c.lab.Prefix() }

// Underlay returns the underlay namespace (holding bridge br0).
func (c *Cluster) Underlay() *Netns { return c.underlay }

// Topology returns the cluster's topology.
func (c *Cluster) Topology() Topology { return c.opts.Topology }

// DualStack reports whether the cluster has IPv6.
func (c *Cluster) DualStack() bool { return c.opts.DualStack }

// Families returns IPv4, and IPv6 if dual-stack.
func (c *Cluster) Families() []Family { return c.families() }

// LogDir returns the directory with the API server, etcd and agent logs.
func (c *Cluster) LogDir() string { return c.logDir }

// Nodes returns the nodes in order.
func (c *Cluster) Nodes() []*ClusterNode { return slices.Clone(c.nodes) }

// Node returns the named node, or nil.
func (c *Cluster) Node(name string) *ClusterNode {
	for _, n := range c.nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// CreateNamespace creates a namespace with labels (the API server adds
// kubernetes.io/metadata.name itself).
func (c *Cluster) CreateNamespace(ctx context.Context, name string, labels map[string]string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if err := c.client.Create(ctx, ns); err != nil {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	return nil
}

// Close stops the agents (SIGTERM, then waits), removes their tables
// (`nftpolicy-agent cleanup` in every node), closes the pods' servers,
// stops the API server and etcd and removes every namespace, link, process
// and file of the cluster. It is idempotent.
func (c *Cluster) Close() error {
	var pods []*ClusterPod
	if !markClosed(&c.mu, &c.closed, func() { pods = c.pods }) {
		return nil
	}

	var errs []error
	var wg sync.WaitGroup
	agentErrs := make([]error, len(c.nodes))
	for i, n := range c.nodes {
		wg.Go(func() { agentErrs[i] = c.closeAgent(n) })
	}
	wg.Wait()
	errs = append(errs, agentErrs...)
	for _, p := range pods {
		errs = append(errs, p.closeServers())
	}
	if c.env != nil {
		// envtest stops the API server before etcd (the API server hangs
		// on SIGTERM once etcd is gone).
		if err := c.env.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("stop control plane: %w", err))
		}
	}
	errs = append(errs, c.lab.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close cluster %s: %w", c.lab.Prefix(), err)
	}
	return nil
}

// checkOpen fails once the cluster is closed.
func (c *Cluster) checkOpen() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("cluster is closed")
	}
	return nil
}
