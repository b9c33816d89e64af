package conntrack

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
)

// Tracker keeps an index of the node's conntrack entries by the addresses of their
// first packet, so that revocation can find the flows a change concerns without
// reading the whole table: on a busy node (250k entries) one dump costs about 1.5 s of
// CPU to read and even a dump the kernel filters walks every entry (about 50 ms), too
// much to pay on every policy change. The index is built from one dump and then kept
// by the kernel's conntrack events (an entry's first reply, its destruction: see
// eventFilter), so a lookup costs what it finds.
//
// Events cost the kernel a message per connection created and destroyed while the
// tracker listens, and the agent the parsing (a few µs each). When the socket's buffer
// overflows (a burst of connections faster than the agent reads), the kernel reports
// ENOBUFS: the tracker then reads the whole table again and bumps Generation, so that
// its user knows entries may have been missed meanwhile. An entry created while no
// listener existed gets no destroy event under the kernel's default
// nf_conntrack_events=2 ("only when someone listens"); such stale entries cost memory
// and a wasted update when a change concerns them, and the periodic re-read
// (ResyncPeriod) drops them.
//
// On a kernel without conntrack events (CONFIG_NF_CONNTRACK_EVENTS unset), or with
// them turned off (net.netfilter.nf_conntrack_events=0), the tracker falls back to a
// dump per lookup, filtered here: correct, and as slow as a full scan.
type Tracker struct {
	// NetNS is a network namespace file descriptor (0: the caller's namespace).
	NetNS int
	// ResyncPeriod is how often the whole table is read again to drop the entries
	// whose destroy event never came (0: never).
	ResyncPeriod time.Duration
	// ReadBuffer is the event socket's receive buffer in bytes (0: 16 MiB); a bigger
	// one rides out longer bursts of new connections before an overflow and re-read.
	ReadBuffer int
	Log        logr.Logger

	mu  sync.Mutex
	idx *flowIndex
	// polling: no events on this kernel; every lookup dumps the table.
	polling    bool
	ready      chan struct{}
	readyOnce  sync.Once
	generation atomic.Uint64
	eventCount atomic.Uint64
	overflows  atomic.Uint64
}

// Generation counts the times the index was (re)built from a dump: a change means
// events may have been lost since the last look, so a caller that relies on the
// index to have seen every flow should judge all of them once.
func (t *Tracker) Generation() uint64 { return t.generation.Load() }

// Stats are the tracker's counters, for metrics.
type TrackerStats struct {
	Flows     int    // entries in the index
	Events    uint64 // conntrack events applied
	Overflows uint64 // event socket overflows, each followed by a full re-read
	Polling   bool   // no events on this kernel: a dump per lookup
}

// Stats returns the tracker's counters.
func (t *Tracker) Stats() TrackerStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := TrackerStats{Events: t.eventCount.Load(), Overflows: t.overflows.Load(), Polling: t.polling}
	if t.idx != nil {
		s.Flows = t.idx.len()
	}
	return s
}

func (t *Tracker) init() {
	t.mu.Lock()
	if t.ready == nil {
		t.ready = make(chan struct{})
	}
	t.mu.Unlock()
}

