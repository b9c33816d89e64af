package netlink

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	nl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// conn is one NETLINK_NETFILTER socket, opened for one Apply, Read or Delete.
//
// google/nftables v0.3.0's Conn is not used for the transport: its Chain has no user
// data (chain comments would be lost, and the diff replaces the table when a chain
// comment differs), GetSets drops set comments, rule dumps silently skip expressions it
// does not know (a hand-made rule could pass for one of ours), and Flush reports a
// failed batch without saying which message failed. We keep its expression encoders
// and decoders (package expr) and speak the batch protocol ourselves, the way nft does:
// one sendmsg per batch, an ACK requested only for the last message, and errors mapped
// back to the object that caused them.
type conn struct {
	nl      *nl.Conn
	ctx     context.Context
	seq     uint32
	buf     []byte
	sockBuf int
	stop    func() bool
}

// dialConn opens a socket in the network namespace nsFd (0: the caller's), sized for
// sockBuf bytes of batch and replies, and bound to ctx: cancelling ctx interrupts any
// pending receive.
func dialConn(ctx context.Context, nsFd, sockBuf int) (*conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c, err := nl.Dial(unix.NETLINK_NETFILTER, &nl.Config{NetNS: nsFd})
	if err != nil {
		return nil, fmt.Errorf("open netlink socket: %w", err)
	}
	cn := &conn{nl: c, ctx: ctx, seq: uint32(time.Now().Unix()), buf: make([]byte, 64<<10), sockBuf: sockBuf}
	// Best effort: error replies without a copy of the (possibly huge) failed request,
	// but with the offset of the offending attribute.
	_ = c.SetOption(nl.CapAcknowledge, true)
	_ = c.SetOption(nl.ExtendedAcknowledge, true)
	if err := cn.setBuffers(sockBuf, sockBuf); err != nil {
		c.Close()
		return nil, err
	}
	// Replies are queued by the time sendmsg returns, so waiting long means something is
	// wrong; never wait forever when the caller gave no deadline.
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(defaultTimeout)
	}
	_ = c.SetDeadline(dl)
	// Cancellation interrupts a pending receive. If that happens after a batch was
	// sent, the batch may or may not have been committed: the caller treats it as a
	// failure, and a failure makes the next Apply replace the table, which is right
	// either way.
	cn.stop = context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	return cn, nil
}

func (c *conn) close() {
	if c.stop != nil {
		c.stop()
	}
	_ = c.nl.Close()
}

// setBuffers sets SO_SNDBUF/SO_RCVBUF with the FORCE variants (root may exceed
// net.core.[wr]mem_max), falling back to the capped options without CAP_NET_ADMIN.
func (c *conn) setBuffers(snd, rcv int) error {
	rc, err := c.nl.SyscallConn()
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		set := func(force, plain, v int) error {
			if v <= 0 {
				return nil
			}
			if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, force, v); err == nil {
				return nil
			}
			return unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, plain, v)
		}
		if err := set(unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, snd); err != nil {
			serr = fmt.Errorf("set netlink send buffer to %d: %w", snd, err)
			return
		}
		if err := set(unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, rcv); err != nil {
			serr = fmt.Errorf("set netlink receive buffer to %d: %w", rcv, err)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

func (c *conn) nextSeq() uint32 {
	c.seq++
	if c.seq == 0 {
		c.seq++
	}
	return c.seq
}

// recv reads one datagram (which may hold several netlink messages). The socket is
// non-blocking; RawConn.Read waits in the poller, so deadlines and cancellation work.
//
// With nonblock, recv returns errWouldBlock instead of waiting when nothing is queued.
func (c *conn) recv(nonblock bool) ([]syscall.NetlinkMessage, error) {
	rc, err := c.nl.SyscallConn()
	if err != nil {
		return nil, err
	}
	var n int
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		for {
			// Peek first so that a datagram larger than the buffer is not truncated.
			n, _, rerr = unix.Recvfrom(int(fd), c.buf, unix.MSG_PEEK|unix.MSG_TRUNC)
			if rerr == unix.EINTR {
				continue
			}
			if rerr == unix.EAGAIN {
				return nonblock
			}
			if rerr != nil {
				return true
			}
			if n > len(c.buf) {
				c.buf = make([]byte, n)
			}
			n, _, rerr = unix.Recvfrom(int(fd), c.buf, 0)
			if rerr == unix.EINTR {
				continue
			}
			return rerr != unix.EAGAIN
		}
	})
	if err != nil {
		if cerr := c.ctx.Err(); cerr != nil {
			return nil, fmt.Errorf("netlink receive: %w", cerr)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, fmt.Errorf("netlink receive: %w", context.DeadlineExceeded)
		}
		return nil, fmt.Errorf("netlink receive: %w", err)
	}
	if rerr != nil {
		if rerr == unix.EAGAIN {
			return nil, errWouldBlock
		}
		if rerr == unix.ENOBUFS {
			return nil, fmt.Errorf("netlink receive: %w (socket receive buffer overflowed, replies were lost)", rerr)
		}
		return nil, fmt.Errorf("netlink receive: %w", rerr)
	}
	msgs, err := syscall.ParseNetlinkMessage(c.buf[:n])
	if err != nil {
		return nil, fmt.Errorf("netlink receive: parse: %w", err)
	}
	// ParseNetlinkMessage returns slices of c.buf, which the next recv overwrites.
	for i := range msgs {
		msgs[i].Data = append([]byte(nil), msgs[i].Data...)
	}
	return msgs, nil
}

