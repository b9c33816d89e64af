// Package cnpconformance runs the upstream ClusterNetworkPolicy conformance suite
// (sigs.k8s.io/network-policy-api v0.3.0, conformance/) against a cluster: its test
// (TestConformance) mirrors the module's conformance_profile_test.go, built into a test
// binary by `make cnp-conformance-build` and run by `make conformance` on each kind
// cluster after the NetworkPolicy e2e suite (hack/kind/conformance.sh,
// docs/conformance.md).
//
// What it adds to upstream's test is for kernels without SCTP (no sctp module, as in
// some sandboxes; kind nodes share the host's kernel). There the base pods' SCTP
// servers (`agnhost porter` with SERVE_SCTP_PORT_*) exit at once, so no base pod would
// ever be ready and no test could run; and every SCTP probe fails whatever the policy
// says, since the client cannot even open an SCTP socket. So, only when the kernel has
// no SCTP (Plan):
//
//   - the base manifests are served with those servers' ports renamed (porter then
//     serves nothing and waits);
//   - the tests that probe SCTP among TCP and UDP run as package nosctp has them,
//     generated from the suite's own sources without their SCTP probes;
//   - the tests every probe of which is SCTP are skipped through the suite's
//     SkipTests;
//   - the conformance report (AmendReport) lists the rewritten tests that passed as
//     skipped, not passed: what passed is not upstream's test.
//
// On a kernel with SCTP every test is upstream's, unchanged.
package cnpconformance

import (
	"fmt"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/util/sets"

	confv1a1 "sigs.k8s.io/network-policy-api/conformance/apis/v1alpha1"
	"sigs.k8s.io/network-policy-api/conformance/utils/suite"

	"github.com/nftpolicy/nftpolicy/test/cnpconformance/nosctp"
)

// KernelSCTP reports whether this machine's kernel opens SCTP sockets (the attempt
// loads the sctp module where it is one), and if not, why.
func KernelSCTP() (bool, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP)
	if err != nil {
		return false, fmt.Errorf("socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP): %w", err)
	}
	unix.Close(fd)
	return true, nil
}

// sctpServerEnv is how the base manifests start an SCTP server: agnhost porter with
// SERVE_SCTP_PORT_<port>.
const sctpServerEnv = "SERVE_SCTP_PORT_"

// noSCTPServerEnv replaces it: porter ignores variables of no known prefix.
const noSCTPServerEnv = "NO_SCTP_IN_KERNEL_PORT_"

// WithoutSCTPServers returns the base manifests with every SCTP server turned off, and
// how many it turned off; none is an error: the manifests changed and this no longer
// does what it says.
func WithoutSCTPServers(manifests string) (string, int, error) {
	n := strings.Count(manifests, sctpServerEnv)
	if n == 0 {
		return "", 0, fmt.Errorf("the base manifests start no SCTP server with %s: update test/cnpconformance", sctpServerEnv)
	}
	return strings.ReplaceAll(manifests, sctpServerEnv, noSCTPServerEnv), n, nil
}

// Plan is what runs: upstream's tests, or on a kernel without SCTP the same list with
// the rewritten tests in place of upstream's and the SCTP-only ones to skip.
type Plan struct {
	Tests     []suite.ConformanceTest
	SCTP      bool                     // the kernel has SCTP: Tests are upstream's
	Rewritten map[string]nosctp.Probes // without SCTP: the tests run without their SCTP probes
	Skip      []string                 // without SCTP: the SCTP-only tests, to skip
}

// NewPlan makes the plan for upstream's tests on a kernel with or without SCTP. The
// generated package must match them: every test it rewrote or lists as SCTP-only is
// one of upstream's, with the same features and manifests, and upstream has as many
// tests as when it was generated.
func NewPlan(upstream []suite.ConformanceTest, sctp bool) (*Plan, error) {
	p := &Plan{SCTP: sctp}
	if sctp {
		p.Tests = upstream
		return p, nil
	}
	if len(upstream) != nosctp.Tests {
		return nil, fmt.Errorf("the suite has %d tests, package nosctp was generated from %d (%s %s): regenerate it (make cnp-conformance-generate)",
			len(upstream), nosctp.Tests, nosctp.Module, nosctp.Version)
	}
	byName := map[string]suite.ConformanceTest{}
	for _, ct := range nosctp.ConformanceTests {
		byName[ct.ShortName] = ct
	}
	if len(byName) != len(nosctp.Removed) {
		return nil, fmt.Errorf("package nosctp has %d tests but lists %d as rewritten", len(byName), len(nosctp.Removed))
	}
	p.Rewritten = map[string]nosctp.Probes{}
	found := 0
	for _, ct := range upstream {
		if slices.Contains(nosctp.SCTPOnly, ct.ShortName) {
			p.Skip = append(p.Skip, ct.ShortName)
		}
		if rw, ok := byName[ct.ShortName]; ok {
			if !slices.Equal(rw.Features, ct.Features) || !slices.Equal(rw.Manifests, ct.Manifests) {
				return nil, fmt.Errorf("%s: package nosctp's features or manifests differ from upstream's: regenerate it", ct.ShortName)
			}
			p.Rewritten[ct.ShortName] = nosctp.Removed[ct.ShortName]
			found++
			ct = rw
		}
		p.Tests = append(p.Tests, ct)
	}
	if found != len(byName) || len(p.Skip) != len(nosctp.SCTPOnly) {
		return nil, fmt.Errorf("package nosctp names tests the suite does not have (rewritten %d of %d found, SCTP-only %d of %d): regenerate it",
			found, len(byName), len(p.Skip), len(nosctp.SCTPOnly))
	}
	slices.Sort(p.Skip)
	return p, nil
}

