package ruleset

import (
	"net/netip"
	"strings"
	"testing"
)

func sample() *Ruleset {
	v := Jump("pod-chain")
	rs := &Ruleset{
		Table: "t",
		Sets: []*Set{
			{Name: "peers", Key: []KeyType{KeyIPv4Addr}, Interval: true, Elements: []Element{
				{Key: []Range{AddrRange(netip.MustParseAddr("10.0.0.0"), netip.MustParseAddr("10.0.0.255"))}},
				{Key: []Range{Addr(netip.MustParseAddr("10.1.0.7"))}},
			}},
			{Name: "ports", Key: []KeyType{KeyL4Proto, KeyPort}, Interval: true, Elements: []Element{
				{Key: []Range{Proto(ProtoTCP), PortRange(8000, 8080)}},
			}},
			{Name: "dispatch", Key: []KeyType{KeyIPv4Addr}, IsMap: true, Elements: []Element{
				{Key: []Range{Addr(netip.MustParseAddr("10.2.0.1"))}, Verdict: &v},
			}},
		},
		Chains: []*Chain{
			{Name: "base", Base: &BaseChain{Hook: HookForward, Priority: -10}, Rules: []Rule{
				{VMap: &VMap{Fields: []Field{FieldIPv4Daddr}, Map: "dispatch"}},
			}},
			{Name: "pod-chain", Rules: []Rule{
				{Matches: []Match{{Kind: MatchLookup, Fields: []Field{FieldIPv4Saddr}, Set: "peers"},
					{Kind: MatchLookup, Fields: []Field{FieldL4Proto, FieldDPort}, Set: "ports"}}, Counter: true, Verdict: Accept, Comment: "ns/p ingress rule 0"},
				{Counter: true, Verdict: Drop},
			}},
		},
	}
	rs.Normalize()
	return rs
}

func TestValidateAcceptsSample(t *testing.T) {
	if err := sample().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestValidateRejects(t *testing.T) {
	cases := map[string]func(rs *Ruleset){
		"missing set": func(rs *Ruleset) { rs.Chain("pod-chain").Rules[0].Matches[0].Set = "nope" },
		"missing chain": func(rs *Ruleset) {
			v := Jump("nope")
			rs.Set("dispatch").Elements[0].Verdict = &v
		},
		"jump to base chain": func(rs *Ruleset) { rs.Chain("pod-chain").Rules[1].Verdict = Jump("base") },
		"overlapping intervals": func(rs *Ruleset) {
			rs.Set("peers").Elements = append(rs.Set("peers").Elements, Element{Key: []Range{Addr(netip.MustParseAddr("10.0.0.9"))}})
		},
		"wrong key length": func(rs *Ruleset) {
			rs.Set("peers").Elements[0].Key[0] = Addr(netip.MustParseAddr("fd00::1"))
		},
		"field type mismatch": func(rs *Ruleset) { rs.Chain("pod-chain").Rules[0].Matches[0].Fields = []Field{FieldIPv6Saddr} },
		"long name":           func(rs *Ruleset) { rs.Chains[0].Name = strings.Repeat("x", MaxNameLen+1) },
		"range in plain set": func(rs *Ruleset) {
			rs.Set("dispatch").Elements[0].Key[0] = AddrRange(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"))
		},
		"duplicate chain": func(rs *Ruleset) { rs.Chains = append(rs.Chains, &Chain{Name: "base"}) },
		// Validate finds duplicates among neighbours in a sorted set, with a map otherwise.
		"duplicate element, sorted": func(rs *Ruleset) {
			s := rs.Set("dispatch")
			s.Elements = append(s.Elements, s.Elements...)
			s.SortElements()
		},
		"duplicate element, unsorted": func(rs *Ruleset) {
			s := rs.Set("dispatch")
			v := Jump("pod-chain")
			s.Elements = append(s.Elements, Element{Key: []Range{Addr(netip.MustParseAddr("10.255.255.255"))}, Verdict: &v}, s.Elements[0])
		},
		"mixed families": func(rs *Ruleset) {
			rs.Chain("pod-chain").Rules[0].Matches = append(rs.Chain("pod-chain").Rules[0].Matches, Match{Kind: MatchNFProto, Family: IPv6})
		},
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			rs := sample()
			mutate(rs)
			err := rs.Validate()
			if err == nil {
				t.Fatalf("Validate accepted a ruleset with %s", name)
			}
			if strings.HasPrefix(name, "duplicate element") && !strings.Contains(err.Error(), "duplicate element") {
				t.Fatalf("Validate found another problem than the duplicate: %v", err)
			}
		})
	}
}

