package netlink

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"syscall"

	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	nl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// The raw* types hold what the kernel dumps, before it is turned into the IR.

type rawTable struct {
	name  string
	flags uint32
}

type rawSet struct {
	name, table                      string
	flags, keyType, keyLen, dataType uint32
	hasDataType                      bool
	fieldLens                        []uint32
	comment                          string
}

type rawElem struct {
	key, keyEnd []byte
	flags       uint32
	verdict     *ruleset.Verdict
	hasData     bool
}

type rawChain struct {
	name, table, typ string
	hasHook          bool
	hooknum          uint32
	prio             int32
	dev              bool
	policy           *uint32
	flags            uint32
	comment          string
}

type rawExpr struct {
	name string
	data []byte
}

type rawRule struct {
	table, chain string
	exprs        []rawExpr
	udata        []byte
}

func decoder(m syscall.NetlinkMessage) (*nl.AttributeDecoder, error) {
	if len(m.Data) < nfgenLen {
		return nil, fmt.Errorf("short nf_tables message")
	}
	ad, err := nl.NewAttributeDecoder(m.Data[nfgenLen:])
	if err != nil {
		return nil, err
	}
	ad.ByteOrder = binary.BigEndian
	return ad, nil
}

func nestedDecoder(b []byte) (*nl.AttributeDecoder, error) {
	ad, err := nl.NewAttributeDecoder(b)
	if err != nil {
		return nil, err
	}
	ad.ByteOrder = binary.BigEndian
	return ad, nil
}

func parseTable(m syscall.NetlinkMessage) (rawTable, error) {
	var t rawTable
	ad, err := decoder(m)
	if err != nil {
		return t, err
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_TABLE_NAME:
			t.name = ad.String()
		case unix.NFTA_TABLE_FLAGS:
			t.flags = ad.Uint32()
		}
	}
	return t, ad.Err()
}

func parseSet(m syscall.NetlinkMessage) (rawSet, error) {
	var s rawSet
	ad, err := decoder(m)
	if err != nil {
		return s, err
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_SET_TABLE:
			s.table = ad.String()
		case unix.NFTA_SET_NAME:
			s.name = ad.String()
		case unix.NFTA_SET_FLAGS:
			s.flags = ad.Uint32()
		case unix.NFTA_SET_KEY_TYPE:
			s.keyType = ad.Uint32()
		case unix.NFTA_SET_KEY_LEN:
			s.keyLen = ad.Uint32()
		case unix.NFTA_SET_DATA_TYPE:
			s.dataType = ad.Uint32()
			s.hasDataType = true
		case unix.NFTA_SET_DESC:
			ad.Nested(func(nad *nl.AttributeDecoder) error {
				for nad.Next() {
					if nad.Type() != nftaSetDescConcat {
						continue
					}
					nad.Nested(func(cad *nl.AttributeDecoder) error {
						for cad.Next() {
							cad.Nested(func(fad *nl.AttributeDecoder) error {
								fad.ByteOrder = binary.BigEndian
								for fad.Next() {
									if fad.Type() == nftaSetFieldLen {
										s.fieldLens = append(s.fieldLens, fad.Uint32())
									}
								}
								return nil
							})
						}
						return nil
					})
				}
				return nil
			})
		case unix.NFTA_SET_USERDATA:
			if c, ok := userdata.GetString(ad.Bytes(), udataSetComment); ok {
				s.comment = c
			}
		}
	}
	return s, ad.Err()
}