// WaitReady waits until the first index is built (or the tracker fell back to
// polling).
func (t *Tracker) WaitReady(ctx context.Context) error {
	t.init()
	select {
	case <-t.ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (t *Tracker) markReady() {
	t.readyOnce.Do(func() { close(t.ready) })
}

// Run builds the index and keeps it until ctx ends.
func (t *Tracker) Run(ctx context.Context) error {
	t.init()
	for {
		err := t.follow(ctx)
		if ctx.Err() != nil {
			// Stopped: whatever follow saw last is the shutdown's doing.
			return nil //nolint:nilerr // a stop is not a failure
		}
		var noEvents errNoEvents
		if errors.As(err, &noEvents) {
			t.Log.Info("conntrack events are unavailable: every revocation reads the whole conntrack table instead", "reason", noEvents.err)
			t.mu.Lock()
			t.polling, t.idx = true, nil
			t.mu.Unlock()
			t.markReady()
			<-ctx.Done()
			return nil
		}
		if errors.Is(err, unix.ENOBUFS) {
			t.overflows.Add(1)
			t.Log.Info("conntrack events overflowed the socket buffer; reading the whole table again")
			continue
		}
		if err != nil {
			t.Log.Error(err, "following conntrack events; starting over")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

type errNoEvents struct{ err error }

func (e errNoEvents) Error() string { return "conntrack events unavailable: " + e.err.Error() }

// follow subscribes to events, dumps the table into a fresh index, and applies events
// until an error, a resync or ctx's end.
func (t *Tracker) follow(ctx context.Context) error {
	if t.NetNS == 0 {
		// With nf_conntrack_events=0 the kernel sends no event to anyone: an index
		// built from one dump would never see a new connection. (In another
		// namespace than the caller's the setting cannot be read from here; it is
		// on unless someone turned it off.)
		if b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_events"); err == nil && strings.TrimSpace(string(b)) == "0" {
			return errNoEvents{errors.New("net.netfilter.nf_conntrack_events is 0")}
		}
	}
	ev, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: t.NetNS})
	if err != nil {
		return errNoEvents{fmt.Errorf("opening netlink socket: %w", err)}
	}
	defer ev.Close()
	// The filter first, so that no event reaches the socket unfiltered.
	if err := ev.SetBPF(eventFilter()); err != nil {
		return errNoEvents{fmt.Errorf("attaching the conntrack event filter: %w", err)}
	}
	for _, g := range []netfilter.NetlinkGroup{netfilter.GroupCTUpdate, netfilter.GroupCTDestroy} {
		if err := ev.JoinGroup(uint32(g)); err != nil {
			return errNoEvents{fmt.Errorf("joining conntrack event group %d: %w", g, err)}
		}
	}
	size := t.ReadBuffer
	if size <= 0 {
		size = 16 << 20
	}
	setReadBufferForce(ev, size, t.Log)

	// Subscribed first, dumped second: an entry created during the dump is in the
	// events (and maybe in the dump too: the index keeps one), one destroyed during
	// it leaves as its event is applied after the dump. A periodic re-read works the
	// same way beside the live index, which events keep current meanwhile, so that
	// no entry is ever missing from the index in use.
	var mu sync.Mutex
	var live *flowIndex // the index in use (nil until the first dump is in)
	var building bool   // a dump is running: events are kept for the new index
	var buffered []event
	recvErr := make(chan error, 1)
	rc, err := ev.SyscallConn()
	if err != nil {
		return errNoEvents{fmt.Errorf("event socket: %w", err)}
	}
	go func() {
		// Read raw and parsed in place (parseEvent): two events per connection on a
		// busy node must cost next to nothing. One buffer, reused.
		buf := make([]byte, 64<<10)
		for {
			var n int
			var rerr error
			err := rc.Read(func(fd uintptr) bool {
				n, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
				return !errors.Is(rerr, unix.EAGAIN)
			})
			if err == nil {
				err = rerr
			}
			if err != nil {
				recvErr <- err
				return
			}
			mu.Lock()
			for b := buf[:n]; len(b) >= 16; {
				l := int(binary.NativeEndian.Uint32(b[0:4]))
				if l < 16 || l > len(b) {
					break
				}
				if e, ok := parseEvent(b[:l]); ok {
					t.eventCount.Add(1)
					if building {
						buffered = append(buffered, e)
					}
					if live != nil {
						t.apply(live, e)
					}
				}
				if l = (l + 3) &^ 3; l >= len(b) { // NLMSG_ALIGN
					break
				}
				b = b[l:]
			}
			mu.Unlock()
		}
	}()
	build := func() error {
		mu.Lock()
		building, buffered = true, nil
		mu.Unlock()
		flows, err := dumpAll(t.NetNS)
		mu.Lock()
		defer mu.Unlock()
		building = false
		if err != nil {
			buffered = nil
			return err
		}
		fresh := newFlowIndex(len(flows))
		for i := range flows {
			if e, ok := entryOf(&flows[i]); ok {
				fresh.put(e)
			}
		}
		for _, e := range buffered {
			t.apply(fresh, e)
		}
		buffered = nil
		live = fresh
		t.mu.Lock()
		t.idx = fresh
		t.mu.Unlock()
		t.Log.V(1).Info("conntrack index built", "flows", fresh.len())
		return nil
	}
	if err := build(); err != nil {
		return err
	}
	// A new subscription: entries may have come and gone unseen since the last one.
	t.generation.Add(1)
	t.markReady()

	var resync <-chan time.Time
	if t.ResyncPeriod > 0 {
		tk := time.NewTicker(t.ResyncPeriod)
		defer tk.Stop()
		resync = tk.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-recvErr:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("receiving conntrack events: %w", err)
		case <-resync:
			if err := build(); err != nil {
				t.Log.Error(err, "re-reading the conntrack table; the index in use stays")
			}
		}
	}
}

// apply records one event in idx.
func (t *Tracker) apply(idx *flowIndex, e event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e.destroy {
		idx.remove(e.key)
		return
	}
	idx.put(e.entry)
}

// setReadBufferForce sets the socket's receive buffer beyond net.core.rmem_max
// (SO_RCVBUFFORCE needs CAP_NET_ADMIN, which the agent has); without the capability
// the default buffer stays, and overflows are re-read.
func setReadBufferForce(c *netlink.Conn, size int, log logr.Logger) {
	rc, err := c.SyscallConn()
	if err == nil {
		var serr error
		err = rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size)
		})
		if err == nil {
			err = serr
		}
	}
	if err != nil {
		log.V(1).Info("could not enlarge the conntrack event buffer", "bytes", size, "error", err.Error())
	}
}

