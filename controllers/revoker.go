package controllers

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
	"github.com/nftpolicy/nftpolicy/pkg/revoke"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
	"github.com/nftpolicy/nftpolicy/pkg/tracer"
)

// FlowTable finds the node's conntrack entries and sets their marks
// (pkg/dataplane/conntrack's Tracker).
type FlowTable interface {
	// Flows returns the entries whose first packet the scope holds.
	Flows(scope dataplane.FlowScope) ([]dataplane.Flow, error)
	SetMark(flows []dataplane.Flow, mask, value uint32) (int, error)
	// Generation changes whenever the table's view was rebuilt and may have missed
	// entries meanwhile: every entry is then judged once.
	Generation() uint64
}

// insertNotifier is a FlowTable that tells of the flows it learns of as they come
// (conntrack.Tracker).
type insertNotifier interface {
	NotifyInserts(fn func(dataplane.Flow))
}

// readyWaiter is a FlowTable that needs time before its first answer.
type readyWaiter interface {
	WaitReady(ctx context.Context) error
}

// Revoker marks the established flows a new ruleset denies, and clears the mark of
// revoked flows it allows again, in its own goroutine: the sync hands it each applied
// change and goes on, so the next policy change is never held up by revocation, and
// revocation never by the sync lock. Changes that arrive while a pass runs are merged
// into the next one, judged against the newest ruleset.
//
// Each pass judges only the flows the changes concern (revoke.Scope: the addresses
// whose verdict can have changed), found in the FlowTable's index, so its cost is what
// the change concerns, not the size of the node's conntrack table.
type Revoker struct {
	Flows FlowTable
	// LocalAddrs returns this node's own addresses (nil: none); they decide which hook
	// (input, output or forward) a flow went through.
	LocalAddrs func() map[netip.Addr]bool
	Log        logr.Logger
	// Passed, when set, is called after every pass (tests).
	Passed func(PassResult)
	// Now is the clock of the late-flow watches (nil: time.Now).
	Now func() time.Time

	mu      sync.Mutex
	pending []appliedChange
	kick    chan struct{}
	cache   *tracer.Cache
	gen     uint64
	// latest is the newest ruleset a pass judged with; watches the scopes of the
	// recent passes, and late the flows the table learnt of since that fall in one.
	latest  *ruleset.Ruleset
	watches []watch
	late    []lateFlow
}

// watch is a recent pass's scope, watched until until; before is the ruleset the
// pass's changes started from.
type watch struct {
	scope  dataplane.FlowScope
	until  time.Time
	before *ruleset.Ruleset
}

// lateFlow is a flow learnt of within a watch.
type lateFlow struct {
	f      dataplane.Flow
	before *ruleset.Ruleset
}

// lateWindow is how long after a pass the flows the table learns of are judged too
// when the pass's scope holds them. A connection whose first packet met the previous
// ruleset but whose first reply came after the pass looked is in the table only from
// that reply on (the table indexes answered connections): within a handshake's round
// trip of the commit, which this bounds generously. (A SYN retransmitted after the
// commit meets the new ruleset as a new connection.) Kept short because nothing tells
// such a flow from one that met the new ruleset in a kernel table that differs from it
// (drift, repaired at the next read-back): the change turned both to denied.
const lateWindow = 500 * time.Millisecond

// maxPending bounds the changes waiting for a pass (a pass stuck in the kernel must not
// pile up rulesets without end): beyond it they merge into one that judges every flow.
const maxPending = 256

// appliedChange is one ruleset change in the kernel, to be judged.
type appliedChange struct {
	old, cur *ruleset.Ruleset
	// changes turn old into cur; nil: compute them (the dataplane diffed itself).
	changes *ruleset.Changes
	// all: judge every flow (a whole table replaced, drift repaired).
	all       bool
	committed time.Time
}

// PassResult is what one revocation pass did.
type PassResult struct {
	Changes  int // ruleset changes merged into the pass
	All      bool
	Judged   int
	Revoked  int
	Restored int
	// Latency is from the oldest change's kernel commit to the pass's end.
	Latency time.Duration
	Err     error
}

