// Package ruleset is the plain-Go model of the nftables table the agent owns: sets, verdict
// maps, base and regular chains and their rules. The compiler produces it, the tracer
// evaluates packets through it, the dataplane turns it into netlink messages, and Render
// prints it in nft syntax. It has no kernel dependency.
//
// Beside the table, a compiled ruleset carries its Owners (owners.go): the role of each
// chain, rule and set and the NetworkPolicies it serves, which the metrics, the
// denied-connection log and explain read instead of parsing names and comments.
// Validation is in validate.go, diffs in diff.go, nft text in render.go.
package ruleset

import (
	"bytes"
	"encoding/hex"
	"net/netip"
	"sort"
	"strings"
)

// Limits we hold names and comments to. The kernel allows 256 bytes for names
// (NFT_NAME_MAXLEN) and for user data (a comment and whatever else the dataplane
// stores beside it); we stay well below so that an nft listing stays readable. A long
// policy name is cut short in names and comments; Owners keeps it whole.
const (
	MaxNameLen    = 64
	MaxCommentLen = 128
)

// KeyType is the datatype of one field of a set key.
type KeyType string

const (
	KeyIPv4Addr KeyType = "ipv4_addr"
	KeyIPv6Addr KeyType = "ipv6_addr"
	KeyL4Proto  KeyType = "inet_proto"
	KeyPort     KeyType = "inet_service"
	KeyICMPv6   KeyType = "icmpv6_type"
)

// Len is the size of the field in bytes (unpadded).
func (k KeyType) Len() int {
	switch k {
	case KeyIPv4Addr:
		return 4
	case KeyIPv6Addr:
		return 16
	case KeyL4Proto, KeyICMPv6:
		return 1
	case KeyPort:
		return 2
	}
	return 0
}

// Field is a value the rules read from a packet.
type Field string

const (
	FieldIPv4Saddr Field = "ip saddr"
	FieldIPv4Daddr Field = "ip daddr"
	FieldIPv6Saddr Field = "ip6 saddr"
	FieldIPv6Daddr Field = "ip6 daddr"
	FieldL4Proto   Field = "meta l4proto"
	// FieldDPort is the transport destination port (`th dport`): bytes 2-3 of the
	// transport header, the same offset for TCP, UDP and SCTP. It is only meaningful
	// when the protocol is also matched, which is why the compiler always concatenates
	// it with FieldL4Proto.
	FieldDPort Field = "th dport"
	// FieldICMPv6Type is the ICMPv6 message type, the first byte of the transport
	// header; meaningful only with `meta l4proto ipv6-icmp` matched first.
	FieldICMPv6Type Field = "icmpv6 type"
)

// KeyType is the set key type matching the field.
func (f Field) KeyType() KeyType {
	switch f {
	case FieldIPv4Saddr, FieldIPv4Daddr:
		return KeyIPv4Addr
	case FieldIPv6Saddr, FieldIPv6Daddr:
		return KeyIPv6Addr
	case FieldL4Proto:
		return KeyL4Proto
	case FieldDPort:
		return KeyPort
	case FieldICMPv6Type:
		return KeyICMPv6
	}
	return ""
}

// Family is the network family a field belongs to (nfproto), or 0 for family-neutral fields.
func (f Field) Family() Family {
	switch f {
	case FieldIPv4Saddr, FieldIPv4Daddr:
		return IPv4
	case FieldIPv6Saddr, FieldIPv6Daddr, FieldICMPv6Type:
		return IPv6
	}
	return 0
}

// Family is an IP family.
type Family uint8

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	if f == IPv6 {
		return "ipv6"
	}
	return "ipv4"
}

// Range is one field of a set element key: the closed interval [From, To] of big-endian
// values. For non-interval sets From equals To.
type Range struct {
	From, To []byte
}

// Single is a Range holding exactly one value.
func Single(b []byte) Range { return Range{From: b, To: b} }

// AddrRange is the range of addresses [from, to].
func AddrRange(from, to netip.Addr) Range {
	return Range{From: from.AsSlice(), To: to.AsSlice()}
}

// Addr is the single address a.
func Addr(a netip.Addr) Range { return Single(a.AsSlice()) }

// Proto is a single IP protocol number.
func Proto(p uint8) Range { return Single([]byte{p}) }

// PortRange is the range of ports [from, to].
func PortRange(from, to uint16) Range {
	return Range{From: []byte{byte(from >> 8), byte(from)}, To: []byte{byte(to >> 8), byte(to)}}
}

// IsSingle reports whether the range holds one value.
func (r Range) IsSingle() bool { return bytes.Equal(r.From, r.To) }

// Contains reports whether v lies in the range.
func (r Range) Contains(v []byte) bool {
	return bytes.Compare(r.From, v) <= 0 && bytes.Compare(v, r.To) <= 0
}

// VerdictKind is what a rule or map element does with a packet.
type VerdictKind string

