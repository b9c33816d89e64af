// Package compiler turns a cluster snapshot into the nftables ruleset one node enforces.
// It is pure: no kernel, no API clients, the same output for the same input.
//
// The ruleset it produces (see README "How it works"):
//
//	table inet nftpolicy
//	  chain egress-forward  (hook forward, priority filter-10)  and egress-input (hook input)
//	    ct state established,related accept
//	    ip saddr vmap @egress-pods-v4      ip6 saddr vmap @egress-pods-v6
//	  chain ingress-forward (hook forward, priority filter-5)
//	    ct state established,related accept
//	    ip daddr vmap @ingress-pods-v4     ip6 daddr vmap @ingress-pods-v6
//	  map ingress-pods-v4 { <local isolated pod IP> : jump isolate-in-<policy set> }
//	  chain isolate-in-<hash>   one per distinct set of policies isolating a pod
//	    jump pol-in-<policy>    ... for each policy
//	    counter drop
//	  chain pol-in-<hash>-<ns>.<name>   one rule per (rule, family, peer kind, port kind)
//	    ip saddr @pods-<hash>-v4 meta l4proto . th dport @port-<hash> counter accept
//	    ip saddr @cidr-<hash>-v4 meta l4proto . th dport @port-<hash> counter accept
//
// Per packet that is one verdict-map lookup, then a few set lookups per policy that
// selects the pod, whatever the number of pods and policies in the cluster. Pod churn
// changes only set and map elements; chains change only when policies do.
//
// Egress and ingress are separate base chains: an accept ends only its own base chain,
// so a connection must pass the source's egress chain and then the destination's
// ingress chain. Traffic the node itself sends (kubelet probes) leaves through the
// output hook, where no ingress chain is registered, so it always reaches local pods.
package compiler

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// Names of the fixed objects of the table.
const (
	DefaultTable        = "nftpolicy"
	ChainEgressForward  = "egress-forward"
	ChainEgressInput    = "egress-input"
	ChainIngressForward = "ingress-forward"
	MapEgressV4         = "egress-pods-v4"
	MapEgressV6         = "egress-pods-v6"
	MapIngressV4        = "ingress-pods-v4"
	MapIngressV6        = "ingress-pods-v6"
	// SetNeighbourDiscovery holds the ICMPv6 neighbour-discovery types always accepted.
	SetNeighbourDiscovery = "icmpv6-nd"

	// Egress is judged before ingress on the forward hook. Both run before the
	// conventional filter priority so that an accept in another table cannot come first
	// (and a drop anywhere is final anyway).
	PriorityEgress  = -10
	PriorityIngress = -5
)

// Direction is ingress or egress.
type Direction = ruleset.Direction

const (
	Ingress = ruleset.Ingress
	Egress  = ruleset.Egress
)

// short is the direction in chain names.
func short(d Direction) string {
	if d == Ingress {
		return "in"
	}
	return "eg"
}

// Conntrack mark bits of revoked connections (see pkg/revoke). Two bits, so that
// clearing a revocation writes a non-zero value too (netlink updates cannot write 0):
// RevokedMark means "drop every packet of this connection", ClearedMark "no longer".
const (
	CtMarkMask  uint32 = 0x30000000
	RevokedMark uint32 = 0x10000000
	ClearedMark uint32 = 0x20000000
)

