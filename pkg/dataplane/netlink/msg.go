package netlink

import (
	"encoding/binary"
	"fmt"

	nl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Netlink constants that golang.org/x/sys/unix (or google/nftables) does not define, or
// defines under a misleading name. Values from include/uapi/linux/netfilter/nf_tables.h.
const (
	nftaChainFlags    = 10 // NFTA_CHAIN_FLAGS
	nftaChainUserdata = 12 // NFTA_CHAIN_USERDATA (kernel >= 5.10)
	nftaSetDescConcat = 2  // NFTA_SET_DESC_CONCAT
	nftaSetFieldLen   = 1  // NFTA_SET_FIELD_LEN
	nftaSetElemKeyEnd = 10 // NFTA_SET_ELEM_KEY_END
	nftaRuleUserdata  = unix.NFTA_RULE_USERDATA
	nftSetConcat      = 0x80 // NFT_SET_CONCAT
	nftDataVerdict    = 0xffffff00
	nftChainBinding   = 0x4 // NFT_CHAIN_BINDING
	nftaHookDevs      = 4   // NFTA_HOOK_DEVS
	nfAccept          = 1   // NF_ACCEPT

	nlmsgerrAttrMsg  = 1 // NLMSGERR_ATTR_MSG
	nlmsgerrAttrOffs = 2 // NLMSGERR_ATTR_OFFS
	nlmFCapped       = 0x100
	nlmFAckTLVs      = 0x200
	nlmFDumpIntr     = 0x10

	nlmsgHdrLen = 16 // sizeof(struct nlmsghdr)
	nfgenLen    = 4  // sizeof(struct nfgenmsg)
)

// attrs is a netlink attribute writer that knows the offset of everything it writes, so
// that an extended ACK pointing at an attribute can be mapped back to the object that
// failed (the kernel's error codes carry no context of their own).
type attrs struct {
	b   []byte
	err error
}

func (a *attrs) put(typ uint16, data []byte) {
	l := 4 + len(data)
	if l > 0xffff {
		a.setErr(fmt.Errorf("netlink attribute %d too long (%d bytes)", typ, l))
	}
	a.b = binary.NativeEndian.AppendUint16(a.b, uint16(l))
	a.b = binary.NativeEndian.AppendUint16(a.b, typ)
	a.b = append(a.b, data...)
	a.pad()
}

func (a *attrs) pad() {
	for len(a.b)%4 != 0 {
		a.b = append(a.b, 0)
	}
}

func (a *attrs) str(typ uint16, s string) { a.put(typ, append([]byte(s), 0)) }

func (a *attrs) u32(typ uint16, v uint32) { a.put(typ, binary.BigEndian.AppendUint32(nil, v)) }

func (a *attrs) u64(typ uint16, v uint64) { a.put(typ, binary.BigEndian.AppendUint64(nil, v)) }

// begin opens a nested attribute; end closes it. They return/take its offset in a.b.
func (a *attrs) begin(typ uint16) int {
	off := len(a.b)
	a.b = binary.NativeEndian.AppendUint16(a.b, 0)
	a.b = binary.NativeEndian.AppendUint16(a.b, typ|unix.NLA_F_NESTED)
	return off
}

func (a *attrs) end(off int) {
	l := len(a.b) - off
	if l > 0xffff {
		// The attribute length is 16 bits: this is why element lists are chunked.
		a.setErr(fmt.Errorf("nested netlink attribute too long (%d bytes)", l))
	}
	binary.NativeEndian.PutUint16(a.b[off:], uint16(l))
}

func (a *attrs) setErr(err error) {
	if a.err == nil {
		a.err = err
	}
}

// nested writes a nested attribute holding the attributes written by f.
func (a *attrs) nested(typ uint16, f func()) {
	off := a.begin(typ)
	f()
	a.end(off)
}

// span marks where, inside one message, the attribute of one sub-object (a set element,
// a rule expression) starts; the offset counts from the start of the nlmsghdr, as the
// kernel's NLMSGERR_ATTR_OFFS does.
type span struct {
	off  int
	what func() string // lazy: formatting every element of a big set costs
}

// message is one nf_tables request of a batch.
type message struct {
	typ   int // NFT_MSG_*
	flags nl.HeaderFlags
	data  []byte // nfgenmsg + attributes
	what  string // the object, for error messages
	spans []span
}

// newMessage builds a request for the inet family from attributes. The offsets of a are
// relative to the attribute area; spans are turned into offsets from the nlmsghdr.
func newMessage(typ int, flags nl.HeaderFlags, a *attrs, what string, spans []span) (message, error) {
	if a.err != nil {
		return message{}, fmt.Errorf("%s: %w", what, a.err)
	}
	data := make([]byte, 0, nfgenLen+len(a.b))
	data = append(data, unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0)
	data = append(data, a.b...)
	for i := range spans {
		spans[i].off += nlmsgHdrLen + nfgenLen
	}
	return message{typ: typ, flags: flags, data: data, what: what, spans: spans}, nil
}

func (m *message) header() nl.HeaderType {
	return nl.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | m.typ)
}

// size is the message's length on the wire.
func (m *message) size() int { return nlmsgHdrLen + len(m.data) }

// describe names the sub-object an extended ACK offset points into.
func (m *message) describe(off int) string {
	what := m.what
	for _, s := range m.spans {
		if s.off <= off {
			what = m.what + ": " + s.what()
		}
	}
	return what
}
