package netlink

// Encoding and decoding without a kernel: what encodeRule and kernelElements produce,
// passed through the same decoders Read uses, gives back the IR.

import (
	"bytes"
	"strings"
	"testing"

	"github.com/google/nftables/expr"
	nl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// asDumped turns expressions into what a rule dump carries: name and data attributes.
func asDumped(t *testing.T, exprs []expr.Any) []rawExpr {
	t.Helper()
	var out []rawExpr
	for _, e := range exprs {
		b, err := expr.Marshal(family, e)
		if err != nil {
			t.Fatal(err)
		}
		ad, err := nl.NewAttributeDecoder(b)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, parseExpr(ad))
	}
	return out
}

func roundTripRule(t *testing.T, r ruleset.Rule) ruleset.Rule {
	t.Helper()
	exprs, ud, err := encodeRule(r)
	if err != nil {
		t.Fatalf("encode %q: %v", ruleset.FormatRule(r), err)
	}
	return decodeRule(rawRule{exprs: asDumped(t, exprs), udata: ud})
}

func TestRuleRoundTrip(t *testing.T) {
	rules := []ruleset.Rule{
		{Matches: []ruleset.Match{{Kind: ruleset.MatchCtState, CtStates: []string{"related", "established"}}}, Verdict: ruleset.Accept},
		{Matches: []ruleset.Match{{Kind: ruleset.MatchCtState, CtStates: []string{"new", "new"}}}, Verdict: ruleset.Accept},
		{Matches: []ruleset.Match{lookup("s", ruleset.FieldIPv6Saddr), {Kind: ruleset.MatchNFProto, Family: ruleset.IPv6}}, Verdict: ruleset.Drop},
		{Matches: []ruleset.Match{{Kind: ruleset.MatchNFProto, Family: ruleset.IPv4}, {Kind: ruleset.MatchNFProto, Family: ruleset.IPv4}}, Counter: true},
		{Matches: []ruleset.Match{lookup("s", ruleset.FieldIPv6Saddr, ruleset.FieldIPv6Daddr, ruleset.FieldL4Proto, ruleset.FieldDPort)}, Verdict: ruleset.Accept},
		{Matches: []ruleset.Match{{Kind: ruleset.MatchCtState, CtStates: []string{"established"}}}, VMap: &ruleset.VMap{Fields: fpp, Map: "m"}, Comment: strings.Repeat("x", ruleset.MaxCommentLen)},
		{Matches: []ruleset.Match{{Kind: ruleset.MatchNFProto, Family: ruleset.IPv6}}, Counter: true, VMap: &ruleset.VMap{Fields: []ruleset.Field{ruleset.FieldIPv6Daddr}, Map: "m"}},
		{Verdict: ruleset.Jump("x"), Comment: "with \"quotes\" and ünïcode"},
		{Matches: []ruleset.Match{{Kind: ruleset.MatchCtMark, MarkMask: 0x30000000, Mark: 0x10000000}}, Counter: true, Verdict: ruleset.Drop},
	}
	for _, c := range sample().Chains {
		rules = append(rules, c.Rules...)
	}
	// A rule reads back in its canonical form (ct states in bit order, no explicit
	// nfproto check where the implicit guard stands), which Normalize gives desired
	// rulesets too.
	for _, r := range rules {
		got := roundTripRule(t, r)
		want, _ := ruleset.CanonicalRule(r)
		if ruleset.FormatRule(got) != ruleset.FormatRule(want) {
			t.Errorf("round trip of %s:\n got %s\nwant %s", ruleset.FormatRule(r), ruleset.FormatRule(got), ruleset.FormatRule(want))
		}
	}
}

