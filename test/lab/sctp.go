package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The Go standard library has no SCTP. The lab only needs one-to-one
// (SOCK_STREAM) SCTP sockets, which behave like TCP ones at the socket API:
// a listener is made with raw syscalls and handed to net.FileListener, which
// sees a SOCK_STREAM socket and wraps it (as a *net.TCPListener) in the
// runtime poller, so accept, read, write and close work as for TCP.
//
// This kernel (6.18 without CONFIG_IP_SCTP) has no SCTP at all; this code
// only runs where SCTPSupported is true.

var sctpSupported = sync.OnceValue(func() bool {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
})

// SCTPSupported reports whether the kernel can open SCTP sockets (it tries
// once and remembers).
func SCTPSupported() bool { return sctpSupported() }

// errNoSCTP is returned when SCTP is used on a kernel without it.
var errNoSCTP = errors.New("SCTP is not supported by this kernel (no IPPROTO_SCTP sockets)")

func sctpSockaddr(ap netip.AddrPort) (int, unix.Sockaddr) {
	if ap.Addr().Is4() {
		return unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return unix.AF_INET6, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

// ServeSCTP serves SCTP on addr (an invalid address means every address of
// both families) inside ns; like ServeTCP each association gets reply
// followed by "\n" and is shut down.
func ServeSCTP(ns *Netns, addr netip.AddrPort, reply string) (*Server, error) {
	if !SCTPSupported() {
		return nil, fmt.Errorf("serve sctp %s in %s: %w", addr, ns.Name(), errNoSCTP)
	}
	if !addr.Addr().IsValid() {
		addr = netip.AddrPortFrom(netip.IPv6Unspecified(), addr.Port())
	}
	s := &Server{proto: "sctp", reply: reply, ns: ns.Name()}
	return s.start(ns, addr.String(), func() error {
		fam, sa := sctpSockaddr(addr)
		fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
		if err != nil {
			return os.NewSyscallError("socket", err)
		}
		f := os.NewFile(uintptr(fd), "sctp-listener")
		defer f.Close() // FileListener works on a dup
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return os.NewSyscallError("setsockopt SO_REUSEADDR", err)
		}
		if fam == unix.AF_INET6 && addr.Addr().IsUnspecified() {
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
				return os.NewSyscallError("setsockopt IPV6_V6ONLY", err)
			}
		}
		if err := unix.Bind(fd, sa); err != nil {
			return os.NewSyscallError("bind", err)
		}
		if err := unix.Listen(fd, 128); err != nil {
			return os.NewSyscallError("listen", err)
		}
		s.ln, err = net.FileListener(f)
		return err
	}, s.serveTCP)
}

// probeSCTP connects to to from inside from and reads the reply line. The
// socket is blocking with send and receive timeouts (SO_SNDTIMEO bounds
// the association setup); the probe's thread stays in the namespace for at
// most the timeout.
func probeSCTP(ctx context.Context, from *Netns, to netip.AddrPort) (ProbeResult, error) {
	if !SCTPSupported() {
		return ProbeResult{}, errNoSCTP
	}
	var r ProbeResult
	err := from.Do(func() error {
		fam, sa := sctpSockaddr(to)
		fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
		if err != nil {
			return os.NewSyscallError("socket", err)
		}
		defer unix.Close(fd)
		timeout := DefaultProbeTimeout
		if dl, ok := ctx.Deadline(); ok {
			timeout = max(time.Until(dl), time.Millisecond)
		}
		tv := unix.NsecToTimeval(timeout.Nanoseconds())
		for _, opt := range []int{unix.SO_SNDTIMEO, unix.SO_RCVTIMEO} {
			if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, opt, &tv); err != nil {
				return os.NewSyscallError("setsockopt", err)
			}
		}
		if err := unix.Connect(fd, sa); err != nil {
			r.Err = os.NewSyscallError("connect", err)
			return nil
		}
		var line []byte
		buf := make([]byte, 512)
		for len(line) < 4096 && !bytes.Contains(line, []byte{'\n'}) {
			n, err := unix.Read(fd, buf)
			if n > 0 {
				line = append(line, buf[:n]...)
			}
			if err != nil || n == 0 {
				break
			}
		}
		reply, _, found := bytes.Cut(line, []byte{'\n'})
		if !found || len(reply) == 0 {
			r.Err = errors.New("read reply: connected but got no reply")
			return nil
		}
		r = ProbeResult{OK: true, Reply: string(reply)}
		return nil
	})
	return r, err
}
