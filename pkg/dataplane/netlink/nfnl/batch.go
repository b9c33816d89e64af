package nfnl

import (
	"encoding/binary"
	"fmt"
	"math"
	"syscall"

	nl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nlError is the error of one netlink request: the errno, the kernel's extended ACK
// message if any and the offset of the offending attribute (-1 if none).
type nlError struct {
	errno syscall.Errno
	msg   string
	off   int
}

// parseError decodes an NLMSG_ERROR message; errno 0 is an ACK.
func parseError(m syscall.NetlinkMessage) nlError {
	e := nlError{off: -1}
	if len(m.Data) < 4 {
		e.errno = unix.EBADMSG
		return e
	}
	e.errno = syscall.Errno(-int32(binary.NativeEndian.Uint32(m.Data[:4])))
	if m.Header.Flags&nlmFAckTLVs == 0 || len(m.Data) < 4+nlmsgHdrLen {
		return e
	}
	tlvs := 4 + nlmsgHdrLen
	if m.Header.Flags&nlmFCapped == 0 {
		tlvs = 4 + int(binary.NativeEndian.Uint32(m.Data[4:8]))
	}
	if tlvs > len(m.Data) {
		return e
	}
	ad, err := nl.NewAttributeDecoder(m.Data[tlvs:])
	if err != nil {
		return e
	}
	for ad.Next() {
		switch ad.Type() {
		case nlmsgerrAttrMsg:
			e.msg = ad.String()
		case nlmsgerrAttrOffs:
			e.off = int(ad.Uint32())
		}
	}
	return e
}

// SendBatch sends msgs as one nf_tables transaction (NFNL_MSG_BATCH_BEGIN ... END) in a
// single sendmsg: the kernel applies all of it or nothing. It returns the first error
// with the object that caused it; errors of later messages are usually consequences.
func (c *Conn) SendBatch(msgs []Message) error {
	if len(msgs) == 0 {
		return nil
	}
	// The batch takes len(msgs)+2 consecutive sequence numbers; start over rather than
	// wrap inside it, so that a reply's sequence number maps back to its message.
	n := uint32(len(msgs) + 2)
	if c.seq > math.MaxUint32-n {
		c.seq = 0
	}
	beginSeq := c.seq + 1
	c.seq += n
	out := Frame(msgs, beginSeq)
	firstSeq, lastSeq, endSeq := beginSeq+1, c.seq-1, c.seq
	size := 0
	for _, m := range out {
		size += nlmsgHdrLen + len(m.Data)
	}
	// The whole batch goes into one skb: netlink refuses a message larger than the
	// socket's send buffer (EMSGSIZE), so grow it to the batch when needed.
	if size+(64<<10) > c.sockBuf {
		if err := c.setBuffers(size+(64<<10), 0); err != nil {
			return err
		}
	}
	if _, err := c.nl.SendMessages(out); err != nil {
		return fmt.Errorf("send batch of %d messages (%d bytes): %w", len(msgs), size, err)
	}

	// The kernel processes the batch synchronously inside sendmsg and then queues the
	// errors of all failing messages plus the ACK of the last one, in batch order. So
	// once an error is in, whatever else is coming is already queued: drain it without
	// waiting, in case the kernel gave up before replying to the last message.
	var first *nlError
	firstWhat := ""
	nerr := 0
	for {
		replies, err := c.recv(first != nil)
		if err != nil {
			if first != nil {
				break // the batch failed; the error we have is the useful one
			}
			return err
		}
		done := false
		for _, r := range replies {
			if r.Header.Type != unix.NLMSG_ERROR || r.Header.Seq < beginSeq || r.Header.Seq > endSeq {
				continue // stale or unrelated
			}
			e := parseError(r)
			if e.errno != 0 {
				nerr++
				if first == nil {
					first = &e
					if idx := int(r.Header.Seq - firstSeq); r.Header.Seq >= firstSeq && idx < len(msgs) {
						firstWhat = msgs[idx].What
						if e.off >= 0 {
							firstWhat = msgs[idx].Describe(e.off)
						}
					} else {
						firstWhat = "batch"
					}
				}
			}
			// Done with the reply to the last message, or when the kernel refused the
			// batch framing itself (then there is no reply to the messages).
			if r.Header.Seq == lastSeq || (e.errno != 0 && (r.Header.Seq == beginSeq || r.Header.Seq == endSeq)) {
				done = true
			}
		}
		if done {
			break
		}
	}
	if first == nil {
		return nil
	}
	err := fmt.Errorf("%s: %w", firstWhat, first.errno)
	if first.msg != "" {
		err = fmt.Errorf("%s: %w (%s)", firstWhat, first.errno, first.msg)
	}
	if nerr > 1 {
		err = fmt.Errorf("%w (and %d more errors in the batch)", err, nerr-1)
	}
	return err
}
