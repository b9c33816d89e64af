// Package tracer runs a packet through a compiled ruleset the way the kernel's nftables
// would: base chains of the packet's hook in priority order, rules in order, set and
// verdict-map lookups, jumps and returns. It is the oracle of the compiler tests and
// the engine of `explain`: it returns the verdict and the path that led to it.
package tracer

import (
	"fmt"
	"net/netip"
	"sort"

	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// Packet is the first packet of a connection, or a later one with CtState set.
type Packet struct {
	Src, Dst netip.Addr
	// Proto is the IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1 ICMP).
	Proto uint8
	// DPort is the transport destination port.
	DPort uint16
	// CtState is the conntrack state: "new" when empty, "established", "related", ...
	CtState string
	// Hook is where the packet meets netfilter: forward (routed through the node, the
	// default), input (to the node) or output (from the node).
	Hook ruleset.Hook
}

func (p Packet) String() string {
	state := p.CtState
	if state == "" {
		state = "new"
	}
	hook := p.Hook
	if hook == "" {
		hook = ruleset.HookForward
	}
	return fmt.Sprintf("%s -> %s %s/%d (%s, %s)", p.Src, p.Dst, ruleset.ProtoName(p.Proto), p.DPort, state, hook)
}

// Step is one rule that matched on the way, or a base chain's end.
type Step struct {
	Chain   string
	Rule    int // index in the chain; -1 for "fell off the end"
	Text    string
	Comment string
	// Verdict is what the step did: accept, drop, jump <chain>, return, or "" for a
	// matching rule without a verdict (a counter).
	Verdict string
}

func (s Step) String() string {
	if s.Rule < 0 {
		return fmt.Sprintf("%s: end of chain (%s)", s.Chain, s.Verdict)
	}
	return fmt.Sprintf("%s[%d]: %s", s.Chain, s.Rule, s.Text)
}

// Result is the verdict and the path.
type Result struct {
	// Verdict is accept or drop.
	Verdict ruleset.VerdictKind
	Steps   []Step
}

// Allowed reports whether the packet passes.
func (r Result) Allowed() bool { return r.Verdict == ruleset.VerdictAccept }

// Last returns the step that decided the verdict of the last base chain evaluated.
func (r Result) Last() Step {
	if len(r.Steps) == 0 {
		return Step{}
	}
	return r.Steps[len(r.Steps)-1]
}

// maxDepth bounds jumps like the kernel's NFT_JUMP_STACK_SIZE.
const maxDepth = 16

type tracer struct {
	rs     *ruleset.Ruleset
	pkt    Packet
	steps  []Step
	chains map[string]*ruleset.Chain
	sets   map[string]*ruleset.Set
}

// Trace evaluates pkt against rs.
func Trace(rs *ruleset.Ruleset, pkt Packet) Result {
	if pkt.Hook == "" {
		pkt.Hook = ruleset.HookForward
	}
	if pkt.CtState == "" {
		pkt.CtState = "new"
	}
	t := &tracer{rs: rs, pkt: pkt, chains: map[string]*ruleset.Chain{}, sets: map[string]*ruleset.Set{}}
	var base []*ruleset.Chain
	for _, c := range rs.Chains {
		t.chains[c.Name] = c
		if c.Base != nil && c.Base.Hook == pkt.Hook {
			base = append(base, c)
		}
	}
	for _, s := range rs.Sets {
		t.sets[s.Name] = s
	}
	sort.SliceStable(base, func(i, j int) bool {
		if base[i].Base.Priority != base[j].Base.Priority {
			return base[i].Base.Priority < base[j].Base.Priority
		}
		return base[i].Name < base[j].Name
	})
	// Every base chain of the hook sees the packet unless one drops it: an accept ends
	// only its own chain.
	for _, c := range base {
		v := t.chain(c, 0)
		if v == ruleset.VerdictDrop {
			return Result{Verdict: ruleset.VerdictDrop, Steps: t.steps}
		}
		if v != ruleset.VerdictAccept {
			t.steps = append(t.steps, Step{Chain: c.Name, Rule: -1, Verdict: "policy accept"})
		}
	}
	return Result{Verdict: ruleset.VerdictAccept, Steps: t.steps}
}

// chain evaluates a chain and returns accept, drop, or none (fell off the end or returned).
func (t *tracer) chain(c *ruleset.Chain, depth int) ruleset.VerdictKind {
	if depth > maxDepth {
		// The kernel refuses rulesets this deep; treat as a drop so a test notices.
		t.steps = append(t.steps, Step{Chain: c.Name, Rule: -1, Verdict: "drop (jump stack exhausted)"})
		return ruleset.VerdictDrop
	}
	for i, r := range c.Rules {
		if !t.matches(r.Matches) {
			continue
		}
		var v ruleset.Verdict
		if r.VMap != nil {
			m := t.sets[r.VMap.Map]
			if m == nil {
				continue
			}
			vals, ok := t.values(r.VMap.Fields)
			if !ok {
				continue
			}
			e, found := m.Lookup(vals)
			if !found || e.Verdict == nil {
				continue
			}
			v = *e.Verdict
		} else {
			v = r.Verdict
		}
		t.steps = append(t.steps, Step{Chain: c.Name, Rule: i, Text: ruleset.FormatRule(r), Comment: r.Comment, Verdict: v.String()})
		switch v.Kind {
		case ruleset.VerdictAccept, ruleset.VerdictDrop:
			return v.Kind
		case ruleset.VerdictReturn:
			return ruleset.VerdictNone
		case ruleset.VerdictJump, ruleset.VerdictGoto:
			target := t.chains[v.Chain]
			if target == nil {
				continue
			}
			res := t.chain(target, depth+1)
			if res != ruleset.VerdictNone || v.Kind == ruleset.VerdictGoto {
				return res
			}
		}
	}
	return ruleset.VerdictNone
}

func (t *tracer) matches(ms []ruleset.Match) bool {
	for _, m := range ms {
		switch m.Kind {
		case ruleset.MatchCtState:
			ok := false
			for _, s := range m.CtStates {
				if s == t.pkt.CtState {
					ok = true
				}
			}
			if !ok {
				return false
			}
		case ruleset.MatchNFProto:
			if t.family() != m.Family {
				return false
			}
		case ruleset.MatchL4Proto:
			if t.pkt.Proto != m.Proto {
				return false
			}
		case ruleset.MatchLookup:
			s := t.sets[m.Set]
			if s == nil {
				return false
			}
			vals, ok := t.values(m.Fields)
			if !ok {
				// A field of the other family: nft's implicit nfproto check fails.
				return false
			}
			_, found := s.Lookup(vals)
			if found == m.Negate {
				return false
			}
		default:
			return false
		}
	}
	return true
}

func (t *tracer) family() ruleset.Family {
	if t.pkt.Src.Is4() {
		return ruleset.IPv4
	}
	return ruleset.IPv6
}

// values loads the fields from the packet; false when a field does not apply to it.
func (t *tracer) values(fields []ruleset.Field) ([][]byte, bool) {
	out := make([][]byte, len(fields))
	for i, f := range fields {
		if fam := f.Family(); fam != 0 && fam != t.family() {
			return nil, false
		}
		switch f {
		case ruleset.FieldIPv4Saddr, ruleset.FieldIPv6Saddr:
			out[i] = t.pkt.Src.AsSlice()
		case ruleset.FieldIPv4Daddr, ruleset.FieldIPv6Daddr:
			out[i] = t.pkt.Dst.AsSlice()
		case ruleset.FieldL4Proto:
			out[i] = []byte{t.pkt.Proto}
		case ruleset.FieldDPort:
			out[i] = []byte{byte(t.pkt.DPort >> 8), byte(t.pkt.DPort)}
		default:
			return nil, false
		}
	}
	return out, true
}
