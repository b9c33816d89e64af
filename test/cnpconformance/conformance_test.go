package cnpconformance

import (
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/config"
	"sigs.k8s.io/yaml"

	api "sigs.k8s.io/network-policy-api/apis/v1beta1"
	"sigs.k8s.io/network-policy-api/conformance"
	"sigs.k8s.io/network-policy-api/conformance/tests"
	"sigs.k8s.io/network-policy-api/conformance/utils/flags"
	"sigs.k8s.io/network-policy-api/conformance/utils/suite"

	"github.com/nftpolicy/nftpolicy/test/cnpconformance/nosctp"
)

// The suite's own flags (--all-features, --supported-features, --exempt-features,
// --conformance-profiles, --report-output, --cleanup-base-resources, --debug and the
// implementation's --organization, --project, --url, --version, --contact,
// --additional-info) come with its flags package; this one is ours.
var sctpFlag = flag.String("sctp", "auto", "whether the cluster's kernel has SCTP: auto (this machine's kernel, which kind nodes share), on (upstream's tests unchanged), off (the base pods without SCTP servers, the tests that probe SCTP among other protocols without their SCTP probes, those that probe only SCTP skipped)")

// enableEnv must be set for TestConformance to run: it needs a cluster (KUBECONFIG)
// with nftpolicy and the experimental CRD installed; make test only compiles it.
// requestTimeoutFlag bounds one probe (agnhost connect --timeout). Upstream's 3s makes
// every expected denial cost two full timeouts (the suite's Eventually, then its final
// check); on a kind cluster an allowed connection takes milliseconds, and an allowed
// probe that times out is retried until the suite's PokeTimeout anyway.
var requestTimeoutFlag = flag.Duration("request-timeout", 0, "bound of one probe's connect (0: the suite's default, 3s)")

const enableEnv = "NFTPOLICY_CNP_CONFORMANCE"

