package bench

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
	"github.com/nftpolicy/nftpolicy/pkg/tracer"
)

func TestDispatchChain(t *testing.T) {
	// As nft -s list table prints it: elements wrapped, the closing brace of the
	// elements on the last element's line.
	text := `table inet nftpolicy {
	map egress-pods-v4 {
		type ipv4_addr : verdict
		elements = { 10.244.1.11 : jump isolate-eg-aaaa }
	}
	map ingress-pods-v4 {
		type ipv4_addr : verdict
		comment "local pod IP to the chain"
		elements = { 10.244.2.1 : jump isolate-in-bbbb, 10.244.2.11 : jump shadow-in-cccc,
			     10.244.2.111 : goto "enforce-in-dddd" }
	}
	chain shadow-in-cccc {
	}
	chain "audit-deny-in-eeee" {
	}
	chain isolate-in-bbbb {
	}
}
`
	for _, tc := range []struct {
		m, ip, want string
		ok          bool
	}{
		{"ingress-pods-v4", "10.244.2.1", "isolate-in-bbbb", true},
		{"ingress-pods-v4", "10.244.2.11", "shadow-in-cccc", true},
		{"ingress-pods-v4", "10.244.2.111", "enforce-in-dddd", true},
		{"ingress-pods-v4", "10.244.2.12", "", false},
		{"ingress-pods-v4", "10.244.1.11", "", false}, // only in the egress map
		{"egress-pods-v4", "10.244.1.11", "isolate-eg-aaaa", true},
		{"egress-pods-v4", "10.244.2.11", "", false},
		{"ingress-pods-v6", "10.244.2.11", "", false},
	} {
		if got, ok := dispatchChain(text, tc.m, tc.ip); got != tc.want || ok != tc.ok {
			t.Errorf("dispatchChain(%s, %s) = %q, %v; want %q, %v", tc.m, tc.ip, got, ok, tc.want, tc.ok)
		}
	}
	if n, err := checkAuditTable(text, "ingress-pods-v4", map[string]bool{"10.244.2.1": false, "10.244.2.11": true, "10.244.2.99": false}); n != 2 || err != nil {
		t.Errorf("checkAuditTable = %d, %v; want 2 chains", n, err)
	}
	if _, err := checkAuditTable(text, "ingress-pods-v4", map[string]bool{"10.244.2.1": true}); err == nil {
		t.Errorf("checkAuditTable accepted a pod without a shadow chain")
	}
	if _, err := checkAuditTable(text, "ingress-pods-v4", map[string]bool{"10.244.2.11": false}); err == nil {
		t.Errorf("checkAuditTable accepted a shadowed pod")
	}
	if _, err := checkAuditTable(strings.ReplaceAll(strings.ReplaceAll(text, "chain shadow", "chain x"), `"audit-deny`, `"x`), "ingress-pods-v4", nil); err == nil {
		t.Errorf("checkAuditTable accepted a table without audit chains")
	}
}

