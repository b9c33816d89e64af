package ruleset

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Render prints the ruleset in nft syntax, as `nft -f` accepts it and close to what
// `nft list table` prints. Sets come first so that rules can reference them.
func Render(rs *Ruleset) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", rs.Table)
	for _, s := range rs.Sets {
		renderSet(&b, s)
	}
	for _, c := range rs.Chains {
		renderChain(&b, c)
	}
	b.WriteString("}\n")
	return b.String()
}

func renderSet(b *strings.Builder, s *Set) {
	kind := "set"
	if s.IsMap {
		kind = "map"
	}
	keys := make([]string, len(s.Key))
	for i, k := range s.Key {
		keys[i] = string(k)
	}
	typ := strings.Join(keys, " . ")
	if s.IsMap {
		typ += " : verdict"
	}
	fmt.Fprintf(b, "\t%s %s {\n\t\ttype %s\n", kind, quoteName(s.Name), typ)
	if s.Interval {
		b.WriteString("\t\tflags interval\n")
	}
	if s.Comment != "" {
		fmt.Fprintf(b, "\t\tcomment %q\n", s.Comment)
	}
	if len(s.Elements) > 0 {
		b.WriteString("\t\telements = {")
		for i, e := range s.Elements {
			if i > 0 {
				b.WriteString(",")
			}
			b.WriteString("\n\t\t\t")
			b.WriteString(FormatElement(s, e))
		}
		b.WriteString(" }\n")
	}
	b.WriteString("\t}\n")
}

// FormatElement prints one element in nft syntax.
func FormatElement(s *Set, e Element) string {
	parts := make([]string, len(e.Key))
	for i, r := range e.Key {
		var t KeyType
		if i < len(s.Key) {
			t = s.Key[i]
		}
		parts[i] = FormatRange(t, r)
	}
	out := strings.Join(parts, " . ")
	if e.Verdict != nil {
		out += " : " + e.Verdict.String()
	}
	return out
}

// FormatRange prints a key field; a range of addresses that is a prefix prints as CIDR.
func FormatRange(t KeyType, r Range) string {
	if r.IsSingle() {
		return formatValue(t, r.From)
	}
	if t == KeyIPv4Addr || t == KeyIPv6Addr {
		from, _ := netip.AddrFromSlice(r.From)
		to, _ := netip.AddrFromSlice(r.To)
		for bits := 0; bits <= from.BitLen(); bits++ {
			p := netip.PrefixFrom(from, bits).Masked()
			if p.Addr() == from && LastAddr(p) == to {
				return p.String()
			}
		}
	}
	return formatValue(t, r.From) + "-" + formatValue(t, r.To)
}

func formatValue(t KeyType, v []byte) string {
	switch t {
	case KeyIPv4Addr, KeyIPv6Addr:
		a, ok := netip.AddrFromSlice(v)
		if ok {
			return a.String()
		}
	case KeyL4Proto:
		if len(v) == 1 {
			return ProtoName(v[0])
		}
	case KeyICMPv6:
		if len(v) == 1 {
			if n, ok := icmpv6Names[v[0]]; ok {
				return n
			}
			return strconv.Itoa(int(v[0]))
		}
	case KeyPort:
		if len(v) == 2 {
			return strconv.Itoa(int(binary.BigEndian.Uint16(v)))
		}
	}
	return fmt.Sprintf("0x%x", v)
}

// IP protocol numbers the agent matches.
const (
	ProtoTCP    uint8 = 6
	ProtoUDP    uint8 = 17
	ProtoSCTP   uint8 = 132
	ProtoICMPv6 uint8 = 58
)

// icmpv6Names are nft's names of the neighbour-discovery message types.
var icmpv6Names = map[uint8]string{
	133: "nd-router-solicit", 134: "nd-router-advert", 135: "nd-neighbor-solicit",
	136: "nd-neighbor-advert", 137: "nd-redirect",
}

// ProtoName is the nft name of an IP protocol.
func ProtoName(p uint8) string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoSCTP:
		return "sctp"
	case 1:
		return "icmp"
	case 58:
		return "ipv6-icmp"
	}
	return strconv.Itoa(int(p))
}

// LastAddr is the highest address of a prefix.
func LastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func renderChain(b *strings.Builder, c *Chain) {
	fmt.Fprintf(b, "\tchain %s {\n", quoteName(c.Name))
	if c.Base != nil {
		fmt.Fprintf(b, "\t\ttype filter hook %s priority %s; policy accept;\n", c.Base.Hook, formatPriority(c.Base.Priority))
	}
	if c.Comment != "" {
		fmt.Fprintf(b, "\t\tcomment %q\n", c.Comment)
	}
	for _, r := range c.Rules {
		b.WriteString("\t\t")
		b.WriteString(FormatRule(r))
		b.WriteString("\n")
	}
	b.WriteString("\t}\n")
}

func formatPriority(p int) string {
	switch {
	case p == 0:
		return "filter"
	case p > 0:
		return fmt.Sprintf("filter + %d", p)
	default:
		return fmt.Sprintf("filter - %d", -p)
	}
}

// FormatRule prints one rule in nft syntax.
func FormatRule(r Rule) string {
	var parts []string
	for _, m := range r.Matches {
		parts = append(parts, formatMatch(m))
	}
	if r.Log != nil {
		// nft prints the prefix before the group.
		l := "log"
		if r.Log.Prefix != "" {
			l += fmt.Sprintf(" prefix %q", r.Log.Prefix)
		}
		parts = append(parts, l+" group "+strconv.Itoa(int(r.Log.Group)))
	}
	if r.Counter {
		parts = append(parts, "counter")
	}
	if r.VMap != nil {
		parts = append(parts, formatFields(r.VMap.Fields)+" vmap @"+quoteName(r.VMap.Map))
	} else if r.Verdict.Kind != VerdictNone {
		parts = append(parts, r.Verdict.String())
	}
	if r.Comment != "" {
		parts = append(parts, fmt.Sprintf("comment %q", r.Comment))
	}
	return strings.Join(parts, " ")
}

func formatMatch(m Match) string {
	switch m.Kind {
	case MatchCtState:
		return "ct state " + strings.Join(m.CtStates, ",")
	case MatchLookup:
		op := " "
		if m.Negate {
			op = " != "
		}
		return formatFields(m.Fields) + op + "@" + quoteName(m.Set)
	case MatchNFProto:
		return "meta nfproto " + m.Family.String()
	case MatchL4Proto:
		return "meta l4proto " + ProtoName(m.Proto)
	case MatchCtMark:
		return fmt.Sprintf("ct mark & 0x%08x == 0x%08x", m.MarkMask, m.Mark)
	case MatchLimit:
		// nft leaves out the burst when it is its default.
		if m.Burst == DefaultLimitBurst {
			return fmt.Sprintf("limit rate %d/second", m.Rate)
		}
		return fmt.Sprintf("limit rate %d/second burst %d packets", m.Rate, m.Burst)
	}
	return "?" + string(m.Kind)
}

func formatFields(fs []Field) string {
	s := make([]string, len(fs))
	for i, f := range fs {
		s[i] = string(f)
	}
	return strings.Join(s, " . ")
}

// quoteName returns the name as nft's parser takes it. nft identifiers may contain
// letters, digits and "/\_.-" unquoted, and nft 1.0.x refuses a quoted name containing
// "/", so names are printed bare; Validate keeps them free of spaces and quotes.
func quoteName(n string) string { return n }
