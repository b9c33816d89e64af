package netlink

import (
	"fmt"
	"reflect"
	"strings"

	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// The round-trip check: a dumped rule is accepted as the IR rule it reads as only when
// encoding that rule gives back exactly the kernel's expressions.

// canonReg maps a register number to the kernel's internal 32-bit register index. The
// kernel dumps a 32-bit register that starts a 128-bit one under the 128-bit name
// (NFT_REG32_00 comes back as NFT_REG_1), so registers compare by index.
func canonReg(r uint32) uint32 {
	if r <= unix.NFT_REG_4 {
		return r * 4
	}
	return r - reg32First + 4
}

// normalizeExprs clears what the kernel fills in or leaves out on its own (counter
// values, set IDs) and canonicalizes registers, so that encoded and dumped expressions
// compare equal.
func normalizeExprs(in []expr.Any) []expr.Any {
	out := make([]expr.Any, len(in))
	for i, e := range in {
		switch v := e.(type) {
		case *expr.Counter:
			out[i] = &expr.Counter{}
		case *expr.Lookup:
			out[i] = canonRegs(v, func(c *expr.Lookup) []*uint32 { c.SetID = 0; return []*uint32{&c.SourceRegister, &c.DestRegister} })
		case *expr.Meta:
			out[i] = canonRegs(v, func(c *expr.Meta) []*uint32 { return []*uint32{&c.Register} })
		case *expr.Payload:
			out[i] = canonRegs(v, func(c *expr.Payload) []*uint32 { return []*uint32{&c.DestRegister, &c.SourceRegister} })
		case *expr.Cmp:
			out[i] = canonRegs(v, func(c *expr.Cmp) []*uint32 { return []*uint32{&c.Register} })
		case *expr.Ct:
			out[i] = canonRegs(v, func(c *expr.Ct) []*uint32 { return []*uint32{&c.Register} })
		case *expr.Bitwise:
			out[i] = canonRegs(v, func(c *expr.Bitwise) []*uint32 { return []*uint32{&c.SourceRegister, &c.DestRegister} })
		default:
			out[i] = e
		}
	}
	return out
}

// canonRegs returns a copy of *e with the registers regs points at (and whatever else
// regs clears) canonicalized.
func canonRegs[T any](e *T, regs func(*T) []*uint32) *T {
	c := *e
	for _, r := range regs(&c) {
		*r = canonReg(*r)
	}
	return &c
}

// undecodable is how a rule we did not write comes back: it has no verdict, no counter
// and no log, which no valid IR rule lacks (Validate refuses it), so it never equals a
// desired rule and the diff rewrites its chain.
func undecodable(raw []rawExpr, why error) ruleset.Rule {
	names := make([]string, len(raw))
	for i, e := range raw {
		names[i] = e.name
	}
	c := fmt.Sprintf("undecodable: [%s]: %v", strings.Join(names, " "), why)
	if len(c) > ruleset.MaxCommentLen {
		c = c[:ruleset.MaxCommentLen]
	}
	return ruleset.Rule{Comment: c}
}

// decodeRule turns a kernel rule back into the IR rule it was encoded from. The result
// is accepted only if encoding it gives back exactly the kernel's expressions.
func decodeRule(raw rawRule) ruleset.Rule {
	exprs, err := parseExprs(raw.exprs)
	if err != nil {
		return undecodable(raw.exprs, err)
	}
	d, err := exprsToRule(exprs)
	if err != nil {
		return undecodable(raw.exprs, err)
	}
	// Only the comment is read from the userdata. Rules written by earlier versions
	// also carry a private TLV (type 0xf0, "hints") that said which nfproto checks were
	// implicit and in which order ct states were given; the canonical form makes it
	// unnecessary, and it is ignored.
	comment, _ := userdata.GetString(raw.udata, udataRuleComment)
	// Every nfproto check reads as an explicit match; the canonical form drops the one
	// that stands where the encoder puts its implicit guard.
	r, _ := ruleset.CanonicalRule(ruleset.Rule{Matches: d.conds, Log: d.log, Counter: d.counter, VMap: d.vmap, Verdict: d.verdict, Comment: comment})
	if !r.Counter && r.Log == nil && r.VMap == nil && r.Verdict.Kind == ruleset.VerdictNone {
		// Not an IR rule (Validate wants a verdict, a counter or a log).
		return undecodable(raw.exprs, fmt.Errorf("rule does nothing"))
	}
	enc, _, err := encodeRule(r)
	if err != nil {
		return undecodable(raw.exprs, err)
	}
	if !reflect.DeepEqual(normalizeExprs(enc), normalizeExprs(exprs)) {
		return undecodable(raw.exprs, fmt.Errorf("not in the form this dataplane writes"))
	}
	return r
}
