package reach

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/explain"
	"github.com/nftpolicy/nftpolicy/pkg/manifest"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

var agentOpts = compiler.Options{Table: compiler.DefaultTable, Revocation: true}

func loadDir(t *testing.T, dir string) *manifest.Objects {
	t.Helper()
	objs, err := manifest.Load([]string{dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func parse(t *testing.T, docs ...string) *manifest.Objects {
	t.Helper()
	objs := &manifest.Objects{}
	if err := objs.Read(strings.NewReader(strings.Join(docs, "\n---\n")), "test"); err != nil {
		t.Fatal(err)
	}
	return objs
}

func TestGroupOf(t *testing.T) {
	ctrl := func(kind, name string) []metav1.OwnerReference {
		yes := true
		return []metav1.OwnerReference{{Kind: kind, Name: name, Controller: &yes}}
	}
	cases := []struct {
		meta       metav1.ObjectMeta
		kind, name string
	}{
		{metav1.ObjectMeta{Name: "web-7d4b9c-x2x", OwnerReferences: ctrl("ReplicaSet", "web-7d4b9c"), Labels: map[string]string{"pod-template-hash": "7d4b9c", "app": "other"}}, "Deployment", "web"},
		{metav1.ObjectMeta{Name: "rs-abc", OwnerReferences: ctrl("ReplicaSet", "rs")}, "ReplicaSet", "rs"},
		{metav1.ObjectMeta{Name: "db-0", OwnerReferences: ctrl("StatefulSet", "db")}, "StatefulSet", "db"},
		{metav1.ObjectMeta{Name: "agent-q", OwnerReferences: ctrl("DaemonSet", "agent")}, "DaemonSet", "agent"},
		{metav1.ObjectMeta{Name: "migrate-x", OwnerReferences: ctrl("Job", "migrate")}, "Job", "migrate"},
		{metav1.ObjectMeta{Name: "backup-29412345-x", OwnerReferences: ctrl("Job", "backup-29412345")}, "CronJob", "backup"},
		{metav1.ObjectMeta{Name: "p", Labels: map[string]string{"app.kubernetes.io/name": "shop", "app": "x"}}, KindLabel, "shop"},
		{metav1.ObjectMeta{Name: "p", Labels: map[string]string{"app": "x"}}, KindLabel, "x"},
		{metav1.ObjectMeta{Name: "lonely"}, KindPod, "lonely"},
	}
	for _, c := range cases {
		if kind, name := groupOf(c.meta); kind != c.kind || name != c.name {
			t.Errorf("%s: got %s %s, want %s %s", c.meta.Name, kind, name, c.kind, c.name)
		}
	}
}

// Every cell of the matrix is what explain.Explain says for it, over the test data of
// render and explain (NetworkPolicies, ipBlocks, named ports, ClusterNetworkPolicy
// tiers), both families, with an address outside the cluster.
func TestEveryCellIsExplainsVerdict(t *testing.T) {
	for _, dir := range []string{"demo", "kubectl-list", "cluster-tiers"} {
		t.Run(dir, func(t *testing.T) {
			objs := loadDir(t, "../render/testdata/"+dir)
			imds := netip.MustParseAddr("169.254.169.254")
			m, err := Compute(objs, Options{Families: []ruleset.Family{ruleset.IPv4, ruleset.IPv6}, Addrs: []netip.Addr{imds}, Compiler: agentOpts})
			if err != nil {
				t.Fatal(err)
			}
			if len(m.Ports) == 0 || len(m.Pods) < 2 {
				t.Fatalf("ports %v, pods %d", m.Ports, len(m.Pods))
			}
			snap := objs.Snapshot("")
			cells := 0
			for _, f := range m.Families {
				for _, port := range m.Ports {
					for _, from := range m.Pods {
						tos := []string{imds.String()}
						for _, p := range m.Pods {
							tos = append(tos, p.Key)
						}
						for _, to := range tos {
							got, ok := m.Verdict(f, port, from.Key, to)
							if !ok {
								t.Fatalf("no cell %s -> %s", from.Key, to)
							}
							if to == from.Key {
								if got != Self {
									t.Errorf("%s to itself: %s", to, got)
								}
								continue
							}
							ex, err := explain.Explain(snap, explain.Request{From: from.Key, To: to, Protocol: port.Protocol, Port: port.Port, Family: f}, agentOpts)
							if err != nil {
								if got != NA {
									t.Errorf("%s -> %s %s %s: explain fails (%v) but reach says %s", from.Key, to, port, familyName(f), err, got)
								}
								continue
							}
							cells++
							if want := map[bool]Verdict{true: Allowed, false: Denied}[ex.Allowed]; got != want {
								t.Errorf("%s -> %s %s %s: reach %s, explain %s", from.Key, to, port, familyName(f), got, want)
							}
							text, err := m.Explain(f, port, from.Key, to)
							if err != nil || text != ex.Format() {
								t.Errorf("%s -> %s: explanation differs from explain's:\n%s\nvs\n%s", from.Key, to, text, ex.Format())
							}
						}
					}
				}
			}
			if cells == 0 {
				t.Fatal("no cell judged")
			}
		})
	}
}

// base is a small cluster: namespace a with Deployment web (3 pods, one labelled
// tier=canary), namespace b with StatefulSet db (2 pods) and a pod "lonely", namespace
// c (team=blue) with a client; db accepts web only.
var base = []string{
	`{apiVersion: v1, kind: Namespace, metadata: {name: a}}`,
	`{apiVersion: v1, kind: Namespace, metadata: {name: b}}`,
	`{apiVersion: v1, kind: Namespace, metadata: {name: c, labels: {team: blue}}}`,
	pod("a", "web-5f9c-1", "ReplicaSet", "web-5f9c", "n1", "10.0.1.1", `{app: web, pod-template-hash: 5f9c}`),
	pod("a", "web-5f9c-2", "ReplicaSet", "web-5f9c", "n2", "10.0.2.1", `{app: web, pod-template-hash: 5f9c}`),
	pod("a", "web-5f9c-3", "ReplicaSet", "web-5f9c", "n2", "10.0.2.2", `{app: web, pod-template-hash: 5f9c, tier: canary}`),
	pod("b", "db-0", "StatefulSet", "db", "n1", "10.0.1.2", `{app: db}`),
	pod("b", "db-1", "StatefulSet", "db", "n2", "10.0.2.3", `{app: db}`),
	pod("b", "lonely", "", "", "n1", "10.0.1.3", `{}`),
	pod("c", "client", "", "", "n2", "10.0.2.4", `{app: client}`),
	`{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {namespace: b, name: db},
	  spec: {podSelector: {matchLabels: {app: db}}, ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: a}}, podSelector: {matchLabels: {app: web}}}]}]}}`,
}

func pod(ns, name, ownerKind, owner, node, ip, labels string) string {
	refs := ""
	if ownerKind != "" {
		refs = fmt.Sprintf(", ownerReferences: [{apiVersion: apps/v1, kind: %s, name: %s, uid: u, controller: true}]", ownerKind, owner)
	}
	return fmt.Sprintf(`{apiVersion: v1, kind: Pod, metadata: {namespace: %s, name: %s, labels: %s%s},
	  spec: {nodeName: %s, containers: [{name: c, image: x, ports: [{containerPort: 80}]}]},
	  status: {phase: Running, podIPs: [{ip: %s}]}}`, ns, name, labels, refs, node, ip)
}

func blockOf(t *testing.T, blocks []Block, from, to string) Block {
	t.Helper()
	for _, b := range blocks {
		if b.From == from && b.To == to {
			return b
		}
	}
	t.Fatalf("no block %s -> %s", from, to)
	return Block{}
}

// Groups collapse to one cell where uniform and list their pods where not.
func TestGroupsAndCollapse(t *testing.T) {
	objs := parse(t, append(slices.Clone(base),
		// Only the canary of web may reach the client: a mixed block.
		`{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {namespace: c, name: canary},
		  spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {tier: canary}}}]}]}}`)...)
	m, err := Compute(objs, Options{Compiler: agentOpts})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, g := range m.Groups {
		ids = append(ids, g.ID)
	}
	wantIDs := []string{"a/Deployment/web", "b/StatefulSet/db", "b/Pod/lonely", "c/Label/client"}
	if !slices.Equal(ids, wantIDs) {
		t.Fatalf("groups %v, want %v", ids, wantIDs)
	}
	if want := []Port{{"TCP", 80}}; !slices.Equal(m.Ports, want) {
		t.Errorf("default ports %v, want %v", m.Ports, want)
	}
	blocks := m.Blocks(false)
	if len(blocks) != 16 {
		t.Fatalf("%d blocks, want 16", len(blocks))
	}
	checks := []struct {
		from, to       string
		verdict        Verdict
		allowed, cells int
	}{
		{"a/Deployment/web", "b/StatefulSet/db", Allowed, 6, 0},
		{"b/Pod/lonely", "b/StatefulSet/db", Denied, 0, 0},
		{"a/Deployment/web", "a/Deployment/web", Allowed, 6, 0}, // 3 self cells aside
		{"b/StatefulSet/db", "b/StatefulSet/db", Denied, 0, 0},
		{"b/Pod/lonely", "b/Pod/lonely", Self, 0, 0},
		{"a/Deployment/web", "c/Label/client", Mixed, 1, 3},
	}
	for _, c := range checks {
		b := blockOf(t, blocks, c.from, c.to)
		if b.Verdict != c.verdict || b.Allowed != c.allowed || len(b.Cells) != c.cells {
			t.Errorf("%s -> %s: %s, %d allowed, %d cells; want %s, %d, %d", c.from, c.to, b.Verdict, b.Allowed, len(b.Cells), c.verdict, c.allowed, c.cells)
		}
	}
	mixed := blockOf(t, blocks, "a/Deployment/web", "c/Label/client")
	// The representative of a mixed block is a denied cell; the cells are each explained.
	if !strings.Contains(mixed.Explanation, "DENIED") || mixed.Cells[2].Verdict != Allowed || !strings.Contains(mixed.Cells[2].Explanation, "ALLOWED") ||
		mixed.Cells[2].From != "a/web-5f9c-3" {
		t.Errorf("mixed block: %+v", mixed)
	}
	uniform := blockOf(t, blocks, "a/Deployment/web", "b/StatefulSet/db")
	if s := uniform.Summary(); !strings.Contains(s, "all 6 pairs (3×2 pods)") {
		t.Errorf("summary %q", s)
	}
	if n := len(blockOf(t, m.Blocks(true), "a/Deployment/web", "b/StatefulSet/db").Cells); n != 6 {
		t.Errorf("expand: %d cells, want 6", n)
	}

	var out bytes.Buffer
	if err := m.WriteText(&out, true); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"80/TCP IPv4", "  1  a/web", "1/3", "a/web-5f9c-3 -> c/client", "X a/web-5f9c-1 -> c/client"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("text lacks %q:\n%s", s, out.String())
		}
	}
	out.Reset()
	if err := m.WriteJSON(&out, false); err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Groups []Group
		Pods   []Pod
		Blocks []struct {
			From, To, Verdict string
			Cells             []Cell
		}
	}
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Groups) != 4 || len(rep.Pods) != 7 || len(rep.Blocks) != 16 || rep.Blocks[3].To != "c/Label/client" || rep.Blocks[3].Verdict != "mixed" || len(rep.Blocks[3].Cells) != 3 {
		t.Errorf("json: %s", out.String())
	}
}

