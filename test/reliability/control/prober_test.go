package control

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/test/lab"
)

// outcome is what one probe saw.
type outcome int

const (
	// connected: the TCP handshake completed — the policy let the SYN through.
	connected outcome = iota
	// timedOut: no SYN-ACK within the probe timeout — a dropped SYN (policy deny).
	timedOut
	// netError: anything else (refused, unreachable, a socket error): not a policy
	// outcome (our chains drop, they never reject), counted apart.
	netError
)

func (o outcome) String() string {
	return [...]string{"connected", "timed out", "network error"}[o]
}

// probeTimeout judges a SYN dropped. It stays below Linux's initial SYN
// retransmission timeout (1 s): a SYN of an allowed connection dropped by a gap in
// enforcement is then never rescued by its retransmission, so the gap shows.
const probeTimeout = 600 * time.Millisecond

// target is one destination of the prober.
type target struct {
	name string
	addr netip.AddrPort
}

// sample is one probe: which target, when it started, what it saw.
type sample struct {
	target int
	start  time.Time
	out    outcome
	err    error
}

// prober opens a new TCP connection to every target every interval from a pod's
// namespace and records each outcome with its start time. Connections are made
// without holding a thread per connect: the socket is created in the namespace
// (which decides its network stack) and the connect then waits in Go's netpoller.
type prober struct {
	from     *lab.Netns
	targets  []target
	interval time.Duration

	mu      sync.Mutex
	samples []sample

	skipped  atomic.Int64 // ticks skipped because too many probes were in flight
	inflight atomic.Int64
	stop     chan struct{}
	loopDone chan struct{}
	probes   sync.WaitGroup
}

// maxInflight bounds the probes waiting at once (a stalled machine must not pile
// up goroutines without end); at 2 targets per 3 ms and 600 ms per dropped SYN
// about 200 are normal.
const maxInflight = 2000

func startProber(from *lab.Netns, interval time.Duration, targets ...target) *prober {
	p := &prober{from: from, targets: targets, interval: interval, stop: make(chan struct{}), loopDone: make(chan struct{})}
	go p.loop()
	return p
}

func (p *prober) loop() {
	defer close(p.loopDone)
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		for i := range p.targets {
			if p.inflight.Load() >= maxInflight {
				p.skipped.Add(1)
				continue
			}
			p.inflight.Add(1)
			p.probes.Add(1)
			go func() {
				defer p.probes.Done()
				defer p.inflight.Add(-1)
				start := time.Now()
				out, err := probeOnce(p.from, p.targets[i].addr, probeTimeout)
				p.mu.Lock()
				p.samples = append(p.samples, sample{target: i, start: start, out: out, err: err})
				p.mu.Unlock()
			}()
		}
	}
}

// Stop ends probing and waits for the probes in flight.
func (p *prober) Stop() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.loopDone
	p.probes.Wait()
}

// Samples returns the samples started in [from, to), by start time.
func (p *prober) Samples(from, to time.Time) []sample {
	p.mu.Lock()
	var out []sample
	for _, s := range p.samples {
		if !s.start.Before(from) && s.start.Before(to) {
			out = append(out, s)
		}
	}
	p.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].start.Before(out[j].start) })
	return out
}

// verdicts is the tally of a window against the expected policy.
type verdicts struct {
	total          int
	perTarget      map[string][3]int // outcome counts
	wronglyAllowed int
	wronglyDenied  int
	netErrors      int
	firstNetErrors []string
	wrong          []string // the first wrong probes, for the failure message
}

func (v verdicts) String() string {
	return fmt.Sprintf("%d probes %v: wrongly allowed %d, wrongly denied %d, network errors %d %v %v",
		v.total, v.perTarget, v.wronglyAllowed, v.wronglyDenied, v.netErrors, v.firstNetErrors, v.wrong)
}

