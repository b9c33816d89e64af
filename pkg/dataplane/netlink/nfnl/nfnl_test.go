package nfnl

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	nl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/internal/testns"
)

func tableMsg(t *testing.T, typ int, flags nl.HeaderFlags, name string) Message {
	t.Helper()
	a := &Attrs{}
	a.PutString(unix.NFTA_TABLE_NAME, name)
	m, err := NewMessage(unix.NFPROTO_INET, typ, flags, a, "table "+name, nil)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// A batch is BEGIN, the messages, END, numbered consecutively; only the last message
// asks for an ACK; BEGIN and END name the nf_tables subsystem in res_id, as nft writes
// them (the goldens of package netlink compare them with nft's bytes too).
func TestFrame(t *testing.T) {
	msgs := []Message{
		tableMsg(t, unix.NFT_MSG_NEWTABLE, nl.Create, "a"),
		tableMsg(t, unix.NFT_MSG_DELTABLE, 0, "a"),
		tableMsg(t, unix.NFT_MSG_NEWTABLE, nl.Create, "a"),
	}
	out := Frame(msgs, 41)
	if len(out) != len(msgs)+2 {
		t.Fatalf("%d messages, want %d", len(out), len(msgs)+2)
	}
	for i, m := range out {
		if m.Header.Sequence != uint32(41+i) {
			t.Errorf("message %d: sequence %d, want %d", i, m.Header.Sequence, 41+i)
		}
	}
	for _, i := range []int{0, len(out) - 1} {
		want := nl.HeaderType(unix.NFNL_MSG_BATCH_BEGIN)
		if i > 0 {
			want = unix.NFNL_MSG_BATCH_END
		}
		if m := out[i]; m.Header.Type != want || m.Header.Flags != nl.Request || string(m.Data) != "\x00\x00\x00\x0a" {
			t.Errorf("message %d: %+v %x", i, m.Header, m.Data)
		}
	}
	for i, m := range msgs {
		got := out[i+1]
		want := nl.Request | m.Flags
		if i == len(msgs)-1 {
			want |= nl.Acknowledge
		}
		if got.Header.Flags != want || got.Header.Type != nl.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8|m.Type) || string(got.Data) != string(m.Data) {
			t.Errorf("message %d: %+v, want flags %#x type %d", i+1, got.Header, want, m.Type)
		}
	}
}

func TestAttrs(t *testing.T) {
	a := &Attrs{}
	a.PutString(1, "t")
	off := a.Len()
	a.Nested(2, func() {
		a.PutU32(1, 0x01020304)
		a.PutU64(2, 5)
	})
	m, err := NewMessage(unix.NFPROTO_INET, unix.NFT_MSG_NEWSET, 0, a, "set", []Span{{Off: off, What: func() string { return "nest" }}})
	if err != nil {
		t.Fatal(err)
	}
	ad, err := MessageDecoder(syscall.NetlinkMessage{Data: m.Data})
	if err != nil {
		t.Fatal(err)
	}
	var name string
	var u32 uint32
	var u64 uint64
	for ad.Next() {
		switch ad.Type() {
		case 1:
			name = ad.String()
		case 2:
			ad.Nested(func(nad *nl.AttributeDecoder) error {
				nad.ByteOrder = binary.BigEndian
				for nad.Next() {
					switch nad.Type() {
					case 1:
						u32 = nad.Uint32()
					case 2:
						u64 = nad.Uint64()
					}
				}
				return nil
			})
		}
	}
	if err := ad.Err(); err != nil || name != "t" || u32 != 0x01020304 || u64 != 5 {
		t.Errorf("decoded %q %#x %d (%v)", name, u32, u64, err)
	}
	// Spans count from the nlmsghdr, as the kernel's NLMSGERR_ATTR_OFFS does.
	if got := m.Describe(nlmsgHdrLen + nfgenLen + off); got != "set: nest" {
		t.Errorf("Describe(nest) = %q", got)
	}
	if got := m.Describe(nlmsgHdrLen + nfgenLen); got != "set" {
		t.Errorf("Describe(name) = %q", got)
	}

	// A nest longer than the 16-bit length field is an error naming the object, not a
	// silently wrapped length.
	big := &Attrs{}
	big.Nested(1, func() {
		for range 20 {
			big.Put(1, make([]byte, 4000))
		}
	})
	if _, err := NewMessage(unix.NFPROTO_INET, unix.NFT_MSG_NEWSETELEM, 0, big, "elements of set s", nil); err == nil || !strings.Contains(err.Error(), "elements of set s") {
		t.Errorf("oversized nest: %v", err)
	}
	if _, _, err := (&Conn{}).Request(unix.NFPROTO_INET, unix.NFT_MSG_GETSET, true, big); err == nil {
		t.Errorf("Request sent an oversized nest")
	}
}

