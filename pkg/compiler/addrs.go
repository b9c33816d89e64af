package compiler

import (
	"net/netip"
	"sort"

	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// addrRange is the closed interval [from, to] of addresses of one family.
type addrRange struct{ from, to netip.Addr }

// addrSet is a set of addresses of one family as sorted, disjoint, non-adjacent ranges:
// the shape the kernel wants for an interval set (it refuses overlaps).
type addrSet []addrRange

func prefixRange(p netip.Prefix) addrRange {
	p = p.Masked()
	return addrRange{from: p.Addr(), to: ruleset.LastAddr(p)}
}

// normalize sorts the ranges and merges overlapping and adjacent ones.
func (s addrSet) normalize() addrSet {
	if len(s) < 2 {
		return s
	}
	sort.Slice(s, func(i, j int) bool { return s[i].from.Less(s[j].from) })
	out := s[:1]
	for _, r := range s[1:] {
		last := &out[len(out)-1]
		next := last.to.Next() // invalid when last.to is the family's highest address
		if r.from.Compare(last.to) <= 0 || (next.IsValid() && r.from == next) {
			if last.to.Less(r.to) {
				last.to = r.to
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

// subtract removes every address in cut from s. Both must be normalized.
func (s addrSet) subtract(cut addrSet) addrSet {
	var out addrSet
	for _, r := range s {
		pieces := addrSet{r}
		for _, c := range cut {
			var next addrSet
			for _, p := range pieces {
				if c.to.Less(p.from) || p.to.Less(c.from) {
					next = append(next, p)
					continue
				}
				if p.from.Less(c.from) {
					next = append(next, addrRange{from: p.from, to: c.from.Prev()})
				}
				if c.to.Less(p.to) {
					next = append(next, addrRange{from: c.to.Next(), to: p.to})
				}
			}
			pieces = next
		}
		out = append(out, pieces...)
	}
	return out
}

// contains reports whether a lies in one of the ranges.
func (s addrSet) contains(a netip.Addr) bool {
	i := sort.Search(len(s), func(i int) bool { return !s[i].to.Less(a) })
	return i < len(s) && !a.Less(s[i].from)
}

func (s addrSet) elements() []ruleset.Element {
	out := make([]ruleset.Element, len(s))
	for i, r := range s {
		out[i] = ruleset.Element{Key: []ruleset.Range{ruleset.AddrRange(r.from, r.to)}}
	}
	return out
}

// portRange is [from, to] of one protocol.
type portRange struct {
	proto    uint8
	from, to uint16
}

// normalizePorts sorts and merges overlapping or adjacent ranges of the same protocol.
func normalizePorts(in []portRange) []portRange {
	if len(in) < 2 {
		return in
	}
	sort.Slice(in, func(i, j int) bool {
		if in[i].proto != in[j].proto {
			return in[i].proto < in[j].proto
		}
		return in[i].from < in[j].from
	})
	out := in[:1]
	for _, r := range in[1:] {
		last := &out[len(out)-1]
		if r.proto == last.proto && uint32(r.from) <= uint32(last.to)+1 {
			if r.to > last.to {
				last.to = r.to
			}
			continue
		}
		out = append(out, r)
	}
	return out
}
