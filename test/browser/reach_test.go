// Package browser tests the HTML page of `nftpolicy reach -o html` in a real headless
// browser (Debian's chromium, driven by chromedp): the page loads from a file with the
// network cut off, shows the matrix with the right verdicts, and hovering a cell shows
// its explanation. Without chromium the test skips (fails under CI=true: `make deps`
// installs it).
package browser

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/nftpolicy/nftpolicy/internal/testns"
	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/manifest"
	"github.com/nftpolicy/nftpolicy/pkg/reach"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// offlineParams are Network.emulateNetworkConditionsByRule's parameters as Chromium
// 148 (Debian bookworm) takes them: offline is a parameter of the command there, while
// cdproto v0.160.1 (newer protocol) has it per rule only, which this Chromium rejects
// as invalid. Both are sent; each version ignores the field it does not know.
type offlineParams struct {
	Offline    bool                  `json:"offline"`
	Conditions []*network.Conditions `json:"matchedNetworkConditions"`
}

// goOffline cuts the tab off the network.
func goOffline(ctx context.Context) error {
	cmd := cdp.Command[offlineParams, network.EmulateNetworkConditionsByRuleResult]{Method: network.CommandEmulateNetworkConditionsByRule}
	_, err := chromedp.Call(ctx, cmd, offlineParams{Offline: true, Conditions: []*network.Conditions{{Offline: true, DownloadThroughput: -1, UploadThroughput: -1}}})
	if err != nil {
		return fmt.Errorf("emulating an offline network: %w", err)
	}
	return nil
}

// chromium finds Debian's browser.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	testns.SkipUnlessRequired(t, "no chromium: apt-get install chromium (make deps does)")
	return ""
}

// writePage writes a page through write into a temporary file and returns its path.
func writePage(t *testing.T, write func(io.Writer) error) string {
	t.Helper()
	page := filepath.Join(t.TempDir(), "reach.html")
	f, err := os.Create(page)
	if err != nil {
		t.Fatal(err)
	}
	if err := write(f); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return page
}

// openOffline starts headless chromium with the network cut off, loads page from
// file:// and waits for its first table cell. At the end of the test it checks that
// nothing but the page itself was requested.
func openOffline(t *testing.T, page string) context.Context {
	t.Helper()
	exe := chromium(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe),
		// Root (as make test runs) needs no sandbox; the page is ours.
		chromedp.NoSandbox,
		chromedp.Flag("disable-gpu", true),
		// No way out: every host resolves to nothing and every proxied request goes to
		// a closed port, on top of the emulated offline network below.
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND"),
		chromedp.Flag("proxy-server", "127.0.0.1:9"),
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	bctx, cancelBrowser := chromedp.NewContext(actx)
	t.Cleanup(cancelBrowser)

	var mu sync.Mutex
	var requests []string
	if err := chromedp.Listen(bctx, func(ev any) {
		if e, ok := ev.(*network.EventRequestWillBeSent); ok {
			mu.Lock()
			requests = append(requests, e.Request.URL)
			mu.Unlock()
		}
	}); err != nil {
		t.Fatalf("starting chromium %s: %v", exe, err)
	}
	if _, err := chromedp.Call(bctx, network.Enable, network.EnableParams{}); err != nil {
		t.Fatal(err)
	}
	if err := goOffline(bctx); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(bctx, 60*time.Second)
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx, chromedp.Navigate("file://"+page), chromedp.WaitVisible(chromedp.CSS("table.matrix td"))); err != nil {
		t.Fatalf("loading %s: %v", page, err)
	}
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		// The listener must have seen the page's own request, or it proves nothing.
		if len(requests) == 0 {
			t.Errorf("no request seen, not even the page's")
		}
		for _, u := range requests {
			if u != "file://"+page {
				t.Errorf("the page requested %s", u)
			}
		}
	})
	return ctx
}

// hover moves the mouse onto the cell data-cell=cell, waits for the tooltip and
// returns its text.
func hover(t *testing.T, ctx context.Context, cell string) string {
	t.Helper()
	vis, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`getComputedStyle(document.getElementById('tip')).display !== 'none'`))
	if err != nil || vis {
		t.Fatalf("tooltip visible before the hover (%v)", err)
	}
	var box struct{ X, Y float64 }
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](`(() => { const td = document.querySelector('td[data-cell="`+cell+`"]'); td.scrollIntoView(); const r = td.getBoundingClientRect(); return {X: r.left + r.width/2, Y: r.top + r.height/2}; })()`))
	if err != nil {
		t.Fatalf("finding cell %s: %v", cell, err)
	}
	if err := json.Unmarshal(raw, &box); err != nil {
		t.Fatal(err)
	}
	hoverCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := chromedp.Do(hoverCtx, chromedp.MouseEvent(input.DispatchMouseEventTypeMouseMoved, box.X, box.Y),
		chromedp.WaitVisible(chromedp.ID("tip"))); err != nil {
		t.Fatalf("hovering %s: no tooltip: %v", cell, err)
	}
	tip, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID("tip")))
	if err != nil {
		t.Fatal(err)
	}
	return tip
}

var agentOpts = compiler.Options{Table: compiler.DefaultTable, Revocation: true}

