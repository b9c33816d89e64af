package ruleset

import (
	"slices"
)

// CanonicalRule returns the one form, among the rules that say the same thing in the
// same kernel expressions, that the kernel dataplane reads back (Normalize puts every
// rule in it, so desired and read-back rulesets compare equal):
//
//   - ct states in the order of their bits (CtStateBits), each once: the kernel holds a
//     bit mask, and `ct state established,related` is `ct state related,established`.
//   - no explicit `meta nfproto F` where the dataplane writes the same check implicitly:
//     in an inet table a field of family F (an IPv4 or IPv6 header field) needs
//     `meta nfproto F` before its load, which the dataplane adds, as nft does, in front
//     of the first match (or verdict map) reading an F field — unless the rule has an
//     explicit nfproto F match. So a rule whose only nfproto F match comes directly in
//     front of that first F match is the rule without it (`meta nfproto ipv4 ip saddr
//     @s` is `ip saddr @s`); any other nfproto match is kept where it is.
//
// r is not modified (its slices are shared read-only, see Chain.Clone); changed
// reports whether the result differs from it.
func CanonicalRule(r Rule) (canonical Rule, changed bool) {
	matches := r.Matches
	for i, m := range matches {
		if m.Kind != MatchCtState {
			continue
		}
		if states, ok := canonicalCtStates(m.CtStates); ok && !slices.Equal(states, m.CtStates) {
			if !changed {
				matches, changed = slices.Clone(matches), true
			}
			matches[i].CtStates = states
		}
	}
	if i := redundantNFProto(r, matches); i >= 0 {
		matches, changed = slices.Delete(slices.Clone(matches), i, i+1), true
	}
	r.Matches = matches
	return r, changed
}

// canonicalCtStates sorts states by bit and drops repeats; ok is false when a state is
// unknown (Validate refuses the rule; it is left as it is).
func canonicalCtStates(states []string) ([]string, bool) {
	for _, s := range states {
		if _, ok := CtStateBits[s]; !ok {
			return nil, false
		}
	}
	out := slices.Clone(states)
	slices.SortStableFunc(out, func(a, b string) int { return int(CtStateBits[a]) - int(CtStateBits[b]) })
	return slices.Compact(out), true
}

// redundantNFProto returns the index of the explicit nfproto match of matches that the
// implicit guard makes redundant (see CanonicalRule), or -1.
func redundantNFProto(r Rule, matches []Match) int {
	idx := -1
	var fam Family
	for i, m := range matches {
		if m.Kind != MatchNFProto {
			continue
		}
		if idx >= 0 {
			return -1 // two or more: the dataplane adds no guard, all are explicit
		}
		idx, fam = i, m.Family
	}
	if idx < 0 {
		return -1
	}
	hasFam := func(fields []Field) bool {
		return slices.ContainsFunc(fields, func(f Field) bool { return f.Family() == fam })
	}
	// The first reader of an F field, in encoding order: the matches, then the vmap
	// (after the log and the counter).
	for i, m := range matches {
		if m.Kind == MatchLookup && hasFam(m.Fields) {
			if i == idx+1 {
				return idx
			}
			return -1
		}
	}
	if r.VMap != nil && hasFam(r.VMap.Fields) && idx == len(matches)-1 && r.Log == nil && !r.Counter {
		return idx
	}
	return -1
}
