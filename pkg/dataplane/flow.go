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

// AddrRange is the closed interval of addresses [From, To], both of one family.
type AddrRange struct {
	From, To netip.Addr
}

// Contains reports whether a lies in the range (an address of the other family never does).
func (r AddrRange) Contains(a netip.Addr) bool {
	a = a.Unmap()
	return a.BitLen() == r.From.BitLen() && r.From.Compare(a) <= 0 && a.Compare(r.To) <= 0
}

// Single reports whether the range holds one address.
func (r AddrRange) Single() bool { return r.From == r.To }

// FlowScope says which connections a ruleset change can have given a different
// verdict, by the addresses of their first packet as the filter hooks saw it (source
// Orig.Src, destination Reply.Src: after destination NAT). It is what revocation
// judges: a flow outside the scope kept its verdict, so it needs no look. The empty
// scope holds no flow; All holds every flow.
type FlowScope struct {
	All bool
	// Src and Dst: a flow whose first packet's source lies in one of Src, or whose
	// destination lies in one of Dst, is in the scope.
	Src, Dst []AddrRange
}

// Empty reports whether the scope holds no flow.
func (s FlowScope) Empty() bool { return !s.All && len(s.Src) == 0 && len(s.Dst) == 0 }

// Add widens s to hold every flow of o too.
func (s *FlowScope) Add(o FlowScope) {
	if s.All || o.All {
		*s = FlowScope{All: true}
		return
	}
	s.Src = append(s.Src, o.Src...)
	s.Dst = append(s.Dst, o.Dst...)
}

// Contains reports whether flow f is in the scope.
func (s FlowScope) Contains(f Flow) bool {
	if s.All {
		return true
	}
	for _, r := range s.Src {
		if r.Contains(f.Orig.Src) {
			return true
		}
	}
	for _, r := range s.Dst {
		if r.Contains(f.Reply.Src) {
			return true
		}
	}
	return false
}

// Size is how many address ranges the scope names (for logs and metrics); -1 for All.
func (s FlowScope) Size() int {
	if s.All {
		return -1
	}
	return len(s.Src) + len(s.Dst)
}
