// Package conntrack lists the node's connection-tracking entries and sets their marks
// over netlink (github.com/ti-mo/conntrack); it is how revoked flows are stopped.
package conntrack

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/go-logr/logr"
	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
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
// other bits (other software may use them) as the kernel holds them at that moment:
// the kernel applies the mask itself (CTA_MARK_MASK), so no entry is read first.
// Entries the kernel no longer has (they timed out or were closed) are skipped. It
// returns how many entries it updated.
func (t *Table) SetMark(flows []dataplane.Flow, mask, value uint32) (int, error) {
	return t.setMark(flows, mask, value, nil)
}

// markBatch is how many updates go to the kernel in one write, within the socket's
// send buffer (about 200 KiB; an update takes about 100 bytes). The kernel works
// through a write before the write returns, answering only the updates that fail.
const markBatch = 1024

// setMark is SetMark, telling set(f, mark) about each entry it marked (mark: f.Mark
// with the new bits). Updates go without acknowledgements, so that marking thousands
// of entries costs the kernel's work and a few writes, not a round trip each; the
// kernel answers failures only, which are read after each write: an entry gone since
// it was listed (ENOENT) is skipped, any other failure reported. A failure does not
// say which entry it was, so set hears of every entry of a batch with no other
// failure than gone ones.
func (t *Table) setMark(flows []dataplane.Flow, mask, value uint32, set func(dataplane.Flow, uint32)) (int, error) {
	if len(flows) == 0 {
		return 0, nil
	}
	if value == 0 || value&^mask != 0 {
		return 0, fmt.Errorf("mark value 0x%x must be non-zero and within mask 0x%x", value, mask)
	}
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: t.NetNS})
	if err != nil {
		return 0, fmt.Errorf("opening conntrack netlink socket: %w", err)
	}
	defer c.Close()
	// Room for a whole batch of failures (about 700 bytes each in the buffer).
	setReadBufferForce(c, markBatch*1024, logr.Discard())
	n := 0
	var errs []error
	for start := 0; start < len(flows); start += markBatch {
		chunk := flows[start:min(start+markBatch, len(flows))]
		msgs := make([]netlink.Message, len(chunk))
		for i, f := range chunk {
			if msgs[i], err = markMessage(f, mask, value); err != nil {
				return n, err
			}
		}
		if _, err := c.SendMessages(msgs); err != nil {
			return n, fmt.Errorf("sending conntrack mark updates: %w", err)
		}
		gone, failed, err := drainFailures(c)
		if err != nil {
			return n, errors.Join(append(errs, err)...)
		}
		errs = append(errs, failed...)
		n += len(chunk) - gone - len(failed)
		if set != nil && len(failed) == 0 {
			for _, f := range chunk {
				set(f, f.Mark&^mask|value)
			}
		}
	}
	return n, errors.Join(errs...)
}

// drainFailures reads the failures the kernel queued for the last write: it worked
// through the write before returning, so they are all there; a short deadline ends the
// reading once none is left.
func drainFailures(c *netlink.Conn) (gone int, failed []error, err error) {
	for {
		if err := c.SetReadDeadline(time.Now().Add(time.Millisecond)); err != nil {
			return gone, failed, fmt.Errorf("reading the answers to conntrack mark updates: %w", err)
		}
		_, err := c.Receive()
		switch {
		case err == nil:
			// An acknowledgement nobody asked for: nothing to count.
		case errors.Is(err, os.ErrDeadlineExceeded):
			return gone, failed, nil
		case errors.Is(err, unix.ENOENT):
			gone++
		default:
			var op *netlink.OpError
			if !errors.As(err, &op) || op.Op != "receive" {
				return gone, failed, fmt.Errorf("reading the answers to conntrack mark updates: %w", err)
			}
			failed = append(failed, fmt.Errorf("marking a conntrack entry: %w", err))
		}
	}
}

