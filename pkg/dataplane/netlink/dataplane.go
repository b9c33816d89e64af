// Package netlink is the kernel Dataplane: it programs the compiled ruleset into one
// nftables table of family inet over netlink, and reads it back.
//
// Every Apply is one nf_tables transaction (a netlink batch), so the kernel switches from
// the old ruleset to the new one atomically and keeps the old one when anything in the
// batch fails. The first Apply, the first after a failure, and any Apply whose diff
// cannot be expressed incrementally replace the table as a whole: "add table; delete
// table; add table; ..." in the same batch, which never leaves a moment without rules.
// Other Applies send only the differences computed by ruleset.Diff.
//
// The dataplane owns exactly one table. It never flushes the ruleset and never touches
// another table.
//
// Expressions are built with github.com/google/nftables/expr; the netlink messages
// themselves are encoded here and sent by package nfnl (see its doc for why).
package netlink

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane/netlink/nfnl"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

const (
	// DefaultTable is the table the dataplane owns unless WithTable says otherwise.
	DefaultTable = "nftpolicy"

	// defaultSockBuf is the socket buffer size (both directions). A batch must fit in
	// the send buffer (it is one skb) and a dump is faster with a large receive buffer;
	// the send buffer grows further for batches larger than this.
	defaultSockBuf = 16 << 20

	// defaultTimeout bounds the wait for netlink replies when the context has no
	// deadline.
	defaultTimeout = 2 * time.Minute

	// readAttempts bounds the retries of Read when the ruleset changes while it is
	// being dumped.
	readAttempts = 10
)

// Dataplane programs one nftables table. It is safe for concurrent use; calls are
// serialized.
type Dataplane struct {
	table   string
	nsFd    int
	nsPath  string
	log     logr.Logger
	sockBuf int

	mu sync.Mutex
	// last is what the last successful Apply wrote (normalized), nil when the next
	// Apply must replace the table: after New, after a failure, after Delete.
	last *ruleset.Ruleset
	// lastSource is the ruleset the caller passed to that Apply: callers that compute
	// changes themselves name it as their Base (see ApplyOptions.Changes).
	lastSource *ruleset.Ruleset
	// setID numbers the sets created in a batch (NFTA_SET_ID).
	setID uint32
}

var _ dataplane.Dataplane = (*Dataplane)(nil)

// Option configures a Dataplane.
type Option func(*Dataplane)

// WithTable sets the name of the inet table the dataplane owns (default "nftpolicy").
func WithTable(name string) Option { return func(d *Dataplane) { d.table = name } }

// WithNetNSFd makes the dataplane program the network namespace the open file
// descriptor fd refers to (e.g. /proc/<pid>/ns/net or /run/netns/<name>) instead of the
// namespace of the calling thread. The descriptor must stay open while the dataplane
// is used.
func WithNetNSFd(fd int) Option { return func(d *Dataplane) { d.nsFd, d.nsPath = fd, "" } }

// WithNetNSPath is WithNetNSFd for a path, opened anew for every operation.
func WithNetNSPath(path string) Option { return func(d *Dataplane) { d.nsPath, d.nsFd = path, 0 } }

// WithLogger sets the logger; applies are logged at V(1).
func WithLogger(l logr.Logger) Option { return func(d *Dataplane) { d.log = l } }

// WithSocketBuffer sets the netlink socket buffer size in bytes (default 16 MiB). Batches
// larger than this grow the send buffer anyway.
func WithSocketBuffer(bytes int) Option { return func(d *Dataplane) { d.sockBuf = bytes } }

// New returns a dataplane for the table. It checks that nf_tables can be reached in the
// namespace, and does not change anything.
func New(opts ...Option) (*Dataplane, error) {
	d := &Dataplane{table: DefaultTable, log: logr.Discard(), sockBuf: defaultSockBuf}
	for _, o := range opts {
		o(d)
	}
	if d.table == "" || len(d.table) > ruleset.MaxNameLen {
		return nil, fmt.Errorf("nftables dataplane: table name %q: must be 1-%d characters", d.table, ruleset.MaxNameLen)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := d.dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("nftables dataplane: %w", err)
	}
	defer c.Close()
	if _, err := getGen(c); err != nil {
		return nil, fmt.Errorf("nftables dataplane: query nf_tables generation: %w", err)
	}
	return d, nil
}