// The namespace filter limits rows and columns, not the pods selectors match.
func TestNamespaceFilter(t *testing.T) {
	m, err := Compute(parse(t, base...), Options{Namespaces: []string{"a", "b"}, Compiler: agentOpts})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range m.Pods {
		if strings.HasPrefix(p.Key, "c/") {
			t.Errorf("pod %s of namespace c listed", p.Key)
		}
	}
	if v, _ := m.Verdict(ruleset.IPv4, Port{"TCP", 80}, "a/web-5f9c-1", "b/db-0"); v != Allowed {
		t.Errorf("web -> db: %s", v)
	}
}

// Pods from manifests never applied get synthetic addresses and node; workloads
// without pods get a stand-in; hostNetwork and ended pods are left out, and said so.
func TestSyntheticPodsAndWorkloads(t *testing.T) {
	objs := parse(t,
		`{apiVersion: v1, kind: Pod, metadata: {namespace: x, name: p1, labels: {app: p}}, spec: {containers: [{name: c, image: i, ports: [{containerPort: 8080, name: http}]}]}}`,
		`{apiVersion: v1, kind: Pod, metadata: {namespace: x, name: p2, labels: {app: p}}, spec: {containers: [{name: c, image: i}]}}`,
		`{apiVersion: v1, kind: Pod, metadata: {namespace: x, name: host}, spec: {hostNetwork: true, nodeName: n1, containers: [{name: c, image: i}]}}`,
		`{apiVersion: v1, kind: Pod, metadata: {namespace: x, name: done}, spec: {nodeName: n1, containers: [{name: c, image: i}]}, status: {phase: Succeeded, podIPs: [{ip: 198.18.0.1}]}}`,
		`{apiVersion: apps/v1, kind: Deployment, metadata: {namespace: "y", name: api},
		  spec: {selector: {matchLabels: {app: api}}, template: {metadata: {labels: {app: api}}, spec: {containers: [{name: c, image: i, ports: [{containerPort: 53, protocol: UDP}]}]}}}}`,
		`{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {namespace: "y", name: api},
		  spec: {podSelector: {matchLabels: {app: api}}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: p}}}], ports: [{port: 53, protocol: UDP}]}]}}`)
	m, err := Compute(objs, Options{Families: []ruleset.Family{ruleset.IPv4, ruleset.IPv6}, Compiler: agentOpts})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	addrs := map[string]bool{}
	for _, p := range m.Pods {
		keys = append(keys, p.Key)
		if !p.SyntheticIPs || !p.SyntheticNode || p.Node != SyntheticNode || len(p.IPs) != 2 {
			t.Errorf("pod %+v", p)
		}
		for _, a := range p.IPs {
			ip := netip.MustParseAddr(a)
			if addrs[a] || !(SyntheticV4.Contains(ip) || SyntheticV6.Contains(ip)) || a == "198.18.0.1" {
				t.Errorf("address %s of %s: taken twice, outside the ranges or another pod's", a, p.Key)
			}
			addrs[a] = true
		}
	}
	if want := []string{"x/p1", "x/p2", "y/deployment/api"}; !slices.Equal(keys, want) {
		t.Fatalf("pods %v, want %v", keys, want)
	}
	if len(m.Skipped) != 2 || m.Skipped[0].Pod != "x/done" || m.Skipped[1].Pod != "x/host" {
		t.Errorf("skipped %+v", m.Skipped)
	}
	if want := []Port{{"TCP", 8080}, {"UDP", 53}}; !slices.Equal(m.Ports, want) {
		t.Errorf("ports %v, want %v", m.Ports, want)
	}
	for _, f := range m.Families {
		if v, _ := m.Verdict(f, Port{"UDP", 53}, "x/p2", "y/deployment/api"); v != Allowed {
			t.Errorf("%s p2 -> api UDP/53: %s", familyName(f), v)
		}
		if v, _ := m.Verdict(f, Port{"TCP", 8080}, "x/p2", "y/deployment/api"); v != Denied {
			t.Errorf("%s p2 -> api TCP/8080: %s", familyName(f), v)
		}
	}
	if n := strings.Join(m.Notes(), "\n"); !strings.Contains(n, "Deployment y/api") || !strings.Contains(n, "198.18.0.0/15") || !strings.Contains(n, SyntheticNode) {
		t.Errorf("notes: %s", n)
	}
}

