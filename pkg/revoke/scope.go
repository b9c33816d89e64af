package revoke

import (
	"net/netip"
	"reflect"
	"slices"

	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// Scope returns the flows whose verdict the change from old to cur can have changed,
// by the addresses of their first packet, so that revocation judges those and no
// others: its cost is then what the change costs, not what the node's conntrack table
// holds. ch are the changes that turned old into cur (ruleset.Diff's or the engine's);
// without them (nil, or a whole-table replacement) every flow is in scope.
//
// A packet's verdict can only change if, in old or in cur, it meets something the
// change touched:
//   - an element added to or removed from a set or verdict map that a rule looks up
//     with an address field: only packets whose address lies in that element's key see
//     a different lookup result, so they and no others are in scope (a pod's dispatch
//     entry, a peer pod's address in a policy's set, an ipBlock's range);
//   - a chain created, rewritten or deleted (and a chain looking a changed set up by
//     ports alone, which changes what it does for every packet it sees): every packet
//     that can reach the chain is in scope. Reaching a chain means passing a jump, a
//     goto or a verdict-map element on the way from a base chain; a verdict-map element
//     keyed by an address bounds the packets to that address, a jump leaves them as
//     the jumping chain's, and a base chain holds every packet (All).
//
// The answer is sound (a flow outside it keeps its verdict) but not exact: ports,
// protocols and the other matches of a rule do not narrow it.
func Scope(old, cur *ruleset.Ruleset, ch *ruleset.Changes) dataplane.FlowScope {
	if old == nil || cur == nil || ch == nil || ch.NeedsReplace {
		return dataplane.FlowScope{All: true}
	}
	var sc dataplane.FlowScope
	changed := map[string]bool{}
	for _, list := range [][]*ruleset.Chain{ch.AddChains, ch.RewriteChains, ch.DelChains} {
		for _, c := range list {
			changed[c.Name] = true
		}
	}
	graphs := [2]*graph{newGraph(old), newGraph(cur)}
	// Elements: bounded by their addresses where the lookup reads one.
	elementChange := func(set string, els []ruleset.Element) {
		for _, g := range graphs {
			for _, u := range g.uses[set] {
				if !u.addressed() {
					changed[u.chain] = true
					continue
				}
				for _, e := range els {
					u.bound(e, &sc)
				}
			}
		}
	}
	for set, els := range ch.AddElements {
		elementChange(set, els)
	}
	for set, els := range ch.DelElements {
		elementChange(set, els)
	}
	// Whole sets come and go with the chains that use them (a new set is only looked
	// up by new or rewritten chains, a deleted one only by deleted or rewritten ones);
	// a use elsewhere would be a ruleset the diff cannot produce, taken as a change of
	// the chain rather than trusted.
	for _, list := range [][]*ruleset.Set{ch.AddSets, ch.DelSets} {
		for _, s := range list {
			for _, g := range graphs {
				for _, u := range g.uses[s.Name] {
					changed[u.chain] = true
				}
			}
		}
	}
	// A chain rewritten with the same rules but for the sets some lookups name (a
	// policy's peer selector edited: its rule now looks another set up) changes the
	// verdict of the packets in one set and not the other, and of no other: bounded
	// by the two sets' difference, not by everything that reaches the chain.
	for _, c := range ch.RewriteChains {
		if changed[c.Name] && setSwap(old, cur, c.Name, &sc) {
			delete(changed, c.Name)
		}
	}
	for name := range changed {
		for _, g := range graphs {
			g.reach(name, &sc)
			if sc.All {
				return sc
			}
		}
	}
	return sc
}

// setSwap bounds in sc the packets whose verdict changed when chain name was
// rewritten from old to cur, if every rule that differs differs only by the set an
// address lookup names; it reports false (nothing added) otherwise.
func setSwap(old, cur *ruleset.Ruleset, name string, sc *dataplane.FlowScope) bool {
	oc, nc := old.Chain(name), cur.Chain(name)
	if oc == nil || nc == nil || len(oc.Rules) != len(nc.Rules) || (oc.Base == nil) != (nc.Base == nil) {
		return false
	}
	type swap struct {
		u        use
		from, to string
	}
	var swaps []swap
	for i := range oc.Rules {
		a, b := oc.Rules[i], nc.Rules[i]
		if reflect.DeepEqual(a, b) {
			continue
		}
		if len(a.Matches) != len(b.Matches) {
			return false
		}
		ra, rb := a, b
		ra.Matches, rb.Matches = slices.Clone(a.Matches), slices.Clone(b.Matches)
		for k := range ra.Matches {
			ma, mb := ra.Matches[k], rb.Matches[k]
			if ma.Kind == ruleset.MatchLookup && mb.Kind == ruleset.MatchLookup && ma.Set != mb.Set {
				u := use{chain: name, fields: ma.Fields}
				if !u.addressed() || !slices.Equal(ma.Fields, mb.Fields) {
					return false
				}
				swaps = append(swaps, swap{u: u, from: ma.Set, to: mb.Set})
				ra.Matches[k].Set, rb.Matches[k].Set = "", ""
			}
		}
		// Comments name the sets' owners: they do not decide verdicts.
		ra.Comment, rb.Comment = "", ""
		if !reflect.DeepEqual(ra, rb) {
			return false
		}
	}
	for _, sw := range swaps {
		from, to := old.Set(sw.from), cur.Set(sw.to)
		if from == nil || to == nil {
			return false
		}
		for _, e := range symmetricDifference(from.Elements, to.Elements) {
			sw.u.bound(e, sc)
		}
	}
	return true
}

// symmetricDifference returns the elements in exactly one of a and b (by key).
func symmetricDifference(a, b []ruleset.Element) []ruleset.Element {
	in := make(map[string]bool, len(a))
	for _, e := range a {
		in[e.Identity()] = true
	}
	var out []ruleset.Element
	seen := make(map[string]bool, len(b))
	for _, e := range b {
		id := e.Identity()
		seen[id] = true
		if !in[id] {
			out = append(out, e)
		}
	}
	for _, e := range a {
		if !seen[e.Identity()] {
			out = append(out, e)
		}
	}
	return out
}

// use is a rule's lookup of a set, or its dispatch through a verdict map.
type use struct {
	chain  string
	fields []ruleset.Field
}

// addressed reports whether the lookup reads an address of the packet.
func (u use) addressed() bool {
	for _, f := range u.fields {
		if isAddr(f) {
			return true
		}
	}
	return false
}

// bound adds to sc the packets the element's key holds by address.
func (u use) bound(e ruleset.Element, sc *dataplane.FlowScope) {
	for i, f := range u.fields {
		if !isAddr(f) || i >= len(e.Key) {
			continue
		}
		r, ok := addrRange(e.Key[i])
		if !ok {
			continue
		}
		switch f {
		case ruleset.FieldIPv4Saddr, ruleset.FieldIPv6Saddr:
			sc.Src = append(sc.Src, r)
		default:
			sc.Dst = append(sc.Dst, r)
		}
		// One address field bounds the packets that match the element: further
		// fields would only narrow it.
		return
	}
}

func isAddr(f ruleset.Field) bool {
	switch f {
	case ruleset.FieldIPv4Saddr, ruleset.FieldIPv4Daddr, ruleset.FieldIPv6Saddr, ruleset.FieldIPv6Daddr:
		return true
	}
	return false
}

func addrRange(r ruleset.Range) (dataplane.AddrRange, bool) {
	from, ok1 := netip.AddrFromSlice(r.From)
	to, ok2 := netip.AddrFromSlice(r.To)
	if !ok1 || !ok2 || from.BitLen() != to.BitLen() {
		return dataplane.AddrRange{}, false
	}
	return dataplane.AddrRange{From: from, To: to}, true
}

// graph is who reaches each chain of one ruleset, built in one walk of its rules and
// verdict-map elements (plain set elements, the bulk of a ruleset, are not read).
type graph struct {
	rs   *ruleset.Ruleset
	base map[string]bool
	// jumpers are the chains with a rule that jumps or goes to the chain.
	jumpers map[string][]string
	// entries are the verdict-map elements that jump or go to the chain, with the
	// map's name.
	entries map[string][]mapEntry
	// uses are the lookups of each set and map.
	uses map[string][]use
	// done are the chains whose reach is already in the scope.
	done map[string]bool
}

type mapEntry struct {
	set string
	el  ruleset.Element
}

func newGraph(rs *ruleset.Ruleset) *graph {
	g := &graph{rs: rs, base: map[string]bool{}, jumpers: map[string][]string{}, entries: map[string][]mapEntry{},
		uses: map[string][]use{}, done: map[string]bool{}}
	maps := map[string]bool{}
	for _, c := range rs.Chains {
		if c.Base != nil {
			g.base[c.Name] = true
		}
		for _, r := range c.Rules {
			if v := r.Verdict; v.Kind == ruleset.VerdictJump || v.Kind == ruleset.VerdictGoto {
				g.jumpers[v.Chain] = append(g.jumpers[v.Chain], c.Name)
			}
			if r.VMap != nil {
				g.uses[r.VMap.Map] = append(g.uses[r.VMap.Map], use{chain: c.Name, fields: r.VMap.Fields})
				maps[r.VMap.Map] = true
			}
			for _, m := range r.Matches {
				if m.Kind == ruleset.MatchLookup {
					g.uses[m.Set] = append(g.uses[m.Set], use{chain: c.Name, fields: m.Fields})
				}
			}
		}
	}
	for _, s := range rs.Sets {
		if !s.IsMap || !maps[s.Name] {
			continue
		}
		for _, e := range s.Elements {
			if v := e.Verdict; v != nil && (v.Kind == ruleset.VerdictJump || v.Kind == ruleset.VerdictGoto) {
				g.entries[v.Chain] = append(g.entries[v.Chain], mapEntry{set: s.Name, el: e})
			}
		}
	}
	return g
}

// reach adds to sc every packet that can reach chain name in the graph's ruleset.
func (g *graph) reach(name string, sc *dataplane.FlowScope) {
	if sc.All || g.done[name] {
		return
	}
	g.done[name] = true
	if g.base[name] {
		*sc = dataplane.FlowScope{All: true}
		return
	}
	for _, from := range g.jumpers[name] {
		g.reach(from, sc)
	}
	for _, me := range g.entries[name] {
		for _, u := range g.uses[me.set] {
			if u.addressed() {
				u.bound(me.el, sc)
			} else {
				g.reach(u.chain, sc)
			}
		}
	}
}
