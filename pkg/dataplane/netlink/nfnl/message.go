package nfnl

import (
	"fmt"

	nl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Netlink constants that golang.org/x/sys/unix does not define. Values from
// include/uapi/linux/netlink.h.
const (
	nlmsgerrAttrMsg  = 1 // NLMSGERR_ATTR_MSG
	nlmsgerrAttrOffs = 2 // NLMSGERR_ATTR_OFFS
	nlmFCapped       = 0x100
	nlmFAckTLVs      = 0x200
	nlmFDumpIntr     = 0x10

	nlmsgHdrLen = 16 // sizeof(struct nlmsghdr)
	nfgenLen    = 4  // sizeof(struct nfgenmsg)
)

// Span marks where, inside one message, the attribute of one sub-object (a set element,
// a rule expression) starts. Off counts from the start of the attributes when given to
// NewMessage, which turns it into an offset from the nlmsghdr, as the kernel's
// NLMSGERR_ATTR_OFFS counts.
type Span struct {
	Off  int
	What func() string // lazy: formatting every element of a big set costs
	// Of and Arg, when Of is set, stand for What: Of(Arg). One Of serves every span
	// of a message, so that a message of thousands of set elements does not allocate
	// a closure per element (most of the first transaction's allocations at 50k pods).
	Of  func(arg int) string
	Arg int
}

func (s Span) what() string {
	if s.Of != nil {
		return s.Of(s.Arg)
	}
	return s.What()
}

// Message is one nf_tables request of a batch.
type Message struct {
	Type  int // NFT_MSG_*
	Flags nl.HeaderFlags
	Data  []byte // nfgenmsg + attributes
	What  string // the object, for error messages
	spans []Span
}

// NewMessage builds a request of the nf_tables subsystem for the address family from
// attributes. what names the object in errors; spans name its sub-objects.
func NewMessage(family byte, typ int, flags nl.HeaderFlags, a *Attrs, what string, spans []Span) (Message, error) {
	if a.err != nil {
		return Message{}, fmt.Errorf("%s: %w", what, a.err)
	}
	data := make([]byte, 0, nfgenLen+len(a.b))
	data = append(data, family, unix.NFNETLINK_V0, 0, 0)
	data = append(data, a.b...)
	for i := range spans {
		spans[i].Off += nlmsgHdrLen + nfgenLen
	}
	return Message{Type: typ, Flags: flags, Data: data, What: what, spans: spans}, nil
}

// Header is the netlink message type: subsystem nf_tables, message m.Type.
func (m *Message) Header() nl.HeaderType {
	return nl.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | m.Type)
}

// Describe names the sub-object an extended ACK offset points into.
func (m *Message) Describe(off int) string {
	what := m.What
	for _, s := range m.spans {
		if s.Off <= off {
			what = m.What + ": " + s.what()
		}
	}
	return what
}

// batchHeader is the nfgenmsg of NFNL_MSG_BATCH_BEGIN/END: family AF_UNSPEC, and the
// subsystem the batch is for in res_id (big-endian, as nft writes it).
var batchHeader = []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES}

// Frame lays msgs out as the batch SendBatch sends: NFNL_MSG_BATCH_BEGIN, the messages,
// NFNL_MSG_BATCH_END, numbered from seq on. Only the last message of msgs asks for an
// ACK: the kernel reports every failing message anyway, and one ACK per message would
// need a receive buffer of about 1 KiB (skb truesize) per object of the batch.
func Frame(msgs []Message, seq uint32) []nl.Message {
	out := make([]nl.Message, 0, len(msgs)+2)
	out = append(out, nl.Message{
		Header: nl.Header{Type: nl.HeaderType(unix.NFNL_MSG_BATCH_BEGIN), Flags: nl.Request, Sequence: seq},
		Data:   batchHeader,
	})
	for i, m := range msgs {
		flags := nl.Request | m.Flags
		if i == len(msgs)-1 {
			flags |= nl.Acknowledge
		}
		seq++
		out = append(out, nl.Message{Header: nl.Header{Type: m.Header(), Flags: flags, Sequence: seq}, Data: m.Data})
	}
	seq++
	out = append(out, nl.Message{
		Header: nl.Header{Type: nl.HeaderType(unix.NFNL_MSG_BATCH_END), Flags: nl.Request, Sequence: seq},
		Data:   batchHeader,
	})
	return out
}

// RequestMessage is the message Conn.Request sends: a GET of the nf_tables subsystem for
// family, a dump when dump is set.
func RequestMessage(family byte, typ int, dump bool, a *Attrs, seq uint32) (nl.Message, error) {
	if a.err != nil {
		return nl.Message{}, a.err
	}
	flags := nl.Request
	if dump {
		flags |= nl.Dump
	}
	data := append([]byte{family, unix.NFNETLINK_V0, 0, 0}, a.b...)
	return nl.Message{
		Header: nl.Header{Type: nl.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | typ), Flags: flags, Sequence: seq},
		Data:   data,
	}, nil
}