// Options tune compilation.
type Options struct {
	// Table is the table name (default "nftpolicy").
	Table string
	// Revocation adds the rule that drops packets of connections marked revoked
	// (ct mark & CtMarkMask == RevokedMark) ahead of `ct state established accept`.
	Revocation bool
	// Audit is the whole node in audit mode (the agent's --audit): nothing is dropped;
	// every connection the policies would deny is counted (and logged under LogDenied)
	// in an audit-deny chain instead (see audit.go). The caller leaves Revocation off:
	// nothing is to be revoked when nothing is enforced.
	Audit bool
	// SCTPUnsupported says the node's kernel has no SCTP: rules with SCTP ports are
	// still compiled (no packet can match them) and each such port is a Problem
	// wrapping ErrUnsupported.
	SCTPUnsupported bool
	// LogDenied adds to each isolation chain, right before its drop, a rate-limited rule
	// that copies the packet to nflog group LogGroup with the prefix "<chain name> ", so
	// that the agent can name the isolating policies of a denied connection. Only first
	// packets of connections reach isolation chains, so one log is one connection.
	LogDenied bool
	// LogGroup, LogRate (packets per second) and LogBurst tune LogDenied; zero means
	// DefaultLogGroup, DefaultLogRate and DefaultLogBurst.
	LogGroup uint16
	LogRate  uint64
	LogBurst uint32
}

// Defaults of the LogDenied options.
const (
	DefaultLogGroup uint16 = 100
	DefaultLogRate  uint64 = 10
	DefaultLogBurst uint32 = 20
)

// denyLogRule is the rule LogDenied adds to the isolation chain name: it has no verdict,
// so the drop that follows still applies to every packet, logged or not.
func (o Options) denyLogRule(chain string) ruleset.Rule {
	group, rate, burst := o.LogGroup, o.LogRate, o.LogBurst
	if group == 0 {
		group = DefaultLogGroup
	}
	if rate == 0 {
		rate = DefaultLogRate
	}
	if burst == 0 {
		burst = DefaultLogBurst
	}
	return ruleset.Rule{
		Matches: []ruleset.Match{{Kind: ruleset.MatchLimit, Rate: rate, Burst: burst}},
		Log:     &ruleset.Log{Group: group, Prefix: DenyLogPrefix(chain)},
	}
}

// DenyLogPrefix is the nflog prefix of the packets LogDenied logs in an isolation chain;
// IsolationChainOf reverses it. Chain names are at most ruleset.MaxNameLen long, well
// within the kernel's 127-byte prefix.
func DenyLogPrefix(chain string) string { return chain + " " }

// IsolationChainOf returns the chain a LogDenied prefix names — an isolation chain, or
// the deny chain of a ClusterNetworkPolicy Deny rule — and the direction it judges. The prefix is all the kernel hands back with a logged packet,
// so it is decoded here, next to isolationChain which names the chains; the policies
// the chain isolates with are in the compiled ruleset's Owners.
func IsolationChainOf(prefix string) (string, Direction, bool) {
	chain, ok := strings.CutSuffix(prefix, " ")
	if !ok {
		return "", "", false
	}
	for _, dir := range []Direction{Ingress, Egress} {
		// enforce-…: audit mode's copies of isolation and deny chains (audit.go).
		if strings.HasPrefix(chain, isolationChainPrefix(dir)) || strings.HasPrefix(chain, denyChainPrefix(dir)) || strings.HasPrefix(chain, enforceChainPrefix(dir)) {
			return chain, dir, true
		}
	}
	return "", "", false
}

// Result is the compiled ruleset and what could not be compiled.
type Result struct {
	Ruleset  *ruleset.Ruleset
	Problems []Problem
}

// Compile builds the ruleset for snap.NodeName.
func Compile(snap *model.Snapshot, opts Options) *Result {
	u := newSnapshotUniverse(snap, opts)
	c := newCompilation(u, opts)
	c.problems = append(c.problems, u.problems...)
	c.run()
	for _, ps := range c.podSets {
		c.sets[ps.name].Elements = ps.fill(u)
	}
	rs := c.ruleset()
	return &Result{Ruleset: rs, Problems: c.problems}
}

