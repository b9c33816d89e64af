// Package explain answers "may this pod reach that pod (or address) on this port, and
// why?" from the same compiler and tracer the agent uses: it compiles the ruleset of
// every node that judges the connection and traces the connection's first packet
// through each (tracer.Judge: the source's node, then the destination's), and reads
// the path back as policy terms through the compiled ruleset's Owners — which policies
// isolate each side, which rule of which policy allows the connection, or that none of
// the isolating policies has a rule allowing it. CheckKernel compares what the verdict
// depends on with a table read from a kernel (drift). The package is pure: no kernel,
// no API client.
package explain

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
	"github.com/nftpolicy/nftpolicy/pkg/tracer"
)

// Request is one question.
type Request struct {
	// From is the source pod, "namespace/name".
	From string
	// To is the destination: a pod "namespace/name" or an IP address (a pod's address
	// counts as that pod; any other address is outside the cluster).
	To string
	// Protocol and Port are the destination port.
	Protocol corev1.Protocol
	Port     uint16
	// Family picks the address family when both ends have both; 0 prefers IPv4.
	Family ruleset.Family
}

// ParsePort parses "80", "80/TCP", "53/udp", "5000/SCTP" (TCP by default).
func ParsePort(s string) (corev1.Protocol, uint16, error) {
	num, proto, _ := strings.Cut(s, "/")
	p := corev1.ProtocolTCP
	if proto != "" {
		p = corev1.Protocol(strings.ToUpper(proto))
		if _, ok := compiler.ProtocolNumber(p); !ok {
			return "", 0, fmt.Errorf("port %q: unknown protocol %q (TCP, UDP or SCTP)", s, proto)
		}
	}
	n, err := strconv.ParseUint(num, 10, 16)
	if err != nil || n == 0 {
		return "", 0, fmt.Errorf("port %q: want a number 1-65535, optionally /TCP, /UDP or /SCTP", s)
	}
	return p, uint16(n), nil
}

// Endpoint is one resolved end of the connection.
type Endpoint struct {
	// Pod is nil for an address outside the cluster's pods.
	Pod  *model.Pod
	Addr netip.Addr
}

// Name is "ns/name" for a pod, the address otherwise.
func (e Endpoint) Name() string {
	if e.Pod != nil {
		return e.Pod.Key()
	}
	return e.Addr.String()
}

func (e Endpoint) tracer() tracer.Endpoint {
	if e.Pod == nil {
		return tracer.Endpoint{Addr: e.Addr}
	}
	return tracer.Endpoint{Addr: e.Addr, Node: e.Pod.NodeName, Host: e.Pod.HostNetwork}
}

// Side is what policy says about one end: the source's egress or the destination's
// ingress.
type Side struct {
	Direction compiler.Direction
	Endpoint  string
	// Node is the node whose ruleset judges this side; empty when no node does (an
	// address outside the cluster).
	Node string
	// Judged is false when no ruleset decided about this side: the endpoint is outside
	// the cluster or the packet was dropped before reaching this side's chain.
	Judged bool
	// Isolated: policies select the endpoint for this direction, listed in Policies.
	Isolated bool
	Policies []string
	// Allowed is this side's verdict; AllowedBy the policy rule that accepted
	// ("ns/name ingress rule 0", or a ClusterNetworkPolicy rule as
	// ruleset.RuleOwner.ClusterText names it), DeniedBy what dropped: a ClusterNetworkPolicy rule, or the comment of
	// the isolation chain's drop.
	Allowed   bool
	AllowedBy string
	DeniedBy  string
	// Tier is the tier that decided: "Admin", "NetworkPolicy", "Baseline", or empty
	// when no rule did (not selected, or no rule of the selecting ClusterNetworkPolicies
	// matched: allowed by default).
	Tier string
	// Passed names the Admin-tier Pass rule that handed the connection on, if any.
	Passed string
	// Audit says what policies in audit mode (nftpolicy.io/mode: audit, or the agent's
	// --audit) would change on this side, as the kernel counts it: "x/deny-all would
	// deny it" (it passes) or "x/allow-z would allow it" (it is dropped). Empty when they
	// agree with the enforced verdict or none selects the endpoint.
	Audit string
}

