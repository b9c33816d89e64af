// Package gate decides whether the reliability suites run: they take minutes and need
// root, the lab's tools, the control plane and the agent binary, so they run only with
// NFTPOLICY_RELIABILITY=1 (make test-reliability; make test leaves their packages out).
// Once opted in, a missing environment fails them under CI (testns.SkipUnlessRequired).
package gate

import (
	"os"
	"testing"

	"github.com/nftpolicy/nftpolicy/internal/testns"
	"github.com/nftpolicy/nftpolicy/test/lab"
)

// Open skips t unless NFTPOLICY_RELIABILITY=1 and everything the suites need is there
// (fails it under CI when something is missing), and returns the agent binary
// ($NFTPOLICY_AGENT).
func Open(t *testing.T) string {
	t.Helper()
	if os.Getenv("NFTPOLICY_RELIABILITY") != "1" {
		t.Skip("reliability tests are long: set NFTPOLICY_RELIABILITY=1 (make test-reliability)") //nolint:forbidigo // an opt-in, not a missing environment; make test does not list these packages
	}
	lab.SkipUnlessCluster(t)
	bin := os.Getenv("NFTPOLICY_AGENT")
	if bin == "" {
		testns.SkipUnlessRequired(t, "NFTPOLICY_AGENT (the agent binary, `make build`) is not set")
	}
	return bin
}
