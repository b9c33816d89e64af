package conntrack

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/internal/testns"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
)

// TestFlowIndexMatchesNaive: after any sequence of puts and removes, every lookup of
// the index returns what a walk of all entries returns.
func TestFlowIndexMatchesNaive(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	addr := func() netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 0, byte(r.Intn(12))}) }
	idx := newFlowIndex(0)
	live := map[flowKey]ct.Flow{}
	var order []flowKey // live's keys, in a reproducible order
	for step := range 3000 {
		if r.Intn(3) > 0 {
			f := ct.NewFlow(unix.IPPROTO_UDP, ct.StatusSeenReply, addr(), addr(), uint16(r.Intn(20)), 53, 60, uint32(r.Intn(3)))
			// Now and then a DNAT: the reply comes from another address than the
			// original destination.
			if r.Intn(4) == 0 {
				f.TupleReply.IP.SourceAddress = addr()
			}
			e, _ := entryOf(&f)
			idx.put(e)
			if _, ok := live[keyOf(&f)]; !ok {
				order = append(order, keyOf(&f))
			}
			live[keyOf(&f)] = f
		} else {
			if len(order) == 0 {
				continue
			}
			j := r.Intn(len(order))
			k := order[j]
			order = slices.Delete(order, j, j+1)
			idx.remove(k)
			delete(live, k)
		}
		if step%50 != 0 {
			continue
		}
		scopes := []dataplane.FlowScope{
			{All: true},
			{Src: []dataplane.AddrRange{{From: addr(), To: addr()}}},
			{Dst: []dataplane.AddrRange{single(addr())}},
			{Src: []dataplane.AddrRange{single(addr())}, Dst: []dataplane.AddrRange{single(addr())}},
		}
		for _, sc := range scopes {
			var want []string
			for _, f := range live {
				df := dataplane.Flow{Proto: f.TupleOrig.Proto.Protocol,
					Orig:  dataplane.Tuple{Src: f.TupleOrig.IP.SourceAddress, Dst: f.TupleOrig.IP.DestinationAddress, SPort: f.TupleOrig.Proto.SourcePort, DPort: f.TupleOrig.Proto.DestinationPort},
					Reply: dataplane.Tuple{Src: f.TupleReply.IP.SourceAddress, SPort: f.TupleReply.Proto.SourcePort}, Mark: f.Mark}
				if sc.Contains(df) {
					want = append(want, fmt.Sprint(df))
				}
			}
			var got []string
			for _, f := range idx.lookup(sc) {
				got = append(got, fmt.Sprint(f))
			}
			slices.Sort(want)
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Fatalf("step %d scope %+v:\n got %v\nwant %v", step, sc, got, want)
			}
		}
		if idx.len() != len(live) {
			t.Fatalf("step %d: index holds %d, want %d", step, idx.len(), len(live))
		}
	}
}

func single(a netip.Addr) dataplane.AddrRange { return dataplane.AddrRange{From: a, To: a} }