// changes lists a diff's changes as "from -> to: before -> after", sorted.
func changes(d *DiffReport) []string {
	var out []string
	for _, c := range d.Changes {
		out = append(out, fmt.Sprintf("%s -> %s: %s -> %s", c.From, c.To, c.Before, c.After))
	}
	sort.Strings(out)
	return out
}

// allPairs lists "from -> to: before -> after" for every pair of distinct pods.
func allPairs(froms, tos []string, before, after Verdict) []string {
	var out []string
	for _, f := range froms {
		for _, t := range tos {
			if f != t {
				out = append(out, fmt.Sprintf("%s -> %s: %s -> %s", f, t, before, after))
			}
		}
	}
	sort.Strings(out)
	return out
}

// The diff reports exactly the cells a policy edit changes.
func TestDiffExactCells(t *testing.T) {
	web := []string{"a/web-5f9c-1", "a/web-5f9c-2", "a/web-5f9c-3"}
	db := []string{"b/db-0", "b/db-1"}
	all := append(append(slices.Clone(web), db...), "b/lonely", "c/client")
	without := func(xs []string, drop ...string) []string {
		return slices.DeleteFunc(slices.Clone(xs), func(x string) bool { return slices.Contains(drop, x) })
	}
	cat := func(xss ...[]string) []string {
		var out []string
		for _, xs := range xss {
			out = append(out, xs...)
		}
		sort.Strings(out)
		return out
	}
	cases := []struct {
		name    string
		after   []string
		want    []string
		revoked int
	}{
		{"nothing changes", base, nil, 0},
		{"deny-all ingress in b", append(slices.Clone(base),
			`{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {namespace: b, name: deny-all}, spec: {podSelector: {}}}`),
			// lonely was reachable by everyone; db stays as it was (its own policy
			// already allowed only web).
			allPairs(without(all, "b/lonely"), []string{"b/lonely"}, Allowed, Denied), 6},
		{"widen db's rule to namespace c", append(slices.Clone(base[:len(base)-1]),
			`{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {namespace: b, name: db},
			  spec: {podSelector: {matchLabels: {app: db}}, ingress: [
			    {from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: a}}, podSelector: {matchLabels: {app: web}}}]},
			    {from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]}}`),
			allPairs([]string{"c/client"}, db, Denied, Allowed), 0},
		{"namespace label change", append(append([]string{base[0], base[1],
			`{apiVersion: v1, kind: Namespace, metadata: {name: c, labels: {team: red}}}`}, base[3:]...),
			`{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {namespace: b, name: blue},
			  spec: {podSelector: {matchLabels: {app: db}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]}}`),
			// Before: the blue policy did not exist, so compare with base + blue policy
			// below; here (label red) client loses nothing because it never had db.
			nil, 0},
		{"Admin ClusterNetworkPolicy denies a -> b", append(slices.Clone(base),
			`{apiVersion: policy.networking.k8s.io/v1beta1, kind: ClusterNetworkPolicy, metadata: {name: no-a},
			  spec: {tier: Admin, priority: 1, subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: b}}},
			    ingress: [{action: Deny, from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: a}}}]}]}}`),
			allPairs(web, append(slices.Clone(db), "b/lonely"), Allowed, Denied), 9},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, err := Diff(parse(t, base...), parse(t, c.after...), Options{Compiler: agentOpts})
			if err != nil {
				t.Fatal(err)
			}
			if got := changes(d); !slices.Equal(got, c.want) {
				t.Errorf("changes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(c.want, "\n"))
			}
			if d.Revoked != c.revoked || d.Compared != 7*7 {
				t.Errorf("revoked %d, compared %d; want %d, 49", d.Revoked, d.Compared, c.revoked)
			}
			for _, ch := range d.Changes {
				if !strings.Contains(ch.Explanation, map[Verdict]string{Allowed: "ALLOWED", Denied: "DENIED"}[ch.After]) {
					t.Errorf("%s -> %s: explanation is not the after side's:\n%s", ch.From, ch.To, ch.Explanation)
				}
			}
		})
	}

	// The namespace label: with the blue policy on both sides, relabelling c takes
	// client -> db away.
	blue := `{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {namespace: b, name: blue},
	  spec: {podSelector: {matchLabels: {app: db}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]}}`
	red := append(append([]string{base[0], base[1], `{apiVersion: v1, kind: Namespace, metadata: {name: c, labels: {team: red}}}`}, base[3:]...), blue)
	d, err := Diff(parse(t, append(slices.Clone(base), blue)...), parse(t, red...), Options{Compiler: agentOpts})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := changes(d), cat(allPairs([]string{"c/client"}, db, Allowed, Denied)); !slices.Equal(got, want) || d.Revoked != 2 {
		t.Errorf("relabel: changes %v, want %v", got, want)
	}
}

