package cnpconformance

import (
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/network-policy-api/conformance"
	"sigs.k8s.io/network-policy-api/conformance/tests"
)

// TestTestsProbingSCTP checks what the suite's sources give on a kernel without SCTP:
// the tests named for SCTP are among those skipped, every name is a ConformanceTest,
// and those that probe only TCP and UDP stay.
func TestTestsProbingSCTP(t *testing.T) {
	skip, err := TestsProbingSCTP(conformance.Manifests, "tests")
	if err != nil {
		t.Fatal(err)
	}
	var all []string
	for _, ct := range tests.ConformanceTests {
		all = append(all, ct.ShortName)
	}
	for _, name := range skip {
		if !slices.Contains(all, name) {
			t.Errorf("%s is not a ConformanceTest", name)
		}
	}
	for _, name := range all {
		if strings.Contains(name, "SCTP") && !slices.Contains(skip, name) {
			t.Errorf("%s probes SCTP by its name but is not found to", name)
		}
	}
	for _, name := range []string{"CNPAdminTierEgressTCP", "CNPBaselineTierIngressUDP", "CNPAdminTierPriorityField"} {
		if slices.Contains(skip, name) {
			t.Errorf("%s probes only TCP or UDP but would be skipped", name)
		}
	}
	t.Logf("%d of %d tests probe SCTP: %v", len(skip), len(all), skip)
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
