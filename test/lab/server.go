package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// serverIOTimeout bounds how long a server spends on one TCP connection.
const serverIOTimeout = 5 * time.Second

// Server is an in-process TCP, UDP or SCTP server whose socket lives in a network
// namespace.
type Server struct {
	proto string
	reply string
	ns    string

	ln net.Listener   // tcp, sctp
	pc net.PacketConn // udp

	closeOnce sync.Once
	closeErr  error
	wg        sync.WaitGroup
}

// ServeTCP listens on addr (net.Listen syntax; ":80" means every address of
// both families) inside ns. Each accepted connection gets reply followed by
// "\n" and is closed.
func ServeTCP(ns *Netns, addr, reply string) (*Server, error) {
	s := &Server{proto: "tcp", reply: reply, ns: ns.Name()}
	return s.start(ns, addr, func() error {
		lc := net.ListenConfig{}
		lc.SetMultipathTCP(false) // plain TCP on the wire
		ln, err := lc.Listen(context.Background(), "tcp", addr)
		s.ln = ln
		return err
	}, s.serveTCP)
}

// start opens the server's socket with listen inside ns (a listen of any
// protocol) and then runs serve until Close.
func (s *Server) start(ns *Netns, addr string, listen func() error, serve func()) (*Server, error) {
	if err := ns.Do(listen); err != nil {
		return nil, fmt.Errorf("serve %s %s in %s: %w", s.proto, addr, ns.Name(), err)
	}
	s.wg.Add(1)
	go serve()
	return s, nil
}

// ServeUDP listens on addr (":80" means every address of both families)
// inside ns and answers every datagram with reply + " " + datagram.
func ServeUDP(ns *Netns, addr, reply string) (*Server, error) {
	s := &Server{proto: "udp", reply: reply, ns: ns.Name()}
	return s.start(ns, addr, func() error {
		pc, err := (&net.ListenConfig{}).ListenPacket(context.Background(), "udp", addr)
		s.pc = pc
		return err
	}, s.serveUDP)
}

// Proto returns "tcp", "udp" or "sctp".
func (s *Server) Proto() string { return s.proto }

// Addr returns the local address the server listens on.
func (s *Server) Addr() net.Addr {
	if s.ln != nil {
		return s.ln.Addr()
	}
	return s.pc.LocalAddr()
}

func (s *Server) String() string {
	return fmt.Sprintf("%s server %s in %s", s.proto, s.Addr(), s.ns)
}

// Close stops the server and waits for its goroutines.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		if s.ln != nil {
			s.closeErr = s.ln.Close()
		} else {
			s.closeErr = s.pc.Close()
		}
		s.wg.Wait()
		if s.closeErr != nil {
			s.closeErr = fmt.Errorf("close %s: %w", s, s.closeErr)
		}
	})
	return s.closeErr
}

func (s *Server) serveTCP() {
	defer s.wg.Done()
	line := []byte(s.reply + "\n")
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// Transient accept errors (e.g. EMFILE): back off briefly.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(serverIOTimeout))
			_, _ = c.Write(line)
		}()
	}
}

func (s *Server) serveUDP() {
	defer s.wg.Done()
	buf := make([]byte, 64*1024)
	for {
		n, from, err := s.pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. ICMP errors reported on the socket
		}
		out := make([]byte, 0, len(s.reply)+1+n)
		out = append(out, s.reply...)
		out = append(out, ' ')
		out = append(out, buf[:n]...)
		_, _ = s.pc.WriteTo(out, from)
	}
}
