package netlink

import (
	"context"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/internal/testns"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// Real packets hit counted rules and Counters reports exactly them, per rule in chain
// order: a drop rule counts only the packets it drops, a later counted rule only those
// that got past, a rule without a counter reports none, and an incremental change of
// a set leaves the counters of the untouched chain running.
func TestCounters(t *testing.T) {
	ns := newNetNS(t)
	if _, err := inNS(t, ns, "ip", "link", "set", "lo", "up"); err != nil {
		testns.SkipUnlessRequired(t, "cannot bring up lo: %v", err)
	}
	d := newDataplane(t, ns)
	ctx := context.Background()

	// Before the table exists: no chains, no error.
	if got, err := d.Counters(ctx); err != nil || len(got) != 0 {
		t.Fatalf("Counters without a table = %v, %v; want empty", got, err)
	}

	rs := &ruleset.Ruleset{Table: DefaultTable,
		Sets: []*ruleset.Set{
			{Name: "ports", Key: pp, Interval: true, Elements: []ruleset.Element{el(udp, ruleset.PortRange(3000, 3000))}},
		},
		Chains: []*ruleset.Chain{
			{Name: "out", Base: &ruleset.BaseChain{Hook: ruleset.HookOutput}, Rules: []ruleset.Rule{
				{Matches: []ruleset.Match{{Kind: ruleset.MatchL4Proto, Proto: ruleset.ProtoUDP}}, Verdict: ruleset.Jump("check"), Comment: "udp"},
			}},
			{Name: "check", Rules: []ruleset.Rule{
				{Matches: []ruleset.Match{lookup("ports", fpp...)}, Counter: true, Verdict: ruleset.Drop, Comment: "denied"},
				{Counter: true, Comment: "passed"},
			}},
			{Name: "idle", Rules: []ruleset.Rule{{Counter: true, Verdict: ruleset.Accept, Comment: "never reached"}}},
		},
	}
	apply(t, d, rs, dataplane.ApplyOptions{})

	s4 := udpSocket(t, ns, unix.AF_INET)
	payload := []byte("counted!") // 8 bytes: an IPv4 packet of 20+8+8 = 36 bytes
	send := func(port, n int, wantPass bool) {
		t.Helper()
		for range n {
			err := unix.Sendto(s4, payload, 0, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}})
			if pass := err == nil; pass != wantPass {
				t.Fatalf("udp to port %d: err %v, want pass=%v", port, err, wantPass)
			}
		}
	}
	send(3000, 3, false)
	send(9, 2, true)

	check := func(stage string, want map[string][]dataplane.RuleCounter) {
		t.Helper()
		got, err := d.Counters(ctx)
		if err != nil {
			t.Fatalf("%s: Counters: %v", stage, err)
		}
		for chain, rules := range want {
			g := got[chain]
			if len(g) != len(rules) {
				t.Errorf("%s: chain %s: %d rules %+v, want %+v", stage, chain, len(g), g, rules)
				continue
			}
			for i := range rules {
				if g[i] != rules[i] {
					t.Errorf("%s: chain %s rule %d = %+v, want %+v", stage, chain, i, g[i], rules[i])
				}
			}
		}
		if len(got) != len(want) {
			t.Errorf("%s: chains %v, want %d", stage, got, len(want))
		}
	}
	const pkt = 36
	check("after traffic", map[string][]dataplane.RuleCounter{
		"out":   {{Comment: "udp"}},
		"check": {{Packets: 3, Bytes: 3 * pkt, Counted: true, Comment: "denied"}, {Packets: 2, Bytes: 2 * pkt, Counted: true, Comment: "passed"}},
		"idle":  {{Counted: true, Comment: "never reached"}},
	})

	// An incremental change of the set's elements keeps the chains, and so the counts.
	rs2 := rs.Clone()
	rs2.Set("ports").Elements = []ruleset.Element{el(udp, ruleset.PortRange(3001, 3001))}
	if res := apply(t, d, rs2, dataplane.ApplyOptions{}); res.Full {
		t.Fatalf("expected an incremental apply: %+v", res)
	}
	send(3000, 1, true)
	send(3001, 1, false)
	check("after a set change", map[string][]dataplane.RuleCounter{
		"out":   {{Comment: "udp"}},
		"check": {{Packets: 4, Bytes: 4 * pkt, Counted: true, Comment: "denied"}, {Packets: 3, Bytes: 3 * pkt, Counted: true, Comment: "passed"}},
		"idle":  {{Counted: true, Comment: "never reached"}},
	})
}