// A whole block that changes alike is printed as one line; pods of one side only are
// reported, not compared.
func TestDiffCollapsesAndReportsOneSidedPods(t *testing.T) {
	after := append(slices.DeleteFunc(slices.Clone(base), func(s string) bool { return strings.Contains(s, "name: client") }),
		pod("c", "new", "", "", "n1", "10.0.1.9", `{app: new}`),
		`{apiVersion: policy.networking.k8s.io/v1beta1, kind: ClusterNetworkPolicy, metadata: {name: no-a},
		  spec: {tier: Admin, priority: 1, subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: b}}},
		    ingress: [{action: Deny, from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: a}}}]}]}}`)
	d, err := Diff(parse(t, base...), parse(t, after...), Options{Compiler: agentOpts})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(d.OnlyBefore, []string{"c/client"}) || !slices.Equal(d.OnlyAfter, []string{"c/new"}) || d.Compared != 6*6 {
		t.Errorf("one-sided: before %v after %v compared %d", d.OnlyBefore, d.OnlyAfter, d.Compared)
	}
	var out bytes.Buffer
	if err := d.WriteText(&out); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"only before (removed, not compared): c/client", "only after (added, not compared): c/new",
		"- all pods of a/web -> all pods of b/db (6 pairs): allowed -> DENIED", "- all pods of a/web -> all pods of b/lonely (3 pairs): allowed -> DENIED",
		"9 of 36 cells changed: 9 newly denied"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("text lacks %q:\n%s", s, out.String())
		}
	}
}

