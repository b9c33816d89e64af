// Package tracer runs a packet through a compiled ruleset the way the kernel's nftables
// would: base chains of the packet's hook in priority order, rules in order, set and
// verdict-map lookups, jumps and returns. It is the oracle of the compiler tests and
// the engine of `explain`: it returns the verdict and the path that led to it.
package tracer

import (
	"bytes"
	"fmt"
	"net/netip"
	"sort"
	"sync"

	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// Packet is the first packet of a connection, or a later one with CtState set.
type Packet struct {
	Src, Dst netip.Addr
	// Proto is the IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1 ICMP).
	Proto uint8
	// DPort is the transport destination port.
	DPort uint16
	// ICMPType is the ICMPv6 message type when Proto is 58.
	ICMPType uint8
	// CtState is the conntrack state: "new" when empty, "established", "related", ...
	CtState string
	// CtMark is the conntrack mark of the packet's connection.
	CtMark uint32
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
	// Target is the chain a jump or goto went to.
	Target string
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

// Tracer evaluates packets against one ruleset. Sets are indexed on first use and the
// index kept, so that many packets (e.g. every conntrack entry on revocation) can be
// traced cheaply; a Cache carries the indexes of unchanged sets from one ruleset to
// the next. A Tracer is safe for concurrent use.
type Tracer struct {
	chains map[string]*ruleset.Chain
	sets   map[string]*ruleset.Set
	base   map[ruleset.Hook][]*ruleset.Chain

	mu      sync.Mutex
	indexed map[string]*indexedSet
	cache   *Cache
}

// Cache keeps set indexes across tracers, keyed by the set object: a ruleset built
// from the previous one sharing the sets that did not change (pkg/compiler's Engine
// does) re-indexes only the sets that did. Sets must not be modified once indexed.
type Cache struct {
	mu   sync.Mutex
	sets map[*ruleset.Set]*indexedSet
}

// NewCache returns an empty cache.
func NewCache() *Cache { return &Cache{sets: map[*ruleset.Set]*indexedSet{}} }

// Retain drops the indexes of sets rs does not have (call it with the current ruleset
// so that the cache does not grow without bound).
func (c *Cache) Retain(rs *ruleset.Ruleset) {
	c.mu.Lock()
	defer c.mu.Unlock()
	keep := make(map[*ruleset.Set]bool, len(rs.Sets))
	for _, s := range rs.Sets {
		keep[s] = true
	}
	for s := range c.sets {
		if !keep[s] {
			delete(c.sets, s)
		}
	}
}

func (c *Cache) index(s *ruleset.Set) *indexedSet {
	c.mu.Lock()
	defer c.mu.Unlock()
	ix := c.sets[s]
	if ix == nil {
		ix = indexSet(s)
		c.sets[s] = ix
	}
	return ix
}

// set returns the index of a set (nil when rs has no such set).
func (t *Tracer) set(name string) *indexedSet {
	t.mu.Lock()
	defer t.mu.Unlock()
	if ix, ok := t.indexed[name]; ok {
		return ix
	}
	s := t.sets[name]
	var ix *indexedSet
	switch {
	case s == nil:
	case t.cache != nil:
		ix = t.cache.index(s)
	default:
		ix = indexSet(s)
	}
	t.indexed[name] = ix
	return ix
}

// indexedSet answers lookups in O(1) for plain sets (a hash of the key bytes) and in
// O(log n) for single-field interval sets; concatenated interval sets (ports, small)
// are scanned.
type indexedSet struct {
	set    *ruleset.Set
	exact  map[string]ruleset.Element
	ranges []ruleset.Element // single-field interval sets, sorted by start
}

func indexSet(s *ruleset.Set) *indexedSet {
	ix := &indexedSet{set: s}
	switch {
	case !s.Interval:
		ix.exact = make(map[string]ruleset.Element, len(s.Elements))
		for _, e := range s.Elements {
			var k []byte
			for _, r := range e.Key {
				k = append(k, r.From...)
			}
			ix.exact[string(k)] = e
		}
	case len(s.Key) == 1:
		ix.ranges = append([]ruleset.Element(nil), s.Elements...)
		sort.Slice(ix.ranges, func(i, j int) bool { return bytes.Compare(ix.ranges[i].Key[0].From, ix.ranges[j].Key[0].From) < 0 })
	}
	return ix
}

func (ix *indexedSet) lookup(values [][]byte) (ruleset.Element, bool) {
	switch {
	case ix.exact != nil:
		var k []byte
		for _, v := range values {
			k = append(k, v...)
		}
		e, ok := ix.exact[string(k)]
		return e, ok
	case ix.ranges != nil || (ix.set.Interval && len(ix.set.Key) == 1):
		if len(values) != 1 {
			return ruleset.Element{}, false
		}
		v := values[0]
		// The last range starting at or before v is the only candidate (ranges are disjoint).
		i := sort.Search(len(ix.ranges), func(i int) bool { return bytes.Compare(ix.ranges[i].Key[0].From, v) > 0 }) - 1
		if i >= 0 && ix.ranges[i].Key[0].Contains(v) {
			return ix.ranges[i], true
		}
		return ruleset.Element{}, false
	}
	return ix.set.Lookup(values)
}

// New prepares a tracer for rs. rs must not change while the tracer is in use.
func New(rs *ruleset.Ruleset) *Tracer { return NewWithCache(rs, nil) }

// NewWithCache is New, taking set indexes from cache (nil: none).
func NewWithCache(rs *ruleset.Ruleset, cache *Cache) *Tracer {
	t := &Tracer{chains: map[string]*ruleset.Chain{}, sets: map[string]*ruleset.Set{}, base: map[ruleset.Hook][]*ruleset.Chain{},
		indexed: map[string]*indexedSet{}, cache: cache}
	for _, c := range rs.Chains {
		t.chains[c.Name] = c
		if c.Base != nil {
			t.base[c.Base.Hook] = append(t.base[c.Base.Hook], c)
		}
	}
	for _, chains := range t.base {
		sort.SliceStable(chains, func(i, j int) bool {
			if chains[i].Base.Priority != chains[j].Base.Priority {
				return chains[i].Base.Priority < chains[j].Base.Priority
			}
			return chains[i].Name < chains[j].Name
		})
	}
	for _, s := range rs.Sets {
		t.sets[s.Name] = s
	}
	return t
}

// Trace evaluates pkt against rs.
func Trace(rs *ruleset.Ruleset, pkt Packet) Result { return New(rs).Trace(pkt) }

// evaluation is the state of one packet's trace.
type evaluation struct {
	*Tracer
	pkt   Packet
	steps []Step
	quiet bool // verdict only: no steps recorded
}

func (t *evaluation) step(s func() Step) {
	if !t.quiet {
		t.steps = append(t.steps, s())
	}
}

// Trace evaluates pkt.
func (tr *Tracer) Trace(pkt Packet) Result { return tr.trace(pkt, false) }

// Allowed reports whether pkt passes, without recording the path (cheaper than Trace
// when only the verdict matters).
func (tr *Tracer) Allowed(pkt Packet) bool { return tr.trace(pkt, true).Allowed() }

func (tr *Tracer) trace(pkt Packet, quiet bool) Result {
	if pkt.Hook == "" {
		pkt.Hook = ruleset.HookForward
	}
	if pkt.CtState == "" {
		pkt.CtState = "new"
	}
	t := &evaluation{Tracer: tr, pkt: pkt, quiet: quiet}
	// Every base chain of the hook sees the packet unless one drops it: an accept ends
	// only its own chain.
	for _, c := range tr.base[pkt.Hook] {
		v := t.chain(c, 0)
		if v == ruleset.VerdictDrop {
			return Result{Verdict: ruleset.VerdictDrop, Steps: t.steps}
		}
		if v != ruleset.VerdictAccept {
			t.step(func() Step { return Step{Chain: c.Name, Rule: -1, Verdict: "policy accept"} })
		}
	}
	return Result{Verdict: ruleset.VerdictAccept, Steps: t.steps}
}

// chain evaluates a chain and returns accept, drop, or none (fell off the end or returned).
func (t *evaluation) chain(c *ruleset.Chain, depth int) ruleset.VerdictKind {
	if depth > maxDepth {
		// The kernel refuses rulesets this deep; treat as a drop so a test notices.
		t.step(func() Step { return Step{Chain: c.Name, Rule: -1, Verdict: "drop (jump stack exhausted)"} })
		return ruleset.VerdictDrop
	}
	for i, r := range c.Rules {
		if !t.matches(r.Matches) {
			continue
		}
		var v ruleset.Verdict
		if r.VMap != nil {
			m := t.set(r.VMap.Map)
			if m == nil {
				continue
			}
			vals, ok := t.pkt.Values(r.VMap.Fields)
			if !ok {
				continue
			}
			e, found := m.lookup(vals)
			if !found || e.Verdict == nil {
				continue
			}
			v = *e.Verdict
		} else {
			v = r.Verdict
		}
		t.step(func() Step {
			return Step{Chain: c.Name, Rule: i, Text: ruleset.FormatRule(r), Comment: r.Comment, Verdict: v.String(), Target: v.Chain}
		})
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

func (t *evaluation) matches(ms []ruleset.Match) bool {
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
			if t.pkt.Family() != m.Family {
				return false
			}
		case ruleset.MatchL4Proto:
			if t.pkt.Proto != m.Proto {
				return false
			}
		case ruleset.MatchCtMark:
			if t.pkt.CtMark&m.MarkMask != m.Mark {
				return false
			}
		case ruleset.MatchLimit:
			// A trace is one packet: it is always within the rate. The rules that use a
			// limit (logging) have no verdict, so the result does not depend on it.
		case ruleset.MatchLookup:
			s := t.set(m.Set)
			if s == nil {
				return false
			}
			vals, ok := t.pkt.Values(m.Fields)
			if !ok {
				// A field of the other family: nft's implicit nfproto check fails.
				return false
			}
			_, found := s.lookup(vals)
			if found == m.Negate {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// Family is the packet's address family, that of its source address.
func (p Packet) Family() ruleset.Family {
	if p.Src.Is4() {
		return ruleset.IPv4
	}
	return ruleset.IPv6
}

// Values loads fields from the packet as a rule's lookup reads them (big-endian, one
// value per field); false when a field does not apply to it (a field of the other
// family, where nft's implicit nfproto check fails). The tracer and explain's kernel
// check both read packets through it.
func (p Packet) Values(fields []ruleset.Field) ([][]byte, bool) {
	out := make([][]byte, len(fields))
	for i, f := range fields {
		if fam := f.Family(); fam != 0 && fam != p.Family() {
			return nil, false
		}
		switch f {
		case ruleset.FieldIPv4Saddr, ruleset.FieldIPv6Saddr:
			out[i] = p.Src.AsSlice()
		case ruleset.FieldIPv4Daddr, ruleset.FieldIPv6Daddr:
			out[i] = p.Dst.AsSlice()
		case ruleset.FieldL4Proto:
			out[i] = []byte{p.Proto}
		case ruleset.FieldDPort:
			out[i] = []byte{byte(p.DPort >> 8), byte(p.DPort)}
		case ruleset.FieldICMPv6Type:
			out[i] = []byte{p.ICMPType}
		default:
			return nil, false
		}
	}
	return out, true
}
