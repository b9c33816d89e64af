package explain

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/manifest"
	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
	"github.com/nftpolicy/nftpolicy/pkg/tracer"
)

var agentOpts = compiler.Options{Table: compiler.DefaultTable, Revocation: true}

func load(t *testing.T, dir string) *model.Snapshot {
	t.Helper()
	objs, err := manifest.Load([]string{"../render/testdata/" + dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return objs.Snapshot("")
}

func mustExplain(t *testing.T, snap *model.Snapshot, from, to, port string) *Explanation {
	t.Helper()
	proto, num, err := ParsePort(port)
	if err != nil {
		t.Fatal(err)
	}
	ex, err := Explain(snap, Request{From: from, To: to, Protocol: proto, Port: num}, agentOpts)
	if err != nil {
		t.Fatal(err)
	}
	return ex
}

// side is the expected reading of one side.
type side struct {
	judged, isolated, allowed bool
	policies                  []string
	allowedBy, deniedBy       string
}

func checkSide(t *testing.T, name string, got Side, want side) {
	t.Helper()
	if got.Judged != want.judged || got.Isolated != want.isolated || got.Allowed != want.allowed ||
		!slices.Equal(got.Policies, want.policies) || got.AllowedBy != want.allowedBy || got.DeniedBy != want.deniedBy {
		t.Errorf("%s: got %+v, want %+v", name, got, want)
	}
}

// The demo's scenario (README "The two commands"), whose answers are known: only the
// frontend reaches the backend, only the ingress controller reaches the frontend.
func TestExplainDemo(t *testing.T) {
	snap := load(t, "demo")
	notIsolated := side{judged: true, allowed: true}

	ex := mustExplain(t, snap, "app/frontend", "app/backend", "80/TCP")
	if !ex.Allowed {
		t.Fatalf("frontend -> backend denied:\n%s", ex.Format())
	}
	checkSide(t, "egress", ex.Egress, notIsolated)
	checkSide(t, "ingress", ex.Ingress, side{judged: true, isolated: true, allowed: true,
		policies: []string{"app/backend-policy"}, allowedBy: "app/backend-policy ingress rule 0"})
	if want := []tracer.Hop{{Node: "node1", Hook: ruleset.HookForward}, {Node: "node2", Hook: ruleset.HookForward}}; len(ex.Hops) != 2 ||
		ex.Hops[0].Hop != want[0] || ex.Hops[1].Hop != want[1] {
		t.Errorf("hops %+v, want %+v", ex.Hops, want)
	}
	if ex.From.Addr.String() != "10.244.1.2" || ex.To.Addr.String() != "10.244.2.3" {
		t.Errorf("addresses %s -> %s", ex.From.Addr, ex.To.Addr)
	}

	ex = mustExplain(t, snap, "other/client", "app/backend", "80")
	if ex.Allowed {
		t.Fatalf("client -> backend allowed:\n%s", ex.Format())
	}
	checkSide(t, "egress", ex.Egress, notIsolated)
	checkSide(t, "ingress", ex.Ingress, side{judged: true, isolated: true,
		policies: []string{"app/backend-policy"}, deniedBy: "drop: no rule of app/backend-policy allows it"})
	out := ex.Format()
	for _, s := range []string{"DENIED", "isolated by app/backend-policy; DENIED: no rule of them allows it (judged on node2)"} {
		if !strings.Contains(out, s) {
			t.Errorf("format lacks %q:\n%s", s, out)
		}
	}

	// By address, over IPv6: the address is the backend's, so the same answer.
	ex = mustExplain(t, snap, "ingress-nginx/ingress-nginx-controller", "fd00:10:244:1::2", "80/TCP")
	if !ex.Allowed || ex.To.Pod == nil || ex.To.Pod.Key() != "app/frontend" {
		t.Fatalf("ingress -> frontend by IPv6 address:\n%s", ex.Format())
	}
	checkSide(t, "ingress", ex.Ingress, side{judged: true, isolated: true, allowed: true,
		policies: []string{"app/frontend-from-ingress"}, allowedBy: "app/frontend-from-ingress ingress rule 0"})

	// The backend may not reach the frontend (same answer as the lab's matrix).
	if ex := mustExplain(t, snap, "app/backend", "app/frontend", "80/TCP"); ex.Allowed {
		t.Fatalf("backend -> frontend allowed:\n%s", ex.Format())
	}
}

// An Explainer compiles each node once and answers every pair as Explain does.
func TestExplainerReusesRulesets(t *testing.T) {
	snap := load(t, "demo")
	e := NewExplainer(snap, agentOpts)
	var keys []string
	for _, p := range snap.Pods {
		if p.Eligible() {
			keys = append(keys, p.Key())
		}
	}
	for _, from := range keys {
		for _, to := range keys {
			req := Request{From: from, To: to, Protocol: corev1.ProtocolTCP, Port: 80}
			got, err := e.Explain(req)
			if err != nil {
				t.Fatal(err)
			}
			want, err := Explain(snap, req, agentOpts)
			if err != nil {
				t.Fatal(err)
			}
			if got.Allowed != want.Allowed || got.Format() != want.Format() {
				t.Errorf("%s -> %s: Explainer says\n%s\nExplain says\n%s", from, to, got.Format(), want.Format())
			}
			if allowed, err := e.Allowed(req); err != nil || allowed != want.Allowed {
				t.Errorf("%s -> %s: Allowed %v (%v), Explain %v", from, to, allowed, err, want.Allowed)
			}
		}
	}
	nodes := map[string]bool{}
	for _, p := range snap.Pods {
		nodes[p.NodeName] = true
	}
	if len(e.nodes) != len(nodes) {
		t.Errorf("compiled %d rulesets for %d nodes", len(e.nodes), len(nodes))
	}
}

// A kubectl List with egress, ipBlock with except, named ports and a Succeeded pod.
func TestExplainKubectlList(t *testing.T) {
	snap := load(t, "kubectl-list")
	webIsolatedEg := []string{"shop/web"}
	cases := []struct {
		from, to, port string
		allowed        bool
		egress         side
		ingress        side
	}{
		{"shop/web-0", "shop/db-0", "5432/TCP", true,
			side{judged: true, isolated: true, allowed: true, policies: webIsolatedEg, allowedBy: "shop/web egress rule 0"},
			side{judged: true, isolated: true, allowed: true, policies: []string{"shop/db"}, allowedBy: "shop/db ingress rule 0"}},
		{"shop/web-0", "shop/db-0", "5433/TCP", false,
			side{judged: true, isolated: true, policies: webIsolatedEg, deniedBy: "drop: no rule of shop/web allows it"},
			side{judged: true, isolated: true, policies: []string{"shop/db"}, deniedBy: "drop: no rule of shop/db allows it"}},
		{"shop/web-0", "8.8.8.8", "444/TCP", true,
			side{judged: true, isolated: true, allowed: true, policies: webIsolatedEg, allowedBy: "shop/web egress rule 1"},
			side{}},
		// 10.1.0.99 belongs to a Succeeded pod, so it is an address like any other of 10/8.
		{"shop/web-0", "10.1.0.99", "443/TCP", false,
			side{judged: true, isolated: true, policies: webIsolatedEg, deniedBy: "drop: no rule of shop/web allows it"},
			side{}},
		{"monitoring/prometheus-0", "shop/web-0", "9100/TCP", true,
			side{judged: true, allowed: true},
			side{judged: true, isolated: true, allowed: true, policies: []string{"shop/web"}, allowedBy: "shop/web ingress rule 1"}},
		{"shop/db-0", "shop/web-0", "8080/TCP", true,
			side{judged: true, allowed: true},
			side{judged: true, isolated: true, allowed: true, policies: []string{"shop/web"}, allowedBy: "shop/web ingress rule 0"}},
		{"shop/db-0", "shop/web-0", "9100/TCP", false,
			side{judged: true, allowed: true},
			side{judged: true, isolated: true, policies: []string{"shop/web"}, deniedBy: "drop: no rule of shop/web allows it"}},
		{"monitoring/prometheus-0", "shop/web-0", "8080/UDP", false,
			side{judged: true, allowed: true},
			side{judged: true, isolated: true, policies: []string{"shop/web"}, deniedBy: "drop: no rule of shop/web allows it"}},
	}
	for _, c := range cases {
		t.Run(c.from+"->"+c.to+":"+c.port, func(t *testing.T) {
			ex := mustExplain(t, snap, c.from, c.to, c.port)
			if ex.Allowed != c.allowed {
				t.Fatalf("allowed %v, want %v:\n%s", ex.Allowed, c.allowed, ex.Format())
			}
			checkSide(t, "egress", ex.Egress, c.egress)
			checkSide(t, "ingress", ex.Ingress, c.ingress)
		})
	}
}

func TestExplainErrors(t *testing.T) {
	snap := load(t, "kubectl-list")
	for _, req := range []Request{
		{From: "shop/nope", To: "shop/db-0", Protocol: corev1.ProtocolTCP, Port: 1},
		{From: "shop/old-job", To: "shop/db-0", Protocol: corev1.ProtocolTCP, Port: 1},
		{From: "shop/web-0", To: "nope", Protocol: corev1.ProtocolTCP, Port: 1},
		{From: "shop/web-0", To: "fd00::1", Protocol: corev1.ProtocolTCP, Port: 1},
		{From: "shop/web-0", To: "shop/db-0", Protocol: "ICMP", Port: 1},
	} {
		if _, err := Explain(snap, req, agentOpts); err == nil {
			t.Errorf("%+v: no error", req)
		}
	}
	for _, p := range []string{"0", "x/TCP", "80/ICMP", "70000"} {
		if _, _, err := ParsePort(p); err == nil {
			t.Errorf("ParsePort(%q): no error", p)
		}
	}
	if proto, n, err := ParsePort("53/udp"); err != nil || proto != corev1.ProtocolUDP || n != 53 {
		t.Errorf("ParsePort(53/udp) = %v %v %v", proto, n, err)
	}
}

// CheckKernel on tables drifted by hand: the answer must name what differs.
func TestCheckKernel(t *testing.T) {
	snap := load(t, "demo")
	denied := mustExplain(t, snap, "other/client", "app/backend", "80/TCP")
	allowed := mustExplain(t, snap, "app/frontend", "app/backend", "80/TCP")
	node2 := denied.Hops[1].Ruleset

	if d := CheckKernel(denied, "node2", node2.Clone()); d == nil || len(d.Differences) != 0 || d.KernelAllowed {
		t.Fatalf("identical table: %+v", d)
	}
	if d := CheckKernel(denied, "node3", node2.Clone()); d != nil {
		t.Fatalf("a node that judges nothing: %+v", d)
	}

	// The backend's dispatch element removed: the kernel no longer isolates it.
	live := node2.Clone()
	m := live.Set(compiler.MapIngressV4)
	m.Elements = slices.DeleteFunc(slices.Clone(m.Elements), func(e ruleset.Element) bool {
		return strings.HasPrefix(ruleset.FormatElement(m, e), "10.244.2.3 ")
	})
	d := CheckKernel(denied, "node2", live)
	if d == nil || !d.KernelAllowed || !containsPrefix(d.Differences, "set ingress-pods-v4 lacks element 10.244.2.3 : jump isolate-in-") ||
		!containsPrefix(d.Differences, "the kernel's table accepts this packet; the compiled ruleset would drop it") {
		t.Fatalf("removed dispatch element: %+v", d)
	}
	if !strings.Contains(d.Format(), "DRIFT") {
		t.Errorf("format: %s", d.Format())
	}

	// The frontend's address removed from the peer set: the allowed pair is dropped.
	live = node2.Clone()
	for _, s := range live.Sets {
		if strings.HasPrefix(s.Name, "pods-") && strings.HasSuffix(s.Name, "-v4") {
			s.Elements = nil
		}
	}
	d = CheckKernel(allowed, "node2", live)
	if d == nil || d.KernelAllowed || !containsPrefix(d.Differences, "set pods-") {
		t.Fatalf("emptied peer set: %+v", d)
	}
	// An extra element makes a denied pair pass: reported as well.
	live = node2.Clone()
	for _, s := range live.Sets {
		if strings.HasPrefix(s.Name, "pods-") && strings.HasSuffix(s.Name, "-v4") {
			s.Elements = append(s.Elements, ruleset.Element{Key: []ruleset.Range{ruleset.Addr(denied.From.Addr)}})
			ruleset.SortElements(s.Elements)
		}
	}
	d = CheckKernel(denied, "node2", live)
	if d == nil || !d.KernelAllowed || !containsPrefix(d.Differences, "set pods-") {
		t.Fatalf("extra peer element: %+v", d)
	}
	// A rule added by hand and a missing table.
	live = node2.Clone()
	c := live.Chain(compiler.ChainIngressForward)
	c.Rules = append([]ruleset.Rule{{Verdict: ruleset.Accept}}, c.Rules...)
	if d = CheckKernel(denied, "node2", live); d == nil || !containsPrefix(d.Differences, "chain ingress-forward: rule 0 differs") {
		t.Fatalf("rule added by hand: %+v", d)
	}
	if d = CheckKernel(denied, "node2", nil); d == nil || !containsPrefix(d.Differences, "table inet nftpolicy does not exist") {
		t.Fatalf("missing table: %+v", d)
	}
}

func containsPrefix(ss []string, p string) bool {
	return slices.ContainsFunc(ss, func(s string) bool { return strings.HasPrefix(s, p) })
}

// Policies whose namespace and name are at the API's limits (63 and 253 characters),
// cut short in the ruleset's names and comments, are named whole: the isolating
// policies, the policy rule that allows, on both sides of a connection between nodes.
func TestExplainLongNames(t *testing.T) {
	ns, name := strings.Repeat("n", 63), strings.Repeat("p", 253)
	pod := func(ns, name, node, ip string) *model.Pod {
		return &model.Pod{Namespace: ns, Name: name, NodeName: node, Labels: map[string]string{"pod": name}, Phase: corev1.PodRunning,
			IPs: []netip.Addr{netip.MustParseAddr(ip)}}
	}
	all, other := metav1.LabelSelector{}, intstr.FromInt32(9999)
	snap := &model.Snapshot{
		Pods:       []*model.Pod{pod(ns, "a", "n1", "10.0.1.2"), pod(ns, "b", "n2", "10.0.2.2")},
		Namespaces: map[string]*model.Namespace{ns: {Name: ns}},
		Policies: []*networkingv1.NetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: all,
				Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{{Port: &other}}}, {From: []networkingv1.NetworkPolicyPeer{{PodSelector: &all}}}},
				Egress:  []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{PodSelector: &all}}}}}}},
	}
	ex := mustExplain(t, snap, ns+"/a", ns+"/b", "80")
	if !ex.Allowed {
		t.Fatalf("denied:\n%s", ex.Format())
	}
	key := ns + "/" + name
	checkSide(t, "egress", ex.Egress, side{judged: true, isolated: true, allowed: true, policies: []string{key}, allowedBy: key + " egress rule 0"})
	checkSide(t, "ingress", ex.Ingress, side{judged: true, isolated: true, allowed: true, policies: []string{key}, allowedBy: key + " ingress rule 1"})
}

