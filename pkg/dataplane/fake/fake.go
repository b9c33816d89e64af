// Package fake is an in-memory Dataplane for controller tests. It is a real model, not a
// recorder: it validates every ruleset as the kernel would (a rule referencing a missing
// set or chain is refused), applies diffs the way the netlink implementation sends them,
// and counts the operations so tests can check that an incremental change stays small.
package fake

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// Dataplane is the in-memory fake.
type Dataplane struct {
	mu      sync.Mutex
	table   *ruleset.Ruleset // what the "kernel" holds
	applied *ruleset.Ruleset // what the last successful Apply wrote
	source  *ruleset.Ruleset // the ruleset passed to it
	// Patches counts Applies that took the caller's changes; MismatchedPatches those
	// whose changes did not lead to the desired ruleset (a bug in the caller).
	Patches, MismatchedPatches int
	// failNext makes the next Apply fail without changing the table.
	failNext error

	Applies, FullApplies, Ops int
}

var _ dataplane.Dataplane = (*Dataplane)(nil)

// New returns an empty fake.
func New() *Dataplane { return &Dataplane{} }

// Apply validates desired and applies it like the kernel would.
func (d *Dataplane) Apply(_ context.Context, desired *ruleset.Ruleset, opts dataplane.ApplyOptions) (dataplane.Result, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := desired.Validate(); err != nil {
		d.applied, d.source = nil, nil
		return dataplane.Result{}, err
	}
	if d.failNext != nil {
		err := d.failNext
		d.failNext = nil
		d.applied, d.source = nil, nil // as the netlink dataplane: the next apply is a full one
		return dataplane.Result{}, err
	}
	base := d.applied
	var res dataplane.Result
	if ch := opts.Changes; ch != nil && !ch.NeedsReplace && !opts.Full && !opts.ReadBack && d.applied != nil && opts.Base != nil && opts.Base == d.source {
		// As the netlink dataplane: send the caller's changes. Unlike it, check that they
		// really turn the last ruleset into desired, so tests catch a wrong change.
		if err := ch.ValidateAgainst(desired); err != nil {
			d.applied, d.source = nil, nil
			return dataplane.Result{}, err
		}
		if err := applicable(d.table, ch); err != nil {
			d.applied, d.source = nil, nil // as the kernel refusing the batch
			return dataplane.Result{}, err
		}
		next := ch.Apply(d.table, desired)
		if !equal(ch.Apply(d.applied, desired), desired) {
			d.MismatchedPatches++
		}
		d.Patches++
		d.table, d.applied, d.source = next, next.Clone(), desired
		d.Applies++
		res.Ops, res.Patched = ch.Ops(), true
		d.Ops += res.Ops
		return res, nil
	}
	if opts.ReadBack {
		if !equal(d.table, d.applied) {
			res.Drift = true
		}
		base = d.table
	}
	ch := ruleset.Diff(base, desired)
	if opts.Full {
		ch.NeedsReplace = true
	}
	if ch.NeedsReplace {
		d.FullApplies++
		res.Full = true
		st := desired.Stats()
		res.Ops = st.Chains + st.Rules + st.Sets + st.Elements
	} else {
		res.Ops = ch.Ops()
	}
	d.table = ch.Apply(base, desired)
	d.applied = d.table.Clone()
	d.source = desired
	d.Applies++
	d.Ops += res.Ops
	return res, nil
}

// Read returns a copy of the table.
func (d *Dataplane) Read(context.Context) (*ruleset.Ruleset, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.table == nil {
		return nil, nil
	}
	return d.table.Clone(), nil
}

// Delete removes the table.
func (d *Dataplane) Delete(context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.table = nil
	d.applied, d.source = nil, nil
	return nil
}

// Table returns a copy of what the fake kernel holds (nil when there is no table).
func (d *Dataplane) Table() *ruleset.Ruleset {
	rs, _ := d.Read(context.Background())
	return rs
}

// Mutate changes the fake kernel's table behind the agent's back, to simulate drift.
func (d *Dataplane) Mutate(f func(rs *ruleset.Ruleset) *ruleset.Ruleset) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.table = f(d.table)
}

// FailNextApply makes the next Apply return err.
func (d *Dataplane) FailNextApply(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err == nil {
		err = errors.New("injected failure")
	}
	d.failNext = err
}

// PatchCounts returns the number of applies that took the caller's changes, and of
// those whose changes did not produce the desired ruleset.
func (d *Dataplane) PatchCounts() (patches, mismatched int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.Patches, d.MismatchedPatches
}

// Counts returns the number of applies, full applies and operations so far.
func (d *Dataplane) Counts() (applies, full, ops int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.Applies, d.FullApplies, d.Ops
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
