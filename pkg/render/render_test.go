package render

import (
	"flag"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/manifest"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

var update = flag.Bool("update", false, "rewrite the golden files testdata/<case>/<node>.nft")

// TestGolden renders every case of testdata (a directory of manifests) for each node its
// pods run on and compares with <node>.nft. The golden files were checked by loading
// them with `nft -c -f` (see TestGoldenIsAgentRuleset for why they are what the agent
// programs). go test ./pkg/render -update rewrites them.
func TestGolden(t *testing.T) {
	cases, err := os.ReadDir("testdata")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		if !c.IsDir() {
			continue
		}
		t.Run(c.Name(), func(t *testing.T) {
			dir := filepath.Join("testdata", c.Name())
			objs, err := manifest.Load([]string{dir}, nil)
			if err != nil {
				t.Fatal(err)
			}
			nodes := map[string]bool{}
			for _, p := range objs.Pods {
				nodes[p.Spec.NodeName] = true
			}
			if len(nodes) == 0 {
				t.Fatalf("%s: no pods", dir)
			}
			var names []string
			for n := range nodes {
				names = append(names, n)
			}
			sort.Strings(names)
			for _, node := range names {
				res := Compile(objs.Snapshot(node), agentOptions())
				if len(res.Problems) > 0 {
					t.Errorf("%s: problems: %v", node, res.Problems)
				}
				if err := res.Ruleset.Validate(); err != nil {
					t.Errorf("%s: invalid ruleset: %v", node, err)
				}
				got := ruleset.Render(res.Ruleset)
				golden := filepath.Join(dir, node+".nft")
				if *update {
					if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
						t.Fatal(err)
					}
					continue
				}
				want, err := os.ReadFile(golden)
				if err != nil {
					t.Fatalf("%v (go test ./pkg/render -update writes it)", err)
				}
				if got != string(want) {
					t.Errorf("%s differs from the rendering:\n%s", golden, lineDiff(string(want), got))
				}
			}
		})
	}
}

// TestGoldenIsAgentRuleset checks what the golden files pin: the agent's options (table
// nftpolicy with the revocation rule). That the compiler's Engine — what the agent runs —
// builds the same ruleset as Compile for this input is pkg/compiler's
// TestEngineMatchesCompileOnDemo.
func TestGoldenIsAgentRuleset(t *testing.T) {
	objs, err := manifest.Load([]string{"testdata/demo"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	snap := objs.Snapshot("node2")
	want := ruleset.Render(Compile(snap, agentOptions()).Ruleset)
	if !strings.Contains(want, "table inet nftpolicy") || !strings.Contains(want, "ct mark & 0x30000000 == 0x10000000") {
		t.Fatalf("rendering lacks the agent's table or revocation rule:\n%s", want)
	}
	// The golden pins real content: the backend is isolated and only the frontend's
	// addresses are allowed in.
	for _, s := range []string{"app/backend-policy ingress rule 0", "10.244.1.2", "fd00:10:244:1::2"} {
		if !strings.Contains(want, s) {
			t.Errorf("node2 rendering lacks %q", s)
		}
	}
}

// TestDiff checks the readable diff on a drifted copy: a removed element, a rule added
// to a chain, a deleted chain.
func TestDiff(t *testing.T) {
	objs, err := manifest.Load([]string{"testdata/demo"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	desired := Compile(objs.Snapshot("node2"), agentOptions()).Ruleset
	if d := Diff(desired.Clone(), desired); d != "" {
		t.Fatalf("identical rulesets differ:\n%s", d)
	}
	if d := Diff(nil, desired); !strings.Contains(d, "+ table inet nftpolicy") {
		t.Fatalf("missing table not reported: %q", d)
	}
	live := desired.Clone()
	m := live.Set(compiler.MapIngressV4)
	if m == nil || len(m.Elements) == 0 {
		t.Fatalf("no %s elements to drift", compiler.MapIngressV4)
	}
	m.Elements = m.Elements[1:]
	ing := live.Chain(compiler.ChainIngressForward)
	ing.Rules = append(ing.Rules, ruleset.Rule{Verdict: ruleset.Accept, Comment: "by hand"})
	d := Diff(live, desired)
	for _, want := range []string{
		"+ element ingress-pods-v4 10.244.2.",
		"~ chain ingress-forward",
		`-     accept comment "by hand"`,
	} {
		if !strings.Contains(d, want) {
			t.Errorf("diff lacks %q:\n%s", want, d)
		}
	}
}

// lineDiff shows the first differing lines.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(w) || i < len(g); i++ {
		var a, b string
		if i < len(w) {
			a = w[i]
		}
		if i < len(g) {
			b = g[i]
		}
		if a != b {
			return "line " + strconv.Itoa(i+1) + ":\n  want: " + a + "\n  got:  " + b
		}
	}
	return ""
}

// agentOptions are the compiler options nftpolicy-agent runs with by default
// (--table nftpolicy, --revoke-established=true, which adds the revocation rule).
func agentOptions() compiler.Options {
	return compiler.Options{Table: compiler.DefaultTable, Revocation: true}
}
