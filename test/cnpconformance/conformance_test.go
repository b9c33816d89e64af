package cnpconformance

import (
	"flag"
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
)

// The suite's own flags (--all-features, --supported-features, --exempt-features,
// --conformance-profiles, --report-output, --cleanup-base-resources, --debug and the
// implementation's --organization, --project, --url, --version, --contact,
// --additional-info) come with its flags package; this one is ours.
var sctpFlag = flag.String("sctp", "auto", "whether the cluster's kernel has SCTP: auto (this machine's kernel, which kind nodes share), on, off (serve the base pods without SCTP servers and skip the tests that probe SCTP)")

// enableEnv must be set for TestConformance to run: it needs a cluster (KUBECONFIG)
// with nftpolicy and the experimental CRD installed; make test only compiles it.
const enableEnv = "NFTPOLICY_CNP_CONFORMANCE"

// TestConformance is upstream's TestConformanceProfiles (conformance/
// conformance_profile_test.go) with one addition, for kernels without SCTP (see the
// package comment): every ConformanceTest is a subtest TestConformance/<ShortName>.
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
	withoutSCTP(t, &opts)
	profiles := suite.ParseConformanceProfiles(*flags.ConformanceProfiles)
	t.Logf("Running conformance tests with cleanup: %t, debug: %t, all features: %t, supported features: [%v], exempt features: [%v], conformance profiles: [%v]",
		*flags.CleanupBaseResources, *flags.ShowDebug, *flags.EnableAllSupportedFeatures, *flags.SupportedFeatures, *flags.ExemptFeatures, *flags.ConformanceProfiles)

	if profiles.Len() == 0 {
		s := suite.New(opts)
		s.Setup(t)
		s.Run(t, tests.ConformanceTests)
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
	if err := s.Run(t, tests.ConformanceTests); err != nil {
		t.Fatal(err)
	}
	report, err := s.Report()
	if err != nil {
		t.Fatalf("error generating conformance profile report: %v", err)
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

// withoutSCTP adapts opts to a kernel without SCTP (-sctp=off, or auto on such a
// kernel): the base manifests without SCTP servers, served to the suite over HTTPS
// from this process (the suite reads them from its embedded files or an https:// URL,
// and only the URL can be given other content), and the tests that probe SCTP skipped.
func withoutSCTP(t *testing.T, opts *suite.Options) {
	t.Helper()
	var why string
	switch *sctpFlag {
	case "on":
		return
	case "off":
		why = "-sctp=off"
	case "auto":
		ok, err := KernelSCTP()
		if ok {
			t.Logf("SCTP: the kernel has it; every test runs")
			return
		}
		why = err.Error()
	default:
		t.Fatalf("-sctp=%s: want auto, on or off", *sctpFlag)
	}
	skip, err := TestsProbingSCTP(conformance.Manifests, "tests")
	if err != nil {
		t.Fatalf("finding the tests that probe SCTP: %v", err)
	}
	known := map[string]bool{}
	for _, ct := range tests.ConformanceTests {
		known[ct.ShortName] = true
	}
	for _, name := range skip {
		if !known[name] {
			t.Fatalf("test %s, found probing SCTP in the suite's sources, is not among its ConformanceTests", name)
		}
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
	opts.SkipTests = skip
	t.Logf("SCTP: kernel has none (%s): the base pods run without their %d SCTP servers, and the %d tests that probe SCTP are skipped: %s",
		why, servers, len(skip), strings.Join(skip, ", "))
}
