package ruleset

import (
	"fmt"
	"reflect"
	"slices"
)

// Changes is what turns one ruleset into another without replacing the table: the
// dataplane sends them in one batch, in the order numbered on the fields, so that no
// object is referenced before it exists or deleted while still referenced (the batch is
// one kernel transaction, so no packet sees the intermediate states anyway).
type Changes struct {
	// AddChains are new chains, created empty; their rules are in RewriteChains. They
	// come first because elements of new verdict maps may jump to them. (1)
	AddChains []*Chain
	// AddSets are new sets and maps, created with their elements. (2)
	AddSets []*Set
	// AddElements / DelElements change existing sets, keyed by set name. An element of a
	// verdict map whose verdict changed is deleted and added again. (3)
	AddElements map[string][]Element
	DelElements map[string][]Element
	// RewriteChains are new chains and chains whose rules changed: flushed and refilled. (4)
	RewriteChains []*Chain
	// DelChains are flushed and then deleted, after every reference to them is gone. (5)
	DelChains []*Chain
	// DelSets are deleted last, after the rules that referenced them. (6)
	DelSets []*Set
	// NeedsReplace is set when an incremental change is impossible (a set changed its
	// type or a base chain changed its hook): the caller replaces the whole table.
	NeedsReplace bool
}

// Empty reports whether nothing changes.
func (c *Changes) Empty() bool {
	return !c.NeedsReplace && len(c.AddSets) == 0 && len(c.AddChains) == 0 && len(c.AddElements) == 0 &&
		len(c.DelElements) == 0 && len(c.RewriteChains) == 0 && len(c.DelChains) == 0 && len(c.DelSets) == 0
}

// Ops counts the objects the change touches (sets, chains, elements, rules), the size
// of the netlink transaction.
func (c *Changes) Ops() int {
	n := len(c.AddSets) + len(c.AddChains) + len(c.DelChains) + len(c.DelSets)
	for _, s := range c.AddSets {
		n += len(s.Elements)
	}
	for _, e := range c.AddElements {
		n += len(e)
	}
	for _, e := range c.DelElements {
		n += len(e)
	}
	for _, ch := range c.RewriteChains {
		n += 1 + len(ch.Rules)
	}
	return n
}

// ValidateAgainst checks the parts of desired the changes touch — new sets and their
// elements, added elements, rewritten chains — as Validate would check them, without
// walking the rest: the cost depends on the size of the change.
func (c *Changes) ValidateAgainst(desired *Ruleset) error {
	part := &Ruleset{Table: desired.Table, Chains: desired.Chains}
	touched := map[string]bool{}
	for _, s := range c.AddSets {
		touched[s.Name] = true
	}
	for name := range c.AddElements {
		touched[name] = true
	}
	for _, s := range desired.Sets {
		switch {
		case touched[s.Name] && c.AddElements[s.Name] != nil:
			cs := *s
			cs.Elements = c.AddElements[s.Name]
			part.Sets = append(part.Sets, &cs)
		case touched[s.Name]:
			part.Sets = append(part.Sets, s)
		default:
			cs := *s
			cs.Elements = nil
			part.Sets = append(part.Sets, &cs)
		}
	}
	for name := range touched {
		if desired.Set(name) == nil {
			return fmt.Errorf("changes add to set %q, which the ruleset does not have", name)
		}
	}
	return part.Validate()
}

// Diff computes the changes from old (what the kernel holds) to desired. Both must be
// normalized. A nil old means the table does not exist: NeedsReplace is set.
func Diff(old, desired *Ruleset) *Changes {
	ch := &Changes{AddElements: map[string][]Element{}, DelElements: map[string][]Element{}}
	if old == nil || old.Table != desired.Table {
		ch.NeedsReplace = true
		return ch
	}
	var ok bool
	ch.DelSets, ok = matchByName(old.Sets, desired.Sets, func(s *Set) string { return s.Name },
		func(s *Set) { ch.AddSets = append(ch.AddSets, s) },
		func(o, s *Set) bool {
			if o == s {
				return true // the same object: unchanged (rulesets are not modified once built)
			}
			if !o.SameDefinition(s) {
				return false
			}
			add, del := diffElements(o.Elements, s.Elements)
			if len(add) > 0 {
				ch.AddElements[s.Name] = add
			}
			if len(del) > 0 {
				ch.DelElements[s.Name] = del
			}
			return true
		})
	if !ok {
		ch.NeedsReplace = true
		return ch
	}

	ch.DelChains, ok = matchByName(old.Chains, desired.Chains, func(c *Chain) string { return c.Name },
		func(c *Chain) {
			ch.AddChains = append(ch.AddChains, c)
			ch.RewriteChains = append(ch.RewriteChains, c)
		},
		func(o, c *Chain) bool {
			if !reflect.DeepEqual(o.Base, c.Base) || o.Comment != c.Comment {
				// Base chain registration and chain comments cannot be changed in place.
				return false
			}
			if o != c && !RulesEqual(o.Rules, c.Rules) {
				ch.RewriteChains = append(ch.RewriteChains, c)
			}
			return true
		})
	if !ok {
		ch.NeedsReplace = true
	}
	return ch
}

// matchByName pairs the objects of old and desired by name: it calls add for each
// object only desired has and same for each that both have, in desired's order, and
// returns the objects only old has. ok is false when same returned false; it then stops
// at once (the caller replaces the whole table).
func matchByName[T any](old, desired []T, name func(T) string, add func(T), same func(o, d T) bool) (removed []T, ok bool) {
	byName := make(map[string]T, len(old))
	for _, o := range old {
		byName[name(o)] = o
	}
	kept := make(map[string]bool, len(desired))
	for _, d := range desired {
		kept[name(d)] = true
		o, found := byName[name(d)]
		if !found {
			add(d)
			continue
		}
		if !same(o, d) {
			return nil, false
		}
	}
	for _, o := range old {
		if !kept[name(o)] {
			removed = append(removed, o)
		}
	}
	return removed, true
}

