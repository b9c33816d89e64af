package netlink

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	nl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

const family = unix.NFPROTO_INET

// Userdata TLV types. Comments use libnftnl's numbering so that `nft list` shows them.
const (
	udataRuleComment  = userdata.TypeComment                  // NFTNL_UDATA_RULE_COMMENT
	udataChainComment = 0                                     // NFTNL_UDATA_CHAIN_COMMENT
	udataSetKeyOrder  = userdata.NFTNL_UDATA_SET_KEYBYTEORDER // NFTNL_UDATA_SET_KEYBYTEORDER
	udataSetComment   = userdata.NFTNL_UDATA_SET_COMMENT      // NFTNL_UDATA_SET_COMMENT
	udataElemFlags    = userdata.NFTNL_UDATA_SET_ELEM_FLAGS   // NFTNL_UDATA_SET_ELEM_FLAGS
	udataElemOpen     = 1                                     // NFTNL_SET_ELEM_F_INTERVAL_OPEN
	byteorderBig      = 2                                     // BYTEORDER_BIG_ENDIAN in nft
	// udataRuleHints is ours: what the expressions of a rule cannot say about the IR
	// rule they came from (see ruleHints). nft ignores rule userdata types it does not
	// know; libnftnl uses 0 and 1 only.
	udataRuleHints userdata.Type = 0xf0
)

// maxElemBytes bounds the element list of one NEWSETELEM/DELSETELEM message: netlink
// attribute lengths are 16 bits, so a big set is sent as several messages (all in the
// same batch).
const maxElemBytes = 48 << 10

// keyDatatypes maps IR key types to nft datatypes (their "magic" is what nft needs to
// print the set).
var keyDatatypes = map[ruleset.KeyType]nftables.SetDatatype{
	ruleset.KeyIPv4Addr: nftables.TypeIPAddr,
	ruleset.KeyIPv6Addr: nftables.TypeIP6Addr,
	ruleset.KeyL4Proto:  nftables.TypeInetProto,
	ruleset.KeyPort:     nftables.TypeInetService,
	ruleset.KeyICMPv6:   nftables.TypeICMP6Type,
}

// setKey returns the key datatype magic and the key length. Concatenations pad every
// field to a 32-bit register, single fields are not padded.
func setKey(s *ruleset.Set) (magic, keyLen uint32, err error) {
	types := make([]nftables.SetDatatype, len(s.Key))
	for i, k := range s.Key {
		t, ok := keyDatatypes[k]
		if !ok {
			return 0, 0, fmt.Errorf("set %q: unsupported key type %q", s.Name, k)
		}
		types[i] = t
	}
	if len(types) == 1 {
		return types[0].GetNFTMagic(), types[0].Bytes, nil
	}
	t, err := nftables.ConcatSetType(types...)
	if err != nil {
		return 0, 0, fmt.Errorf("set %q: %w", s.Name, err)
	}
	return t.GetNFTMagic(), t.Bytes, nil
}

func padLen(n int) int { return (n + 3) &^ 3 }

func msgAddTable(table string) (message, error) {
	a := &attrs{}
	a.str(unix.NFTA_TABLE_NAME, table)
	// No NLM_F_EXCL: adding an existing table is a no-op, which is how a full replace
	// makes sure the DELTABLE that follows cannot fail with ENOENT.
	return newMessage(unix.NFT_MSG_NEWTABLE, nl.Create, a, "add table inet "+table, nil)
}

func msgDelTable(table string) (message, error) {
	a := &attrs{}
	a.str(unix.NFTA_TABLE_NAME, table)
	return newMessage(unix.NFT_MSG_DELTABLE, 0, a, "delete table inet "+table, nil)
}

var hookNums = map[ruleset.Hook]uint32{
	ruleset.HookPrerouting:  unix.NF_INET_PRE_ROUTING,
	ruleset.HookInput:       unix.NF_INET_LOCAL_IN,
	ruleset.HookForward:     unix.NF_INET_FORWARD,
	ruleset.HookOutput:      unix.NF_INET_LOCAL_OUT,
	ruleset.HookPostrouting: unix.NF_INET_POST_ROUTING,
}