// The demo with ClusterNetworkPolicies on top: an Admin deny overriding the backend's
// NetworkPolicy, a Pass handing over to it, and a Baseline default for the rest.
func TestExplainClusterTiers(t *testing.T) {
	snap := load(t, "demo")
	objs, err := manifest.Load([]string{"-"}, strings.NewReader(`
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: deny-metadata}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {}}
  egress:
  - {name: block-imds, action: Deny, to: [{networks: ["169.254.169.254/32"]}]}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: app-guard}
spec:
  tier: Admin
  priority: 20
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: app}}}
  ingress:
  - {name: frontend-to-np, action: Pass, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: frontend}}}}]}
  - {name: no-other, action: Deny, from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: other}}}]}
---
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: default-deny}
spec:
  tier: Baseline
  priority: 0
  subject: {namespaces: {}}
  ingress:
  - {action: Deny, from: [{namespaces: {}}]}
`))
	if err != nil {
		t.Fatal(err)
	}
	snap.ClusterPolicies = objs.ClusterPolicies

	ex := mustExplain(t, snap, "app/frontend", "169.254.169.254", "80")
	want := "DENIED by ClusterNetworkPolicy deny-metadata, rule block-imds, Admin tier, priority 10"
	if ex.Allowed || ex.Egress.Tier != "Admin" || !strings.Contains(ex.Format(), want) {
		t.Errorf("metadata: want %q:\n%s", want, ex.Format())
	}

	ex = mustExplain(t, snap, "other/client", "app/backend", "80")
	want = "DENIED by ClusterNetworkPolicy app-guard, rule no-other, Admin tier, priority 20"
	if ex.Allowed || ex.Ingress.Tier != "Admin" || !strings.Contains(ex.Format(), want) {
		t.Errorf("client -> backend: want %q:\n%s", want, ex.Format())
	}

	ex = mustExplain(t, snap, "app/frontend", "app/backend", "80")
	if !ex.Allowed || ex.Ingress.Tier != "NetworkPolicy" || ex.Ingress.AllowedBy != "app/backend-policy ingress rule 0" ||
		!strings.Contains(ex.Ingress.Passed, "rule frontend-to-np") {
		t.Errorf("frontend -> backend: passed to the NetworkPolicy, which allows:\n%s", ex.Format())
	}

	// ingress-nginx is not isolated by any NetworkPolicy: the Baseline default denies.
	ex = mustExplain(t, snap, "app/frontend", "ingress-nginx/ingress-nginx-controller", "80")
	if ex.Allowed || ex.Ingress.Tier != "Baseline" || !strings.Contains(ex.Format(), "DENIED by ClusterNetworkPolicy default-deny, ingress rule 0, Baseline tier, priority 0") {
		t.Errorf("frontend -> ingress controller: want the baseline deny:\n%s", ex.Format())
	}
}

