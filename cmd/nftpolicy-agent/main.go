// Command nftpolicy-agent enforces Kubernetes NetworkPolicy on one node with nftables.
//
//	nftpolicy-agent [flags]      run the agent
//	nftpolicy-agent cleanup      remove the agent's nftables table and exit
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zapcore"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/controllers"
	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane/conntrack"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane/netlink"
)

type options struct {
	kubeconfig   string
	nodeName     string
	metricsAddr  string
	metrics      metricsTLS
	probeAddr    string
	resyncPeriod time.Duration
	table        string
	revoke       bool
	logDenied    bool
	audit        bool
	verbosity    int
	gcPercent    int
	pprofAddr    string
	cnpCheck     time.Duration
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "nftpolicy-agent:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("nftpolicy-agent", flag.ContinueOnError)
	var o options
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "Path to a kubeconfig; empty uses the in-cluster configuration.")
	fs.StringVar(&o.nodeName, "node-name", os.Getenv("NODE_NAME"), "Name of this node; pods with spec.nodeName equal to it are enforced here (default $NODE_NAME).")
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", ":9090", "Address of the Prometheus metrics endpoint; \"0\" disables it.")
	fs.BoolVar(&o.metrics.secure, "metrics-secure", true, "Serve /metrics over HTTPS, and only to clients whose bearer token the API server authenticates (TokenReview) and authorizes for GET on the non-resource URL /metrics (SubjectAccessReview; the agent's identity needs create on both). false serves plain HTTP to anyone who reaches the address.")
	fs.StringVar(&o.metrics.certDir, "metrics-cert-dir", "", "Directory holding the metrics server's certificate and key (--metrics-cert-name, --metrics-cert-key), reloaded when they change; empty uses a self-signed certificate generated in memory at start.")
	fs.StringVar(&o.metrics.certName, "metrics-cert-name", "tls.crt", "File name of the metrics server's certificate in --metrics-cert-dir.")
	fs.StringVar(&o.metrics.keyName, "metrics-cert-key", "tls.key", "File name of the metrics server's private key in --metrics-cert-dir.")
	fs.StringVar(&o.probeAddr, "health-probe-bind-address", ":9091", "Address of the /healthz and /readyz endpoints; \"0\" disables them.")
	fs.DurationVar(&o.resyncPeriod, "resync-period", time.Minute, "How often the kernel table is read back and drift repaired; 0 disables it.")
	fs.StringVar(&o.table, "table", compiler.DefaultTable, "Name of the nftables table (family inet) the agent owns.")
	fs.BoolVar(&o.revoke, "revoke-established", true, "Stop established connections that a policy change denies: their conntrack entries get the revoked mark, which the ruleset drops in both directions, and lose it when a later change allows them again. Ignored under --audit.")
	fs.IntVar(&o.verbosity, "v", 0, "Log verbosity: 0 info, 1 every sync, 2 and more debug.")
	fs.IntVar(&o.gcPercent, "gc-percent", 25, "Go GC target percentage (GOGC) once the first ruleset is applied. The agent holds a large, stable cache and allocates little once synced, so a low value keeps its memory near the live heap at little CPU cost (startup, which decodes the whole cluster, runs with Go's default 100); the GOGC environment variable overrides it, and GOMEMLIMIT (set by the Helm chart from the memory limit) bounds it.")
	fs.BoolVar(&o.logDenied, "log-denied", false, "Log the first packets of denied connections (rate-limited, through nflog group 100) as \"denied connection\" lines naming the pods, port and isolating policies.")
	fs.BoolVar(&o.audit, "audit", false, "Audit mode for the whole node, for a first install into a running cluster: no policy is enforced, nothing is dropped; every connection the policies would deny is counted (nftpolicy_policy_audit_denied_packets_total) and, with --log-denied, logged as \"would deny\". /readyz stays ready but says so, and nftpolicy_audit_mode is 1. --revoke-established is ignored (nothing is enforced, so nothing is revoked).")
	fs.StringVar(&o.pprofAddr, "pprof-bind-address", "0", "Address of the Go pprof endpoints (/debug/pprof/); \"0\" disables them.")
	fs.DurationVar(&o.cnpCheck, "cluster-policy-check-period", controllers.DefaultClusterPolicyCheckPeriod, "How often the agent asks the API server whether the ClusterNetworkPolicy CRD (policy.networking.k8s.io/v1beta1) is served, so that one installed or removed later is followed without a restart (sooner after a failed check); 0 ignores ClusterNetworkPolicies.")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage:\n  nftpolicy-agent [flags]\n  nftpolicy-agent cleanup [--table NAME]   remove the agent's table\n\nFlags:\n")
		fs.PrintDefaults()
	}
	cleanup := len(args) > 0 && args[0] == "cleanup"
	if cleanup {
		args = args[1:]
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	log := zap.New(zap.UseFlagOptions(&zap.Options{Level: zapcore.Level(-o.verbosity)}))
	ctrl.SetLogger(log)

	dp, err := netlink.New(netlink.WithTable(o.table), netlink.WithLogger(log.WithName("dataplane")))
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	if cleanup {
		if err := dp.Delete(context.Background()); err != nil {
			return fmt.Errorf("removing table inet %s: %w", o.table, err)
		}
		log.Info("removed nftables table", "table", "inet "+o.table)
		return nil
	}
	if o.nodeName == "" {
		return errors.New("--node-name (or $NODE_NAME) is required")
	}
	stopProfile, err := startupProfile(os.Getenv("NFTPOLICY_STARTUP_CPUPROFILE"))
	if err != nil {
		return err
	}

	cfg, err := restConfig(o.kubeconfig)
	if err != nil {
		return err
	}
	metricsOpts, err := o.metrics.serverOptions(o.metricsAddr)
	if err != nil {
		return err
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	// Known to the scheme whether or not the CRD is installed: the agent watches them
	// only once discovery says they are served (controllers.Syncer.ClusterPolicyCheckPeriod).
	if err := cnp.Install(scheme); err != nil {
		return err
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:  scheme,
		Metrics: metricsOpts,
		// The agent serves the probes itself (controllers.Probes): under --audit /readyz
		// says that the node enforces nothing.
		HealthProbeBindAddress: "0",
		PprofBindAddress:       o.pprofAddr,
		// Shared with the fan-out harness (test/bench) and the wire test, which checks
		// that the built-in kinds arrive as protobuf and the CRD as JSON.
		Cache: controllers.CacheOptions(log),
	})
	if err != nil {
		return fmt.Errorf("creating the manager: %w", err)
	}
	syncer := &controllers.Syncer{
		AfterFirstSync: func() {
			stopProfile()
			if _, set := os.LookupEnv("GOGC"); !set && o.gcPercent > 0 {
				debug.SetGCPercent(o.gcPercent)
			}
			// Decoding the initial state of the cluster left garbage several times
			// the size of what is kept: collect it and give the memory back now
			// rather than at the runtime's leisure.
			debug.FreeOSMemory()
		},
		Client:                   mgr.GetCache(),
		Dataplane:                dp,
		NodeName:                 o.nodeName,
		Table:                    o.table,
		ResyncPeriod:             o.resyncPeriod,
		Recorder:                 mgr.GetEventRecorder("nftpolicy-agent"),
		Log:                      log.WithName("sync"),
		ClusterPolicyCheckPeriod: o.cnpCheck,
		// This kernel cannot match SCTP ports: policies using them get an Event.
		SCTPUnsupported: !controllers.KernelHasSCTP(),
		Audit:           o.audit,
	}
	if o.metricsAddr != "0" {
		// Per-policy verdict counters, read from the kernel at scrape time.
		crmetrics.Registry.MustRegister(&controllers.VerdictCollector{Counters: dp, Applied: syncer.Applied, Log: log.WithName("metrics")})
	}
	if o.logDenied {
		syncer.LogDenied = true
		if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
			return syncer.RunDenyLog(ctx, compiler.DefaultLogGroup)
		})); err != nil {
			return fmt.Errorf("adding the denied-connection log: %w", err)
		}
	}
	if o.revoke && !o.audit {
		// The conntrack index revocation looks flows up in: built from one dump, then
		// kept by conntrack events; re-read every ten minutes to drop the entries
		// whose destroy event never came (created before anyone listened).
		tracker := &conntrack.Tracker{ResyncPeriod: 10 * time.Minute, Log: log.WithName("conntrack")}
		if err := mgr.Add(manager.RunnableFunc(tracker.Run)); err != nil {
			return fmt.Errorf("adding the conntrack tracker: %w", err)
		}
		syncer.Flows = tracker
		syncer.LocalAddrs = localAddrs
		crmetrics.Registry.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "nftpolicy_conntrack_tracked_flows",
				Help: "Conntrack entries (TCP, UDP, SCTP) in the index revocation looks flows up in.",
			}, func() float64 { return float64(tracker.Stats().Flows) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "nftpolicy_conntrack_events_total",
				Help: "Conntrack events applied to the index: a connection's first reply and its end (the kernel filters out the rest).",
			}, func() float64 { return float64(tracker.Stats().Events) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "nftpolicy_conntrack_event_overflows_total",
				Help: "Times the conntrack event socket overflowed (connections created faster than the agent read them): each is followed by a re-read of the whole table and a revocation pass over every flow.",
			}, func() float64 { return float64(tracker.Stats().Overflows) }),
		)
	}
	if err := syncer.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the controller: %w", err)
	}
	// Not ready while the API server is unreachable: the last ruleset stays enforced,
	// but policy changes are not seen until it returns.
	apiCheck, err := controllers.NewAPIServerCheck(cfg)
	if err != nil {
		return err
	}
	if o.probeAddr != "0" {
		probes := &controllers.Probes{
			Healthz: map[string]healthz.Checker{"healthz": healthz.Ping},
			Readyz:  map[string]healthz.Checker{"ruleset": syncer.ReadyCheck, "apiserver": apiCheck.Check},
		}
		if o.audit {
			probes.ReadyNote = controllers.AuditReadyNote
		}
		srv, err := probes.Server(context.Background(), o.probeAddr)
		if err != nil {
			return err
		}
		if err := mgr.Add(srv); err != nil {
			return fmt.Errorf("adding the health probe server: %w", err)
		}
	}
	if o.audit {
		// Loud on purpose: a node in audit mode looks healthy in every other way.
		log.Info("AUDIT MODE: this node enforces no policy; connections policies would deny are counted and logged, not dropped",
			"flag", "--audit", "revokeEstablished", "ignored", "logDenied", o.logDenied)
	}
	log.Info("starting", "node", o.nodeName, "table", "inet "+o.table, "resyncPeriod", o.resyncPeriod, "clusterPolicyCheckPeriod", o.cnpCheck, "audit", o.audit)
	// On SIGTERM the manager stops and the table stays in the kernel: the node keeps
	// enforcing the last ruleset until the next agent replaces it (fail closed).
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		return fmt.Errorf("running the manager: %w", err)
	}
	log.Info("stopped; the nftables table stays in force")
	return nil
}

