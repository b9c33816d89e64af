// Package revoke decides which established connections a new ruleset no longer allows.
//
// nftables accepts `ct state established,related` before any policy rule, so a policy
// change that revokes a flow would leave connections opened earlier running for as long
// as they last. After each ruleset change the agent lists the node's conntrack entries
// and asks this package which ones the new ruleset would refuse as new connections.
// Those entries get the revoked conntrack mark, and the first rule of every base chain
// drops packets of marked connections, in both directions.
//
// Marking beats deleting the entry: after a deletion, the next packet re-creates the
// entry by TCP loose pickup or as a fresh UDP flow, and when that packet happens to come
// from the server, conntrack takes the server for the initiator — a direction policy may
// well allow — and every packet of the client then passes as a reply. A marked entry
// keeps both directions tied to the original initiator. When a later change allows the
// flow again, the mark is cleared and the connection resumes.
//
// The entries are dataplane.Flow values (pkg/dataplane/conntrack lists them); this
// package is pure and never touches the kernel.
//
// The verdict comes from the packet tracer, the same oracle the compiler is tested with,
// so revocation can never disagree with the rules in the kernel.
package revoke

import (
	"net/netip"

	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
	"github.com/nftpolicy/nftpolicy/pkg/tracer"
)

// firstPacket is the first packet of flow f as the filter hooks saw it: destination NAT
// (prerouting/output) has happened, source NAT (postrouting) has not.
func firstPacket(f dataplane.Flow, local func(netip.Addr) bool) tracer.Packet {
	p := tracer.Packet{Src: f.Orig.Src, Dst: f.Reply.Src, Proto: f.Proto, DPort: f.Reply.SPort, Hook: ruleset.HookForward}
	switch {
	case local(p.Src):
		p.Hook = ruleset.HookOutput
	case local(p.Dst):
		p.Hook = ruleset.HookInput
	}
	return p
}

// Marks are the conntrack mark bits revocation uses: a flow whose mark&Mask equals
// Revoked is dropped; Cleared records a lifted revocation.
type Marks struct {
	Mask, Revoked, Cleared uint32
}

// Decision lists the entries to mark revoked and the revoked ones to clear.
type Decision struct {
	Revoke, Restore []dataplane.Flow
}

// Decide judges every TCP, UDP and SCTP entry as a new connection under the ruleset
// tr traces. local reports whether an address belongs to this node (it decides the
// hook a flow used).
func Decide(tr *tracer.Tracer, flows []dataplane.Flow, local func(netip.Addr) bool, marks Marks) Decision {
	var d Decision
	// Flows often share their first packet but for the source port (a client's
	// many connections to one server port): each distinct packet is traced once.
	verdicts := map[tracer.Packet]bool{}
	for _, f := range flows {
		// Policy speaks of TCP, UDP and SCTP ports; other protocols (ICMP echo) are only
		// ever allowed or denied wholesale and their entries expire within seconds.
		if f.Proto != ruleset.ProtoTCP && f.Proto != ruleset.ProtoUDP && f.Proto != ruleset.ProtoSCTP {
			continue
		}
		if f.Closed || !f.Orig.Src.IsValid() || !f.Reply.Src.IsValid() {
			continue
		}
		revoked := f.Mark&marks.Mask == marks.Revoked
		p := firstPacket(f, local)
		allowed, ok := verdicts[p]
		if !ok {
			allowed = tr.Allowed(p)
			verdicts[p] = allowed
		}
		switch {
		case !allowed && !revoked:
			d.Revoke = append(d.Revoke, f)
		case allowed && revoked:
			d.Restore = append(d.Restore, f)
		}
	}
	return d
}

// DecideLate judges flows that came to light just after a change was judged (their
// first reply came after the look): only those whose verdict the change turned from
// allowed (under before) to denied (under after) are revoked. A flow denied under both
// is none of this change's doing (it was let through by something else — a kernel
// table that drifted, say — which a pass over every flow handles).
func DecideLate(before, after *tracer.Tracer, flows []dataplane.Flow, local func(netip.Addr) bool, marks Marks) Decision {
	var d Decision
	for _, f := range flows {
		if f.Closed || !f.Orig.Src.IsValid() || !f.Reply.Src.IsValid() || f.Mark&marks.Mask == marks.Revoked {
			continue
		}
		p := firstPacket(f, local)
		if before.Allowed(p) && !after.Allowed(p) {
			d.Revoke = append(d.Revoke, f)
		}
	}
	return d
}
