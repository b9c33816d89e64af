package conntrack

import (
	"net/netip"
	"os"
	"runtime"
	"testing"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/pkg/revoke"
)

// newNetNS returns a descriptor of a fresh network namespace; the thread that created
// it is discarded so no goroutine runs inside it.
func newNetNS(t *testing.T) int {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("kernel test: needs root (network namespace, conntrack netlink)")
	}
	ch := make(chan [2]int)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ch <- [2]int{-1, int(err.(unix.Errno))}
			return
		}
		fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- [2]int{-1, int(err.(unix.Errno))}
			return
		}
		ch <- [2]int{fd, 0}
	}()
	r := <-ch
	if r[0] < 0 {
		t.Skipf("kernel test: cannot create a network namespace: %v", unix.Errno(r[1]))
	}
	t.Cleanup(func() { unix.Close(r[0]) })
	return r[0]
}

func TestListAndMark(t *testing.T) {
	ns := newNetNS(t)
	c, err := ct.Dial(&netlink.Config{NetNS: ns})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mk := func(src, dst string, sport, dport uint16, proto uint8) ct.Flow {
		return ct.NewFlow(proto, 0, netip.MustParseAddr(src), netip.MustParseAddr(dst), sport, dport, 120, 0x5)
	}
	for _, f := range []ct.Flow{
		mk("10.244.1.2", "10.244.1.3", 40000, 80, unix.IPPROTO_UDP),
		mk("fd00::2", "fd00::3", 40001, 81, unix.IPPROTO_UDP),
	} {
		if err := c.Create(f); err != nil {
			t.Skipf("kernel test: cannot create conntrack entries here: %v", err)
		}
	}
	table := &Table{NetNS: ns}
	flows, err := table.Flows()
	if err != nil {
		t.Fatal(err)
	}
	if len(flows) != 2 {
		t.Fatalf("listed %d flows, want 2: %+v", len(flows), flows)
	}
	for _, f := range flows {
		if f.Mark != 0x5 || f.Proto != unix.IPPROTO_UDP || f.Reply.Src != f.Orig.Dst {
			t.Errorf("unexpected flow %+v", f)
		}
	}
	n, err := table.SetMark(flows, 0x30000000, 0x10000000)
	if err != nil || n != 2 {
		t.Fatalf("SetMark: %d, %v", n, err)
	}
	flows, err = table.Flows()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range flows {
		if f.Mark != 0x10000005 {
			t.Errorf("mark %s = 0x%x, want 0x10000005 (other bits kept)", f.Orig.Src, f.Mark)
		}
	}
	// A vanished entry is skipped, not an error.
	gone := revoke.Flow{Proto: unix.IPPROTO_UDP, Orig: revoke.Tuple{Src: netip.MustParseAddr("10.9.9.9"), Dst: netip.MustParseAddr("10.9.9.8"), SPort: 1, DPort: 2},
		Reply: revoke.Tuple{Src: netip.MustParseAddr("10.9.9.8"), Dst: netip.MustParseAddr("10.9.9.9"), SPort: 2, DPort: 1}}
	if n, err := table.SetMark([]revoke.Flow{gone}, 0x30000000, 0x20000000); err != nil || n != 0 {
		t.Errorf("SetMark on a missing entry: %d, %v", n, err)
	}
	if _, err := table.SetMark(flows, 0x30000000, 0); err == nil {
		t.Error("a zero mark value must be refused")
	}

}
