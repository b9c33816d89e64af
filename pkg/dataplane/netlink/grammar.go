package netlink

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// The expression grammar: reading the expression list of a dumped rule as the IR rule
// encodeRule would have written it.

// exprKinds is the expression vocabulary of the dataplane: the kernel's name of every
// expression encodeRule writes, and the google/nftables type that marshals it (a
// verdict is an "immediate" writing the verdict register).
var exprKinds = map[string]func() expr.Any{
	"meta":      func() expr.Any { return &expr.Meta{} },
	"cmp":       func() expr.Any { return &expr.Cmp{} },
	"payload":   func() expr.Any { return &expr.Payload{} },
	"lookup":    func() expr.Any { return &expr.Lookup{} },
	"ct":        func() expr.Any { return &expr.Ct{} },
	"bitwise":   func() expr.Any { return &expr.Bitwise{} },
	"counter":   func() expr.Any { return &expr.Counter{} },
	"limit":     func() expr.Any { return &expr.Limit{} },
	"log":       func() expr.Any { return &expr.Log{} },
	"immediate": func() expr.Any { return &expr.Verdict{} },
}

// exprName is the kernel's name of an expression (for error messages).
func exprName(e expr.Any) string {
	for name, newExpr := range exprKinds {
		if reflect.TypeOf(newExpr()) == reflect.TypeOf(e) {
			return name
		}
	}
	return fmt.Sprintf("%T", e)
}

// parseExprs decodes the expressions we emit; any other expression makes the rule
// undecodable (google/nftables silently drops expressions it does not know, so the
// names are checked here).
func parseExprs(raw []rawExpr) ([]expr.Any, error) {
	out := make([]expr.Any, 0, len(raw))
	for _, r := range raw {
		newExpr, ok := exprKinds[r.name]
		if !ok {
			return nil, fmt.Errorf("expression %q", r.name)
		}
		if r.name == "immediate" {
			// Only a verdict: an immediate into a data register is not ours.
			imm := &expr.Immediate{}
			if err := expr.Unmarshal(family, r.data, imm); err != nil {
				return nil, fmt.Errorf("immediate: %w", err)
			}
			if imm.Register != regVerdict {
				return nil, fmt.Errorf("immediate to register %d", imm.Register)
			}
		}
		e := newExpr()
		if err := expr.Unmarshal(family, r.data, e); err != nil {
			return nil, fmt.Errorf("%s: %w", r.name, err)
		}
		out = append(out, e)
	}
	return out, nil
}

// payloadField maps a payload load back to the IR field.
func payloadField(p *expr.Payload) (ruleset.Field, bool) {
	if p.OperationType != expr.PayloadLoad {
		return "", false
	}
	for f, loc := range payloadFields {
		if loc == (payloadLoc{p.Base, p.Offset, p.Len}) {
			return f, true
		}
	}
	return "", false
}

// decodedRule is a rule read from expressions, before it is made canonical: conds are
// the matches in order, including the nfproto guard the encoder may have added.
type decodedRule struct {
	conds   []ruleset.Match
	log     *ruleset.Log
	counter bool
	vmap    *ruleset.VMap
	verdict ruleset.Verdict
}

