package ruleset

import (
	"bytes"
	"fmt"
	"sort"
)

// Validate checks what the kernel would reject, so that a bad ruleset is refused with a
// clear error before a batch is sent (netlink errors carry no context): name lengths,
// duplicate names, references to missing chains and sets, key sizes, overlapping
// intervals, and lookups whose fields do not match the set's key.
func (rs *Ruleset) Validate() error {
	if rs.Table == "" || len(rs.Table) > MaxNameLen {
		return fmt.Errorf("table name %q: must be 1-%d characters", rs.Table, MaxNameLen)
	}
	chains := map[string]*Chain{}
	for _, c := range rs.Chains {
		if err := checkObject("chain", c.Name, c.Comment, chains); err != nil {
			return err
		}
		chains[c.Name] = c
	}
	sets := map[string]*Set{}
	for _, s := range rs.Sets {
		if err := checkObject("set", s.Name, s.Comment, sets); err != nil {
			return err
		}
		sets[s.Name] = s
		if err := validateSet(s, chains); err != nil {
			return err
		}
	}
	for _, c := range rs.Chains {
		for i, r := range c.Rules {
			if err := validateRule(r, chains, sets); err != nil {
				return fmt.Errorf("chain %q rule %d: %w", c.Name, i, err)
			}
		}
	}
	return nil
}

// checkObject checks the name and comment of a chain or set, and that no object of its
// kind in seen has its name.
func checkObject[T any](kind, name, comment string, seen map[string]T) error {
	if err := checkName(kind, name); err != nil {
		return err
	}
	if _, dup := seen[name]; dup {
		return fmt.Errorf("%s %q defined twice", kind, name)
	}
	if len(comment) > MaxCommentLen {
		return fmt.Errorf("%s %q: comment longer than %d", kind, name, MaxCommentLen)
	}
	return nil
}

func checkName(kind, name string) error {
	if name == "" || len(name) > MaxNameLen {
		return fmt.Errorf("%s name %q: must be 1-%d characters", kind, name, MaxNameLen)
	}
	for _, r := range name {
		if r < 0x21 || r > 0x7e || r == '"' {
			return fmt.Errorf("%s name %q: character %q not allowed", kind, name, r)
		}
	}
	return nil
}

func validateSet(s *Set, chains map[string]*Chain) error {
	if len(s.Key) == 0 {
		return fmt.Errorf("set %q: no key type", s.Name)
	}
	for _, k := range s.Key {
		if k.Len() == 0 {
			return fmt.Errorf("set %q: unknown key type %q", s.Name, k)
		}
	}
	// Duplicates: in a sorted list (every set a compiler or the engine builds) they are
	// neighbours, so a comparison with the previous element finds them without a map of
	// 50k identities; an unsorted list is checked with the map afterwards.
	sorted := true
	for i, e := range s.Elements {
		if len(e.Key) != len(s.Key) {
			return fmt.Errorf("set %q: element has %d key fields, want %d", s.Name, len(e.Key), len(s.Key))
		}
		for i, r := range e.Key {
			if len(r.From) != s.Key[i].Len() || len(r.To) != s.Key[i].Len() {
				return fmt.Errorf("set %q: element field %d has %d bytes, want %d for %s", s.Name, i, len(r.From), s.Key[i].Len(), s.Key[i])
			}
			if bytes.Compare(r.From, r.To) > 0 {
				return fmt.Errorf("set %q: element field %d is an empty range", s.Name, i)
			}
			if !s.Interval && !r.IsSingle() {
				return fmt.Errorf("set %q: range element in a set without the interval flag", s.Name)
			}
		}
		if i > 0 && sorted {
			switch CompareKeys(s.Elements[i-1].Key, e.Key) {
			case 0:
				return fmt.Errorf("set %q: duplicate element %s", s.Name, e.ID())
			case 1:
				sorted = false
			}
		}
		if s.IsMap {
			if e.Verdict == nil {
				return fmt.Errorf("set %q: map element without verdict", s.Name)
			}
			if err := validateVerdict(*e.Verdict, chains); err != nil {
				return fmt.Errorf("map %q: %w", s.Name, err)
			}
		} else if e.Verdict != nil {
			return fmt.Errorf("set %q: element has data but the set is not a map", s.Name)
		}
	}
	if !sorted {
		seen := make(map[string]bool, len(s.Elements))
		for _, e := range s.Elements {
			id := e.Identity()
			if seen[id] {
				return fmt.Errorf("set %q: duplicate element %s", s.Name, e.ID())
			}
			seen[id] = true
		}
	}
	// Single-field interval sets must not overlap: the kernel refuses overlaps (EEXIST).
	if s.Interval && len(s.Key) == 1 && len(s.Elements) > 1 {
		sorted := append([]Element(nil), s.Elements...)
		sort.Slice(sorted, func(i, j int) bool { return bytes.Compare(sorted[i].Key[0].From, sorted[j].Key[0].From) < 0 })
		for i := 1; i < len(sorted); i++ {
			if bytes.Compare(sorted[i].Key[0].From, sorted[i-1].Key[0].To) <= 0 {
				return fmt.Errorf("set %q: overlapping intervals %s and %s", s.Name, sorted[i-1].ID(), sorted[i].ID())
			}
		}
	}
	return nil
}