// metricsTLS is how the metrics endpoint is served.
type metricsTLS struct {
	secure                     bool
	certDir, certName, keyName string
}

// serverOptions returns the metrics server's options for addr. The agent runs in the
// node's network namespace, so its endpoint is reachable by every pod that can reach
// the node, and it names every namespace and policy: by default only a client the API
// server authenticates and authorizes for GET /metrics may read it, over TLS (the
// kubebuilder convention).
func (m metricsTLS) serverOptions(addr string) (metricsserver.Options, error) {
	opts := metricsserver.Options{BindAddress: addr}
	if !m.secure {
		if m.certDir != "" {
			return opts, errors.New("--metrics-cert-dir needs --metrics-secure")
		}
		return opts, nil
	}
	opts.SecureServing = true
	opts.FilterProvider = filters.WithAuthenticationAndAuthorization
	// HTTP/1.1 only, as kubebuilder's scaffold does by default: HTTP/2's stream
	// handling has been the vector of denial-of-service attacks (Rapid Reset,
	// CVE-2023-44487), and a scrape gains nothing from it.
	opts.TLSOpts = []func(*tls.Config){func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }}
	if m.certDir == "" {
		// controller-runtime falls back to a self-signed certificate, kept in memory
		// (the chart's root filesystem is read-only).
		return opts, nil
	}
	// controller-runtime silently falls back to a self-signed certificate when the
	// files are missing; a certificate the operator asked for must not be replaced
	// behind their back.
	for _, name := range []string{m.certName, m.keyName} {
		if _, err := os.Stat(filepath.Join(m.certDir, name)); err != nil {
			return opts, fmt.Errorf("metrics TLS (--metrics-cert-dir): %w", err)
		}
	}
	opts.CertDir, opts.CertName, opts.KeyName = m.certDir, m.certName, m.keyName
	return opts, nil
}

// localAddrs returns the addresses assigned to this node's interfaces (the agent runs
// in the node's network namespace); read on every revocation as addresses come and go.
func localAddrs() map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return out
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out[p.Addr().Unmap()] = true
		}
	}
	return out
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster configuration (use --kubeconfig outside a pod): %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("loading kubeconfig %s: %w", kubeconfig, err)
	}
	return cfg, nil
}

// startupProfile writes a CPU profile of the agent's start, up to its first ruleset in
// the kernel, to path.<pid> when path is set ($NFTPOLICY_STARTUP_CPUPROFILE): the
// start is over before /debug/pprof could be asked (docs/performance.md). The
// returned function stops it.
func startupProfile(path string) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(fmt.Sprintf("%s.%d", filepath.Clean(path), os.Getpid())) //nolint:gosec // a path the operator sets in the agent's environment, for a debugging aid
	if err != nil {
		return nil, fmt.Errorf("startup CPU profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("startup CPU profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
	}, nil
}