// dataValue extracts NFTA_DATA_VALUE from a nested data attribute.
func dataValue(b []byte) []byte {
	ad, err := nestedDecoder(b)
	if err != nil {
		return nil
	}
	for ad.Next() {
		if ad.Type() == unix.NFTA_DATA_VALUE {
			return ad.Bytes()
		}
	}
	return nil
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

// parseVerdictData decodes NFTA_DATA_VERDICT { CODE, CHAIN }.
func parseVerdictData(b []byte) *ruleset.Verdict {
	ad, err := nestedDecoder(b)
	if err != nil {
		return nil
	}
	for ad.Next() {
		if ad.Type() != unix.NFTA_DATA_VERDICT {
			continue
		}
		v := &ruleset.Verdict{}
		ad.Nested(func(vad *nl.AttributeDecoder) error {
			vad.ByteOrder = binary.BigEndian
			for vad.Next() {
				switch vad.Type() {
				case unix.NFTA_VERDICT_CODE:
					v.Kind = verdictKind(int32(vad.Uint32()))
				case unix.NFTA_VERDICT_CHAIN:
					v.Chain = vad.String()
				}
			}
			return nil
		})
		return v
	}
	return nil
}

func parseElems(m syscall.NetlinkMessage) (table, set string, elems []rawElem, err error) {
	ad, err := decoder(m)
	if err != nil {
		return "", "", nil, err
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_SET_ELEM_LIST_TABLE:
			table = ad.String()
		case unix.NFTA_SET_ELEM_LIST_SET:
			set = ad.String()
		case unix.NFTA_SET_ELEM_LIST_ELEMENTS:
			ad.Nested(func(lad *nl.AttributeDecoder) error {
				for lad.Next() {
					var e rawElem
					lad.Nested(func(ead *nl.AttributeDecoder) error {
						ead.ByteOrder = binary.BigEndian
						for ead.Next() {
							switch ead.Type() {
							case unix.NFTA_SET_ELEM_KEY:
								e.key = dataValue(ead.Bytes())
							case nftaSetElemKeyEnd:
								e.keyEnd = dataValue(ead.Bytes())
							case unix.NFTA_SET_ELEM_FLAGS:
								e.flags = ead.Uint32()
							case unix.NFTA_SET_ELEM_DATA:
								e.hasData = true
								e.verdict = parseVerdictData(ead.Bytes())
							}
						}
						return nil
					})
					elems = append(elems, e)
				}
				return nil
			})
		}
	}
	return table, set, elems, ad.Err()
}

func parseChain(m syscall.NetlinkMessage) (rawChain, error) {
	var c rawChain
	ad, err := decoder(m)
	if err != nil {
		return c, err
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_CHAIN_TABLE:
			c.table = ad.String()
		case unix.NFTA_CHAIN_NAME:
			c.name = ad.String()
		case unix.NFTA_CHAIN_TYPE:
			c.typ = ad.String()
		case unix.NFTA_CHAIN_POLICY:
			p := ad.Uint32()
			c.policy = &p
		case nftaChainFlags:
			c.flags = ad.Uint32()
		case unix.NFTA_CHAIN_HOOK:
			c.hasHook = true
			ad.Nested(func(had *nl.AttributeDecoder) error {
				had.ByteOrder = binary.BigEndian
				for had.Next() {
					switch had.Type() {
					case unix.NFTA_HOOK_HOOKNUM:
						c.hooknum = had.Uint32()
					case unix.NFTA_HOOK_PRIORITY:
						c.prio = int32(had.Uint32())
					case unix.NFTA_HOOK_DEV, nftaHookDevs:
						c.dev = true
					}
				}
				return nil
			})
		case nftaChainUserdata:
			if s, ok := userdata.GetString(ad.Bytes(), udataChainComment); ok {
				c.comment = s
			}
		}
	}
	return c, ad.Err()
}

func parseRule(m syscall.NetlinkMessage) (rawRule, error) {
	var r rawRule
	ad, err := decoder(m)
	if err != nil {
		return r, err
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_RULE_TABLE:
			r.table = ad.String()
		case unix.NFTA_RULE_CHAIN:
			r.chain = ad.String()
		case unix.NFTA_RULE_USERDATA:
			r.udata = ad.Bytes()
		case unix.NFTA_RULE_EXPRESSIONS:
			ad.Nested(func(lad *nl.AttributeDecoder) error {
				for lad.Next() {
					var e rawExpr
					lad.Nested(func(ead *nl.AttributeDecoder) error {
						for ead.Next() {
							switch ead.Type() {
							case unix.NFTA_EXPR_NAME:
								e.name = ead.String()
							case unix.NFTA_EXPR_DATA:
								e.data = ead.Bytes()
							}
						}
						return nil
					})
					r.exprs = append(r.exprs, e)
				}
				return nil
			})
		}
	}
	return r, ad.Err()
}

// ---- kernel objects -> IR ----

var keyTypeByMagic = map[uint32]ruleset.KeyType{}

func init() {
	for k, t := range keyDatatypes {
		keyTypeByMagic[t.GetNFTMagic()] = k
	}
}

