package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/test/lab"
)

// The load tools below run their sockets inside pod namespaces: a socket belongs to
// the namespace of the thread that created it, so loops that create a socket per
// connection run entirely inside lab.Netns.Do on a thread locked into the namespace,
// with raw non-blocking syscalls (no netpoller hand-offs inside the timed section).

// linger0 makes close() send RST and skip TIME_WAIT: a connect-close loop at tens of
// thousands of connections per second would otherwise run out of ephemeral ports
// within seconds and measure the port allocator instead of the data path.
var linger0 = unix.Linger{Onoff: 1, Linger: 0}

// ---- servers ----

// sinkServer accepts connections and closes them at once (the other half of a
// connect-close loop); it counts what it accepted.
//
// The client's connect completes when the SYN-ACK arrives, whether or not the server
// has accepted: a server slower than the client fills its accept queue, and then the
// kernel drops handshakes and the client waits a second for the retransmit. So the
// sink is as lean as the client: two OS threads locked into the pod's namespace doing
// blocking accept4 and close, no netpoller registration per connection, and a
// backlog of 65535. It closes with FIN, not RST: the client closes with RST anyway,
// and a server RST racing the client's poll would show as ECONNRESET on a connection
// that did get through.
type sinkServer struct {
	fd       int
	accepted atomic.Int64
	wg       sync.WaitGroup
	closing  atomic.Bool
}

func serveSink(ns *lab.Netns, port int) (*sinkServer, error) {
	if err := ns.Sysctl("net/core/somaxconn", "65535"); err != nil {
		return nil, err
	}
	s := &sinkServer{fd: -1}
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		s.fd = fd
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port}); err != nil {
			return err
		}
		return unix.Listen(fd, 65535)
	})
	if err != nil {
		if s.fd >= 0 {
			unix.Close(s.fd)
		}
		return nil, fmt.Errorf("sink on %s:%d: %w", ns.Name(), port, err)
	}
	for range 2 {
		s.wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			for {
				fd, _, err := unix.Accept4(s.fd, unix.SOCK_CLOEXEC)
				if err != nil {
					if s.closing.Load() {
						return
					}
					if err == unix.EINTR || err == unix.ECONNABORTED {
						continue
					}
					time.Sleep(time.Millisecond)
					continue
				}
				s.accepted.Add(1)
				unix.Close(fd)
			}
		})
	}
	return s, nil
}

func (s *sinkServer) Close() error {
	s.closing.Store(true)
	// shutdown wakes the threads blocked in accept4.
	err := unix.Shutdown(s.fd, unix.SHUT_RDWR)
	s.wg.Wait()
	return errors.Join(err, unix.Close(s.fd))
}

// discardServer reads and drops everything; for each connection it reports the
// bytes received once the peer has closed its side.
type discardServer struct {
	ln   net.Listener
	wg   sync.WaitGroup
	done chan int64
}

func serveDiscard(ns *lab.Netns, port int) (*discardServer, error) {
	ln, err := listenTCP(ns, port)
	if err != nil {
		return nil, err
	}
	s := &discardServer{ln: ln, done: make(chan int64, 16)}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			s.wg.Go(func() {
				defer c.Close()
				n, _ := io.CopyBuffer(io.Discard, c, make([]byte, 256<<10))
				select {
				case s.done <- n:
				default:
				}
			})
		}
	})
	return s, nil
}

func (s *discardServer) Close() error {
	err := s.ln.Close()
	s.wg.Wait()
	return err
}

