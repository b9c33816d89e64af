package netlink

// Kernel tests. Each test runs against a throwaway network namespace of its own (never
// the host's nftables) and is skipped when not root or when namespaces cannot be made.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/internal/testns"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// newNetNS returns a throwaway network namespace (see internal/testns).
func newNetNS(t *testing.T) int { return testns.New(t) }

// inNS runs a command inside the namespace.
func inNS(t *testing.T, nsFd int, name string, args ...string) (string, error) {
	t.Helper()
	return testns.Exec(t, nsFd, name, args...)
}

func nft(t *testing.T, nsFd int, args ...string) string {
	t.Helper()
	out, err := inNS(t, nsFd, "nft", args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func newDataplane(t *testing.T, nsFd int, opts ...Option) *Dataplane {
	t.Helper()
	opts = append([]Option{WithNetNSFd(nsFd), WithLogger(testr.NewWithOptions(t, testr.Options{Verbosity: 1}))}, opts...)
	d, err := New(opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return d
}

func apply(t *testing.T, d *Dataplane, rs *ruleset.Ruleset, opts dataplane.ApplyOptions) dataplane.Result {
	t.Helper()
	res, err := d.Apply(context.Background(), rs, opts)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return res
}

// requireKernel checks that the kernel holds exactly want: the diff is empty and the
// renderings (which include set comments, not part of the diff) are identical.
func requireKernel(t *testing.T, d *Dataplane, want *ruleset.Ruleset) {
	t.Helper()
	got, err := d.Read(context.Background())
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	if got == nil {
		t.Fatalf("Read: table absent")
	}
	w := want.Clone()
	w.Normalize()
	if !ruleset.Diff(w, got).Empty() || ruleset.Render(w) != ruleset.Render(got) {
		t.Fatalf("kernel table differs from the desired ruleset\n--- want\n%s\n--- got\n%s", ruleset.Render(w), ruleset.Render(got))
	}
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func prefix(s string) ruleset.Range {
	p := netip.MustParsePrefix(s)
	return ruleset.AddrRange(p.Addr(), ruleset.LastAddr(p))
}

func el(key ...ruleset.Range) ruleset.Element { return ruleset.Element{Key: key} }

func vel(v ruleset.Verdict, key ...ruleset.Range) ruleset.Element {
	return ruleset.Element{Key: key, Verdict: &v}
}

func lookup(set string, fields ...ruleset.Field) ruleset.Match {
	return ruleset.Match{Kind: ruleset.MatchLookup, Fields: fields, Set: set}
}

var (
	v4     = []ruleset.KeyType{ruleset.KeyIPv4Addr}
	v6     = []ruleset.KeyType{ruleset.KeyIPv6Addr}
	v4pp   = []ruleset.KeyType{ruleset.KeyIPv4Addr, ruleset.KeyL4Proto, ruleset.KeyPort}
	v6pp   = []ruleset.KeyType{ruleset.KeyIPv6Addr, ruleset.KeyL4Proto, ruleset.KeyPort}
	pp     = []ruleset.KeyType{ruleset.KeyL4Proto, ruleset.KeyPort}
	tcp    = ruleset.Proto(ruleset.ProtoTCP)
	udp    = ruleset.Proto(ruleset.ProtoUDP)
	sctp   = ruleset.Proto(ruleset.ProtoSCTP)
	f4pp   = []ruleset.Field{ruleset.FieldIPv4Saddr, ruleset.FieldL4Proto, ruleset.FieldDPort}
	f6pp   = []ruleset.Field{ruleset.FieldIPv6Saddr, ruleset.FieldL4Proto, ruleset.FieldDPort}
	fpp    = []ruleset.Field{ruleset.FieldL4Proto, ruleset.FieldDPort}
	allOf  = ruleset.PortRange(1, 65535)
	jumpA  = ruleset.Jump("pol/a")
	gotoB  = ruleset.Verdict{Kind: ruleset.VerdictGoto, Chain: "pol/b"}
	retrn  = ruleset.Verdict{Kind: ruleset.VerdictReturn}
	estRel = ruleset.Match{Kind: ruleset.MatchCtState, CtStates: []string{"established", "related"}}
)

// sample is a representative ruleset: every construct of the IR appears at least once.
// sampleApplied returns a new namespace, a dataplane in it and sample(), which it has
// programmed.
func sampleApplied(t *testing.T) (ns int, d *Dataplane, rs *ruleset.Ruleset) {
	t.Helper()
	ns = newNetNS(t)
	d = newDataplane(t, ns)
	rs = sample()
	apply(t, d, rs, dataplane.ApplyOptions{})
	return ns, d, rs
}

func sample() *ruleset.Ruleset {
	return &ruleset.Ruleset{
		Table: DefaultTable,
		Sets: []*ruleset.Set{
			{Name: "pods4", Comment: "local pods v4", Key: v4, Interval: true, Elements: []ruleset.Element{
				el(prefix("10.0.0.0/8")),
				el(ruleset.Addr(addr("192.168.1.1"))),
				el(prefix("192.168.2.0/24")), el(prefix("192.168.3.0/24")), // adjacent
				el(ruleset.AddrRange(addr("172.16.0.7"), addr("172.16.0.99"))),
				el(ruleset.AddrRange(addr("200.0.0.0"), addr("255.255.255.255"))), // to the maximum
			}},
			{Name: "pods6", Key: v6, Interval: true, Elements: []ruleset.Element{
				el(prefix("fd00::/64")),
				el(ruleset.Addr(addr("2001:db8::1"))),
				el(ruleset.AddrRange(addr("fe80::5"), addr("fe80::ff"))),
				el(prefix("ff00::/8")), // to the maximum
			}},
			{Name: "all6", Key: v6, Interval: true, Elements: []ruleset.Element{el(prefix("::/0"))}},
			{Name: "iso4", IsMap: true, Key: v4, Elements: []ruleset.Element{
				vel(jumpA, ruleset.Addr(addr("10.0.0.1"))),
				vel(gotoB, ruleset.Addr(addr("10.0.0.2"))),
				vel(ruleset.Drop, ruleset.Addr(addr("10.0.0.3"))),
			}},
			{Name: "iso6", IsMap: true, Key: v6, Elements: []ruleset.Element{
				vel(jumpA, ruleset.Addr(addr("fd00::1"))),
				vel(ruleset.Accept, ruleset.Addr(addr("fd00::2"))),
			}},
			{Name: "net4", Comment: "interval map", IsMap: true, Interval: true, Key: v4, Elements: []ruleset.Element{
				vel(jumpA, prefix("10.9.0.0/16")),
				vel(ruleset.Drop, prefix("10.10.0.0/16")),
				vel(retrn, prefix("10.11.0.0/16")),
			}},
			{Name: "svc4", Comment: "peer . proto . port", Key: v4pp, Interval: true, Elements: []ruleset.Element{
				el(prefix("10.0.0.0/24"), tcp, ruleset.PortRange(80, 90)),
				el(ruleset.Addr(addr("10.1.2.3")), udp, ruleset.PortRange(53, 53)),
				el(prefix("0.0.0.0/0"), sctp, allOf),
			}},
			{Name: "svc6", Key: v6pp, Interval: true, Elements: []ruleset.Element{
				el(prefix("fd00::/64"), tcp, ruleset.PortRange(443, 443)),
				el(ruleset.Addr(addr("2001:db8::5")), udp, ruleset.PortRange(1000, 2000)),
			}},
			{Name: "ports", Key: pp, Interval: true, Elements: []ruleset.Element{
				el(tcp, ruleset.PortRange(8080, 8090)),
				el(udp, ruleset.PortRange(53, 53)),
			}},
			{Name: "hosts4", Key: v4, Elements: []ruleset.Element{
				el(ruleset.Addr(addr("192.0.2.1"))), el(ruleset.Addr(addr("192.0.2.2"))), el(ruleset.Addr(addr("255.255.255.255"))),
			}},
			{Name: "exact4", Key: v4pp, Elements: []ruleset.Element{
				el(ruleset.Addr(addr("192.0.2.1")), tcp, ruleset.PortRange(22, 22)),
			}},
			{Name: "protos", Key: []ruleset.KeyType{ruleset.KeyL4Proto}, Elements: []ruleset.Element{el(tcp), el(udp)}},
			{Name: "empty", Key: v4, Interval: true},
		},
		Chains: []*ruleset.Chain{
			{Name: "forward", Comment: "base forward", Base: &ruleset.BaseChain{Hook: ruleset.HookForward}, Rules: []ruleset.Rule{
				{Matches: []ruleset.Match{estRel}, Verdict: ruleset.Accept, Comment: "replies"},
				{VMap: &ruleset.VMap{Fields: []ruleset.Field{ruleset.FieldIPv4Daddr}, Map: "iso4"}, Comment: "isolated v4"},
				{VMap: &ruleset.VMap{Fields: []ruleset.Field{ruleset.FieldIPv6Daddr}, Map: "iso6"}},
				{Counter: true, VMap: &ruleset.VMap{Fields: []ruleset.Field{ruleset.FieldIPv4Saddr}, Map: "net4"}},
			}},
			{Name: "input", Base: &ruleset.BaseChain{Hook: ruleset.HookInput, Priority: -10}, Rules: []ruleset.Rule{
				{Matches: []ruleset.Match{{Kind: ruleset.MatchCtState, CtStates: []string{"invalid"}}}, Counter: true, Verdict: ruleset.Drop},
				{Matches: []ruleset.Match{lookup("hosts4", ruleset.FieldIPv4Saddr)}, Verdict: jumpA},
			}},
			{Name: "output", Base: &ruleset.BaseChain{Hook: ruleset.HookOutput, Priority: 5}},
			{Name: "pol/a", Comment: "policy a", Rules: []ruleset.Rule{
				{Matches: []ruleset.Match{lookup("pods4", ruleset.FieldIPv4Saddr)}, Counter: true, Verdict: ruleset.Accept, Comment: "pods"},
				{Matches: []ruleset.Match{lookup("svc4", f4pp...)}, Verdict: ruleset.Accept},
				{Matches: []ruleset.Match{lookup("svc6", f6pp...)}, Counter: true, Verdict: ruleset.Accept, Comment: "v6 services"},
				{Matches: []ruleset.Match{lookup("ports", fpp...)}, Verdict: ruleset.Accept},
				{Matches: []ruleset.Match{{Kind: ruleset.MatchLookup, Fields: []ruleset.Field{ruleset.FieldIPv6Saddr}, Set: "pods6", Negate: true}}, Verdict: ruleset.Drop},
				{Matches: []ruleset.Match{{Kind: ruleset.MatchNFProto, Family: ruleset.IPv4}, lookup("pods4", ruleset.FieldIPv4Daddr)}, Verdict: ruleset.Accept, Comment: "explicit nfproto"},
				{Matches: []ruleset.Match{lookup("pods4", ruleset.FieldIPv4Daddr), {Kind: ruleset.MatchNFProto, Family: ruleset.IPv4}}, Verdict: ruleset.Accept},
				{Matches: []ruleset.Match{{Kind: ruleset.MatchNFProto, Family: ruleset.IPv6}, lookup("all6", ruleset.FieldIPv6Daddr)}, Verdict: ruleset.Accept},
				{Matches: []ruleset.Match{lookup("exact4", ruleset.FieldIPv4Daddr, ruleset.FieldL4Proto, ruleset.FieldDPort)}, Verdict: ruleset.Accept},
				{Matches: []ruleset.Match{lookup("protos", ruleset.FieldL4Proto)}, Counter: true},
				{Matches: []ruleset.Match{{Kind: ruleset.MatchL4Proto, Proto: ruleset.ProtoTCP}, {Kind: ruleset.MatchCtState, CtStates: []string{"new", "related", "untracked"}}}, Verdict: retrn},
				{Verdict: gotoB},
			}},
			{Name: "pol/b", Rules: []ruleset.Rule{
				{Verdict: ruleset.Drop, Comment: "default deny"},
			}},
		},
	}
}

func TestValidSample(t *testing.T) {
	if err := sample().Validate(); err != nil {
		t.Fatal(err)
	}
}

// (a) a representative ruleset is applied, is what nft sees, and reads back identical.
func TestApplyAndReadBack(t *testing.T) {
	ns := newNetNS(t)
	d := newDataplane(t, ns)
	rs := sample()
	res := apply(t, d, rs, dataplane.ApplyOptions{})
	st := rs.Stats()
	if !res.Full || res.Ops != st.Chains+st.Rules+st.Sets+st.Elements {
		t.Errorf("first apply: got %+v, want a full replace of %d objects", res, st.Chains+st.Rules+st.Sets+st.Elements)
	}
	requireKernel(t, d, rs)

	// What nft makes of it.
	out := nft(t, ns, "-j", "list", "table", "inet", DefaultTable)
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("nft -j output does not parse: %v\n%s", err, out)
	}
	type setJSON struct {
		Name    string            `json:"name"`
		Type    any               `json:"type"`
		Flags   []string          `json:"flags"`
		Comment string            `json:"comment"`
		Elem    []json.RawMessage `json:"elem"`
	}
	sets := map[string]setJSON{}
	chains := map[string]map[string]any{}
	rules := map[string][]map[string]any{}
	for _, o := range doc.Nftables {
		for kind, raw := range o {
			switch kind {
			case "set", "map":
				var s setJSON
				if err := json.Unmarshal(raw, &s); err != nil {
					t.Fatal(err)
				}
				sets[s.Name] = s
			case "chain":
				var c map[string]any
				if err := json.Unmarshal(raw, &c); err != nil {
					t.Fatal(err)
				}
				chains[c["name"].(string)] = c
			case "rule":
				var r map[string]any
				if err := json.Unmarshal(raw, &r); err != nil {
					t.Fatal(err)
				}
				rules[r["chain"].(string)] = append(rules[r["chain"].(string)], r)
			}
		}
	}
	for _, c := range rs.Chains {
		jc, ok := chains[c.Name]
		if !ok {
			t.Errorf("nft does not list chain %q", c.Name)
			continue
		}
		if len(rules[c.Name]) != len(c.Rules) {
			t.Errorf("chain %q: nft lists %d rules, want %d", c.Name, len(rules[c.Name]), len(c.Rules))
		}
		if c.Base != nil {
			if jc["hook"] != string(c.Base.Hook) || jc["prio"] != float64(c.Base.Priority) || jc["policy"] != "accept" || jc["type"] != "filter" {
				t.Errorf("chain %q: nft sees %v", c.Name, jc)
			}
		}
	}
	for _, s := range rs.Sets {
		js, ok := sets[s.Name]
		if !ok {
			t.Errorf("nft does not list set %q", s.Name)
			continue
		}
		if len(js.Elem) != len(s.Elements) {
			t.Errorf("set %q: nft lists %d elements, want %d: %s", s.Name, len(js.Elem), len(s.Elements), js.Elem)
		}
		if js.Comment != s.Comment {
			t.Errorf("set %q: nft sees comment %q, want %q", s.Name, js.Comment, s.Comment)
		}
	}
	if c := rules["pol/a"][0]["comment"]; c != "pods" {
		t.Errorf("nft sees rule comment %v, want %q", c, "pods")
	}
	text := nft(t, ns, "list", "table", "inet", DefaultTable)
	for _, want := range []string{
		"10.0.0.0/8", "192.168.1.1", "192.168.2.0/24", "192.168.3.0/24", "172.16.0.7-172.16.0.99", "200.0.0.0-255.255.255.255",
		"fd00::/64", "fe80::5-fe80::ff", "10.0.0.1 : jump pol/a", "10.0.0.2 : goto pol/b", "fd00::2 : accept",
		"10.0.0.0/24 . tcp . 80-90", "10.1.2.3 . udp . 53", "0.0.0.0/0 . sctp . 1-65535", "fd00::/64 . tcp . 443",
		"2001:db8::5 . udp . 1000-2000", "tcp . 8080-8090", "10.9.0.0/16 : jump pol/a", "192.0.2.1 . tcp . 22",
		"ct state established,related accept comment \"replies\"",
		"ip saddr . meta l4proto . th dport @svc4 accept",
		"ip6 saddr != @pods6 drop",
		"ip daddr vmap @iso4 comment \"isolated v4\"",
		"type filter hook input priority filter - 10; policy accept;",
		"goto pol/b",
		"chain forward {\n\t\tcomment \"base forward\"\n\t\ttype filter hook forward priority filter; policy accept;",
		"chain pol/a {\n\t\tcomment \"policy a\"",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("nft list does not show %q", want)
		}
	}
	if t.Failed() {
		t.Logf("nft list:\n%s", text)
	}

	// Applying the same ruleset again sends nothing.
	res = apply(t, d, rs, dataplane.ApplyOptions{})
	if res.Full || res.Ops != 0 {
		t.Errorf("unchanged apply: got %+v, want no ops", res)
	}
	// And with ReadBack, nothing drifted.
	res = apply(t, d, rs, dataplane.ApplyOptions{ReadBack: true})
	if res.Full || res.Ops != 0 || res.Drift {
		t.Errorf("unchanged apply with read back: got %+v, want no ops and no drift", res)
	}
}

// (b) small changes go out as small incremental batches.
func TestIncremental(t *testing.T) {
	_, d, old := sampleApplied(t)

	rs := sample()
	s := rs.Set("pods4")
	s.Elements = append(s.Elements, el(ruleset.Addr(addr("192.168.9.9"))))                 // +1
	s.Elements = append(s.Elements[:1], s.Elements[2:]...)                                 // -1 (192.168.1.1)
	rs.Set("iso4").Elements[1] = vel(ruleset.Drop, ruleset.Addr(addr("10.0.0.2")))         // verdict change: -1 +1
	rs.Set("svc4").Elements[0] = el(prefix("10.0.0.0/24"), tcp, ruleset.PortRange(80, 91)) // -1 +1
	rs.Set("pods6").Elements = rs.Set("pods6").Elements[1:]                                // -1 (interval: start+end)
	rs.Set("net4").Elements[1] = vel(ruleset.Accept, prefix("10.10.0.0/16"))               // interval map verdict: -1 +1
	rs.Chain("pol/b").Rules = append(rs.Chain("pol/b").Rules[:0:0],
		ruleset.Rule{Matches: []ruleset.Match{lookup("hosts4", ruleset.FieldIPv4Saddr)}, Verdict: ruleset.Accept},
		ruleset.Rule{Verdict: ruleset.Drop, Comment: "default deny"}) // rewrite: 1 + 2
	const wantOps = 2 + 2 + 2 + 1 + 2 + 3
	if ops := ruleset.Diff(normalized(old), normalized(rs)).Ops(); ops != wantOps {
		t.Fatalf("test bug: diff has %d ops, want %d", ops, wantOps)
	}
	res := apply(t, d, rs, dataplane.ApplyOptions{})
	if res.Full || res.Ops != wantOps {
		t.Errorf("incremental apply: got %+v, want %d ops, not full", res, wantOps)
	}
	requireKernel(t, d, rs)

	res = apply(t, d, rs, dataplane.ApplyOptions{})
	if res.Full || res.Ops != 0 {
		t.Errorf("unchanged apply: got %+v, want 0 ops", res)
	}

	// New sets and chains (a new map jumping to a new chain), deleted ones, in one go.
	rs2 := rs.Clone()
	rs2.Chains = append(rs2.Chains, &ruleset.Chain{Name: "pol/c", Comment: "new", Rules: []ruleset.Rule{{Verdict: ruleset.Accept}}})
	rs2.Sets = append(rs2.Sets, &ruleset.Set{Name: "iso4b", IsMap: true, Key: v4, Elements: []ruleset.Element{
		vel(ruleset.Jump("pol/c"), ruleset.Addr(addr("10.0.0.9"))),
	}})
	rs2.Chain("forward").Rules = append(rs2.Chain("forward").Rules, ruleset.Rule{VMap: &ruleset.VMap{Fields: []ruleset.Field{ruleset.FieldIPv4Daddr}, Map: "iso4b"}})
	// Drop chain pol/b: it is the target of goto rules and map elements, which go too.
	rs2.Chains = removeNamed(rs2.Chains, "pol/b", func(c *ruleset.Chain) string { return c.Name })
	rs2.Set("iso4").Elements = rs2.Set("iso4").Elements[:1]
	rs2.Chain("pol/a").Rules = rs2.Chain("pol/a").Rules[:len(rs2.Chain("pol/a").Rules)-1]
	rs2.Sets = removeNamed(rs2.Sets, "exact4", func(s *ruleset.Set) string { return s.Name })
	rs2.Chain("pol/a").Rules = removeRulesUsing(rs2.Chain("pol/a").Rules, "exact4")
	if err := rs2.Validate(); err != nil {
		t.Fatal(err)
	}
	ch := ruleset.Diff(normalized(rs), normalized(rs2))
	res = apply(t, d, rs2, dataplane.ApplyOptions{})
	if res.Full || res.Ops != ch.Ops() {
		t.Errorf("structural incremental apply: got %+v, want %d ops, not full", res, ch.Ops())
	}
	requireKernel(t, d, rs2)

	// A set whose type changes needs a full replace.
	rs3 := rs2.Clone()
	rs3.Set("hosts4").Interval = true
	res = apply(t, d, rs3, dataplane.ApplyOptions{})
	if !res.Full {
		t.Errorf("set type change: got %+v, want a full replace", res)
	}
	requireKernel(t, d, rs3)
	// So does Full.
	if res = apply(t, d, rs3, dataplane.ApplyOptions{Full: true}); !res.Full {
		t.Errorf("Full: got %+v", res)
	}
	requireKernel(t, d, rs3)
}

func normalized(rs *ruleset.Ruleset) *ruleset.Ruleset {
	c := rs.Clone()
	c.Normalize()
	return c
}

// removeNamed returns objs without the one named name (objs itself is left alone).
func removeNamed[T any](objs []T, name string, nameOf func(T) string) []T {
	return slices.DeleteFunc(slices.Clone(objs), func(o T) bool { return nameOf(o) == name })
}

func removeRulesUsing(rules []ruleset.Rule, set string) []ruleset.Rule {
	var out []ruleset.Rule
	for _, r := range rules {
		uses := false
		for _, m := range r.Matches {
			uses = uses || m.Set == set
		}
		if !uses {
			out = append(out, r)
		}
	}
	return out
}

// (c) changes made behind the dataplane's back are found and repaired by ReadBack.
func TestDriftRepair(t *testing.T) {
	ns, d, rs := sampleApplied(t)
	tbl := []string{"inet", DefaultTable}
	const polB = "pol/b" // nft 1.0.6 takes names with '/' bare, not quoted

	for _, tc := range []struct {
		name     string
		mutate   [][]string
		wantFull bool
		check    func(t *testing.T, read *ruleset.Ruleset)
	}{
		{name: "flush table", mutate: [][]string{{"flush", "table", "inet", DefaultTable}}},
		{name: "delete table", mutate: [][]string{{"delete", "table", "inet", DefaultTable}}, wantFull: true,
			check: func(t *testing.T, read *ruleset.Ruleset) {
				if read != nil {
					t.Errorf("Read after delete: got a table")
				}
			}},
		{name: "delete elements", mutate: [][]string{
			{"delete", "element", "inet", DefaultTable, "pods4", "{ 192.168.1.1, 10.0.0.0/8 }"},
			{"delete", "element", "inet", DefaultTable, "svc4", "{ 10.1.2.3 . udp . 53 }"},
			{"delete", "element", "inet", DefaultTable, "iso4", "{ 10.0.0.1 }"},
		}},
		{name: "add elements", mutate: [][]string{
			{"add", "element", "inet", DefaultTable, "pods4", "{ 1.2.3.4 }"},
			{"add", "element", "inet", DefaultTable, "iso6", "{ fd00::9 : drop }"},
		}},
		{name: "add decodable rule", mutate: [][]string{append(append([]string{"add", "rule"}, tbl...), polB, "accept")},
			check: func(t *testing.T, read *ruleset.Ruleset) {
				if r := read.Chain("pol/b").Rules; len(r) != 2 || r[1].Verdict != ruleset.Accept {
					t.Errorf("Read: pol/b rules %v", r)
				}
			}},
		{name: "add undecodable rule", mutate: [][]string{append(append([]string{"insert", "rule"}, tbl...), "forward", "tcp", "dport", "22", "accept")},
			check: func(t *testing.T, read *ruleset.Ruleset) {
				r := read.Chain("forward").Rules[0]
				if !strings.HasPrefix(r.Comment, "undecodable: ") || r.Verdict.Kind != ruleset.VerdictNone || r.Counter {
					t.Errorf("Read: hand-made rule came back as %q", ruleset.FormatRule(r))
				}
			}},
		{name: "rule with nft's own encoding", mutate: [][]string{append(append([]string{"add", "rule"}, tbl...), polB, "ip", "saddr", ".", "meta", "l4proto", ".", "th", "dport", "@svc4", "accept")},
			check: func(t *testing.T, read *ruleset.Ruleset) {
				// nft adds a no-op byteorder expression for l4proto in a concatenation.
				if r := read.Chain("pol/b").Rules[1]; !strings.HasPrefix(r.Comment, "undecodable: ") {
					t.Errorf("Read: nft-made rule came back as %q", ruleset.FormatRule(r))
				}
			}},
		{name: "extra chain and foreign set", mutate: [][]string{
			append(append([]string{"add", "chain"}, tbl...), "extra"),
			append(append([]string{"add", "set"}, tbl...), "macs", "{ type ether_addr; }"),
		}},
		{name: "set with the same name but other type", mutate: [][]string{
			append(append([]string{"flush", "chain"}, tbl...), "pol/a"),
			append(append([]string{"delete", "set"}, tbl...), "ports"),
			append(append([]string{"add", "set"}, tbl...), "ports", "{ type inet_proto . inet_service; }"),
		}, wantFull: true},
		{name: "base chain policy", mutate: [][]string{
			append(append([]string{"add", "chain"}, tbl...), "output", "{ type filter hook output priority 5; policy drop; }"),
		}, wantFull: true},
		{name: "chain comment", mutate: [][]string{
			append(append([]string{"flush", "chain"}, tbl...), "forward"),
			append(append([]string{"delete", "chain"}, tbl...), "forward"),
			append(append([]string{"add", "chain"}, tbl...), "forward", "{ type filter hook forward priority 0; policy accept; }"),
		}, wantFull: true},
		{name: "dormant table", mutate: [][]string{append([]string{"add", "table"}, "inet", DefaultTable, "{ flags dormant; }")}, wantFull: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, args := range tc.mutate {
				nft(t, ns, args...)
			}
			read, err := d.Read(context.Background())
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if read != nil && ruleset.Diff(normalized(rs), read).Empty() {
				t.Fatalf("Read does not see the change")
			}
			if tc.check != nil {
				tc.check(t, read)
			}
			res := apply(t, d, rs, dataplane.ApplyOptions{ReadBack: true})
			if !res.Drift || res.Full != tc.wantFull || res.Ops == 0 {
				t.Errorf("ReadBack apply: got %+v, want drift, full=%v", res, tc.wantFull)
			}
			requireKernel(t, d, rs)
			res = apply(t, d, rs, dataplane.ApplyOptions{ReadBack: true})
			if res.Drift || res.Full || res.Ops != 0 {
				t.Errorf("second ReadBack apply: got %+v, want nothing to do", res)
			}
		})
	}
	// Without ReadBack the dataplane trusts its memory: drift goes unnoticed.
	nft(t, ns, "flush", "chain", "inet", DefaultTable, polB)
	if res := apply(t, d, rs, dataplane.ApplyOptions{}); res.Ops != 0 || res.Drift {
		t.Errorf("apply without ReadBack: got %+v", res)
	}
}

// (d) big sets: chunked element lists, a big batch, and incremental removal.
func TestLargeSets(t *testing.T) {
	ns := newNetNS(t)
	d := newDataplane(t, ns)
	const n = 20000
	hosts := &ruleset.Set{Name: "hosts", Key: v4}
	ranges := &ruleset.Set{Name: "ranges", Key: v4, Interval: true}
	ranges6 := &ruleset.Set{Name: "ranges6", Key: v6, Interval: true}
	svc := &ruleset.Set{Name: "svc", Key: v6pp, Interval: true}
	for i := range n {
		hosts.Elements = append(hosts.Elements, el(ruleset.Addr(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))))
		// /25 ranges in pairs: the second of a pair starts right after the first.
		b := uint32(11)<<24 + uint32(i/2)*512 + uint32(i%2)*128
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(b >> 24), byte(b >> 16), byte(b >> 8), byte(b)}), 25)
		ranges.Elements = append(ranges.Elements, el(ruleset.AddrRange(p.Addr(), ruleset.LastAddr(p))))
	}
	for i := range n / 4 {
		a := netip.AddrFrom16([16]byte{0xfd, 0, 0, 0, 0, 0, byte(i >> 8), byte(i), 0, 0, 0, 0, 0, 0, 0, 0})
		p := netip.PrefixFrom(a, 64)
		ranges6.Elements = append(ranges6.Elements, el(ruleset.AddrRange(p.Addr(), ruleset.LastAddr(p))))
		svc.Elements = append(svc.Elements, el(ruleset.AddrRange(p.Addr(), ruleset.LastAddr(p)), tcp, ruleset.PortRange(uint16(i%1000), uint16(i%1000)+10)))
	}
	rs := &ruleset.Ruleset{Table: DefaultTable, Sets: []*ruleset.Set{hosts, ranges, ranges6, svc}, Chains: []*ruleset.Chain{
		{Name: "forward", Base: &ruleset.BaseChain{Hook: ruleset.HookForward}, Rules: []ruleset.Rule{
			{Matches: []ruleset.Match{lookup("hosts", ruleset.FieldIPv4Saddr)}, Verdict: ruleset.Accept},
			{Matches: []ruleset.Match{lookup("ranges", ruleset.FieldIPv4Saddr)}, Verdict: ruleset.Accept},
			{Matches: []ruleset.Match{lookup("ranges6", ruleset.FieldIPv6Saddr)}, Verdict: ruleset.Accept},
			{Matches: []ruleset.Match{lookup("svc", f6pp...)}, Verdict: ruleset.Accept},
		}},
	}}
	if err := rs.Validate(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	res := apply(t, d, rs, dataplane.ApplyOptions{})
	t.Logf("full apply of %d elements: %v", rs.Stats().Elements, time.Since(start))
	if !res.Full {
		t.Errorf("got %+v", res)
	}
	start = time.Now()
	requireKernel(t, d, rs)
	t.Logf("read back: %v", time.Since(start))

	rs2 := rs.Clone()
	rs2.Set("hosts").Elements = rs2.Set("hosts").Elements[1000:]
	rs2.Set("ranges").Elements = rs2.Set("ranges").Elements[:n-1500]
	rs2.Set("svc").Elements = rs2.Set("svc").Elements[100:]
	start = time.Now()
	res = apply(t, d, rs2, dataplane.ApplyOptions{})
	t.Logf("incremental removal: %v", time.Since(start))
	if res.Full || res.Ops != 2600 {
		t.Errorf("incremental removal: got %+v, want 2600 ops", res)
	}
	requireKernel(t, d, rs2)
}