func validateVerdict(v Verdict, chains map[string]*Chain) error {
	switch v.Kind {
	case VerdictAccept, VerdictDrop, VerdictReturn:
		return nil
	case VerdictJump, VerdictGoto:
		c, ok := chains[v.Chain]
		if !ok {
			return fmt.Errorf("%s to missing chain %q", v.Kind, v.Chain)
		}
		if c.Base != nil {
			return fmt.Errorf("%s to base chain %q", v.Kind, v.Chain)
		}
		return nil
	}
	return fmt.Errorf("unknown verdict %q", v.Kind)
}

func validateLookup(fields []Field, set string, sets map[string]*Set, wantMap bool) error {
	s, ok := sets[set]
	if !ok {
		return fmt.Errorf("reference to missing set %q", set)
	}
	if s.IsMap != wantMap {
		return fmt.Errorf("set %q: map/set mismatch", set)
	}
	if len(fields) != len(s.Key) {
		return fmt.Errorf("lookup of %d fields in set %q with %d key fields", len(fields), set, len(s.Key))
	}
	var fam Family
	for i, f := range fields {
		if f.KeyType() != s.Key[i] {
			return fmt.Errorf("field %q does not match key type %q of set %q", f, s.Key[i], set)
		}
		if ff := f.Family(); ff != 0 {
			if fam != 0 && fam != ff {
				return fmt.Errorf("lookup mixes IPv4 and IPv6 fields")
			}
			fam = ff
		}
	}
	return nil
}

func validateRule(r Rule, chains map[string]*Chain, sets map[string]*Set) error {
	if len(r.Comment) > MaxCommentLen {
		return fmt.Errorf("comment longer than %d", MaxCommentLen)
	}
	// A rule that reads IPv4 and IPv6 fields can never match; nft refuses it outright.
	var fam Family
	checkFam := func(f Family) error {
		if f == 0 {
			return nil
		}
		if fam != 0 && fam != f {
			return fmt.Errorf("rule mixes IPv4 and IPv6 matches")
		}
		fam = f
		return nil
	}
	for _, m := range r.Matches {
		if m.Kind == MatchNFProto {
			if err := checkFam(m.Family); err != nil {
				return err
			}
		}
		for _, f := range m.Fields {
			if err := checkFam(f.Family()); err != nil {
				return err
			}
		}
	}
	if r.VMap != nil {
		for _, f := range r.VMap.Fields {
			if err := checkFam(f.Family()); err != nil {
				return err
			}
		}
	}
	for _, m := range r.Matches {
		switch m.Kind {
		case MatchLookup:
			if err := validateLookup(m.Fields, m.Set, sets, false); err != nil {
				return err
			}
		case MatchCtState:
			if len(m.CtStates) == 0 {
				return fmt.Errorf("ct state match without states")
			}
			for _, s := range m.CtStates {
				if _, ok := CtStateBits[s]; !ok {
					return fmt.Errorf("unknown ct state %q", s)
				}
			}
		case MatchNFProto:
			if m.Family != IPv4 && m.Family != IPv6 {
				return fmt.Errorf("unknown family %d", m.Family)
			}
		case MatchL4Proto:
		case MatchLimit:
			// The kernel turns a zero burst into its default, which would not read back
			// as written.
			if m.Rate == 0 || m.Burst == 0 {
				return fmt.Errorf("limit needs a positive rate and burst (rate %d, burst %d)", m.Rate, m.Burst)
			}
		case MatchCtMark:
			if m.MarkMask == 0 || m.Mark&^m.MarkMask != 0 {
				return fmt.Errorf("ct mark 0x%x outside its mask 0x%x", m.Mark, m.MarkMask)
			}
		default:
			return fmt.Errorf("unknown match kind %q", m.Kind)
		}
	}
	if r.Log != nil {
		if err := validateLogPrefix(r.Log.Prefix); err != nil {
			return err
		}
	}
	if r.VMap != nil {
		if r.Verdict.Kind != VerdictNone {
			return fmt.Errorf("rule has both a vmap and a verdict")
		}
		return validateLookup(r.VMap.Fields, r.VMap.Map, sets, true)
	}
	if r.Verdict.Kind == VerdictNone {
		// A rule without a verdict only counts or logs; allowed but must do something.
		if !r.Counter && r.Log == nil {
			return fmt.Errorf("rule has neither a verdict, a counter nor a log")
		}
		return nil
	}
	return validateVerdict(r.Verdict, chains)
}

// validateLogPrefix keeps a log prefix within the kernel's length and printable without
// escapes, so that Render's quoting matches nft's.
func validateLogPrefix(p string) error {
	if len(p) > MaxLogPrefixLen {
		return fmt.Errorf("log prefix longer than %d bytes", MaxLogPrefixLen)
	}
	for _, r := range p {
		if r < 0x20 || r > 0x7e || r == '"' || r == '\\' {
			return fmt.Errorf("log prefix %q: character %q not allowed", p, r)
		}
	}
	return nil
}