// An NLMSG_ERROR with extended ACK TLVs gives the errno, the kernel's message and the
// offset of the offending attribute.
func TestParseError(t *testing.T) {
	var data []byte
	errno := -int32(unix.ENOENT)
	data = binary.NativeEndian.AppendUint32(data, uint32(errno))
	// The original request's header (capped: no payload).
	data = append(data, make([]byte, nlmsgHdrLen)...)
	ae := nl.NewAttributeEncoder()
	ae.String(nlmsgerrAttrMsg, "no such set")
	ae.Uint32(nlmsgerrAttrOffs, 44)
	tlvs, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	data = append(data, tlvs...)
	e := parseError(syscall.NetlinkMessage{Header: syscall.NlMsghdr{Type: unix.NLMSG_ERROR, Flags: nlmFCapped | nlmFAckTLVs}, Data: data})
	if e.errno != unix.ENOENT || e.msg != "no such set" || e.off != 44 {
		t.Errorf("got %+v", e)
	}
	if e := parseError(syscall.NetlinkMessage{Data: make([]byte, 4)}); e.errno != 0 || e.off != -1 {
		t.Errorf("ACK: got %+v", e)
	}
}

// In a throwaway namespace: a failing batch is refused as a whole, its error names the
// message that failed, and requests and dumps read the result.
func TestConnInKernel(t *testing.T) {
	ns := testns.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Dial(ctx, Config{NetNS: ns, SockBuf: 1 << 20, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	chain := func(table, name string) Message {
		a := &Attrs{}
		a.PutString(unix.NFTA_CHAIN_TABLE, table)
		a.PutString(unix.NFTA_CHAIN_NAME, name)
		m, err := NewMessage(unix.NFPROTO_INET, unix.NFT_MSG_NEWCHAIN, nl.Create, a, "add chain "+name, nil)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	err = c.SendBatch([]Message{tableMsg(t, unix.NFT_MSG_NEWTABLE, nl.Create, "a"), chain("missing", "c"), chain("a", "d")})
	if !errors.Is(err, unix.ENOENT) || !strings.HasPrefix(err.Error(), "add chain c: ") {
		t.Fatalf("batch with a chain in a missing table: %v", err)
	}
	get := func(name string) error {
		a := &Attrs{}
		a.PutString(unix.NFTA_TABLE_NAME, name)
		_, _, err := c.Request(unix.NFPROTO_INET, unix.NFT_MSG_GETTABLE, false, a)
		return err
	}
	if err := get("a"); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("table of the failed batch: %v, want ENOENT (all or nothing)", err)
	}

	if err := c.SendBatch([]Message{tableMsg(t, unix.NFT_MSG_NEWTABLE, nl.Create, "a"), chain("a", "c"), chain("a", "d")}); err != nil {
		t.Fatal(err)
	}
	if err := get("a"); err != nil {
		t.Fatalf("get table: %v", err)
	}
	a := &Attrs{}
	a.PutString(unix.NFTA_CHAIN_TABLE, "a")
	chains, intr, err := c.Request(unix.NFPROTO_INET, unix.NFT_MSG_GETCHAIN, true, a)
	if err != nil || intr || len(chains) != 2 {
		t.Fatalf("dump chains: %d chains, interrupted %v, %v", len(chains), intr, err)
	}
}

// Without a deadline from the context or the Config, Dial refuses rather than let a
// lost reply block forever.
func TestDialNeedsDeadline(t *testing.T) {
	if c, err := Dial(context.Background(), Config{}); err == nil {
		c.Close()
		t.Fatal("Dial without any deadline succeeded")
	}
}
