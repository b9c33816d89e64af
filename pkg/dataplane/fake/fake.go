// Package fake is an in-memory Dataplane for controller tests: the real
// dataplane.Planner over an in-memory kernel, so tests exercise the same decisions
// (replace, the caller's changes, diff, read-back and repair, reset after a failure) as
// the agent. The kernel is a real model, not a recorder: it refuses what nf_tables
// would refuse (an object added twice, an element or chain deleted that does not
// exist, a rule left referencing a missing set or chain), applies each transaction the
// way the netlink backend sends it, and the fake counts operations so tests can check
// that an incremental change stays small.
package fake

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/go-logr/logr"

	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// Dataplane is the in-memory fake of table inet nftpolicy.
type Dataplane struct {
	*dataplane.Planner
	k *kernel

	mu                                 sync.Mutex
	applies, fullApplies, ops, patches int
}

var _ dataplane.Dataplane = (*Dataplane)(nil)

// New returns a fake whose kernel has no table yet.
func New() *Dataplane {
	k := &kernel{}
	return &Dataplane{Planner: dataplane.NewPlanner(k, logr.Discard()), k: k}
}

// Apply is dataplane.Planner's Apply, counted.
func (d *Dataplane) Apply(ctx context.Context, desired *ruleset.Ruleset, opts dataplane.ApplyOptions) (dataplane.Result, error) {
	res, err := d.Planner.Apply(ctx, desired, opts)
	if err != nil {
		return res, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.applies++
	d.ops += res.Ops
	if res.Full {
		d.fullApplies++
	}
	if res.Patched {
		d.patches++
	}
	return res, nil
}

// Table returns a copy of what the fake kernel holds (nil when there is no table).
func (d *Dataplane) Table() *ruleset.Ruleset {
	rs, _ := d.k.Read(context.Background())
	return rs
}

// Mutate changes the fake kernel's table behind the agent's back, to simulate drift.
// Rule counters restart, as they do when someone rewrites the table by hand.
func (d *Dataplane) Mutate(f func(rs *ruleset.Ruleset) *ruleset.Ruleset) {
	d.k.mu.Lock()
	defer d.k.mu.Unlock()
	d.k.table = f(d.k.table)
	d.k.counters = nil
}

// FailNextApply makes the kernel refuse the next transaction (a replace or an update)
// with err, leaving its table as it is: the Apply that sends it fails, and the planner
// replaces the table on the next. An Apply with nothing to send sends no transaction
// and does not consume the failure.
func (d *Dataplane) FailNextApply(err error) {
	d.k.mu.Lock()
	defer d.k.mu.Unlock()
	if err == nil {
		err = errors.New("injected failure")
	}
	d.k.failNext = err
}

// SetCounter sets the counter of rule index (0-based, in chain order) of chain, as
// traffic would. Counters restart when the chain is rewritten or the table replaced.
func (d *Dataplane) SetCounter(chain string, index int, packets, bytes uint64) error {
	d.k.mu.Lock()
	defer d.k.mu.Unlock()
	var c *ruleset.Chain
	if d.k.table != nil {
		c = d.k.table.Chain(chain)
	}
	if c == nil || index < 0 || index >= len(c.Rules) || !c.Rules[index].Counter {
		return fmt.Errorf("chain %q has no rule %d with a counter", chain, index)
	}
	if d.k.counters == nil {
		d.k.counters = map[string]map[int]counter{}
	}
	if d.k.counters[chain] == nil {
		d.k.counters[chain] = map[int]counter{}
	}
	d.k.counters[chain][index] = counter{packets, bytes}
	return nil
}

// PatchCounts returns the number of applies that took the caller's changes, and the
// number of transactions whose changes did not turn the ruleset the planner believed
// the kernel held into the desired one (a bug in the caller's changes or in the diff).
func (d *Dataplane) PatchCounts() (patches, mismatched int) {
	d.mu.Lock()
	patches = d.patches
	d.mu.Unlock()
	d.k.mu.Lock()
	defer d.k.mu.Unlock()
	return patches, d.k.mismatched
}

// Counts returns the number of successful applies, full applies and operations so far.
func (d *Dataplane) Counts() (applies, full, ops int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.applies, d.fullApplies, d.ops
}

// kernel is the in-memory dataplane.Backend.
type kernel struct {
	mu    sync.Mutex
	table *ruleset.Ruleset // nil: no table
	// failNext makes the next transaction fail.
	failNext error
	// mismatched counts updates whose changes did not lead from old to want.
	mismatched int
	// counters are the packets and bytes tests set, per chain and rule index.
	counters map[string]map[int]counter
}

type counter struct{ packets, bytes uint64 }

var _ dataplane.Backend = (*kernel)(nil)

// Table implements dataplane.Backend.
func (k *kernel) Table() string { return dataplane.DefaultTable }

// Replace implements dataplane.Backend.
func (k *kernel) Replace(_ context.Context, rs *ruleset.Ruleset) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.takeFailure(); err != nil {
		return err
	}
	k.table = rs.Clone()
	k.counters = nil
	return nil
}

