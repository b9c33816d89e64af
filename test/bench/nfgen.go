package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	nl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/test/lab"
)

// genConn asks nf_tables of one network namespace for its generation: a counter the
// kernel bumps on every committed transaction. Polling it is a kernel read-back that
// costs one netlink round trip and, unlike a monitor subscription, adds no work to
// the commits being measured (the kernel builds notifications only for listeners).
type genConn struct {
	c *nl.Conn
}

func dialGen(ns *lab.Netns) (*genConn, error) {
	f, err := os.Open(ns.Path())
	if err != nil {
		return nil, fmt.Errorf("nf_tables generation of %s: %w", ns.Name(), err)
	}
	defer f.Close()
	c, err := nl.Dial(unix.NETLINK_NETFILTER, &nl.Config{NetNS: int(f.Fd())})
	if err != nil {
		return nil, fmt.Errorf("nf_tables generation of %s: %w", ns.Name(), err)
	}
	return &genConn{c: c}, nil
}

func (g *genConn) Close() error { return g.c.Close() }

// Gen returns the current nf_tables generation ID.
func (g *genConn) Gen() (uint32, error) {
	msg := nl.Message{
		Header: nl.Header{Type: nl.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN), Flags: nl.Request},
		// struct nfgenmsg: family, version, resource id.
		Data: []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	}
	replies, err := g.c.Execute(msg)
	if err != nil {
		return 0, fmt.Errorf("GETGEN: %w", err)
	}
	for _, r := range replies {
		if len(r.Data) < 4 {
			continue
		}
		ad, err := nl.NewAttributeDecoder(r.Data[4:])
		if err != nil {
			return 0, err
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				return ad.Uint32(), nil
			}
		}
	}
	return 0, errors.New("GETGEN: no generation in the reply")
}

// genEvent is one observed generation change.
type genEvent struct {
	At  time.Time
	Gen uint32
}

// genWatcher polls the generation of a namespace every interval and records when it
// changed.
type genWatcher struct {
	g      *genConn
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	events []genEvent
	err    error
}

func watchGen(ns *lab.Netns, interval time.Duration) (*genWatcher, error) {
	g, err := dialGen(ns)
	if err != nil {
		return nil, err
	}
	first, err := g.Gen()
	if err != nil {
		g.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &genWatcher{g: g, cancel: cancel, done: make(chan struct{}), events: []genEvent{{At: time.Now(), Gen: first}}}
	go func() {
		defer close(w.done)
		last := first
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			gen, err := g.Gen()
			now := time.Now()
			w.mu.Lock()
			if err != nil {
				w.err = err
				w.mu.Unlock()
				return
			}
			if gen != last {
				w.events = append(w.events, genEvent{At: now, Gen: gen})
				last = gen
			}
			w.mu.Unlock()
		}
	}()
	return w, nil
}

// firstChangeAfter returns when the generation first changed after t (false if not
// yet).
func (w *genWatcher) firstChangeAfter(t time.Time) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, e := range w.events[1:] {
		if e.At.After(t) {
			return e.At, true
		}
	}
	return time.Time{}, false
}

// waitChangeAfter is firstChangeAfter, waiting up to timeout for the change to be seen:
// the poller samples the generation on its own goroutine, which on a loaded machine may
// run after the prober has already seen the change's effect.
func (w *genWatcher) waitChangeAfter(t time.Time, timeout time.Duration) (time.Time, bool) {
	deadline := time.Now().Add(timeout)
	for {
		if at, ok := w.firstChangeAfter(t); ok {
			return at, true
		}
		if time.Now().After(deadline) {
			return time.Time{}, false
		}
		select {
		case <-w.done:
			// The poller stopped (an error): nothing more will be seen.
			return w.firstChangeAfter(t)
		case <-time.After(time.Millisecond):
		}
	}
}

func (w *genWatcher) Close() error {
	w.cancel()
	<-w.done
	w.mu.Lock()
	err := w.err
	w.mu.Unlock()
	return errors.Join(err, w.g.Close())
}