// Judge tallies the samples started in [from, to) against allowed (target name →
// whether policy allows it).
func (p *prober) Judge(from, to time.Time, allowed map[string]bool) verdicts {
	v := verdicts{perTarget: map[string][3]int{}}
	for _, s := range p.Samples(from, to) {
		t := p.targets[s.target]
		v.total++
		c := v.perTarget[t.name]
		c[s.out]++
		v.perTarget[t.name] = c
		switch {
		case s.out == netError:
			v.netErrors++
			if len(v.firstNetErrors) < 5 {
				v.firstNetErrors = append(v.firstNetErrors, fmt.Sprintf("%s %s: %v", s.start.Format("15:04:05.000"), t.name, s.err))
			}
			continue
		case s.out == connected && !allowed[t.name]:
			v.wronglyAllowed++
		case s.out == timedOut && allowed[t.name]:
			v.wronglyDenied++
		default:
			continue
		}
		if len(v.wrong) < 10 {
			v.wrong = append(v.wrong, fmt.Sprintf("%s %s %s", s.start.Format("15:04:05.000"), t.name, s.out))
		}
	}
	return v
}

// FlipTime returns when target's outcome changed for good to want: the start of the
// first probe seeing want after which no probe started saw anything else (network
// errors excluded). ok is false if the samples end with another outcome or none.
func (p *prober) FlipTime(name string, want outcome, from, to time.Time) (time.Time, bool) {
	var flip time.Time
	for _, s := range p.Samples(from, to) {
		if p.targets[s.target].name != name || s.out == netError {
			continue
		}
		if s.out != want {
			flip = time.Time{}
			continue
		}
		if flip.IsZero() {
			flip = s.start
		}
	}
	return flip, !flip.IsZero()
}

// probeOnce connects to addr from ns. The socket closes with RST (linger 0), so the
// client's ports and the server's sockets are free at once at hundreds of probes a
// second.
func probeOnce(ns *lab.Netns, addr netip.AddrPort, timeout time.Duration) (outcome, error) {
	if !addr.Addr().Is4() {
		return netError, fmt.Errorf("probe %s: IPv4 only", addr)
	}
	var fd int
	err := ns.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return netError, fmt.Errorf("socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "probe")
	defer f.Close()
	if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}); err != nil {
		return netError, fmt.Errorf("linger: %w", err)
	}
	sa := &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}
	err = unix.Connect(fd, sa)
	switch {
	case err == nil:
		return connected, nil
	case !errors.Is(err, unix.EINPROGRESS):
		return netError, fmt.Errorf("connect: %w", err)
	}
	if err := f.SetWriteDeadline(time.Now().Add(timeout)); err != nil {
		return netError, fmt.Errorf("deadline: %w", err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return netError, fmt.Errorf("raw conn: %w", err)
	}
	var connErr error
	werr := rc.Write(func(fd uintptr) bool {
		// Called once at first (the connect may still be in progress: keep
		// waiting) and again whenever the socket turns writable.
		soErr, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			connErr = fmt.Errorf("SO_ERROR: %w", err)
			return true
		}
		if soErr != 0 {
			connErr = fmt.Errorf("connect: %w", syscall.Errno(soErr))
			return true
		}
		if _, err := unix.Getpeername(int(fd)); err != nil {
			if errors.Is(err, unix.ENOTCONN) {
				return false
			}
			connErr = fmt.Errorf("getpeername: %w", err)
		}
		return true
	})
	switch {
	case errors.Is(werr, os.ErrDeadlineExceeded):
		if handshakeDoneFirstTry(fd) {
			// The kernel completed the handshake on the first SYN; only this
			// process was late to look (a loaded machine can hold a goroutine past
			// the deadline). A SYN a policy dropped is answered, if ever, only after
			// its retransmission, which TCP_INFO counts.
			return connected, nil
		}
		return timedOut, nil
	case werr != nil:
		return netError, fmt.Errorf("wait for connect: %w", werr)
	case connErr != nil:
		return netError, connErr
	}
	return connected, nil
}

// tcpEstablished is TCP_ESTABLISHED (include/net/tcp_states.h), TCP_INFO's state.
const tcpEstablished = 1

// handshakeDoneFirstTry reports whether the socket is connected without any
// retransmission: its first SYN was answered.
func handshakeDoneFirstTry(fd int) bool {
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	return err == nil && info.State == tcpEstablished && info.Total_retrans == 0 && info.Retransmits == 0
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }
