package nfnl

import (
	"encoding/binary"
	"fmt"
	"syscall"

	nl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Request sends one non-batched request (a GET or a dump) and collects the replies of
// its sequence number. A dump ends with NLMSG_DONE; a plain GET with its single reply.
// Interrupted reports that a dump saw the ruleset change (NLM_F_DUMP_INTR).
func (c *Conn) Request(family byte, typ int, dump bool, a *Attrs) (replies []syscall.NetlinkMessage, interrupted bool, err error) {
	seq := c.nextSeq()
	msg, err := RequestMessage(family, typ, dump, a, seq)
	if err != nil {
		return nil, false, err
	}
	if _, err := c.nl.SendMessages([]nl.Message{msg}); err != nil {
		return nil, false, fmt.Errorf("send request: %w", err)
	}
	for {
		msgs, err := c.recv(false)
		if err != nil {
			return nil, false, err
		}
		for _, m := range msgs {
			if m.Header.Seq != seq {
				continue
			}
			if m.Header.Flags&nlmFDumpIntr != 0 {
				interrupted = true
			}
			switch m.Header.Type {
			case unix.NLMSG_ERROR:
				if e := parseError(m); e.errno != 0 {
					return nil, false, e.errno
				}
				return replies, interrupted, nil
			case unix.NLMSG_DONE:
				if len(m.Data) >= 4 {
					if errno := -int32(binary.NativeEndian.Uint32(m.Data[:4])); errno != 0 {
						return nil, false, syscall.Errno(errno)
					}
				}
				return replies, interrupted, nil
			default:
				replies = append(replies, m)
				if !dump {
					return replies, interrupted, nil
				}
			}
		}
	}
}