// keyTypesOf splits a key type magic (6 bits per concatenated field, first field in the
// high bits) into IR key types; ok is false when a type is not one of ours.
func keyTypesOf(magic uint32) (types []ruleset.KeyType, ok bool) {
	ok = magic != 0
	for m := magic; m != 0; m >>= 6 {
		t, known := keyTypeByMagic[m&0x3f]
		if !known {
			ok = false
			t = ruleset.KeyType(fmt.Sprintf("type%d", m&0x3f))
		}
		types = append([]ruleset.KeyType{t}, types...)
	}
	return types, ok
}

// foreignMarker is appended to the key of a set the IR cannot describe (unknown types or
// flags, non-verdict data): no desired set has it, so the diff replaces the table.
func foreignMarker(rs rawSet) ruleset.KeyType {
	return ruleset.KeyType(fmt.Sprintf("unsupported(flags=%#x key=%#x/%d data=%#x)", rs.flags, rs.keyType, rs.keyLen, rs.dataType))
}

// decodeSet turns a kernel set and its elements into the IR.
func decodeSet(rs rawSet, elems []rawElem) *ruleset.Set {
	s := &ruleset.Set{
		Name:     rs.name,
		Comment:  rs.comment,
		Interval: rs.flags&unix.NFT_SET_INTERVAL != 0,
		IsMap:    rs.flags&unix.NFT_SET_MAP != 0,
	}
	types, ok := keyTypesOf(rs.keyType)
	s.Key = types
	if ok {
		want := &ruleset.Set{Key: types, Interval: s.Interval, IsMap: s.IsMap}
		_, keyLen, err := setKey(want)
		ok = err == nil && keyLen == rs.keyLen && rs.flags == setFlags(want) &&
			rs.hasDataType == s.IsMap && (!s.IsMap || rs.dataType == nftDataVerdict)
		if ok && len(types) > 1 && len(rs.fieldLens) > 0 {
			for i, t := range types {
				ok = ok && i < len(rs.fieldLens) && rs.fieldLens[i] == uint32(t.Len())
			}
			ok = ok && len(rs.fieldLens) == len(types)
		}
	}
	if !ok {
		s.Key = append(s.Key, foreignMarker(rs))
		return s
	}
	switch {
	case len(types) > 1:
		for _, e := range elems {
			s.Elements = append(s.Elements, decodeConcatElem(s, e))
		}
	case s.Interval:
		s.Elements = decodeIntervals(s, elems)
	default:
		for _, e := range elems {
			s.Elements = append(s.Elements, ruleset.Element{Key: []ruleset.Range{ruleset.Single(e.key)}, Verdict: elemVerdict(s, e)})
		}
	}
	return s
}

func elemVerdict(s *ruleset.Set, e rawElem) *ruleset.Verdict {
	if !s.IsMap {
		if e.hasData {
			// Data in a plain set cannot happen; make the element differ from ours.
			return &ruleset.Verdict{Kind: "unexpected data"}
		}
		return nil
	}
	if e.verdict == nil {
		return &ruleset.Verdict{Kind: "no verdict"}
	}
	return e.verdict
}

// splitConcat cuts a padded concatenated key into its fields. A field whose padding is
// not zero keeps its padding, so that it compares unequal to anything we would write
// (the kernel compares the padding too, so such an element never matches a packet).
func splitConcat(types []ruleset.KeyType, key []byte) ([][]byte, bool) {
	var out [][]byte
	off := 0
	for _, t := range types {
		n, p := t.Len(), padLen(t.Len())
		if off+p > len(key) {
			return nil, false
		}
		f := key[off : off+p]
		if bytes.Count(f[n:], []byte{0}) == p-n {
			f = f[:n]
		}
		out = append(out, bytes.Clone(f))
		off += p
	}
	return out, off == len(key)
}

func decodeConcatElem(s *ruleset.Set, e rawElem) ruleset.Element {
	from, ok := splitConcat(s.Key, e.key)
	if !ok {
		return ruleset.Element{Key: []ruleset.Range{ruleset.Single(e.key)}, Verdict: elemVerdict(s, e)}
	}
	to := from
	if s.Interval && e.keyEnd != nil {
		if to, ok = splitConcat(s.Key, e.keyEnd); !ok {
			to = [][]byte{e.keyEnd}
		}
	}
	el := ruleset.Element{Verdict: elemVerdict(s, e)}
	for i := range from {
		r := ruleset.Range{From: from[i], To: from[i]}
		if i < len(to) {
			r.To = to[i]
		}
		el.Key = append(el.Key, r)
	}
	return el
}

