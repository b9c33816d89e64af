package bench

import (
	"fmt"
	"maps"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/explain"
	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

var agentOpts = compiler.Options{Table: compiler.DefaultTable, Revocation: true}

// benchSnapshot is the cluster the lab holds at scale s with the ClusterNetworkPolicy
// load of p: the bench namespace and pods (lab addresses), the synthetic namespaces,
// pods and policies, the bench policies and the load.
func benchSnapshot(s Scale, p Profile) *model.Snapshot {
	snap := &model.Snapshot{Namespaces: map[string]*model.Namespace{
		benchNS: {Name: benchNS, Labels: map[string]string{"purpose": "bench", "kubernetes.io/metadata.name": benchNS}},
	}}
	for i := range synNamespaceCount(s) {
		ns := synNamespaceObject(i)
		labels := maps.Clone(ns.Labels)
		labels["kubernetes.io/metadata.name"] = ns.Name
		snap.Namespaces[ns.Name] = &model.Namespace{Name: ns.Name, Labels: labels}
	}
	host := map[string]int{}
	for _, bp := range benchPods {
		subnet := map[string]int{"node1": 1, "node2": 2}[bp.node]
		host[bp.node]++
		ip := netip.MustParseAddr(fmt.Sprintf("10.244.%d.%d", subnet, 10+host[bp.node]))
		snap.Pods = append(snap.Pods, modelPod(podObject(benchNS, bp.name, bp.node, maps.Clone(bp.labels), ip)))
	}
	for i := range s.Pods {
		snap.Pods = append(snap.Pods, modelPod(podObject(synNamespace(i/synPodsPerNS), fmt.Sprintf("p-%d", i), synNode(i), synPodLabels(i), addrPlus(synPodBase, i))))
	}
	snap.Policies = benchPolicies()
	for i := range s.Policies {
		snap.Policies = append(snap.Policies, synPolicy(i))
	}
	snap.ClusterPolicies = cnpPolicies(p)
	return snap
}

func modelPod(p *corev1.Pod, st corev1.PodStatus) *model.Pod {
	p.Status = st
	return model.PodFromAPI(p)
}

func explainFlow(t *testing.T, snap *model.Snapshot, from, to string) *explain.Explanation {
	t.Helper()
	ex, err := explain.Explain(snap, explain.Request{From: benchNS + "/" + from, To: benchNS + "/" + to, Protocol: corev1.ProtocolTCP, Port: sinkPort}, agentOpts)
	if err != nil {
		t.Fatal(err)
	}
	for _, pr := range ex.Problems {
		t.Errorf("%s → %s: compiler problem: %v", from, to, pr)
	}
	return ex
}

// hopText is the nft listing of the ruleset of the hop on node.
func hopText(t *testing.T, ex *explain.Explanation, node string) string {
	t.Helper()
	for _, h := range ex.Hops {
		if h.Node == node {
			return ruleset.Render(h.Ruleset)
		}
	}
	t.Fatalf("no hop on %s", node)
	return ""
}

// TestCNPLoad checks the ClusterNetworkPolicy load against the compiler the agent
// uses: valid, the client → server flow walks every bench Admin policy's rules to the
// last one's Pass and is allowed by its NetworkPolicies, client2 → server2 meets no
// ClusterNetworkPolicy, and each change of the enforcement experiment denies the flow.
func TestCNPLoad(t *testing.T) {
	for _, p := range []Profile{FullProfile(), TinyProfile()} {
		t.Run(p.Name, func(t *testing.T) { testCNPLoad(t, p) })
	}
}

func testCNPLoad(t *testing.T, p Profile) {
	objs := cnpPolicies(p)
	if len(objs) != p.CNPAdmin+p.CNPBaseline {
		t.Fatalf("%d policies, want %d", len(objs), p.CNPAdmin+p.CNPBaseline)
	}
	prios := map[string]bool{}
	bench := 0
	for _, o := range objs {
		if pr := compiler.ValidateCluster(o, agentOpts); len(pr) > 0 {
			t.Errorf("%s: %v", o.Name, pr)
		}
		key := fmt.Sprintf("%s/%d", o.Spec.Tier, o.Spec.Priority)
		if prios[key] || o.Spec.Priority < 1 || o.Spec.Priority > 1000 {
			t.Errorf("%s: priority %s taken or out of range", o.Name, key)
		}
		prios[key] = true
		if len(o.Spec.Ingress) != cnpRulesPerDirection || len(o.Spec.Egress) != cnpRulesPerDirection {
			t.Errorf("%s: %d ingress and %d egress rules", o.Name, len(o.Spec.Ingress), len(o.Spec.Egress))
		}
		if strings.HasPrefix(o.Name, "bench-admin-") {
			bench++
		}
	}
	if bench != p.cnpBench() || bench != 5 {
		t.Errorf("%d bench policies, want %d", bench, p.cnpBench())
	}

	snap := benchSnapshot(Scale{Pods: 400, Policies: 40}, p)
	ex := explainFlow(t, snap, "client", "server")
	if !ex.Allowed || ex.Egress.Tier != "NetworkPolicy" || ex.Ingress.Tier != "NetworkPolicy" ||
		!strings.Contains(ex.Egress.Passed, benchAdminName(4)+", rule pass-server") || !strings.Contains(ex.Ingress.Passed, benchAdminName(4)+", rule pass-client") ||
		ex.Egress.AllowedBy != "bench/client-egress egress rule 0" || ex.Ingress.AllowedBy != "bench/server-allow ingress rule 0" {
		t.Fatalf("client → server: want passed by %s to the NetworkPolicies, which allow:\n%s", benchAdminName(4), ex.Format())
	}
	// The table text as the agent's tables are checked (checkCNPTable): the Pass comes
	// after every rule of the five policies.
	for _, node := range []string{"node1", "node2"} {
		n, err := checkCNPTable(hopText(t, ex, node), node, p)
		if err != nil {
			t.Fatalf("%s: %v", node, err)
		}
		// The tracer went to the same rule.
		dir := map[string]string{"node1": "admin-eg-", "node2": "admin-in-"}[node]
		var at = -1
		for _, h := range ex.Hops {
			for _, st := range h.Trace.Steps {
				if h.Node == node && strings.HasPrefix(st.Chain, dir) {
					at = st.Rule
				}
			}
		}
		// At least the rules of one bench policy: the chain is per family, and a rule
		// whose matches an earlier bench policy's rule already has is left out as
		// unreachable (the bench policies repeat some of their peers and ports).
		if want := cnpRulesPerDirection; n < want || n != at {
			t.Errorf("%s: %d rules before the Pass (the tracer's step: %d), want at least %d", node, n, at, want)
		}
		t.Logf("%s: %d rules before the Pass", node, n)
	}
	// The background makes tier chains for node1's synthetic pods too.
	if text := hopText(t, ex, "node1"); strings.Count(text, "chain admin-") < 3 || strings.Count(text, "chain baseline-") < 2 {
		t.Errorf("node1: %d Admin and %d Baseline chains", strings.Count(text, "chain admin-"), strings.Count(text, "chain baseline-"))
	}

	ex = explainFlow(t, snap, "client2", "server2")
	if !ex.Allowed || ex.Egress.Passed != "" || ex.Ingress.Passed != "" ||
		ex.Egress.AllowedBy != "bench/client2-egress egress rule 0" || ex.Ingress.AllowedBy != "bench/server2-allow ingress rule 0" {
		t.Fatalf("client2 → server2: want allowed by the NetworkPolicies alone:\n%s", ex.Format())
	}
	for _, h := range ex.Hops {
		for _, st := range h.Trace.Steps {
			if strings.HasPrefix(st.Chain, "admin-") || strings.HasPrefix(st.Chain, "baseline-") || strings.HasPrefix(st.Target, "admin-") {
				t.Errorf("client2 → server2 on %s went through %s", h.Node, st)
			}
		}
	}
	if ex := explainFlow(t, snap, "attacker", "denied"); ex.Allowed {
		t.Errorf("attacker → denied allowed:\n%s", ex.Format())
	}

	// Each change of the enforcement experiment denies client → server at the server
	// and leaves client2 → server2 alone.
	for _, c := range []struct {
		kind, deniedBy string
		edit           func(s *model.Snapshot)
	}{
		{"cnp-update", benchAdminName(4) + ", rule pass-client", func(s *model.Snapshot) {
			for i, o := range s.ClusterPolicies {
				if o.Name == benchAdminName(p.cnpBench()-1) {
					o = o.DeepCopy()
					o.Spec.Ingress[cnpRulesPerDirection-1].Action = cnp.ClusterNetworkPolicyRuleActionDeny
					s.ClusterPolicies[i] = o
				}
			}
		}},
		{"cnp-peer-label", benchAdminName(0) + ", rule deny-quarantined", func(s *model.Snapshot) {
			for i, pod := range s.Pods {
				if pod.Key() == benchNS+"/client" {
					cp := *pod
					cp.Labels = maps.Clone(pod.Labels)
					cp.Labels[quarantineLabel] = "yes"
					s.Pods[i] = &cp
				}
			}
		}},
		{"cnp-create-delete", cnpDenyName + ", rule deny-client", func(s *model.Snapshot) {
			s.ClusterPolicies = append(s.ClusterPolicies, cnpDenyPolicy())
		}},
	} {
		s := *snap
		s.Pods = append([]*model.Pod(nil), snap.Pods...)
		s.ClusterPolicies = append([]*cnp.ClusterNetworkPolicy(nil), snap.ClusterPolicies...)
		c.edit(&s)
		ex := explainFlow(t, &s, "client", "server")
		if ex.Allowed || ex.Ingress.Tier != "Admin" || !strings.Contains(ex.Ingress.DeniedBy, c.deniedBy) {
			t.Errorf("%s: want client → server denied by %s:\n%s", c.kind, c.deniedBy, ex.Format())
		}
		if ex := explainFlow(t, &s, "client2", "server2"); !ex.Allowed {
			t.Errorf("%s: client2 → server2 denied:\n%s", c.kind, ex.Format())
		}
	}
	if !slicesEqual(cnpEnforceKinds, []string{"cnp-update", "cnp-peer-label", "cnp-create-delete"}) {
		t.Errorf("cnpEnforceKinds changed (%v): test every kind here", cnpEnforceKinds)
	}
}

func slicesEqual(a, b []string) bool { return strings.Join(a, ",") == strings.Join(b, ",") }

func TestRulesBefore(t *testing.T) {
	text := `table inet nftpolicy {
	set pods-x-v4 {
		type ipv4_addr
		elements = { 10.244.1.2,
			     10.244.1.3 }
	}
	chain admin-in-abc {
		comment "Admin tier, ingress: ClusterNetworkPolicy/bench-admin-0"
		ip saddr @pods-x-v4 counter packets 0 bytes 0 drop comment "ClusterNetworkPolicy/bench-admin-0 Admin 10 ingress rule 0 deny-team: Deny"
		ip saddr @pods-x-v4 counter packets 0 bytes 0 goto isolate-in-x comment "ClusterNetworkPolicy/bench-admin-0 Admin 10 ingress rule 1 pass-client: Pass"
	}
}
`
	if n, ok := rulesBefore(text, `"ClusterNetworkPolicy/bench-admin-0 `, " pass-client: Pass"); !ok || n != 1 {
		t.Errorf("rulesBefore = %d, %v; want 1", n, ok)
	}
	if _, ok := rulesBefore(text, `"ClusterNetworkPolicy/bench-admin-1 `, " pass-client: Pass"); ok {
		t.Error("found a rule of another policy")
	}
}

// The bench's NetworkPolicies for the two pairs have the same shape.
func TestBenchPoliciesPairs(t *testing.T) {
	byName := map[string]*networkingv1.NetworkPolicy{}
	for _, np := range benchPolicies() {
		byName[np.Name] = np
	}
	for _, n := range []string{"server-allow", "server-isolate", "client-egress"} {
		a, b := byName[n], byName[strings.Replace(n, "-", "2-", 1)]
		if a == nil || b == nil || len(a.Spec.Ingress) != len(b.Spec.Ingress) || len(a.Spec.Egress) != len(b.Spec.Egress) {
			t.Errorf("%s: pair 2 differs: %+v vs %+v", n, a, b)
		}
	}
}

// TestReportCNP builds a report as a run with the ClusterNetworkPolicy measurements
// would and checks the summary, the targets and the table.
func TestReportCNP(t *testing.T) {
	p := FullProfile()
	dp := &DataPathReport{Background: p.Medium, Configs: dataPathConfigNames, Rulesets: map[string]map[string]RulesetSize{
		"d": {"node1": {Elements: 10162}, "node2": {Elements: 10164}}, "e": {"node1": {Elements: 11000}, "node2": {Elements: 11002}},
	}}
	cpsOf := map[string]float64{"a": 44000, "b": 40000, "c": 39000, "d": 39000, "e": 38500, "f": 39100, "g": 39000, "h": 38800, "i": 39000}
	for round := range 3 {
		for _, cfg := range dataPathConfigs {
			for _, test := range []string{testConnect1, testConnect8} {
				dp.Runs = append(dp.Runs, DataPathRun{Round: round, Config: cfg, Test: test,
					Connect: &ConnectRun{CPS: cpsOf[cfg] + float64(round), P50us: 15 + cpsOf["b"]/cpsOf[cfg]}})
			}
			dp.Runs = append(dp.Runs, DataPathRun{Round: round, Config: cfg, Test: testStream, Stream: &StreamRun{Gbps: 25}})
		}
	}
	dp.summarize()
	if len(dp.Summary) != len(dataPathConfigs) {
		t.Fatalf("summary of %d configurations", len(dp.Summary))
	}
	if got := dp.Paired["cps_c1 e/b"].Median; got < 0.96 || got > 0.97 {
		t.Errorf("cps_c1 e/b = %v", got)
	}
	cp := &ControlPlaneReport{}
	for _, what := range []string{enforceNP, enforceCNP, enforceNPUnselected} {
		er := &EnforceReport{Scale: p.Medium, What: what}
		if what != enforceNP {
			er.ClusterPolicies = 100
		}
		for i := range 10 {
			er.Trials = append(er.Trials, EnforceTrial{Kind: "x", Direction: "deny", EnforcedMs: float64(i), KernelMs: 1, RevokedMs: 50},
				EnforceTrial{Kind: "x", Direction: "allow", EnforcedMs: float64(i), KernelMs: 1})
		}
		er.summarize()
		cp.Enforce = append(cp.Enforce, er)
	}
	rep := &Report{Profile: p, DataPath: dp, Control: cp,
		CNP: &CNPReport{Channel: cnpChannel, Background: p.Medium, Admin: 50, Baseline: 50, RulesPerDirection: 10, ClientPolicies: 5,
			WalkedRules: map[string]int{"node1": 83, "node2": 98}}}
	rep.Targets = evaluateTargets(rep)
	want := map[string]bool{
		"new connections/s (e)/(b), 1 loop":                                             true,
		"new connections/s (e)/(b), 8 loops":                                            true,
		"added p50 connect latency (e)-(b)":                                             true,
		"new connections/s (f)/(b), 1 loop":                                             true,
		"pods no CNP selects: new connections/s (f)/(d), 8 loops":                       true,
		"ClusterNetworkPolicy write → enforced, p99 at 10k/1k + 100 CNPs":               true,
		"revocation by a ClusterNetworkPolicy write, p99 at 10k/1k + 100 CNPs":          true,
		"pods no CNP selects: NetworkPolicy write → enforced, p99 at 10k/1k + 100 CNPs": true,
		"pods no CNP selects: revocation, p99 at 10k/1k + 100 CNPs":                     true,
		"API write → enforced, p99 at 10k/1k":                                           true,
	}
	names := map[string]bool{}
	for _, tg := range rep.Targets {
		if names[tg.Name] {
			t.Errorf("target %q twice", tg.Name)
		}
		names[tg.Name] = true
		if want[tg.Name] && (tg.Missing || !tg.Pass) {
			t.Errorf("target %+v: want measured and passed", tg)
		}
		delete(want, tg.Name)
	}
	for n := range want {
		t.Errorf("no target %q", n)
	}
	var b strings.Builder
	rep.PrintTable(&b)
	for _, s := range []string{"(e) (d) + CNPs, client under Admin", "(f) (e), pods no CNP selects", "cps_c1 f/d",
		"CLUSTERNETWORKPOLICY WRITE → ENFORCED at 10k/1k + 100 CNPs", "NETWORKPOLICY WRITE → ENFORCED for pods no CNP selects",
		"crosses 83 rules on node1 (egress) and 98 on node2"} {
		if !strings.Contains(b.String(), s) {
			t.Errorf("table lacks %q:\n%s", s, b.String())
		}
	}
	if i, j := strings.Index(b.String(), "API WRITE → ENFORCED at 10k/1k"), strings.Index(b.String(), "CLUSTERNETWORKPOLICY WRITE"); i < 0 || i > j {
		t.Errorf("the NetworkPolicy experiment should come first:\n%s", b.String())
	}
}
