package dataplane_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The dependency arrows point down only: the pure layers (the controllers, revocation's
// decision, this package's contract and planner) never import kernel code, and the
// kernel code never imports the decisions above it. Only cmd/ wires concrete backends.
func TestDependenciesPointDown(t *testing.T) {
	const mod = "github.com/nftpolicy/nftpolicy/"
	kernel := []string{mod + "pkg/dataplane/netlink", mod + "pkg/dataplane/conntrack", "github.com/mdlayher/netlink",
		"github.com/ti-mo/conntrack", "github.com/google/nftables"}
	for pkg, forbidden := range map[string][]string{
		mod + "pkg/dataplane":           kernel,
		mod + "pkg/revoke":              kernel,
		mod + "controllers":             {mod + "pkg/dataplane/netlink", mod + "pkg/dataplane/conntrack"},
		mod + "pkg/dataplane/conntrack": {mod + "pkg/revoke", mod + "controllers"},
		mod + "pkg/dataplane/netlink":   {mod + "pkg/revoke", mod + "controllers", mod + "pkg/compiler"},
	} {
		out, err := exec.CommandContext(t.Context(), "go", "list", "-deps", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
		}
		deps := map[string]bool{}
		for _, d := range strings.Fields(string(out)) {
			deps[d] = true
		}
		for _, f := range forbidden {
			if deps[f] {
				t.Errorf("%s imports %s", pkg, f)
			}
		}
	}
}