func decrement(b []byte) []byte {
	out := bytes.Clone(b)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]--
		if out[i] != 0xff {
			break
		}
	}
	return out
}

// decodeIntervals rebuilds the ranges of a single-field interval set from its start and
// end elements: a start runs up to the element that follows it (an end element holds
// the first value past the range; nft leaves out the end of a range that is directly
// followed by the next one), and the last start without an end runs to the maximum. An
// end element with no start in front of it (nft's leading "0 INTERVAL_END") holds
// nothing and is skipped.
func decodeIntervals(s *ruleset.Set, elems []rawElem) []ruleset.Element {
	sorted := append([]rawElem(nil), elems...)
	isEnd := func(e rawElem) bool { return e.flags&unix.NFT_SET_ELEM_INTERVAL_END != 0 }
	sort.SliceStable(sorted, func(i, j int) bool {
		if c := bytes.Compare(sorted[i].key, sorted[j].key); c != 0 {
			return c < 0
		}
		return isEnd(sorted[i]) && !isEnd(sorted[j]) // at equal keys the end comes first
	})
	var out []ruleset.Element
	for i := 0; i < len(sorted); i++ {
		e := sorted[i]
		if isEnd(e) {
			continue
		}
		var to []byte
		if i+1 < len(sorted) {
			next := sorted[i+1]
			to = decrement(next.key)
			if isEnd(next) {
				i++
			}
		} else {
			to = bytes.Repeat([]byte{0xff}, len(e.key))
		}
		out = append(out, ruleset.Element{Key: []ruleset.Range{{From: bytes.Clone(e.key), To: to}}, Verdict: elemVerdict(s, e)})
	}
	return out
}

var hookByNum = map[uint32]ruleset.Hook{}

func init() {
	for h, n := range hookNums {
		hookByNum[n] = h
	}
}

// decodeChain turns a kernel chain into the IR. A base chain the IR cannot describe
// (not a filter chain, policy drop, a device, an unknown hook) gets a hook name that no
// desired chain has, so that the diff replaces the table.
func decodeChain(rc rawChain) *ruleset.Chain {
	c := &ruleset.Chain{Name: rc.name, Comment: rc.comment}
	if !rc.hasHook {
		return c
	}
	h, ok := hookByNum[rc.hooknum]
	if !ok || rc.typ != "filter" || rc.policy == nil || *rc.policy != nfAccept || rc.dev {
		policy := "none"
		if rc.policy != nil {
			policy = fmt.Sprint(*rc.policy)
		}
		h = ruleset.Hook(fmt.Sprintf("unsupported(hook=%d type=%q policy=%s device=%v)", rc.hooknum, rc.typ, policy, rc.dev))
	}
	c.Base = &ruleset.BaseChain{Hook: h, Priority: int(rc.prio)}
	return c
}

// parseExprs decodes the expressions we emit; any other expression makes the rule
// undecodable (google/nftables silently drops expressions it does not know, so the
// names are checked here).
func parseExprs(raw []rawExpr) ([]expr.Any, error) {
	out := make([]expr.Any, 0, len(raw))
	for _, r := range raw {
		var e expr.Any
		switch r.name {
		case "meta":
			e = &expr.Meta{}
		case "cmp":
			e = &expr.Cmp{}
		case "payload":
			e = &expr.Payload{}
		case "lookup":
			e = &expr.Lookup{}
		case "ct":
			e = &expr.Ct{}
		case "bitwise":
			e = &expr.Bitwise{}
		case "counter":
			e = &expr.Counter{}
		case "limit":
			e = &expr.Limit{}
		case "log":
			e = &expr.Log{}
		case "immediate":
			imm := &expr.Immediate{}
			if err := expr.Unmarshal(family, r.data, imm); err != nil {
				return nil, fmt.Errorf("immediate: %w", err)
			}
			if imm.Register != regVerdict {
				return nil, fmt.Errorf("immediate to register %d", imm.Register)
			}
			e = &expr.Verdict{}
		default:
			return nil, fmt.Errorf("expression %q", r.name)
		}
		if err := expr.Unmarshal(family, r.data, e); err != nil {
			return nil, fmt.Errorf("%s: %w", r.name, err)
		}
		out = append(out, e)
	}
	return out, nil
}

