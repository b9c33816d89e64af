package cnpconformance

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/sets"

	"sigs.k8s.io/network-policy-api/conformance"
	confv1a1 "sigs.k8s.io/network-policy-api/conformance/apis/v1alpha1"
	"sigs.k8s.io/network-policy-api/conformance/tests"
	"sigs.k8s.io/network-policy-api/conformance/utils/suite"

	"github.com/nftpolicy/nftpolicy/test/cnpconformance/nosctp"
)

func names(ts []suite.ConformanceTest) []string {
	var out []string
	for _, ct := range ts {
		out = append(out, ct.ShortName)
	}
	return out
}

// TestPlan: with SCTP, upstream's tests as they are; without, the same tests in the
// same order, the rewritten ones (and only they) from package nosctp, the tests named
// for SCTP skipped and nothing that probes only TCP or UDP touched.
func TestPlan(t *testing.T) {
	with, err := NewPlan(tests.ConformanceTests, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(with.Tests) != len(tests.ConformanceTests) || with.Skip != nil || with.Rewritten != nil {
		t.Errorf("with SCTP: %d tests, skip %v, rewritten %v", len(with.Tests), with.Skip, with.Rewritten)
	}
	for i := range with.Tests {
		if with.Tests[i].ShortName != tests.ConformanceTests[i].ShortName {
			t.Errorf("with SCTP: test %d is %s, upstream's %s", i, with.Tests[i].ShortName, tests.ConformanceTests[i].ShortName)
		}
	}
	if got := with.Note(); got != "SCTP: the kernel has it; upstream's tests unchanged" {
		t.Errorf("with SCTP: note %q", got)
	}

	without, err := NewPlan(tests.ConformanceTests, false)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names(without.Tests), names(tests.ConformanceTests)) {
		t.Errorf("without SCTP: tests %v, upstream's %v", names(without.Tests), names(tests.ConformanceTests))
	}
	for _, name := range names(tests.ConformanceTests) {
		if strings.Contains(name, "SCTP") && !slices.Contains(without.Skip, name) {
			t.Errorf("%s probes SCTP by its name but is not skipped", name)
		}
	}
	for _, name := range []string{"CNPAdminTierEgressTCP", "CNPBaselineTierIngressUDP", "CNPAdminTierPriorityField", "CNPAdminTierEgressNamedPort"} {
		if slices.Contains(without.Skip, name) || without.Rewritten[name] != (nosctp.Probes{}) {
			t.Errorf("%s probes only TCP or UDP but is skipped or rewritten", name)
		}
	}
	for _, name := range []string{"CNPAdminTierGress", "CNPBaselineTierEgressNodePeers", "CNPAdminTierPortRange", "CNPBaselineTierEgressInlineCIDRPeers"} {
		if p := without.Rewritten[name]; p.SCTP == 0 || p.Other == 0 {
			t.Errorf("%s: rewritten %+v, want SCTP probes removed and others kept", name, p)
		}
	}
	for i, ct := range without.Tests {
		up := tests.ConformanceTests[i]
		_, isRewritten := without.Rewritten[ct.ShortName]
		fromNoSCTP := slices.ContainsFunc(nosctp.ConformanceTests, func(n suite.ConformanceTest) bool {
			return n.ShortName == ct.ShortName && sameFunc(n, ct)
		})
		if isRewritten != fromNoSCTP {
			t.Errorf("%s: rewritten %v, but its Test is nosctp's: %v", ct.ShortName, isRewritten, fromNoSCTP)
		}
		if !isRewritten && !sameFunc(up, ct) {
			t.Errorf("%s: not rewritten, but its Test is not upstream's", ct.ShortName)
		}
	}
	if got, want := without.Note(), "SCTP: kernel has none; SCTP probes removed from 8 tests, 4 SCTP tests skipped"; got != want {
		t.Errorf("without SCTP: note %q, want %q", got, want)
	}
	t.Logf("without SCTP: rewritten %v, skipped %v", without.RewrittenNames(), without.Skip)
}

// sameFunc says whether two tests have the same Test function (funcs are not
// comparable; their code pointers are).
func sameFunc(a, b suite.ConformanceTest) bool {
	return reflect.ValueOf(a.Test).Pointer() == reflect.ValueOf(b.Test).Pointer()
}

