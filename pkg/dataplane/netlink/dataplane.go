// Package netlink is the kernel backend of the dataplane: it programs the compiled
// ruleset into one nftables table of family inet over netlink, and reads it back.
// What to send (replace the table, the caller's changes, a diff, after a read-back) is
// decided by dataplane.Planner, the same planner the in-memory fake runs under; this
// package only carries out its decisions.
//
// Every call that writes is one nf_tables transaction (a netlink batch), so the kernel
// switches from the old ruleset to the new one atomically and keeps the old one when
// anything in the batch fails. A replace is "add table; delete table; add table; ..."
// in the same batch, which never leaves a moment without rules. An update sends only
// the changes, in the order documented on ruleset.Changes.
//
// The backend owns exactly one table. It never flushes the ruleset and never touches
// another table.
//
// Expressions are built with github.com/google/nftables/expr; the netlink messages
// themselves are encoded here and sent by package nfnl (see its doc for why).
package netlink

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
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
	DefaultTable = dataplane.DefaultTable

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

// Dataplane programs one nftables table: the planner over the kernel backend. It is
// safe for concurrent use; Apply, Read and Delete are serialized.
type Dataplane struct {
	*dataplane.Planner
	k *kernel
}

var _ dataplane.Dataplane = (*Dataplane)(nil)

// kernel is the dataplane.Backend that speaks netlink. The Planner serializes the
// calls that write; Read and Counters open a socket of their own and may run
// concurrently with them.
type kernel struct {
	table   string
	nsFd    int
	nsPath  string
	sockBuf int
	// setID numbers the sets created in a batch (NFTA_SET_ID); only the (serialized)
	// writing calls use it.
	setID uint32
}

var _ dataplane.Backend = (*kernel)(nil)

type options struct {
	kernel
	log logr.Logger
}

// Option configures a Dataplane.
type Option func(*options)

// WithTable sets the name of the inet table the dataplane owns (default "nftpolicy").
func WithTable(name string) Option { return func(o *options) { o.table = name } }

// WithNetNSFd makes the dataplane program the network namespace the open file
// descriptor fd refers to (e.g. /proc/<pid>/ns/net or /run/netns/<name>) instead of the
// namespace of the calling thread. The descriptor must stay open while the dataplane
// is used.
func WithNetNSFd(fd int) Option { return func(o *options) { o.nsFd, o.nsPath = fd, "" } }

// WithNetNSPath is WithNetNSFd for a path, opened anew for every operation.
func WithNetNSPath(path string) Option { return func(o *options) { o.nsPath, o.nsFd = path, 0 } }

// WithLogger sets the logger; applies are logged at V(1).
func WithLogger(l logr.Logger) Option { return func(o *options) { o.log = l } }

// WithSocketBuffer sets the netlink socket buffer size in bytes (default 16 MiB). Batches
// larger than this grow the send buffer anyway.
func WithSocketBuffer(bytes int) Option { return func(o *options) { o.sockBuf = bytes } }

// New returns a dataplane for the table. It checks that nf_tables can be reached in the
// namespace, and does not change anything.
func New(opts ...Option) (*Dataplane, error) {
	o := options{kernel: kernel{table: DefaultTable, sockBuf: defaultSockBuf}, log: logr.Discard()}
	for _, opt := range opts {
		opt(&o)
	}
	k := &o.kernel
	if k.table == "" || len(k.table) > ruleset.MaxNameLen {
		return nil, fmt.Errorf("nftables dataplane: table name %q: must be 1-%d characters", k.table, ruleset.MaxNameLen)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := k.dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("nftables dataplane: %w", err)
	}
	defer c.Close()
	if _, err := getGen(c); err != nil {
		return nil, fmt.Errorf("nftables dataplane: query nf_tables generation: %w", err)
	}
	return &Dataplane{Planner: dataplane.NewPlanner(k, o.log), k: k}, nil
}

// Table is the name of the inet table the dataplane owns.
func (d *Dataplane) Table() string { return d.k.table }

// Table implements dataplane.Backend.
func (k *kernel) Table() string { return k.table }

func (k *kernel) dial(ctx context.Context) (*nfnl.Conn, error) {
	fd := k.nsFd
	if k.nsPath != "" {
		f, err := os.Open(k.nsPath)
		if err != nil {
			return nil, fmt.Errorf("open network namespace: %w", err)
		}
		// The socket keeps the namespace; the file is only needed to create it.
		defer f.Close()
		fd = int(f.Fd())
	}
	return nfnl.Dial(ctx, nfnl.Config{NetNS: fd, SockBuf: k.sockBuf, Timeout: defaultTimeout})
}

