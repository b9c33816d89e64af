package nfnl

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	nl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Conn is one NETLINK_NETFILTER socket, meant to live for one operation (package
// netlink opens one per Apply, Read or Delete, bound to its context). It speaks
// the batch protocol the way nft does (see the package doc for why not google/nftables'
// Conn): one sendmsg per batch, an ACK requested only for the last message, and errors
// mapped back to the object that caused them. A Conn is not safe for concurrent use.
type Conn struct {
	nl      *nl.Conn
	ctx     context.Context
	seq     uint32
	buf     []byte
	sockBuf int
	stop    func() bool
}

// Config says where and how to open a Conn.
type Config struct {
	// NetNS is an open file descriptor of the network namespace to talk to; 0 is the
	// namespace of the calling thread.
	NetNS int
	// SockBuf is the size of the socket buffers in bytes (both directions); the send
	// buffer grows further for a batch larger than this.
	SockBuf int
	// Timeout bounds the wait for replies when the context has no deadline; it must be
	// positive then.
	Timeout time.Duration
}

// Dial opens a socket as cfg says, bound to ctx: cancelling ctx interrupts any pending
// receive.
func Dial(ctx context.Context, cfg Config) (*Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dl, ok := ctx.Deadline()
	if !ok {
		if cfg.Timeout <= 0 {
			return nil, errors.New("open netlink socket: no deadline: the context has none and Config.Timeout is not positive")
		}
		dl = time.Now().Add(cfg.Timeout)
	}
	c, err := nl.Dial(unix.NETLINK_NETFILTER, &nl.Config{NetNS: cfg.NetNS})
	if err != nil {
		return nil, fmt.Errorf("open netlink socket: %w", err)
	}
	cn := &Conn{nl: c, ctx: ctx, seq: uint32(time.Now().Unix()), buf: make([]byte, 64<<10), sockBuf: cfg.SockBuf}
	// Best effort: error replies without a copy of the (possibly huge) failed request,
	// but with the offset of the offending attribute.
	_ = c.SetOption(nl.CapAcknowledge, true)
	_ = c.SetOption(nl.ExtendedAcknowledge, true)
	if err := cn.setBuffers(cfg.SockBuf, cfg.SockBuf); err != nil {
		c.Close()
		return nil, err
	}
	// Replies are queued by the time sendmsg returns, so waiting long means something is
	// wrong; never wait forever when the caller gave no deadline.
	_ = c.SetDeadline(dl)
	// Cancellation interrupts a pending receive. If that happens after a batch was
	// sent, the batch may or may not have been committed: SendBatch reports a failure,
	// and the caller must not assume either outcome (package netlink replaces the
	// table on its next Apply, which is right either way).
	cn.stop = context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	return cn, nil
}

// Close closes the socket.
func (c *Conn) Close() {
	if c.stop != nil {
		c.stop()
	}
	_ = c.nl.Close()
}

// setBuffers sets SO_SNDBUF/SO_RCVBUF with the FORCE variants (root may exceed
// net.core.[wr]mem_max), falling back to the capped options without CAP_NET_ADMIN.
func (c *Conn) setBuffers(snd, rcv int) error {
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

func (c *Conn) nextSeq() uint32 {
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
func (c *Conn) recv(nonblock bool) ([]syscall.NetlinkMessage, error) {
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