// Attribute numbers of ctnetlink (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
const (
	ctaTupleOrig  = 1
	ctaTupleReply = 2
	ctaMark       = 8
	ctaZone       = 18
	ctaMarkMask   = 21
	ctaTupleIP    = 1
	ctaTupleProto = 2
	ctaTupleZone  = 3
	ctaIPv4Src    = 1
	ctaIPv4Dst    = 2
	ctaIPv6Src    = 3
	ctaIPv6Dst    = 4
	ctaProtoNum   = 1
	ctaProtoSPort = 2
	ctaProtoDPort = 3
	// ipctnlMsgCtNew is IPCTNL_MSG_CT_NEW: without NLM_F_CREATE it updates an
	// existing entry; as an event, a new entry. ipctnlMsgCtDelete is the
	// destroy event.
	ipctnlMsgCtNew    = 0
	ipctnlMsgCtDelete = 2
	// nfnlSubsysCtnetlink is NFNL_SUBSYS_CTNETLINK, the high byte of the message type.
	nfnlSubsysCtnetlink = 1
)

// markMessage is the update of f's mark: its original tuple (with the zone, which
// the entry's identity includes), the value and the mask the kernel applies
// ((mark & ^mask) ^ value).
func markMessage(f dataplane.Flow, mask, value uint32) (netlink.Message, error) {
	family, tuple, err := tupleAttr(ctaTupleOrig, f.Proto, f.Orig, f.Zone)
	if err != nil {
		return netlink.Message{}, err
	}
	attrs := []netfilter.Attribute{tuple,
		{Type: ctaMark, Data: netfilter.Uint32Bytes(value)},
		{Type: ctaMarkMask, Data: netfilter.Uint32Bytes(mask)},
	}
	if f.Zone != 0 {
		attrs = append(attrs, netfilter.Attribute{Type: ctaZone, Data: netfilter.Uint16Bytes(f.Zone)})
	}
	m, err := netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysCTNetlink,
		MessageType: ipctnlMsgCtNew,
		Family:      family,
		Flags:       netlink.Request,
	}, attrs)
	if err != nil {
		return netlink.Message{}, fmt.Errorf("encoding the mark update of %s -> %s: %w", f.Orig.Src, f.Orig.Dst, err)
	}
	return m, nil
}

// tupleAttr encodes one direction's tuple as attribute typ (CTA_TUPLE_ORIG or
// CTA_TUPLE_REPLY), with its family.
func tupleAttr(typ uint16, proto uint8, t dataplane.Tuple, zone uint16) (netfilter.ProtoFamily, netfilter.Attribute, error) {
	family, srcType, dstType := netfilter.ProtoIPv4, uint16(ctaIPv4Src), uint16(ctaIPv4Dst)
	switch {
	case t.Src.Is4() && t.Dst.Is4():
	case t.Src.Is6() && t.Dst.Is6():
		family, srcType, dstType = netfilter.ProtoIPv6, ctaIPv6Src, ctaIPv6Dst
	default:
		return 0, netfilter.Attribute{}, fmt.Errorf("tuple %s -> %s: addresses of different families", t.Src, t.Dst)
	}
	a := netfilter.Attribute{Type: typ, Nested: true, Children: []netfilter.Attribute{
		{Type: ctaTupleIP, Nested: true, Children: []netfilter.Attribute{
			{Type: srcType, Data: t.Src.AsSlice()},
			{Type: dstType, Data: t.Dst.AsSlice()},
		}},
		{Type: ctaTupleProto, Nested: true, Children: []netfilter.Attribute{
			{Type: ctaProtoNum, Data: []byte{proto}},
			{Type: ctaProtoSPort, Data: netfilter.Uint16Bytes(t.SPort)},
			{Type: ctaProtoDPort, Data: netfilter.Uint16Bytes(t.DPort)},
		}},
	}}
	if zone != 0 {
		a.Children = append(a.Children, netfilter.Attribute{Type: ctaTupleZone, Data: netfilter.Uint16Bytes(zone)})
	}
	return family, a, nil
}

func isClosed(f *ct.Flow) bool {
	return f.ProtoInfo.TCP != nil && (f.ProtoInfo.TCP.State == tcpTimeWait || f.ProtoInfo.TCP.State == tcpClose)
}

