package ruleset

import "fmt"

// Direction is the direction of traffic a chain judges for the local pods it serves.
type Direction string

const (
	Ingress Direction = "ingress"
	Egress  Direction = "egress"
)

// PolicyRef names a NetworkPolicy, or a ClusterNetworkPolicy when Kind is
// KindClusterNetworkPolicy (cluster-scoped: no namespace).
type PolicyRef struct {
	// Kind is empty for a NetworkPolicy.
	Kind            string
	Namespace, Name string
}

// KindClusterNetworkPolicy is PolicyRef.Kind of a ClusterNetworkPolicy.
const KindClusterNetworkPolicy = "ClusterNetworkPolicy"

// Cluster reports whether the reference names a ClusterNetworkPolicy.
func (p PolicyRef) Cluster() bool { return p.Kind == KindClusterNetworkPolicy }

// String is "namespace/name" for a NetworkPolicy and "ClusterNetworkPolicy/name" for a
// ClusterNetworkPolicy (no namespace can be called that: namespace names are lower case).
func (p PolicyRef) String() string {
	if p.Cluster() {
		return KindClusterNetworkPolicy + "/" + p.Name
	}
	return p.Namespace + "/" + p.Name
}

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
	// RoleAdminTier: the Admin-tier rules of the ClusterNetworkPolicies selecting a set of
	// pods, in (priority, name, rule) order, then a goto to the rest (RoleTierNext).
	RoleAdminTier Role = "admin-tier"
	// RoleBaselineTier: the Baseline-tier rules of the ClusterNetworkPolicies selecting a
	// set of pods not isolated by any NetworkPolicy.
	RoleBaselineTier Role = "baseline-tier"
	// RoleClusterDenyLog: under --log-denied, where one ClusterNetworkPolicy Deny rule
	// sends what it matches: a log rule, then the drop.
	RoleClusterDenyLog Role = "cluster-deny-log"
	// RoleShadow: a copy of a class's chains judging a connection as if the audited
	// policies were enforced; it counts nothing and its verdicts go on to the enforced
	// copies (RoleIsolation, RolePolicy, ... copies keep their role) or to the audit
	// chains. Its rules keep the owners of the rules they copy.
	RoleShadow Role = "shadow"
	// RoleAuditDeny: counts (and under --log-denied logs) connections that the chain's
	// Policies, audited, would deny, and accepts them.
	RoleAuditDeny Role = "audit-deny"
	// RoleAuditAllow: counts connections that the chain's Policies, audited, would
	// allow, and drops them (the enforced policies deny them).
	RoleAuditAllow Role = "audit-allow"
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
	// Rules of the tier chains: a ClusterNetworkPolicy rule's action on what it matches.
	RoleClusterAccept Role = "cluster-accept" // Accept: allowed in this direction, later tiers skipped
	RoleClusterDeny   Role = "cluster-deny"   // Deny: dropped
	RoleClusterPass   Role = "cluster-pass"   // Pass: the rest of the tier is skipped
	RoleTierNext      Role = "tier-next"      // the end of the Admin tier: on to NetworkPolicy, then Baseline
	RoleChainEnd      Role = "chain-end"      // the end of a copied chain (audit mode): what falling off the original's end meant, allowed
)

// Roles of sets.
const (
	RolePodPeers   Role = "pod-peers"   // addresses of the pods some rules' peers select
	RoleBlockPeers Role = "block-peers" // ranges of some rules' ipBlock peers
	RolePorts      Role = "ports"       // protocol and port ranges of some rules
	RoleNamedPorts Role = "named-ports" // address, protocol and port a rule's named ports resolve to
	RoleNodePeers  Role = "node-peers"  // addresses of the nodes some rules' `nodes` peers select
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
	// Rule is, for an allow rule (or a ClusterNetworkPolicy rule), its index in the
	// policy's spec.ingress or spec.egress (by the chain's direction). One policy rule
	// compiles to one or more allow rules.
	Rule int
	// Cluster describes the ClusterNetworkPolicy rule of a RoleCluster* rule.
	Cluster *ClusterRule
}

// ClusterRule is what a verdict names about a ClusterNetworkPolicy rule.
type ClusterRule struct {
	Tier     string // Admin or Baseline
	Priority int32
	Name     string // the rule's name, may be empty
	Action   string // Accept, Deny or Pass
}

// ClusterText names the ClusterNetworkPolicy rule of an owner for people:
// "ClusterNetworkPolicy deny-metadata, rule block-imds, Admin tier, priority 10" (an
// unnamed rule by its direction and index: "ingress rule 2"). Empty when the owner is
// not a ClusterNetworkPolicy rule.
func (r RuleOwner) ClusterText(dir Direction) string {
	if r.Cluster == nil {
		return ""
	}
	rule := fmt.Sprintf("%s rule %d", dir, r.Rule)
	if r.Cluster.Name != "" {
		rule = "rule " + r.Cluster.Name
	}
	return fmt.Sprintf("ClusterNetworkPolicy %s, %s, %s tier, priority %d", r.Policy.Name, rule, r.Cluster.Tier, r.Cluster.Priority)
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