// compilation builds the ruleset's structure: chains, maps, and every set. The
// elements of pod sets (see podSet) are left to the caller, which fills them from the
// whole cluster (Compile) or keeps them up to date pod by pod (Engine): the structure
// depends only on the policies and this node's pods, so it is cheap to rebuild.
type compilation struct {
	u     universe
	opts  Options
	table string
	// validateOnly: parse every rule for its problems, emit nothing (Validate).
	validateOnly bool
	emitted
	// owners is the Owners table of the structure, built on first use.
	owners *ruleset.Owners

	// fragments are the compiled chains of policies, by parsed policy and direction:
	// reused from the previous compilation (prevFragments) while the policy is the
	// same object, so rebuilding the structure after a local pod change does not
	// recompile every policy.
	fragments, prevFragments map[fragmentKey]*fragment
	// clusterFragments are the same for ClusterNetworkPolicies.
	clusterFragments, prevClusterFragments map[clusterFragmentKey]*clusterFragment
	// reportedPairs are the same-priority pairs already reported (samePriority).
	reportedPairs map[string]bool
	// copied: audit mode copied some chains (audit.go); the originals may be unreachable.
	copied bool
	// subjects are the ClusterNetworkPolicies selecting each local pod, kept across
	// compilations like the fragments (clusterSubjects).
	subjects, prevSubjects map[subjectsKey]subjectsVal
}

type fragmentKey struct {
	p   *policy
	dir Direction
}

// emitted is what a compilation adds to the ruleset: chains, sets and their owners,
// and the problems met on the way.
type emitted struct {
	sets        map[string]*ruleset.Set
	chains      map[string]*ruleset.Chain
	podSets     map[string]*podSet
	chainOwners map[string]*ruleset.ChainOwner
	// setOwners holds each set's role (and a dispatch map's direction); ownerTable adds
	// the policy rules that look it up.
	setOwners map[string]ruleset.SetOwner
	problems  []Problem
}

func newEmitted() emitted {
	return emitted{sets: map[string]*ruleset.Set{}, chains: map[string]*ruleset.Chain{}, podSets: map[string]*podSet{},
		chainOwners: map[string]*ruleset.ChainOwner{}, setOwners: map[string]ruleset.SetOwner{}}
}

// merge adds what f emitted; sets shared between policies have one definition per name.
func (e *emitted) merge(f *emitted) {
	for n, x := range f.chains {
		e.chains[n] = x
		e.chainOwners[n] = f.chainOwners[n]
	}
	for n, x := range f.sets {
		if _, ok := e.sets[n]; !ok {
			e.sets[n] = x
			e.setOwners[n] = f.setOwners[n]
		}
	}
	for n, x := range f.podSets {
		if _, ok := e.podSets[n]; !ok {
			e.podSets[n] = x
		}
	}
	e.problems = append(e.problems, f.problems...)
}

// addChain adds a chain and its owner.
func (e *emitted) addChain(ch *ruleset.Chain, owner *ruleset.ChainOwner) {
	e.chains[ch.Name] = ch
	e.chainOwners[ch.Name] = owner
}

// addSet adds a set and its role.
func (e *emitted) addSet(s *ruleset.Set, owner ruleset.SetOwner) {
	e.sets[s.Name] = s
	e.setOwners[s.Name] = owner
}

// fragment is what compiling one policy in one direction adds to the ruleset.
type fragment struct {
	chain string
	emitted
}

func newCompilation(u universe, opts Options) *compilation {
	table := opts.Table
	if table == "" {
		table = DefaultTable
	}
	return &compilation{
		u:         u,
		opts:      opts,
		table:     table,
		emitted:   newEmitted(),
		fragments: map[fragmentKey]*fragment{},

		clusterFragments: map[clusterFragmentKey]*clusterFragment{},
		reportedPairs:    map[string]bool{},
		subjects:         map[subjectsKey]subjectsVal{},
	}
}

// policyChain returns the chain of a policy in one direction, compiling it or reusing
// the previous compilation's.
func (c *compilation) policyChain(p *policy, dir Direction) string {
	k := fragmentKey{p, dir}
	if f := c.fragments[k]; f != nil {
		return f.chain
	}
	f := c.prevFragments[k]
	if f == nil {
		// Compile into empty maps to capture exactly what this policy adds.
		saved := c.emitted
		c.emitted = newEmitted()
		f = &fragment{}
		f.chain = c.compilePolicy(p, dir)
		f.emitted = c.emitted
		c.emitted = saved
	}
	c.fragments[k] = f
	c.merge(&f.emitted)
	return f.chain
}

