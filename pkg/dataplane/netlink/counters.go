package netlink

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/pkg/dataplane/netlink/nfnl"
)

// RuleCounter is what the kernel holds for one rule of the table: its counter (when
// the rule has one) and its comment, which callers use to check that the rule is the
// one they expect at that position.
type RuleCounter struct {
	Packets, Bytes uint64
	// Counted is false for a rule without a counter expression.
	Counted bool
	Comment string
}

// Counters returns, per chain of the table, every rule in chain order with its
// counter. It is one GETRULE dump of the table; of each rule only the chain, the
// comment and the counter expression are decoded, so it costs a few microseconds per
// rule and is cheap enough for every metrics scrape. A missing table gives an empty
// map.
//
// It does not take the Apply lock: a scrape never waits for a ruleset commit. A dump
// that saw the ruleset change (NLM_F_DUMP_INTR) is repeated, so the rules of a chain
// are all from one generation.
func (d *Dataplane) Counters(ctx context.Context) (map[string][]RuleCounter, error) {
	c, err := d.dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("read counters of nftables table inet %s: %w", d.table, err)
	}
	defer c.Close()
	for range readAttempts {
		out, interrupted, err := d.countersOnce(c)
		if err != nil {
			return nil, fmt.Errorf("read counters of nftables table inet %s: %w", d.table, err)
		}
		if !interrupted {
			return out, nil
		}
	}
	return nil, fmt.Errorf("read counters of nftables table inet %s: the ruleset kept changing (%d attempts)", d.table, readAttempts)
}

func (d *Dataplane) countersOnce(c *nfnl.Conn) (map[string][]RuleCounter, bool, error) {
	a := &nfnl.Attrs{}
	a.PutString(unix.NFTA_RULE_TABLE, d.table)
	msgs, interrupted, err := c.Request(family, unix.NFT_MSG_GETRULE, true, a)
	if errors.Is(err, syscall.ENOENT) {
		return map[string][]RuleCounter{}, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("dump rules: %w", err)
	}
	out := map[string][]RuleCounter{}
	for _, m := range msgs {
		raw, err := parseRule(m)
		if err != nil {
			return nil, false, fmt.Errorf("dump rules: %w", err)
		}
		// Older kernels ignore the table attribute of a dump request.
		if raw.table != d.table {
			continue
		}
		rc := RuleCounter{}
		rc.Comment, _ = userdata.GetString(raw.udata, udataRuleComment)
		for _, e := range raw.exprs {
			if e.name != "counter" {
				continue
			}
			var ce expr.Counter
			if err := expr.Unmarshal(family, e.data, &ce); err != nil {
				return nil, false, fmt.Errorf("dump rules: counter of a rule of chain %q: %w", raw.chain, err)
			}
			rc.Packets, rc.Bytes, rc.Counted = rc.Packets+ce.Packets, rc.Bytes+ce.Bytes, true
		}
		out[raw.chain] = append(out[raw.chain], rc)
	}
	return out, interrupted, nil
}