func msgAddChain(table string, c *ruleset.Chain) (message, error) {
	what := fmt.Sprintf("add chain %q", c.Name)
	a := &attrs{}
	a.str(unix.NFTA_CHAIN_TABLE, table)
	a.str(unix.NFTA_CHAIN_NAME, c.Name)
	if c.Base != nil {
		num, ok := hookNums[c.Base.Hook]
		if !ok {
			return message{}, fmt.Errorf("%s: unknown hook %q", what, c.Base.Hook)
		}
		if c.Base.Priority < math.MinInt32 || c.Base.Priority > math.MaxInt32 {
			return message{}, fmt.Errorf("%s: priority %d out of range", what, c.Base.Priority)
		}
		a.nested(unix.NFTA_CHAIN_HOOK, func() {
			a.u32(unix.NFTA_HOOK_HOOKNUM, num)
			a.u32(unix.NFTA_HOOK_PRIORITY, uint32(int32(c.Base.Priority)))
		})
		a.u32(unix.NFTA_CHAIN_POLICY, nfAccept)
		a.str(unix.NFTA_CHAIN_TYPE, "filter")
	}
	if c.Comment != "" {
		a.put(nftaChainUserdata, userdata.AppendString(nil, udataChainComment, c.Comment))
	}
	return newMessage(unix.NFT_MSG_NEWCHAIN, nl.Create, a, what, nil)
}

func msgDelChain(table, name string) (message, error) {
	a := &attrs{}
	a.str(unix.NFTA_CHAIN_TABLE, table)
	a.str(unix.NFTA_CHAIN_NAME, name)
	return newMessage(unix.NFT_MSG_DELCHAIN, 0, a, fmt.Sprintf("delete chain %q", name), nil)
}

// msgFlushChain deletes all rules of a chain (DELRULE without a handle).
func msgFlushChain(table, name string) (message, error) {
	a := &attrs{}
	a.str(unix.NFTA_RULE_TABLE, table)
	a.str(unix.NFTA_RULE_CHAIN, name)
	return newMessage(unix.NFT_MSG_DELRULE, 0, a, fmt.Sprintf("flush chain %q", name), nil)
}

// setFlags are the kernel set flags of an IR set. NFT_SET_CONCAT goes only with interval
// concatenations (the pipapo backend); that is what nft does, and the kernel accepts
// KEY_END attributes only on such sets.
func setFlags(s *ruleset.Set) uint32 {
	var f uint32
	if s.Interval {
		f |= unix.NFT_SET_INTERVAL
		if len(s.Key) > 1 {
			f |= nftSetConcat
		}
	}
	if s.IsMap {
		f |= unix.NFT_SET_MAP
	}
	return f
}

func msgAddSet(table string, s *ruleset.Set, id uint32) (message, error) {
	what := fmt.Sprintf("add set %q", s.Name)
	magic, keyLen, err := setKey(s)
	if err != nil {
		return message{}, err
	}
	a := &attrs{}
	a.str(unix.NFTA_SET_TABLE, table)
	a.str(unix.NFTA_SET_NAME, s.Name)
	a.u32(unix.NFTA_SET_FLAGS, setFlags(s))
	a.u32(unix.NFTA_SET_KEY_TYPE, magic)
	a.u32(unix.NFTA_SET_KEY_LEN, keyLen)
	if s.IsMap {
		a.u32(unix.NFTA_SET_DATA_TYPE, nftDataVerdict)
	}
	if id != 0 {
		a.u32(unix.NFTA_SET_ID, id)
	}
	if setFlags(s)&nftSetConcat != 0 {
		// The field lengths of an interval concatenation (unpadded); the kernel needs
		// them for the pipapo backend. It refuses them (EINVAL) without
		// NFT_SET_CONCAT, i.e. on a plain concatenation, which is a hash.
		a.nested(unix.NFTA_SET_DESC, func() {
			a.nested(nftaSetDescConcat, func() {
				for _, k := range s.Key {
					a.nested(unix.NFTA_LIST_ELEM, func() { a.u32(nftaSetFieldLen, uint32(k.Len())) })
				}
			})
		})
	}
	ud := userdata.AppendUint32(nil, udataSetKeyOrder, byteorderBig)
	if s.Comment != "" {
		ud = userdata.AppendString(ud, udataSetComment, s.Comment)
	}
	a.put(unix.NFTA_SET_USERDATA, ud)
	return newMessage(unix.NFT_MSG_NEWSET, nl.Create, a, what, nil)
}

func msgDelSet(table, name string) (message, error) {
	a := &attrs{}
	a.str(unix.NFTA_SET_TABLE, table)
	a.str(unix.NFTA_SET_NAME, name)
	return newMessage(unix.NFT_MSG_DELSET, 0, a, fmt.Sprintf("delete set %q", name), nil)
}

// kelem is one element as the kernel stores it.
type kelem struct {
	key, keyEnd []byte
	intervalEnd bool
	open        bool // an interval that runs to the maximum value (no end element)
	verdict     *ruleset.Verdict
	suffix      string
}

// increment returns b+1 (big-endian) and whether it overflowed.
func increment(b []byte) ([]byte, bool) {
	out := slices.Clone(b)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]++
		if out[i] != 0 {
			return out, false
		}
	}
	return out, true
}

// concatKey lays out the fields of a concatenated key in 32-bit registers: each field
// is followed by zero padding up to a multiple of 4 bytes.
func concatKey(vals [][]byte) []byte {
	var out []byte
	for _, v := range vals {
		out = append(out, v...)
		for len(out)%4 != 0 {
			out = append(out, 0)
		}
	}
	return out
}

// kernelElements turns an IR element into the kernel's elements:
//   - plain sets and maps: one element with the key;
//   - concatenated interval sets (pipapo): one element with KEY (the start of every
//     field) and KEY_END (the end of every field);
//   - single-field interval sets (rbtree): a start element and an end element flagged
//     NFT_SET_ELEM_INTERVAL_END whose key is one past the range. A range that ends at
//     the maximum value has no end element (it would overflow); nft marks such an element
//     "interval open" in its userdata, and so do we.
//
// Unlike nft we do not add the leading "0 INTERVAL_END" element nft puts in front of a
// new interval set: the kernel's interval lookup does not need it (the packet tests
// check that addresses below the first range do not match), and it would have to be
// managed across incremental updates.
func kernelElements(s *ruleset.Set, e ruleset.Element, del bool) []kelem {
	var v *ruleset.Verdict
	if s.IsMap && !del {
		v = e.Verdict
	}
	if len(s.Key) > 1 {
		from := make([][]byte, len(e.Key))
		to := make([][]byte, len(e.Key))
		for i, r := range e.Key {
			from[i], to[i] = r.From, r.To
		}
		k := kelem{key: concatKey(from), verdict: v}
		if s.Interval {
			k.keyEnd = concatKey(to)
		}
		return []kelem{k}
	}
	r := e.Key[0]
	if !s.Interval {
		return []kelem{{key: r.From, verdict: v}}
	}
	end, overflow := increment(r.To)
	if overflow {
		return []kelem{{key: r.From, verdict: v, open: !del}}
	}
	return []kelem{
		{key: r.From, verdict: v},
		{key: end, intervalEnd: true, suffix: " (interval end)"},
	}
}