// ruleset returns the compiled ruleset, normalized.
func (c *compilation) ruleset() *ruleset.Ruleset {
	rs := &ruleset.Ruleset{Table: c.table, Owners: c.ownerTable()}
	for _, s := range c.sets {
		rs.Sets = append(rs.Sets, s)
	}
	for _, ch := range c.chains {
		rs.Chains = append(rs.Chains, ch)
	}
	rs.Normalize()
	return rs
}

// addPodSet registers a set whose elements come from pods.
func (c *compilation) addPodSet(s *ruleset.Set, role ruleset.Role, ps *podSet) {
	ps.keyTyp = s.Key
	c.addSet(s, ruleset.SetOwner{Role: role})
	c.podSets[s.Name] = ps
}

func (c *compilation) run() {
	c.addBaseChains(c.opts.Revocation)

	// Which policies select each local pod, per direction: the NetworkPolicies isolating
	// it and the ClusterNetworkPolicies whose subject it is.
	for _, dir := range []Direction{Ingress, Egress} {
		for _, pod := range c.u.localPods() {
			var chains []string
			var pols []*policy
			for _, p := range c.u.policiesIn(pod.Namespace) {
				if !p.applies(dir) || !p.selector.Matches(labels.Set(pod.Labels)) {
					continue
				}
				chains = append(chains, c.policyChain(p, dir))
				pols = append(pols, p)
			}
			for _, ip := range c.u.ownedIPs(pod) {
				fam := ruleset.IPv4
				if ip.Is6() {
					fam = ruleset.IPv6
				}
				if class := c.podChain(pod, dir, chains, pols, fam); class != "" {
					c.addDispatch(dir, ip, class)
				}
			}
		}
	}
	if c.copied {
		c.dropUnreachable()
	}
}