func TestDiffAndApply(t *testing.T) {
	old := sample()
	desired := sample()
	desired.Set("peers").Elements = append(desired.Set("peers").Elements, Element{Key: []Range{Addr(netip.MustParseAddr("10.9.9.9"))}})
	desired.Set("peers").Elements = desired.Set("peers").Elements[1:] // drop the /24
	v := Drop
	desired.Set("dispatch").Elements[0].Verdict = &v // verdict change: del + add
	desired.Chain("pod-chain").Rules = desired.Chain("pod-chain").Rules[1:]
	desired.Chains = append(desired.Chains, &Chain{Name: "new-chain", Rules: []Rule{{Verdict: Accept}}})
	desired.Normalize()

	ch := Diff(old, desired)
	if ch.NeedsReplace {
		t.Fatal("unexpected NeedsReplace")
	}
	got := ch.Apply(old, desired)
	if !Diff(got, desired).Empty() {
		t.Fatalf("applying the diff did not produce the desired ruleset:\n%s\nwant\n%s", Render(got), Render(desired))
	}
	if Render(got) != Render(desired) {
		t.Fatalf("render differs:\n%s\nwant\n%s", Render(got), Render(desired))
	}
	if len(ch.RewriteChains) != 2 || len(ch.AddChains) != 1 {
		t.Errorf("rewrite %d chains (want 2: pod-chain, new-chain), add %d (want 1)", len(ch.RewriteChains), len(ch.AddChains))
	}
	if !Diff(desired, desired).Empty() || Diff(desired, desired).Ops() != 0 {
		t.Error("a ruleset differs from itself")
	}
	// A set whose type changes cannot be changed in place.
	changed := desired.Clone()
	changed.Set("peers").Key = []KeyType{KeyIPv6Addr}
	changed.Set("peers").Elements = nil
	if !Diff(desired, changed).NeedsReplace {
		t.Error("a set type change must force a replace")
	}
	if !Diff(nil, desired).NeedsReplace {
		t.Error("no table must force a replace")
	}
}

func TestRender(t *testing.T) {
	out := Render(sample())
	for _, want := range []string{
		"table inet t {",
		"type filter hook forward priority filter - 10; policy accept;",
		"ip daddr vmap @dispatch",
		"10.0.0.0/24",
		"tcp . 8000-8080",
		"10.2.0.1 : jump pod-chain",
		`ip saddr @peers meta l4proto . th dport @ports counter accept comment "ns/p ingress rule 0"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("render lacks %q:\n%s", want, out)
		}
	}
}

// Rule.Equal must agree with the rule's full text (FormatRule) on every kind of difference.
func TestRuleEqualAgreesWithText(t *testing.T) {
	base := Rule{Matches: []Match{
		{Kind: MatchCtState, CtStates: []string{"established", "related"}},
		{Kind: MatchLookup, Fields: []Field{FieldIPv4Saddr}, Set: "s"},
		{Kind: MatchCtMark, Mark: 1, MarkMask: 3},
	}, Counter: true, Verdict: Jump("c"), Comment: "x"}
	variants := []func(r *Rule){
		func(r *Rule) {},
		func(r *Rule) { r.Counter = false },
		func(r *Rule) { r.Verdict = Accept },
		func(r *Rule) { r.Comment = "y" },
		func(r *Rule) { r.Matches = r.Matches[:2] },
		func(r *Rule) { r.Matches[0].CtStates = []string{"established"} },
		func(r *Rule) { r.Matches[1].Fields = []Field{FieldIPv4Daddr} },
		func(r *Rule) { r.Matches[1].Set = "t" },
		func(r *Rule) { r.Matches[1].Negate = true },
		func(r *Rule) { r.Matches[2].Mark = 2 },
		func(r *Rule) { r.Verdict = Verdict{}; r.VMap = &VMap{Fields: []Field{FieldIPv4Daddr}, Map: "m"} },
	}
	clone := func(r Rule) Rule {
		c := r
		c.Matches = nil
		for _, m := range r.Matches {
			m.Fields = append([]Field(nil), m.Fields...)
			m.CtStates = append([]string(nil), m.CtStates...)
			c.Matches = append(c.Matches, m)
		}
		return c
	}
	for i, v := range variants {
		r := clone(base)
		v(&r)
		if got, want := base.Equal(r), FormatRule(base) == FormatRule(r); got != want {
			t.Errorf("variant %d: Equal=%v, text equal=%v", i, got, want)
		}
	}
}

// Owners are not part of the table: a ruleset without them (as read from a kernel) is
// no different to Diff and Validate, Clone carries them, and Apply — which mirrors the
// kernel — yields a table without them.
func TestOwnersAreNotPartOfTheTable(t *testing.T) {
	compiled := sample()
	compiled.Normalize()
	compiled.Owners = &Owners{Chains: map[string]*ChainOwner{"base": {Role: RoleBase, Direction: Ingress, Rules: []RuleOwner{{Role: RoleDispatch}}}}}
	kernel := compiled.Clone()
	if kernel.Owners != compiled.Owners {
		t.Fatal("Clone dropped the owners")
	}
	kernel.Owners = nil
	if d := Diff(kernel, compiled); !d.Empty() {
		t.Errorf("owners make a difference: %+v", d)
	}
	if err := kernel.Validate(); err != nil {
		t.Errorf("without owners: %v", err)
	}
	if err := compiled.Validate(); err != nil {
		t.Errorf("with owners: %v", err)
	}
	if got := Diff(nil, compiled).Apply(nil, compiled); got.Owners != nil {
		t.Error("Apply of a replacement kept the owners")
	}
	if got := Diff(compiled, compiled).Apply(compiled, compiled); got.Owners != nil {
		t.Error("Apply of changes kept the owners")
	}
}