// demo is the explain test data's demo (only the frontend reaches the backend, only
// the ingress controller the frontend), with or without its policies.
func demo(t *testing.T, withPolicies bool) *manifest.Objects {
	t.Helper()
	paths := []string{"../../pkg/render/testdata/demo"}
	if !withPolicies {
		paths = []string{"../../pkg/render/testdata/demo/namespaces.yaml", "../../pkg/render/testdata/demo/pods.yaml"}
	}
	objs, err := manifest.Load(paths, nil)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func TestReachHTMLInBrowser(t *testing.T) {
	chromium(t)
	// Both verdicts and mixed blocks: the demo plus a canary of the frontend (same
	// group) whose egress is closed.
	objs := demo(t, true)
	extra := `apiVersion: v1
kind: Pod
metadata: {namespace: app, name: frontend-canary, labels: {app: frontend, tier: canary}}
spec: {nodeName: node1, containers: [{name: c, image: x, ports: [{name: http, containerPort: 80}]}]}
status: {phase: Running, podIPs: [{ip: 10.244.1.77}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: app, name: canary-no-egress}
spec: {podSelector: {matchLabels: {tier: canary}}, policyTypes: [Egress]}
`
	if err := objs.Read(strings.NewReader(extra), "extra"); err != nil {
		t.Fatal(err)
	}
	m, err := reach.Compute(objs, reach.Options{Compiler: agentOpts})
	if err != nil {
		t.Fatal(err)
	}
	page := writePage(t, m.WriteHTML)
	// What the page must show: every block of the group table.
	want := map[string]reach.Block{}
	for _, b := range m.Blocks(false) {
		want[b.From+"|"+b.To] = b
	}
	ctx := openOffline(t, page)

	// The matrix: every block of the first table, with its verdict's class.
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](`Array.from(document.querySelectorAll('table.matrix')[0].querySelectorAll('td[data-cell]')).map(td => [td.dataset.cell, td.className, td.textContent])`))
	if err != nil {
		t.Fatal(err)
	}
	var cells [][3]string
	if err := json.Unmarshal(raw, &cells); err != nil {
		t.Fatal(err)
	}
	if len(cells) != len(want) {
		t.Fatalf("%d cells in the page, want %d: %s", len(cells), len(want), raw)
	}
	classes := map[reach.Verdict]string{reach.Allowed: "allowed", reach.Denied: "denied", reach.Mixed: "mixed", reach.Self: "self"}
	seen := map[string]int{}
	for _, c := range cells {
		b, ok := want[c[0]]
		if !ok || c[1] != classes[b.Verdict] {
			t.Errorf("cell %s: class %q, want %q", c[0], c[1], classes[b.Verdict])
		}
		seen[c[1]]++
	}
	if seen["allowed"] == 0 || seen["denied"] == 0 || seen["mixed"] == 0 {
		t.Errorf("verdicts shown %v: want allowed, denied and mixed cells", seen)
	}

	// Hover a denied cell: the tooltip appears with the explanation.
	const denied = "other/Label/client|app/Label/backend"
	if want[denied].Verdict != reach.Denied {
		t.Fatalf("%s is %s in the matrix, want denied", denied, want[denied].Verdict)
	}
	tip := hover(t, ctx, denied)
	wantTip, err := m.Explain(ruleset.IPv4, reach.Port{Protocol: "TCP", Port: 80}, "other/client", "app/backend")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"other/client → app/backend", strings.TrimSpace(wantTip), "DENIED"} {
		if !strings.Contains(tip, s) {
			t.Errorf("tooltip lacks %q:\n%s", s, tip)
		}
	}
}

// The --before/--after page: one row per changed cell, the after side's explanation
// on hover.
func TestReachDiffHTMLInBrowser(t *testing.T) {
	chromium(t)
	d, err := reach.Diff(demo(t, false), demo(t, true), reach.Options{Compiler: agentOpts})
	if err != nil {
		t.Fatal(err)
	}
	ctx := openOffline(t, writePage(t, d.WriteHTML))
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](`Array.from(document.querySelectorAll('td[data-cell]')).map(td => [td.dataset.cell, td.className])`))
	if err != nil {
		t.Fatal(err)
	}
	var rows [][2]string
	if err := json.Unmarshal(raw, &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(d.Changes) || len(rows) == 0 {
		t.Fatalf("%d changed rows in the page, want %d: %s", len(rows), len(d.Changes), raw)
	}
	for i, c := range d.Changes {
		if rows[i][0] != c.From+"|"+c.To || rows[i][1] != string(c.After) {
			t.Errorf("row %d: %v, want %s|%s %s", i, rows[i], c.From, c.To, c.After)
		}
	}
	var lost *reach.Change
	for i, c := range d.Changes {
		if c.From == "other/client" && c.To == "app/backend" {
			lost = &d.Changes[i]
		}
	}
	if lost == nil || !lost.Revoked() {
		t.Fatalf("client -> backend is not a lost flow: %+v", d.Changes)
	}
	tip := hover(t, ctx, "other/client|app/backend")
	if strings.TrimSpace(tip) != strings.TrimSpace(lost.Explanation) || !strings.Contains(tip, "DENIED") {
		t.Errorf("tooltip:\n%s\nwant the after side's explanation:\n%s", tip, lost.Explanation)
	}
}
