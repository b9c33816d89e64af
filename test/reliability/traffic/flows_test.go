package traffic

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/nftpolicy/nftpolicy/test/lab"
)

// echoServer echoes every TCP connection and UDP datagram on one port inside a pod's
// namespace. The lab's own servers answer once and close, which cannot show an
// established flow being cut.
type echoServer struct {
	ln    net.Listener
	pc    net.PacketConn
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func serveEcho(ns *lab.Netns, port int) (*echoServer, error) {
	ln, err := ns.Listen("tcp4", fmt.Sprintf(":%d", port))
	if err != nil {
		return nil, fmt.Errorf("echo server in %s: %w", ns, err)
	}
	var pc net.PacketConn
	if err := ns.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		ln.Close()
		return nil, fmt.Errorf("echo server in %s: %w", ns, err)
	}
	s := &echoServer{ln: ln, pc: pc}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			s.wg.Go(func() { _, _ = io.Copy(c, c) })
		}
	})
	s.wg.Go(func() {
		buf := make([]byte, 1500)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], addr)
		}
	})
	return s, nil
}

// Close stops the server and every connection it accepted (revoked connections never
// see the client's RST, so they would otherwise stay open).
func (s *echoServer) Close() {
	s.ln.Close()
	s.pc.Close()
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// flow is one established TCP connection or connected UDP socket from a pod to an echo
// server, sending 8 bytes every interval and timing the echoes.
type flow struct {
	proto string
	to    netip.AddrPort
	c     net.Conn
	stop  chan struct{}
	wg    sync.WaitGroup

	mu     sync.Mutex
	echoes int
	last   time.Time     // last echo
	since  time.Time     // start of the gap window (resetGaps)
	maxGap time.Duration // longest time without an echo inside the window
	gapEnd time.Time     // when the longest gap ended
	err    error         // first read error (a reset, for TCP)
}

// startFlow connects from ns to the echo server and waits for the first echo; it retries
// for up to maxWait (a policy just allowed may not be in the kernel yet).
func startFlow(ns *lab.Netns, proto string, to netip.AddrPort, interval, maxWait time.Duration) (*flow, error) {
	deadline := time.Now().Add(maxWait)
	var lastErr error
	for time.Now().Before(deadline) {
		f, err := dialFlow(ns, proto, to, interval)
		if err != nil {
			lastErr = err
			time.Sleep(20 * time.Millisecond) // a refused or timed-out dial; retry soon
			continue
		}
		if f.waitEcho(300 * time.Millisecond) {
			f.resetGaps()
			return f, nil
		}
		lastErr = errors.New("no echo")
		f.Close()
	}
	return nil, fmt.Errorf("%s flow to %s: %w", proto, to, lastErr)
}

func dialFlow(ns *lab.Netns, proto string, to netip.AddrPort, interval time.Duration) (*flow, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	c, err := ns.DialContext(ctx, proto+"4", to.String())
	if err != nil {
		return nil, err
	}
	f := &flow{proto: proto, to: to, c: c, stop: make(chan struct{})}
	f.wg.Go(func() { f.send(interval) })
	f.wg.Go(f.receive)
	return f, nil
}

func (f *flow) send(interval time.Duration) {
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

func (f *flow) receive() {
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

// waitEcho waits until an echo has come back within the last 20 ms.
func (f *flow) waitEcho(maxWait time.Duration) bool {
	deadline := time.Now().Add(maxWait)
	for time.Now().Before(deadline) {
		if last := f.lastEcho(); !last.IsZero() && time.Since(last) < 20*time.Millisecond {
			return true
		}
		time.Sleep(time.Millisecond) // polls a timestamp; nothing to wait on
	}
	return false
}

func (f *flow) lastEcho() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

// waitStopped waits until no echo has come for quiet and returns the time of the last
// one; ok is false if echoes still came after maxWait.
func (f *flow) waitStopped(quiet, maxWait time.Duration) (last time.Time, ok bool) {
	deadline := time.Now().Add(maxWait)
	for time.Now().Before(deadline) {
		last = f.lastEcho()
		if time.Since(last) >= quiet {
			return last, true
		}
		time.Sleep(2 * time.Millisecond)
	}
	return f.lastEcho(), false
}

// resetGaps starts a new window for maxGapSince.
func (f *flow) resetGaps() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.since, f.maxGap, f.gapEnd = time.Now(), 0, time.Time{}
}

// gaps returns the longest time without an echo since resetGaps (counting the time since
// the last echo) and when it ended, the number of echoes and the first read error.
func (f *flow) gaps() (time.Duration, time.Time, int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	g, end := f.maxGap, f.gapEnd
	if !f.last.IsZero() && time.Since(f.last) > g {
		g, end = time.Since(f.last), time.Now()
	}
	return g, end, f.echoes, f.err
}

func (f *flow) String() string {
	return f.proto + " " + f.c.LocalAddr().String() + " → " + f.to.String()
}

// Close stops the flow (a TCP connection with RST: no TIME_WAIT, no lingering).
func (f *flow) Close() {
	close(f.stop)
	if tc, ok := f.c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	f.c.Close()
	f.wg.Wait()
}

// probeRecord is one connection attempt of a prober.
type probeRecord struct {
	start, end time.Time
	passed     bool
	err        error // why a denied attempt failed (a timeout is a dropped SYN)
}

// prober opens new TCP connections from ns to a target in a loop with workers
// goroutines, recording every attempt.
type prober struct {
	stop chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	recs []probeRecord
}

func startProber(ns *lab.Netns, to netip.AddrPort, workers int, timeout, pause time.Duration) *prober {
	p := &prober{stop: make(chan struct{})}
	for range workers {
		p.wg.Go(func() {
			for {
				select {
				case <-p.stop:
					return
				default:
				}
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				c, err := ns.DialContext(ctx, "tcp4", to.String())
				cancel()
				end := time.Now()
				if err == nil {
					_ = c.(*net.TCPConn).SetLinger(0)
					c.Close()
				}
				// A refused connection (RST from a pod without a server) did reach the
				// pod: it counts as passed.
				passed := err == nil || errors.Is(err, syscall.ECONNREFUSED)
				p.mu.Lock()
				rec := probeRecord{start: start, end: end, passed: passed}
				if !passed {
					rec.err = err
				}
				p.recs = append(p.recs, rec)
				p.mu.Unlock()
				if pause > 0 {
					time.Sleep(pause) // pacing between attempts, not a wait for a condition
				}
			}
		})
	}
	return p
}

// Stop ends the prober and returns its records in start order.
func (p *prober) Stop() []probeRecord {
	close(p.stop)
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	recs := slices.Clone(p.recs)
	slices.SortFunc(recs, func(a, b probeRecord) int { return a.start.Compare(b.start) })
	return recs
}

// percentile is the nearest-rank percentile of ds (sorted copy).
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(float64(len(s))*p/100 + 0.999999)
	rank = min(max(rank, 1), len(s))
	return s[rank-1]
}

// report writes a line to the test output and to $NFTPOLICY_RELIABILITY_REPORT when set
// (the figures a run is judged by).
func report(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	fmt.Fprintln(reportOut, line)
	if path := os.Getenv("NFTPOLICY_RELIABILITY_REPORT"); path != "" {
		if f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			fmt.Fprintln(f, line)
			f.Close()
		}
	}
}
