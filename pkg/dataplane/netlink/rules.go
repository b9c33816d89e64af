package netlink

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	nl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/pkg/dataplane/netlink/nfnl"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// Lifting IR rules to nf_tables expressions (the expression vocabulary the dataplane
// writes; grammar.go reads it back) and NEWRULE messages.

// Registers. A single field is loaded into the 128-bit register 1, as nft does. The
// fields of a concatenation go into consecutive 32-bit registers starting at
// NFT_REG32_00 (the same storage as register 1), each taking ceil(len/4) of them — the
// same layout as the padded set key.
const (
	regVerdict = unix.NFT_REG_VERDICT
	reg1       = unix.NFT_REG_1
	reg32First = unix.NFT_REG32_00
	reg32Last  = unix.NFT_REG32_15
)

var nfprotoOf = map[ruleset.Family]byte{ruleset.IPv4: unix.NFPROTO_IPV4, ruleset.IPv6: unix.NFPROTO_IPV6}

// payloadLoc is where a packet field lies: header, offset and length in bytes.
type payloadLoc struct {
	base     expr.PayloadBase
	off, len uint32
}

// payloadFields are the IR fields read from the packet (FieldL4Proto is meta data),
// both ways: fieldLoad writes them, payloadField reads them back.
var payloadFields = map[ruleset.Field]payloadLoc{
	ruleset.FieldIPv4Saddr:  {expr.PayloadBaseNetworkHeader, 12, 4},
	ruleset.FieldIPv4Daddr:  {expr.PayloadBaseNetworkHeader, 16, 4},
	ruleset.FieldIPv6Saddr:  {expr.PayloadBaseNetworkHeader, 8, 16},
	ruleset.FieldIPv6Daddr:  {expr.PayloadBaseNetworkHeader, 24, 16},
	ruleset.FieldDPort:      {expr.PayloadBaseTransportHeader, 2, 2},
	ruleset.FieldICMPv6Type: {expr.PayloadBaseTransportHeader, 0, 1},
}

// fieldLoad is the expression that loads a packet field into reg.
func fieldLoad(f ruleset.Field, reg uint32) (expr.Any, error) {
	if f == ruleset.FieldL4Proto {
		return &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg}, nil
	}
	loc, ok := payloadFields[f]
	if !ok {
		return nil, fmt.Errorf("unsupported field %q", f)
	}
	return &expr.Payload{DestRegister: reg, Base: loc.base, Offset: loc.off, Len: loc.len}, nil
}

// fieldLoads loads the fields of a lookup and returns the source register of the key.
func fieldLoads(fields []ruleset.Field) ([]expr.Any, uint32, error) {
	if len(fields) == 1 {
		e, err := fieldLoad(fields[0], reg1)
		return []expr.Any{e}, reg1, err
	}
	var out []expr.Any
	reg := uint32(reg32First)
	for _, f := range fields {
		if reg > reg32Last {
			return nil, 0, fmt.Errorf("concatenation %v does not fit in the registers", fields)
		}
		e, err := fieldLoad(f, reg)
		if err != nil {
			return nil, 0, err
		}
		out = append(out, e)
		reg += uint32(padLen(f.KeyType().Len()) / 4)
	}
	if reg > reg32Last+1 {
		return nil, 0, fmt.Errorf("concatenation %v does not fit in the registers", fields)
	}
	return out, reg32First, nil
}

func nfprotoMatch(f ruleset.Family) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{nfprotoOf[f]}},
	}
}

