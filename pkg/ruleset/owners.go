package ruleset

// Direction is the direction of traffic a chain judges for the local pods it serves.
type Direction string

const (
	Ingress Direction = "ingress"
	Egress  Direction = "egress"
)

// PolicyRef names a NetworkPolicy.
type PolicyRef struct{ Namespace, Name string }

func (p PolicyRef) String() string { return p.Namespace + "/" + p.Name }

// Role is the part a chain, a rule or a set plays in a compiled ruleset.
type Role string

// Roles of chains.
const (
	// RoleBase: a base chain (replies, neighbour discovery, dispatch of isolated pods).
	RoleBase Role = "base"
	// RoleIsolation: the chain of the pods one set of policies isolates: it tries the
	// chain of each policy, then drops.
	RoleIsolation Role = "isolation"
	// RolePolicy: the allow rules of one policy in one direction.
	RolePolicy Role = "policy"
)

// Roles of rules.
const (
	RoleRevoked            Role = "revoked"             // drops packets of revoked connections
	RoleEstablished        Role = "established"         // accepts replies and related packets
	RoleNeighbourDiscovery Role = "neighbour-discovery" // accepts IPv6 neighbour discovery (rule and set)
	RoleDispatch           Role = "dispatch"            // looks isolated local pods up in a verdict map (rule and map)
	RolePolicyJump         Role = "policy-jump"         // jumps from an isolation chain to one policy's chain
	RoleDenyLog            Role = "deny-log"            // logs a packet about to be dropped to nflog
	RoleIsolationDrop      Role = "isolation-drop"      // the drop ending an isolation chain
	RoleAllow              Role = "allow"               // accepts what one rule of a policy allows
)

// Roles of sets.
const (
	RolePodPeers   Role = "pod-peers"   // addresses of the pods some rules' peers select
	RoleBlockPeers Role = "block-peers" // ranges of some rules' ipBlock peers
	RolePorts      Role = "ports"       // protocol and port ranges of some rules
	RoleNamedPorts Role = "named-ports" // address, protocol and port a rule's named ports resolve to
)

// Owners is what the compiler knows about the objects it emitted: the role of each
// chain, rule and set and the NetworkPolicies it serves, as data, so that nobody
// parses names or comments to learn them (comments are for people, and they are
// truncated). The kernel never sees owners: a ruleset read back from it has none, and
// readers of kernel state take them from the compiled ruleset, matching chains by name
// and rules by position. Owners are not modified once built.
type Owners struct {
	// Chains by chain name.
	Chains map[string]*ChainOwner
	// Sets by set or map name.
	Sets map[string]*SetOwner
}

// ChainOwner describes one chain.
type ChainOwner struct {
	Role Role
	// Direction is the traffic the chain judges (every chain the compiler emits has one).
	Direction Direction
	// Policies are, for an isolation chain, the policies isolating its pods in the order
	// it jumps to them; for a policy chain, its policy; none for a base chain.
	Policies []PolicyRef
	// Rules describe the chain's rules, by position.
	Rules []RuleOwner
}

// RuleOwner describes one rule.
type RuleOwner struct {
	Role Role
	// Policy is, for an allow rule, the policy it compiles; for a policy jump, the policy
	// whose chain it jumps to.
	Policy PolicyRef
	// Rule is, for an allow rule, its index in the policy's spec.ingress or spec.egress
	// (by the chain's direction). One policy rule compiles to one or more allow rules.
	Rule int
}

// PolicyRule is one rule of a policy: spec.<Direction>[Rule].
type PolicyRule struct {
	Policy    PolicyRef
	Direction Direction
	Rule      int
}

// SetOwner describes one set or map.
type SetOwner struct {
	Role Role
	// Direction is that of a dispatch map; empty for other sets, which rules of both
	// directions may share.
	Direction Direction
	// Rules are the policy rules whose allow rules look the set up, sorted; a set shared
	// by identical peers or ports serves several.
	Rules []PolicyRule
}

// Chain returns the owner of a chain, nil when there is none (or o is nil).
func (o *Owners) Chain(name string) *ChainOwner {
	if o == nil {
		return nil
	}
	return o.Chains[name]
}

// Rule returns the owner of rule i of a chain.
func (o *Owners) Rule(chain string, i int) (RuleOwner, bool) {
	c := o.Chain(chain)
	if c == nil || i < 0 || i >= len(c.Rules) {
		return RuleOwner{}, false
	}
	return c.Rules[i], true
}
