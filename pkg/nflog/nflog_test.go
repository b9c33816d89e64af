package nflog

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/internal/testns"
)

// inNS runs a command inside the namespace and fails the test if it fails.
func inNS(t *testing.T, nsFd int, name string, args ...string) {
	t.Helper()
	if _, err := testns.Exec(t, nsFd, name, args...); err != nil {
		t.Fatal(err)
	}
}

// sendUDP sends one datagram from src to dst inside the namespace (on a throwaway
// thread: testns.In).
func sendUDP(t *testing.T, nsFd int, src, dst netip.AddrPort) {
	t.Helper()
	if err := testns.In(nsFd, func() error {
		fam, sa := unix.AF_INET, func(ap netip.AddrPort) unix.Sockaddr {
			return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
		}
		if src.Addr().Is6() {
			fam, sa = unix.AF_INET6, func(ap netip.AddrPort) unix.Sockaddr {
				return &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
			}
		}
		fd, err := unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.Bind(fd, sa(src)); err != nil {
			return fmt.Errorf("bind %s: %w", src, err)
		}
		return unix.Sendto(fd, []byte("hello"), 0, sa(dst))
	}); err != nil {
		t.Fatalf("send %s -> %s: %v", src, dst, err)
	}
}

// TestListenKernel: a `log group` rule on the output hook of a throwaway namespace sends
// the namespace's own UDP datagrams (IPv4 and IPv6) to the listener, which decodes the
// prefix, addresses, protocol and ports; a datagram the rule does not match is not seen.
func TestListenKernel(t *testing.T) {
	ns := testns.New(t)
	inNS(t, ns, "ip", "link", "set", "lo", "up")
	inNS(t, ns, "nft", "add table inet t; add chain inet t out { type filter hook output priority 0; policy accept; }; "+
		`add rule inet t out udp dport 5353 log prefix "isolate-in-abc " group 7`)

	l, err := Listen(7, WithNetNSFd(ns))
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	defer l.Close()
	// Bound the wait: a missing packet must fail the test, not hang it.
	if err := l.c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct{ src, dst string }{
		{"127.0.0.1:40001", "127.0.0.1:5353"},
		{"[::1]:40002", "[::1]:5353"},
	} {
		src, dst := netip.MustParseAddrPort(tc.src), netip.MustParseAddrPort(tc.dst)
		// Not logged: another port. Sent first, so that if it were logged it would be
		// received before the expected one.
		sendUDP(t, ns, src, netip.AddrPortFrom(dst.Addr(), 5354))
		sendUDP(t, ns, src, dst)
		pkts, err := l.Receive()
		if err != nil {
			t.Fatalf("Receive: %v", err)
		}
		want := Packet{Prefix: "isolate-in-abc ", Src: src.Addr(), Dst: dst.Addr(), Proto: unix.IPPROTO_UDP, SPort: src.Port(), DPort: dst.Port()}
		if len(pkts) != 1 || pkts[0] != want {
			t.Fatalf("received %+v, want [%+v]", pkts, want)
		}
	}
}

// TestParsePayload covers what the kernel test does not send: TCP, IPv4 options, IPv6
// extension headers, later fragments and truncated packets.
func TestParsePayload(t *testing.T) {
	v4 := func(ihl int, proto byte, frag uint16, l4 ...byte) []byte {
		b := make([]byte, ihl*4)
		b[0] = 0x40 | byte(ihl)
		b[6], b[7] = byte(frag>>8), byte(frag)
		b[9] = proto
		copy(b[12:], []byte{10, 0, 0, 1, 10, 0, 0, 2})
		return append(b, l4...)
	}
	v6 := func(next byte, rest ...byte) []byte {
		b := make([]byte, 40)
		b[0] = 0x60
		b[6] = next
		b[23], b[39] = 1, 2
		return append(b, rest...)
	}
	ports := []byte{0x1f, 0x90, 0x00, 0x50} // 8080 -> 80
	a4, b4 := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	a6, b6 := netip.MustParseAddr("::1"), netip.MustParseAddr("::2")
	hop := append([]byte{6, 0, 0, 0, 0, 0, 0, 0}, ports...)
	for _, tc := range []struct {
		name string
		b    []byte
		want Packet
		err  bool
	}{
		{"tcp", v4(5, 6, 0, ports...), Packet{Src: a4, Dst: b4, Proto: 6, SPort: 8080, DPort: 80}, false},
		{"ipv4 options", v4(7, 132, 0, ports...), Packet{Src: a4, Dst: b4, Proto: 132, SPort: 8080, DPort: 80}, false},
		{"later fragment", v4(5, 17, 10, ports...), Packet{Src: a4, Dst: b4, Proto: 17}, false},
		{"icmp has no ports", v4(5, 1, 0, ports...), Packet{Src: a4, Dst: b4, Proto: 1}, false},
		{"truncated transport", v4(5, 6, 0, 0x1f), Packet{Src: a4, Dst: b4, Proto: 6}, false},
		{"ipv6 udp", v6(17, ports...), Packet{Src: a6, Dst: b6, Proto: 17, SPort: 8080, DPort: 80}, false},
		{"ipv6 hop-by-hop", v6(0, hop...), Packet{Src: a6, Dst: b6, Proto: 6, SPort: 8080, DPort: 80}, false},
		{"ipv6 first fragment", v6(44, append([]byte{17, 0, 0, 1, 0, 0, 0, 0}, ports...)...), Packet{Src: a6, Dst: b6, Proto: 17, SPort: 8080, DPort: 80}, false},
		{"ipv6 later fragment", v6(44, append([]byte{17, 0, 0, 0x19, 0, 0, 0, 0}, ports...)...), Packet{Src: a6, Dst: b6, Proto: 17}, false},
		{"truncated ipv4", v4(5, 6, 0)[:12], Packet{}, true},
		{"truncated ipv6", v6(6)[:30], Packet{}, true},
		{"not ip", []byte{0x20, 0}, Packet{}, true},
	} {
		var p Packet
		err := parsePayload(tc.b, &p)
		if (err != nil) != tc.err || (!tc.err && p != tc.want) {
			t.Errorf("%s: got %+v, %v; want %+v, error %v", tc.name, p, err, tc.want, tc.err)
		}
	}
}
