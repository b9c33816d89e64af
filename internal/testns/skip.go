package testns

import (
	"os"
	"strconv"
)

// TB is the part of testing.TB that SkipUnlessRequired uses. Ginkgo's GinkgoT() has it
// too (its Skipf is ginkgo's Skip, its Fatalf ginkgo's Fail), so the ginkgo suites and
// the plain tests share one rule.
type TB interface {
	Helper()
	Skipf(format string, args ...any)
	Fatalf(format string, args ...any)
}

// RequireEnv names the variable that, set to a true value, makes the kernel tests
// required outside CI too (CI=true does the same).
const RequireEnv = "NFTPOLICY_REQUIRE_KERNEL"

// Required reports whether the tests must not skip for want of their environment (root,
// namespaces, nft, conntrack, the control plane, the agent binary): under CI=true or
// NFTPOLICY_REQUIRE_KERNEL=1. CI exists to prove the kernel paths; a run that skipped
// them must not go green.
func Required() bool {
	for _, v := range []string{"CI", RequireEnv} {
		if on, err := strconv.ParseBool(os.Getenv(v)); err == nil && on {
			return true
		}
	}
	return false
}

// SkipUnlessRequired is the one way a test gives up because its environment cannot run
// it: it fails the test when Required, and skips it otherwise (a developer's machine
// without root or nft). The message says what is missing and how to get it.
func SkipUnlessRequired(t TB, format string, args ...any) {
	t.Helper()
	if Required() {
		t.Fatalf("required (CI=true or "+RequireEnv+"=1), cannot run: "+format, args...)
		return // a TB whose Fatalf returns (a recorder) must not also skip
	}
	t.Skipf(format, args...)
}