// Table is the name of the inet table the dataplane owns.
func (d *Dataplane) Table() string { return d.table }

func (d *Dataplane) dial(ctx context.Context) (*nfnl.Conn, error) {
	fd := d.nsFd
	if d.nsPath != "" {
		f, err := os.Open(d.nsPath)
		if err != nil {
			return nil, fmt.Errorf("open network namespace: %w", err)
		}
		// The socket keeps the namespace; the file is only needed to create it.
		defer f.Close()
		fd = int(f.Fd())
	}
	return nfnl.Dial(ctx, nfnl.Config{NetNS: fd, SockBuf: d.sockBuf, Timeout: defaultTimeout})
}

// Apply makes the table equal to desired in one transaction.
func (d *Dataplane) Apply(ctx context.Context, desired *ruleset.Ruleset, opts dataplane.ApplyOptions) (dataplane.Result, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	start := time.Now()
	res, err := d.apply(ctx, desired, opts)
	if err != nil {
		// The kernel rejected the whole batch (or it was never sent): the table is as
		// before, but our idea of it may be wrong, so the next Apply replaces it.
		d.last, d.lastSource = nil, nil
		return dataplane.Result{}, err
	}
	d.lastSource = desired
	d.log.V(1).Info("applied nftables ruleset", "table", d.table, "full", res.Full, "ops", res.Ops,
		"drift", res.Drift, "readBack", opts.ReadBack, "duration", time.Since(start))
	return res, nil
}

func (d *Dataplane) apply(ctx context.Context, desired *ruleset.Ruleset, opts dataplane.ApplyOptions) (dataplane.Result, error) {
	var res dataplane.Result
	if desired == nil {
		return res, errors.New("apply nftables ruleset: nil ruleset")
	}
	if desired.Table != d.table {
		return res, fmt.Errorf("apply nftables ruleset: ruleset is for table %q, this dataplane owns table inet %s", desired.Table, d.table)
	}
	// Changes computed by the caller from the ruleset applied last: desired is that
	// ruleset plus them, so only what they touch needs checking, and desired (which the
	// caller does not modify) needs no copy.
	trusted := opts.Changes != nil && !opts.Changes.NeedsReplace && d.last != nil && opts.Base != nil && opts.Base == d.lastSource
	if trusted && !opts.Full && !opts.ReadBack {
		return d.patch(ctx, desired, opts.Changes)
	}
	want := desired
	if trusted {
		if err := opts.Changes.ValidateAgainst(desired); err != nil {
			return res, fmt.Errorf("apply nftables ruleset to table inet %s: invalid change: %w", d.table, err)
		}
	} else {
		if err := desired.Validate(); err != nil {
			return res, fmt.Errorf("apply nftables ruleset to table inet %s: invalid ruleset: %w", d.table, err)
		}
		want = desired.Clone()
		want.Normalize()
	}

	c, err := d.dial(ctx)
	if err != nil {
		return res, fmt.Errorf("apply nftables ruleset to table inet %s: %w", d.table, err)
	}
	defer c.Close()

	base := d.last
	full := opts.Full || d.last == nil
	var readDiff *ruleset.Changes // kernel → want, when computed already
	if opts.ReadBack {
		kernel, err := d.read(c)
		if err != nil {
			return res, fmt.Errorf("apply nftables ruleset to table inet %s: read back: %w", d.table, err)
		}
		if trusted && opts.Changes.Empty() && kernel != nil {
			// want is what was applied last: one diff tells both the drift and its repair
			// (at 50k pods a diff is a noticeable part of a periodic resync).
			readDiff = ruleset.Diff(kernel, want)
			res.Drift = !readDiff.Empty()
		} else {
			res.Drift = !equalRulesets(kernel, d.last)
		}
		if res.Drift {
			d.log.V(1).Info("nftables table drifted from the last applied ruleset", "table", d.table, "present", kernel != nil)
		}
		base = kernel
		full = full || kernel == nil
	}

	var msgs []nfnl.Message
	phase := "replace table"
	if !full {
		ch := readDiff
		if ch == nil {
			ch = ruleset.Diff(base, want)
		}
		if ch.NeedsReplace {
			full = true
		} else {
			if ch.Empty() {
				d.last = want
				return res, nil
			}
			phase = "update table"
			res.Ops = ch.Ops()
			msgs, err = d.incrementalBatch(base, want, ch)
		}
	}
	if full {
		res.Full = true
		st := want.Stats()
		res.Ops = st.Chains + st.Rules + st.Sets + st.Elements
		msgs, err = d.fullBatch(want)
	}
	if err != nil {
		return dataplane.Result{}, fmt.Errorf("apply nftables ruleset to table inet %s: encode (%s): %w", d.table, phase, err)
	}
	if err := c.SendBatch(msgs); err != nil {
		return dataplane.Result{}, fmt.Errorf("apply nftables ruleset to table inet %s: %s (%d objects in %d messages): %w",
			d.table, phase, res.Ops, len(msgs), err)
	}
	d.last = want
	return res, nil
}

