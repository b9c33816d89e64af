// Package echo is the established flow that the benchmark, the reliability tests and
// the end-to-end test watch being kept or revoked: a server that echoes every byte of
// a TCP connection (and every UDP datagram) and a client flow that sends a sequence
// number every interval and times the echoes. The lab's own servers answer once and
// close, which cannot show an established flow being cut.
package echo

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Netns is a network namespace to listen and dial in (a *lab.Netns).
type Netns interface {
	Do(fn func() error) error
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Options choose what a Server listens on.
type Options struct {
	// UDP also echoes datagrams on the same port.
	UDP bool
	// IPv4Only listens on IPv4 only (tcp4, udp4) instead of both families.
	IPv4Only bool
}

// Server echoes on one port inside a namespace.
type Server struct {
	ln    net.Listener
	pc    net.PacketConn // nil without Options.UDP
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]bool
}

// Serve starts an echo server on port inside ns.
func Serve(ns Netns, port int, opts Options) (*Server, error) {
	tcp, udp := "tcp", "udp"
	if opts.IPv4Only {
		tcp, udp = "tcp4", "udp4"
	}
	addr := fmt.Sprintf(":%d", port)
	s := &Server{conns: map[net.Conn]bool{}}
	err := ns.Do(func() error {
		// Plain TCP, as the flows dial it: no MPTCP listener in between.
		lc := net.ListenConfig{}
		lc.SetMultipathTCP(false)
		var err error
		if s.ln, err = lc.Listen(context.Background(), tcp, addr); err != nil {
			return err
		}
		if opts.UDP {
			if s.pc, err = lc.ListenPacket(context.Background(), udp, addr); err != nil {
				s.ln.Close()
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("echo server on port %d: %w", port, err)
	}
	s.wg.Go(s.acceptTCP)
	if s.pc != nil {
		s.wg.Go(s.echoUDP)
	}
	return s, nil
}

func (s *Server) acceptTCP() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		s.mu.Lock()
		s.conns[c] = true
		s.mu.Unlock()
		s.wg.Go(func() {
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			_, _ = io.Copy(c, c)
		})
	}
}

func (s *Server) echoUDP() {
	buf := make([]byte, 1500)
	for {
		n, addr, err := s.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = s.pc.WriteTo(buf[:n], addr)
	}
}

// Close stops the server and resets every connection it accepted: a revoked
// connection never sees the client's RST, so it would otherwise stay open.
func (s *Server) Close() error {
	err := s.ln.Close()
	if s.pc != nil {
		err = errors.Join(err, s.pc.Close())
	}
	s.mu.Lock()
	for c := range s.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

// Flow is one established TCP connection or connected UDP socket to an echo server,
// sending 8 bytes (a sequence number) every interval and timing the echoes.
type Flow struct {
	proto string
	to    netip.AddrPort
	c     net.Conn
	stop  chan struct{}
	wg    sync.WaitGroup

	mu     sync.Mutex
	echoes int           // reads that returned data
	last   time.Time     // last echo
	since  time.Time     // start of the gap window (ResetGaps)
	maxGap time.Duration // longest time without an echo inside the window
	gapEnd time.Time     // when the longest gap ended
	err    error         // first read error (a reset, for TCP)
}

// Dial connects from ns to the echo server at to over proto ("tcp" or "udp") and starts
// sending; ctx bounds the dial only.
func Dial(ctx context.Context, ns Netns, proto string, to netip.AddrPort, interval time.Duration) (*Flow, error) {
	network := proto + "4"
	if to.Addr().Is6() {
		network = proto + "6"
	}
	c, err := ns.DialContext(ctx, network, to.String())
	if err != nil {
		return nil, fmt.Errorf("%s flow to %s: %w", proto, to, err)
	}
	f := &Flow{proto: proto, to: to, c: c, stop: make(chan struct{})}
	f.wg.Go(func() { f.send(interval) })
	f.wg.Go(f.receive)
	return f, nil
}

func (f *Flow) send(interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	b := make([]byte, 8)
	var seq uint64
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
		}
		seq++
		binary.BigEndian.PutUint64(b, seq)
		// A revoked TCP flow is no longer acknowledged and its send buffer fills:
		// never let a blocked write hold up the ticker.
		_ = f.c.SetWriteDeadline(time.Now().Add(interval))
		_, _ = f.c.Write(b)
	}
}

func (f *Flow) receive() {
	b := make([]byte, 64<<10)
	for {
		n, err := f.c.Read(b)
		now := time.Now()
		if n > 0 {
			f.mu.Lock()
			f.echoes++
			from := f.last
			if from.Before(f.since) {
				from = f.since
			}
			if !from.IsZero() && now.Sub(from) > f.maxGap {
				f.maxGap, f.gapEnd = now.Sub(from), now
			}
			f.last = now
			f.mu.Unlock()
		}
		if err != nil {
			select {
			case <-f.stop: // closed by us
			default:
				f.mu.Lock()
				if f.err == nil {
					f.err = err
				}
				f.mu.Unlock()
			}
			// A connected UDP socket reports ICMP errors on read and carries on; a TCP
			// connection is over.
			if f.proto == "tcp" || errors.Is(err, net.ErrClosed) {
				return
			}
		}
	}
}

// WaitEcho waits up to maxWait until an echo has come back within the last 20 ms.
func (f *Flow) WaitEcho(maxWait time.Duration) bool {
	deadline := time.Now().Add(maxWait)
	for time.Now().Before(deadline) {
		if last := f.LastEcho(); !last.IsZero() && time.Since(last) < 20*time.Millisecond {
			return true
		}
		time.Sleep(time.Millisecond) // polls a timestamp; nothing to wait on
	}
	return false
}

// LastEcho is when the last echo came back (zero before the first).
func (f *Flow) LastEcho() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

// WaitStopped waits until no echo has come for quiet and returns the time of the last
// one; ok is false if echoes still came after maxWait.
func (f *Flow) WaitStopped(quiet, maxWait time.Duration) (last time.Time, ok bool) {
	deadline := time.Now().Add(maxWait)
	for time.Now().Before(deadline) {
		last = f.LastEcho()
		if time.Since(last) >= quiet {
			return last, true
		}
		time.Sleep(2 * time.Millisecond) // polls a timestamp; nothing to wait on
	}
	return f.LastEcho(), false
}

// ResetGaps starts a new window for Gaps.
func (f *Flow) ResetGaps() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.since, f.maxGap, f.gapEnd = time.Now(), 0, time.Time{}
}

// Gaps returns the longest time without an echo since ResetGaps (counting the time since
// the last echo) and when it ended, the number of echoes and the first read error.
func (f *Flow) Gaps() (time.Duration, time.Time, int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	g, end := f.maxGap, f.gapEnd
	if !f.last.IsZero() && time.Since(f.last) > g {
		g, end = time.Since(f.last), time.Now()
	}
	return g, end, f.echoes, f.err
}

// Proto is the flow's transport protocol, "tcp" or "udp".
func (f *Flow) Proto() string { return f.proto }

func (f *Flow) String() string {
	return f.proto + " " + f.c.LocalAddr().String() + " → " + f.to.String()
}

// Close stops the flow (a TCP connection with RST: no TIME_WAIT, no lingering).
func (f *Flow) Close() {
	close(f.stop)
	if tc, ok := f.c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	f.c.Close()
	f.wg.Wait()
}
