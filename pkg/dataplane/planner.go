package dataplane

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// Backend is what a Planner needs from a kernel: it does what it is told, in one
// transaction per call, and decides nothing. Every ruleset passed to it is validated
// and normalized, and must not be modified by it.
type Backend interface {
	// Table is the name of the inet table the backend programs.
	Table() string
	// Replace deletes the table (if any) and creates it holding rs, in one transaction.
	Replace(ctx context.Context, rs *ruleset.Ruleset) error
	// Update sends ch, which turns old (what the kernel is believed to hold) into want,
	// in one transaction in the order documented on ruleset.Changes.
	Update(ctx context.Context, old, want *ruleset.Ruleset, ch *ruleset.Changes) error
	// Read returns the table as the kernel holds it, normalized, or nil when it does not
	// exist.
	Read(ctx context.Context) (*ruleset.Ruleset, error)
	// Delete removes the table; a missing table is not an error.
	Delete(ctx context.Context) error
	// Counters is Dataplane.Counters, without the error context.
	Counters(ctx context.Context) (map[string][]RuleCounter, error)
}

// Planner is the Dataplane on top of a Backend: it decides, for each Apply, between
// replacing the table, sending the caller's changes, sending a diff it computes, and
// reading the kernel back first; and it forgets what the kernel holds after a failure,
// so that the next Apply replaces the table whole. It is safe for concurrent use;
// Apply, Read and Delete are serialized.
type Planner struct {
	b   Backend
	log logr.Logger

	mu sync.Mutex
	// last is what the last successful Apply wrote (normalized), nil when the next
	// Apply must replace the table: at first, after a failure, after Delete.
	last *ruleset.Ruleset
	// issued is the Generation of the last successful Apply; trusted is the same while
	// last is valid, zero once a failure or Delete reset it.
	issued, trusted Generation
}

var _ Dataplane = (*Planner)(nil)

// NewPlanner returns a planner over b that has applied nothing yet: its first Apply
// replaces the table. Applies are logged at V(1).
func NewPlanner(b Backend, log logr.Logger) *Planner {
	return &Planner{b: b, log: log}
}

// Apply makes the table equal to desired in one transaction.
func (p *Planner) Apply(ctx context.Context, desired *ruleset.Ruleset, opts ApplyOptions) (Result, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	start := time.Now()
	res, err := p.apply(ctx, desired, opts)
	if err != nil {
		// The kernel rejected the whole transaction (or it was never sent): the table is
		// as before, but our idea of it may be wrong, so the next Apply replaces it.
		p.reset()
		return Result{}, fmt.Errorf("apply nftables ruleset to table inet %s: %w", p.b.Table(), err)
	}
	p.last = res.written
	p.issued++
	p.trusted = p.issued
	res.Generation = p.issued
	p.log.V(1).Info("applied nftables ruleset", "table", p.b.Table(), "full", res.Full, "ops", res.Ops,
		"patched", res.Patched, "drift", res.Drift, "readBack", opts.ReadBack, "duration", time.Since(start))
	return res.Result, nil
}

func (p *Planner) reset() { p.last, p.trusted = nil, 0 }

// planned is a Result and the ruleset the kernel holds after it.
type planned struct {
	Result
	written *ruleset.Ruleset
}

