package conntrack

import (
	"math/rand"
	"net/netip"
	"testing"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"

	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
)

// eventMessage encodes an event as the kernel sends it: both tuples, the mark, the
// zone.
func eventMessage(t testing.TB, destroy bool, proto uint8, orig, reply dataplane.Tuple, zone uint16, mark uint32) []byte {
	t.Helper()
	family, o, err := tupleAttr(ctaTupleOrig, proto, orig, zone)
	if err != nil {
		t.Fatal(err)
	}
	_, r, err := tupleAttr(ctaTupleReply, proto, reply, zone)
	if err != nil {
		t.Fatal(err)
	}
	attrs := []netfilter.Attribute{o, r, {Type: 3, Data: netfilter.Uint32Bytes(0x18e)}, {Type: ctaMark, Data: netfilter.Uint32Bytes(mark)}}
	if zone != 0 {
		attrs = append(attrs, netfilter.Attribute{Type: ctaZone, Data: netfilter.Uint16Bytes(zone)})
	}
	typ, flags := netfilter.MessageType(ipctnlMsgCtNew), netlink.Create|netlink.Excl
	if destroy {
		typ, flags = ipctnlMsgCtDelete, 0
	}
	m, err := netfilter.MarshalNetlink(netfilter.Header{SubsystemID: netfilter.NFSubsysCTNetlink, MessageType: typ, Family: family, Flags: flags}, attrs)
	if err != nil {
		t.Fatal(err)
	}
	m.Header.Length = uint32(16 + len(m.Data))
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestParseEventMatchesDecoder: the in-place parser reads what the general decoder
// reads, for random events of both families, protocols, zones and marks.
func TestParseEventMatchesDecoder(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	addr := func(v6 bool) netip.Addr {
		if v6 {
			var b [16]byte
			r.Read(b[:])
			return netip.AddrFrom16(b)
		}
		return netip.AddrFrom4([4]byte{10, byte(r.Intn(256)), byte(r.Intn(256)), byte(r.Intn(256))})
	}
	for i := range 2000 {
		v6 := r.Intn(3) == 0
		proto := []uint8{6, 17, 132, 1, 58}[r.Intn(5)]
		orig := dataplane.Tuple{Src: addr(v6), Dst: addr(v6), SPort: uint16(r.Intn(65536)), DPort: uint16(r.Intn(65536))}
		reply := dataplane.Tuple{Src: addr(v6), Dst: orig.Src, SPort: orig.DPort, DPort: orig.SPort}
		zone := uint16(0)
		if r.Intn(4) == 0 {
			zone = uint16(r.Intn(100))
		}
		destroy := r.Intn(2) == 0
		b := eventMessage(t, destroy, proto, orig, reply, zone, r.Uint32())
		got, ok := parseEvent(b)

		var m netlink.Message
		if err := m.UnmarshalBinary(b); err != nil {
			t.Fatal(err)
		}
		var want ct.Event
		if err := want.Unmarshal(m); err != nil {
			t.Fatalf("event %d: the decoder refuses it: %v", i, err)
		}
		if wantOK := proto == 6 || proto == 17 || proto == 132; ok != wantOK {
			t.Fatalf("event %d (proto %d): parsed %v, want %v", i, proto, ok, wantOK)
		}
		if !ok {
			continue
		}
		e, _ := entryOf(want.Flow)
		if got.destroy != (want.Type == ct.EventDestroy) || got.entry != e {
			t.Fatalf("event %d:\n got %+v\nwant %+v (%v)", i, got, e, want.Type)
		}
	}
}

// FuzzParseEvent: any bytes are refused or parsed, never a panic, and a parsed event
// is one the index can hold. (The general decoder is no oracle for garbage: it reads
// attribute types as one byte, so a type of 0x3002 counts for it as 2; the kernel's
// types are all below 0x100, and TestParseEventMatchesDecoder compares the two on
// what the kernel sends.)
func FuzzParseEvent(f *testing.F) {
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	f.Add(eventMessage(f, false, 6, dataplane.Tuple{Src: a, Dst: b, SPort: 1, DPort: 2}, dataplane.Tuple{Src: b, Dst: a, SPort: 2, DPort: 1}, 0, 5))
	f.Add(eventMessage(f, true, 17, dataplane.Tuple{Src: a, Dst: b, SPort: 1, DPort: 2}, dataplane.Tuple{Src: b, Dst: a, SPort: 2, DPort: 1}, 7, 0))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, ok := parseEvent(b)
		if !ok {
			return
		}
		if got.key.proto != 6 && got.key.proto != 17 && got.key.proto != 132 {
			t.Fatalf("parsed an event of protocol %d", got.key.proto)
		}
		idx := newFlowIndex(1)
		idx.put(got.entry)
		if idx.len() != 1 || len(idx.lookup(dataplane.FlowScope{All: true})) != 1 {
			t.Fatalf("the index does not hold %+v", got)
		}
	})
}

func BenchmarkParseEvent(b *testing.B) {
	x, y := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	msg := eventMessage(b, false, 6, dataplane.Tuple{Src: x, Dst: y, SPort: 1234, DPort: 80}, dataplane.Tuple{Src: y, Dst: x, SPort: 80, DPort: 1234}, 0, 0)
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := parseEvent(msg); !ok {
			b.Fatal("not parsed")
		}
	}
}