// encodeRule turns an IR rule into expressions and the rule's userdata (its comment).
//
// In an inet table a payload load of an IPv4 or IPv6 header field needs a
// `meta nfproto` check before it, which nft adds implicitly: so does encodeRule, in
// front of the loads of the first lookup reading a field of that family, unless the
// rule matches the family explicitly. An explicit match in that very place encodes the
// same; ruleset.CanonicalRule makes the two one IR rule, so the rule read back needs
// nothing beyond its expressions (no private userdata).
func encodeRule(r ruleset.Rule) ([]expr.Any, []byte, error) {
	explicit := map[ruleset.Family]bool{}
	for _, m := range r.Matches {
		if m.Kind == ruleset.MatchNFProto {
			explicit[m.Family] = true
		}
	}
	guarded := map[ruleset.Family]bool{}
	var out []expr.Any
	guard := func(fields []ruleset.Field) {
		for _, f := range fields {
			fam := f.Family()
			if fam == 0 || explicit[fam] || guarded[fam] {
				continue
			}
			guarded[fam] = true
			out = append(out, nfprotoMatch(fam)...)
		}
	}
	lookup := func(fields []ruleset.Field, l *expr.Lookup) error {
		guard(fields)
		loads, sreg, err := fieldLoads(fields)
		if err != nil {
			return err
		}
		l.SourceRegister = sreg
		out = append(out, loads...)
		out = append(out, l)
		return nil
	}
	for i, m := range r.Matches {
		switch m.Kind {
		case ruleset.MatchLookup:
			if err := lookup(m.Fields, &expr.Lookup{SetName: m.Set, Invert: m.Negate}); err != nil {
				return nil, nil, fmt.Errorf("match %d: %w", i, err)
			}
		case ruleset.MatchNFProto:
			p, ok := nfprotoOf[m.Family]
			if !ok {
				return nil, nil, fmt.Errorf("match %d: unknown family %d", i, m.Family)
			}
			out = append(out,
				&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{p}})
		case ruleset.MatchL4Proto:
			out = append(out,
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{m.Proto}})
		case ruleset.MatchCtState:
			var mask uint32
			for _, s := range m.CtStates {
				bit, ok := ruleset.CtStateBits[s]
				if !ok {
					return nil, nil, fmt.Errorf("match %d: unknown ct state %q", i, s)
				}
				mask |= bit
			}
			if len(m.CtStates) == 0 {
				return nil, nil, fmt.Errorf("match %d: ct state without states", i)
			}
			// The conntrack state is a host-endian u32 in the register.
			out = append(out,
				&expr.Ct{Key: expr.CtKeySTATE, Register: reg1},
				&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
					Mask: binary.NativeEndian.AppendUint32(nil, mask), Xor: make([]byte, 4)},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: make([]byte, 4)})
		case ruleset.MatchCtMark:
			// ct mark & mask == mark; the mark is a host-endian u32 in the register.
			out = append(out,
				&expr.Ct{Key: expr.CtKeyMARK, Register: reg1},
				&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
					Mask: binary.NativeEndian.AppendUint32(nil, m.MarkMask), Xor: make([]byte, 4)},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binary.NativeEndian.AppendUint32(nil, m.Mark)})
		case ruleset.MatchLimit:
			out = append(out, &expr.Limit{Type: expr.LimitTypePkts, Rate: m.Rate, Unit: expr.LimitTimeSecond, Burst: m.Burst})
		default:
			return nil, nil, fmt.Errorf("match %d: unsupported kind %q", i, m.Kind)
		}
	}
	if r.Log != nil {
		l := &expr.Log{Key: 1 << unix.NFTA_LOG_GROUP, Group: r.Log.Group}
		if r.Log.Prefix != "" {
			l.Key |= 1 << unix.NFTA_LOG_PREFIX
			l.Data = []byte(r.Log.Prefix)
		}
		out = append(out, l)
	}
	if r.Counter {
		out = append(out, &expr.Counter{})
	}
	switch {
	case r.VMap != nil:
		if r.Verdict.Kind != ruleset.VerdictNone {
			return nil, nil, fmt.Errorf("rule has both a vmap and a verdict")
		}
		// A lookup that writes the verdict register is a verdict map dispatch.
		if err := lookup(r.VMap.Fields, &expr.Lookup{SetName: r.VMap.Map, IsDestRegSet: true, DestRegister: regVerdict}); err != nil {
			return nil, nil, fmt.Errorf("vmap: %w", err)
		}
	case r.Verdict.Kind != ruleset.VerdictNone:
		code, err := verdictCode(r.Verdict.Kind)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, &expr.Verdict{Kind: code, Chain: r.Verdict.Chain})
	}

	var ud []byte
	if r.Comment != "" {
		ud = userdata.AppendString(ud, udataRuleComment, r.Comment)
	}
	if len(ud) > 255 {
		return nil, nil, fmt.Errorf("comment takes %d bytes of userdata, more than 255", len(ud))
	}
	return out, ud, nil
}

func verdictCode(k ruleset.VerdictKind) (expr.VerdictKind, error) {
	switch k {
	case ruleset.VerdictAccept:
		return expr.VerdictAccept, nil
	case ruleset.VerdictDrop:
		return expr.VerdictDrop, nil
	case ruleset.VerdictJump:
		return expr.VerdictJump, nil
	case ruleset.VerdictGoto:
		return expr.VerdictGoto, nil
	case ruleset.VerdictReturn:
		return expr.VerdictReturn, nil
	}
	return 0, fmt.Errorf("unsupported verdict %q", k)
}

func verdictKind(code int32) ruleset.VerdictKind {
	switch expr.VerdictKind(code) {
	case expr.VerdictAccept:
		return ruleset.VerdictAccept
	case expr.VerdictDrop:
		return ruleset.VerdictDrop
	case expr.VerdictJump:
		return ruleset.VerdictJump
	case expr.VerdictGoto:
		return ruleset.VerdictGoto
	case expr.VerdictReturn:
		return ruleset.VerdictReturn
	}
	// Not in the IR (continue, break, queue...): a kind that no desired element has.
	return ruleset.VerdictKind(fmt.Sprintf("verdict code %d", code))
}

func msgAddRule(table, chain string, idx int, r ruleset.Rule) (nfnl.Message, error) {
	what := fmt.Sprintf("add rule %d of chain %q (%s)", idx, chain, ruleset.FormatRule(r))
	exprs, ud, err := encodeRule(r)
	if err != nil {
		return nfnl.Message{}, fmt.Errorf("chain %q rule %d: %w", chain, idx, err)
	}
	a := &nfnl.Attrs{}
	a.PutString(unix.NFTA_RULE_TABLE, table)
	a.PutString(unix.NFTA_RULE_CHAIN, chain)
	var spans []nfnl.Span
	a.Nested(unix.NFTA_RULE_EXPRESSIONS, func() {
		for i, e := range exprs {
			b, err := expr.Marshal(family, e)
			if err != nil {
				a.SetErr(fmt.Errorf("expression %d: %w", i, err))
				return
			}
			spans = append(spans, nfnl.Span{Off: a.Len(), What: func() string { return fmt.Sprintf("expression %d (%s)", i, exprName(e)) }})
			a.Put(unix.NFTA_LIST_ELEM|unix.NLA_F_NESTED, b)
		}
	})
	if len(ud) > 0 {
		a.Put(nftaRuleUserdata, ud)
	}
	// NLM_F_APPEND: at the end of the chain, in the order given.
	return nfnl.NewMessage(family, unix.NFT_MSG_NEWRULE, nl.Create|nl.HeaderFlags(unix.NLM_F_APPEND), a, what, spans)
}