// exprsToRule reads the expression vocabulary encodeRule produces. It does not check
// registers: the caller re-encodes the result and compares, which checks everything.
func exprsToRule(exprs []expr.Any) (decodedRule, error) {
	var d decodedRule
	var fields []ruleset.Field // loads waiting for their lookup
	terminal := false
	// Where the counter sits among the conditions is left to the re-encoding check: the
	// guard of a vmap comes after it (as nft places it: the counter sees every packet).
	cond := func(m ruleset.Match) error {
		if len(fields) > 0 {
			return fmt.Errorf("load without lookup")
		}
		d.conds = append(d.conds, m)
		return nil
	}
	cmpAt := func(i int, reg uint32, op expr.CmpOp, n int) (*expr.Cmp, bool) {
		if i >= len(exprs) {
			return nil, false
		}
		c, ok := exprs[i].(*expr.Cmp)
		return c, ok && c.Register == reg && c.Op == op && len(c.Data) == n
	}
	for i := 0; i < len(exprs); {
		if terminal {
			return d, fmt.Errorf("expression after the verdict")
		}
		switch e := exprs[i].(type) {
		case *expr.Meta:
			if e.SourceRegister {
				return d, fmt.Errorf("meta set")
			}
			switch e.Key {
			case expr.MetaKeyNFPROTO:
				c, ok := cmpAt(i+1, e.Register, expr.CmpOpEq, 1)
				if !ok {
					return d, fmt.Errorf("meta nfproto without cmp")
				}
				var fam ruleset.Family
				switch c.Data[0] {
				case unix.NFPROTO_IPV4:
					fam = ruleset.IPv4
				case unix.NFPROTO_IPV6:
					fam = ruleset.IPv6
				default:
					return d, fmt.Errorf("nfproto %d", c.Data[0])
				}
				i += 2
				if d.log != nil || d.counter {
					// Explicit matches come before the statements: a check after them is
					// the guard of the verdict map (the re-encoding check confirms it).
					continue
				}
				if err := cond(ruleset.Match{Kind: ruleset.MatchNFProto, Family: fam}); err != nil {
					return d, err
				}
			case expr.MetaKeyL4PROTO:
				if c, ok := cmpAt(i+1, e.Register, expr.CmpOpEq, 1); ok && len(fields) == 0 {
					if err := cond(ruleset.Match{Kind: ruleset.MatchL4Proto, Proto: c.Data[0]}); err != nil {
						return d, err
					}
					i += 2
					continue
				}
				fields = append(fields, ruleset.FieldL4Proto)
				i++
			default:
				return d, fmt.Errorf("meta key %d", e.Key)
			}
		case *expr.Payload:
			f, ok := payloadField(e)
			if !ok {
				return d, fmt.Errorf("payload base %d offset %d len %d", e.Base, e.Offset, e.Len)
			}
			fields = append(fields, f)
			i++
		case *expr.Lookup:
			if len(fields) == 0 {
				return d, fmt.Errorf("lookup without loads")
			}
			fs := fields
			fields = nil
			if e.IsDestRegSet {
				if e.DestRegister != regVerdict || e.Invert {
					return d, fmt.Errorf("map lookup into register %d", e.DestRegister)
				}
				d.vmap = &ruleset.VMap{Fields: fs, Map: e.SetName}
				terminal = true
			} else if err := cond(ruleset.Match{Kind: ruleset.MatchLookup, Fields: fs, Set: e.SetName, Negate: e.Invert}); err != nil {
				return d, err
			}
			i++
		case *expr.Ct:
			if !e.SourceRegister && e.Key == expr.CtKeyMARK && i+2 < len(exprs) {
				b, ok := exprs[i+1].(*expr.Bitwise)
				if !ok || len(b.Mask) != 4 {
					return d, fmt.Errorf("ct mark without mask")
				}
				c, ok := cmpAt(i+2, b.DestRegister, expr.CmpOpEq, 4)
				if !ok {
					return d, fmt.Errorf("ct mark without cmp")
				}
				if err := cond(ruleset.Match{Kind: ruleset.MatchCtMark, MarkMask: binary.NativeEndian.Uint32(b.Mask), Mark: binary.NativeEndian.Uint32(c.Data)}); err != nil {
					return d, err
				}
				i += 3
				continue
			}
			if e.SourceRegister || e.Key != expr.CtKeySTATE || i+2 >= len(exprs) {
				return d, fmt.Errorf("ct key %d", e.Key)
			}
			b, ok := exprs[i+1].(*expr.Bitwise)
			if !ok || len(b.Mask) != 4 {
				return d, fmt.Errorf("ct state without mask")
			}
			if _, ok := cmpAt(i+2, b.DestRegister, expr.CmpOpNeq, 4); !ok {
				return d, fmt.Errorf("ct state without cmp")
			}
			states := canonicalCtStates(binary.NativeEndian.Uint32(b.Mask))
			if len(states) == 0 {
				return d, fmt.Errorf("ct state mask %x", b.Mask)
			}
			if err := cond(ruleset.Match{Kind: ruleset.MatchCtState, CtStates: states}); err != nil {
				return d, err
			}
			i += 3
		case *expr.Limit:
			if e.Type != expr.LimitTypePkts || e.Unit != expr.LimitTimeSecond || e.Over {
				return d, fmt.Errorf("limit type %d unit %d over %v", e.Type, e.Unit, e.Over)
			}
			if d.log != nil || d.counter {
				return d, fmt.Errorf("limit after a statement")
			}
			if err := cond(ruleset.Match{Kind: ruleset.MatchLimit, Rate: e.Rate, Burst: e.Burst}); err != nil {
				return d, err
			}
			i++
		case *expr.Log:
			// Only the group and the prefix are ours; anything else (level, flags,
			// snaplen) fails the re-encoding check.
			if d.log != nil || d.counter || len(fields) > 0 || e.Key&(1<<unix.NFTA_LOG_GROUP) == 0 {
				return d, fmt.Errorf("misplaced log or log without group")
			}
			d.log = &ruleset.Log{Group: e.Group, Prefix: string(e.Data)}
			i++
		case *expr.Counter:
			if d.counter || len(fields) > 0 {
				return d, fmt.Errorf("misplaced counter")
			}
			d.counter = true
			i++
		case *expr.Verdict:
			k := verdictKind(int32(e.Kind))
			if strings.HasPrefix(string(k), "verdict code") {
				return d, fmt.Errorf("%s", k)
			}
			d.verdict = ruleset.Verdict{Kind: k, Chain: e.Chain}
			terminal = true
			i++
		default:
			return d, fmt.Errorf("%s", exprName(e))
		}
	}
	if len(fields) > 0 {
		return d, fmt.Errorf("load without lookup")
	}
	return d, nil
}

// canonicalCtStates lists the states of a mask in canonical order, or nil when the mask
// has bits that are not states.
func canonicalCtStates(mask uint32) []string {
	var names []string
	var seen uint32
	for name, bit := range ruleset.CtStateBits {
		if mask&bit != 0 {
			names = append(names, name)
			seen |= bit
		}
	}
	if seen != mask {
		return nil
	}
	slices.SortFunc(names, func(a, b string) int { return cmp.Compare(ruleset.CtStateBits[a], ruleset.CtStateBits[b]) })
	return names
}