// dumpAll reads every entry.
func dumpAll(netns int) ([]ct.Flow, error) {
	c, err := ct.Dial(&netlink.Config{NetNS: netns})
	if err != nil {
		return nil, fmt.Errorf("opening conntrack netlink socket: %w", err)
	}
	defer c.Close()
	flows, err := c.Dump(nil)
	if err != nil {
		return nil, fmt.Errorf("dumping conntrack entries: %w", err)
	}
	return flows, nil
}

// Flows returns the entries whose first packet the scope holds.
func (t *Tracker) Flows(scope dataplane.FlowScope) ([]dataplane.Flow, error) {
	if scope.Empty() {
		return nil, nil
	}
	t.mu.Lock()
	polling, idx := t.polling, t.idx
	if idx != nil {
		out := idx.lookup(scope)
		t.mu.Unlock()
		return out, nil
	}
	t.mu.Unlock()
	if !polling {
		return nil, errors.New("the conntrack index is not built yet")
	}
	all, err := (&Table{NetNS: t.NetNS}).Flows()
	if err != nil {
		return nil, err
	}
	out := all[:0]
	for _, f := range all {
		if scope.Contains(f) {
			out = append(out, f)
		}
	}
	return out, nil
}

// SetMark is Table.SetMark, keeping the index's marks in step (gone entries leave
// it with their destroy events).
func (t *Tracker) SetMark(flows []dataplane.Flow, mask, value uint32) (int, error) {
	return (&Table{NetNS: t.NetNS}).setMark(flows, mask, value, t.setIndexedMark)
}

func (t *Tracker) setIndexedMark(f dataplane.Flow, mark uint32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.idx != nil {
		t.idx.setMark(keyOfFlow(f), mark)
	}
}

// flowKey identifies an entry: its original tuple and zone. Addresses are kept as 16
// bytes (IPv4 mapped, with v4 telling) so that the key holds no pointer for the
// garbage collector to follow.
type flowKey struct {
	src, dst     [16]byte
	sport, dport uint16
	zone         uint16
	proto        uint8
	v4           bool
}

// slot is one indexed entry.
type slot struct {
	entry
	// positions in the by-source and by-destination lists, for O(1) removal.
	srcPos, dstPos int32
}

// flowIndex holds the entries in a slab, found by key and by either address of the
// first packet. Not safe for concurrent use (the Tracker locks).
type flowIndex struct {
	slots []slot
	free  []int32
	byKey map[flowKey]int32
	bySrc map[[16]byte][]int32
	byDst map[[16]byte][]int32
}

func newFlowIndex(n int) *flowIndex {
	return &flowIndex{slots: make([]slot, 0, n), byKey: make(map[flowKey]int32, n),
		bySrc: map[[16]byte][]int32{}, byDst: map[[16]byte][]int32{}}
}

func (x *flowIndex) len() int { return len(x.byKey) }

func keyOf(f *ct.Flow) flowKey {
	return flowKey{src: f.TupleOrig.IP.SourceAddress.As16(), dst: f.TupleOrig.IP.DestinationAddress.As16(),
		sport: f.TupleOrig.Proto.SourcePort, dport: f.TupleOrig.Proto.DestinationPort, zone: f.Zone,
		proto: f.TupleOrig.Proto.Protocol, v4: f.TupleOrig.IP.SourceAddress.Is4()}
}

func keyOfFlow(f dataplane.Flow) flowKey {
	return flowKey{src: f.Orig.Src.As16(), dst: f.Orig.Dst.As16(), sport: f.Orig.SPort, dport: f.Orig.DPort,
		zone: f.Zone, proto: f.Proto, v4: f.Orig.Src.Is4()}
}

