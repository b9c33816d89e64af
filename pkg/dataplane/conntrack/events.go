package conntrack

import (
	"encoding/binary"
	"fmt"
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
	ctaStatus            = 3
	ctaProtoinfo         = 4
	ctaProtoinfoTCP      = 1
	ctaProtoinfoTCPState = 1
	ipsSeenReply         = 1 << 1
	ipsAssured           = 1 << 2
	nlmsgHdrLen          = 16
	nfgenmsgLen          = 4
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
	const attrs = nlmsgHdrLen + nfgenmsgLen
	var p filterProgram
	// status loads CTA_STATUS (big-endian, as the kernel wrote it) masked with mask
	// into A, going to missing when the message has none.
	status := func(mask uint32, missing string) {
		p.add(bpf.LoadConstant{Dst: bpf.RegA, Val: attrs}, // the attribute of type X among those from offset A on
			bpf.LoadConstant{Dst: bpf.RegX, Val: ctaStatus},
			bpf.LoadExtension{Num: bpf.ExtNetlinkAttr})
		p.jump(bpf.JumpEqual, 0, missing, "")
		p.add(bpf.TAX{}, bpf.LoadIndirect{Off: 4, Size: 4}, bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: mask})
	}
	// closing goes to yes when the message's TCP state is TIME_WAIT or CLOSE, to no
	// otherwise (no TCP state at all included).
	closing := func(yes, no string) {
		p.add(bpf.LoadConstant{Dst: bpf.RegA, Val: attrs},
			bpf.LoadConstant{Dst: bpf.RegX, Val: ctaProtoinfo},
			bpf.LoadExtension{Num: bpf.ExtNetlinkAttr})
		p.jump(bpf.JumpEqual, 0, no, "")
		p.add(bpf.LoadConstant{Dst: bpf.RegX, Val: ctaProtoinfoTCP}, bpf.LoadExtension{Num: bpf.ExtNetlinkAttrNested})
		p.jump(bpf.JumpEqual, 0, no, "")
		p.add(bpf.LoadConstant{Dst: bpf.RegX, Val: ctaProtoinfoTCPState}, bpf.LoadExtension{Num: bpf.ExtNetlinkAttrNested})
		p.jump(bpf.JumpEqual, 0, no, "")
		p.add(bpf.TAX{}, bpf.LoadIndirect{Off: 4, Size: 1})
		p.jump(bpf.JumpEqual, tcpTimeWait, yes, "")
		p.jump(bpf.JumpEqual, tcpClose, yes, no)
	}
	p.add(bpf.LoadAbsolute{Off: typeByte, Size: 1})
	p.jump(bpf.JumpEqual, ipctnlMsgCtDelete, "destroy", "")
	// An update: the first reply (seen reply, not yet assured) passes; of the later
	// ones, only a TCP connection's end (TIME_WAIT or CLOSE), which takes it out.
	status(ipsSeenReply|ipsAssured, "drop")
	p.jump(bpf.JumpEqual, ipsSeenReply, "accept", "")
	p.jump(bpf.JumpEqual, ipsSeenReply|ipsAssured, "", "drop")
	closing("accept", "drop")
	// A destroy: of an entry that had seen a reply, and was not a TCP connection
	// already over (it left the index when it closed).
	p.label("destroy")
	status(ipsSeenReply, "accept")
	p.jump(bpf.JumpEqual, 0, "drop", "")
	closing("drop", "accept")
	p.label("accept")
	p.add(bpf.RetConstant{Val: 0xffffffff}) // the whole message
	p.label("drop")
	p.add(bpf.RetConstant{Val: 0})
	raw, err := p.assemble()
	if err != nil {
		// The program is a constant: failing to assemble it is a bug here.
		panic("conntrack event filter: " + err.Error())
	}
	return raw
}

// filterProgram assembles a classic BPF program with named jump targets ("" for the
// next instruction).
type filterProgram struct {
	ins    []bpf.Instruction
	labels map[string]int
	jumps  map[int][2]string // instruction index → true and false targets
}

func (p *filterProgram) add(ins ...bpf.Instruction) { p.ins = append(p.ins, ins...) }

func (p *filterProgram) label(name string) {
	if p.labels == nil {
		p.labels = map[string]int{}
	}
	p.labels[name] = len(p.ins)
}

func (p *filterProgram) jump(cond bpf.JumpTest, val uint32, ifTrue, ifFalse string) {
	if p.jumps == nil {
		p.jumps = map[int][2]string{}
	}
	p.jumps[len(p.ins)] = [2]string{ifTrue, ifFalse}
	p.ins = append(p.ins, bpf.JumpIf{Cond: cond, Val: val})
}

func (p *filterProgram) assemble() ([]bpf.RawInstruction, error) {
	skip := func(at int, target string) (uint8, error) {
		if target == "" {
			return 0, nil
		}
		to, ok := p.labels[target]
		if !ok || to <= at || to-at-1 > 255 {
			return 0, fmt.Errorf("jump from %d to %q (at %d) is out of reach", at, target, to)
		}
		return uint8(to - at - 1), nil
	}
	for at, t := range p.jumps {
		j := p.ins[at].(bpf.JumpIf)
		var err error
		if j.SkipTrue, err = skip(at, t[0]); err != nil {
			return nil, err
		}
		if j.SkipFalse, err = skip(at, t[1]); err != nil {
			return nil, err
		}
		p.ins[at] = j
	}
	return bpf.Assemble(p.ins)
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
// (see eventFilter: those that never saw a reply, TCP connections that are over, and
// protocols without ports).
func entryOf(f *ct.Flow) (entry, bool) {
	if !tracked(f) || !f.Status.SeenReply() || isClosed(f) {
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
// anything else than a new or destroyed TCP, UDP or SCTP entry with both tuples. An
// update that shows a TCP connection over (TIME_WAIT, CLOSE) is a removal: the
// connection has nothing left to revoke.
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
	var tcpState int = -1
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
		case ctaProtoinfo:
			tcpState, ok = protoinfoTCPState(v)
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
	if orig.proto == 6 && (tcpState == tcpTimeWait || tcpState == tcpClose) {
		// The connection is over: it leaves the index (its destroy event, later,
		// stays in the kernel).
		ev.destroy = true
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

// protoinfoTCPState reads CTA_PROTOINFO_TCP_STATE from a CTA_PROTOINFO attribute's
// value: -1 when it has none (not TCP); ok is false when it is malformed.
func protoinfoTCPState(b []byte) (state int, ok bool) {
	state = -1
	it := attrIter{b: b}
	for {
		t, v, more := it.next()
		if !more {
			return state, !it.bad
		}
		if t != ctaProtoinfoTCP {
			continue
		}
		in := attrIter{b: v}
		for {
			t, v, more := in.next()
			if !more {
				if in.bad {
					return state, false
				}
				break
			}
			if t == ctaProtoinfoTCPState && len(v) >= 1 {
				state = int(v[0])
			}
		}
	}
}
