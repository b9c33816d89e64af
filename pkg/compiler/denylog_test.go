package compiler

import (
	"strings"
	"testing"

	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
	"github.com/nftpolicy/nftpolicy/pkg/tracer"
)

// denyLogCluster isolates x/a for ingress (from pod b only, TCP 80) and y/c for egress
// (to namespace z only), and x/c by two policies at once, so that isolation chains of
// both directions and of more than one policy exist.
func denyLogCluster(t *testing.T) *cluster {
	c := upstream(t)
	c.policy(ingress(netpol("x", "only-b", m("pod", "a")), withPorts(from(podSel(m("pod", "b"))), numPort("TCP", 80))))
	c.policy(types(egress(netpol("y", "to-z", m("pod", "c")), to(nsSel(m("kubernetes.io/metadata.name", "z")))), "Egress"))
	c.policy(ingress(netpol("x", "c-one", m("pod", "c")), from(podSel(m("pod", "a")))))
	c.policy(ingress(netpol("x", "c-two", m("pod", "c")), withPorts(from(nsSel(nil)), numPort("UDP", 81))))
	return c
}

// withoutLogRules drops the rules LogDenied adds, so the rest can be compared.
func withoutLogRules(rs *ruleset.Ruleset) *ruleset.Ruleset {
	out := rs.Clone()
	for _, ch := range out.Chains {
		var keep []ruleset.Rule
		for _, r := range ch.Rules {
			if r.Log == nil {
				keep = append(keep, r)
			}
		}
		ch.Rules = keep
	}
	return out
}

// TestLogDenied: with the option every isolation chain logs, rate-limited, right before
// its drop, with its own name as prefix; nothing else changes, and no verdict changes.
func TestLogDenied(t *testing.T) {
	c := denyLogCluster(t)
	for _, node := range []string{"n1", "n2"} {
		plain := Compile(c.snapshot(node), Options{})
		logged := Compile(c.snapshot(node), Options{LogDenied: true})
		if len(plain.Problems)+len(logged.Problems) > 0 {
			t.Fatalf("problems: %v %v", plain.Problems, logged.Problems)
		}
		if err := logged.Ruleset.Validate(); err != nil {
			t.Fatalf("%s: invalid ruleset: %v\n%s", node, err, ruleset.Render(logged.Ruleset))
		}
		for _, ch := range plain.Ruleset.Chains {
			for _, r := range ch.Rules {
				if r.Log != nil {
					t.Fatalf("%s: log rule without the option in %s: %s", node, ch.Name, ruleset.FormatRule(r))
				}
			}
		}
		if d := ruleset.Diff(plain.Ruleset, withoutLogRules(logged.Ruleset)); !d.Empty() {
			t.Fatalf("%s: LogDenied changed more than the log rules:\n%s", node, ruleset.Render(logged.Ruleset))
		}
		isolations := 0
		for _, ch := range logged.Ruleset.Chains {
			logs := 0
			for _, r := range ch.Rules {
				if r.Log != nil {
					logs++
				}
			}
			if !strings.HasPrefix(ch.Name, "isolate-") {
				if logs > 0 {
					t.Errorf("%s: chain %s logs", node, ch.Name)
				}
				continue
			}
			isolations++
			n := len(ch.Rules)
			if logs != 1 || n < 2 || ch.Rules[n-2].Log == nil {
				t.Fatalf("%s: chain %s: want one log rule right before the drop:\n%s", node, ch.Name, ruleset.Render(logged.Ruleset))
			}
			want := ruleset.Rule{
				Matches: []ruleset.Match{{Kind: ruleset.MatchLimit, Rate: 10, Burst: 20}},
				Log:     &ruleset.Log{Group: 100, Prefix: ch.Name + " "},
			}
			if got := ch.Rules[n-2]; !got.Equal(want) {
				t.Errorf("%s: chain %s: log rule %q, want %q", node, ch.Name, ruleset.FormatRule(got), ruleset.FormatRule(want))
			}
			if last := ch.Rules[n-1]; !last.Counter || last.Verdict != ruleset.Drop {
				t.Errorf("%s: chain %s does not end in counter drop: %s", node, ch.Name, ruleset.FormatRule(last))
			}
			if got, dir, ok := IsolationChainOf(ch.Rules[n-2].Log.Prefix); !ok || got != ch.Name || dir != logged.Ruleset.Owners.Chain(ch.Name).Direction {
				t.Errorf("IsolationChainOf(%q) = %q, %q, %v; owner %+v", ch.Rules[n-2].Log.Prefix, got, dir, ok, logged.Ruleset.Owners.Chain(ch.Name))
			}
		}
		if isolations == 0 && node == "n1" { // n2 hosts only pod b, which no policy isolates
			t.Fatalf("%s: no isolation chain to check", node)
		}

		// Every pod pair, both protocols and ports, both families: the same verdict, and
		// a denied first packet passes the log rule of its isolation chain on the way.
		denied := 0
		for _, src := range c.pods {
			for _, dst := range c.pods {
				for fam := range 2 {
					for _, proto := range []uint8{ruleset.ProtoTCP, ruleset.ProtoUDP} {
						for _, p := range []uint16{80, 81} {
							pkt := tracer.Packet{Src: src.IPs[fam], Dst: dst.IPs[fam], Proto: proto, DPort: p}
							a, b := tracer.Trace(plain.Ruleset, pkt), tracer.Trace(logged.Ruleset, pkt)
							if a.Verdict != b.Verdict {
								t.Fatalf("%s: %v: verdict %s without the option, %s with it", node, pkt, a.Verdict, b.Verdict)
							}
							if b.Allowed() {
								continue
							}
							denied++
							last := b.Last()
							if !strings.HasPrefix(last.Chain, "isolate-") {
								continue
							}
							passed := false
							for _, s := range b.Steps {
								passed = passed || (s.Chain == last.Chain && strings.HasPrefix(s.Text, "limit rate 10/second burst 20 packets log prefix \""+last.Chain+" \" group 100"))
							}
							if !passed {
								t.Errorf("%s: %v denied in %s without passing its log rule: %v", node, pkt, last.Chain, b.Steps)
							}
						}
					}
				}
			}
		}
		if denied == 0 && node == "n1" {
			t.Fatalf("%s: no denied packet to check", node)
		}
	}
}