func (c *compilation) addBaseChains(revocation bool) {
	var revoked []ruleset.Rule
	if revocation {
		revoked = []ruleset.Rule{{
			Matches: []ruleset.Match{{Kind: ruleset.MatchCtMark, MarkMask: CtMarkMask, Mark: RevokedMark}},
			Counter: true, Verdict: ruleset.Drop,
			Comment: "connection revoked by a policy change",
		}}
	}
	ct := ruleset.Rule{
		Matches: []ruleset.Match{{Kind: ruleset.MatchCtState, CtStates: []string{"established", "related"}}},
		Verdict: ruleset.Accept,
		Comment: "replies and related packets of allowed connections",
	}
	// IPv6 neighbour discovery is link plumbing, not a connection policy speaks of. With
	// a bridge CNI, br_netfilter hands it to the forward hook; dropping it would leave an
	// isolated pod unable to resolve its same-node neighbours at all (IPv4's ARP never
	// reaches these hooks).
	nd := ruleset.Rule{
		Matches: []ruleset.Match{{Kind: ruleset.MatchNFProto, Family: ruleset.IPv6}, {Kind: ruleset.MatchL4Proto, Proto: ruleset.ProtoICMPv6},
			{Kind: ruleset.MatchLookup, Fields: []ruleset.Field{ruleset.FieldICMPv6Type}, Set: SetNeighbourDiscovery}},
		Verdict: ruleset.Accept,
		Comment: "IPv6 neighbour discovery",
	}
	ndSet := &ruleset.Set{Name: SetNeighbourDiscovery, Key: []ruleset.KeyType{ruleset.KeyICMPv6},
		Comment: "ICMPv6 neighbour discovery message types"}
	for t := uint8(133); t <= 137; t++ {
		ndSet.Elements = append(ndSet.Elements, ruleset.Element{Key: []ruleset.Range{ruleset.Single([]byte{t})}})
	}
	c.addSet(ndSet, ruleset.SetOwner{Role: ruleset.RoleNeighbourDiscovery})
	dispatch := func(dir Direction) ([]ruleset.Rule, *ruleset.ChainOwner) {
		f4, f6, m4, m6 := ruleset.FieldIPv4Saddr, ruleset.FieldIPv6Saddr, MapEgressV4, MapEgressV6
		if dir == Ingress {
			f4, f6, m4, m6 = ruleset.FieldIPv4Daddr, ruleset.FieldIPv6Daddr, MapIngressV4, MapIngressV6
		}
		owner := &ruleset.ChainOwner{Role: ruleset.RoleBase, Direction: dir}
		if revoked != nil {
			owner.Rules = append(owner.Rules, ruleset.RuleOwner{Role: ruleset.RoleRevoked})
		}
		owner.Rules = append(owner.Rules, ruleset.RuleOwner{Role: ruleset.RoleEstablished}, ruleset.RuleOwner{Role: ruleset.RoleNeighbourDiscovery},
			ruleset.RuleOwner{Role: ruleset.RoleDispatch}, ruleset.RuleOwner{Role: ruleset.RoleDispatch})
		return append(append([]ruleset.Rule(nil), revoked...),
			ct, nd,
			ruleset.Rule{VMap: &ruleset.VMap{Fields: []ruleset.Field{f4}, Map: m4}, Comment: "local pods isolated for " + string(dir)},
			ruleset.Rule{VMap: &ruleset.VMap{Fields: []ruleset.Field{f6}, Map: m6}, Comment: "local pods isolated for " + string(dir)},
		), owner
	}
	for _, b := range []struct {
		name, comment string
		hook          ruleset.Hook
		dir           Direction
		priority      int
	}{
		{ChainEgressForward, "egress of local pods to other hosts and pods", ruleset.HookForward, Egress, PriorityEgress},
		{ChainEgressInput, "egress of local pods to this node", ruleset.HookInput, Egress, PriorityEgress},
		{ChainIngressForward, "ingress of local pods", ruleset.HookForward, Ingress, PriorityIngress},
	} {
		rules, owner := dispatch(b.dir)
		c.addChain(&ruleset.Chain{Name: b.name, Comment: b.comment,
			Base: &ruleset.BaseChain{Hook: b.hook, Priority: b.priority}, Rules: rules}, owner)
	}
	for _, m := range []struct {
		name string
		key  ruleset.KeyType
		dir  Direction
	}{{MapEgressV4, ruleset.KeyIPv4Addr, Egress}, {MapEgressV6, ruleset.KeyIPv6Addr, Egress},
		{MapIngressV4, ruleset.KeyIPv4Addr, Ingress}, {MapIngressV6, ruleset.KeyIPv6Addr, Ingress}} {
		c.addSet(&ruleset.Set{Name: m.name, Key: []ruleset.KeyType{m.key}, IsMap: true,
			Comment: "local pod IP to the chain of the policies isolating it for " + string(m.dir)},
			ruleset.SetOwner{Role: ruleset.RoleDispatch, Direction: m.dir})
	}
}

func (c *compilation) addDispatch(dir Direction, ip netip.Addr, chain string) {
	name := map[Direction][2]string{Egress: {MapEgressV4, MapEgressV6}, Ingress: {MapIngressV4, MapIngressV6}}[dir]
	m := c.sets[name[0]]
	if ip.Is6() {
		m = c.sets[name[1]]
	}
	v := ruleset.Jump(chain)
	m.Elements = append(m.Elements, ruleset.Element{Key: []ruleset.Range{ruleset.Addr(ip)}, Verdict: &v})
}

// isolationChainPrefix starts the names of the isolation chains of a direction.
func isolationChainPrefix(dir Direction) string { return "isolate-" + short(dir) + "-" }