const (
	VerdictNone   VerdictKind = ""
	VerdictAccept VerdictKind = "accept"
	VerdictDrop   VerdictKind = "drop"
	VerdictJump   VerdictKind = "jump"
	VerdictGoto   VerdictKind = "goto"
	VerdictReturn VerdictKind = "return"
)

// Verdict is a terminal statement; Chain names the target of jump and goto.
type Verdict struct {
	Kind  VerdictKind
	Chain string
}

func (v Verdict) String() string {
	if v.Kind == VerdictJump || v.Kind == VerdictGoto {
		return string(v.Kind) + " " + v.Chain
	}
	return string(v.Kind)
}

// Accept, Drop and Jump are shorthands for common verdicts.
var (
	Accept = Verdict{Kind: VerdictAccept}
	Drop   = Verdict{Kind: VerdictDrop}
)

// Jump is `jump chain`.
func Jump(chain string) Verdict { return Verdict{Kind: VerdictJump, Chain: chain} }

// Element is one set or verdict-map element.
type Element struct {
	Key []Range
	// Verdict is the data of a verdict-map element.
	Verdict *Verdict
}

// ID is a stable identity of the element's key (the data is not part of it: a map holds
// one element per key).
func (e Element) ID() string {
	var sb strings.Builder
	for i, r := range e.Key {
		if i > 0 {
			sb.WriteByte('.')
		}
		sb.WriteString(hex.EncodeToString(r.From))
		if !r.IsSingle() {
			sb.WriteByte('-')
			sb.WriteString(hex.EncodeToString(r.To))
		}
	}
	return sb.String()
}

// Identity is the element's key as a compact binary string, for map keys on hot paths
// (diffs of large sets); ID is the readable form.
func (e Element) Identity() string {
	n := 0
	for _, r := range e.Key {
		n += 1 + len(r.From) + len(r.To)
	}
	b := make([]byte, 0, n)
	for _, r := range e.Key {
		// The field lengths are fixed by the set's type, so From and To need no
		// separator; the marker keeps a single value apart from a range.
		if r.IsSingle() {
			b = append(b, 0)
			b = append(b, r.From...)
		} else {
			b = append(b, 1)
			b = append(b, r.From...)
			b = append(b, r.To...)
		}
	}
	return string(b)
}

// Equal compares key and data.
func (e Element) Equal(o Element) bool {
	if e.Identity() != o.Identity() {
		return false
	}
	if (e.Verdict == nil) != (o.Verdict == nil) {
		return false
	}
	return e.Verdict == nil || *e.Verdict == *o.Verdict
}

// Set is a named set, or a verdict map when IsMap is set.
type Set struct {
	Name    string
	Comment string
	// Key holds one type per field; more than one makes a concatenation.
	Key []KeyType
	// Interval sets hold ranges (flags interval).
	Interval bool
	// IsMap makes this a verdict map (`type <key> : verdict`).
	IsMap    bool
	Elements []Element
}

// SameDefinition reports whether two sets have the same type and flags (elements aside).
func (s *Set) SameDefinition(o *Set) bool {
	if s.Name != o.Name || s.Interval != o.Interval || s.IsMap != o.IsMap || len(s.Key) != len(o.Key) {
		return false
	}
	for i := range s.Key {
		if s.Key[i] != o.Key[i] {
			return false
		}
	}
	return true
}

// Lookup finds the element whose key contains the values, one per key field.
func (s *Set) Lookup(values [][]byte) (Element, bool) {
	if len(values) != len(s.Key) {
		return Element{}, false
	}
outer:
	for _, e := range s.Elements {
		for i, r := range e.Key {
			if !r.Contains(values[i]) {
				continue outer
			}
		}
		return e, true
	}
	return Element{}, false
}

// SortElements orders elements by key so equal sets compare equal.
func (s *Set) SortElements() { SortElements(s.Elements) }

// SortElements sorts elements by key, the order Normalize puts a set's elements in.
func SortElements(els []Element) {
	sort.Slice(els, func(i, j int) bool { return lessKey(els[i].Key, els[j].Key) })
}

// CompareKeys orders element keys as SortElements does: -1, 0 or +1.
func CompareKeys(a, b []Range) int {
	switch {
	case lessKey(a, b):
		return -1
	case lessKey(b, a):
		return 1
	}
	return 0
}

func lessKey(a, b []Range) bool {
	for i := range a {
		if i >= len(b) {
			return false
		}
		if c := bytes.Compare(a[i].From, b[i].From); c != 0 {
			return c < 0
		}
		if c := bytes.Compare(a[i].To, b[i].To); c != 0 {
			return c < 0
		}
	}
	return len(a) < len(b)
}

// MatchKind is the kind of a rule condition.
type MatchKind string

