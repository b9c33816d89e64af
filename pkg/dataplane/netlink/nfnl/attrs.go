package nfnl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	nl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Attrs is a netlink attribute writer that knows the offset of everything it writes, so
// that an extended ACK pointing at an attribute can be mapped back to the object that
// failed (the kernel's error codes carry no context of their own). The first error
// (an attribute longer than its 16-bit length field) is kept and reported by
// NewMessage or Conn.Request.
type Attrs struct {
	b   []byte
	err error
}

// Put writes one attribute. nf_tables wants its integers big-endian; the attribute
// header is host-endian like every netlink header.
func (a *Attrs) Put(typ uint16, data []byte) {
	l := 4 + len(data)
	if l > 0xffff {
		a.SetErr(fmt.Errorf("netlink attribute %d too long (%d bytes)", typ, l))
	}
	a.b = binary.NativeEndian.AppendUint16(a.b, uint16(l))
	a.b = binary.NativeEndian.AppendUint16(a.b, typ)
	a.b = append(a.b, data...)
	a.pad()
}

func (a *Attrs) pad() {
	for len(a.b)%4 != 0 {
		a.b = append(a.b, 0)
	}
}

// PutString writes a NUL-terminated string attribute.
func (a *Attrs) PutString(typ uint16, s string) { a.Put(typ, append([]byte(s), 0)) }

// PutU32 writes a big-endian u32 attribute.
func (a *Attrs) PutU32(typ uint16, v uint32) { a.Put(typ, binary.BigEndian.AppendUint32(nil, v)) }

// PutU64 writes a big-endian u64 attribute.
func (a *Attrs) PutU64(typ uint16, v uint64) { a.Put(typ, binary.BigEndian.AppendUint64(nil, v)) }

// Begin opens a nested attribute and returns its offset; End closes it.
func (a *Attrs) Begin(typ uint16) int {
	off := len(a.b)
	a.b = binary.NativeEndian.AppendUint16(a.b, 0)
	a.b = binary.NativeEndian.AppendUint16(a.b, typ|unix.NLA_F_NESTED)
	return off
}

// End closes the nested attribute Begin opened at off.
func (a *Attrs) End(off int) {
	l := len(a.b) - off
	if l > 0xffff {
		// The attribute length is 16 bits: this is why element lists are chunked.
		a.SetErr(fmt.Errorf("nested netlink attribute too long (%d bytes)", l))
	}
	binary.NativeEndian.PutUint16(a.b[off:], uint16(l))
}

// Nested writes a nested attribute holding the attributes written by f.
func (a *Attrs) Nested(typ uint16, f func()) {
	off := a.Begin(typ)
	f()
	a.End(off)
}

// SetErr records the first error met while writing.
func (a *Attrs) SetErr(err error) {
	if a.err == nil {
		a.err = err
	}
}

// Len is the number of bytes written so far: the offset of the next attribute.
func (a *Attrs) Len() int { return len(a.b) }

// Bytes returns the attributes written so far.
func (a *Attrs) Bytes() []byte { return a.b }

// Err is the first error met while writing, if any.
func (a *Attrs) Err() error { return a.err }

// NewDecoder decodes attributes whose integers are big-endian, as nf_tables writes them.
func NewDecoder(b []byte) (*nl.AttributeDecoder, error) {
	ad, err := nl.NewAttributeDecoder(b)
	if err != nil {
		return nil, err
	}
	ad.ByteOrder = binary.BigEndian
	return ad, nil
}

// MessageDecoder decodes the attributes of an nf_tables message (after its nfgenmsg).
func MessageDecoder(m syscall.NetlinkMessage) (*nl.AttributeDecoder, error) {
	if len(m.Data) < nfgenLen {
		return nil, errors.New("short nf_tables message")
	}
	return NewDecoder(m.Data[nfgenLen:])
}