// TestAmendReport: the rewritten tests that passed are reported skipped, those that
// failed stay failed; the results are compiled again and the summaries say why.
func TestAmendReport(t *testing.T) {
	plan, err := NewPlan(tests.ConformanceTests, false)
	if err != nil {
		t.Fatal(err)
	}
	all := sets.New[suite.SupportedFeature]()
	for _, f := range suite.AllFeatures.UnsortedList() {
		all.Insert(f)
	}
	// What the suite reports when every test not skipped passes but one rewritten
	// experimental test, CNPAdminTierEgressNodePeers, failed.
	var std, exp confv1a1.Status
	for _, ct := range plan.Tests {
		st := &std
		if isExperimental(suite.CNPConformanceProfile, ct) {
			st = &exp
		}
		switch {
		case slices.Contains(plan.Skip, ct.ShortName):
			st.Skipped++
			st.SkippedTests = append(st.SkippedTests, ct.ShortName)
		case ct.ShortName == "CNPAdminTierEgressNodePeers":
			st.Failed++
			st.FailedTests = append(st.FailedTests, ct.ShortName)
		default:
			st.Passed++
		}
	}
	compileStatus(&std, suite.CNPConformanceProfile.OptionalTests)
	compileStatus(&exp, suite.CNPConformanceProfile.OptionalTests)
	report := &confv1a1.ConformanceReport{ProfileReports: []confv1a1.ProfileReport{{
		Name:         string(suite.CNPConformanceProfileName),
		Standard:     std,
		Experimental: &confv1a1.ExperimentalStatus{Status: exp},
	}}}
	if exp.Result != confv1a1.Failure || exp.Passed != 5 || exp.Summary != "" {
		t.Fatalf("experimental before: %+v", exp)
	}
	if err := plan.AmendReport(report, all); err != nil {
		t.Fatal(err)
	}
	gotStd, gotExp := report.ProfileReports[0].Standard, report.ProfileReports[0].Experimental.Status
	if gotStd.Failed != 0 || gotStd.Passed != std.Passed-6 || gotStd.Skipped != std.Skipped+6 || gotStd.Result != confv1a1.Failure {
		t.Errorf("standard: %+v, before %+v", gotStd.Statistics, std.Statistics)
	}
	if !slices.Contains(gotStd.SkippedTests, "CNPAdminTierGress") || !slices.Contains(gotStd.SkippedTests, "CNPBaselineTierPortRange") {
		t.Errorf("standard: skipped %v", gotStd.SkippedTests)
	}
	if gotExp.Passed != 4 || gotExp.Skipped != 1 || gotExp.Failed != 1 || gotExp.Result != confv1a1.Failure ||
		!slices.Equal(gotExp.SkippedTests, []string{"CNPBaselineTierEgressNodePeers"}) || !slices.Equal(gotExp.FailedTests, []string{"CNPAdminTierEgressNodePeers"}) {
		t.Errorf("experimental: %+v", gotExp)
	}
	for _, want := range []string{"required tests skipped: CNPAdminTierEgressSCTP, ", "kernel without SCTP", "SCTP-only tests skipped: CNPAdminTierEgressSCTP", "not upstream's test, so reported skipped: ", "CNPBaselineTierGress"} {
		if !strings.Contains(gotStd.Summary, want) {
			t.Errorf("standard summary %q lacks %q", gotStd.Summary, want)
		}
	}
	if want := "kernel without SCTP; passed with their SCTP probes removed (test/cnpconformance/nosctp), which is not upstream's test, so reported skipped: CNPBaselineTierEgressNodePeers"; gotExp.Summary != want {
		t.Errorf("experimental summary %q, want %q", gotExp.Summary, want)
	}

	// Without the experimental features their tests ran in no form: nothing to move.
	report.ProfileReports[0].Experimental = &confv1a1.ExperimentalStatus{Status: exp}
	report.ProfileReports[0].Standard = std
	if err := plan.AmendReport(report, sets.New(suite.SupportClusterNetworkPolicy)); err != nil {
		t.Fatal(err)
	}
	if got := report.ProfileReports[0].Experimental.Status; got.Passed != exp.Passed || got.Summary != exp.Summary {
		t.Errorf("experimental without its features: %+v", got)
	}

	// With SCTP nothing changes.
	with, err := NewPlan(tests.ConformanceTests, true)
	if err != nil {
		t.Fatal(err)
	}
	report.ProfileReports[0].Standard = std
	if err := with.AmendReport(report, all); err != nil || report.ProfileReports[0].Standard.Passed != std.Passed {
		t.Errorf("with SCTP: %v, %+v", err, report.ProfileReports[0].Standard)
	}
}

func TestWithoutSCTPServers(t *testing.T) {
	base, err := conformance.Manifests.ReadFile("base/manifests.yaml")
	if err != nil {
		t.Fatal(err)
	}
	out, n, err := WithoutSCTPServers(string(base))
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 || strings.Contains(out, sctpServerEnv) {
		t.Errorf("%d SCTP servers turned off, %q still in the manifests", n, sctpServerEnv)
	}
	if got, want := strings.ReplaceAll(out, noSCTPServerEnv, sctpServerEnv), string(base); got != want {
		t.Error("the manifests changed beyond the SCTP servers' variables")
	}
	if _, _, err := WithoutSCTPServers("kind: Namespace\n"); err == nil {
		t.Error("manifests without SCTP servers: no error")
	}
}