// (e) a batch the kernel rejects changes nothing, and the next apply is a full one.
func TestKernelRejects(t *testing.T) {
	_, d, rs := sampleApplied(t)

	// Validate does not look for overlaps in concatenations; the kernel's pipapo
	// backend refuses them.
	bad := sample()
	bad.Set("pods4").Elements = bad.Set("pods4").Elements[1:] // a change that would go first
	bad.Set("svc4").Elements = append(bad.Set("svc4").Elements, el(prefix("10.0.0.0/24"), tcp, ruleset.PortRange(85, 95)))
	if err := bad.Validate(); err != nil {
		t.Fatalf("test bug: %v", err)
	}
	_, err := d.Apply(context.Background(), bad, dataplane.ApplyOptions{})
	if err == nil {
		t.Fatal("Apply of overlapping elements succeeded")
	}
	t.Logf("error: %v", err)
	if !errors.Is(err, syscall.EEXIST) || !strings.Contains(err.Error(), `set "svc4"`) || !strings.Contains(err.Error(), "10.0.0.0/24 . tcp . 85-95") {
		t.Errorf("error does not say what failed: %v", err)
	}
	requireKernel(t, d, rs) // intact, including pods4

	// Same with a full replace: the old table stays.
	if _, err := d.Apply(context.Background(), bad, dataplane.ApplyOptions{Full: true}); err == nil {
		t.Fatal("full Apply of overlapping elements succeeded")
	}
	requireKernel(t, d, rs)

	// The next apply replaces the table.
	rs2 := sample()
	rs2.Set("pods4").Elements = rs2.Set("pods4").Elements[1:]
	if res := apply(t, d, rs2, dataplane.ApplyOptions{}); !res.Full {
		t.Errorf("apply after a failure: got %+v, want a full replace", res)
	}
	requireKernel(t, d, rs2)
	if res := apply(t, d, rs, dataplane.ApplyOptions{}); res.Full || res.Ops != 1 {
		t.Errorf("apply after recovery: got %+v, want 1 incremental op", res)
	}

	// A ruleset Validate refuses never reaches the kernel, and also forces a full
	// replace next time.
	invalid := sample()
	invalid.Chain("pol/b").Rules = append(invalid.Chain("pol/b").Rules, ruleset.Rule{Verdict: ruleset.Jump("nowhere")})
	if _, err := d.Apply(context.Background(), invalid, dataplane.ApplyOptions{}); err == nil || !strings.Contains(err.Error(), "invalid ruleset") {
		t.Fatalf("Apply of an invalid ruleset: %v", err)
	}
	requireKernel(t, d, rs)
	if res := apply(t, d, rs, dataplane.ApplyOptions{}); !res.Full {
		t.Errorf("apply after a validation failure: got %+v, want a full replace", res)
	}

	// A ruleset for another table is refused.
	other := sample()
	other.Table = "other"
	if _, err := d.Apply(context.Background(), other, dataplane.ApplyOptions{}); err == nil {
		t.Errorf("Apply for another table succeeded")
	}
}

