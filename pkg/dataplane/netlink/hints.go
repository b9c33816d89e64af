package netlink

import (
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// The rule user data that carries what a rule's expressions cannot say about its IR
// rule.

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