// A rule is decoded only when it is exactly what encodeRule writes; otherwise it comes
// back as a rule no desired rule can equal.
func TestRuleNotOurs(t *testing.T) {
	isUndecodable := func(r ruleset.Rule) bool {
		return strings.HasPrefix(r.Comment, "undecodable: ") && r.Verdict.Kind == ruleset.VerdictNone && r.VMap == nil && !r.Counter
	}
	guarded := ruleset.Rule{Matches: []ruleset.Match{lookup("s", ruleset.FieldIPv4Saddr)}, Counter: true, Verdict: ruleset.Accept}
	exprs, ud, err := encodeRule(guarded)
	if err != nil {
		t.Fatal(err)
	}
	// The userdata is the comment only: the expressions alone give the rule back.
	if len(ud) != 0 {
		t.Errorf("userdata %x for a rule without a comment", ud)
	}
	if got := decodeRule(rawRule{exprs: asDumped(t, exprs)}); ruleset.FormatRule(got) != ruleset.FormatRule(guarded) {
		t.Errorf("from expressions alone: %s", ruleset.FormatRule(got))
	}
	for name, ex := range map[string][]expr.Any{
		"no guard":              exprs[2:],
		"counter in the middle": {exprs[0], exprs[1], exprs[4], exprs[2], exprs[3], exprs[5]},
		"other register": {exprs[0], exprs[1], &expr.Payload{DestRegister: 2, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Lookup{SourceRegister: 2, SetName: "s"}, exprs[4], exprs[5]},
		"tcp dport 22": {&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{6}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 22}}, exprs[5]},
		"log":                  {&expr.Log{}, exprs[5]},
		"verdict then counter": {exprs[5], exprs[4]},
		"empty":                nil,
	} {
		if got := decodeRule(rawRule{exprs: asDumped(t, ex), udata: ud}); !isUndecodable(got) {
			t.Errorf("%s: decoded as %q", name, ruleset.FormatRule(got))
		}
	}
}

// asDumpedElems turns kernel elements into what an element dump carries.
func asDumpedElems(ks []kelem) []rawElem {
	var out []rawElem
	for _, k := range ks {
		e := rawElem{key: k.key, keyEnd: k.keyEnd, verdict: k.verdict, hasData: k.verdict != nil}
		if k.intervalEnd {
			e.flags = unix.NFT_SET_ELEM_INTERVAL_END
		}
		out = append(out, e)
	}
	return out
}

func rawSetOf(t *testing.T, s *ruleset.Set) rawSet {
	t.Helper()
	magic, keyLen, err := setKey(s)
	if err != nil {
		t.Fatal(err)
	}
	rs := rawSet{name: s.Name, flags: setFlags(s), keyType: magic, keyLen: keyLen, hasDataType: s.IsMap, comment: s.Comment}
	if s.IsMap {
		rs.dataType = nftDataVerdict
	}
	return rs
}

func TestSetRoundTrip(t *testing.T) {
	for _, s := range sample().Sets {
		var ks []kelem
		for _, e := range s.Elements {
			ks = append(ks, kernelElements(s, e, false)...)
		}
		got := decodeSet(rawSetOf(t, s), asDumpedElems(ks))
		want := s.Clone()
		want.SortElements()
		got.SortElements()
		if ruleset.Render(&ruleset.Ruleset{Sets: []*ruleset.Set{got}}) != ruleset.Render(&ruleset.Ruleset{Sets: []*ruleset.Set{want}}) {
			t.Errorf("set %s:\n got %s\nwant %s", s.Name, ruleset.Render(&ruleset.Ruleset{Sets: []*ruleset.Set{got}}), ruleset.Render(&ruleset.Ruleset{Sets: []*ruleset.Set{want}}))
		}
	}
}

// nft writes interval sets a little differently: a leading "0 INTERVAL_END" element and
// no end element between adjacent ranges. Read understands both.
func TestIntervalsAsNftWritesThem(t *testing.T) {
	s := &ruleset.Set{Name: "s", Key: v4, Interval: true}
	b := func(a string) []byte { return addr(a).AsSlice() }
	elems := []rawElem{
		{key: b("0.0.0.0"), flags: unix.NFT_SET_ELEM_INTERVAL_END},
		{key: b("10.0.0.0")},
		{key: b("10.0.1.0")}, // adjacent: no end element in between
		{key: b("10.0.2.0"), flags: unix.NFT_SET_ELEM_INTERVAL_END},
		{key: b("200.0.0.0")}, // open to the maximum
	}
	got := decodeSet(rawSetOf(t, s), elems)
	want := []ruleset.Element{el(prefix("10.0.0.0/24")), el(prefix("10.0.1.0/24")), el(ruleset.AddrRange(addr("200.0.0.0"), addr("255.255.255.255")))}
	if len(got.Elements) != len(want) {
		t.Fatalf("got %v", got.Elements)
	}
	for i := range want {
		if !got.Elements[i].Equal(want[i]) {
			t.Errorf("element %d: got %s, want %s", i, ruleset.FormatElement(s, got.Elements[i]), ruleset.FormatElement(s, want[i]))
		}
	}
}

