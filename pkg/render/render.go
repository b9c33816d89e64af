// Package render is the core of `nftpolicy render`: the ruleset the agent would program
// on a node, compiled from manifests with the agent's own compiler and options, and a
// readable difference between it and a table read from a kernel.
package render

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// Compile returns the ruleset for snap.NodeName, as the agent would program it.
func Compile(snap *model.Snapshot, opts compiler.Options) *compiler.Result {
	return compiler.Compile(snap, opts)
}

// Diff describes what differs between live (the kernel's table, nil when it does not
// exist) and desired, one line per object: "+" what the kernel lacks, "-" what it has
// beyond desired, "~" a chain whose rules differ (followed by its rule lines). It
// returns "" when they are the same. Both must be normalized.
func Diff(live, desired *ruleset.Ruleset) string {
	if live == nil {
		return fmt.Sprintf("+ table inet %s (the kernel has no such table)\n", desired.Table)
	}
	ch := ruleset.Diff(live, desired)
	var b strings.Builder
	if ch.NeedsReplace {
		fmt.Fprintf(&b, "! the agent would replace table inet %s whole (a set changed its type or a base chain its hook)\n", desired.Table)
	}
	for _, s := range ch.AddSets {
		fmt.Fprintf(&b, "+ %s %s (%d elements)\n", setKind(s), s.Name, len(s.Elements))
		for _, e := range s.Elements {
			fmt.Fprintf(&b, "+   element %s %s\n", s.Name, ruleset.FormatElement(s, e))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(ch.DelElements)) {
		s := live.Set(name)
		for _, e := range ch.DelElements[name] {
			fmt.Fprintf(&b, "- element %s %s\n", name, ruleset.FormatElement(s, e))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(ch.AddElements)) {
		s := desired.Set(name)
		for _, e := range ch.AddElements[name] {
			fmt.Fprintf(&b, "+ element %s %s\n", name, ruleset.FormatElement(s, e))
		}
	}
	added := map[string]bool{}
	for _, c := range ch.AddChains {
		added[c.Name] = true
		fmt.Fprintf(&b, "+ chain %s\n", c.Name)
		for _, r := range c.Rules {
			fmt.Fprintf(&b, "+   %s\n", ruleset.FormatRule(r))
		}
	}
	for _, c := range ch.RewriteChains {
		if added[c.Name] {
			continue
		}
		fmt.Fprintf(&b, "~ chain %s\n", c.Name)
		var old []ruleset.Rule
		if lc := live.Chain(c.Name); lc != nil {
			old = lc.Rules
		}
		b.WriteString(ruleLines(old, c.Rules))
	}
	for _, c := range ch.DelChains {
		fmt.Fprintf(&b, "- chain %s (%d rules)\n", c.Name, len(c.Rules))
	}
	for _, s := range ch.DelSets {
		fmt.Fprintf(&b, "- %s %s (%d elements)\n", setKind(s), s.Name, len(s.Elements))
	}
	return b.String()
}

func setKind(s *ruleset.Set) string {
	if s.IsMap {
		return "map"
	}
	return "set"
}

// ruleLines is a line diff of two rule lists by their nft text: the longest common
// subsequence kept as context ("    "), the rest as "-   " and "+   ".
func ruleLines(old, cur []ruleset.Rule) string {
	a := make([]string, len(old))
	for i, r := range old {
		a[i] = ruleset.FormatRule(r)
	}
	c := make([]string, len(cur))
	for i, r := range cur {
		c[i] = ruleset.FormatRule(r)
	}
	// lcs[i][j] is the length of the longest common subsequence of a[i:] and c[j:].
	lcs := make([][]int, len(a)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(c)+1)
	}
	for i := len(a) - 1; i >= 0; i-- {
		for j := len(c) - 1; j >= 0; j-- {
			if a[i] == c[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var b strings.Builder
	i, j := 0, 0
	for i < len(a) || j < len(c) {
		switch {
		case i < len(a) && j < len(c) && a[i] == c[j]:
			fmt.Fprintf(&b, "      %s\n", a[i])
			i++
			j++
		case j < len(c) && (i == len(a) || lcs[i][j+1] >= lcs[i+1][j]):
			fmt.Fprintf(&b, "+     %s\n", c[j])
			j++
		default:
			fmt.Fprintf(&b, "-     %s\n", a[i])
			i++
		}
	}
	return b.String()
}
