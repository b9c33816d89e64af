package compiler

// Compilation of ClusterNetworkPolicy tiers.
//
// Per direction, a local pod that some policy of either kind selects is dispatched to
// the chain of its class — the distinct combination of Admin-tier policies,
// NetworkPolicies and Baseline-tier policies that select it:
//
//	chain admin-in-<hash>        the Admin rules, by (priority, name, rule):
//	  <match> counter accept       Accept: allowed in this direction, later tiers skipped
//	  <match> counter drop         Deny
//	  <match> counter goto <next>  Pass: the rest of the Admin tier is skipped
//	  goto <next>                  no Admin rule matched
//	chain isolate-in-<hash>      the NetworkPolicies, as without tiers: their allow rules,
//	                               then drop (the NetworkPolicy tier always decides)
//	chain baseline-in-<hash>     the Baseline rules (only for pods no NetworkPolicy isolates):
//	  <match> counter accept / drop
//	  <match> counter accept       Pass: the rest of the Baseline tier is skipped, and
//	                               after Baseline comes the default: allowed
//	                               (falling off the end returns to the base chain, which
//	                               accepts)
//
// <next> is the isolation chain when NetworkPolicies isolate the pod, otherwise the
// Baseline chain; a Pass with neither accepts. The rules of every policy are inlined
// into the tier chains (an nftables goto cannot leave a chain that was jumped to, and a
// Pass must leave the whole tier); their peer and port sets are shared with every other
// rule that has the same peers or ports. Pods nothing selects are not in the dispatch
// maps: one map miss per packet, as before. An egress Accept ends only the egress base
// chain: the destination's ingress is still judged.