// TestTracker: the index starts from the table, follows entries created and destroyed
// afterwards, and marks through the kernel.
func TestTracker(t *testing.T) {
	ns := testns.New(t)
	c, err := ct.Dial(&netlink.Config{NetNS: ns})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Flows that have seen their reply, as a dump finds established ones.
	mk := func(src, dst string, sport, dport uint16) ct.Flow {
		return ct.NewFlow(unix.IPPROTO_UDP, ct.StatusSeenReply|ct.StatusAssured|ct.StatusConfirmed, netip.MustParseAddr(src), netip.MustParseAddr(dst), sport, dport, 120, 0x5)
	}
	before := []ct.Flow{mk("10.244.1.2", "10.244.2.3", 40000, 53), mk("fd00::2", "fd00::3", 40001, 53)}
	// One that never saw a reply: revocation has nothing to do with it.
	before = append(before, ct.NewFlow(unix.IPPROTO_UDP, 0, netip.MustParseAddr("10.244.1.3"), netip.MustParseAddr("10.244.2.3"), 40009, 53, 120, 0))
	// A Service address resolved to a pod: the reply comes from the pod.
	dnat := mk("10.244.1.2", "10.96.0.10", 40002, 53)
	dnat.TupleReply.IP.SourceAddress = netip.MustParseAddr("10.244.2.9")
	before = append(before, dnat)
	for _, f := range before {
		if err := c.Create(f); err != nil {
			testns.SkipUnlessRequired(t, "kernel test: cannot create conntrack entries here: %v", err)
		}
	}
	tr := &Tracker{NetNS: ns, Log: testr.New(t)}
	ctx := runTracker(t, tr)
	count := func(sc dataplane.FlowScope) int {
		t.Helper()
		fs, err := tr.Flows(sc)
		if err != nil {
			t.Fatal(err)
		}
		return len(fs)
	}
	src := func(a string) dataplane.FlowScope {
		return dataplane.FlowScope{Src: []dataplane.AddrRange{single(netip.MustParseAddr(a))}}
	}
	dst := func(a string) dataplane.FlowScope {
		return dataplane.FlowScope{Dst: []dataplane.AddrRange{single(netip.MustParseAddr(a))}}
	}
	for _, c := range []struct {
		name string
		sc   dataplane.FlowScope
		want int
	}{
		{"all", dataplane.FlowScope{All: true}, 3},
		{"by source", src("10.244.1.2"), 2},
		{"by destination after DNAT", dst("10.244.2.9"), 1},
		{"not by the Service address", dst("10.96.0.10"), 0},
		{"IPv6", dst("fd00::3"), 1},
		{"range", dataplane.FlowScope{Dst: []dataplane.AddrRange{{From: netip.MustParseAddr("10.244.2.0"), To: netip.MustParseAddr("10.244.2.255")}}}, 2},
		{"nothing", dataplane.FlowScope{}, 0},
	} {
		if got := count(c.sc); got != c.want {
			t.Errorf("%s: %d flows, want %d", c.name, got, c.want)
		}
	}
	// Followed: a new entry appears, a deleted one leaves.
	await := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// An entry deleted under the index (created before anyone listened, it may get no
	// destroy event: the kernel's default nf_conntrack_events=2 attaches events only
	// to entries created while someone listens) is skipped by marking, not an error;
	// a re-read drops it (TestTrackerResync).
	if err := c.Delete(before[0]); err != nil {
		t.Fatal(err)
	}
	stale, err := tr.Flows(dst("10.244.2.3"))
	if err != nil {
		t.Fatal(err)
	}
	if n, err := tr.SetMark(stale, 0x30000000, 0x10000000); err != nil || n != 0 {
		t.Errorf("SetMark of %d deleted entries: %d marked, %v", len(stale), n, err)
	}
	// Marked through the kernel, other bits kept, the index in step.
	fs, err := tr.Flows(dst("10.244.2.9"))
	if err != nil || len(fs) != 1 {
		t.Fatalf("flows to 10.244.2.9: %v, %v", fs, err)
	}
	if n, err := tr.SetMark(fs, 0x30000000, 0x10000000); err != nil || n != 1 {
		t.Fatalf("SetMark: %d, %v", n, err)
	}
	got, err := c.Get(dnat)
	if err != nil {
		t.Fatal(err)
	}
	if got.Mark != 0x10000005 {
		t.Errorf("kernel mark 0x%x, want 0x10000005", got.Mark)
	}
	fs, _ = tr.Flows(dst("10.244.2.9"))
	if len(fs) != 1 || fs[0].Mark != 0x10000005 {
		t.Errorf("indexed after marking: %+v", fs)
	}
	// Real connections over the namespace's loopback (conntrack runs once a table
	// uses it): one answered appears with its reply and leaves with its entry; a SYN
	// nobody answers (dropped at input) is never indexed.
	if out, err := testns.Exec(t, ns, "ip", "link", "set", "lo", "up"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out, err := testns.Exec(t, ns, "nft", "add table inet t; add chain inet t in { type filter hook input priority 0; ct state new tcp dport 9998 drop; }"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	loop := netip.MustParseAddr("127.0.0.1")
	eventsBefore := tr.Stats().Events
	var answered *net.TCPConn
	var ln net.Listener
	defer func() {
		if ln != nil {
			ln.Close()
		}
	}()
	err = testns.In(ns, func() error {
		var err error
		// Kept open while the connection lives: closing it would reset the
		// connection waiting in its queue.
		if ln, err = (&net.ListenConfig{}).Listen(ctx, "tcp", "127.0.0.1:9999"); err != nil {
			return err
		}
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", "127.0.0.1:9999")
		if err != nil {
			return err
		}
		answered = c.(*net.TCPConn)
		// Unanswered: the SYN is dropped; give up at once.
		d := net.Dialer{Timeout: 50 * time.Millisecond}
		if c, err := d.DialContext(ctx, "tcp", "127.0.0.1:9998"); err == nil {
			c.Close()
			return errors.New("the connection to the dropped port went through")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	await("the answered connection", func() bool { return count(src(loop.String())) == 1 })
	if fs, _ := tr.Flows(src(loop.String())); len(fs) != 1 || fs[0].Orig.DPort != 9999 || fs[0].Reply.SPort != 9999 {
		t.Fatalf("indexed loopback flows: %+v, want the one to 9999", fs)
	}
	// Closed with a reset: over, it leaves the index at once (its entry lingers in
	// the kernel in CLOSE for 10 s, with nothing left to revoke).
	_ = answered.SetLinger(0)
	answered.Close()
	await("the closed connection to leave", func() bool { return count(src(loop.String())) == 0 })
	// Its entry destroyed afterwards, and the unanswered one's: nothing more reaches
	// the tracker.
	all, err := c.Dump(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range all {
		if f.TupleOrig.IP.SourceAddress == loop {
			if err := c.Delete(f); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A sentinel connection: once it is indexed, every event before it was read.
	err = testns.In(ns, func() error {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", "127.0.0.1:9999")
		if err == nil {
			answered = c.(*net.TCPConn)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer answered.Close()
	await("the sentinel connection", func() bool { return count(src(loop.String())) == 1 })
	// The first connection's life was two events the filter let through (its first
	// reply, its end), the sentinel's first reply a third: the established state, the
	// destructions, the unanswered SYN stayed in the kernel.
	if n := tr.Stats().Events - eventsBefore; n != 3 {
		t.Errorf("%d events reached the tracker, want 3", n)
	}
	if g := tr.Generation(); g != 1 {
		t.Errorf("generation %d, want 1 (built once)", g)
	}
}

// TestTrackerResync: the periodic re-read drops an entry whose destroy event never
// came, without a new generation (nothing was missed).
func TestTrackerResync(t *testing.T) {
	ns := testns.New(t)
	c, err := ct.Dial(&netlink.Config{NetNS: ns})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	f := ct.NewFlow(unix.IPPROTO_TCP, ct.StatusSeenReply|ct.StatusAssured|ct.StatusConfirmed, netip.MustParseAddr("10.244.1.2"), netip.MustParseAddr("10.244.2.3"), 40000, 80, 120, 0)
	if err := c.Create(f); err != nil {
		testns.SkipUnlessRequired(t, "kernel test: cannot create conntrack entries here: %v", err)
	}
	tr := &Tracker{NetNS: ns, ResyncPeriod: 20 * time.Millisecond, Log: testr.New(t)}
	runTracker(t, tr)
	if n := tr.Stats().Flows; n != 1 {
		t.Fatalf("index holds %d flows, want 1", n)
	}
	if err := c.Delete(f); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for tr.Stats().Flows != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the deleted entry is still indexed after many re-reads")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if g := tr.Generation(); g != 1 {
		t.Errorf("generation %d after re-reads, want 1", g)
	}
}

// runTracker runs tr until the test ends and waits until its index is built; ctx
// ends with the test.
func runTracker(t *testing.T, tr *Tracker) context.Context {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := tr.WaitReady(wctx); err != nil {
		t.Fatal(err)
	}
	if tr.Stats().Polling {
		testns.SkipUnlessRequired(t, "kernel test: this kernel has no conntrack events")
	}
	return ctx
}