// (f) Delete.
func TestDelete(t *testing.T) {
	ns := newNetNS(t)
	d := newDataplane(t, ns)
	// Another table in the namespace is never touched.
	nft(t, ns, "add", "table", "inet", "bystander")
	nft(t, ns, "add", "chain", "inet", "bystander", "c", "{ type filter hook forward priority 0; policy drop; }")

	if err := d.Delete(context.Background()); err != nil {
		t.Fatalf("Delete of an absent table: %v", err)
	}
	rs := sample()
	apply(t, d, rs, dataplane.ApplyOptions{})
	if err := d.Delete(context.Background()); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if got, err := d.Read(context.Background()); err != nil || got != nil {
		t.Fatalf("Read after Delete: %v, %v", got, err)
	}
	if out := nft(t, ns, "list", "tables"); strings.Contains(out, DefaultTable) || !strings.Contains(out, "bystander") {
		t.Errorf("tables after Delete:\n%s", out)
	}
	if err := d.Delete(context.Background()); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
	// After Delete the next apply is full.
	if res := apply(t, d, rs, dataplane.ApplyOptions{}); !res.Full {
		t.Errorf("apply after Delete: %+v", res)
	}
	requireKernel(t, d, rs)
	if out := nft(t, ns, "list", "chain", "inet", "bystander", "c"); !strings.Contains(out, "policy drop") {
		t.Errorf("bystander table changed:\n%s", out)
	}
}

