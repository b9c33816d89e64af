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
			Closed: f.ProtoInfo.TCP != nil && (f.ProtoInfo.TCP.State == tcpTimeWait || f.ProtoInfo.TCP.State == tcpClose),
		})
	}
	return out, nil
}

// SetMark replaces the bits of mask in each entry's mark with value, keeping the other
// bits (other software may use them). value must be non-zero: netlink updates cannot
// write a zero mark. An entry already gone (it timed out or was closed) is skipped. It
// returns how many entries it updated.
func (t *Table) SetMark(flows []dataplane.Flow, mask, value uint32) (int, error) {
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
		cf := ct.Flow{
			TupleOrig: ct.Tuple{
				IP:    ct.IPTuple{SourceAddress: f.Orig.Src, DestinationAddress: f.Orig.Dst},
				Proto: ct.ProtoTuple{Protocol: f.Proto, SourcePort: f.Orig.SPort, DestinationPort: f.Orig.DPort},
				Zone:  f.Zone,
			},
			// Both tuples: the library picks the IPv6 message family only when both are.
			TupleReply: ct.Tuple{
				IP:    ct.IPTuple{SourceAddress: f.Reply.Src, DestinationAddress: f.Reply.Dst},
				Proto: ct.ProtoTuple{Protocol: f.Proto, SourcePort: f.Reply.SPort, DestinationPort: f.Reply.DPort},
				Zone:  f.Zone,
			},
			Zone: f.Zone,
			Mark: f.Mark&^mask | value,
		}
		if err := c.Update(cf); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			errs = append(errs, fmt.Errorf("marking %s %s:%d -> %s:%d: %w", protoName(f.Proto), f.Orig.Src, f.Orig.SPort, f.Orig.Dst, f.Orig.DPort, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
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