// Note says, for the run's result line, what was changed for SCTP.
func (p *Plan) Note() string {
	if p.SCTP {
		return "SCTP: the kernel has it; upstream's tests unchanged"
	}
	return fmt.Sprintf("SCTP: kernel has none; SCTP probes removed from %d tests, %d SCTP tests skipped", len(p.Rewritten), len(p.Skip))
}

// RewrittenNames are the rewritten tests, sorted.
func (p *Plan) RewrittenNames() []string {
	names := make([]string, 0, len(p.Rewritten))
	for n := range p.Rewritten {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// profiles are the suite's conformance profiles, by name.
var profiles = map[string]suite.ConformanceProfile{
	string(suite.CNPConformanceProfileName): suite.CNPConformanceProfile,
}

// AmendReport keeps the suite's report true to upstream's tests when some ran
// rewritten: a rewritten test that passed is moved from passed to skipped (what
// passed is not upstream's test; the SCTP probes it lacks did not run), one that
// failed stays failed (its failing probe is upstream's), and each status's result is
// compiled again as the suite does (failure when a test failed or a required one was
// skipped), its summary saying why. supported are the suite's supported features: a
// test they do not cover ran in no form and is in no count.
func (p *Plan) AmendReport(report *confv1a1.ConformanceReport, supported sets.Set[suite.SupportedFeature]) error {
	if p.SCTP {
		return nil
	}
	for i := range report.ProfileReports {
		pr := &report.ProfileReports[i]
		profile, ok := profiles[pr.Name]
		if !ok {
			return fmt.Errorf("profile %q: unknown to test/cnpconformance", pr.Name)
		}
		moved := map[*confv1a1.Status][]string{} // rewritten tests moved from passed to skipped
		touched := map[*confv1a1.Status]bool{}   // statuses with a rewritten test
		for _, ct := range p.Tests {
			if _, ok := p.Rewritten[ct.ShortName]; !ok || !supported.HasAll(ct.Features...) || !inProfile(profile, ct) {
				continue
			}
			status := &pr.Standard
			if isExperimental(profile, ct) {
				if pr.Experimental == nil {
					return fmt.Errorf("profile %s: %s is experimental but the report has no experimental status", pr.Name, ct.ShortName)
				}
				status = &pr.Experimental.Status
			}
			touched[status] = true
			if slices.Contains(status.FailedTests, ct.ShortName) {
				continue // failed stays failed
			}
			if status.Passed == 0 {
				return fmt.Errorf("profile %s: %s neither failed nor counted passed", pr.Name, ct.ShortName)
			}
			status.Passed--
			status.Skipped++
			status.SkippedTests = append(status.SkippedTests, ct.ShortName)
			moved[status] = append(moved[status], ct.ShortName)
		}
		for _, status := range []*confv1a1.Status{&pr.Standard, experimentalStatus(pr)} {
			if status == nil {
				continue
			}
			var only []string
			for _, n := range p.Skip {
				if slices.Contains(status.SkippedTests, n) {
					only = append(only, n)
				}
			}
			if !touched[status] && len(only) == 0 {
				continue
			}
			compileStatus(status, profile.OptionalTests)
			why := []string{"kernel without SCTP"}
			if len(only) > 0 {
				why = append(why, fmt.Sprintf("SCTP-only tests skipped: %s", strings.Join(only, ", ")))
			}
			if len(moved[status]) > 0 {
				why = append(why, fmt.Sprintf("passed with their SCTP probes removed (test/cnpconformance/nosctp), which is not upstream's test, so reported skipped: %s", strings.Join(moved[status], ", ")))
			}
			if status.Summary != "" {
				status.Summary += "; "
			}
			status.Summary += strings.Join(why, "; ")
		}
	}
	return nil
}

func experimentalStatus(pr *confv1a1.ProfileReport) *confv1a1.Status {
	if pr.Experimental == nil {
		return nil
	}
	return &pr.Experimental.Status
}

// inProfile and isExperimental are the suite's getConformanceProfilesForTest and
// isTestExperimental (conformance/utils/suite), which it does not export.
func inProfile(profile suite.ConformanceProfile, ct suite.ConformanceTest) bool {
	for _, f := range ct.Features {
		if !profile.StandardFeatures.Has(f) && !profile.ExperimentalFeatures.Has(f) {
			return false
		}
	}
	return true
}

func isExperimental(profile suite.ConformanceProfile, ct suite.ConformanceTest) bool {
	for _, f := range ct.Features {
		if profile.ExperimentalFeatures.Has(f) {
			return true
		}
	}
	return false
}

// compileStatus is the suite's (conformance/utils/suite/conformance_reports.go):
// failure if any test failed or any non-optional test was skipped, success otherwise.
func compileStatus(status *confv1a1.Status, optional sets.Set[string]) {
	var skippedRequired []string
	for _, name := range status.SkippedTests {
		if !optional.Has(name) {
			skippedRequired = append(skippedRequired, name)
		}
	}
	status.Summary = ""
	switch {
	case status.Failed > 0:
		status.Result = confv1a1.Failure
	case len(skippedRequired) > 0:
		status.Result = confv1a1.Failure
		status.Summary = fmt.Sprintf("required tests skipped: %s", strings.Join(skippedRequired, ", "))
	default:
		status.Result = confv1a1.Success
	}
}