// RulesEqual compares two rule lists, treating nil and empty slices alike.
func RulesEqual(a, b []Rule) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}

// Equal compares two rules field by field (every sync compares every rule, so this
// avoids formatting them).
func (r Rule) Equal(o Rule) bool {
	if r.Counter != o.Counter || r.Verdict != o.Verdict || r.Comment != o.Comment || len(r.Matches) != len(o.Matches) ||
		(r.VMap == nil) != (o.VMap == nil) || (r.Log == nil) != (o.Log == nil) {
		return false
	}
	if r.Log != nil && *r.Log != *o.Log {
		return false
	}
	if r.VMap != nil && (r.VMap.Map != o.VMap.Map || !slices.Equal(r.VMap.Fields, o.VMap.Fields)) {
		return false
	}
	for i, m := range r.Matches {
		n := o.Matches[i]
		if m.Kind != n.Kind || m.Set != n.Set || m.Negate != n.Negate || m.Family != n.Family || m.Proto != n.Proto ||
			m.Mark != n.Mark || m.MarkMask != n.MarkMask || m.Rate != n.Rate || m.Burst != n.Burst || !slices.Equal(m.Fields, n.Fields) || !slices.Equal(m.CtStates, n.CtStates) {
			return false
		}
	}
	return true
}

// DiffElements returns the elements to add and to delete to turn old into desired (an
// element whose value changed is in both).
func DiffElements(old, desired []Element) (add, del []Element) { return diffElements(old, desired) }

func diffElements(old, desired []Element) (add, del []Element) {
	if !sortedElements(old) || !sortedElements(desired) {
		old, desired = slices.Clone(old), slices.Clone(desired)
		SortElements(old)
		SortElements(desired)
	}
	// Both sorted by key: one merge pass, no per-element allocation (a periodic
	// read-back diffs every element of the table).
	i, j := 0, 0
	for i < len(old) || j < len(desired) {
		switch {
		case j >= len(desired):
			del = append(del, old[i])
			i++
		case i >= len(old):
			add = append(add, desired[j])
			j++
		default:
			switch c := CompareKeys(old[i].Key, desired[j].Key); {
			case c < 0:
				del = append(del, old[i])
				i++
			case c > 0:
				add = append(add, desired[j])
				j++
			default:
				if !old[i].Equal(desired[j]) {
					del = append(del, old[i])
					add = append(add, desired[j])
				}
				i++
				j++
			}
		}
	}
	return add, del
}

func sortedElements(els []Element) bool {
	for i := 1; i < len(els); i++ {
		if lessKey(els[i].Key, els[i-1].Key) {
			return false
		}
	}
	return true
}

// Apply returns the ruleset that results from applying ch to old (a copy; old is not
// modified). The fake dataplane uses it; it mirrors what the kernel does with the batch,
// so the result has no Owners, like a table read from the kernel.
func (ch *Changes) Apply(old *Ruleset, desired *Ruleset) *Ruleset {
	if ch.NeedsReplace || old == nil {
		out := desired.Clone()
		out.Owners = nil
		return out
	}
	out := old.Clone()
	out.Owners = nil
	for _, s := range ch.AddSets {
		out.Sets = append(out.Sets, s.Clone())
	}
	for _, c := range ch.AddChains {
		cc := c.Clone()
		cc.Rules = nil
		out.Chains = append(out.Chains, cc)
	}
	for name, del := range ch.DelElements {
		s := out.Set(name)
		drop := map[string]bool{}
		for _, e := range del {
			drop[e.Identity()] = true
		}
		kept := s.Elements[:0]
		for _, e := range s.Elements {
			if !drop[e.Identity()] {
				kept = append(kept, e)
			}
		}
		s.Elements = kept
	}
	for name, add := range ch.AddElements {
		s := out.Set(name)
		s.Elements = append(s.Elements, add...)
	}
	for _, c := range ch.RewriteChains {
		out.Chain(c.Name).Rules = append([]Rule(nil), c.Rules...)
	}
	out.Chains = removeNamed(out.Chains, ch.DelChains, func(c *Chain) string { return c.Name })
	out.Sets = removeNamed(out.Sets, ch.DelSets, func(s *Set) string { return s.Name })
	out.Normalize()
	return out
}

// removeNamed returns in without the objects that have the name of one of del.
func removeNamed[T any](in, del []T, name func(T) string) []T {
	drop := map[string]bool{}
	for _, o := range del {
		drop[name(o)] = true
	}
	var out []T
	for _, o := range in {
		if !drop[name(o)] {
			out = append(out, o)
		}
	}
	return out
}

// Clone deep-copies the ruleset's chains and sets; Owners, never modified, is shared.
func (rs *Ruleset) Clone() *Ruleset {
	out := &Ruleset{Table: rs.Table, Owners: rs.Owners}
	for _, c := range rs.Chains {
		out.Chains = append(out.Chains, c.Clone())
	}
	for _, s := range rs.Sets {
		out.Sets = append(out.Sets, s.Clone())
	}
	return out
}

// Clone copies the chain (rules are values; their slices are shared read-only).
func (c *Chain) Clone() *Chain {
	cc := *c
	if c.Base != nil {
		b := *c.Base
		cc.Base = &b
	}
	cc.Rules = append([]Rule(nil), c.Rules...)
	return &cc
}

// Clone copies the set and its element list.
func (s *Set) Clone() *Set {
	cs := *s
	cs.Key = append([]KeyType(nil), s.Key...)
	cs.Elements = append([]Element(nil), s.Elements...)
	return &cs
}