import (
	"errors"
	"fmt"
	"strings"

	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// passPlaceholder is the target of a Pass rule in a policy's compiled fragment: the
// tier chain replaces it with the class's next chain.
const passPlaceholder = "\x00pass"

// clusterFragment is what compiling one ClusterNetworkPolicy in one direction adds:
// its rules (to be inlined in tier chains) and the sets they use.
type clusterFragment struct {
	rules  []ruleset.Rule
	owners []ruleset.RuleOwner
	// fams is the address family each rule reads (0: both).
	fams []ruleset.Family
	// nodeGen is the node generation the node sets were filled at.
	nodeGen uint64
	emitted
}

type subjectsKey struct {
	pod *model.Pod
	dir Direction
}

type subjectsVal struct {
	admin, baseline []*clusterPolicy
	// gen: the generations of the policies and of the pod's namespace labels they were
	// computed at.
	gen [2]uint64
}

type clusterFragmentKey struct {
	p   *clusterPolicy
	dir Direction
}

// clusterSubjects returns the Admin and Baseline policies whose subject selects the pod
// and that have rules for the direction, in evaluation order.
//
// Which policies select a pod depends only on the pod (an immutable object: a change
// is a new one), the policies and the labels of its namespace, so the answer is kept
// across compilations while none of them changed: a NetworkPolicy change rebuilding the
// structure then does not match every local pod against every ClusterNetworkPolicy again.
func (c *compilation) clusterSubjects(pod *model.Pod, dir Direction) (admin, baseline []*clusterPolicy) {
	k := subjectsKey{pod, dir}
	gen := [2]uint64{c.u.clusterPolicyGeneration(), c.u.namespaceGeneration(pod.Namespace)}
	if v, ok := c.subjects[k]; ok {
		return v.admin, v.baseline
	}
	if v, ok := c.prevSubjects[k]; ok && v.gen == gen {
		c.subjects[k] = v
		return v.admin, v.baseline
	}
	defer func() { c.subjects[k] = subjectsVal{admin, baseline, gen} }()
	for _, p := range c.u.clusterPolicies() {
		if len(p.rules(dir)) == 0 || !p.selects(c.u, pod) {
			continue
		}
		if p.tier == cnp.AdminTier {
			admin = append(admin, p)
		} else {
			baseline = append(baseline, p)
		}
	}
	return admin, baseline
}

// clusterRules returns the compiled rules of a policy in a direction, compiling them or
// reusing the previous compilation's.
func (c *compilation) clusterRules(p *clusterPolicy, dir Direction) *clusterFragment {
	k := clusterFragmentKey{p, dir}
	if f := c.clusterFragments[k]; f != nil {
		return f
	}
	f := c.prevClusterFragments[k]
	if f == nil || (p.usesNodes && f.nodeGen != c.u.nodeGeneration()) {
		saved := c.emitted
		c.emitted = newEmitted()
		f = &clusterFragment{nodeGen: c.u.nodeGeneration()}
		f.rules, f.owners, f.fams = c.compileClusterPolicy(p, dir)
		f.emitted = c.emitted
		c.emitted = saved
	}
	c.clusterFragments[k] = f
	c.merge(&f.emitted)
	return f
}

// compileClusterPolicy compiles the rules of one policy in one direction, in order.
func (c *compilation) compileClusterPolicy(p *clusterPolicy, dir Direction) ([]ruleset.Rule, []ruleset.RuleOwner, []ruleset.Family) {
	var rules []ruleset.Rule
	var owners []ruleset.RuleOwner
	var fams []ruleset.Family
	for _, r := range p.rules(dir) {
		verdict, role := ruleset.Accept, ruleset.RoleClusterAccept
		switch r.action {
		case cnp.ClusterNetworkPolicyRuleActionDeny:
			verdict, role = ruleset.Drop, ruleset.RoleClusterDeny
		case cnp.ClusterNetworkPolicyRuleActionPass:
			verdict, role = ruleset.Verdict{Kind: ruleset.VerdictGoto, Chain: passPlaceholder}, ruleset.RoleClusterPass
		}
		name := ""
		if r.name != "" {
			name = " " + r.name
		}
		comment := truncate(fmt.Sprintf("%s %s %d %s rule %d%s: %s", p.key, p.tier, p.priority, dir, r.index, name, r.action), ruleset.MaxCommentLen)
		owner := ruleset.RuleOwner{Role: role, Policy: p.ref, Rule: r.index, Cluster: &ruleset.ClusterRule{
			Tier: string(p.tier), Priority: p.priority, Name: r.name, Action: string(r.action)}}
		if role == ruleset.RoleClusterDeny && c.opts.LogDenied {
			// The drop moves to a chain of its own that logs first (rate-limited, so the
			// limit never decides whether a packet is dropped).
			verdict = ruleset.Verdict{Kind: ruleset.VerdictGoto, Chain: c.clusterDenyChain(p, dir, r, owner, comment)}
		}
		var emitted []ruleset.Rule
		var efams []ruleset.Family
		if r.matchAll {
			emitted, efams = []ruleset.Rule{{Counter: true, Verdict: verdict, Comment: comment}}, []ruleset.Family{0}
		} else {
			emitted, efams = c.emitRule(ruleSpec{comment: comment, dir: dir, peer: r.peer, hasPorts: r.hasPorts,
				numeric: r.numeric, named: r.named, verdict: verdict,
				namedSet: func(fam ruleset.Family, key ruleset.KeyType, suffix string) string {
					return c.clusterNamedPortSet(p, dir, r, fam, key, suffix)
				}})
		}

		for range emitted {
			owners = append(owners, owner)
		}
		rules = append(rules, emitted...)
		fams = append(fams, efams...)
	}
	return rules, owners, fams
}

// denyChainPrefix starts the names of the chains that log and drop what one
// ClusterNetworkPolicy Deny rule matches (Options.LogDenied).
func denyChainPrefix(dir Direction) string { return "deny-" + short(dir) + "-" }

// clusterDenyChain returns the chain a Deny rule goes to under LogDenied: it logs the
// packet with the chain's name as prefix (DeniedChainOf reverses it) and drops it.
func (c *compilation) clusterDenyChain(p *clusterPolicy, dir Direction, r *clusterRule, owner ruleset.RuleOwner, comment string) string {
	name := denyChainPrefix(dir) + shortHash(fmt.Sprintf("%s/%s/%d", p.key, dir, r.index))
	if _, ok := c.chains[name]; ok {
		return name
	}
	ch := &ruleset.Chain{Name: name, Comment: comment, Rules: []ruleset.Rule{
		c.opts.denyLogRule(name),
		{Counter: true, Verdict: ruleset.Drop, Comment: comment},
	}}
	c.addChain(ch, &ruleset.ChainOwner{Role: ruleset.RoleClusterDenyLog, Direction: dir, Policies: []ruleset.PolicyRef{p.ref},
		Rules: []ruleset.RuleOwner{{Role: ruleset.RoleDenyLog}, owner}})
	return name
}

// clusterNamedPortSet is namedPortSet for a ClusterNetworkPolicy rule: for ingress the
// local pods its subject selects, for egress the peer pods.
func (c *compilation) clusterNamedPortSet(p *clusterPolicy, dir Direction, r *clusterRule, fam ruleset.Family, key ruleset.KeyType, suffix string) string {
	name := fmt.Sprintf("named-%s-%s", shortHash(fmt.Sprintf("%s/%s/%d", p.key, dir, r.index)), suffix)
	s := &ruleset.Set{Name: name, Key: []ruleset.KeyType{key, ruleset.KeyL4Proto, ruleset.KeyPort},
		Comment: truncate(fmt.Sprintf("%s %s rule %d named ports", p.key, dir, r.index), ruleset.MaxCommentLen)}
	c.addPodSet(s, ruleset.RoleNamedPorts, newNamedPodSet(name, p, dir, c.u.nodeName(), r.peer, r.named, fam))
	return name
}

// tierChain returns the chain of one tier for a class and an address family: the rules
// of the policies in order that can match a packet of the family (a dispatch map is per
// family, so a packet never meets the other family's rules: half the rules to walk), a
// Pass going to next (accepting when next is empty), and — in the Admin tier — a goto
// next at the end.
func (c *compilation) tierChain(dir Direction, tier cnp.Tier, pols []*clusterPolicy, next string, fam ruleset.Family) string {
	keys := make([]string, len(pols))
	for i, p := range pols {
		keys[i] = p.key
	}
	prefix, role := "admin-", ruleset.RoleAdminTier
	if tier == cnp.BaselineTier {
		prefix, role = "baseline-", ruleset.RoleBaselineTier
	}
	suffix := map[ruleset.Family]string{ruleset.IPv4: "v4", ruleset.IPv6: "v6"}[fam]
	name := prefix + short(dir) + "-" + shortHash(strings.Join(keys, ",")+">"+next) + "-" + suffix
	if _, ok := c.chains[name]; ok {
		return name
	}
	c.samePriority(dir, pols)
	pass := ruleset.Accept
	if next != "" && tier == cnp.AdminTier {
		pass = ruleset.Verdict{Kind: ruleset.VerdictGoto, Chain: next}
	}
	ch := &ruleset.Chain{Name: name, Comment: truncate(fmt.Sprintf("%s tier, %s, IPv%d: %s", tier, dir, fam, strings.Join(keys, ", ")), ruleset.MaxCommentLen)}
	owner := &ruleset.ChainOwner{Role: role, Direction: dir}
	// Every rule of a tier chain ends in a verdict (accept, drop or goto), so a rule
	// whose matches an earlier rule already has can never match, and nothing after a
	// rule without matches can be reached: they are left out (fewer rules to walk; common
	// when several policies of a class deny the same peers).
	seen := map[string]bool{}
	ended := false
	for _, p := range pols {
		owner.Policies = append(owner.Policies, p.ref)
		f := c.clusterRules(p, dir)
		for i, r := range f.rules {
			if ended || (f.fams[i] != 0 && f.fams[i] != fam) {
				continue
			}
			key := ruleset.FormatRule(ruleset.Rule{Matches: r.Matches})
			if seen[key] {
				continue
			}
			seen[key] = true
			ended = len(r.Matches) == 0
			if r.Verdict.Kind == ruleset.VerdictGoto && r.Verdict.Chain == passPlaceholder {
				r.Verdict = pass
			}
			ch.Rules = append(ch.Rules, r)
			owner.Rules = append(owner.Rules, f.owners[i])
		}
	}
	if tier == cnp.AdminTier && next != "" && !ended {
		ch.Rules = append(ch.Rules, ruleset.Rule{Verdict: ruleset.Verdict{Kind: ruleset.VerdictGoto, Chain: next},
			Comment: "no Admin rule matched: on to NetworkPolicy and Baseline"})
		owner.Rules = append(owner.Rules, ruleset.RuleOwner{Role: ruleset.RoleTierNext})
	}
	c.addChain(ch, owner)
	return name
}

// samePriority reports each pair of policies of one tier with the same priority that
// select a common local pod in a direction: the API leaves their order undefined
// (nftpolicy orders them by name). pols is in evaluation order, so equal priorities are
// adjacent.
func (c *compilation) samePriority(dir Direction, pols []*clusterPolicy) {
	for i := 1; i < len(pols); i++ {
		a, b := pols[i-1], pols[i]
		if a.priority != b.priority {
			continue
		}
		pair := a.obj.Name + "\x00" + b.obj.Name + "\x00" + string(dir)
		if c.reportedPairs[pair] {
			continue
		}
		c.reportedPairs[pair] = true
		for _, x := range []struct{ p, other *clusterPolicy }{{a, b}, {b, a}} {
			c.problems = append(c.problems, clusterProblem(x.p.obj, "spec.priority", fmt.Errorf(
				"%w: ClusterNetworkPolicy %s (%s tier, priority %d) also selects pods for %s; nftpolicy evaluates %s first (by name)",
				ErrSamePriority, x.other.obj.Name, x.p.tier, x.p.priority, dir, a.obj.Name)))
		}
	}
}

// classChain returns the chain a local pod's addresses of a family are dispatched to
// for a direction, or "" when no policy of either kind selects it: admin and baseline
// are the ClusterNetworkPolicies whose subject it is (clusterSubjects), npChains and
// nps the NetworkPolicies isolating it, as for isolationChain (whose chain serves both
// families).
func (c *compilation) classChain(dir Direction, admin, baseline []*clusterPolicy, npChains []string, nps []*policy, fam ruleset.Family) string {
	next := ""
	switch {
	case len(npChains) > 0:
		next = c.isolationChain(dir, npChains, nps)
	case len(baseline) > 0:
		next = c.tierChain(dir, cnp.BaselineTier, baseline, "", fam)
	}
	if len(admin) > 0 {
		return c.tierChain(dir, cnp.AdminTier, admin, next, fam)
	}
	return next
}

// IsSamePriority reports whether a Problem is the warning about two policies of one tier
// with the same priority.
func IsSamePriority(p Problem) bool { return errors.Is(p.Err, ErrSamePriority) }