func listenTCP(ns *lab.Netns, port int) (net.Listener, error) {
	var ln net.Listener
	err := ns.Do(func() error {
		lc := net.ListenConfig{}
		lc.SetMultipathTCP(false)
		var err error
		ln, err = lc.Listen(context.Background(), "tcp4", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s:%d: %w", ns.Name(), port, err)
	}
	return ln, nil
}

// ---- connect-close loops ----

// ConnectRun is the outcome of one connect-close load.
type ConnectRun struct {
	Concurrency int           `json:"concurrency"`
	Duration    time.Duration `json:"duration_ns"`
	Conns       int           `json:"conns"`
	Errors      int           `json:"errors"`
	LastError   string        `json:"last_error,omitempty"`
	// CPS is successful connections per second over the whole run.
	CPS float64 `json:"cps"`
	// P50us and P99us are connect() latencies (SYN sent until the handshake
	// completed, as the client sees it) in microseconds.
	P50us float64 `json:"p50_us"`
	P99us float64 `json:"p99_us"`
	// ConntrackEntries is the size of the nodes' conntrack tables after the run
	// (node1 + node2; both share the machine's nf_conntrack_max).
	ConntrackEntries int `json:"conntrack_entries,omitempty"`
}

// connectLoad runs concurrency loops, each opening a TCP connection from inside ns
// to to and closing it with RST, back to back for d.
func connectLoad(ns *lab.Netns, to netip.AddrPort, concurrency int, d time.Duration) (ConnectRun, error) {
	if !to.Addr().Is4() {
		return ConnectRun{}, fmt.Errorf("connect load: %s is not IPv4", to)
	}
	sa := &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()}
	type result struct {
		lat     []time.Duration
		errs    int
		lastErr error
		err     error
	}
	results := make([]result, concurrency)
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for i := range concurrency {
		wg.Go(func() {
			r := &results[i]
			r.lat = make([]time.Duration, 0, 1<<14)
			r.err = ns.Do(func() error {
				for time.Now().Before(deadline) {
					lat, err := connectOnce(sa, time.Second)
					if err != nil {
						r.errs++
						r.lastErr = err
						if errors.Is(err, unix.EADDRNOTAVAIL) || errors.Is(err, unix.EMFILE) {
							time.Sleep(time.Millisecond)
						}
						continue
					}
					r.lat = append(r.lat, lat)
				}
				return nil
			})
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	run := ConnectRun{Concurrency: concurrency, Duration: elapsed}
	var all []time.Duration
	var errs []error
	for _, r := range results {
		all = append(all, r.lat...)
		run.Errors += r.errs
		if r.lastErr != nil {
			run.LastError = r.lastErr.Error()
		}
		errs = append(errs, r.err)
	}
	run.Conns = len(all)
	run.CPS = float64(run.Conns) / elapsed.Seconds()
	run.P50us, run.P99us = durationsPercentiles(all)
	return run, errors.Join(errs...)
}

// connectOnce opens one connection (non-blocking connect, then poll), and closes it
// with RST. It returns the time connect took.
func connectOnce(sa *unix.SockaddrInet4, timeout time.Duration) (time.Duration, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &linger0)
	t0 := time.Now()
	err = unix.Connect(fd, sa)
	if err != nil && err != unix.EINPROGRESS {
		return 0, err
	}
	if err == unix.EINPROGRESS {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		for {
			left := timeout - time.Since(t0)
			if left <= 0 {
				return 0, unix.ETIMEDOUT
			}
			n, err := unix.Poll(pfd, int(left/time.Millisecond)+1)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return 0, err
			}
			if n > 0 {
				break
			}
		}
		soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			return 0, err
		}
		if !handshakeDone(soErr) {
			return 0, unix.Errno(soErr)
		}
	}
	return time.Since(t0), nil
}

// handshakeDone reports whether a connect's SO_ERROR means the handshake completed:
// no error, or a reset (a refused SYN gives ECONNREFUSED; ECONNRESET needs an
// established connection, which the server then reset).
func handshakeDone(soErr int) bool {
	return soErr == 0 || unix.Errno(soErr) == unix.ECONNRESET
}

// ---- one long stream ----

// StreamRun is the outcome of one bulk TCP stream.
type StreamRun struct {
	Duration time.Duration `json:"duration_ns"`
	Bytes    int64         `json:"bytes"`
	// Gbps is the goodput the receiver saw, in Gbit/s.
	Gbps float64 `json:"gbps"`
}

// streamLoad sends as fast as it can from ns to the discard server srv at to for d and
// reports what the receiver got.
func streamLoad(ns *lab.Netns, to netip.AddrPort, srv *discardServer, d time.Duration) (StreamRun, error) {
	// Drop reports of earlier streams.
	for len(srv.done) > 0 {
		<-srv.done
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := ns.DialContext(ctx, "tcp4", to.String())
	if err != nil {
		return StreamRun{}, fmt.Errorf("stream: %w", err)
	}
	defer c.Close()
	buf := make([]byte, 256<<10)
	start := time.Now()
	_ = c.SetWriteDeadline(start.Add(d))
	for time.Since(start) < d {
		if _, err := c.Write(buf); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				break
			}
			return StreamRun{}, fmt.Errorf("stream: %w", err)
		}
	}
	_ = c.(*net.TCPConn).CloseWrite()
	select {
	case n := <-srv.done:
		elapsed := time.Since(start)
		return StreamRun{Duration: elapsed, Bytes: n, Gbps: float64(n) * 8 / elapsed.Seconds() / 1e9}, nil
	case <-time.After(10 * time.Second):
		return StreamRun{}, errors.New("stream: the receiver never saw the end of the stream")
	}
}

