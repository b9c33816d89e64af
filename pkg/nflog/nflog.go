// Package nflog receives packets that nftables `log group N` statements copy to
// userspace through nfnetlink_log, and decodes the part the agent reports: the log
// prefix, the addresses, the transport protocol and the ports.
package nflog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	nl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nfnetlink_log constants (linux/netfilter/nfnetlink_log.h); x/sys/unix has not all of them.
const (
	subsysULOG = 4 // NFNL_SUBSYS_ULOG

	msgPacket = 0 // NFULNL_MSG_PACKET
	msgConfig = 1 // NFULNL_MSG_CONFIG

	attrCfgCmd     = 1 // NFULA_CFG_CMD
	attrCfgMode    = 2 // NFULA_CFG_MODE
	attrCfgQThresh = 5 // NFULA_CFG_QTHRESH

	cmdBind   = 1 // NFULNL_CFG_CMD_BIND
	cmdPFBind = 3 // NFULNL_CFG_CMD_PF_BIND

	copyPacket = 2 // NFULNL_COPY_PACKET

	attrPayload = 9  // NFULA_PAYLOAD
	attrPrefix  = 10 // NFULA_PREFIX
)

// CopyRange is how many bytes of each packet the kernel copies: the IPv6 header, a few
// extension headers and the ports. The rest of the packet is of no use to us.
const CopyRange = 128

// Packet is one logged packet. Ports are zero for protocols without ports.
type Packet struct {
	Prefix       string
	Src, Dst     netip.Addr
	Proto        uint8
	SPort, DPort uint16
}

// ErrMalformed marks packets Receive could not decode.
var ErrMalformed = errors.New("malformed nflog packet")

// Listener is a netlink socket bound to one nflog group.
type Listener struct {
	c     *nl.Conn
	group uint16
}

// Option configures Listen.
type Option func(*nl.Config)

// WithNetNSFd binds the group in the network namespace of the descriptor instead of the
// caller's (nflog groups are per namespace).
func WithNetNSFd(fd int) Option { return func(c *nl.Config) { c.NetNS = fd } }

// Listen binds to nflog group and asks for packet copies of CopyRange bytes, sent one by
// one (a queue threshold of 1: the default batches up to 100 packets or a second).
func Listen(group uint16, opts ...Option) (*Listener, error) {
	cfg := &nl.Config{}
	for _, o := range opts {
		o(cfg)
	}
	c, err := nl.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		return nil, fmt.Errorf("nflog: dial netfilter netlink: %w", err)
	}
	l := &Listener{c: c, group: group}
	// Kernels since 3.17 ignore the per-family binding, older ones need it before a
	// group bind; it is harmless either way.
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		if err := l.config(fam, 0, cmdAttr(cmdPFBind)); err != nil {
			c.Close()
			return nil, fmt.Errorf("nflog: bind family %d: %w", fam, err)
		}
	}
	mode := make([]byte, 6) // struct nfulnl_msg_config_mode: __be32 copy_range, u8 mode, pad
	binary.BigEndian.PutUint32(mode, CopyRange)
	mode[4] = copyPacket
	qthresh := binary.BigEndian.AppendUint32(nil, 1)
	if err := l.config(unix.AF_UNSPEC, group, cmdAttr(cmdBind)); err != nil {
		c.Close()
		return nil, fmt.Errorf("nflog: bind group %d: %w", group, err)
	}
	if err := l.config(unix.AF_UNSPEC, group, nl.Attribute{Type: attrCfgMode, Data: mode}, nl.Attribute{Type: attrCfgQThresh, Data: qthresh}); err != nil {
		c.Close()
		return nil, fmt.Errorf("nflog: configure group %d: %w", group, err)
	}
	return l, nil
}

func cmdAttr(cmd uint8) nl.Attribute { return nl.Attribute{Type: attrCfgCmd, Data: []byte{cmd}} }

// config sends an NFULNL_MSG_CONFIG and waits for its acknowledgement.
func (l *Listener) config(family uint8, resID uint16, attrs ...nl.Attribute) error {
	ab, err := nl.MarshalAttributes(attrs)
	if err != nil {
		return err
	}
	// struct nfgenmsg: family, version (NFNETLINK_V0), res_id (big endian).
	data := append([]byte{family, unix.NFNETLINK_V0, byte(resID >> 8), byte(resID)}, ab...)
	_, err = l.c.Execute(nl.Message{
		Header: nl.Header{Type: nl.HeaderType(subsysULOG<<8 | msgConfig), Flags: nl.Request | nl.Acknowledge},
		Data:   data,
	})
	return err
}

