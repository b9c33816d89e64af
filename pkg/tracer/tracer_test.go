package tracer

import (
	"net/netip"
	"testing"

	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// A hand-written ruleset exercising the evaluation rules the compiler relies on.
func testRuleset() *ruleset.Ruleset {
	j := ruleset.Jump("to-pod")
	rs := &ruleset.Ruleset{Table: "t",
		Sets: []*ruleset.Set{
			{Name: "pods", Key: []ruleset.KeyType{ruleset.KeyIPv4Addr}, IsMap: true, Elements: []ruleset.Element{
				{Key: []ruleset.Range{ruleset.Addr(netip.MustParseAddr("10.0.0.2"))}, Verdict: &j}}},
			{Name: "allowed", Key: []ruleset.KeyType{ruleset.KeyIPv4Addr}, Interval: true, Elements: []ruleset.Element{
				{Key: []ruleset.Range{ruleset.AddrRange(netip.MustParseAddr("10.0.0.0"), netip.MustParseAddr("10.0.0.127"))}}}},
			{Name: "ports", Key: []ruleset.KeyType{ruleset.KeyL4Proto, ruleset.KeyPort}, Interval: true, Elements: []ruleset.Element{
				{Key: []ruleset.Range{ruleset.Proto(ruleset.ProtoTCP), ruleset.PortRange(80, 81)}}}},
			{Name: "blocked", Key: []ruleset.KeyType{ruleset.KeyIPv4Addr}, Elements: []ruleset.Element{
				{Key: []ruleset.Range{ruleset.Addr(netip.MustParseAddr("10.0.0.66"))}}}},
		},
		Chains: []*ruleset.Chain{
			// Lower priority runs first; its accept does not end the hook.
			{Name: "a-first", Base: &ruleset.BaseChain{Hook: ruleset.HookForward, Priority: -10}, Rules: []ruleset.Rule{
				{Matches: []ruleset.Match{{Kind: ruleset.MatchCtState, CtStates: []string{"established"}}}, Verdict: ruleset.Accept},
				{Verdict: ruleset.Jump("helper")},
				{Matches: []ruleset.Match{{Kind: ruleset.MatchLookup, Fields: []ruleset.Field{ruleset.FieldIPv4Saddr}, Set: "blocked"}}, Verdict: ruleset.Drop},
				{Verdict: ruleset.Accept},
			}},
			{Name: "b-second", Base: &ruleset.BaseChain{Hook: ruleset.HookForward, Priority: 0}, Rules: []ruleset.Rule{
				{VMap: &ruleset.VMap{Fields: []ruleset.Field{ruleset.FieldIPv4Daddr}, Map: "pods"}},
			}},
			{Name: "helper", Rules: []ruleset.Rule{{Verdict: ruleset.Verdict{Kind: ruleset.VerdictReturn}}, {Verdict: ruleset.Drop}}},
			{Name: "to-pod", Rules: []ruleset.Rule{
				{Matches: []ruleset.Match{
					{Kind: ruleset.MatchLookup, Fields: []ruleset.Field{ruleset.FieldIPv4Saddr}, Set: "allowed"},
					{Kind: ruleset.MatchLookup, Fields: []ruleset.Field{ruleset.FieldL4Proto, ruleset.FieldDPort}, Set: "ports"},
				}, Verdict: ruleset.Accept, Comment: "rule 0"},
				{Matches: []ruleset.Match{{Kind: ruleset.MatchNFProto, Family: ruleset.IPv4}, {Kind: ruleset.MatchL4Proto, Proto: ruleset.ProtoUDP}}, Verdict: ruleset.Accept, Comment: "udp"},
				{Counter: true, Verdict: ruleset.Drop, Comment: "isolated"},
			}},
		},
	}
	rs.Normalize()
	if err := rs.Validate(); err != nil {
		panic(err)
	}
	return rs
}

func TestTrace(t *testing.T) {
	rs := testRuleset()
	a := netip.MustParseAddr
	cases := []struct {
		name string
		pkt  Packet
		want bool
		last string
	}{
		{"allowed peer and port", Packet{Src: a("10.0.0.5"), Dst: a("10.0.0.2"), Proto: 6, DPort: 81}, true, "to-pod[0]"},
		{"peer outside the interval", Packet{Src: a("10.0.0.200"), Dst: a("10.0.0.2"), Proto: 6, DPort: 80}, false, "to-pod[2]"},
		{"port outside the range", Packet{Src: a("10.0.0.5"), Dst: a("10.0.0.2"), Proto: 6, DPort: 82}, false, "to-pod[2]"},
		{"udp rule", Packet{Src: a("10.0.0.200"), Dst: a("10.0.0.2"), Proto: 17, DPort: 53}, true, "to-pod[1]"},
		{"not in the dispatch map", Packet{Src: a("10.0.0.200"), Dst: a("10.0.0.3"), Proto: 6, DPort: 22}, true, "b-second[-1]"},
		{"dropped in the first chain", Packet{Src: a("10.0.0.66"), Dst: a("10.0.0.3"), Proto: 6, DPort: 22}, false, "a-first[2]"},
		{"established passes the first chain only", Packet{Src: a("10.0.0.66"), Dst: a("10.0.0.2"), Proto: 6, DPort: 9, CtState: "established"}, false, "to-pod[2]"},
		{"ipv6 skips ipv4 lookups", Packet{Src: a("fd00::1"), Dst: a("fd00::2"), Proto: 17, DPort: 53}, true, "b-second[-1]"},
		{"other hook", Packet{Src: a("10.0.0.66"), Dst: a("10.0.0.2"), Proto: 6, DPort: 9, Hook: ruleset.HookOutput}, true, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := Trace(rs, c.pkt)
			if r.Allowed() != c.want {
				t.Fatalf("%s: allowed=%v want %v; steps %v", c.pkt, r.Allowed(), c.want, r.Steps)
			}
			last := ""
			if len(r.Steps) > 0 {
				s := r.Last()
				last = s.Chain + "[" + itoa(s.Rule) + "]"
			}
			if last != c.last {
				t.Errorf("decided by %q, want %q; steps %v", last, c.last, r.Steps)
			}
		})
	}
}

func itoa(i int) string {
	if i < 0 {
		return "-1"
	}
	return string(rune('0' + i))
}
