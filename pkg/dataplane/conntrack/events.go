package conntrack

import (
	"encoding/binary"
	"net/netip"

	ct "github.com/ti-mo/conntrack"
	"golang.org/x/net/bpf"
)

// Which events the index follows, and why.
//
// Only connections that have seen a reply can be established (ct state established),
// so only they can be revoked: a TCP connection whose SYN got no answer, or a UDP
// flow that only ever went one way, meets the policy with every packet anyway. The
// index therefore holds entries from the moment they see their first reply to their
// destruction:
//   - the update group (NFNLGRP_CONNTRACK_UPDATE), of which only the updates of an
//     entry that has seen a reply (IPS_SEEN_REPLY) and is not yet assured
//     (IPS_ASSURED) pass: for TCP the SYN-ACK (state SYN_RECV), for UDP the first
//     reply; the later updates of a connection (established, FIN, close: assured by
//     then) and of mark changes stay in the kernel;
//   - the destroy group, of which only entries that had seen a reply pass.
//
// The new group is not joined at all: the kernel builds no event for a connection's
// first packet, and a flood of SYNs (from a local pod, at anything) costs the agent
// nothing — its entries never see a reply, and their destruction is filtered out.
// The filter runs in the kernel (a classic BPF socket filter, reading CTA_STATUS with
// the netlink-attribute extension), so what it drops is never copied to the agent.
//
// Entries created through ctnetlink with a reply already seen (conntrackd's state
// sync after a failover, say) announce themselves only as new: the tracker's periodic
// re-read picks them up.
const (
	ctaStatus    = 3
	ipsSeenReply = 1 << 1
	ipsAssured   = 1 << 2
	nlmsgHdrLen  = 16
	nfgenmsgLen  = 4
)

// eventFilter is the socket filter described above.
func eventFilter() []bpf.RawInstruction {
	// The message type (IPCTNL_MSG_*, the low byte of nlmsg_type, which is in host
	// byte order) is byte 4 of the message on a little-endian host, byte 5 on a
	// big-endian one.
	typeByte := uint32(4)
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		typeByte = 5
	}
	prog := []bpf.Instruction{
		/* 0 */ bpf.LoadAbsolute{Off: typeByte, Size: 1},
		/* 1 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: ipctnlMsgCtDelete, SkipTrue: 8},
		// An update: CTA_STATUS must have SEEN_REPLY and not ASSURED.
		// The attribute of type X among those from offset A on.
		/* 2 */ bpf.LoadConstant{Dst: bpf.RegA, Val: nlmsgHdrLen + nfgenmsgLen},
		/* 3 */ bpf.LoadConstant{Dst: bpf.RegX, Val: ctaStatus},
		/* 4 */ bpf.LoadExtension{Num: bpf.ExtNetlinkAttr}, // A = offset of CTA_STATUS, 0 if none
		/* 5 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0, SkipTrue: 13},
		/* 6 */ bpf.TAX{},
		/* 7 */ bpf.LoadIndirect{Off: 4, Size: 4}, // the status, big-endian as the kernel wrote it
		/* 8 */ bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: ipsSeenReply | ipsAssured},
		/* 9 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: ipsSeenReply, SkipTrue: 8, SkipFalse: 9},
		// A destroy: pass when the entry had seen a reply (or says nothing of it).
		/* 10 */ bpf.LoadConstant{Dst: bpf.RegA, Val: nlmsgHdrLen + nfgenmsgLen},
		/* 11 */ bpf.LoadConstant{Dst: bpf.RegX, Val: ctaStatus},
		/* 12 */ bpf.LoadExtension{Num: bpf.ExtNetlinkAttr},
		/* 13 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0, SkipTrue: 4},
		/* 14 */ bpf.TAX{},
		/* 15 */ bpf.LoadIndirect{Off: 4, Size: 4},
		/* 16 */ bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: ipsSeenReply},
		/* 17 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0, SkipTrue: 1},
		/* 18 */ bpf.RetConstant{Val: 0xffffffff}, // the whole message
		/* 19 */ bpf.RetConstant{Val: 0},
	}
	raw, err := bpf.Assemble(prog)
	if err != nil {
		// The program is a constant: failing to assemble it is a bug here.
		panic("conntrack event filter: " + err.Error())
	}
	return raw
}

// entry is what the index keeps of a conntrack entry, from a dump or an event.
type entry struct {
	key flowKey
	// replySrc and replySPort: the first packet's destination after DNAT.
	replySrc   [16]byte
	replySPort uint16
	mark       uint32
}

// entryOf converts a dumped flow; ok is false for entries revocation never concerns
// (see eventFilter: those that never saw a reply, and protocols without ports).
func entryOf(f *ct.Flow) (entry, bool) {
	if !tracked(f) || !f.Status.SeenReply() {
		return entry{}, false
	}
	return entry{key: keyOf(f), replySrc: f.TupleReply.IP.SourceAddress.As16(), replySPort: f.TupleReply.Proto.SourcePort, mark: f.Mark}, true
}