// Hop is one node's judgement.
type Hop struct {
	tracer.Hop
	Packet  tracer.Packet
	Ruleset *ruleset.Ruleset
	Trace   tracer.Result
}

// Explanation is the answer.
type Explanation struct {
	From, To        Endpoint
	Protocol        corev1.Protocol
	Port            uint16
	Allowed         bool
	Egress, Ingress Side
	Hops            []Hop
	// Problems are the compiler's complaints about the input (also enforced this way
	// by the agent: the faulty part of a policy allows nothing).
	Problems []compiler.Problem
}

// Explain answers req over the cluster state snap (its NodeName is ignored: every
// judging node's ruleset is compiled). opts must be the agent's (Table, Revocation).
// To ask many questions over one snapshot, build an Explainer once.
func Explain(snap *model.Snapshot, req Request, opts compiler.Options) (*Explanation, error) {
	return NewExplainer(snap, opts).Explain(req)
}

// Explainer answers any number of requests over one cluster state, compiling each
// judging node's ruleset (and indexing its sets for the tracer) only the first time a
// request needs it: `nftpolicy reach` asks it about every pair of pods, which would
// otherwise compile two rulesets per pair. It is safe for concurrent use; snap must not
// change while it is in use.
type Explainer struct {
	snap   *model.Snapshot
	opts   compiler.Options
	pods   map[string]*model.Pod
	owners map[netip.Addr]*model.Pod

	mu    sync.Mutex
	nodes map[string]*compiledNode
}

// compiledNode is one node's ruleset, its tracer and the compiler's complaints,
// compiled once.
type compiledNode struct {
	once     sync.Once
	rs       *ruleset.Ruleset
	tracer   *tracer.Tracer
	problems []compiler.Problem
}

// NewExplainer prepares an Explainer over snap (its NodeName is ignored). opts must be
// the agent's (Table, Revocation).
func NewExplainer(snap *model.Snapshot, opts compiler.Options) *Explainer {
	e := &Explainer{snap: snap, opts: opts, pods: make(map[string]*model.Pod, len(snap.Pods)),
		owners: model.IPOwners(snap.Pods), nodes: map[string]*compiledNode{}}
	for _, p := range snap.Pods {
		e.pods[p.Key()] = p
	}
	return e
}

// node returns node's compiled ruleset, compiling it on first use. The lock only
// guards the map: requests judged on other nodes do not wait for a compile.
func (e *Explainer) node(name string) *compiledNode {
	e.mu.Lock()
	n := e.nodes[name]
	if n == nil {
		n = &compiledNode{}
		e.nodes[name] = n
	}
	e.mu.Unlock()
	n.once.Do(func() {
		s := *e.snap
		s.NodeName = name
		res := compiler.Compile(&s, e.opts)
		n.rs, n.problems = res.Ruleset, res.Problems
		// A Tracer indexes each set on first use and keeps the index, so every later
		// request judged on this node looks its addresses up in O(1).
		n.tracer = tracer.New(res.Ruleset)
	})
	return n
}

