package netlink

import (
	"fmt"
	"slices"

	"github.com/google/nftables/userdata"
	nl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/pkg/dataplane/netlink/nfnl"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// Lifting IR set elements to the kernel's elements and their NEWSETELEM/DELSETELEM
// messages, chunked to the 16-bit attribute length.

// maxElemBytes bounds the element list of one NEWSETELEM/DELSETELEM message: netlink
// attribute lengths are 16 bits, so a big set is sent as several messages (all in the
// same batch).
const maxElemBytes = 48 << 10

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
	return appendKernelElements(nil, s, e, del)
}

// appendKernelElements appends e's kernel elements to out (kernelElements without an
// allocation per element when out has room).
func appendKernelElements(out []kelem, s *ruleset.Set, e ruleset.Element, del bool) []kelem {
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
		return append(out, k)
	}
	r := e.Key[0]
	if !s.Interval {
		return append(out, kelem{key: r.From, verdict: v})
	}
	end, overflow := increment(r.To)
	if overflow {
		return append(out, kelem{key: r.From, verdict: v, open: !del})
	}
	return append(out,
		kelem{key: r.From, verdict: v},
		kelem{key: end, intervalEnd: true, suffix: " (interval end)"},
	)
}

func putVerdictData(a *nfnl.Attrs, v ruleset.Verdict) error {
	code, err := verdictCode(v.Kind)
	if err != nil {
		return err
	}
	a.Nested(unix.NFTA_DATA_VERDICT, func() {
		a.PutU32(unix.NFTA_VERDICT_CODE, uint32(int32(code)))
		if v.Chain != "" {
			a.PutString(unix.NFTA_VERDICT_CHAIN, v.Chain)
		}
	})
	return nil
}

// msgsSetElems adds (or deletes) elements of a set, in as many messages as the 16-bit
// attribute length requires. id is the set's batch ID when the set is created in the
// same batch (0 otherwise).
func msgsSetElems(table string, s *ruleset.Set, id uint32, elems []ruleset.Element, del bool) ([]nfnl.Message, error) {
	typ, flags, verb := unix.NFT_MSG_NEWSETELEM, nl.Create, "add"
	if del {
		typ, flags, verb = unix.NFT_MSG_DELSETELEM, 0, "delete"
	}
	var msgs []nfnl.Message
	var a *nfnl.Attrs
	var listOff int
	var spans []nfnl.Span
	start := func() {
		a = &nfnl.Attrs{}
		a.PutString(unix.NFTA_SET_ELEM_LIST_TABLE, table)
		a.PutString(unix.NFTA_SET_ELEM_LIST_SET, s.Name)
		if id != 0 {
			a.PutU32(unix.NFTA_SET_ELEM_LIST_SET_ID, id)
		}
		listOff = a.Begin(unix.NFTA_SET_ELEM_LIST_ELEMENTS)
		spans = nil
	}
	flush := func() error {
		if len(spans) == 0 {
			return nil
		}
		a.End(listOff)
		m, err := nfnl.NewMessage(family, typ, flags, a, fmt.Sprintf("%s %d elements of set %q", verb, len(spans), s.Name), spans)
		if err != nil {
			return err
		}
		msgs = append(msgs, m)
		return nil
	}
	// A span names its element by index (Arg: index*2, +1 for an interval's end
	// element), through one function for the whole set.
	describe := func(arg int) string {
		what := "element " + ruleset.FormatElement(s, elems[arg/2])
		if arg%2 == 1 {
			what += " (interval end)"
		}
		return what
	}
	var ks []kelem
	start()
	for i, e := range elems {
		ks = appendKernelElements(ks[:0], s, e, del)
		for _, k := range ks {
			off := a.Len()
			a.Nested(unix.NFTA_LIST_ELEM, func() {
				a.Nested(unix.NFTA_SET_ELEM_KEY, func() { a.Put(unix.NFTA_DATA_VALUE, k.key) })
				if k.keyEnd != nil {
					a.Nested(nftaSetElemKeyEnd, func() { a.Put(unix.NFTA_DATA_VALUE, k.keyEnd) })
				}
				if k.intervalEnd {
					a.PutU32(unix.NFTA_SET_ELEM_FLAGS, unix.NFT_SET_ELEM_INTERVAL_END)
				}
				if k.verdict != nil {
					a.Nested(unix.NFTA_SET_ELEM_DATA, func() {
						if err := putVerdictData(a, *k.verdict); err != nil {
							a.SetErr(fmt.Errorf("%s: %w", describe(2*i), err))
						}
					})
				}
				if k.open {
					a.Put(unix.NFTA_SET_ELEM_USERDATA, userdata.AppendUint32(nil, udataElemFlags, udataElemOpen))
				}
			})
			arg := 2 * i
			if k.intervalEnd {
				arg++
			}
			spans = append(spans, nfnl.Span{Off: off, Of: describe, Arg: arg})
			if a.Len()-listOff > maxElemBytes {
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