// event is one conntrack event as the index needs it.
type event struct {
	destroy bool
	entry
}

// parseEvent reads one netlink message of the conntrack event groups. The index
// needs a handful of fields of every new and destroyed connection on the node, so
// they are read in place: a general decoder (ti-mo/conntrack's Event.Unmarshal) costs
// about 2 µs and 26 allocations per event, paid twice per connection. ok is false for
// anything else than a new or destroyed TCP, UDP or SCTP entry with both tuples.
func parseEvent(b []byte) (ev event, ok bool) {
	// struct nlmsghdr (16 bytes, host order), then struct nfgenmsg (4 bytes).
	if len(b) < 20 {
		return ev, false
	}
	typ := binary.NativeEndian.Uint16(b[4:6])
	if typ>>8 != nfnlSubsysCtnetlink {
		return ev, false
	}
	switch typ & 0xff {
	case ipctnlMsgCtNew:
	case ipctnlMsgCtDelete:
		ev.destroy = true
	default:
		return ev, false
	}
	var orig, reply tuple
	var zone uint16
	ok = true
	for it := (attrIter{b: b[20:]}); ok; {
		t, v, more := it.next()
		if !more {
			ok = !it.bad
			break
		}
		switch t {
		case ctaTupleOrig:
			ok = orig.parse(v)
		case ctaTupleReply:
			ok = reply.parse(v)
		case ctaMark:
			ok = len(v) >= 4
			if ok {
				ev.mark = binary.BigEndian.Uint32(v)
			}
		case ctaZone:
			ok = len(v) >= 2
			if ok {
				zone = binary.BigEndian.Uint16(v)
			}
		}
	}
	if !ok || !orig.src.IsValid() || !orig.dst.IsValid() || !reply.src.IsValid() {
		return ev, false
	}
	switch orig.proto {
	case 6, 17, 132: // TCP, UDP, SCTP
	default:
		return ev, false
	}
	if orig.zone != 0 {
		zone = orig.zone
	}
	ev.key = flowKey{src: orig.src.As16(), dst: orig.dst.As16(), sport: orig.sport, dport: orig.dport, zone: zone,
		proto: orig.proto, v4: orig.src.Is4()}
	ev.replySrc, ev.replySPort = reply.src.As16(), reply.sport
	return ev, true
}

// tuple is one direction's CTA_TUPLE_* attribute.
type tuple struct {
	src, dst     netip.Addr
	proto        uint8
	sport, dport uint16
	zone         uint16
}

func (tp *tuple) parse(b []byte) bool {
	it := attrIter{b: b}
	for {
		t, v, more := it.next()
		if !more {
			return !it.bad
		}
		switch t {
		case ctaTupleIP:
			ip := attrIter{b: v}
			for {
				t, v, more := ip.next()
				if !more {
					break
				}
				var ok bool
				switch t {
				case ctaIPv4Src, ctaIPv6Src:
					tp.src, ok = netip.AddrFromSlice(v)
				case ctaIPv4Dst, ctaIPv6Dst:
					tp.dst, ok = netip.AddrFromSlice(v)
				default:
					ok = true
				}
				if !ok {
					return false
				}
			}
			if ip.bad {
				return false
			}
		case ctaTupleProto:
			pr := attrIter{b: v}
			for {
				t, v, more := pr.next()
				if !more {
					break
				}
				switch {
				case t == ctaProtoNum && len(v) >= 1:
					tp.proto = v[0]
				case t == ctaProtoSPort && len(v) >= 2:
					tp.sport = binary.BigEndian.Uint16(v)
				case t == ctaProtoDPort && len(v) >= 2:
					tp.dport = binary.BigEndian.Uint16(v)
				}
			}
			if pr.bad {
				return false
			}
		case ctaTupleZone:
			if len(v) >= 2 {
				tp.zone = binary.BigEndian.Uint16(v)
			}
		}
	}
}

// attrIter walks a list of netlink attributes; bad is set when it is malformed.
type attrIter struct {
	b   []byte
	bad bool
}

// next returns the type (flags masked off) and value of the next attribute; more is
// false at the end of the list or at a malformed attribute.
func (it *attrIter) next() (typ uint16, v []byte, more bool) {
	if len(it.b) < 4 {
		return 0, nil, false
	}
	l := int(binary.NativeEndian.Uint16(it.b[0:2]))
	typ = binary.NativeEndian.Uint16(it.b[2:4]) & 0x3fff // NLA_F_NESTED, NLA_F_NET_BYTEORDER
	if l < 4 || l > len(it.b) {
		it.bad = true
		return 0, nil, false
	}
	v = it.b[4:l]
	if l = (l + 3) &^ 3; l >= len(it.b) { // NLA_ALIGN
		it.b = nil
	} else {
		it.b = it.b[l:]
	}
	return typ, v, true
}
