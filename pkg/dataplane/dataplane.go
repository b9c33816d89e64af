// Package dataplane programs the compiled ruleset into the kernel. The interface is small
// on purpose: the agent hands over the whole desired ruleset and the dataplane decides
// whether to replace the table or to send only the differences.
//
// The package holds the contract and the one place that decision is made (Planner);
// it has no kernel code. Backends do what touches a kernel: the netlink backend
// (pkg/dataplane/netlink) and an in-memory one for tests (pkg/dataplane/fake), both
// under the same Planner. The types other layers exchange with the kernel side
// (RuleCounter, Flow) live here too, so that pure packages (pkg/revoke, controllers)
// depend on this package and never on a kernel implementation.
package dataplane

import (
	"context"

	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// DefaultTable is the inet table a dataplane owns unless told otherwise.
const DefaultTable = "nftpolicy"

// Generation identifies one successful Apply of one Planner. Generations are opaque to
// the caller, never zero, strictly increasing, and never reused, even after a failure
// or a Delete made the planner forget what the kernel holds. The zero Generation names
// no Apply.
type Generation uint64

// ApplyOptions tune one Apply call.
type ApplyOptions struct {
	// Full replaces the whole table in one transaction instead of sending a diff.
	Full bool
	// ReadBack diffs against the table as the kernel holds it now instead of against the
	// last ruleset this dataplane applied: this is how drift (a flushed or deleted table,
	// a removed element, a rule added by hand) is found and repaired.
	ReadBack bool
	// Changes are the changes to desired from the ruleset of the Apply that returned
	// BaseGeneration, as the caller computed them (pkg/compiler's Engine does). They are
	// trusted when BaseGeneration is the Generation of the last successful Apply and
	// nothing (a failed Apply, a Delete) reset the dataplane since. Then, unless Full or
	// ReadBack is set, the dataplane sends them as they are and checks only what they
	// touch, instead of validating and diffing the whole ruleset: the cost of an Apply
	// depends on the change, not on the size of the ruleset. Otherwise they are
	// ignored and the dataplane computes the diff itself. Rulesets passed with Changes
	// must be normalized (the compiler's are) and must not be modified afterwards (the
	// dataplane keeps desired as it is, as the base of the next diff).
	Changes        *ruleset.Changes
	BaseGeneration Generation
}

// Result describes what an Apply did.
type Result struct {
	// Full is true when the table was replaced as a whole.
	Full bool
	// Ops counts the objects in the transaction (sets, chains, rules, elements).
	Ops int
	// Patched is true when the caller's Changes were sent as they are.
	Patched bool
	// Drift is true when ReadBack found the kernel different from the last applied ruleset.
	Drift bool
	// Generation identifies this Apply: pass it as ApplyOptions.BaseGeneration with the
	// changes from this Apply's ruleset to the next. Zero when the Apply failed.
	Generation Generation
}

// RuleCounter is what the kernel holds for one rule of the table: its counter (when
// the rule has one) and its comment, which callers use to check that the rule is the
// one they expect at that position.
type RuleCounter struct {
	Packets, Bytes uint64
	// Counted is false for a rule without a counter expression.
	Counted bool
	Comment string
}

// Dataplane owns one nftables table.
type Dataplane interface {
	// Apply makes the kernel table equal to desired in one atomic transaction. The first
	// call replaces the table (no window without rules: delete and re-create happen in the
	// same batch); later calls send only the differences. When a call fails the kernel
	// keeps the last good ruleset, and the next call replaces the table whole.
	Apply(ctx context.Context, desired *ruleset.Ruleset, opts ApplyOptions) (Result, error)
	// Read returns the table as the kernel holds it, or nil when it does not exist.
	Read(ctx context.Context) (*ruleset.Ruleset, error)
	// Delete removes the table; it is not an error when the table does not exist.
	Delete(ctx context.Context) error
	// Counters returns, per chain of the table, every rule in chain order with its
	// counter and comment; a missing table gives an empty map. It does not wait for an
	// Apply in progress (a metrics scrape never waits for a commit), and the rules of
	// one chain are all from one generation of the kernel's ruleset.
	Counters(ctx context.Context) (map[string][]RuleCounter, error)
}