// payloadField maps a payload load back to the IR field.
func payloadField(p *expr.Payload) (ruleset.Field, bool) {
	if p.OperationType != expr.PayloadLoad {
		return "", false
	}
	type k struct {
		base     expr.PayloadBase
		off, len uint32
	}
	switch (k{p.Base, p.Offset, p.Len}) {
	case k{expr.PayloadBaseNetworkHeader, 12, 4}:
		return ruleset.FieldIPv4Saddr, true
	case k{expr.PayloadBaseNetworkHeader, 16, 4}:
		return ruleset.FieldIPv4Daddr, true
	case k{expr.PayloadBaseNetworkHeader, 8, 16}:
		return ruleset.FieldIPv6Saddr, true
	case k{expr.PayloadBaseNetworkHeader, 24, 16}:
		return ruleset.FieldIPv6Daddr, true
	case k{expr.PayloadBaseTransportHeader, 2, 2}:
		return ruleset.FieldDPort, true
	case k{expr.PayloadBaseTransportHeader, 0, 1}:
		return ruleset.FieldICMPv6Type, true
	}
	return "", false
}

// decodedRule is a rule read from expressions, before the hints are applied: conds are
// the matches in order, including the nfproto guards the encoder may have added.
type decodedRule struct {
	conds   []ruleset.Match
	log     *ruleset.Log
	counter bool
	vmap    *ruleset.VMap
	verdict ruleset.Verdict
}