func (p *Planner) apply(ctx context.Context, desired *ruleset.Ruleset, opts ApplyOptions) (planned, error) {
	var res planned
	if desired == nil {
		return res, errors.New("nil ruleset")
	}
	if desired.Table != p.b.Table() {
		return res, fmt.Errorf("ruleset is for table %q, this dataplane owns table inet %s", desired.Table, p.b.Table())
	}
	// Changes computed by the caller from the ruleset applied last: desired is that
	// ruleset plus them, so only what they touch needs checking, and desired (which the
	// caller does not modify) needs no copy.
	trusted := opts.Changes != nil && !opts.Changes.NeedsReplace && p.last != nil &&
		opts.BaseGeneration != 0 && opts.BaseGeneration == p.trusted
	want := desired
	if trusted {
		if err := opts.Changes.ValidateAgainst(desired); err != nil {
			return res, fmt.Errorf("invalid change: %w", err)
		}
		if !opts.Full && !opts.ReadBack {
			res.Patched = true
			return res, p.update(ctx, &res, p.last, desired, opts.Changes)
		}
	} else {
		if err := desired.Validate(); err != nil {
			return res, fmt.Errorf("invalid ruleset: %w", err)
		}
		want = desired.Clone()
		want.Normalize()
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}

	base := p.last
	full := opts.Full || p.last == nil
	var readDiff *ruleset.Changes // kernel → want, when computed already
	if opts.ReadBack {
		kernel, err := p.b.Read(ctx)
		if err != nil {
			return res, fmt.Errorf("read back: %w", err)
		}
		if trusted && opts.Changes.Empty() && kernel != nil {
			// want is what was applied last: one diff tells both the drift and its repair
			// (at 50k pods a diff is a noticeable part of a periodic resync).
			readDiff = ruleset.Diff(kernel, want)
			res.Drift = !readDiff.Empty()
		} else {
			res.Drift = !equalRulesets(kernel, p.last)
		}
		if res.Drift {
			p.log.V(1).Info("nftables table drifted from the last applied ruleset", "table", p.b.Table(), "present", kernel != nil)
		}
		base = kernel
		full = full || kernel == nil
	}
	if !full {
		ch := readDiff
		if ch == nil {
			ch = ruleset.Diff(base, want)
		}
		if !ch.NeedsReplace {
			return res, p.update(ctx, &res, base, want, ch)
		}
	}
	res.Full = true
	st := want.Stats()
	res.Ops = st.Chains + st.Rules + st.Sets + st.Elements
	if err := p.b.Replace(ctx, want); err != nil {
		return res, fmt.Errorf("replace table (%d objects): %w", res.Ops, err)
	}
	res.written = want
	return res, nil
}

// update sends ch (old → want) unless it is empty, and records want as written.
func (p *Planner) update(ctx context.Context, res *planned, old, want *ruleset.Ruleset, ch *ruleset.Changes) error {
	if !ch.Empty() {
		res.Ops = ch.Ops()
		if err := p.b.Update(ctx, old, want, ch); err != nil {
			return fmt.Errorf("update table (%d objects): %w", res.Ops, err)
		}
	}
	res.written = want
	return nil
}

// equalRulesets compares two normalized rulesets the way the diff sees them; nil is the
// absent table.
func equalRulesets(a, b *ruleset.Ruleset) bool {
	if a == nil || b == nil {
		return a == b
	}
	return ruleset.Diff(a, b).Empty()
}

// Read returns the table as the kernel holds it, normalized, or nil when it does not
// exist.
func (p *Planner) Read(ctx context.Context) (*ruleset.Ruleset, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	rs, err := p.b.Read(ctx)
	if err != nil {
		return nil, fmt.Errorf("read nftables table inet %s: %w", p.b.Table(), err)
	}
	return rs, nil
}

// Delete removes the table; a missing table is not an error. The next Apply replaces
// the table, and no Generation issued before is trusted any more.
func (p *Planner) Delete(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reset()
	if err := p.b.Delete(ctx); err != nil {
		return fmt.Errorf("delete nftables table inet %s: %w", p.b.Table(), err)
	}
	p.log.V(1).Info("deleted nftables table", "table", p.b.Table())
	return nil
}

// Counters returns the rule counters of the table (see Dataplane). It does not take
// the lock Apply holds.
func (p *Planner) Counters(ctx context.Context) (map[string][]RuleCounter, error) {
	out, err := p.b.Counters(ctx)
	if err != nil {
		return nil, fmt.Errorf("read counters of nftables table inet %s: %w", p.b.Table(), err)
	}
	return out, nil
}