func (r *Revoker) init() {
	r.mu.Lock()
	if r.kick == nil {
		r.kick = make(chan struct{}, 1)
	}
	r.mu.Unlock()
}

// Applied hands over a ruleset change the kernel committed at committed: from old to
// cur by changes (nil: unknown, computed by the pass), or, with all, a change after
// which every flow is to be judged. It never blocks.
func (r *Revoker) Applied(old, cur *ruleset.Ruleset, changes *ruleset.Changes, all bool, committed time.Time) {
	r.init()
	r.mu.Lock()
	r.pending = append(r.pending, appliedChange{old: old, cur: cur, changes: changes, all: all || old == nil, committed: committed})
	if len(r.pending) > maxPending {
		r.pending = []appliedChange{{cur: cur, all: true, committed: r.pending[0].committed}}
	}
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Inserted is told of a flow the table just learnt of: within lateWindow of a pass
// whose scope holds it, it is judged too.
func (r *Revoker) Inserted(f dataplane.Flow) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.watches) == 0 {
		return
	}
	now := r.now()
	for len(r.watches) > 0 && now.After(r.watches[0].until) {
		r.watches = r.watches[1:]
	}
	for _, w := range r.watches {
		if w.scope.Contains(f) {
			r.late = append(r.late, lateFlow{f: f, before: w.before})
			select {
			case r.kick <- struct{}{}:
			default:
			}
			return
		}
	}
}

func (r *Revoker) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// Run makes a pass whenever changes are pending, until ctx ends.
func (r *Revoker) Run(ctx context.Context) error {
	r.init()
	if n, ok := r.Flows.(insertNotifier); ok {
		n.NotifyInserts(r.Inserted)
		defer n.NotifyInserts(nil)
	}
	if w, ok := r.Flows.(readyWaiter); ok {
		if err := w.WaitReady(ctx); err != nil {
			// Stopped before the table was ready: nothing to revoke.
			return nil //nolint:nilerr // a stop is not a failure
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.kick:
		}
		r.mu.Lock()
		batch, late := r.pending, r.late
		r.pending, r.late = nil, nil
		r.mu.Unlock()
		if len(late) > 0 && r.latest != nil {
			res := r.decideLate(r.latest, late)
			if res.Err != nil {
				syncFailures.Inc()
				r.Log.Error(res.Err, "revoking established flows that came after a pass looked")
			}
			if r.Passed != nil {
				r.Passed(res)
			}
		}
		if len(batch) == 0 {
			continue
		}
		res := r.pass(batch)
		if res.Err != nil {
			// The rules are in force for every new connection; the flows this pass
			// missed are judged again with the next change that concerns them (or,
			// failing that, the next full pass).
			syncFailures.Inc()
			r.Log.Error(res.Err, "revoking established flows the new ruleset denies")
		}
		if r.Passed != nil {
			r.Passed(res)
		}
	}
}

// scope merges the changes' scopes.
func (r *Revoker) scope(batch []appliedChange) dataplane.FlowScope {
	var sc dataplane.FlowScope
	if g := r.Flows.Generation(); g != r.gen {
		// The flow table's view was (re)built: entries created meanwhile were not
		// seen by earlier passes.
		r.gen = g
		return dataplane.FlowScope{All: true}
	}
	for _, c := range batch {
		if c.all {
			return dataplane.FlowScope{All: true}
		}
		ch := c.changes
		if ch == nil {
			ch = ruleset.Diff(c.old, c.cur)
		}
		sc.Add(revoke.Scope(c.old, c.cur, ch))
		if sc.All {
			return sc
		}
	}
	return sc
}