// TestExplainAudit: policies in audit mode do not change the verdict explain gives (the
// enforced one), and each side says what they would change.
func TestExplainAudit(t *testing.T) {
	snap := load(t, "demo")
	objs, err := manifest.Load([]string{"-"}, strings.NewReader(`
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: other, annotations: {nftpolicy.io/mode: audit}}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: backend-from-other, namespace: app, annotations: {nftpolicy.io/mode: audit}}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: other}}}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	snap.Policies = append(snap.Policies, objs.Policies...)

	// other/client's egress: the audited deny-all would deny; enforced, nothing isolates.
	ex := mustExplain(t, snap, "other/client", "app/frontend", "80")
	if ex.Allowed || ex.Egress.Audit != "other/deny-all would deny it" || !ex.Egress.Allowed || ex.Egress.Isolated {
		t.Errorf("client -> frontend: want egress allowed with the audit note, ingress denied by the enforced policy:\n%s", ex.Format())
	}
	// client -> backend: the audited backend-from-other would allow what backend-policy denies.
	ex = mustExplain(t, snap, "other/client", "app/backend", "80")
	if ex.Allowed || ex.Ingress.Audit != "app/backend-from-other would allow it" || ex.Ingress.Allowed ||
		!slices.Equal(ex.Ingress.Policies, []string{"app/backend-policy"}) {
		t.Errorf("client -> backend: want denied by backend-policy, audit would allow:\n%s", ex.Format())
	}
	if !strings.Contains(ex.Format(), "audit: other/deny-all would deny it (not enforced)") ||
		!strings.Contains(ex.Format(), "audit: app/backend-from-other would allow it (not enforced)") {
		t.Errorf("format:\n%s", ex.Format())
	}
	// frontend -> backend: allowed by the enforced rule; the audited policy agrees.
	ex = mustExplain(t, snap, "app/frontend", "app/backend", "80")
	if !ex.Allowed || ex.Ingress.Audit != "" || ex.Ingress.AllowedBy != "app/backend-policy ingress rule 0" {
		t.Errorf("frontend -> backend:\n%s", ex.Format())
	}
}