// TestConformance is upstream's TestConformanceProfiles (conformance/
// conformance_profile_test.go) with one addition, for kernels without SCTP (see the
// package comment): every ConformanceTest is a subtest TestConformance/<ShortName>,
// and a line "cnp-note: …" says which tests ran (Plan.Note), for the harness's line.
func TestConformance(t *testing.T) {
	if os.Getenv(enableEnv) == "" {
		t.Skipf("the ClusterNetworkPolicy conformance suite runs against a cluster: set %s=1 and KUBECONFIG, or run make conformance", enableEnv) //nolint:forbidigo // an opt-in, not a missing environment: make conformance runs it on its clusters
	}
	cfg, err := config.GetConfig()
	if err != nil {
		t.Fatalf("Error loading Kubernetes config: %v", err)
	}
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatalf("Error initializing Kubernetes client: %v", err)
	}
	clientSet, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("error when creating Kubernetes ClientSet: %v", err)
	}
	if err := api.Install(c.Scheme()); err != nil {
		t.Fatalf("Error installing api scheme: %v", err)
	}
	if err := apiextensionsv1.AddToScheme(c.Scheme()); err != nil {
		t.Fatalf("Error installing apiextensions scheme: %v", err)
	}

	opts := suite.Options{
		Client:                     c,
		ClientSet:                  clientSet,
		KubeConfig:                 *cfg,
		Debug:                      *flags.ShowDebug,
		CleanupBaseResources:       *flags.CleanupBaseResources,
		SupportedFeatures:          suite.ParseSupportedFeatures(*flags.SupportedFeatures),
		ExemptFeatures:             suite.ParseSupportedFeatures(*flags.ExemptFeatures),
		EnableAllSupportedFeatures: *flags.EnableAllSupportedFeatures,
	}
	// Zero fields take the suite's defaults (config.SetupTimeoutConfig).
	opts.TimeoutConfig.RequestTimeout = *requestTimeoutFlag
	plan := withoutSCTP(t, &opts)
	t.Logf("cnp-note: %s", plan.Note())
	profiles := suite.ParseConformanceProfiles(*flags.ConformanceProfiles)
	t.Logf("Running conformance tests with cleanup: %t, debug: %t, all features: %t, supported features: [%v], exempt features: [%v], conformance profiles: [%v]",
		*flags.CleanupBaseResources, *flags.ShowDebug, *flags.EnableAllSupportedFeatures, *flags.SupportedFeatures, *flags.ExemptFeatures, *flags.ConformanceProfiles)

	if profiles.Len() == 0 {
		s := suite.New(opts)
		s.Setup(t)
		s.Run(t, plan.Tests)
		return
	}
	implementation, err := suite.ParseImplementation(*flags.ImplementationOrganization, *flags.ImplementationProject,
		*flags.ImplementationURL, *flags.ImplementationVersion, *flags.ImplementationContact, *flags.ImplementationAdditionalInformation)
	if err != nil {
		t.Fatalf("Error parsing implementation's details: %v", err)
	}
	s, err := suite.NewConformanceProfileTestSuite(suite.ConformanceProfileOptions{
		Options:             opts,
		Implementation:      *implementation,
		ConformanceProfiles: profiles,
	})
	if err != nil {
		t.Fatalf("error creating experimental conformance test suite: %v", err)
	}
	s.Setup(t)
	if err := s.Run(t, plan.Tests); err != nil {
		t.Fatal(err)
	}
	report, err := s.Report()
	if err != nil {
		t.Fatalf("error generating conformance profile report: %v", err)
	}
	if err := plan.AmendReport(report, s.SupportedFeatures); err != nil {
		t.Fatalf("amending the report for the tests run without SCTP: %v", err)
	}
	raw, err := yaml.Marshal(report)
	if err != nil {
		t.Fatal(err)
	}
	if *flags.ReportOutput != "" {
		if err := os.WriteFile(*flags.ReportOutput, raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("Conformance report:\n%s", raw)
}

// withoutSCTP plans the run: on a kernel with SCTP (-sctp=on, or auto on such a
// kernel) upstream's tests, unchanged. Without (-sctp=off, or auto): the base manifests
// without SCTP servers, served to the suite over HTTPS from this process (the suite
// reads them from its embedded files or an https:// URL, and only the URL can be given
// other content), the tests that probe SCTP among other protocols as package nosctp
// has them, and those that probe only SCTP skipped.
func withoutSCTP(t *testing.T, opts *suite.Options) *Plan {
	t.Helper()
	var why string
	hasSCTP := false
	switch *sctpFlag {
	case "on":
		hasSCTP, why = true, "-sctp=on"
	case "off":
		why = "-sctp=off"
	case "auto":
		ok, err := KernelSCTP()
		hasSCTP = ok
		if ok {
			why = "an SCTP socket opens"
		} else {
			why = err.Error()
		}
	default:
		t.Fatalf("-sctp=%s: want auto, on or off", *sctpFlag)
	}
	plan, err := NewPlan(tests.ConformanceTests, hasSCTP)
	if err != nil {
		t.Fatal(err)
	}
	if plan.SCTP {
		t.Logf("SCTP: the kernel has it (%s); every test is upstream's, unchanged", why)
		return plan
	}
	base, err := conformance.Manifests.ReadFile("base/manifests.yaml")
	if err != nil {
		t.Fatal(err)
	}
	patched, servers, err := WithoutSCTPServers(string(base))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(patched))
	}))
	saved := http.DefaultClient
	http.DefaultClient = srv.Client()
	t.Cleanup(func() {
		http.DefaultClient = saved
		srv.Close()
	})
	opts.BaseManifests = srv.URL + "/base/manifests.yaml"
	opts.SkipTests = plan.Skip
	var rewritten []string
	for _, name := range plan.RewrittenNames() {
		p := plan.Rewritten[name]
		rewritten = append(rewritten, fmt.Sprintf("%s (%d of %d probes)", name, p.SCTP, p.SCTP+p.Other))
	}
	t.Logf("SCTP: kernel has none (%s): the base pods run without their %d SCTP servers; "+
		"%d tests run without their SCTP probes (package nosctp, generated from %s %s): %s; "+
		"%d tests probe only SCTP and are skipped: %s",
		why, servers, len(rewritten), nosctp.Module, nosctp.Version, strings.Join(rewritten, ", "),
		len(plan.Skip), strings.Join(plan.Skip, ", "))
	return plan
}