// Receive blocks until the kernel sends packets and returns them. A packet whose
// payload cannot be decoded is returned with the error joined to the others, so that one
// odd packet does not hide the rest. ENOBUFS (the socket overran: packets were lost) is
// returned as an error wrapping unix.ENOBUFS; the listener stays usable.
func (l *Listener) Receive() ([]Packet, error) {
	msgs, err := l.c.Receive()
	if err != nil {
		return nil, fmt.Errorf("nflog: receive: %w", err)
	}
	var out []Packet
	var errs []error
	for _, m := range msgs {
		if m.Header.Type != nl.HeaderType(subsysULOG<<8|msgPacket) {
			continue
		}
		p, err := ParseMessage(m.Data)
		if err != nil {
			errs = append(errs, fmt.Errorf("%w: %w", ErrMalformed, err))
			continue
		}
		out = append(out, p)
	}
	return out, errors.Join(errs...)
}

// Close releases the socket; the kernel drops the group binding with it. A Receive in
// progress returns an error.
func (l *Listener) Close() error { return l.c.Close() }

// ParseMessage decodes the body of an NFULNL_MSG_PACKET message (after the netlink
// header): the nfgenmsg, then the NFULA_PREFIX and NFULA_PAYLOAD attributes.
func ParseMessage(b []byte) (Packet, error) {
	if len(b) < 4 {
		return Packet{}, fmt.Errorf("nflog: message of %d bytes", len(b))
	}
	ad, err := nl.NewAttributeDecoder(b[4:])
	if err != nil {
		return Packet{}, fmt.Errorf("nflog: attributes: %w", err)
	}
	var p Packet
	var payload []byte
	for ad.Next() {
		switch ad.Type() {
		case attrPrefix:
			p.Prefix = ad.String() // NUL-terminated; String strips the NUL
		case attrPayload:
			payload = ad.Bytes()
		}
	}
	if err := ad.Err(); err != nil {
		return Packet{}, fmt.Errorf("nflog: attributes: %w", err)
	}
	if payload == nil {
		return p, fmt.Errorf("nflog: packet with prefix %q has no payload", p.Prefix)
	}
	if err := parsePayload(payload, &p); err != nil {
		return p, fmt.Errorf("nflog: packet with prefix %q: %w", p.Prefix, err)
	}
	return p, nil
}

// IPv6 extension headers that may come between the fixed header and the transport one.
const (
	ipv6HopByHop = 0
	ipv6Routing  = 43
	ipv6Fragment = 44
	ipv6DestOpts = 60
)

// parsePayload reads the IP header and, for the first fragment of TCP, UDP and SCTP,
// the ports (the first four bytes of all three).
func parsePayload(b []byte, p *Packet) error {
	if len(b) < 1 {
		return errors.New("empty payload")
	}
	var l4 []byte
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return fmt.Errorf("IPv4 header truncated to %d bytes", len(b))
		}
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 || len(b) < ihl {
			return fmt.Errorf("IPv4 header length %d in %d bytes", ihl, len(b))
		}
		p.Src = netip.AddrFrom4([4]byte(b[12:16]))
		p.Dst = netip.AddrFrom4([4]byte(b[16:20]))
		p.Proto = b[9]
		if binary.BigEndian.Uint16(b[6:8])&0x1fff == 0 { // not a later fragment
			l4 = b[ihl:]
		}
	case 6:
		if len(b) < 40 {
			return fmt.Errorf("IPv6 header truncated to %d bytes", len(b))
		}
		p.Src = netip.AddrFrom16([16]byte(b[8:24]))
		p.Dst = netip.AddrFrom16([16]byte(b[24:40]))
		next, rest := b[6], b[40:]
	ext:
		for {
			switch next {
			case ipv6HopByHop, ipv6Routing, ipv6DestOpts:
				if len(rest) < 8 || len(rest) < (int(rest[1])+1)*8 {
					rest = nil
					break ext
				}
				next, rest = rest[0], rest[(int(rest[1])+1)*8:]
			case ipv6Fragment:
				if len(rest) < 8 {
					rest = nil
					break ext
				}
				first := binary.BigEndian.Uint16(rest[2:4])&0xfff8 == 0
				next, rest = rest[0], rest[8:]
				if !first {
					rest = nil
				}
			default:
				break ext
			}
		}
		p.Proto = next
		l4 = rest
	default:
		return fmt.Errorf("IP version %d", b[0]>>4)
	}
	switch p.Proto {
	case unix.IPPROTO_TCP, unix.IPPROTO_UDP, unix.IPPROTO_SCTP:
		// A truncated or later-fragment packet keeps zero ports rather than failing:
		// the addresses are still worth reporting.
		if len(l4) >= 4 {
			p.SPort = binary.BigEndian.Uint16(l4[0:2])
			p.DPort = binary.BigEndian.Uint16(l4[2:4])
		}
	}
	return nil
}
