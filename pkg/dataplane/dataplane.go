// Package dataplane programs the compiled ruleset into the kernel. The interface is small
// on purpose: the agent hands over the whole desired ruleset and the implementation
// decides whether to replace the table or to send only the differences.
package dataplane

import (
	"context"

	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// ApplyOptions tune one Apply call.
type ApplyOptions struct {
	// Full replaces the whole table in one transaction instead of sending a diff.
	Full bool
	// ReadBack diffs against the table as the kernel holds it now instead of against the
	// last ruleset this dataplane applied: this is how drift (a flushed or deleted table,
	// a removed element, a rule added by hand) is found and repaired.
	ReadBack bool
	// Changes, with Base, are the changes from Base to desired as the caller computed
	// them (pkg/compiler's Engine does). When Base is the ruleset passed to the last
	// successful Apply and neither Full nor ReadBack is set, the dataplane sends them as
	// they are and checks only what they touch, instead of validating and diffing the
	// whole ruleset: the cost of an Apply then depends on the change, not on the size of
	// the ruleset. Otherwise they are ignored. Rulesets passed with Changes must not be
	// modified afterwards (the dataplane keeps desired as the base of the next diff).
	Changes *ruleset.Changes
	Base    *ruleset.Ruleset
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
}