var errWouldBlock = errors.New("no netlink reply queued")

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

// sendBatch sends msgs as one nf_tables transaction (NFNL_MSG_BATCH_BEGIN ... END) in a
// single sendmsg: the kernel applies all of it or nothing. It returns the first error
// with the object that caused it; errors of later messages are usually consequences.
func (c *conn) sendBatch(msgs []message) error {
	if len(msgs) == 0 {
		return nil
	}
	out := make([]nl.Message, 0, len(msgs)+2)
	batchHdr := []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES}
	beginSeq := c.nextSeq()
	out = append(out, nl.Message{
		Header: nl.Header{Type: nl.HeaderType(unix.NFNL_MSG_BATCH_BEGIN), Flags: nl.Request, Sequence: beginSeq},
		Data:   batchHdr,
	})
	firstSeq := beginSeq + 1
	size := 2 * (nlmsgHdrLen + len(batchHdr))
	for i, m := range msgs {
		flags := nl.Request | m.flags
		// Only the last message asks for an ACK: the kernel reports every failing
		// message anyway, and one ACK per message would need a receive buffer of about
		// 1 KiB (skb truesize) per object of the batch.
		if i == len(msgs)-1 {
			flags |= nl.Acknowledge
		}
		out = append(out, nl.Message{
			Header: nl.Header{Type: m.header(), Flags: flags, Sequence: c.nextSeq()},
			Data:   m.data,
		})
		size += m.size()
	}
	lastSeq := c.seq
	endSeq := c.nextSeq()
	out = append(out, nl.Message{
		Header: nl.Header{Type: nl.HeaderType(unix.NFNL_MSG_BATCH_END), Flags: nl.Request, Sequence: endSeq},
		Data:   batchHdr,
	})
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
						firstWhat = msgs[idx].what
						if e.off >= 0 {
							firstWhat = msgs[idx].describe(e.off)
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

// request sends one non-batched request (a GET or a dump) and collects the replies of
// its sequence number. A dump ends with NLMSG_DONE; a plain GET with its single reply.
// Interrupted reports that a dump saw the ruleset change (NLM_F_DUMP_INTR).
func (c *conn) request(typ int, dump bool, a *attrs) (replies []syscall.NetlinkMessage, interrupted bool, err error) {
	if a.err != nil {
		return nil, false, a.err
	}
	flags := nl.Request
	if dump {
		flags |= nl.Dump
	}
	seq := c.nextSeq()
	data := append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, a.b...)
	msg := nl.Message{
		Header: nl.Header{Type: nl.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | typ), Flags: flags, Sequence: seq},
		Data:   data,
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
