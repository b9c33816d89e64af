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
// ever be ready and no test could run; and every test that probes SCTP fails whatever
// the policy says, since the client cannot even open an SCTP socket. So, only when the
// kernel has no SCTP: the base manifests are served with those servers' ports renamed
// (porter then serves nothing and waits), and the tests that probe SCTP — found in the
// suite's own embedded sources — are skipped through the suite's SkipTests, which its
// report lists as skipped.
package cnpconformance

import (
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
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

// TestsProbingSCTP returns, sorted, the ShortName of every suite.ConformanceTest
// literal in the Go sources under dir of fsys (the suite embeds its tests/*.go) that
// names SCTP: the string "sctp" (PokeServer's protocol) or ProtocolSCTP.
func TestsProbingSCTP(fsys fs.FS, dir string) ([]string, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, err
	}
	fset := token.NewFileSet()
	var names []string
	tests := 0
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		src, err := fs.ReadFile(fsys, path.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		f, err := parser.ParseFile(fset, e.Name(), src, parser.SkipObjectResolution)
		if err != nil {
			return nil, err
		}
		var walkErr error
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.CompositeLit)
			if !ok || !isConformanceTest(lit.Type) {
				return true
			}
			tests++
			name, err := shortName(lit)
			if err != nil {
				walkErr = fmt.Errorf("%s: %w", fset.Position(lit.Pos()), err)
				return false
			}
			if namesSCTP(lit) {
				names = append(names, name)
			}
			return false
		})
		if walkErr != nil {
			return nil, walkErr
		}
	}
	if tests == 0 {
		return nil, errors.New("no suite.ConformanceTest literal in " + dir)
	}
	slices.Sort(names)
	return names, nil
}

func isConformanceTest(e ast.Expr) bool {
	sel, ok := e.(*ast.SelectorExpr)
	return ok && sel.Sel.Name == "ConformanceTest"
}

func shortName(lit *ast.CompositeLit) (string, error) {
	for _, elt := range lit.Elts {
		kv, ok := elt.(*ast.KeyValueExpr)
		if !ok {
			continue
		}
		if key, ok := kv.Key.(*ast.Ident); ok && key.Name == "ShortName" {
			if v, ok := kv.Value.(*ast.BasicLit); ok && v.Kind == token.STRING {
				return strconv.Unquote(v.Value)
			}
			return "", errors.New("ShortName is not a string literal")
		}
	}
	return "", errors.New("a ConformanceTest without ShortName")
}

func namesSCTP(n ast.Node) bool {
	found := false
	ast.Inspect(n, func(n ast.Node) bool {
		switch x := n.(type) {
		case *ast.BasicLit:
			if x.Kind == token.STRING {
				if s, err := strconv.Unquote(x.Value); err == nil && strings.EqualFold(s, "sctp") {
					found = true
				}
			}
		case *ast.SelectorExpr:
			if x.Sel.Name == "ProtocolSCTP" {
				found = true
			}
		}
		return !found
	})
	return found
}