// tracked reports whether revocation can concern the entry: policy speaks of TCP,
// UDP and SCTP ports; other protocols (ICMP echo) are allowed or denied wholesale and
// their entries expire within seconds.
func tracked(f *ct.Flow) bool {
	switch f.TupleOrig.Proto.Protocol {
	case unix.IPPROTO_TCP, unix.IPPROTO_UDP, unix.IPPROTO_SCTP:
	default:
		return false
	}
	return f.TupleOrig.IP.SourceAddress.IsValid() && f.TupleReply.IP.SourceAddress.IsValid()
}

func (x *flowIndex) put(e entry) {
	k := e.key
	if i, ok := x.byKey[k]; ok {
		s := &x.slots[i]
		if s.replySrc == e.replySrc && s.replySPort == e.replySPort {
			s.mark = e.mark
			return
		}
		// The same original tuple with another reply: the entry indexed is gone
		// (its destroy event was missed) and this is a new one.
		x.remove(k)
	}
	s := slot{entry: e}
	var i int32
	if n := len(x.free); n > 0 {
		i = x.free[n-1]
		x.free = x.free[:n-1]
		x.slots[i] = s
	} else {
		i = int32(len(x.slots))
		x.slots = append(x.slots, s)
	}
	x.byKey[k] = i
	x.slots[i].srcPos = addTo(x.bySrc, k.src, i)
	x.slots[i].dstPos = addTo(x.byDst, e.replySrc, i)
}

func addTo(m map[[16]byte][]int32, a [16]byte, i int32) int32 {
	l := m[a]
	m[a] = append(l, i)
	return int32(len(l))
}

func (x *flowIndex) remove(k flowKey) {
	i, ok := x.byKey[k]
	if !ok {
		return
	}
	s := &x.slots[i]
	x.removeFrom(x.bySrc, s.key.src, s.srcPos, true)
	x.removeFrom(x.byDst, s.replySrc, s.dstPos, false)
	delete(x.byKey, k)
	*s = slot{}
	x.free = append(x.free, i)
}

// removeFrom takes position pos out of the list of a, moving the list's last entry
// into its place.
func (x *flowIndex) removeFrom(m map[[16]byte][]int32, a [16]byte, pos int32, src bool) {
	l := m[a]
	last := int32(len(l) - 1)
	if pos != last {
		moved := l[last]
		l[pos] = moved
		if src {
			x.slots[moved].srcPos = pos
		} else {
			x.slots[moved].dstPos = pos
		}
	}
	if last == 0 {
		delete(m, a)
		return
	}
	m[a] = l[:last]
}

func (x *flowIndex) setMark(k flowKey, mark uint32) {
	if i, ok := x.byKey[k]; ok {
		x.slots[i].mark = mark
	}
}

func addrOf(b [16]byte, v4 bool) netip.Addr {
	a := netip.AddrFrom16(b)
	if v4 {
		return a.Unmap()
	}
	return a
}

func (x *flowIndex) flow(i int32) dataplane.Flow {
	s := &x.slots[i]
	return dataplane.Flow{
		Proto: s.key.proto,
		Orig:  dataplane.Tuple{Src: addrOf(s.key.src, s.key.v4), Dst: addrOf(s.key.dst, s.key.v4), SPort: s.key.sport, DPort: s.key.dport},
		Reply: dataplane.Tuple{Src: addrOf(s.replySrc, s.key.v4), SPort: s.replySPort},
		Zone:  s.key.zone,
		Mark:  s.mark,
	}
}

// lookup returns the entries the scope holds: single addresses by one map lookup,
// ranges by a walk of the distinct addresses (not of the entries).
func (x *flowIndex) lookup(scope dataplane.FlowScope) []dataplane.Flow {
	var out []dataplane.Flow
	if scope.All {
		out = make([]dataplane.Flow, 0, len(x.byKey))
		for _, i := range x.byKey {
			out = append(out, x.flow(i))
		}
		return out
	}
	seen := map[int32]bool{}
	collect := func(m map[[16]byte][]int32, ranges []dataplane.AddrRange) {
		for _, r := range ranges {
			if r.Single() {
				for _, i := range m[r.From.As16()] {
					if !seen[i] {
						seen[i] = true
						out = append(out, x.flow(i))
					}
				}
				continue
			}
			for a, l := range m {
				if len(l) == 0 || !r.Contains(addrOf(a, x.slots[l[0]].key.v4)) {
					continue
				}
				for _, i := range l {
					if !seen[i] {
						seen[i] = true
						out = append(out, x.flow(i))
					}
				}
			}
		}
	}
	collect(x.bySrc, scope.Src)
	collect(x.byDst, scope.Dst)
	return out
}
