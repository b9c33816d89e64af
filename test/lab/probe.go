package lab

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DefaultProbeTimeout is used when a probe timeout is zero.
const DefaultProbeTimeout = time.Second

// DefaultProbeParallelism bounds concurrent probes in ProbeCases when
// ProbeOptions.Parallelism is zero.
const DefaultProbeParallelism = 32

// udpAttempts is how many datagrams a UDP probe sends within its timeout.
const udpAttempts = 3

// ProbeResult is the outcome of one probe.
type ProbeResult struct {
	// OK reports whether the target answered.
	OK bool
	// Reply is what the target sent back: the TCP reply line, or for UDP
	// the reply with the echoed payload stripped. With the lab's servers
	// it is the name of the answering pod.
	Reply string
	// Err says why the probe failed (timeout, connection refused,
	// unexpected reply, ...). Nil when OK.
	Err error
	// Elapsed is the probe's duration.
	Elapsed time.Duration
}

// Probe connects from inside the namespace from to the address to with proto
// ("tcp", "udp", or "sctp" where SCTPSupported) and reports whether the
// target answered within timeout (DefaultProbeTimeout if zero). A TCP or
// SCTP probe succeeds when the connection is established and a reply line is
// read; a UDP probe when the echo of its datagram comes back (the datagram
// is resent a few times within the timeout). Connection refused (TCP RST or ICMP port unreachable) fails
// immediately.
//
// The error is non-nil only when the probe could not be carried out (bad
// arguments, namespace unusable); a denied connection is (false, nil). Use
// ProbeDetail to learn why a probe failed.
func Probe(ctx context.Context, from *Netns, to netip.AddrPort, proto string, timeout time.Duration) (bool, error) {
	r, err := ProbeDetail(ctx, from, to, proto, timeout)
	return r.OK, err
}

// ProbeDetail is Probe returning the full result.
func ProbeDetail(ctx context.Context, from *Netns, to netip.AddrPort, proto string, timeout time.Duration) (ProbeResult, error) {
	if timeout <= 0 {
		timeout = DefaultProbeTimeout
	}
	if !to.IsValid() || to.Port() == 0 {
		return ProbeResult{}, fmt.Errorf("probe from %s: invalid target %s", from.Name(), to)
	}
	to = netip.AddrPortFrom(to.Addr().Unmap(), to.Port())
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	var (
		r   ProbeResult
		err error
	)
	switch proto {
	case "tcp":
		r, err = probeTCP(ctx, from, to)
	case "udp":
		r, err = probeUDP(ctx, from, to, timeout)
	case "sctp":
		r, err = probeSCTP(ctx, from, to)
	default:
		return ProbeResult{}, fmt.Errorf("probe from %s to %s: unknown protocol %q", from.Name(), to, proto)
	}
	r.Elapsed = time.Since(start)
	if err != nil {
		return r, fmt.Errorf("probe %s %s -> %s: %w", proto, from.Name(), to, err)
	}
	return r, nil
}

// dialThen dials inside from and, if the dial succeeds, runs exchange over
// the connection and closes it. Only the socket creation and connect need the
// namespace (the goroutine stays locked to the switched thread while a TCP
// connect waits in the netpoller). A failed dial is the probe's answer
// (refused, unreachable), not an error of the lab; failing to enter the
// namespace is.
func dialThen[C net.Conn](from *Netns, dial func() (C, error), exchange func(C) (ProbeResult, error)) (ProbeResult, error) {
	var conn C
	var dialErr error
	if err := from.Do(func() error {
		conn, dialErr = dial()
		return nil
	}); err != nil {
		return ProbeResult{}, err
	}
	if dialErr != nil {
		return ProbeResult{Err: dialErr}, nil
	}
	defer conn.Close()
	return exchange(conn)
}

func probeTCP(ctx context.Context, from *Netns, to netip.AddrPort) (ProbeResult, error) {
	return dialThen(from, func() (net.Conn, error) {
		d := net.Dialer{}
		d.SetMultipathTCP(false)
		return d.DialContext(ctx, "tcp", to.String())
	}, func(conn net.Conn) (ProbeResult, error) { return readTCPReply(ctx, conn) })
}

// readTCPReply reads the echo server's one-line reply.
func readTCPReply(ctx context.Context, conn net.Conn) (ProbeResult, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetReadDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Now()) })
	defer stop()
	line, err := bufio.NewReaderSize(io.LimitReader(conn, 4096), 4096).ReadString('\n')
	line = strings.TrimSuffix(line, "\n")
	if line == "" {
		if err == nil || errors.Is(err, io.EOF) {
			err = errors.New("connected but got no reply")
		}
		return ProbeResult{Err: fmt.Errorf("read reply: %w", err)}, nil
	}
	return ProbeResult{OK: true, Reply: line}, nil
}

