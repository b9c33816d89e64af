package netlink

import (
	"bytes"
	"fmt"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// Lifting kernel objects back to the IR: sets with their elements, and chains (rules
// are read by grammar.go and checked by roundtrip.go).

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