// isolationChain returns the chain shared by every pod isolated by exactly these
// policies: it tries each policy's chain (an accept there is final) and then drops.
func (c *compilation) isolationChain(dir Direction, policyChains []string, pols []*policy) string {
	keys := make([]string, len(pols))
	for i, p := range pols {
		keys[i] = p.key
	}
	name := isolationChainPrefix(dir) + shortHash(strings.Join(keys, ","))
	if _, ok := c.chains[name]; ok {
		return name
	}
	ch := &ruleset.Chain{Name: name, Comment: truncate("isolated for "+string(dir)+" by "+strings.Join(keys, ", "), ruleset.MaxCommentLen)}
	owner := &ruleset.ChainOwner{Role: ruleset.RoleIsolation, Direction: dir}
	for i, pc := range policyChains {
		ch.Rules = append(ch.Rules, ruleset.Rule{Verdict: ruleset.Jump(pc), Comment: truncate(keys[i], ruleset.MaxCommentLen)})
		owner.Policies = append(owner.Policies, pols[i].ref)
		owner.Rules = append(owner.Rules, ruleset.RuleOwner{Role: ruleset.RolePolicyJump, Policy: pols[i].ref})
	}
	if c.opts.LogDenied {
		ch.Rules = append(ch.Rules, c.opts.denyLogRule(name))
		owner.Rules = append(owner.Rules, ruleset.RuleOwner{Role: ruleset.RoleDenyLog})
	}
	ch.Rules = append(ch.Rules, ruleset.Rule{Counter: true, Verdict: ruleset.Drop,
		Comment: truncate("drop: no rule of "+strings.Join(keys, ", ")+" allows it", ruleset.MaxCommentLen)})
	owner.Rules = append(owner.Rules, ruleset.RuleOwner{Role: ruleset.RoleIsolationDrop})
	c.addChain(ch, owner)
	return name
}

// compilePolicy adds the chain holding the rules of one policy in one direction.
func (c *compilation) compilePolicy(p *policy, dir Direction) string {
	name := truncate("pol-"+short(dir)+"-"+shortHash(p.key)+"-"+p.np.Namespace+"."+p.np.Name, ruleset.MaxNameLen)
	ch := &ruleset.Chain{Name: name, Comment: truncate(string(dir)+" rules of "+p.key, ruleset.MaxCommentLen)}
	owner := &ruleset.ChainOwner{Role: ruleset.RolePolicy, Direction: dir, Policies: []ruleset.PolicyRef{p.ref}}
	add := func(i int, rules []ruleset.Rule) {
		ch.Rules = append(ch.Rules, rules...)
		for range rules {
			owner.Rules = append(owner.Rules, ruleset.RuleOwner{Role: ruleset.RoleAllow, Policy: p.ref, Rule: i})
		}
	}
	if dir == Ingress {
		for i, r := range p.np.Spec.Ingress {
			add(i, c.compileRule(p, dir, i, fmt.Sprintf("spec.ingress[%d]", i), r.From, r.Ports))
		}
	} else {
		for i, r := range p.np.Spec.Egress {
			add(i, c.compileRule(p, dir, i, fmt.Sprintf("spec.egress[%d]", i), r.To, r.Ports))
		}
	}
	c.addChain(ch, owner)
	return name
}

// families the compiler emits rules for, with the fields they use.
var families = []struct {
	fam          ruleset.Family
	saddr, daddr ruleset.Field
	key          ruleset.KeyType
	suffix       string
}{
	{ruleset.IPv4, ruleset.FieldIPv4Saddr, ruleset.FieldIPv4Daddr, ruleset.KeyIPv4Addr, "v4"},
	{ruleset.IPv6, ruleset.FieldIPv6Saddr, ruleset.FieldIPv6Daddr, ruleset.KeyIPv6Addr, "v6"},
}

