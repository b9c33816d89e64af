package netlink

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane/netlink/nfnl"
)

// Counters implements dataplane.Backend: per chain of the table, every rule in chain
// order with its counter. It is one GETRULE dump of the table; of each rule only the
// chain, the comment and the counter expression are decoded, so it costs a few
// microseconds per rule and is cheap enough for every metrics scrape. A missing table
// gives an empty map.
//
// It opens a socket of its own and the Planner does not serialize it with Apply: a
// scrape never waits for a ruleset commit. A dump
// that saw the ruleset change (NLM_F_DUMP_INTR) is repeated, so the rules of a chain
// are all from one generation.
func (k *kernel) Counters(ctx context.Context) (map[string][]dataplane.RuleCounter, error) {
	c, err := k.dial(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	for range readAttempts {
		out, interrupted, err := k.countersOnce(c)
		if err != nil {
			return nil, err
		}
		if !interrupted {
			return out, nil
		}
	}
	return nil, fmt.Errorf("the ruleset kept changing (%d attempts)", readAttempts)
}

func (k *kernel) countersOnce(c *nfnl.Conn) (map[string][]dataplane.RuleCounter, bool, error) {
	a := &nfnl.Attrs{}
	a.PutString(unix.NFTA_RULE_TABLE, k.table)
	msgs, interrupted, err := c.Request(family, unix.NFT_MSG_GETRULE, true, a)
	if errors.Is(err, syscall.ENOENT) {
		return map[string][]dataplane.RuleCounter{}, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("dump rules: %w", err)
	}
	out := map[string][]dataplane.RuleCounter{}
	for _, m := range msgs {
		raw, err := parseRule(m)
		if err != nil {
			return nil, false, fmt.Errorf("dump rules: %w", err)
		}
		// Older kernels ignore the table attribute of a dump request.
		if raw.table != k.table {
			continue
		}
		rc := dataplane.RuleCounter{}
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
