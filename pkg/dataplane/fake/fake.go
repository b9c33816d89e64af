// Package fake is an in-memory Dataplane for controller tests. It is a real model, not a
// recorder: it validates every ruleset as the kernel would (a rule referencing a missing
// set or chain is refused), applies diffs the way the netlink implementation sends them,
// and counts the operations so tests can check that an incremental change stays small.
package fake

import (
	"context"
	"errors"
	"sync"

	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// Dataplane is the in-memory fake.
type Dataplane struct {
	mu      sync.Mutex
	table   *ruleset.Ruleset // what the "kernel" holds
	applied *ruleset.Ruleset // what the last successful Apply wrote
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
		d.applied = nil
		return dataplane.Result{}, err
	}
	if d.failNext != nil {
		err := d.failNext
		d.failNext = nil
		d.applied = nil // as the netlink dataplane: the next apply is a full one
		return dataplane.Result{}, err
	}
	base := d.applied
	var res dataplane.Result
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
	d.applied = nil
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
