// Package gate decides whether the reliability suites run: they take minutes and need
// root, the lab's tools, the control plane and the agent binary, so `go test ./...`
// (make test) passes over them at once and `make test-reliability` runs them.
package gate

import (
	"os"
	"os/exec"
	"testing"

	"github.com/nftpolicy/nftpolicy/test/lab"
)

// Open skips t unless NFTPOLICY_RELIABILITY=1 and everything the suites need is there,
// and returns the agent binary ($NFTPOLICY_AGENT).
func Open(t *testing.T) string {
	t.Helper()
	if os.Getenv("NFTPOLICY_RELIABILITY") != "1" {
		t.Skip("reliability tests are long: set NFTPOLICY_RELIABILITY=1 (make test-reliability)")
	}
	if os.Geteuid() != 0 {
		t.Skip("the lab needs root (network namespaces, nftables)")
	}
	for _, tool := range []string{"nft", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
	if _, err := lab.ControlPlaneDir(""); err != nil {
		t.Skipf("no control plane: %v (run `make envtest-assets`)", err)
	}
	bin := os.Getenv("NFTPOLICY_AGENT")
	if bin == "" {
		t.Skip("NFTPOLICY_AGENT (the agent binary, `make build`) is not set")
	}
	return bin
}