// send sends msgs as one batch on a socket of its own.
func (k *kernel) send(ctx context.Context, msgs []nfnl.Message) error {
	c, err := k.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SendBatch(msgs); err != nil {
		return fmt.Errorf("%d messages: %w", len(msgs), err)
	}
	return nil
}

// Replace implements dataplane.Backend.
func (k *kernel) Replace(ctx context.Context, rs *ruleset.Ruleset) error {
	msgs, err := k.fullBatch(rs)
	if err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	return k.send(ctx, msgs)
}

// Update implements dataplane.Backend.
func (k *kernel) Update(ctx context.Context, old, want *ruleset.Ruleset, ch *ruleset.Changes) error {
	msgs, err := k.incrementalBatch(old, want, ch)
	if err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	return k.send(ctx, msgs)
}

func (k *kernel) nextSetID() uint32 {
	k.setID++
	if k.setID == 0 {
		k.setID++
	}
	return k.setID
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
func (k *kernel) fullBatch(rs *ruleset.Ruleset) ([]nfnl.Message, error) {
	var b batchBuilder
	b.add(msgAddTable(k.table))
	b.add(msgDelTable(k.table))
	b.add(msgAddTable(k.table))
	for _, c := range rs.Chains {
		b.add(msgAddChain(k.table, c))
	}
	for _, s := range rs.Sets {
		id := k.nextSetID()
		b.add(msgAddSet(k.table, s, id))
		b.addAll(msgsSetElems(k.table, s, id, s.Elements, false))
	}
	for _, c := range rs.Chains {
		for i, r := range c.Rules {
			b.add(msgAddRule(k.table, c.Name, i, r))
		}
	}
	return b.msgs, b.err
}

// incrementalBatch sends a diff in the order documented on ruleset.Changes, steps
// (1) to (6): new chains first (empty), so that the elements of new verdict maps,
// added with their sets, can jump to them.
func (k *kernel) incrementalBatch(old, want *ruleset.Ruleset, ch *ruleset.Changes) ([]nfnl.Message, error) {
	var b batchBuilder
	for _, c := range ch.AddChains { // (1)
		b.add(msgAddChain(k.table, c))
	}
	for _, s := range ch.AddSets { // (2)
		id := k.nextSetID()
		b.add(msgAddSet(k.table, s, id))
		b.addAll(msgsSetElems(k.table, s, id, s.Elements, false))
	}
	setOf := func(name string) *ruleset.Set {
		if s := want.Set(name); s != nil {
			return s
		}
		return old.Set(name)
	}
	for _, name := range slices.Sorted(maps.Keys(ch.DelElements)) { // (3) deletions first: a verdict
		b.addAll(msgsSetElems(k.table, setOf(name), 0, ch.DelElements[name], true)) // that changed is deleted and re-added
	}
	for _, name := range slices.Sorted(maps.Keys(ch.AddElements)) {
		b.addAll(msgsSetElems(k.table, setOf(name), 0, ch.AddElements[name], false))
	}
	added := map[string]bool{}
	for _, c := range ch.AddChains {
		added[c.Name] = true
	}
	for _, c := range ch.RewriteChains { // (4)
		if !added[c.Name] { // a new chain is empty already
			b.add(msgFlushChain(k.table, c.Name))
		}
		for i, r := range c.Rules {
			b.add(msgAddRule(k.table, c.Name, i, r))
		}
	}
	for _, c := range ch.DelChains { // (5)
		b.add(msgFlushChain(k.table, c.Name))
		b.add(msgDelChain(k.table, c.Name))
	}
	for _, s := range ch.DelSets { // (6)
		b.add(msgDelSet(k.table, s.Name))
	}
	return b.msgs, b.err
}

// Read implements dataplane.Backend.
func (k *kernel) Read(ctx context.Context) (*ruleset.Ruleset, error) {
	c, err := k.dial(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return k.read(c)
}

// Delete implements dataplane.Backend.
func (k *kernel) Delete(ctx context.Context) error {
	m, err := msgDelTable(k.table)
	if err != nil {
		return err
	}
	if err := k.send(ctx, []nfnl.Message{m}); err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
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
func (k *kernel) read(c *nfnl.Conn) (*ruleset.Ruleset, error) {
	for range readAttempts {
		gen, err := getGen(c)
		if err != nil {
			return nil, fmt.Errorf("query generation: %w", err)
		}
		rs, interrupted, err := k.readOnce(c)
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

// table is the attributes of a request about the table named name (attr: the request's
// table attribute).
func table(attr uint16, name string) *nfnl.Attrs {
	a := &nfnl.Attrs{}
	a.PutString(attr, name)
	return a
}

// dump sends the dump request typ with attributes a and parses every reply; what names
// the objects in errors. interrupted reports that the kernel interrupted the dump.
func dump[T any](c *nfnl.Conn, typ int, what string, parse func(syscall.NetlinkMessage) (T, error), a *nfnl.Attrs) (objs []T, interrupted bool, err error) {
	msgs, interrupted, err := c.Request(family, typ, true, a)
	if err != nil {
		return nil, false, fmt.Errorf("dump %s: %w", what, err)
	}
	objs = make([]T, 0, len(msgs))
	for _, m := range msgs {
		o, err := parse(m)
		if err != nil {
			return nil, false, fmt.Errorf("dump %s: %w", what, err)
		}
		objs = append(objs, o)
	}
	return objs, interrupted, nil
}

func (k *kernel) readOnce(c *nfnl.Conn) (*ruleset.Ruleset, bool, error) {
	replies, _, err := c.Request(family, unix.NFT_MSG_GETTABLE, false, table(unix.NFTA_TABLE_NAME, k.table))
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
	rs := &ruleset.Ruleset{Table: k.table}
	if t.flags&unix.NFT_TABLE_F_DORMANT != 0 {
		// A dormant table filters nothing. The IR cannot say so; a table name no
		// desired ruleset has makes the diff replace it (which also wakes it up).
		rs.Table = k.table + " (dormant)"
	}
	anyInterrupted := false

	sets, intr, err := dump(c, unix.NFT_MSG_GETSET, "sets", parseSet, table(unix.NFTA_SET_TABLE, k.table))
	if err != nil {
		return nil, false, err
	}
	anyInterrupted = anyInterrupted || intr
	for _, raw := range sets {
		// Anonymous sets belong to the rule that uses them (nft's `{ ... }`).
		if raw.table != k.table || raw.flags&unix.NFT_SET_ANONYMOUS != 0 {
			continue
		}
		a := table(unix.NFTA_SET_ELEM_LIST_TABLE, k.table)
		a.PutString(unix.NFTA_SET_ELEM_LIST_SET, raw.name)
		parse := func(m syscall.NetlinkMessage) ([]rawElem, error) {
			_, _, es, err := parseElems(m)
			return es, err
		}
		elems, intr, err := dump(c, unix.NFT_MSG_GETSETELEM, fmt.Sprintf("elements of set %q", raw.name), parse, a)
		if err != nil {
			return nil, false, err
		}
		anyInterrupted = anyInterrupted || intr
		rs.Sets = append(rs.Sets, decodeSet(raw, slices.Concat(elems...)))
	}

	rawChains, intr, err := dump(c, unix.NFT_MSG_GETCHAIN, "chains", parseChain, table(unix.NFTA_CHAIN_TABLE, k.table))
	if err != nil {
		return nil, false, err
	}
	anyInterrupted = anyInterrupted || intr
	chains := map[string]*ruleset.Chain{}
	for _, raw := range rawChains {
		// Binding chains are anonymous chains owned by a rule (nft's `jump { ... }`).
		if raw.table != k.table || raw.flags&nftChainBinding != 0 {
			continue
		}
		ch := decodeChain(raw)
		chains[ch.Name] = ch
		rs.Chains = append(rs.Chains, ch)
	}

	rules, intr, err := dump(c, unix.NFT_MSG_GETRULE, "rules", parseRule, table(unix.NFTA_RULE_TABLE, k.table))
	if err != nil {
		return nil, false, err
	}
	anyInterrupted = anyInterrupted || intr
	for _, raw := range rules {
		ch := chains[raw.chain]
		if raw.table != k.table || ch == nil {
			continue
		}
		ch.Rules = append(ch.Rules, decodeRule(raw))
	}
	rs.Normalize()
	return rs, anyInterrupted, nil
}
