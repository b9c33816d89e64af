// Package conntrack lists the node's connection-tracking entries and sets their marks
// over netlink (github.com/ti-mo/conntrack); it is how revoked flows are stopped.
package conntrack

import (
	"errors"
	"fmt"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
)

// TCP conntrack states (enum tcp_conntrack in the kernel) of connections that are over.
const (
	tcpTimeWait = 7
	tcpClose    = 8
)

// Table is the conntrack table of the caller's network namespace (or NetNS, a
// namespace file descriptor, when non-zero).
type Table struct {
	NetNS int
}

// Flows lists every entry.
func (t *Table) Flows() ([]dataplane.Flow, error) {
	c, err := ct.Dial(&netlink.Config{NetNS: t.NetNS})
	if err != nil {
		return nil, fmt.Errorf("opening conntrack netlink socket: %w", err)
	}
	defer c.Close()
	flows, err := c.Dump(nil)
	if err != nil {
		return nil, fmt.Errorf("dumping conntrack entries: %w", err)
	}
	out := make([]dataplane.Flow, 0, len(flows))
	for _, f := range flows {
		out = append(out, dataplane.Flow{
			Proto: f.TupleOrig.Proto.Protocol,
			Orig: dataplane.Tuple{Src: f.TupleOrig.IP.SourceAddress, Dst: f.TupleOrig.IP.DestinationAddress,
				SPort: f.TupleOrig.Proto.SourcePort, DPort: f.TupleOrig.Proto.DestinationPort},
			Reply: dataplane.Tuple{Src: f.TupleReply.IP.SourceAddress, Dst: f.TupleReply.IP.DestinationAddress,
				SPort: f.TupleReply.Proto.SourcePort, DPort: f.TupleReply.Proto.DestinationPort},
			Zone:   f.Zone,
			Mark:   f.Mark,
			Closed: isClosed(&f),
		})
	}
	return out, nil
}

// SetMark replaces the bits of mask in each entry's mark with value, keeping the
// other bits as the kernel holds them now (a listing may be old: other software may
// have changed its own bits since). Entries the kernel no longer has, or whose TCP
// connection is over, are skipped. It returns how many entries it updated.
func (t *Table) SetMark(flows []dataplane.Flow, mask, value uint32) (int, error) {
	return t.setMark(flows, mask, value, nil, nil)
}

// setMark is SetMark, telling gone(f) about each entry the kernel no longer has and
// set(f, mark) about each one it marked.
func (t *Table) setMark(flows []dataplane.Flow, mask, value uint32, gone func(dataplane.Flow), set func(dataplane.Flow, uint32)) (int, error) {
	if len(flows) == 0 {
		return 0, nil
	}
	if value == 0 || value&^mask != 0 {
		return 0, fmt.Errorf("mark value 0x%x must be non-zero and within mask 0x%x", value, mask)
	}
	c, err := ct.Dial(&netlink.Config{NetNS: t.NetNS})
	if err != nil {
		return 0, fmt.Errorf("opening conntrack netlink socket: %w", err)
	}
	defer c.Close()
	n := 0
	var errs []error
	for _, f := range flows {
		// The entry as the kernel holds it now: its mark's other bits, its TCP state.
		cur, err := c.Get(ct.Flow{TupleOrig: origTuple(f), Zone: f.Zone})
		if err == nil && isClosed(&cur) {
			continue
		}
		mark := cur.Mark&^mask | value
		if err == nil {
			// Tuples, zone and mark only: an update carrying the status or the
			// protocol state could be refused.
			err = c.Update(ct.Flow{TupleOrig: cur.TupleOrig, TupleReply: cur.TupleReply, Zone: cur.Zone, Mark: mark})
		}
		if errors.Is(err, unix.ENOENT) {
			if gone != nil {
				gone(f)
			}
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("marking %s %s:%d -> %s:%d: %w", protoName(f.Proto), f.Orig.Src, f.Orig.SPort, f.Orig.Dst, f.Orig.DPort, err))
			continue
		}
		if set != nil {
			set(f, mark)
		}
		n++
	}
	return n, errors.Join(errs...)
}

func origTuple(f dataplane.Flow) ct.Tuple {
	return ct.Tuple{
		IP:    ct.IPTuple{SourceAddress: f.Orig.Src, DestinationAddress: f.Orig.Dst},
		Proto: ct.ProtoTuple{Protocol: f.Proto, SourcePort: f.Orig.SPort, DestinationPort: f.Orig.DPort},
		Zone:  f.Zone,
	}
}

func isClosed(f *ct.Flow) bool {
	return f.ProtoInfo.TCP != nil && (f.ProtoInfo.TCP.State == tcpTimeWait || f.ProtoInfo.TCP.State == tcpClose)
}

func protoName(p uint8) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	case unix.IPPROTO_SCTP:
		return "sctp"
	}
	return fmt.Sprintf("proto-%d", p)
}