// exprsToRule reads the expression vocabulary encodeRule produces. It does not check
// registers: the caller re-encodes the result and compares, which checks everything.
func exprsToRule(exprs []expr.Any) (decodedRule, error) {
	var d decodedRule
	var fields []ruleset.Field // loads waiting for their lookup
	terminal := false
	// Where the counter sits among the conditions is left to the re-encoding check: the
	// guard of a vmap comes after it (as nft places it: the counter sees every packet).
	cond := func(m ruleset.Match) error {
		if len(fields) > 0 {
			return fmt.Errorf("load without lookup")
		}
		d.conds = append(d.conds, m)
		return nil
	}
	cmpAt := func(i int, reg uint32, op expr.CmpOp, n int) (*expr.Cmp, bool) {
		if i >= len(exprs) {
			return nil, false
		}
		c, ok := exprs[i].(*expr.Cmp)
		return c, ok && c.Register == reg && c.Op == op && len(c.Data) == n
	}
	for i := 0; i < len(exprs); {
		if terminal {
			return d, fmt.Errorf("expression after the verdict")
		}
		switch e := exprs[i].(type) {
		case *expr.Meta:
			if e.SourceRegister {
				return d, fmt.Errorf("meta set")
			}
			switch e.Key {
			case expr.MetaKeyNFPROTO:
				c, ok := cmpAt(i+1, e.Register, expr.CmpOpEq, 1)
				if !ok {
					return d, fmt.Errorf("meta nfproto without cmp")
				}
				var fam ruleset.Family
				switch c.Data[0] {
				case unix.NFPROTO_IPV4:
					fam = ruleset.IPv4
				case unix.NFPROTO_IPV6:
					fam = ruleset.IPv6
				default:
					return d, fmt.Errorf("nfproto %d", c.Data[0])
				}
				if err := cond(ruleset.Match{Kind: ruleset.MatchNFProto, Family: fam}); err != nil {
					return d, err
				}
				i += 2
			case expr.MetaKeyL4PROTO:
				if c, ok := cmpAt(i+1, e.Register, expr.CmpOpEq, 1); ok && len(fields) == 0 {
					if err := cond(ruleset.Match{Kind: ruleset.MatchL4Proto, Proto: c.Data[0]}); err != nil {
						return d, err
					}
					i += 2
					continue
				}
				fields = append(fields, ruleset.FieldL4Proto)
				i++
			default:
				return d, fmt.Errorf("meta key %d", e.Key)
			}
		case *expr.Payload:
			f, ok := payloadField(e)
			if !ok {
				return d, fmt.Errorf("payload base %d offset %d len %d", e.Base, e.Offset, e.Len)
			}
			fields = append(fields, f)
			i++
		case *expr.Lookup:
			if len(fields) == 0 {
				return d, fmt.Errorf("lookup without loads")
			}
			fs := fields
			fields = nil
			if e.IsDestRegSet {
				if e.DestRegister != regVerdict || e.Invert {
					return d, fmt.Errorf("map lookup into register %d", e.DestRegister)
				}
				d.vmap = &ruleset.VMap{Fields: fs, Map: e.SetName}
				terminal = true
			} else if err := cond(ruleset.Match{Kind: ruleset.MatchLookup, Fields: fs, Set: e.SetName, Negate: e.Invert}); err != nil {
				return d, err
			}
			i++
		case *expr.Ct:
			if !e.SourceRegister && e.Key == expr.CtKeyMARK && i+2 < len(exprs) {
				b, ok := exprs[i+1].(*expr.Bitwise)
				if !ok || len(b.Mask) != 4 {
					return d, fmt.Errorf("ct mark without mask")
				}
				c, ok := cmpAt(i+2, b.DestRegister, expr.CmpOpEq, 4)
				if !ok {
					return d, fmt.Errorf("ct mark without cmp")
				}
				if err := cond(ruleset.Match{Kind: ruleset.MatchCtMark, MarkMask: binary.NativeEndian.Uint32(b.Mask), Mark: binary.NativeEndian.Uint32(c.Data)}); err != nil {
					return d, err
				}
				i += 3
				continue
			}
			if e.SourceRegister || e.Key != expr.CtKeySTATE || i+2 >= len(exprs) {
				return d, fmt.Errorf("ct key %d", e.Key)
			}
			b, ok := exprs[i+1].(*expr.Bitwise)
			if !ok || len(b.Mask) != 4 {
				return d, fmt.Errorf("ct state without mask")
			}
			if _, ok := cmpAt(i+2, b.DestRegister, expr.CmpOpNeq, 4); !ok {
				return d, fmt.Errorf("ct state without cmp")
			}
			states := canonicalCtStates(binary.NativeEndian.Uint32(b.Mask))
			if len(states) == 0 {
				return d, fmt.Errorf("ct state mask %x", b.Mask)
			}
			if err := cond(ruleset.Match{Kind: ruleset.MatchCtState, CtStates: states}); err != nil {
				return d, err
			}
			i += 3
		case *expr.Limit:
			if e.Type != expr.LimitTypePkts || e.Unit != expr.LimitTimeSecond || e.Over {
				return d, fmt.Errorf("limit type %d unit %d over %v", e.Type, e.Unit, e.Over)
			}
			if d.log != nil || d.counter {
				return d, fmt.Errorf("limit after a statement")
			}
			if err := cond(ruleset.Match{Kind: ruleset.MatchLimit, Rate: e.Rate, Burst: e.Burst}); err != nil {
				return d, err
			}
			i++
		case *expr.Log:
			// Only the group and the prefix are ours; anything else (level, flags,
			// snaplen) fails the re-encoding check.
			if d.log != nil || d.counter || len(fields) > 0 || e.Key&(1<<unix.NFTA_LOG_GROUP) == 0 {
				return d, fmt.Errorf("misplaced log or log without group")
			}
			d.log = &ruleset.Log{Group: e.Group, Prefix: string(e.Data)}
			i++
		case *expr.Counter:
			if d.counter || len(fields) > 0 {
				return d, fmt.Errorf("misplaced counter")
			}
			d.counter = true
			i++
		case *expr.Verdict:
			k := verdictKind(int32(e.Kind))
			if strings.HasPrefix(string(k), "verdict code") {
				return d, fmt.Errorf("%s", k)
			}
			d.verdict = ruleset.Verdict{Kind: k, Chain: e.Chain}
			terminal = true
			i++
		default:
			return d, fmt.Errorf("%s", exprName(e))
		}
	}
	if len(fields) > 0 {
		return d, fmt.Errorf("load without lookup")
	}
	return d, nil
}

// canonReg maps a register number to the kernel's internal 32-bit register index. The
// kernel dumps a 32-bit register that starts a 128-bit one under the 128-bit name
// (NFT_REG32_00 comes back as NFT_REG_1), so registers compare by index.
func canonReg(r uint32) uint32 {
	if r <= unix.NFT_REG_4 {
		return r * 4
	}
	return r - reg32First + 4
}