// resolve finds the ends of req and the protocol number.
func (e *Explainer) resolve(req Request) (from, dst Endpoint, proto uint8, err error) {
	protoNum, ok := compiler.ProtocolNumber(req.Protocol)
	if !ok {
		return from, dst, 0, fmt.Errorf("protocol %q: want TCP, UDP or SCTP", req.Protocol)
	}
	src := e.pods[req.From]
	if src == nil {
		return from, dst, 0, fmt.Errorf("--from %s: no such pod", req.From)
	}
	if !src.Eligible() {
		return from, dst, 0, fmt.Errorf("--from %s: pod takes no part in policy (no IP, ended, or not scheduled)", req.From)
	}
	if a, err := netip.ParseAddr(req.To); err == nil {
		a = a.Unmap()
		dst = Endpoint{Pod: e.owners[a], Addr: a}
	} else {
		p := e.pods[req.To]
		if p == nil {
			return from, dst, 0, fmt.Errorf("--to %s: no such pod (want namespace/name or an IP address)", req.To)
		}
		if !p.Eligible() {
			return from, dst, 0, fmt.Errorf("--to %s: pod takes no part in policy (no IP, ended, or not scheduled)", req.To)
		}
		dst = Endpoint{Pod: p}
	}
	srcAddr, dstAddr, err := pickAddrs(src, dst, req.Family)
	if err != nil {
		return from, dst, 0, err
	}
	dst.Addr = dstAddr
	return Endpoint{Pod: src, Addr: srcAddr}, dst, protoNum, nil
}

// Allowed answers req's verdict only, as Explain's Allowed: the same ends, rulesets
// and walk (tracer.Allowed is tracer.Judge without recording the path), for callers
// that judge many pairs and explain few.
func (e *Explainer) Allowed(req Request) (bool, error) {
	from, dst, protoNum, err := e.resolve(req)
	if err != nil {
		return false, err
	}
	return tracer.Allowed(from.tracer(), dst.tracer(), tracer.Packet{Proto: protoNum, DPort: req.Port},
		func(node string) (*tracer.Tracer, error) { return e.node(node).tracer, nil })
}

// Explain answers req.
func (e *Explainer) Explain(req Request) (*Explanation, error) {
	from, dst, protoNum, err := e.resolve(req)
	if err != nil {
		return nil, err
	}
	src := from.Pod
	ex := &Explanation{From: from, To: dst, Protocol: req.Protocol, Port: req.Port,
		Egress:  Side{Direction: compiler.Egress, Endpoint: from.Name(), Node: src.NodeName},
		Ingress: Side{Direction: compiler.Ingress, Endpoint: dst.Name()}}
	if dst.Pod != nil {
		ex.Ingress.Node = dst.Pod.NodeName
	}
	seen := map[string]bool{}
	rulesets := map[string]*ruleset.Ruleset{}
	tracerOf := func(node string) (*tracer.Tracer, error) {
		n := e.node(node)
		for _, p := range n.problems {
			if k := p.Error(); !seen[k] {
				seen[k] = true
				ex.Problems = append(ex.Problems, p)
			}
		}
		rulesets[node] = n.rs
		return n.tracer, nil
	}
	j, err := tracer.Judge(from.tracer(), dst.tracer(), tracer.Packet{Proto: protoNum, DPort: req.Port}, tracerOf)
	if err != nil {
		return nil, err
	}
	ex.Allowed = j.Allowed()
	for _, h := range j.Hops {
		hop := Hop{Hop: h.Hop, Packet: h.Packet, Ruleset: rulesets[h.Node], Trace: h.Result}
		ex.Hops = append(ex.Hops, hop)
		if h.Node == ex.Egress.Node {
			ex.Egress.read(hop)
		}
		if h.Node == ex.Ingress.Node {
			ex.Ingress.read(hop)
		}
	}
	return ex, nil
}

// pickAddrs chooses one address family both ends have.
func pickAddrs(src *model.Pod, dst Endpoint, fam ruleset.Family) (netip.Addr, netip.Addr, error) {
	addrOf := func(ips []netip.Addr, is4 bool) (netip.Addr, bool) {
		for _, a := range ips {
			if a.Is4() == is4 {
				return a, true
			}
		}
		return netip.Addr{}, false
	}
	var dstIPs []netip.Addr
	switch {
	case dst.Addr.IsValid():
		dstIPs = []netip.Addr{dst.Addr}
	default:
		dstIPs = dst.Pod.IPs
	}
	order := []bool{true, false}
	switch fam {
	case ruleset.IPv4:
		order = []bool{true}
	case ruleset.IPv6:
		order = []bool{false}
	}
	for _, is4 := range order {
		s, ok1 := addrOf(src.IPs, is4)
		d, ok2 := addrOf(dstIPs, is4)
		if ok1 && ok2 {
			return s, d, nil
		}
	}
	return netip.Addr{}, netip.Addr{}, fmt.Errorf("%s and %s have no address of a common family", src.Key(), dst.Name())
}