func probeUDP(ctx context.Context, from *Netns, to netip.AddrPort, timeout time.Duration) (ProbeResult, error) {
	return dialThen(from, func() (*net.UDPConn, error) {
		// Connected socket: ICMP port unreachable surfaces as
		// ECONNREFUSED on the next read.
		return net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(to))
	}, func(conn *net.UDPConn) (ProbeResult, error) { return udpEcho(ctx, conn, timeout) })
}

// udpEcho sends the probe's payload until the echo comes back, the socket is
// refused or ctx ends, resending every timeout/udpAttempts.
func udpEcho(ctx context.Context, conn *net.UDPConn, timeout time.Duration) (ProbeResult, error) {
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Now()) })
	defer stop()

	nonce := make([]byte, 8)
	_, _ = rand.Read(nonce)
	payload := []byte("probe-" + hex.EncodeToString(nonce))
	interval := timeout / udpAttempts
	buf := make([]byte, 64*1024)
	var lastErr error
	for ctx.Err() == nil {
		if _, err := conn.Write(payload); err != nil {
			if isRefused(err) {
				return ProbeResult{Err: err}, nil
			}
			lastErr = err
		}
		next := time.Now().Add(interval)
		if dl, ok := ctx.Deadline(); ok && dl.Before(next) {
			next = dl
		}
		_ = conn.SetReadDeadline(next)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				if isRefused(err) {
					return ProbeResult{Err: err}, nil
				}
				lastErr = err
				break // timeout: resend
			}
			// Stale replies to earlier attempts carry the same payload
			// and count as well.
			if reply, ok := bytes.CutSuffix(buf[:n], payload); ok {
				return ProbeResult{OK: true, Reply: strings.TrimSuffix(string(reply), " ")}, nil
			}
		}
	}
	if lastErr == nil {
		lastErr = ctx.Err()
	}
	if ctx.Err() != nil {
		lastErr = fmt.Errorf("no reply within timeout: %w", lastErr)
	}
	return ProbeResult{Err: lastErr}, nil
}

func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// Case is one probe of ProbeCases: from a namespace to an address.
type Case struct {
	// FromName and ToName label the matrix row and column.
	FromName string
	From     *Netns
	ToName   string
	To       netip.AddrPort
	Proto    string // "tcp", "udp" or "sctp"
	// ExpectReply, if set, must equal the reply; otherwise the probe
	// counts as failed (the packet reached the wrong endpoint).
	ExpectReply string
}

func (c Case) String() string {
	return fmt.Sprintf("%s %s -> %s (%s)", c.Proto, c.FromName, c.ToName, c.To)
}

// ProbeOptions tunes ProbeCases and ProbeMatrix.
type ProbeOptions struct {
	Timeout     time.Duration // per probe; DefaultProbeTimeout if zero
	Parallelism int           // DefaultProbeParallelism if zero
}

// ProbeCases runs all cases concurrently (bounded by opts.Parallelism) and
// returns their results in the same order. The error joins the failures to
// carry out probes (see Probe); network failures are only in the results.
func ProbeCases(ctx context.Context, cases []Case, opts ProbeOptions) ([]ProbeResult, error) {
	par := opts.Parallelism
	if par <= 0 {
		par = DefaultProbeParallelism
	}
	results := make([]ProbeResult, len(cases))
	errs := make([]error, len(cases))
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	for i, c := range cases {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			r, err := ProbeDetail(ctx, c.From, c.To, c.Proto, opts.Timeout)
			if err == nil && r.OK && c.ExpectReply != "" && r.Reply != c.ExpectReply {
				r.OK = false
				r.Err = fmt.Errorf("unexpected reply %q, want %q", r.Reply, c.ExpectReply)
			}
			results[i], errs[i] = r, err
		})
	}
	wg.Wait()
	return results, errors.Join(errs...)
}

// ProbeMatrix probes proto/port from every pod in froms to every pod in tos
// over family, concurrently, and returns the observed matrix (with the
// failure reasons as cell notes). Replies must name the target pod, as the
// servers started by Pod.Serve do. Pods without an address of the family are
// reported as an error.
func ProbeMatrix(ctx context.Context, froms, tos []*Pod, family Family, proto string, port int, opts ProbeOptions) (*Matrix, error) {
	var cases []Case
	for _, f := range froms {
		for _, t := range tos {
			a := t.Addr(family)
			if !a.IsValid() {
				return nil, fmt.Errorf("probe matrix: pod %s has no %s address", t.Name, family)
			}
			cases = append(cases, Case{
				FromName: f.Name, From: f.NS,
				ToName: t.Name, To: netip.AddrPortFrom(a, uint16(port)),
				Proto: proto, ExpectReply: t.Name,
			})
		}
	}
	results, err := ProbeCases(ctx, cases, opts)
	m := MatrixFromResults(fmt.Sprintf("%s/%d %s", proto, port, family), cases, results)
	return m, err
}
