package conntrack

import (
	"encoding/binary"
	"net/netip"

	ct "github.com/ti-mo/conntrack"
)

// entry is what the index keeps of a conntrack entry, from a dump or an event.
type entry struct {
	key flowKey
	// replySrc and replySPort: the first packet's destination after DNAT.
	replySrc   [16]byte
	replySPort uint16
	mark       uint32
}

// entryOf converts a dumped flow; ok is false for entries revocation never concerns.
func entryOf(f *ct.Flow) (entry, bool) {
	if !tracked(f) {
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