// normalizeExprs clears what the kernel fills in or leaves out on its own (counter
// values, set IDs) and canonicalizes registers, so that encoded and dumped expressions
// compare equal.
func normalizeExprs(in []expr.Any) []expr.Any {
	out := make([]expr.Any, len(in))
	for i, e := range in {
		switch v := e.(type) {
		case *expr.Counter:
			out[i] = &expr.Counter{}
		case *expr.Lookup:
			c := *v
			c.SetID = 0
			c.SourceRegister = canonReg(c.SourceRegister)
			c.DestRegister = canonReg(c.DestRegister)
			out[i] = &c
		case *expr.Meta:
			c := *v
			c.Register = canonReg(c.Register)
			out[i] = &c
		case *expr.Payload:
			c := *v
			c.DestRegister = canonReg(c.DestRegister)
			c.SourceRegister = canonReg(c.SourceRegister)
			out[i] = &c
		case *expr.Cmp:
			c := *v
			c.Register = canonReg(c.Register)
			out[i] = &c
		case *expr.Ct:
			c := *v
			c.Register = canonReg(c.Register)
			out[i] = &c
		case *expr.Bitwise:
			c := *v
			c.SourceRegister = canonReg(c.SourceRegister)
			c.DestRegister = canonReg(c.DestRegister)
			out[i] = &c
		default:
			out[i] = e
		}
	}
	return out
}

// undecodable is how a rule we did not write comes back: it has no verdict, no counter
// and no log, which no valid IR rule lacks (Validate refuses it), so it never equals a
// desired rule and the diff rewrites its chain.
func undecodable(raw []rawExpr, why error) ruleset.Rule {
	names := make([]string, len(raw))
	for i, e := range raw {
		names[i] = e.name
	}
	c := fmt.Sprintf("undecodable: [%s]: %v", strings.Join(names, " "), why)
	if len(c) > ruleset.MaxCommentLen {
		c = c[:ruleset.MaxCommentLen]
	}
	return ruleset.Rule{Comment: c}
}

// decodeRule turns a kernel rule back into the IR rule it was encoded from. The result
// is accepted only if encoding it gives back exactly the kernel's expressions.
func decodeRule(raw rawRule) ruleset.Rule {
	exprs, err := parseExprs(raw.exprs)
	if err != nil {
		return undecodable(raw.exprs, err)
	}
	d, err := exprsToRule(exprs)
	if err != nil {
		return undecodable(raw.exprs, err)
	}
	comment, _ := userdata.GetString(raw.udata, udataRuleComment)
	var hints ruleHints
	if h := userdata.Get(raw.udata, udataRuleHints); h != nil {
		hints = parseHints(string(h))
	}
	guards := map[int]bool{}
	for _, g := range hints.guards {
		guards[g] = true
	}
	r := ruleset.Rule{Log: d.log, Counter: d.counter, VMap: d.vmap, Verdict: d.verdict, Comment: comment}
	for i, m := range d.conds {
		if guards[i] && m.Kind == ruleset.MatchNFProto {
			continue
		}
		if order, ok := hints.ctOrder[i]; ok && m.Kind == ruleset.MatchCtState && sameStates(order, m.CtStates) {
			m.CtStates = order
		}
		r.Matches = append(r.Matches, m)
	}
	if !r.Counter && r.Log == nil && r.VMap == nil && r.Verdict.Kind == ruleset.VerdictNone {
		// Not an IR rule (Validate wants a verdict, a counter or a log).
		return undecodable(raw.exprs, fmt.Errorf("rule does nothing"))
	}
	enc, _, err := encodeRule(r)
	if err != nil {
		return undecodable(raw.exprs, err)
	}
	if !reflect.DeepEqual(normalizeExprs(enc), normalizeExprs(exprs)) {
		return undecodable(raw.exprs, fmt.Errorf("not in the form this dataplane writes"))
	}
	return r
}

// sameStates reports whether two ct state lists name the same states.
func sameStates(a, b []string) bool {
	mask := func(s []string) (uint32, bool) {
		var m uint32
		for _, n := range s {
			bit, ok := ruleset.CtStateBits[n]
			if !ok {
				return 0, false
			}
			m |= bit
		}
		return m, true
	}
	ma, oka := mask(a)
	mb, okb := mask(b)
	return oka && okb && ma == mb
}