// TestAuditLoad checks the audit load against the compiler the agent uses: valid;
// on the measured nodes no audited policy changes the dispatch of the client or the
// server, server2 and the synthetic pods of both nodes are dispatched to shadow
// chains, and every bench flow keeps its verdict (client2 → server2 passes through
// the shadow copy and the enforced copy, counted nowhere).
func TestAuditLoad(t *testing.T) {
	if n := len(auditPolicies(Scale{Pods: 80, Policies: 8})); n != 2*3+1 {
		t.Errorf("%d audited policies at 80 pods, want 7 (two namespaces)", n)
	}
	pols := auditPolicies(Scale{Pods: 400, Policies: 40})
	if len(pols) != 13 {
		t.Errorf("%d audited policies, want 13", len(pols))
	}
	for _, np := range pols {
		if pr := compiler.Validate(np, agentOpts); len(pr) > 0 {
			t.Errorf("%s/%s: %v", np.Namespace, np.Name, pr)
		}
		if !compiler.IsAudit(np.Annotations) {
			t.Errorf("%s/%s is not audited", np.Namespace, np.Name)
		}
	}
	snap := benchSnapshot(Scale{Pods: 400, Policies: 40}, Profile{})
	plain := map[string]*ruleset.Ruleset{}
	withAudit := map[string]*ruleset.Ruleset{}
	for _, node := range []string{"node1", "node2"} {
		snap.NodeName = node
		plain[node] = compiler.Compile(snap, agentOpts).Ruleset
	}
	snap.Policies = append(snap.Policies, pols...)
	ip := map[string]string{}
	for _, p := range snap.Pods {
		if p.Namespace == benchNS {
			ip[p.Name] = p.IPs[0].String()
		}
	}
	for _, node := range []string{"node1", "node2"} {
		snap.NodeName = node
		res := compiler.Compile(snap, agentOpts)
		for _, pr := range res.Problems {
			t.Errorf("%s: %v", node, pr)
		}
		withAudit[node] = res.Ruleset
		text := ruleset.Render(res.Ruleset)
		checks := map[string]map[string]bool{
			"node1": {ip["client"]: false, ip["client2"]: false, "10.64.0.1": true, "10.64.0.99": true},
			"node2": {ip["server"]: false, ip["server2"]: true, "10.64.0.100": true, "10.64.0.199": true},
		}[node]
		for _, m := range []string{compiler.MapIngressV4, compiler.MapEgressV4} {
			c := checks
			if m == compiler.MapEgressV4 {
				c = map[string]bool{}
				for k, v := range checks {
					if k != ip["server2"] {
						c[k] = v
					}
				}
			}
			if n, err := checkAuditTable(text, m, c); err != nil || n == 0 {
				t.Errorf("%s %s: %d audit chains, %v", node, m, n, err)
			}
		}
		for _, pod := range []string{"client", "server"} {
			for _, m := range []string{compiler.MapIngressV4, compiler.MapEgressV4} {
				a, okA := dispatchChain(text, m, ip[pod])
				b, okB := dispatchChain(ruleset.Render(plain[node]), m, ip[pod])
				if a != b || okA != okB {
					t.Errorf("%s: %s's dispatch in %s changed by the audit load: %q -> %q", node, pod, m, b, a)
				}
			}
		}
	}
	for _, f := range []struct {
		from, to string
		allowed  bool
	}{{"client", "server", true}, {"client2", "server2", true}, {"attacker", "denied", false}, {"attacker", "server2", false}} {
		pkt := tracer.Packet{Src: netip.MustParseAddr(ip[f.from]), Dst: netip.MustParseAddr(ip[f.to]), Proto: 6, DPort: sinkPort}
		var verdicts []string
		allowed := true
		for _, node := range []string{"node1", "node2"} {
			r := tracer.Trace(withAudit[node], pkt)
			allowed = allowed && r.Allowed()
			if p := tracer.Trace(plain[node], pkt); p.Allowed() != r.Allowed() {
				t.Errorf("%s → %s on %s: allowed %v with the audit load, %v without", f.from, f.to, node, r.Allowed(), p.Allowed())
			}
			for _, s := range r.Steps {
				verdicts = append(verdicts, fmt.Sprintf("%s:%s", s.Chain, s.Verdict))
			}
		}
		if allowed != f.allowed {
			t.Errorf("%s → %s: allowed %v, want %v", f.from, f.to, allowed, f.allowed)
		}
		path := strings.Join(verdicts, " ")
		if shadowed := strings.Contains(path, "shadow-"); shadowed != (f.to == "server2") {
			t.Errorf("%s → %s: through a shadow chain %v: %s", f.from, f.to, shadowed, path)
		}
		// Pods no audited policy selects take exactly the path they took without the
		// load: the same rules matched in the same chains, so the same per-packet work
		// (what (g)/(d) measures).
		if f.from == "client" && f.to == "server" {
			for _, node := range []string{"node1", "node2"} {
				if a, b := stepsText(tracer.Trace(withAudit[node], pkt)), stepsText(tracer.Trace(plain[node], pkt)); a != b {
					t.Errorf("client → server on %s: the path changed with the audit load:\n%s\nwithout:\n%s", node, a, b)
				}
			}
		}
		if f.from == "client2" {
			t.Logf("client2 → server2 on node2: %d rules matched with server2 under the audited deny-all, %d without",
				len(tracer.Trace(withAudit["node2"], pkt).Steps), len(tracer.Trace(plain["node2"], pkt).Steps))
		}
		// Where the audited policies agree with the enforced ones, nothing is counted.
		if strings.Contains(path, "audit-") {
			t.Errorf("%s → %s: counted in an audit chain: %s", f.from, f.to, path)
		}
	}
}

func stepsText(r tracer.Result) string {
	var b strings.Builder
	for _, s := range r.Steps {
		fmt.Fprintf(&b, "%s[%d] %s -> %s\n", s.Chain, s.Rule, s.Text, s.Verdict)
	}
	return b.String()
}