// patch sends changes the caller computed from the last applied ruleset to desired.
func (d *Dataplane) patch(ctx context.Context, desired *ruleset.Ruleset, ch *ruleset.Changes) (dataplane.Result, error) {
	res := dataplane.Result{Patched: true}
	if err := ch.ValidateAgainst(desired); err != nil {
		return res, fmt.Errorf("apply nftables ruleset to table inet %s: invalid change: %w", d.table, err)
	}
	if ch.Empty() {
		d.last = desired
		return res, nil
	}
	res.Ops = ch.Ops()
	msgs, err := d.incrementalBatch(d.last, desired, ch)
	if err != nil {
		return res, fmt.Errorf("apply nftables ruleset to table inet %s: encode (update table): %w", d.table, err)
	}
	c, err := d.dial(ctx)
	if err != nil {
		return res, fmt.Errorf("apply nftables ruleset to table inet %s: %w", d.table, err)
	}
	defer c.Close()
	if err := c.SendBatch(msgs); err != nil {
		return res, fmt.Errorf("apply nftables ruleset to table inet %s: update table (%d objects in %d messages): %w",
			d.table, res.Ops, len(msgs), err)
	}
	// Callers that pass Changes do not modify desired afterwards: no copy.
	d.last = desired
	return res, nil
}

func (d *Dataplane) nextSetID() uint32 {
	d.setID++
	if d.setID == 0 {
		d.setID++
	}
	return d.setID
}

// batchBuilder collects messages and the first encoding error.
type batchBuilder struct {
	msgs []nfnl.Message
	err  error
}

func (b *batchBuilder) add(m nfnl.Message, err error) {
	if err != nil {
		if b.err == nil {
			b.err = err
		}
		return
	}
	b.msgs = append(b.msgs, m)
}

func (b *batchBuilder) addAll(ms []nfnl.Message, err error) {
	if err != nil {
		b.add(nfnl.Message{}, err)
		return
	}
	b.msgs = append(b.msgs, ms...)
}

// fullBatch replaces the table. Chains come before the sets because a verdict map
// element that jumps to a chain needs the chain to exist; rules come last because they
// reference both.
func (d *Dataplane) fullBatch(rs *ruleset.Ruleset) ([]nfnl.Message, error) {
	var b batchBuilder
	b.add(msgAddTable(d.table))
	b.add(msgDelTable(d.table))
	b.add(msgAddTable(d.table))
	for _, c := range rs.Chains {
		b.add(msgAddChain(d.table, c))
	}
	for _, s := range rs.Sets {
		id := d.nextSetID()
		b.add(msgAddSet(d.table, s, id))
		b.addAll(msgsSetElems(d.table, s, id, s.Elements, false))
	}
	for _, c := range rs.Chains {
		for i, r := range c.Rules {
			b.add(msgAddRule(d.table, c.Name, i, r))
		}
	}
	return b.msgs, b.err
}