const (
	// MatchCtState: `ct state { CtStates }`.
	MatchCtState MatchKind = "ct state"
	// MatchLookup: `Fields[0] . Fields[1] ... @Set` (negated with `!=`).
	MatchLookup MatchKind = "lookup"
	// MatchNFProto: `meta nfproto Family`.
	MatchNFProto MatchKind = "nfproto"
	// MatchL4Proto: `meta l4proto Proto`.
	MatchL4Proto MatchKind = "l4proto"
	// MatchCtMark: `ct mark & MarkMask == Mark`.
	MatchCtMark MatchKind = "ct mark"
	// MatchLimit: `limit rate Rate/second burst Burst packets`, a token bucket that
	// holds while the packet rate is under the limit (the kernel's nft_limit).
	MatchLimit MatchKind = "limit"
)

// MaxLogPrefixLen is the longest log prefix: the kernel keeps NF_LOG_PREFIXLEN (128)
// bytes including the terminating NUL.
const MaxLogPrefixLen = 127

// DefaultLimitBurst is the burst nft assumes (and omits when printing) for a packet limit.
const DefaultLimitBurst = 5

// Match is one condition of a rule; all conditions of a rule must hold.
type Match struct {
	Kind MatchKind
	// CtStates for MatchCtState: "established", "related", "new", "invalid".
	CtStates []string
	// Fields and Set for MatchLookup.
	Fields []Field
	Set    string
	Negate bool
	// Family for MatchNFProto.
	Family Family
	// Proto for MatchL4Proto.
	Proto uint8
	// Mark and MarkMask for MatchCtMark.
	Mark, MarkMask uint32
	// Rate (packets per second) and Burst (packets) for MatchLimit.
	Rate  uint64
	Burst uint32
}

// Rule is a list of matches followed by an optional log statement, an optional counter
// and a verdict, or by a verdict-map dispatch (VMap) which is terminal when an element
// matches and falls through otherwise.
type Rule struct {
	Matches []Match
	// Log sends the packet to an nflog group; it is not a verdict, evaluation goes on.
	Log     *Log
	Counter bool
	Verdict Verdict
	VMap    *VMap
	Comment string
}

// Log is `log prefix "Prefix" group Group`: the packet is copied to userspace through
// nfnetlink_log group Group with Prefix attached.
type Log struct {
	Group  uint16
	Prefix string
}

// VMap is `Fields vmap @Map`.
type VMap struct {
	Fields []Field
	Map    string
}

// Hook is a netfilter hook of a base chain.
type Hook string

const (
	HookPrerouting  Hook = "prerouting"
	HookInput       Hook = "input"
	HookForward     Hook = "forward"
	HookOutput      Hook = "output"
	HookPostrouting Hook = "postrouting"
)

// BaseChain holds the hook registration of a base chain. Policy is always accept: the
// agent drops only what a rule drops.
type BaseChain struct {
	Hook     Hook
	Priority int
}

// Chain is a base chain (Base set) or a regular chain.
type Chain struct {
	Name    string
	Comment string
	Base    *BaseChain
	Rules   []Rule
}

// Ruleset is the whole table `inet <Table>`.
type Ruleset struct {
	Table  string
	Chains []*Chain
	Sets   []*Set
	// Owners says whom each chain, rule and set of a compiled ruleset serves; nil for a
	// ruleset read from the kernel. It is not part of the table: Diff, Validate and the
	// dataplane ignore it, and Clone shares it (owners are never modified).
	Owners *Owners
}

// Normalize sorts chains, sets and elements and puts every rule in its canonical form
// (CanonicalRule) so that equal rulesets are deeply equal and render identically.
func (rs *Ruleset) Normalize() {
	sort.Slice(rs.Chains, func(i, j int) bool { return rs.Chains[i].Name < rs.Chains[j].Name })
	sort.Slice(rs.Sets, func(i, j int) bool { return rs.Sets[i].Name < rs.Sets[j].Name })
	for _, s := range rs.Sets {
		s.SortElements()
	}
	for _, c := range rs.Chains {
		for i := range c.Rules {
			if r, changed := CanonicalRule(c.Rules[i]); changed {
				c.Rules[i] = r
			}
		}
	}
}

// Chain returns the chain with the given name, or nil.
func (rs *Ruleset) Chain(name string) *Chain {
	for _, c := range rs.Chains {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// Set returns the set or map with the given name, or nil.
func (rs *Ruleset) Set(name string) *Set {
	for _, s := range rs.Sets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// Stats summarises the size of a ruleset.
type Stats struct {
	Chains, Rules, Sets, Elements int
}

// Stats counts chains, rules, sets and elements.
func (rs *Ruleset) Stats() Stats {
	var st Stats
	st.Chains = len(rs.Chains)
	for _, c := range rs.Chains {
		st.Rules += len(c.Rules)
	}
	st.Sets = len(rs.Sets)
	for _, s := range rs.Sets {
		st.Elements += len(s.Elements)
	}
	return st
}

// CtStateBits are the kernel's conntrack state bits (NF_CT_STATE_*), shared by the
// netlink encoder and the tracer.
var CtStateBits = map[string]uint32{
	"invalid":     1,
	"established": 1 << 1,
	"related":     1 << 2,
	"new":         1 << 3,
	"untracked":   1 << 6,
}
