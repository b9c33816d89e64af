package nosctpgen

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
)

// TestGeneratedUpToDate regenerates package nosctp from the module in go.mod into a
// temporary directory and compares it with the committed one: after a bump of
// sigs.k8s.io/network-policy-api (or a change of the generator) it fails until
// `make cnp-conformance-generate` is run and its output looked at.
func TestGeneratedUpToDate(t *testing.T) {
	src, err := ModuleSource()
	if err != nil {
		t.Fatal(err)
	}
	res, err := Generate(src)
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	if err := Write(tmp, res); err != nil {
		t.Fatal(err)
	}
	const committed = "../nosctp"
	fix := "regenerate with `make cnp-conformance-generate` (go run ./hack/cnpconformance-nosctp) and review the diff"
	want, err := filepath.Glob(filepath.Join(tmp, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range want {
		name := filepath.Base(f)
		w, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(committed, name))
		if err != nil {
			t.Errorf("%s: %v: %s", name, err, fix)
			continue
		}
		if !bytes.Equal(got, w) {
			t.Errorf("test/cnpconformance/nosctp/%s differs from what %s %s generates: %s", name, src.Module, src.Version, fix)
		}
	}
	have, err := filepath.Glob(filepath.Join(committed, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range have {
		content, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := res.Files[filepath.Base(f)]; !ok && IsGenerated(content) {
			t.Errorf("test/cnpconformance/nosctp/%s is generated but no longer would be: %s", filepath.Base(f), fix)
		}
	}
	t.Logf("%s %s: %d tests, rewritten %v, SCTP-only %v", src.Module, src.Version, len(res.Tests), res.Removed, res.SCTPOnly)
}

// TestGenerateV030 pins what the generator makes of the suite in go.mod, v0.3.0: the
// twelve tests that probe SCTP, four of them only SCTP.
func TestGenerateV030(t *testing.T) {
	src, err := ModuleSource()
	if err != nil {
		t.Fatal(err)
	}
	if src.Version != "v0.3.0" {
		t.Skipf("the suite is %s: TestGeneratedUpToDate covers it", src.Version) //nolint:forbidigo // pinned to one version on purpose
	}
	res, err := Generate(src)
	if err != nil {
		t.Fatal(err)
	}
	var rewritten []string
	for n := range res.Removed {
		rewritten = append(rewritten, n)
	}
	slices.Sort(rewritten)
	want := []string{
		"CNPAdminTierEgressInlineCIDRPeers", "CNPAdminTierEgressNodePeers", "CNPAdminTierGress", "CNPAdminTierPortRange",
		"CNPBaselineTierEgressInlineCIDRPeers", "CNPBaselineTierEgressNodePeers", "CNPBaselineTierGress", "CNPBaselineTierPortRange",
	}
	if !slices.Equal(rewritten, want) {
		t.Errorf("rewritten %v, want %v", rewritten, want)
	}
	wantOnly := []string{"CNPAdminTierEgressSCTP", "CNPAdminTierIngressSCTP", "CNPBaselineTierEgressSCTP", "CNPBaselineTierIngressSCTP"}
	if !slices.Equal(res.SCTPOnly, wantOnly) {
		t.Errorf("SCTP-only %v, want %v", res.SCTPOnly, wantOnly)
	}
	if len(res.Tests) != 30 {
		t.Errorf("%d tests, want 30", len(res.Tests))
	}
	for name, content := range res.Files {
		if strings.Contains(strings.ToLower(string(content)), `"sctp"`) {
			t.Errorf("%s still names \"sctp\"", name)
		}
	}
}

const license = `/*
Copyright 2022 The Kubernetes Authors.
*/

`

// fake is a suite of one file per entry.
func fake(files map[string]string) Source {
	fsys := fstest.MapFS{}
	for name, body := range files {
		fsys["tests/"+name] = &fstest.MapFile{Data: []byte(license + body)}
	}
	fsys["tests/main.go"] = &fstest.MapFile{Data: []byte(license + "package tests\n\nvar ConformanceTests []suite.ConformanceTest\n")}
	return Source{Module: "example.com/suite", Version: "v1.2.3", FS: fsys, Dir: "tests"}
}

const mixed = `package tests

import (
	"testing"

	api "sigs.k8s.io/network-policy-api/apis/v1beta1"
	"sigs.k8s.io/network-policy-api/conformance/utils/kubernetes"
	"sigs.k8s.io/network-policy-api/conformance/utils/suite"
)

func init() {
	ConformanceTests = append(ConformanceTests,
		Plain,
		Mixed,
	)
}

var Plain = suite.ConformanceTest{
	ShortName: "Plain",
	Test: func(t *testing.T, s *suite.ConformanceTestSuite) {
		_ = api.CIDR("10.0.0.0/8")
		kubernetes.PokeServer(t, s.ClientSet, &s.KubeConfig, "ns", "a", "tcp", "ip", int32(80), s.TimeoutConfig, true)
	},
}

var Mixed = suite.ConformanceTest{
	ShortName: "Mixed",
	Test: func(t *testing.T, s *suite.ConformanceTestSuite) {
		t.Run("both", func(t *testing.T) {
			// the server
			serverPod := kubernetes.GetPod(t, s.Client, "ns", "b-0", s.TimeoutConfig.GetTimeout)
			// TCP works
			kubernetes.PokeServer(t, s.ClientSet, &s.KubeConfig, "ns", "a", "tcp",
				serverPod.Status.PodIP, int32(80), s.TimeoutConfig, true)
			// another server, only for SCTP
			serverPod = kubernetes.GetPod(t, s.Client, "ns", "b-1", s.TimeoutConfig.GetTimeout)
			// SCTP works
			kubernetes.PokeServer(t, s.ClientSet, &s.KubeConfig, "ns", "a", "sctp",
				serverPod.Status.PodIP, int32(9003), s.TimeoutConfig, true)
			sctpOnly := kubernetes.GetPod(t, s.Client, "ns", "c-0", s.TimeoutConfig.GetTimeout)
			kubernetes.PokeServer(t, s.ClientSet, &s.KubeConfig, "ns", "a", "SCTP", sctpOnly.Status.PodIP, int32(9005), s.TimeoutConfig, false) // trailing
		})
		// a subtest of SCTP alone
		t.Run("sctp", func(t *testing.T) {
			serverPod := kubernetes.GetPod(t, s.Client, "ns", "b-0", s.TimeoutConfig.GetTimeout)
			kubernetes.PokeServer(t, s.ClientSet, &s.KubeConfig, "ns", "a", "sctp",
				serverPod.Status.PodIP, int32(9003), s.TimeoutConfig, true)
		})

		t.Run("udp", func(t *testing.T) {
			kubernetes.PokeServer(t, s.ClientSet, &s.KubeConfig, "ns", "a", "udp", "ip", int32(53), s.TimeoutConfig, true)
		})
	},
}
`

const sctpOnly = `package tests

import (
	"testing"

	"sigs.k8s.io/network-policy-api/conformance/utils/kubernetes"
	"sigs.k8s.io/network-policy-api/conformance/utils/suite"
)

var OnlySCTP = suite.ConformanceTest{
	ShortName: "OnlySCTP",
	Test: func(t *testing.T, s *suite.ConformanceTestSuite) {
		kubernetes.PokeServer(t, s.ClientSet, &s.KubeConfig, "ns", "a", "sctp", "ip", int32(9003), s.TimeoutConfig, true)
	},
}
`

const wantMixed = `// Code generated by hack/cnpconformance-nosctp from example.com/suite v1.2.3 (conformance/tests/mixed.go, without its SCTP probes); DO NOT EDIT.

/*
Copyright 2022 The Kubernetes Authors.
*/

package nosctp

import (
	"testing"

	"sigs.k8s.io/network-policy-api/conformance/utils/kubernetes"
	"sigs.k8s.io/network-policy-api/conformance/utils/suite"
)

func init() {
	ConformanceTests = append(ConformanceTests,
		Mixed,
	)
}

var Mixed = suite.ConformanceTest{
	ShortName: "Mixed",
	Test: func(t *testing.T, s *suite.ConformanceTestSuite) {
		t.Run("both", func(t *testing.T) {
			// the server
			serverPod := kubernetes.GetPod(t, s.Client, "ns", "b-0", s.TimeoutConfig.GetTimeout)
			// TCP works
			kubernetes.PokeServer(t, s.ClientSet, &s.KubeConfig, "ns", "a", "tcp",
				serverPod.Status.PodIP, int32(80), s.TimeoutConfig, true)
		})

		t.Run("udp", func(t *testing.T) {
			kubernetes.PokeServer(t, s.ClientSet, &s.KubeConfig, "ns", "a", "udp", "ip", int32(53), s.TimeoutConfig, true)
		})
	},
}
`

// TestGenerate: SCTP probes go with their comments, then the lookups only they read,
// then the subtest left empty; the file keeps only its rewritten test, and imports
// only what that uses; SCTP-only and plain tests are not written.
func TestGenerate(t *testing.T) {
	res, err := Generate(fake(map[string]string{"mixed.go": mixed, "sctp.go": sctpOnly}))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(res.Files["mixed.go"]); got != wantMixed {
		t.Errorf("mixed.go:\n%s\nwant:\n%s", got, wantMixed)
	}
	if _, ok := res.Files["sctp.go"]; ok {
		t.Error("an SCTP-only test's file written")
	}
	if got, want := res.Removed, map[string]Probes{"Mixed": {SCTP: 3, Other: 2}}; len(got) != 1 || got["Mixed"] != want["Mixed"] {
		t.Errorf("Removed %v, want %v", got, want)
	}
	if !slices.Equal(res.SCTPOnly, []string{"OnlySCTP"}) {
		t.Errorf("SCTPOnly %v", res.SCTPOnly)
	}
	if !slices.Equal(res.Tests, []string{"Plain", "Mixed", "OnlySCTP"}) {
		t.Errorf("Tests %v", res.Tests)
	}
	gen := string(res.Files[GeneratedFile])
	for _, want := range []string{`"Mixed": {SCTP: 3, Other: 2},`, `"OnlySCTP",`, "const Tests = 3", `Version = "v1.2.3"`} {
		if !strings.Contains(gen, want) {
			t.Errorf("generated.go lacks %q:\n%s", want, gen)
		}
	}
	for name, content := range res.Files {
		if !IsGenerated(content) {
			t.Errorf("%s does not start with the generated header", name)
		}
	}
}

// TestGenerateRefuses: what the rewriter does not recognise is an error, not a guess.
func TestGenerateRefuses(t *testing.T) {
	probe := func(stmt string) string {
		return `package tests

import (
	"testing"

	"sigs.k8s.io/network-policy-api/conformance/utils/kubernetes"
	"sigs.k8s.io/network-policy-api/conformance/utils/suite"
)

func init() { ConformanceTests = append(ConformanceTests, T) }

var T = suite.ConformanceTest{
	ShortName: "T",
	Test: func(t *testing.T, s *suite.ConformanceTestSuite) {
		kubernetes.PokeServer(t, s.ClientSet, &s.KubeConfig, "ns", "a", "tcp", "ip", int32(80), s.TimeoutConfig, true)
		` + stmt + `
	},
}
`
	}
	for name, c := range map[string]struct{ src, err string }{
		"protocol not a literal": {probe(`p := "sctp"
		kubernetes.PokeServer(t, s.ClientSet, &s.KubeConfig, "ns", "a", p, "ip", int32(80), s.TimeoutConfig, true)`), "not a string literal"},
		"probe not a statement": {probe(`defer kubernetes.PokeServer(t, s.ClientSet, &s.KubeConfig, "ns", "a", "sctp", "ip", int32(80), s.TimeoutConfig, true)`), "not statements of their own"},
		"subtest left with a patch": {probe(`t.Run("x", func(t *testing.T) {
			kubernetes.PatchNamespace(t, s.Client, nil, nil, s.TimeoutConfig.GetTimeout)
			kubernetes.PokeServer(t, s.ClientSet, &s.KubeConfig, "ns", "a", "sctp", "ip", int32(80), s.TimeoutConfig, true)
		})`), "decide by hand"},
		"unknown protocol": {probe(`kubernetes.PokeServer(t, s.ClientSet, &s.KubeConfig, "ns", "a", "icmp", "ip", int32(80), s.TimeoutConfig, true)`), `protocol "icmp"`},
		"test not a var": {`package tests

import "sigs.k8s.io/network-policy-api/conformance/utils/suite"

func init() { ConformanceTests = append(ConformanceTests, suite.ConformanceTest{ShortName: "X"}) }
`, "not a top-level var"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Generate(fake(map[string]string{"t.go": c.src}))
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("error %v, want one saying %q", err, c.err)
			}
		})
	}
	if _, err := Generate(fake(map[string]string{"t.go": probe("")})); err == nil || !strings.Contains(err.Error(), "nothing to generate") {
		t.Errorf("a suite without SCTP probes: error %v", err)
	}
}
