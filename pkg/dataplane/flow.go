package dataplane

import "net/netip"

// Tuple is one direction of a conntrack entry.
type Tuple struct {
	Src, Dst     netip.Addr
	SPort, DPort uint16
}

// Flow is a conntrack entry as pkg/dataplane/conntrack lists it and pkg/revoke judges
// it. It lives here, below both, so that the pure decision does not import kernel code
// and the kernel code does not import the decision.
type Flow struct {
	Proto uint8
	// Orig is the direction of the first packet, as it arrived (before DNAT).
	Orig Tuple
	// Reply is the expected reply; its source is the real destination after DNAT
	// (a Service ClusterIP resolved to a pod), which is what the filter hooks saw.
	Reply Tuple
	Zone  uint16
	// Mark is the entry's conntrack mark.
	Mark uint32
	// Closed is set for TCP entries in TIME_WAIT or CLOSE: the connection is over, so
	// there is nothing to revoke or restore (a new SYN on the tuple replaces the entry).
	Closed bool
}