func TestElementLayout(t *testing.T) {
	s := &ruleset.Set{Name: "c", Key: v4pp, Interval: true}
	ks := kernelElements(s, el(prefix("10.0.0.0/24"), tcp, ruleset.PortRange(80, 90)), false)
	if len(ks) != 1 {
		t.Fatalf("got %d kernel elements", len(ks))
	}
	// Every field padded to 4 bytes: addr, proto + 3 zero bytes, port + 2 zero bytes.
	if want := []byte{10, 0, 0, 0, 6, 0, 0, 0, 0, 80, 0, 0}; !bytes.Equal(ks[0].key, want) {
		t.Errorf("key %x, want %x", ks[0].key, want)
	}
	if want := []byte{10, 0, 0, 255, 6, 0, 0, 0, 0, 90, 0, 0}; !bytes.Equal(ks[0].keyEnd, want) {
		t.Errorf("key end %x, want %x", ks[0].keyEnd, want)
	}
	// A single-field range has a start and an end one past it; none at the maximum.
	s4 := &ruleset.Set{Name: "s", Key: v4, Interval: true}
	ks = kernelElements(s4, el(ruleset.AddrRange(addr("10.0.0.0"), addr("10.0.0.255"))), false)
	if len(ks) != 2 || !bytes.Equal(ks[1].key, []byte{10, 0, 1, 0}) || !ks[1].intervalEnd || ks[0].intervalEnd {
		t.Errorf("got %+v", ks)
	}
	ks = kernelElements(s4, el(ruleset.AddrRange(addr("10.0.0.0"), addr("255.255.255.255"))), false)
	if len(ks) != 1 || !ks[0].open {
		t.Errorf("got %+v", ks)
	}
	// A concatenated key field that does not fit its padding shape is kept whole.
	if f, ok := splitConcat(v4pp, []byte{10, 0, 0, 0, 6, 1, 0, 0, 0, 80, 0, 0}); !ok || len(f[1]) != 4 {
		t.Errorf("nonzero padding: %x %v", f, ok)
	}
}

func TestForeignSets(t *testing.T) {
	base := &ruleset.Set{Name: "s", Key: v4, Interval: true}
	for name, mutate := range map[string]func(*rawSet){
		"timeout flag": func(r *rawSet) { r.flags |= unix.NFT_SET_TIMEOUT },
		"ether_addr":   func(r *rawSet) { r.keyType, r.keyLen = 9, 6 },
		"data map":     func(r *rawSet) { r.flags |= unix.NFT_SET_MAP; r.hasDataType, r.dataType = true, 7 },
		"key length":   func(r *rawSet) { r.keyLen = 16 },
	} {
		r := rawSetOf(t, base)
		mutate(&r)
		if got := decodeSet(r, nil); got.SameDefinition(base) {
			t.Errorf("%s: read as a set of ours: %+v", name, got)
		}
	}
}

func TestIncrementDecrement(t *testing.T) {
	for _, c := range []struct{ in, inc []byte }{
		{[]byte{0, 0xff}, []byte{1, 0}},
		{[]byte{1, 2}, []byte{1, 3}},
		{[]byte{0xff, 0xff}, []byte{0, 0}},
	} {
		got, overflow := increment(c.in)
		if !bytes.Equal(got, c.inc) || overflow != bytes.Equal(c.in, []byte{0xff, 0xff}) {
			t.Errorf("increment(%x) = %x, %v", c.in, got, overflow)
		}
		if !overflow && !bytes.Equal(decrement(got), c.in) {
			t.Errorf("decrement(%x) = %x", got, decrement(got))
		}
	}
}