// Other options: table name and namespace by path.
func TestOptions(t *testing.T) {
	ns := newNetNS(t)
	path := fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), ns)
	d := newDataplane(t, ns, WithTable("custom"), WithNetNSPath(path), WithSocketBuffer(1<<20))
	if d.Table() != "custom" {
		t.Fatalf("Table() = %q", d.Table())
	}
	rs := sample()
	rs.Table = "custom"
	apply(t, d, rs, dataplane.ApplyOptions{})
	requireKernel(t, d, rs)
	if out := nft(t, ns, "list", "tables"); strings.TrimSpace(out) != "table inet custom" {
		t.Errorf("tables: %q", out)
	}
	if _, err := New(WithNetNSPath("/nonexistent")); err == nil {
		t.Errorf("New with a missing namespace succeeded")
	}
	if _, err := New(WithTable("")); err == nil {
		t.Errorf("New with an empty table name succeeded")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := d.Apply(ctx, rs, dataplane.ApplyOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Apply with a cancelled context: %v", err)
	}
}

// udpSocket opens a UDP socket in the namespace: a locked thread enters it, creates the
// socket and is then discarded.
func udpSocket(t *testing.T, ns, family int) int {
	t.Helper()
	var fd int
	if err := testns.In(ns, func() error {
		var err error
		fd, err = unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		return err
	}); err != nil {
		t.Fatalf("socket in namespace: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// Packets through the kernel: lookups in each kind of set match exactly what they
// should. A packet dropped in the output hook fails sendto with EPERM.
func TestPackets(t *testing.T) {
	ns := newNetNS(t)
	if _, err := inNS(t, ns, "ip", "link", "set", "lo", "up"); err != nil {
		testns.SkipUnlessRequired(t, "cannot bring up lo: %v", err)
	}
	d := newDataplane(t, ns)
	rs := &ruleset.Ruleset{Table: DefaultTable,
		Sets: []*ruleset.Set{
			{Name: "blocked", Key: v4, Interval: true, Elements: []ruleset.Element{
				el(ruleset.AddrRange(addr("127.0.0.10"), addr("127.0.0.20"))),
				el(ruleset.AddrRange(addr("127.0.0.21"), addr("127.0.0.22"))), // adjacent
				el(prefix("127.1.0.0/16")),
			}},
			{Name: "svc", Key: v4pp, Interval: true, Elements: []ruleset.Element{
				el(prefix("127.0.1.0/24"), udp, ruleset.PortRange(1000, 2000)),
			}},
			{Name: "ports", Key: pp, Interval: true, Elements: []ruleset.Element{el(udp, ruleset.PortRange(3000, 3005))}},
			{Name: "exact", Key: v4pp, Elements: []ruleset.Element{el(ruleset.Addr(addr("127.0.4.1")), udp, ruleset.PortRange(53, 53))}},
			{Name: "vm", IsMap: true, Key: v4, Elements: []ruleset.Element{
				vel(ruleset.Jump("deny"), ruleset.Addr(addr("127.0.2.1"))),
				vel(ruleset.Accept, ruleset.Addr(addr("127.0.2.2"))),
			}},
			{Name: "svc6", Key: v6pp, Interval: true, Elements: []ruleset.Element{el(ruleset.Addr(addr("::1")), udp, ruleset.PortRange(4000, 4000))}},
			{Name: "all4", Key: v4, Interval: true, Elements: []ruleset.Element{el(prefix("0.0.0.0/0"))}},
		},
		Chains: []*ruleset.Chain{
			{Name: "out", Base: &ruleset.BaseChain{Hook: ruleset.HookOutput}, Rules: []ruleset.Rule{
				{Matches: []ruleset.Match{{Kind: ruleset.MatchL4Proto, Proto: ruleset.ProtoUDP}, lookup("all4", ruleset.FieldIPv4Daddr), {Kind: ruleset.MatchCtState, CtStates: []string{"new"}}}, Verdict: ruleset.Jump("check")},
				{Matches: []ruleset.Match{lookup("svc6", ruleset.FieldIPv6Daddr, ruleset.FieldL4Proto, ruleset.FieldDPort)}, Verdict: ruleset.Drop},
			}},
			{Name: "check", Rules: []ruleset.Rule{
				{Matches: []ruleset.Match{lookup("blocked", ruleset.FieldIPv4Daddr)}, Counter: true, Verdict: ruleset.Drop},
				{Matches: []ruleset.Match{lookup("svc", ruleset.FieldIPv4Daddr, ruleset.FieldL4Proto, ruleset.FieldDPort)}, Verdict: ruleset.Drop},
				{Matches: []ruleset.Match{lookup("ports", fpp...)}, Verdict: ruleset.Drop},
				{Matches: []ruleset.Match{lookup("exact", ruleset.FieldIPv4Daddr, ruleset.FieldL4Proto, ruleset.FieldDPort)}, Verdict: ruleset.Drop},
				{VMap: &ruleset.VMap{Fields: []ruleset.Field{ruleset.FieldIPv4Daddr}, Map: "vm"}},
			}},
			{Name: "deny", Rules: []ruleset.Rule{{Verdict: ruleset.Drop}}},
		},
	}
	apply(t, d, rs, dataplane.ApplyOptions{})
	s4 := udpSocket(t, ns, unix.AF_INET)
	s6 := udpSocket(t, ns, unix.AF_INET6)
	send := func(dst string, port int) bool {
		a := addr(dst)
		var sa unix.Sockaddr
		fd := s4
		if a.Is4() {
			sa = &unix.SockaddrInet4{Port: port, Addr: a.As4()}
		} else {
			sa, fd = &unix.SockaddrInet6{Port: port, Addr: a.As16()}, s6
		}
		err := unix.Sendto(fd, []byte("x"), 0, sa)
		if err != nil && err != unix.EPERM {
			t.Fatalf("sendto %s:%d: %v", dst, port, err)
		}
		return err == nil
	}
	for _, c := range []struct {
		dst  string
		port int
		pass bool
	}{
		{"127.0.0.1", 9, true}, // below the first interval
		{"127.0.0.9", 9, true},
		{"127.0.0.10", 9, false},
		{"127.0.0.15", 9, false},
		{"127.0.0.20", 9, false},
		{"127.0.0.21", 9, false}, // the adjacent interval
		{"127.0.0.22", 9, false},
		{"127.0.0.23", 9, true},
		{"127.0.255.255", 9, true},
		{"127.1.0.0", 9, false},
		{"127.1.255.255", 9, false},
		{"127.2.0.0", 9, true},
		{"127.0.1.5", 999, true},
		{"127.0.1.5", 1000, false},
		{"127.0.1.5", 2000, false},
		{"127.0.1.5", 2001, true},
		{"127.0.3.1", 3000, false},
		{"127.0.3.1", 3005, false},
		{"127.0.3.1", 3006, true},
		{"127.0.4.1", 53, false},
		{"127.0.4.1", 54, true},
		{"127.0.4.2", 53, true},
		{"127.0.2.1", 9, false}, // vmap -> jump deny
		{"127.0.2.2", 9, true},
		{"127.0.2.3", 9, true},
		{"::1", 4000, false},
		{"::1", 4001, true},
	} {
		if got := send(c.dst, c.port); got != c.pass {
			t.Errorf("udp to %s port %d: passed=%v, want %v", c.dst, c.port, got, c.pass)
		}
	}

	// After an incremental change, the new elements match and the removed ones don't.
	rs2 := rs.Clone()
	rs2.Set("blocked").Elements = []ruleset.Element{el(ruleset.AddrRange(addr("127.0.0.10"), addr("127.0.0.20"))), el(ruleset.Addr(addr("127.0.0.30")))}
	if res := apply(t, d, rs2, dataplane.ApplyOptions{}); res.Full || res.Ops != 3 {
		t.Fatalf("incremental: %+v", res)
	}
	for _, c := range []struct {
		dst  string
		pass bool
	}{{"127.0.0.20", false}, {"127.0.0.21", true}, {"127.0.0.29", true}, {"127.0.0.30", false}, {"127.0.0.31", true}, {"127.1.0.1", true}} {
		if got := send(c.dst, 9); got != c.pass {
			t.Errorf("after update: udp to %s: passed=%v, want %v", c.dst, got, c.pass)
		}
	}
}