func putVerdictData(a *attrs, v ruleset.Verdict) error {
	code, err := verdictCode(v.Kind)
	if err != nil {
		return err
	}
	a.nested(unix.NFTA_DATA_VERDICT, func() {
		a.u32(unix.NFTA_VERDICT_CODE, uint32(int32(code)))
		if v.Chain != "" {
			a.str(unix.NFTA_VERDICT_CHAIN, v.Chain)
		}
	})
	return nil
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

// msgsSetElems adds (or deletes) elements of a set, in as many messages as the 16-bit
// attribute length requires. id is the set's batch ID when the set is created in the
// same batch (0 otherwise).
func msgsSetElems(table string, s *ruleset.Set, id uint32, elems []ruleset.Element, del bool) ([]message, error) {
	typ, flags, verb := unix.NFT_MSG_NEWSETELEM, nl.Create, "add"
	if del {
		typ, flags, verb = unix.NFT_MSG_DELSETELEM, 0, "delete"
	}
	var msgs []message
	var a *attrs
	var listOff int
	var spans []span
	start := func() {
		a = &attrs{}
		a.str(unix.NFTA_SET_ELEM_LIST_TABLE, table)
		a.str(unix.NFTA_SET_ELEM_LIST_SET, s.Name)
		if id != 0 {
			a.u32(unix.NFTA_SET_ELEM_LIST_SET_ID, id)
		}
		listOff = a.begin(unix.NFTA_SET_ELEM_LIST_ELEMENTS)
		spans = nil
	}
	flush := func() error {
		if len(spans) == 0 {
			return nil
		}
		a.end(listOff)
		m, err := newMessage(typ, flags, a, fmt.Sprintf("%s %d elements of set %q", verb, len(spans), s.Name), spans)
		if err != nil {
			return err
		}
		msgs = append(msgs, m)
		return nil
	}
	start()
	for _, e := range elems {
		describe := func() string { return "element " + ruleset.FormatElement(s, e) }
		for _, k := range kernelElements(s, e, del) {
			off := len(a.b)
			a.nested(unix.NFTA_LIST_ELEM, func() {
				a.nested(unix.NFTA_SET_ELEM_KEY, func() { a.put(unix.NFTA_DATA_VALUE, k.key) })
				if k.keyEnd != nil {
					a.nested(nftaSetElemKeyEnd, func() { a.put(unix.NFTA_DATA_VALUE, k.keyEnd) })
				}
				if k.intervalEnd {
					a.u32(unix.NFTA_SET_ELEM_FLAGS, unix.NFT_SET_ELEM_INTERVAL_END)
				}
				if k.verdict != nil {
					a.nested(unix.NFTA_SET_ELEM_DATA, func() {
						if err := putVerdictData(a, *k.verdict); err != nil {
							a.setErr(fmt.Errorf("%s: %w", describe(), err))
						}
					})
				}
				if k.open {
					a.put(unix.NFTA_SET_ELEM_USERDATA, userdata.AppendUint32(nil, udataElemFlags, udataElemOpen))
				}
			})
			spans = append(spans, span{off: off, what: func() string { return describe() + k.suffix }})
			if len(a.b)-listOff > maxElemBytes {
				if err := flush(); err != nil {
					return nil, err
				}
				start()
			}
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return msgs, nil
}

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

// fieldLoad is the expression that loads a packet field into reg.
func fieldLoad(f ruleset.Field, reg uint32) (expr.Any, error) {
	p := func(base expr.PayloadBase, off, n uint32) expr.Any {
		return &expr.Payload{DestRegister: reg, Base: base, Offset: off, Len: n}
	}
	switch f {
	case ruleset.FieldIPv4Saddr:
		return p(expr.PayloadBaseNetworkHeader, 12, 4), nil
	case ruleset.FieldIPv4Daddr:
		return p(expr.PayloadBaseNetworkHeader, 16, 4), nil
	case ruleset.FieldIPv6Saddr:
		return p(expr.PayloadBaseNetworkHeader, 8, 16), nil
	case ruleset.FieldIPv6Daddr:
		return p(expr.PayloadBaseNetworkHeader, 24, 16), nil
	case ruleset.FieldDPort:
		return p(expr.PayloadBaseTransportHeader, 2, 2), nil
	case ruleset.FieldICMPv6Type:
		return p(expr.PayloadBaseTransportHeader, 0, 1), nil
	case ruleset.FieldL4Proto:
		return &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg}, nil
	}
	return nil, fmt.Errorf("unsupported field %q", f)
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

// ctStateOrder is the canonical order of ct states: by bit value. The IR keeps the order
// it was given; when that is not this one, the order travels in the rule's hints.
func ctStateOrder(states []string) []string {
	out := slices.Clone(states)
	sort.SliceStable(out, func(i, j int) bool { return ruleset.CtStateBits[out[i]] < ruleset.CtStateBits[out[j]] })
	return out
}

// ruleHints is what a rule's expressions cannot carry about the IR rule:
//   - guards: in an inet table a payload load of an IPv4/IPv6 header field needs a
//     `meta nfproto` check before it, as nft adds implicitly. We add it unless the rule
//     matches that family itself; but an added check and an explicit MatchNFProto encode
//     the same, so the positions of the added ones are recorded.
//   - ctOrder: the order of the states of a ct state match (the kernel holds a bit mask),
//     recorded only when it is not the canonical one.
//
// Positions count the rule's conditions as encoded: matches and added guards.
type ruleHints struct {
	guards  []int
	ctOrder map[int][]string
}

func (h ruleHints) encode() string {
	var parts []string
	if len(h.guards) > 0 {
		g := make([]string, len(h.guards))
		for i, p := range h.guards {
			g[i] = strconv.Itoa(p)
		}
		parts = append(parts, "g"+strings.Join(g, ","))
	}
	keys := make([]int, 0, len(h.ctOrder))
	for k := range h.ctOrder {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	for _, k := range keys {
		parts = append(parts, "c"+strconv.Itoa(k)+"="+strings.Join(h.ctOrder[k], ","))
	}
	return strings.Join(parts, ";")
}

func parseHints(s string) ruleHints {
	h := ruleHints{ctOrder: map[int][]string{}}
	for _, part := range strings.Split(s, ";") {
		switch {
		case strings.HasPrefix(part, "g"):
			for _, p := range strings.Split(part[1:], ",") {
				if n, err := strconv.Atoi(p); err == nil {
					h.guards = append(h.guards, n)
				}
			}
		case strings.HasPrefix(part, "c"):
			idx, states, ok := strings.Cut(part[1:], "=")
			if n, err := strconv.Atoi(idx); ok && err == nil {
				h.ctOrder[n] = strings.Split(states, ",")
			}
		}
	}
	return h
}

// encodeRule turns an IR rule into expressions and the rule's userdata.
func encodeRule(r ruleset.Rule) ([]expr.Any, []byte, error) {
	explicit := map[ruleset.Family]bool{}
	for _, m := range r.Matches {
		if m.Kind == ruleset.MatchNFProto {
			explicit[m.Family] = true
		}
	}
	guarded := map[ruleset.Family]bool{}
	var out []expr.Any
	hints := ruleHints{ctOrder: map[int][]string{}}
	pos := 0
	guard := func(fields []ruleset.Field) {
		for _, f := range fields {
			fam := f.Family()
			if fam == 0 || explicit[fam] || guarded[fam] {
				continue
			}
			guarded[fam] = true
			out = append(out, nfprotoMatch(fam)...)
			hints.guards = append(hints.guards, pos)
			pos++
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
			if !slices.Equal(m.CtStates, canonicalCtStates(mask)) {
				hints.ctOrder[pos] = slices.Clone(m.CtStates)
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
		pos++
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
	if h := hints.encode(); h != "" {
		ud = userdata.Append(ud, udataRuleHints, []byte(h))
	}
	if len(ud) > 255 {
		return nil, nil, fmt.Errorf("comment and hints take %d bytes of userdata, more than 255", len(ud))
	}
	return out, ud, nil
}

// canonicalCtStates lists the states of a mask in canonical order, or nil when the mask
// has bits that are not states.
func canonicalCtStates(mask uint32) []string {
	var names []string
	var seen uint32
	for name, bit := range ruleset.CtStateBits {
		if mask&bit != 0 {
			names = append(names, name)
			seen |= bit
		}
	}
	if seen != mask {
		return nil
	}
	return ctStateOrder(names)
}

func msgAddRule(table, chain string, idx int, r ruleset.Rule) (message, error) {
	what := fmt.Sprintf("add rule %d of chain %q (%s)", idx, chain, ruleset.FormatRule(r))
	exprs, ud, err := encodeRule(r)
	if err != nil {
		return message{}, fmt.Errorf("chain %q rule %d: %w", chain, idx, err)
	}
	a := &attrs{}
	a.str(unix.NFTA_RULE_TABLE, table)
	a.str(unix.NFTA_RULE_CHAIN, chain)
	var spans []span
	a.nested(unix.NFTA_RULE_EXPRESSIONS, func() {
		for i, e := range exprs {
			b, err := expr.Marshal(family, e)
			if err != nil {
				a.setErr(fmt.Errorf("expression %d: %w", i, err))
				return
			}
			spans = append(spans, span{off: len(a.b), what: func() string { return fmt.Sprintf("expression %d (%s)", i, exprName(e)) }})
			a.put(unix.NFTA_LIST_ELEM|unix.NLA_F_NESTED, b)
		}
	})
	if len(ud) > 0 {
		a.put(nftaRuleUserdata, ud)
	}
	// NLM_F_APPEND: at the end of the chain, in the order given.
	return newMessage(unix.NFT_MSG_NEWRULE, nl.Create|nl.HeaderFlags(unix.NLM_F_APPEND), a, what, spans)
}

func exprName(e expr.Any) string {
	switch e.(type) {
	case *expr.Meta:
		return "meta"
	case *expr.Cmp:
		return "cmp"
	case *expr.Payload:
		return "payload"
	case *expr.Lookup:
		return "lookup"
	case *expr.Ct:
		return "ct"
	case *expr.Bitwise:
		return "bitwise"
	case *expr.Counter:
		return "counter"
	case *expr.Limit:
		return "limit"
	case *expr.Log:
		return "log"
	case *expr.Verdict:
		return "immediate"
	case *expr.Immediate:
		return "immediate"
	}
	return fmt.Sprintf("%T", e)
}