// compileRule compiles one ingress or egress rule of a NetworkPolicy: it allows what
// its peers and ports match.
func (c *compilation) compileRule(p *policy, dir Direction, idx int, field string, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) []ruleset.Rule {
	numeric, named := c.parsePorts(p.np, field, ports)
	var peer *peerSpec
	if len(peers) > 0 {
		peer = c.parsePeers(p.np, field, peers)
	}
	if c.validateOnly {
		return nil // every problem of a rule is found parsing its ports and peers
	}
	rules, _ := c.emitRule(ruleSpec{
		comment: truncate(fmt.Sprintf("%s %s rule %d", p.key, dir, idx), ruleset.MaxCommentLen),
		dir:     dir, peer: peer, hasPorts: len(ports) > 0, numeric: numeric, named: named,
		verdict: ruleset.Accept,
		namedSet: func(fam ruleset.Family, key ruleset.KeyType, suffix string) string {
			return c.namedPortSet(p, dir, idx, peer, named, fam, key, suffix)
		},
	})
	return rules
}

// ruleSpec is one policy rule ready to emit: what it matches and its verdict.
type ruleSpec struct {
	comment string
	dir     Direction
	// peer nil matches every peer.
	peer *peerSpec
	// hasPorts: the rule restricts ports, to numeric and named (none of them: the rule
	// matches nothing); otherwise every port and protocol.
	hasPorts bool
	numeric  []portRange
	named    []namedPort
	verdict  ruleset.Verdict
	// namedSet returns the set of the named ports' `address . proto . port` of a family.
	namedSet func(fam ruleset.Family, key ruleset.KeyType, suffix string) string
}

// emitRule compiles one rule, returning with each emitted rule the address family it
// reads (0: none, it serves both). It matches a packet when its peer matches one of the
// peers (or there are no peers) and its port matches one of the ports (or there are no
// ports). Numeric ports are the same for every pod, so they live in one `proto . port`
// set; named ports resolve per pod, so they live in a set of `pod address . proto . port`
// — for ingress the local selected pods (the destination), for egress the peer pods
// (also the destination).
func (c *compilation) emitRule(r ruleSpec) ([]ruleset.Rule, []ruleset.Family) {
	var rules []ruleset.Rule
	var fams []ruleset.Family
	for _, f := range families {
		peerField := f.saddr
		if r.dir == Egress {
			peerField = f.daddr
		}
		// The peer matches as alternatives: one rule each (pods' addresses, ipBlock
		// ranges and nodes' addresses live in separate sets); a rule without peers has
		// one empty alternative.
		alternatives := [][]ruleset.Match{nil}
		if r.peer != nil {
			alternatives = nil
			for _, set := range c.peerSets(r.peer, f.fam, f.key, f.suffix) {
				alternatives = append(alternatives, []ruleset.Match{{Kind: ruleset.MatchLookup, Fields: []ruleset.Field{peerField}, Set: set}})
			}
			if len(alternatives) == 0 {
				continue // e.g. only IPv4 ipBlocks: nothing of this family can match
			}
		}
		// Without peer or port matches a rule reads no address: it is family-neutral and
		// emitted once, under IPv4's turn.
		neutral := r.peer == nil && f.fam == ruleset.IPv6
		// The family each rule reads: 0 for the family-neutral ones.
		fam := f.fam
		if r.peer == nil {
			fam = 0
		}
		emit := func(m ...ruleset.Match) ruleset.Rule {
			fams = append(fams, fam)
			return ruleset.Rule{Matches: m, Counter: true, Verdict: r.verdict, Comment: r.comment}
		}
		if !r.hasPorts {
			if !neutral {
				for _, alt := range alternatives {
					rules = append(rules, emit(alt...))
				}
			}
			continue
		}
		if len(r.numeric) > 0 && !neutral {
			portMatch := ruleset.Match{Kind: ruleset.MatchLookup,
				Fields: []ruleset.Field{ruleset.FieldL4Proto, ruleset.FieldDPort}, Set: c.portSet(r.numeric)}
			for _, alt := range alternatives {
				rules = append(rules, emit(append(append([]ruleset.Match(nil), alt...), portMatch)...))
			}
		}
		if len(r.named) > 0 {
			set := r.namedSet(f.fam, f.key, f.suffix)
			lookup := ruleset.Match{Kind: ruleset.MatchLookup,
				Fields: []ruleset.Field{f.daddr, ruleset.FieldL4Proto, ruleset.FieldDPort}, Set: set}
			fam = f.fam // the lookup reads the destination address
			if r.dir == Egress {
				// The named set holds only pods that match the peers already.
				rules = append(rules, emit(lookup))
				continue
			}
			// The named set holds the selected local pods; the peer is the source.
			for _, alt := range alternatives {
				rules = append(rules, emit(append(append([]ruleset.Match(nil), alt...), lookup)...))
			}
		}
	}
	return rules, fams
}

