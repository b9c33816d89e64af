package ruleset

import (
	"slices"
	"testing"
)

func TestCanonicalRule(t *testing.T) {
	nf4 := Match{Kind: MatchNFProto, Family: IPv4}
	l4 := Match{Kind: MatchLookup, Fields: []Field{FieldIPv4Saddr}, Set: "s"}
	ct := func(s ...string) Match { return Match{Kind: MatchCtState, CtStates: s} }
	tcp := Match{Kind: MatchL4Proto, Proto: ProtoTCP}
	vmap := &VMap{Fields: []Field{FieldIPv4Daddr}, Map: "m"}
	for _, c := range []struct {
		name    string
		in, out Rule
	}{
		{"ct states by bit, once", Rule{Matches: []Match{ct("new", "related", "new", "established")}, Verdict: Accept},
			Rule{Matches: []Match{ct("established", "related", "new")}, Verdict: Accept}},
		{"nfproto where the guard goes", Rule{Matches: []Match{tcp, nf4, l4}, Verdict: Accept},
			Rule{Matches: []Match{tcp, l4}, Verdict: Accept}},
		{"nfproto where the vmap's guard goes", Rule{Matches: []Match{nf4}, VMap: vmap},
			Rule{VMap: vmap}},
		{"nfproto after the field", Rule{Matches: []Match{l4, nf4}, Verdict: Accept},
			Rule{Matches: []Match{l4, nf4}, Verdict: Accept}},
		{"nfproto apart from the field", Rule{Matches: []Match{nf4, tcp, l4}, Verdict: Accept},
			Rule{Matches: []Match{nf4, tcp, l4}, Verdict: Accept}},
		{"two nfproto", Rule{Matches: []Match{nf4, nf4, l4}, Verdict: Accept},
			Rule{Matches: []Match{nf4, nf4, l4}, Verdict: Accept}},
		{"counter between nfproto and vmap", Rule{Matches: []Match{nf4}, Counter: true, VMap: vmap},
			Rule{Matches: []Match{nf4}, Counter: true, VMap: vmap}},
		{"nfproto without a field", Rule{Matches: []Match{nf4}, Counter: true},
			Rule{Matches: []Match{nf4}, Counter: true}},
		{"unknown ct state left alone", Rule{Matches: []Match{ct("new", "bogus")}, Verdict: Accept},
			Rule{Matches: []Match{ct("new", "bogus")}, Verdict: Accept}},
	} {
		in := c.in
		matches := slices.Clone(in.Matches)
		got, changed := CanonicalRule(in)
		if !got.Equal(c.out) {
			t.Errorf("%s: got %s, want %s", c.name, FormatRule(got), FormatRule(c.out))
		}
		if changed != !in.Equal(c.out) {
			t.Errorf("%s: changed=%v", c.name, changed)
		}
		if !slices.EqualFunc(in.Matches, matches, func(a, b Match) bool { return slices.Equal(a.CtStates, b.CtStates) && a.Kind == b.Kind }) {
			t.Errorf("%s: input modified", c.name)
		}
		if again, changed := CanonicalRule(got); changed || !again.Equal(got) {
			t.Errorf("%s: not idempotent: %s", c.name, FormatRule(again))
		}
	}
}