// pass judges the flows the batch concerns against its newest ruleset.
func (r *Revoker) pass(batch []appliedChange) (res PassResult) {
	rs := batch[len(batch)-1].cur
	sc := r.scope(batch)
	res = PassResult{Changes: len(batch), All: sc.All}
	defer func() {
		res.Latency = time.Since(batch[0].committed)
		revocationDuration.Observe(res.Latency.Seconds())
	}()
	if sc.All {
		revocationPasses.WithLabelValues("all").Inc()
	} else {
		revocationPasses.WithLabelValues("addresses").Inc()
	}
	if sc.Empty() {
		return res
	}
	// Watched from before the look: a flow the table learns of from now on may have
	// met the previous ruleset. (Not after a pass over every flow: the first ruleset
	// had none before it, and after drift or a lost event nothing says which
	// ruleset a flow met.)
	r.mu.Lock()
	r.latest = rs
	if before := batch[0].old; !sc.All && before != nil {
		r.watches = append(r.watches, watch{scope: sc, until: r.now().Add(lateWindow), before: before})
	}
	r.mu.Unlock()
	flows, err := r.Flows.Flows(sc)
	if err != nil {
		res.Err = err
		return res
	}
	d := r.decide(rs, flows, sc.All)
	d.Changes, d.All = res.Changes, res.All
	res = d
	return res
}

// decideLate revokes the late flows whose verdict their watch's change turned from
// allowed to denied (revoke.DecideLate).
func (r *Revoker) decideLate(rs *ruleset.Ruleset, late []lateFlow) PassResult {
	var res PassResult
	byBefore := map[*ruleset.Ruleset][]dataplane.Flow{}
	for _, l := range late {
		byBefore[l.before] = append(byBefore[l.before], l.f)
	}
	mine := r.localAddrs()
	marks := revoke.Marks{Mask: compiler.CtMarkMask, Revoked: compiler.RevokedMark, Cleared: compiler.ClearedMark}
	after := tracer.NewWithCache(rs, r.cache)
	var errs []error
	for before, flows := range byBefore {
		res.Judged += len(flows)
		d := revoke.DecideLate(tracer.New(before), after, flows, func(a netip.Addr) bool { return mine[a] }, marks)
		n, err := r.Flows.SetMark(d.Revoke, marks.Mask, marks.Revoked)
		res.Revoked += n
		errs = append(errs, err)
	}
	revocationJudged.WithLabelValues("late").Add(float64(res.Judged))
	revokedFlows.Add(float64(res.Revoked))
	if res.Revoked > 0 {
		r.Log.Info("established flows that came just after a change follow it", "revoked", res.Revoked, "judged", res.Judged)
	}
	res.Err = errors.Join(errs...)
	return res
}

func (r *Revoker) localAddrs() map[netip.Addr]bool {
	if r.LocalAddrs == nil {
		return nil
	}
	return r.LocalAddrs()
}

// decide judges flows against rs and marks them.
func (r *Revoker) decide(rs *ruleset.Ruleset, flows []dataplane.Flow, all bool) PassResult {
	var res PassResult
	res.Judged = len(flows)
	revocationJudged.WithLabelValues("change").Add(float64(len(flows)))
	mine := r.localAddrs()
	if r.cache == nil {
		r.cache = tracer.NewCache()
	}
	r.cache.Retain(rs)
	marks := revoke.Marks{Mask: compiler.CtMarkMask, Revoked: compiler.RevokedMark, Cleared: compiler.ClearedMark}
	d := revoke.Decide(tracer.NewWithCache(rs, r.cache), flows, func(a netip.Addr) bool { return mine[a] }, marks)
	var err1, err2 error
	res.Revoked, err1 = r.Flows.SetMark(d.Revoke, marks.Mask, marks.Revoked)
	res.Restored, err2 = r.Flows.SetMark(d.Restore, marks.Mask, marks.Cleared)
	revokedFlows.Add(float64(res.Revoked))
	if res.Revoked > 0 || res.Restored > 0 {
		r.Log.Info("established flows follow the new ruleset", "revoked", res.Revoked, "restored", res.Restored, "judged", res.Judged, "allFlows", all)
	}
	res.Err = errors.Join(err1, err2)
	return res
}