// incrementalBatch sends a diff in the order documented on ruleset.Changes, with one
// refinement: the elements of new sets are added after the new chains (step 1 creates
// the sets empty), since a verdict map element can jump to a chain that is new too.
func (d *Dataplane) incrementalBatch(old, want *ruleset.Ruleset, ch *ruleset.Changes) ([]nfnl.Message, error) {
	var b batchBuilder
	ids := map[string]uint32{}
	for _, s := range ch.AddSets { // (1)
		ids[s.Name] = d.nextSetID()
		b.add(msgAddSet(d.table, s, ids[s.Name]))
	}
	for _, c := range ch.AddChains { // (2)
		b.add(msgAddChain(d.table, c))
	}
	for _, s := range ch.AddSets { // (1, elements)
		b.addAll(msgsSetElems(d.table, s, ids[s.Name], s.Elements, false))
	}
	setOf := func(name string) *ruleset.Set {
		if s := want.Set(name); s != nil {
			return s
		}
		return old.Set(name)
	}
	for _, name := range sortedKeys(ch.DelElements) { // (3) deletions first: a verdict
		b.addAll(msgsSetElems(d.table, setOf(name), 0, ch.DelElements[name], true)) // that changed is deleted and re-added
	}
	for _, name := range sortedKeys(ch.AddElements) {
		b.addAll(msgsSetElems(d.table, setOf(name), 0, ch.AddElements[name], false))
	}
	added := map[string]bool{}
	for _, c := range ch.AddChains {
		added[c.Name] = true
	}
	for _, c := range ch.RewriteChains { // (4)
		if !added[c.Name] { // a new chain is empty already
			b.add(msgFlushChain(d.table, c.Name))
		}
		for i, r := range c.Rules {
			b.add(msgAddRule(d.table, c.Name, i, r))
		}
	}
	for _, c := range ch.DelChains { // (5)
		b.add(msgFlushChain(d.table, c.Name))
		b.add(msgDelChain(d.table, c.Name))
	}
	for _, s := range ch.DelSets { // (6)
		b.add(msgDelSet(d.table, s.Name))
	}
	return b.msgs, b.err
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
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
func (d *Dataplane) Read(ctx context.Context) (*ruleset.Ruleset, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, err := d.dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("read nftables table inet %s: %w", d.table, err)
	}
	defer c.Close()
	rs, err := d.read(c)
	if err != nil {
		return nil, fmt.Errorf("read nftables table inet %s: %w", d.table, err)
	}
	return rs, nil
}

// Delete removes the table; a missing table is not an error.
func (d *Dataplane) Delete(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.last = nil
	c, err := d.dial(ctx)
	if err != nil {
		return fmt.Errorf("delete nftables table inet %s: %w", d.table, err)
	}
	defer c.Close()
	m, err := msgDelTable(d.table)
	if err != nil {
		return err
	}
	if err := c.SendBatch([]nfnl.Message{m}); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("delete nftables table inet %s: %w", d.table, err)
	}
	d.log.V(1).Info("deleted nftables table", "table", d.table)
	return nil
}

func getGen(c *nfnl.Conn) (uint32, error) {
	replies, _, err := c.Request(family, unix.NFT_MSG_GETGEN, false, &nfnl.Attrs{})
	if err != nil {
		return 0, err
	}
	for _, m := range replies {
		ad, err := nfnl.MessageDecoder(m)
		if err != nil {
			return 0, err
		}
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				return ad.Uint32(), nil
			}
		}
	}
	return 0, errors.New("no generation in reply")
}

// read dumps the table. The table, its sets, their elements, the chains and the rules
// are separate dumps; the nf_tables generation before and after tells whether anything
// changed in between, in which case the read is repeated.
func (d *Dataplane) read(c *nfnl.Conn) (*ruleset.Ruleset, error) {
	for range readAttempts {
		gen, err := getGen(c)
		if err != nil {
			return nil, fmt.Errorf("query generation: %w", err)
		}
		rs, interrupted, err := d.readOnce(c)
		if err != nil {
			return nil, err
		}
		after, err := getGen(c)
		if err != nil {
			return nil, fmt.Errorf("query generation: %w", err)
		}
		if !interrupted && gen == after {
			return rs, nil
		}
	}
	return nil, fmt.Errorf("the ruleset kept changing while it was read (%d attempts)", readAttempts)
}