// read takes this side's part of a hop's trace, through the owners of the hop's
// compiled ruleset: the dispatch to the chain of the policies selecting the endpoint
// (tier chains and the isolation chain name them), the rule that accepted or dropped,
// and which tier it belongs to.
func (s *Side) read(h Hop) {
	s.Allowed = true
	owners := h.Ruleset.Owners
	for _, st := range h.Trace.Steps {
		co := owners.Chain(st.Chain)
		if co == nil || co.Direction != s.Direction {
			continue
		}
		s.Judged = true
		ro, _ := owners.Rule(st.Chain, st.Rule)
		target := owners.Chain(st.Target)
		// Audit mode: the shadow copies only pick the enforced copy to go on with; the
		// audit chains count where the two disagree.
		switch co.Role {
		case ruleset.RoleShadow:
			if target != nil && target.Role != ruleset.RoleShadow {
				// Entering the enforced copy: its policies are what the side is judged by.
				s.readTarget(target, ruleset.RoleDispatch)
			}
			continue
		case ruleset.RoleAuditDeny, ruleset.RoleAuditAllow:
			if ro.Role == co.Role {
				s.Audit = fmt.Sprintf("%s would %s it", policyList(co.Policies), map[ruleset.Role]string{ruleset.RoleAuditDeny: "deny", ruleset.RoleAuditAllow: "allow"}[co.Role])
			}
			continue
		}
		verdict := st.Verdict
		if target != nil {
			switch target.Role {
			case ruleset.RoleAuditDeny:
				verdict = "accept" // what the enforced policies do; the audit chain counts
			case ruleset.RoleAuditAllow:
				verdict = "drop"
			case ruleset.RoleShadow:
				if ro.Role == ruleset.RoleDispatch {
					s.Isolated, s.Policies = false, nil
				}
			}
		}
		if target != nil && st.Target != st.Chain {
			s.readTarget(target, ro.Role)
		}
		if ro.Role == ruleset.RoleClusterPass && ro.Cluster != nil && ro.Cluster.Tier == "Admin" {
			s.Passed = ro.ClusterText(co.Direction)
		}
		switch verdict {
		case "accept":
			switch {
			case ro.Role == ruleset.RoleAllow:
				s.AllowedBy = fmt.Sprintf("%s %s rule %d", ro.Policy, co.Direction, ro.Rule)
				s.Tier = "NetworkPolicy"
			case ro.Cluster != nil:
				s.AllowedBy = ro.ClusterText(co.Direction)
				s.Tier = ro.Cluster.Tier
			}
		case "drop":
			s.Allowed = false
			s.DeniedBy = st.Comment
			switch {
			case ro.Cluster != nil:
				s.DeniedBy = ro.ClusterText(co.Direction)
				s.Tier = ro.Cluster.Tier
			case co.Role == ruleset.RoleIsolation:
				s.Tier = "NetworkPolicy"
			}
		}
	}
}

// readTarget notes the policies of a chain the side's path goes to: the chain a
// dispatch (role: how it was reached) sends the endpoint to starts the list.
func (s *Side) readTarget(target *ruleset.ChainOwner, role ruleset.Role) {
	switch target.Role {
	case ruleset.RoleIsolation, ruleset.RoleAdminTier, ruleset.RoleBaselineTier:
		if role == ruleset.RoleDispatch {
			s.Isolated = true
			s.Policies = nil
		}
		for _, p := range target.Policies {
			if name := p.String(); !slices.Contains(s.Policies, name) {
				s.Policies = append(s.Policies, name)
			}
		}
	}
}