// The HTML page names no URL at all and carries every cell's explanation.
func TestHTMLSelfContained(t *testing.T) {
	m, err := Compute(loadDir(t, "../render/testdata/demo"), Options{Compiler: agentOpts})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := m.WriteHTML(&out); err != nil {
		t.Fatal(err)
	}
	page := out.String()
	for _, bad := range []string{"://", "src=", "href=", "@import", "url("} {
		if strings.Contains(page, bad) {
			t.Errorf("page contains %q", bad)
		}
	}
	if n := strings.Count(page, "data-tip="); n != 16 {
		t.Errorf("%d cells with a tooltip, want 16", n)
	}
	if !strings.Contains(page, "isolated by app/backend-policy; DENIED: no rule of them allows it") {
		t.Errorf("page lacks the explanation of client -> backend")
	}
}

// A `kubectl get all` dump holds Deployments, their ReplicaSets and their pods: the
// pods are the rows, no stand-in is made for a workload that has pods or a controller
// of its own, and one scaled to zero is reported.
func TestWorkloadsWithTheirPods(t *testing.T) {
	objs := parse(t, append(slices.Clone(base),
		`{apiVersion: apps/v1, kind: Deployment, metadata: {namespace: a, name: web},
		  spec: {selector: {matchLabels: {app: web}}, template: {metadata: {labels: {app: web}}, spec: {containers: [{name: c, image: i}]}}}}`,
		`{apiVersion: apps/v1, kind: ReplicaSet, metadata: {namespace: a, name: web-5f9c, ownerReferences: [{apiVersion: apps/v1, kind: Deployment, name: web, uid: u, controller: true}]},
		  spec: {selector: {matchLabels: {app: web}}, template: {metadata: {labels: {app: web}}, spec: {containers: [{name: c, image: i}]}}}}`,
		`{apiVersion: apps/v1, kind: ReplicaSet, metadata: {namespace: a, name: web-0ld, ownerReferences: [{apiVersion: apps/v1, kind: Deployment, name: web, uid: u, controller: true}]},
		  spec: {replicas: 0, selector: {matchLabels: {app: web}}, template: {metadata: {labels: {app: web}}, spec: {containers: [{name: c, image: i}]}}}}`,
		`{apiVersion: apps/v1, kind: StatefulSet, metadata: {namespace: b, name: db},
		  spec: {selector: {matchLabels: {app: db}}, template: {metadata: {labels: {app: db}}, spec: {containers: [{name: c, image: i}]}}}}`,
		`{apiVersion: apps/v1, kind: Deployment, metadata: {namespace: b, name: idle},
		  spec: {replicas: 0, selector: {matchLabels: {app: idle}}, template: {metadata: {labels: {app: idle}}, spec: {containers: [{name: c, image: i}]}}}}`)...)
	m, err := Compute(objs, Options{Compiler: agentOpts})
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Pods) != 7 || len(m.Groups) != 4 {
		t.Errorf("%d pods in %d groups, want the 7 pods in 4 groups", len(m.Pods), len(m.Groups))
	}
	for _, p := range m.Pods {
		if p.Workload != "" || p.SyntheticIPs {
			t.Errorf("stand-in or synthetic pod %+v", p)
		}
	}
	if len(m.Skipped) != 1 || m.Skipped[0].Pod != "Deployment b/idle" {
		t.Errorf("skipped %+v", m.Skipped)
	}
}
