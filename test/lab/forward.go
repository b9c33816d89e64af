package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// forwardDialTimeout bounds dialing the forwarder's target.
const forwardDialTimeout = 5 * time.Second

// Forwarder accepts TCP connections inside a namespace and proxies each one
// to a target dialed from the test process's own (root) namespace.
type Forwarder struct {
	ln     net.Listener
	target string
	ns     string

	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// ForwardTCP listens on listenAddr inside ns and forwards every connection to
// target (host:port, dialed outside any lab namespace). An empty listenAddr
// means "the same address as target", which is what an agent inside a node
// namespace needs to reach an API server on the root namespace's
// 127.0.0.1:<port> with an unchanged kubeconfig (the certificate's
// 127.0.0.1 SAN keeps matching). listenAddr ":0" or "127.0.0.1:0" picks a
// free port; see Addr.
func ForwardTCP(ns *Netns, listenAddr, target string) (*Forwarder, error) {
	if _, _, err := net.SplitHostPort(target); err != nil {
		return nil, fmt.Errorf("forward tcp in %s: target %q: %w", ns.Name(), target, err)
	}
	if listenAddr == "" {
		listenAddr = target
	}
	f := &Forwarder{target: target, ns: ns.Name(), conns: make(map[net.Conn]struct{})}
	err := ns.Do(func() error {
		lc := net.ListenConfig{}
		lc.SetMultipathTCP(false)
		ln, err := lc.Listen(context.Background(), "tcp", listenAddr)
		f.ln = ln
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("forward tcp %s in %s -> %s: %w", listenAddr, ns.Name(), target, err)
	}
	f.wg.Add(1)
	go f.serve()
	return f, nil
}

// Addr returns the listening address inside the namespace.
func (f *Forwarder) Addr() net.Addr { return f.ln.Addr() }

func (f *Forwarder) String() string {
	return fmt.Sprintf("forwarder %s in %s -> %s", f.ln.Addr(), f.ns, f.target)
}

// Close stops listening, closes all proxied connections and waits for the
// forwarder's goroutines.
func (f *Forwarder) Close() error {
	f.closeOnce.Do(func() {
		f.mu.Lock()
		f.closed = true
		for c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
		f.closeErr = f.ln.Close()
		f.wg.Wait()
		if f.closeErr != nil {
			f.closeErr = fmt.Errorf("close %s: %w", f, f.closeErr)
		}
	})
	return f.closeErr
}

// addConn registers c; it reports false (and closes c) once closed.
func (f *Forwarder) addConn(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		c.Close()
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *Forwarder) removeConn(c net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.conns, c)
}

func (f *Forwarder) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // transient (e.g. EMFILE)
			continue
		}
		if !f.addConn(c) {
			continue
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer f.removeConn(c)
			defer c.Close()
			f.proxy(c)
		}()
	}
}

func (f *Forwarder) proxy(in net.Conn) {
	// This goroutine is not in any lab namespace: the dial happens in the
	// namespace the test process runs in.
	d := net.Dialer{Timeout: forwardDialTimeout}
	out, err := d.Dial("tcp", f.target)
	if err != nil {
		return // the client sees the connection close
	}
	if !f.addConn(out) {
		return
	}
	defer f.removeConn(out)
	defer out.Close()

	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		// Propagate EOF (half-close) so request/response protocols finish.
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(out, in)
	go pipe(in, out)
	<-done
	<-done
}