// TestLogDeniedOptions: the group, rate and burst are taken from the options, and the
// Engine builds the same ruleset as Compile with them.
func TestLogDeniedOptions(t *testing.T) {
	c := denyLogCluster(t)
	opts := Options{LogDenied: true, LogGroup: 7, LogRate: 3, LogBurst: 5, Revocation: true}
	res := Compile(c.snapshot("n1"), opts)
	found := false
	for _, ch := range res.Ruleset.Chains {
		for _, r := range ch.Rules {
			if r.Log == nil {
				continue
			}
			found = true
			if r.Log.Group != 7 || r.Matches[0].Rate != 3 || r.Matches[0].Burst != 5 {
				t.Errorf("%s: %s", ch.Name, ruleset.FormatRule(r))
			}
		}
	}
	if !found {
		t.Fatal("no log rule")
	}
	eng, _ := newEngineFrom(c.snapshot("n1"), opts).Flush()
	if d := ruleset.Diff(res.Ruleset, eng.Ruleset); !d.Empty() {
		t.Fatalf("engine differs from Compile:\nengine:\n%s\ncompile:\n%s", ruleset.Render(eng.Ruleset), ruleset.Render(res.Ruleset))
	}
	if _, _, ok := IsolationChainOf("pol-in-x "); ok {
		t.Error("IsolationChainOf accepted a policy chain")
	}
	if _, _, ok := IsolationChainOf("isolate-in-1234"); ok {
		t.Error("IsolationChainOf accepted a prefix without the separator")
	}
}

// TestLogDeniedClusterDeny: a ClusterNetworkPolicy Deny rule logs too, with the prefix
// of its own deny chain, whose owner names the policy and the rule; the verdicts are
// those without the option.
func TestLogDeniedClusterDeny(t *testing.T) {
	c := upstream(t)
	c.clusterPolicy(cIngress(adminPol("guard", 10, nsSubject("x")), deny, "no-y", peers(peerNS("y"))))
	rs := Compile(c.snapshot("n1"), Options{LogDenied: true}).Ruleset
	if err := rs.Validate(); err != nil {
		t.Fatal(err)
	}
	src, dst := c.endpoint("y/a", ruleset.IPv4), c.endpoint("x/a", ruleset.IPv4)
	res := tracer.New(rs).Trace(tracer.Packet{Src: src.Addr, Dst: dst.Addr, Proto: ruleset.ProtoTCP, DPort: 80})
	if res.Allowed() {
		t.Fatalf("y/a -> x/a allowed")
	}
	var prefix string
	for _, s := range res.Steps {
		if strings.Contains(s.Text, "log prefix") {
			prefix = s.Chain + " "
		}
	}
	chain, dir, ok := IsolationChainOf(prefix)
	co := rs.Owners.Chain(chain)
	if !ok || dir != Ingress || co == nil || len(co.Policies) != 1 || co.Policies[0].String() != "ClusterNetworkPolicy/guard" {
		t.Fatalf("prefix %q: chain %q %v %v owner %+v; trace %+v", prefix, chain, dir, ok, co, res.Steps)
	}
	if ro, _ := rs.Owners.Rule(chain, 1); ro.Cluster == nil || ro.Cluster.Name != "no-y" {
		t.Errorf("the deny chain's drop is owned by %+v", ro)
	}
	c.expect(tcp("y/a", "x/a", 80, false), tcp("z/a", "x/a", 80, true))
}
