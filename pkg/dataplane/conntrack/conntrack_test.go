package conntrack

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/internal/testns"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
)

func TestListAndMark(t *testing.T) {
	ns := testns.New(t)
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
			testns.SkipUnlessRequired(t, "kernel test: cannot create conntrack entries here: %v", err)
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
	gone := dataplane.Flow{Proto: unix.IPPROTO_UDP, Orig: dataplane.Tuple{Src: netip.MustParseAddr("10.9.9.9"), Dst: netip.MustParseAddr("10.9.9.8"), SPort: 1, DPort: 2},
		Reply: dataplane.Tuple{Src: netip.MustParseAddr("10.9.9.8"), Dst: netip.MustParseAddr("10.9.9.9"), SPort: 2, DPort: 1}}
	if n, err := table.SetMark([]dataplane.Flow{gone}, 0x30000000, 0x20000000); err != nil || n != 0 {
		t.Errorf("SetMark on a missing entry: %d, %v", n, err)
	}
	// A TCP entry in TIME_WAIT is listed as closed.
	tw := mk("10.244.1.2", "10.244.1.3", 40002, 80, unix.IPPROTO_TCP)
	tw.ProtoInfo = ct.ProtoInfo{TCP: &ct.ProtoInfoTCP{State: 7}}
	if err := c.Create(tw); err != nil {
		t.Fatalf("creating a TIME_WAIT entry: %v", err)
	}
	flows, err = table.Flows()
	if err != nil {
		t.Fatal(err)
	}
	closed := 0
	for _, f := range flows {
		if f.Closed {
			closed++
			if f.Proto != unix.IPPROTO_TCP {
				t.Errorf("non-TCP flow listed as closed: %+v", f)
			}
		}
	}
	if closed != 1 {
		t.Errorf("%d closed flows, want 1: %+v", closed, flows)
	}
	if _, err := table.SetMark(flows, 0x30000000, 0); err == nil {
		t.Error("a zero mark value must be refused")
	}
	// Thousands at once, over several writes, some gone: each present one marked once.
	var many []dataplane.Flow
	for i := range 2500 {
		f := mk("10.245.0.1", fmt.Sprintf("10.246.%d.%d", i/200, i%200), uint16(1000+i), 53, unix.IPPROTO_UDP)
		if i%250 != 0 { // one in 250 never created
			if err := c.Create(f); err != nil {
				t.Fatal(err)
			}
		}
		many = append(many, dataplane.Flow{Proto: unix.IPPROTO_UDP, Orig: dataplane.Tuple{Src: f.TupleOrig.IP.SourceAddress,
			Dst: f.TupleOrig.IP.DestinationAddress, SPort: f.TupleOrig.Proto.SourcePort, DPort: 53}})
	}
	if n, err := table.SetMark(many, 0x30000000, 0x20000000); err != nil || n != 2490 {
		t.Fatalf("SetMark of 2500 (10 gone): %d, %v", n, err)
	}
	flows, err = table.Flows()
	if err != nil {
		t.Fatal(err)
	}
	marked := 0
	for _, f := range flows {
		if f.Orig.Src == netip.MustParseAddr("10.245.0.1") {
			if f.Mark != 0x20000005 {
				t.Fatalf("mark of %v: 0x%x, want 0x20000005", f.Orig, f.Mark)
			}
			marked++
		}
	}
	if marked != 2490 {
		t.Errorf("%d entries marked, want 2490", marked)
	}

}
