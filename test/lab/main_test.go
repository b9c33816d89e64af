package lab

import (
	"os"
	"testing"
)

// TestMain runs the child process of TestClusterCrashCleanup (crashHelper) instead of
// the tests when crashHelperEnv is set. A process, not a test: as a test it would be
// skipped in every other run.
func TestMain(m *testing.M) {
	if stateDir := os.Getenv(crashHelperEnv); stateDir != "" {
		crashHelper(stateDir) // never returns
	}
	os.Exit(m.Run())
}