func (c *compilation) portSet(ports []portRange) string {
	var key strings.Builder
	for _, p := range ports {
		fmt.Fprintf(&key, "%d:%d-%d,", p.proto, p.from, p.to)
	}
	name := "port-" + shortHash(key.String())
	if _, ok := c.sets[name]; ok {
		return name
	}
	s := &ruleset.Set{Name: name, Key: []ruleset.KeyType{ruleset.KeyL4Proto, ruleset.KeyPort}, Interval: true,
		Comment: truncate("ports "+describePorts(ports), ruleset.MaxCommentLen)}
	for _, p := range ports {
		s.Elements = append(s.Elements, ruleset.Element{Key: []ruleset.Range{ruleset.Proto(p.proto), ruleset.PortRange(p.from, p.to)}})
	}
	c.addSet(s, ruleset.SetOwner{Role: ruleset.RolePorts})
	return name
}

func describePorts(ports []portRange) string {
	parts := make([]string, len(ports))
	for i, p := range ports {
		if p.from == p.to {
			parts[i] = fmt.Sprintf("%d/%s", p.from, ruleset.ProtoName(p.proto))
		} else {
			parts[i] = fmt.Sprintf("%d-%d/%s", p.from, p.to, ruleset.ProtoName(p.proto))
		}
	}
	return strings.Join(parts, ",")
}

// namedPortSet holds `address . proto . port` of the destination pods a rule's named
// ports resolve on. A pod that has no port of that name contributes nothing, so the
// rule matches nothing on it. Ingress: the destinations are the local pods this policy
// selects. Egress: the peer pods (or every pod when the rule has no peers).
func (c *compilation) namedPortSet(p *policy, dir Direction, idx int, peer *peerSpec, named []namedPort, fam ruleset.Family, key ruleset.KeyType, suffix string) string {
	name := fmt.Sprintf("named-%s-%s", shortHash(fmt.Sprintf("%s/%s/%d", p.key, dir, idx)), suffix)
	s := &ruleset.Set{Name: name, Key: []ruleset.KeyType{key, ruleset.KeyL4Proto, ruleset.KeyPort},
		Comment: truncate(fmt.Sprintf("%s %s rule %d named ports", p.key, dir, idx), ruleset.MaxCommentLen)}
	c.addPodSet(s, ruleset.RoleNamedPorts, newNamedPodSet(name, p, dir, c.u.nodeName(), peer, named, fam))
	return name
}

func shortHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:]))[:10]
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

// Validate returns the Problems compiling np reports on any node where it selects a pod:
// those of parsing it, and those of the rules of each direction it applies to. None of
// them depends on pods or namespaces (a policy's chain is compiled once, whichever
// local pods it selects), so Validate needs neither; an agent uses it to report the
// problems of policies that no node compiles (controllers/reporter.go). Problems come
// in Compile's order and with its text.
func Validate(np *networkingv1.NetworkPolicy, opts Options) []Problem {
	p, problems := parsePolicy(np, opts)
	if p == nil {
		return problems
	}
	// An empty universe: compiling a policy's chain reads only the node's name.
	c := newCompilation(newSnapshotUniverse(&model.Snapshot{}, opts), opts)
	// The agent validates every policy of the cluster on its first sync (10k at
	// 100k pods): building their rules and sets would be most of that sync.
	c.validateOnly = true
	for _, dir := range []Direction{Ingress, Egress} {
		if p.applies(dir) {
			c.compilePolicy(p, dir)
		}
	}
	return append(problems, c.problems...)
}