// ---- the millisecond prober ----

// probeRecord is one probe of the prober: a new TCP connection.
type probeRecord struct {
	Start, End time.Time
	OK         bool
}

// prober opens a new TCP connection from inside a namespace every interval, without
// waiting for earlier ones (a denied SYN is simply dropped, so a probe only learns it
// was denied when its timeout expires); each probe is judged by when it started.
type prober struct {
	stop atomic.Bool
	done chan error

	mu      sync.Mutex
	records []probeRecord
}

func startProber(ns *lab.Netns, to netip.AddrPort, interval, timeout time.Duration) *prober {
	p := &prober{done: make(chan error, 1)}
	sa := &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()}
	go func() { p.done <- ns.Do(func() error { return p.loop(sa, interval, timeout) }) }()
	return p
}

func (p *prober) loop(sa *unix.SockaddrInet4, interval, timeout time.Duration) error {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	defer unix.Close(ep)
	type inflight struct {
		idx   int
		start time.Time
	}
	pending := map[int]inflight{}
	defer func() {
		for fd := range pending {
			unix.Close(fd)
		}
	}()
	finish := func(fd int, ok bool, now time.Time) {
		in := pending[fd]
		delete(pending, fd)
		_ = unix.EpollCtl(ep, unix.EPOLL_CTL_DEL, fd, nil)
		unix.Close(fd)
		p.mu.Lock()
		p.records[in.idx].End, p.records[in.idx].OK = now, ok
		p.mu.Unlock()
	}
	events := make([]unix.EpollEvent, 64)
	next := time.Now()
	for !p.stop.Load() {
		now := time.Now()
		if !now.Before(next) {
			p.mu.Lock()
			idx := len(p.records)
			p.records = append(p.records, probeRecord{Start: now})
			p.mu.Unlock()
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err == nil {
				_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &linger0)
				pending[fd] = inflight{idx: idx, start: now}
				err = unix.Connect(fd, sa)
				switch {
				case err == nil:
					finish(fd, true, time.Now())
				case err == unix.EINPROGRESS:
					if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLOUT, Fd: int32(fd)}); err != nil {
						finish(fd, false, time.Now())
					}
				default:
					finish(fd, false, time.Now())
				}
			} else {
				p.mu.Lock()
				p.records[idx].End = now
				p.mu.Unlock()
			}
			next = next.Add(interval)
			if now.Sub(next) > 5*interval {
				// Fell behind (descheduled): skip the missed slots rather than burst.
				next = now.Add(interval)
			}
		}
		wait := max(0, int(time.Until(next)/time.Millisecond))
		n, err := unix.EpollWait(ep, events, wait)
		if err != nil && err != unix.EINTR {
			return err
		}
		now = time.Now()
		for _, ev := range events[:max(n, 0)] {
			fd := int(ev.Fd)
			if _, ok := pending[fd]; !ok {
				continue
			}
			soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
			finish(fd, err == nil && handshakeDone(soErr), now)
		}
		for fd, in := range pending {
			if now.Sub(in.start) > timeout {
				finish(fd, false, now)
			}
		}
	}
	return nil
}

