package metrics

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/explain"
	"github.com/nftpolicy/nftpolicy/pkg/manifest"
	"github.com/nftpolicy/nftpolicy/test/bench"
	"github.com/nftpolicy/nftpolicy/test/lab"
)

// Names of the audit metrics.
const (
	auditDenied  = "nftpolicy_policy_audit_denied_packets_total"
	auditAllowed = "nftpolicy_policy_audit_allowed_packets_total"
)

// agentOptions are the lab agents' compiler options as explain needs them (the lab
// runs the agent with its default --revoke-established).
var agentOptions = compiler.Options{Table: compiler.DefaultTable, Revocation: true}

// clusterObjects reads what the agents read — Namespaces, Pods, NetworkPolicies, and
// ClusterNetworkPolicies and Nodes once the CRD is served — for explain.
func clusterObjects(ctx context.Context, t *testing.T, c *lab.Cluster) *manifest.Objects {
	t.Helper()
	objs, err := c.Objects(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// enforcedAsIf returns the objects with the audit annotation removed from the
// policies named (all when none is): what the cluster would be with them enforced.
func enforcedAsIf(objs *manifest.Objects, names ...string) *manifest.Objects {
	out := *objs
	out.Policies = nil
	for _, np := range objs.Policies {
		if len(names) == 0 || slices.Contains(names, np.Name) {
			np = np.DeepCopy()
			delete(np.Annotations, compiler.AuditAnnotation)
		}
		out.Policies = append(out.Policies, np)
	}
	out.ClusterPolicies = nil
	for _, p := range objs.ClusterPolicies {
		if len(names) == 0 || slices.Contains(names, p.Name) {
			p = p.DeepCopy()
			delete(p.Annotations, compiler.AuditAnnotation)
		}
		out.ClusterPolicies = append(out.ClusterPolicies, p)
	}
	return &out
}

// allowed asks explain (the compiler and the tracer, no kernel) whether from may
// reach to on proto/port over objs.
func allowed(t *testing.T, objs *manifest.Objects, from, to *lab.ClusterPod, proto corev1.Protocol, port int) *explain.Explanation {
	t.Helper()
	ex, err := explain.Explain(objs.Snapshot(""), explain.Request{From: from.Key(), To: to.Key(), Protocol: proto, Port: uint16(port)}, agentOptions)
	if err != nil {
		t.Fatalf("explain %s -> %s %s/%d: %v", from, to, proto, port, err)
	}
	return ex
}

// logLines returns the JSON log lines of a node's agent whose msg is msg.
func logLines(c *lab.Cluster, node, msg string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(c.AgentLog(node), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// auditSeries returns the audit metrics of a scrape as Prometheus text lines, for the
// test log.
func auditSeries(m bench.Metrics) string {
	var lines []string
	for _, s := range m {
		if !strings.Contains(s.Name, "audit") {
			continue
		}
		var ls []string
		for k, v := range s.Labels {
			ls = append(ls, fmt.Sprintf("%s=%q", k, v))
		}
		slices.Sort(ls)
		lines = append(lines, fmt.Sprintf("%s{%s} %v", s.Name, strings.Join(ls, ","), s.Value))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// jsonText is v in JSON (a value decoded from a log line).
func jsonText(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("encoding %v: %v", v, err)
	}
	return string(b)
}

// awaitSeries scrapes s until ready accepts a scrape and returns that scrape.
func awaitSeries(ctx context.Context, t *testing.T, c *lab.Cluster, s *scraper, node, what string, ready func(bench.Metrics) bool) bench.Metrics {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		m, err := s.scrape(ctx)
		if err == nil && ready(m) {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not seen on %s (last scrape error %v); agent log:\n%s", what, node, err, c.AgentLog(node))
		}
		time.Sleep(100 * time.Millisecond) // polling a scrape: no event to wait on
	}
}

// TestAuditedPolicy: a deny-all NetworkPolicy in audit mode on a pod busy with
// clients on both nodes, over TCP and UDP, next to an audited policy that lets the
// "friend" clients in. Nothing is dropped; the deny-all's audit-denied counter rises
// by exactly the number of connections explain says the two policies would deny if
// enforced, and the log has one "would deny" line for each, naming both pods, the
// port and the policies. Once the deny-all's annotation is removed it is enforced:
// every client is denied, an established flow is revoked, and the friends'
// connections, which the still-audited policy would allow, are counted as such.
func TestAuditedPolicy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := startLab(ctx, t)
	pod := func(name, node, role string, ports ...int32) *lab.ClusterPod {
		p, err := c.CreatePod(ctx, lab.PodSpec{Namespace: ns, Name: name, Node: node,
			Labels: map[string]string{"role": role}, Ports: lab.TCPUDPPorts(ports...)})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	server := pod("server", "node2", "server", port)
	clients := []*lab.ClusterPod{
		pod("friend-far", "node1", "friend"), pod("stranger-far", "node1", "stranger"),
		pod("friend-near", "node2", "friend"), pod("stranger-near", "node2", "stranger"),
	}
	audit := map[string]string{compiler.AuditAnnotation: compiler.ModeAudit}
	serverSel := metav1.LabelSelector{MatchLabels: map[string]string{"role": "server"}}
	denyAll := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "deny-all", Annotations: audit},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: serverSel, PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
	friends := ingressFrom("allow-friends", map[string]string{"role": "server"}, map[string]string{"role": "friend"})
	friends.Annotations = audit
	// An established UDP flow from a stranger, opened before the policies: revoked
	// once the deny-all is enforced.
	flow := openFlow(ctx, t, clients[1], server)
	for _, np := range []*networkingv1.NetworkPolicy{denyAll, friends} {
		if err := c.Client().Create(ctx, np); err != nil {
			t.Fatalf("create %s: %v", np.Name, err)
		}
	}

	s := newScraper(t, c.Node("node2"))
	denied := func(policy string) map[string]string {
		return map[string]string{"namespace": ns, "policy": policy, "direction": "ingress"}
	}
	// Applied once node2's agent has the audit chain of both policies in its kernel
	// (one of the deny-all alone is a state in between).
	before := awaitSeries(ctx, t, c, s, "node2", "the audit series of both policies", func(m bench.Metrics) bool {
		_, d := value(m, auditDenied, denied("deny-all"))
		_, f := value(m, auditDenied, denied("allow-friends"))
		return d && f
	})
	if v, ok := value(before, "nftpolicy_policies", nil); !ok || v != 0 {
		t.Errorf("nftpolicy_policies = %v (present %v): audited policies are not in force", v, ok)
	}

	// The expected count, from the objects the agents see: a connection counts when the
	// policies, enforced as if unannotated, deny it, and passes as they are.
	objs := clusterObjects(ctx, t, c)
	asIf := enforcedAsIf(objs)
	const probesPerProto = 3
	type conn struct {
		from  *lab.ClusterPod
		proto corev1.Protocol
	}
	wouldDeny := map[conn]bool{}
	want := 0
	for _, from := range clients {
		for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
			if ex := allowed(t, objs, from, server, proto, port); !ex.Allowed {
				t.Fatalf("explain: %s -> server %s denied with the policies audited:\n%s", from, proto, ex.Format())
			}
			if !allowed(t, asIf, from, server, proto, port).Allowed {
				wouldDeny[conn{from, proto}] = true
				want += probesPerProto
			}
		}
	}
	// The friends would be allowed: only the strangers count (a check of the test).
	if len(wouldDeny) != 4 {
		t.Fatalf("explain says %d of 8 (client, protocol) pairs would be denied, want the strangers' 4", len(wouldDeny))
	}
	// Within the log rule's burst (20), so that every would-be denial is logged.
	if want > int(compiler.DefaultLogBurst) {
		t.Fatalf("%d would-be denials exceed the log burst %d", want, compiler.DefaultLogBurst)
	}
	for _, from := range clients {
		for _, proto := range []string{"tcp", "udp"} {
			for range probesPerProto {
				if r, err := c.Probe(ctx, from, server.AddrPort(lab.IPv4, port), proto, 5*time.Second); err != nil || !r.OK {
					t.Fatalf("%s -> server %s: %+v, %v; audit mode must drop nothing", from, proto, r, err)
				}
			}
		}
	}
	after := s.mustScrape(ctx)
	t.Logf("node2 after the probes:\n%s", auditSeries(after))
	delta := func(a, b bench.Metrics, name string, labels map[string]string) float64 {
		va, _ := value(a, name, labels)
		vb, _ := value(b, name, labels)
		return vb - va
	}
	for _, p := range []string{"deny-all", "allow-friends"} {
		if d := delta(before, after, auditDenied, denied(p)); d != float64(want) {
			t.Errorf("%s{policy=%q} rose by %v, want %d (the connections explain says the policies would deny)", auditDenied, p, d, want)
		}
	}
	if d := delta(before, after, "nftpolicy_policy_dropped_packets_total", denied("deny-all")); d != 0 {
		t.Errorf("drops of deny-all rose by %v in audit mode", d)
	}

	// One "would deny" line per counted connection, naming the pods, port and policies.
	var lines []map[string]any
	for deadline := time.Now().Add(30 * time.Second); ; {
		if lines = logLines(c, "node2", "would deny"); len(lines) >= want || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // polling a log file: no event to wait on
	}
	perConn := map[string]int{}
	for _, l := range lines {
		pols := jsonText(t, l["policies"])
		if l["dst"] != server.Key() || l["port"] != float64(port) || l["direction"] != "ingress" ||
			pols != fmt.Sprintf(`["%s/allow-friends","%s/deny-all"]`, ns, ns) {
			t.Errorf("unexpected would-deny line %v", l)
		}
		perConn[fmt.Sprintf("%v %v", l["src"], l["proto"])]++
	}
	for cn := range wouldDeny {
		k := fmt.Sprintf("%s %s", cn.from.Key(), strings.ToLower(string(cn.proto)))
		if perConn[k] != probesPerProto {
			t.Errorf("%d would-deny lines for %s, want %d", perConn[k], k, probesPerProto)
		}
	}
	if len(lines) != want {
		t.Errorf("%d would-deny lines, want %d", len(lines), want)
	}
	if len(lines) > 0 {
		t.Logf("a would-deny line: %s", jsonText(t, lines[0]))
	}
	t.Logf("%s{policy=deny-all} %v -> %v", auditDenied, valueOr(before, auditDenied, denied("deny-all")), valueOr(after, auditDenied, denied("deny-all")))

	// Enforce the deny-all: the annotation removed in one patch.
	patch := []byte(`{"metadata":{"annotations":{"` + compiler.AuditAnnotation + `":null}}}`)
	if err := c.Client().Patch(ctx, denyAll, client.RawPatch(types.MergePatchType, patch)); err != nil {
		t.Fatal(err)
	}
	objs = clusterObjects(ctx, t, c)
	wantM := lab.NewMatrix(lab.PodKeys(clients), []string{server.Key()}, true)
	for _, from := range clients {
		wantM.Set(from.Key(), server.Key(), allowed(t, objs, from, server, corev1.ProtocolTCP, port).Allowed)
	}
	if want := lab.NewMatrix(lab.PodKeys(clients), []string{server.Key()}, false); !wantM.Equal(want) {
		t.Fatalf("explain with deny-all enforced:\n%s\nwant every client denied", wantM)
	}
	var got *lab.Matrix
	for deadline := time.Now().Add(20 * time.Second); ; {
		var err error
		got, err = c.ProbeMatrix(ctx, clients, []*lab.ClusterPod{server}, lab.PodTarget(lab.IPv4, port), "tcp", lab.ProbeOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if lab.Diff(wantM, got) == "" || time.Now().After(deadline) {
			break
		}
	}
	if d := lab.Diff(wantM, got); d != "" {
		t.Fatalf("deny-all enforced: %s\nagent log:\n%s", d, c.AgentLog("node2"))
	}
	if !flow.revoked(t, 10*time.Second) {
		t.Errorf("the stranger's established UDP flow still gets answers with deny-all enforced")
	}
	// allow-friends is still audited: the friends' denied connections (one per probe
	// above) are what it would allow.
	enforced := s.mustScrape(ctx)
	t.Logf("node2 with deny-all enforced:\n%s", auditSeries(enforced))
	if v, ok := value(enforced, "nftpolicy_policies", nil); !ok || v != 1 {
		t.Errorf("nftpolicy_policies = %v (present %v), want 1 (deny-all)", v, ok)
	}
	if v, ok := value(enforced, auditAllowed, denied("allow-friends")); !ok || v < 2 {
		t.Errorf("%s{policy=allow-friends} = %v (present %v), want at least the 2 friends' probes", auditAllowed, v, ok)
	}
	t.Logf("after enforcing deny-all: %s{policy=allow-friends} = %v, dropped{deny-all} = %v", auditAllowed,
		valueOr(enforced, auditAllowed, denied("allow-friends")), valueOr(enforced, "nftpolicy_policy_dropped_packets_total", denied("deny-all")))
}

func valueOr(m bench.Metrics, name string, labels map[string]string) float64 {
	v, _ := value(m, name, labels)
	return v
}

// udpFlow is an established UDP flow: one socket from a client to a pod's server,
// which echoes every datagram.
type udpFlow struct {
	conn net.Conn
}

// openFlow opens the flow and checks that it is answered.
func openFlow(ctx context.Context, t *testing.T, from, to *lab.ClusterPod) *udpFlow {
	t.Helper()
	conn, err := from.NS.DialContext(ctx, "udp", to.AddrPort(lab.IPv4, port).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	f := &udpFlow{conn: conn}
	if !f.answered(time.Second) {
		t.Fatalf("UDP flow %s -> %s: no answer", from, to)
	}
	return f
}

// answered sends one datagram and reports whether an answer came back within wait.
func (f *udpFlow) answered(wait time.Duration) bool {
	if _, err := f.conn.Write([]byte("ping")); err != nil {
		return false
	}
	if err := f.conn.SetReadDeadline(time.Now().Add(wait)); err != nil {
		return false
	}
	buf := make([]byte, 512)
	_, err := f.conn.Read(buf)
	return err == nil
}

// revoked waits up to timeout for the flow to stop being answered.
func (f *udpFlow) revoked(t *testing.T, timeout time.Duration) bool {
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); {
		if !f.answered(200 * time.Millisecond) {
			return true
		}
	}
	return false
}

// TestAuditNode: agents started with --audit on a node with deny policies — a
// deny-all ingress, an egress deny-all and an Admin-tier ClusterNetworkPolicy Deny —
// drop nothing of the full matrix; every would-be drop, per direction, as explain
// computes it without --audit, is counted exactly once; /readyz is ready and says the
// node is in audit mode; nftpolicy_audit_mode is 1; the start-up log says so.
func TestAuditNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := startLab(ctx, t, "--audit", "--cluster-policy-check-period", "1s")
	var pods []*lab.ClusterPod
	for _, s := range []struct{ name, node, app string }{{"a1", "node1", "a"}, {"a2", "node2", "a"}, {"b1", "node1", "b"}, {"b2", "node2", "b"}} {
		p, err := c.CreatePod(ctx, lab.PodSpec{Namespace: ns, Name: s.name, Node: s.node,
			Labels: map[string]string{"app": s.app, "name": s.name}, Ports: lab.TCPUDPPorts(port)})
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
	}
	if err := c.InstallCNPCRD(ctx, "standard"); err != nil {
		t.Fatal(err)
	}
	sel := func(k, v string) metav1.LabelSelector {
		return metav1.LabelSelector{MatchLabels: map[string]string{k: v}}
	}
	// Each pod is isolated by at most one policy per direction, so that the counters'
	// sum is the number of would-be drops (a drop counts for every isolating policy).
	objects := []client.Object{
		&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "deny-all"},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: sel("app", "a"), PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}},
		&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "no-egress"},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: sel("name", "b2"), PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}}},
		&cnp.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "guard"}, Spec: cnp.ClusterNetworkPolicySpec{
			Tier: cnp.AdminTier, Priority: 5,
			Subject: cnp.ClusterNetworkPolicySubject{Pods: &cnp.NamespacedPod{PodSelector: sel("app", "b")}},
			Ingress: []cnp.ClusterNetworkPolicyIngressRule{{Name: "no-a", Action: cnp.ClusterNetworkPolicyRuleActionDeny,
				From: []cnp.ClusterNetworkPolicyIngressPeer{{Pods: &cnp.NamespacedPod{PodSelector: sel("app", "a")}}}}},
		}},
	}
	for _, o := range objects {
		if err := c.Client().Create(ctx, o); err != nil {
			t.Fatalf("create %s: %v", o.GetName(), err)
		}
	}
	type series struct{ namespace, policy, dir string }
	labelsOf := func(s series) map[string]string {
		return map[string]string{"namespace": s.namespace, "policy": s.policy, "direction": s.dir}
	}
	// Applied once the agents expose the audit series of every policy they judge with:
	// deny-all and guard on both nodes, no-egress on node2.
	expected := map[string][]series{
		"node1": {{ns, "deny-all", "ingress"}, {"", "guard", "ingress"}},
		"node2": {{ns, "deny-all", "ingress"}, {"", "guard", "ingress"}, {ns, "no-egress", "egress"}},
	}
	scrapers := map[string]*scraper{}
	before := map[string]bench.Metrics{}
	for node, ss := range expected {
		scrapers[node] = newScraper(t, c.Node(node))
		before[node] = awaitSeries(ctx, t, c, scrapers[node], node, "the audit series", func(m bench.Metrics) bool {
			for _, s := range ss {
				if _, ok := value(m, auditDenied, labelsOf(s)); !ok {
					return false
				}
			}
			return true
		})
		if v, ok := value(before[node], "nftpolicy_audit_mode", nil); !ok || v != 1 {
			t.Errorf("%s: nftpolicy_audit_mode = %v (present %v), want 1", node, v, ok)
		}
	}

	// Expected: per direction, the connections the policies deny on that side, each
	// side asked of explain over the objects of that direction only (with both, a
	// connection the source's egress denies never reaches the destination's ingress
	// judgement, which --audit makes all the same).
	objs := clusterObjects(ctx, t, c)
	only := func(dir networkingv1.PolicyType) *manifest.Objects {
		out := *objs
		out.Policies, out.ClusterPolicies = nil, nil
		for _, np := range objs.Policies {
			if slices.Contains(np.Spec.PolicyTypes, dir) {
				out.Policies = append(out.Policies, np)
			}
		}
		for _, p := range objs.ClusterPolicies {
			if (dir == networkingv1.PolicyTypeIngress) == (len(p.Spec.Ingress) > 0) {
				out.ClusterPolicies = append(out.ClusterPolicies, p)
			}
		}
		return &out
	}
	want := map[string]int{}
	wantDenied := lab.NewMatrix(lab.PodKeys(pods), lab.PodKeys(pods), true).AllowSelf()
	for _, dir := range []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress} {
		o := only(dir)
		for _, from := range pods {
			for _, to := range pods {
				if from != to && !allowed(t, o, from, to, corev1.ProtocolTCP, port).Allowed {
					want[strings.ToLower(string(dir))]++
					wantDenied.Deny(from.Key(), to.Key())
				}
			}
		}
	}
	// And the whole: what explain says the node would enforce without --audit.
	for _, from := range pods {
		for _, to := range pods {
			if from != to {
				if a, _ := wantDenied.Get(from.Key(), to.Key()); a != allowed(t, objs, from, to, corev1.ProtocolTCP, port).Allowed {
					t.Fatalf("explain %s -> %s: per-direction verdicts disagree with the whole", from, to)
				}
			}
		}
	}
	t.Logf("without --audit (explain):\n%s", wantDenied)
	if want["ingress"] == 0 || want["egress"] == 0 {
		t.Fatalf("would-be drops %v: the test needs both directions", want)
	}

	got, err := c.ProbeMatrix(ctx, pods, pods, lab.PodTarget(lab.IPv4, port), "tcp", lab.ProbeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d := lab.Diff(lab.NewMatrix(lab.PodKeys(pods), lab.PodKeys(pods), true), got); d != "" {
		t.Fatalf("--audit dropped: %s", d)
	}
	sum := map[string]float64{}
	for node, ss := range expected {
		after := scrapers[node].mustScrape(ctx)
		t.Logf("%s after the matrix:\n%s", node, auditSeries(after))
		for _, s := range ss {
			d := valueOr(after, auditDenied, labelsOf(s)) - valueOr(before[node], auditDenied, labelsOf(s))
			sum[s.dir] += d
			t.Logf("%s: %s%v +%v", node, auditDenied, labelsOf(s), d)
		}
		for _, name := range []string{"nftpolicy_policy_dropped_packets_total", "nftpolicy_cluster_policy_rule_packets_total"} {
			for _, sm := range after {
				if sm.Name == name && sm.Value != 0 {
					t.Errorf("%s: %s%v = %v under --audit", node, name, sm.Labels, sm.Value)
				}
			}
		}
	}
	for _, dir := range []string{"ingress", "egress"} {
		if sum[dir] != float64(want[dir]) {
			t.Errorf("%s audit-denied counters rose by %v, want %d (explain's would-be drops)", dir, sum[dir], want[dir])
		}
	}

	// --log-denied: one "would deny" line per counted drop, the ClusterNetworkPolicy's
	// naming it.
	total := want["ingress"] + want["egress"]
	if total > 2*int(compiler.DefaultLogBurst) {
		t.Fatalf("%d would-be drops exceed the log bursts", total)
	}
	var lines []map[string]any
	for deadline := time.Now().Add(30 * time.Second); ; {
		lines = append(logLines(c, "node1", "would deny"), logLines(c, "node2", "would deny")...)
		if len(lines) >= total || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // polling log files: no event to wait on
	}
	byPolicy := map[string]int{}
	for _, l := range lines {
		k := fmt.Sprintf("%v %s", l["direction"], jsonText(t, l["policies"]))
		if byPolicy[k] == 0 {
			t.Logf("a would-deny line: %s", jsonText(t, l))
		}
		byPolicy[k]++
	}
	wantLines := map[string]int{}
	for node, ss := range expected {
		after := scrapers[node].mustScrape(ctx)
		for _, s := range ss {
			ref := s.namespace + "/" + s.policy
			if s.namespace == "" {
				ref = "ClusterNetworkPolicy/" + s.policy
			}
			wantLines[fmt.Sprintf("%s [%q]", s.dir, ref)] += int(valueOr(after, auditDenied, labelsOf(s)) - valueOr(before[node], auditDenied, labelsOf(s)))
		}
	}
	if fmt.Sprint(byPolicy) != fmt.Sprint(wantLines) {
		t.Errorf("would-deny lines by direction and policies %v, want %v (the counters)", byPolicy, wantLines)
	}

	// /readyz: ready, and saying that the node is not enforcing.
	for _, n := range c.Nodes() {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+lab.AgentHealthAddr+"/readyz", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := n.NS.HTTPClient(5 * time.Second).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "AUDIT MODE") {
			t.Errorf("%s /readyz: %s %q, want 200 saying AUDIT MODE", n.Name, resp.Status, body)
		}
		t.Logf("%s /readyz: %s %q", n.Name, resp.Status, body)
		var loud string
		for _, line := range strings.Split(c.AgentLog(n.Name), "\n") {
			if strings.Contains(line, "AUDIT MODE") {
				loud = line
			}
		}
		if loud == "" {
			t.Errorf("%s: no AUDIT MODE line in the agent log", n.Name)
		} else {
			t.Logf("%s: %s", n.Name, loud)
		}
	}
}
