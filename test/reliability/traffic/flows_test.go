package traffic

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/nftpolicy/nftpolicy/test/echo"
	"github.com/nftpolicy/nftpolicy/test/lab"
)

// startFlow connects from ns to the echo server and waits for the first echo; it retries
// for up to maxWait (a policy just allowed may not be in the kernel yet).
func startFlow(ns *lab.Netns, proto string, to netip.AddrPort, interval, maxWait time.Duration) (*echo.Flow, error) {
	deadline := time.Now().Add(maxWait)
	var lastErr error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		f, err := echo.Dial(ctx, ns, proto, to, interval)
		cancel()
		if err != nil {
			lastErr = err
			time.Sleep(20 * time.Millisecond) // a refused or timed-out dial; retry soon
			continue
		}
		if f.WaitEcho(300 * time.Millisecond) {
			f.ResetGaps()
			return f, nil
		}
		lastErr = fmt.Errorf("%s: no echo", f)
		f.Close()
	}
	return nil, fmt.Errorf("no %s flow to %s within %v: %w", proto, to, maxWait, lastErr)
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