// Close stops the prober.
func (p *prober) Close() error {
	p.stop.Store(true)
	return <-p.done
}

// flipAfter waits (up to maxWait) until the probes started after t show the outcome
// want for run consecutive probes, and returns the start of the first of them
// relative to t. Probes started before t do not count.
func (p *prober) flipAfter(t time.Time, want bool, run int, maxWait time.Duration) (time.Duration, bool) {
	deadline := time.Now().Add(maxWait)
	for {
		p.mu.Lock()
		streak := 0
		first := sort.Search(len(p.records), func(i int) bool { return p.records[i].Start.After(t) })
		if first < len(p.records) {
			for i := first; i < len(p.records); i++ {
				r := p.records[i]
				if r.End.IsZero() {
					break // not finished yet
				}
				if r.OK == want {
					streak++
					if streak >= run {
						at := p.records[i-run+1].Start
						p.mu.Unlock()
						return at.Sub(t), true
					}
				} else {
					streak = 0
				}
			}
		}
		p.mu.Unlock()
		if time.Now().After(deadline) {
			return 0, false
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// ---- SYN flood ----

// synFlood sends TCP SYNs from inside ns (raw socket, source address src, random
// source ports) to dst at rate packets per second for d, and returns how many it
// sent. Nothing is kept per packet on the sending side.
func synFlood(ns *lab.Netns, src netip.Addr, dst netip.AddrPort, rate int, d time.Duration) (int, error) {
	sent := 0
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		if err != nil {
			return fmt.Errorf("raw socket: %w", err)
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrInet4{Addr: dst.Addr().As4()}
		pkt := make([]byte, 20)
		start := time.Now()
		for {
			elapsed := time.Since(start)
			if elapsed >= d {
				return nil
			}
			// Pace in 1 ms slots.
			due := int(float64(rate) * elapsed.Seconds())
			if sent >= due {
				time.Sleep(200 * time.Microsecond)
				continue
			}
			for ; sent < due; sent++ {
				buildSYN(pkt, src, dst, uint16(1024+rand.IntN(64000)), rand.Uint32())
				if err := unix.Sendto(fd, pkt, 0, sa); err != nil && err != unix.ENOBUFS && err != unix.EPERM {
					return fmt.Errorf("send SYN: %w", err)
				}
			}
		}
	})
	return sent, err
}

// buildSYN writes a 20-byte TCP SYN header with its checksum into b.
func buildSYN(b []byte, src netip.Addr, dst netip.AddrPort, sport uint16, seq uint32) {
	clear(b)
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dst.Port())
	binary.BigEndian.PutUint32(b[4:], seq)
	b[12] = 5 << 4 // data offset: 5 words
	b[13] = 0x02   // SYN
	binary.BigEndian.PutUint16(b[14:], 64240)
	// Checksum over the pseudo header (src, dst, zero, protocol, TCP length) and the
	// header.
	var sum uint32
	s4, d4 := src.As4(), dst.Addr().As4()
	for _, w := range [][]byte{s4[:], d4[:]} {
		sum += uint32(binary.BigEndian.Uint16(w[0:])) + uint32(binary.BigEndian.Uint16(w[2:]))
	}
	sum += unix.IPPROTO_TCP + uint32(len(b))
	for i := 0; i < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(b[16:], ^uint16(sum))
}