func (d *Dataplane) readOnce(c *nfnl.Conn) (*ruleset.Ruleset, bool, error) {
	a := &nfnl.Attrs{}
	a.PutString(unix.NFTA_TABLE_NAME, d.table)
	replies, _, err := c.Request(family, unix.NFT_MSG_GETTABLE, false, a)
	if errors.Is(err, syscall.ENOENT) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("get table: %w", err)
	}
	if len(replies) != 1 {
		return nil, false, fmt.Errorf("get table: %d replies", len(replies))
	}
	t, err := parseTable(replies[0])
	if err != nil {
		return nil, false, fmt.Errorf("get table: %w", err)
	}
	rs := &ruleset.Ruleset{Table: d.table}
	if t.flags&unix.NFT_TABLE_F_DORMANT != 0 {
		// A dormant table filters nothing. The IR cannot say so; a table name no
		// desired ruleset has makes the diff replace it (which also wakes it up).
		rs.Table = d.table + " (dormant)"
	}
	anyInterrupted := false

	a = &nfnl.Attrs{}
	a.PutString(unix.NFTA_SET_TABLE, d.table)
	setMsgs, intr, err := c.Request(family, unix.NFT_MSG_GETSET, true, a)
	if err != nil {
		return nil, false, fmt.Errorf("dump sets: %w", err)
	}
	anyInterrupted = anyInterrupted || intr
	for _, m := range setMsgs {
		raw, err := parseSet(m)
		if err != nil {
			return nil, false, fmt.Errorf("dump sets: %w", err)
		}
		// Anonymous sets belong to the rule that uses them (nft's `{ ... }`).
		if raw.table != d.table || raw.flags&unix.NFT_SET_ANONYMOUS != 0 {
			continue
		}
		a := &nfnl.Attrs{}
		a.PutString(unix.NFTA_SET_ELEM_LIST_TABLE, d.table)
		a.PutString(unix.NFTA_SET_ELEM_LIST_SET, raw.name)
		elemMsgs, intr, err := c.Request(family, unix.NFT_MSG_GETSETELEM, true, a)
		if err != nil {
			return nil, false, fmt.Errorf("dump elements of set %q: %w", raw.name, err)
		}
		anyInterrupted = anyInterrupted || intr
		var elems []rawElem
		for _, em := range elemMsgs {
			_, _, es, err := parseElems(em)
			if err != nil {
				return nil, false, fmt.Errorf("dump elements of set %q: %w", raw.name, err)
			}
			elems = append(elems, es...)
		}
		rs.Sets = append(rs.Sets, decodeSet(raw, elems))
	}

	a = &nfnl.Attrs{}
	a.PutString(unix.NFTA_CHAIN_TABLE, d.table)
	chainMsgs, intr, err := c.Request(family, unix.NFT_MSG_GETCHAIN, true, a)
	if err != nil {
		return nil, false, fmt.Errorf("dump chains: %w", err)
	}
	anyInterrupted = anyInterrupted || intr
	chains := map[string]*ruleset.Chain{}
	for _, m := range chainMsgs {
		raw, err := parseChain(m)
		if err != nil {
			return nil, false, fmt.Errorf("dump chains: %w", err)
		}
		// Binding chains are anonymous chains owned by a rule (nft's `jump { ... }`).
		if raw.table != d.table || raw.flags&nftChainBinding != 0 {
			continue
		}
		ch := decodeChain(raw)
		chains[ch.Name] = ch
		rs.Chains = append(rs.Chains, ch)
	}

	a = &nfnl.Attrs{}
	a.PutString(unix.NFTA_RULE_TABLE, d.table)
	ruleMsgs, intr, err := c.Request(family, unix.NFT_MSG_GETRULE, true, a)
	if err != nil {
		return nil, false, fmt.Errorf("dump rules: %w", err)
	}
	anyInterrupted = anyInterrupted || intr
	for _, m := range ruleMsgs {
		raw, err := parseRule(m)
		if err != nil {
			return nil, false, fmt.Errorf("dump rules: %w", err)
		}
		ch := chains[raw.chain]
		if raw.table != d.table || ch == nil {
			continue
		}
		ch.Rules = append(ch.Rules, decodeRule(raw))
	}
	rs.Normalize()
	return rs, anyInterrupted, nil
}