func policyList(refs []ruleset.PolicyRef) string {
	names := make([]string, len(refs))
	for i, r := range refs {
		names[i] = r.String()
	}
	return strings.Join(names, ", ")
}

// Format prints the explanation for people.
func (ex *Explanation) Format() string {
	var b strings.Builder
	verdict := "ALLOWED"
	if !ex.Allowed {
		verdict = "DENIED"
	}
	fmt.Fprintf(&b, "%s -> %s %s/%d: %s\n", endpointText(ex.From), endpointText(ex.To), ex.Protocol, ex.Port, verdict)
	for _, s := range []Side{ex.Egress, ex.Ingress} {
		fmt.Fprintf(&b, "  %s of %s: %s\n", s.Direction, s.Endpoint, s.summary())
	}
	b.WriteString("  path:\n")
	for _, h := range ex.Hops {
		v := "accept"
		if !h.Trace.Allowed() {
			v = "drop"
		}
		fmt.Fprintf(&b, "    %s, hook %s: %s\n", h.Node, h.Hook, v)
		for _, st := range h.Trace.Steps {
			fmt.Fprintf(&b, "      %s\n", st)
		}
	}
	for _, p := range ex.Problems {
		fmt.Fprintf(&b, "  warning: %v\n", p)
	}
	return b.String()
}

func endpointText(e Endpoint) string {
	if e.Pod == nil {
		return e.Addr.String() + " (outside the cluster's pods)"
	}
	return fmt.Sprintf("%s (%s on %s)", e.Pod.Key(), e.Addr, e.Pod.NodeName)
}

func (s Side) summary() string {
	if s.Audit == "" {
		return s.verdictText()
	}
	return s.verdictText() + "; audit: " + s.Audit + " (not enforced)"
}

func (s Side) verdictText() string {
	cluster := false
	for _, p := range s.Policies {
		if strings.HasPrefix(p, ruleset.KindClusterNetworkPolicy+"/") {
			cluster = true
		}
	}
	if cluster && s.Judged && s.Isolated {
		// Selected by ClusterNetworkPolicies (and maybe NetworkPolicies): name the tier.
		var b strings.Builder
		fmt.Fprintf(&b, "selected by %s; ", strings.Join(s.Policies, ", "))
		if s.Passed != "" {
			fmt.Fprintf(&b, "passed on by %s; ", s.Passed)
		}
		switch {
		case !s.Allowed && s.Tier == "NetworkPolicy":
			b.WriteString("DENIED: no NetworkPolicy rule allows it")
		case !s.Allowed:
			fmt.Fprintf(&b, "DENIED by %s", s.DeniedBy)
		case s.AllowedBy != "":
			fmt.Fprintf(&b, "allowed by %s", s.AllowedBy)
		default:
			b.WriteString("allowed: no rule of the selecting policies matched")
		}
		fmt.Fprintf(&b, " (judged on %s)", s.Node)
		return b.String()
	}
	switch {
	case s.Node == "":
		return "not judged: not a pod of the cluster, no policy applies"
	case !s.Judged:
		return "not judged: the packet is dropped before"
	case !s.Isolated:
		return fmt.Sprintf("not isolated (no NetworkPolicy selects it for %s; judged on %s)", s.Direction, s.Node)
	case s.Allowed && s.AllowedBy != "":
		return fmt.Sprintf("isolated by %s; allowed by %s (judged on %s)", strings.Join(s.Policies, ", "), s.AllowedBy, s.Node)
	case s.Allowed:
		return fmt.Sprintf("isolated by %s; allowed (judged on %s)", strings.Join(s.Policies, ", "), s.Node)
	default:
		return fmt.Sprintf("isolated by %s; DENIED: no rule of them allows it (judged on %s)", strings.Join(s.Policies, ", "), s.Node)
	}
}