// Update implements dataplane.Backend: ch is applied to the table the kernel holds,
// which is old unless it drifted.
func (k *kernel) Update(_ context.Context, old, want *ruleset.Ruleset, ch *ruleset.Changes) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.takeFailure(); err != nil {
		return err
	}
	if err := applicable(k.table, ch); err != nil {
		return err
	}
	next := ch.Apply(k.table, want)
	if err := next.Validate(); err != nil {
		return fmt.Errorf("the transaction leaves the table invalid: %w", err)
	}
	if !equal(ch.Apply(old, want), want) {
		k.mismatched++
	}
	k.table = next
	for _, cs := range [][]*ruleset.Chain{ch.RewriteChains, ch.DelChains} {
		for _, c := range cs {
			delete(k.counters, c.Name) // flushed: the counters go with the rules
		}
	}
	return nil
}

func (k *kernel) takeFailure() error {
	err := k.failNext
	k.failNext = nil
	return err
}

// Read implements dataplane.Backend.
func (k *kernel) Read(context.Context) (*ruleset.Ruleset, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.table == nil {
		return nil, nil
	}
	return k.table.Clone(), nil
}

// Delete implements dataplane.Backend.
func (k *kernel) Delete(context.Context) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.table, k.counters = nil, nil
	return nil
}

// Counters implements dataplane.Backend: the comments come from the table, the counts
// from SetCounter. As in the kernel's rule dump, chains without rules are absent.
func (k *kernel) Counters(context.Context) (map[string][]dataplane.RuleCounter, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := map[string][]dataplane.RuleCounter{}
	if k.table == nil {
		return out, nil
	}
	for _, c := range k.table.Chains {
		for i, r := range c.Rules {
			rc := dataplane.RuleCounter{Counted: r.Counter, Comment: r.Comment}
			if r.Counter {
				n := k.counters[c.Name][i]
				rc.Packets, rc.Bytes = n.packets, n.bytes
			}
			out[c.Name] = append(out[c.Name], rc)
		}
	}
	return out, nil
}

func equal(a, b *ruleset.Ruleset) bool {
	if a == nil || b == nil {
		return a == b
	}
	return ruleset.Diff(a, b).Empty()
}

// applicable reports what the kernel would refuse in an incremental batch against
// table: objects that must exist and do not (ENOENT), or must not and do (EEXIST).
func applicable(table *ruleset.Ruleset, ch *ruleset.Changes) error {
	if table == nil {
		return fmt.Errorf("table does not exist")
	}
	for _, s := range ch.AddSets {
		if table.Set(s.Name) != nil {
			return fmt.Errorf("set %q exists", s.Name)
		}
	}
	for _, c := range ch.AddChains {
		if table.Chain(c.Name) != nil {
			return fmt.Errorf("chain %q exists", c.Name)
		}
	}
	added := map[string]bool{}
	for _, s := range ch.AddSets {
		added[s.Name] = true
	}
	for name, els := range ch.DelElements {
		s := table.Set(name)
		if s == nil {
			return fmt.Errorf("set %q does not exist", name)
		}
		have := map[string]bool{}
		for _, e := range s.Elements {
			have[e.Identity()] = true
		}
		for _, e := range els {
			if !have[e.Identity()] {
				return fmt.Errorf("set %q has no element %s", name, ruleset.FormatElement(s, e))
			}
		}
	}
	for name := range ch.AddElements {
		if table.Set(name) == nil && !added[name] {
			return fmt.Errorf("set %q does not exist", name)
		}
	}
	newChains := map[string]bool{}
	for _, c := range ch.AddChains {
		newChains[c.Name] = true
	}
	for _, c := range append(append([]*ruleset.Chain(nil), ch.RewriteChains...), ch.DelChains...) {
		if table.Chain(c.Name) == nil && !newChains[c.Name] {
			return fmt.Errorf("chain %q does not exist", c.Name)
		}
	}
	for _, s := range ch.DelSets {
		if table.Set(s.Name) == nil {
			return fmt.Errorf("set %q does not exist", s.Name)
		}
	}
	return nil
}
