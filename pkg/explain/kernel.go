package explain

import (
	"fmt"
	"strings"

	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
	"github.com/nftpolicy/nftpolicy/pkg/tracer"
)

// Drift is a difference between the compiled ruleset of a node and the table its kernel
// holds, limited to what the verdict of one explanation depends on.
type Drift struct {
	Node string
	// Differences lists what differs, one sentence each; empty when the kernel holds
	// everything the verdict depends on.
	Differences []string
	// KernelAllowed is the verdict of the same packet traced through the kernel's table.
	KernelAllowed bool
	KernelTrace   tracer.Result
}

// CheckKernel compares, for every hop of ex judged by node, the chains the packet
// passes and the set elements their rules look up with live, the table read from that
// node's kernel (nil: the table does not exist). It returns nil when no hop is judged
// by node. Membership is compared both ways: an element the verdict needs must be
// there, and one whose presence would change a lookup's result must not.
func CheckKernel(ex *Explanation, node string, live *ruleset.Ruleset) *Drift {
	var d *Drift
	for _, h := range ex.Hops {
		if h.Node != node {
			continue
		}
		if d == nil {
			d = &Drift{Node: node, KernelAllowed: true}
		}
		if live == nil {
			d.Differences = append(d.Differences, fmt.Sprintf("table inet %s does not exist in the kernel", h.Ruleset.Table))
			d.KernelAllowed = true // no table: nothing filters
			continue
		}
		d.Differences = append(d.Differences, compareHop(h, live)...)
		kt := tracer.Trace(live, h.Packet)
		d.KernelTrace = kt
		if !kt.Allowed() {
			d.KernelAllowed = false
		}
		if kt.Allowed() != h.Trace.Allowed() {
			d.Differences = append(d.Differences, fmt.Sprintf("the kernel's table %s this packet; the compiled ruleset would %s it",
				verb(kt.Allowed()), verbBare(h.Trace.Allowed())))
		}
	}
	return d
}

func verb(allowed bool) string {
	if allowed {
		return "accepts"
	}
	return "drops"
}

func verbBare(allowed bool) string {
	if allowed {
		return "accept"
	}
	return "drop"
}

// compareHop compares the chains of the hop's path and their lookups.
func compareHop(h Hop, live *ruleset.Ruleset) []string {
	var out []string
	// The chains on the path: every base chain of the hook (each sees the packet) and
	// every chain a step was in.
	var chains []string
	seen := map[string]bool{}
	add := func(n string) {
		if !seen[n] {
			seen[n] = true
			chains = append(chains, n)
		}
	}
	for _, c := range h.Ruleset.Chains {
		if c.Base != nil && c.Base.Hook == h.Hook {
			add(c.Name)
		}
	}
	for _, st := range h.Trace.Steps {
		add(st.Chain)
		// A chain jumped to whose rules all failed to match has no step of its own,
		// yet its lookups decided the verdict.
		if st.Target != "" {
			add(st.Target)
		}
	}
	checkedSets := map[string]bool{}
	for _, name := range chains {
		want := h.Ruleset.Chain(name)
		if want == nil {
			continue
		}
		got := live.Chain(name)
		if got == nil {
			out = append(out, fmt.Sprintf("chain %s is missing from the kernel", name))
			continue
		}
		if !ruleset.RulesEqual(want.Rules, got.Rules) {
			out = append(out, describeRules(name, want.Rules, got.Rules)...)
		}
		for _, r := range want.Rules {
			var lookups []lookup
			for _, m := range r.Matches {
				if m.Kind == ruleset.MatchLookup {
					lookups = append(lookups, lookup{m.Fields, m.Set})
				}
			}
			if r.VMap != nil {
				lookups = append(lookups, lookup{r.VMap.Fields, r.VMap.Map})
			}
			for _, l := range lookups {
				if checkedSets[l.set] {
					continue
				}
				vals, ok := h.Packet.Values(l.fields)
				if !ok {
					continue // a lookup of the other family: never evaluated
				}
				checkedSets[l.set] = true
				out = append(out, compareLookup(h.Ruleset.Set(l.set), live.Set(l.set), l.set, vals)...)
			}
		}
	}
	return out
}

// lookup is a rule's set or map lookup.
type lookup struct {
	fields []ruleset.Field
	set    string
}

// compareLookup compares the result of one lookup in the compiled and the live set.
func compareLookup(want, got *ruleset.Set, name string, vals [][]byte) []string {
	if want == nil {
		return nil
	}
	if got == nil {
		return []string{fmt.Sprintf("set %s is missing from the kernel", name)}
	}
	we, wok := want.Lookup(vals)
	ge, gok := got.Lookup(vals)
	switch {
	case wok && !gok:
		return []string{fmt.Sprintf("set %s lacks element %s", name, ruleset.FormatElement(want, we))}
	case !wok && gok:
		return []string{fmt.Sprintf("set %s has element %s, which the compiled ruleset does not", name, ruleset.FormatElement(got, ge))}
	case wok && gok && !we.Equal(ge):
		return []string{fmt.Sprintf("set %s holds %s where the compiled ruleset has %s", name, ruleset.FormatElement(got, ge), ruleset.FormatElement(want, we))}
	}
	return nil
}

// describeRules lists the rules of a chain that differ, by nft text.
func describeRules(chain string, want, got []ruleset.Rule) []string {
	var out []string
	for i := 0; i < len(want) || i < len(got); i++ {
		var w, g string
		if i < len(want) {
			w = ruleset.FormatRule(want[i])
		}
		if i < len(got) {
			g = ruleset.FormatRule(got[i])
		}
		switch {
		case w == g:
		case g == "":
			out = append(out, fmt.Sprintf("chain %s: rule %d is missing from the kernel: %s", chain, i, w))
		case w == "":
			out = append(out, fmt.Sprintf("chain %s: the kernel has an extra rule %d: %s", chain, i, g))
		default:
			out = append(out, fmt.Sprintf("chain %s: rule %d differs: compiled %q, kernel %q", chain, i, w, g))
		}
	}
	return out
}

// Format prints the drift report.
func (d *Drift) Format() string {
	var b strings.Builder
	if len(d.Differences) == 0 {
		fmt.Fprintf(&b, "kernel of %s: holds every chain, rule and element this verdict depends on\n", d.Node)
		return b.String()
	}
	fmt.Fprintf(&b, "kernel of %s: DRIFT, the kernel's table differs where this verdict depends on it (the kernel %s the packet):\n", d.Node, verb(d.KernelAllowed))
	for _, s := range d.Differences {
		fmt.Fprintf(&b, "  - %s\n", s)
	}
	return b.String()
}
