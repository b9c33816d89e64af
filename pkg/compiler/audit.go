package compiler

// Audit mode: judging connections as if some policies were enforced, while enforcing
// the others only.
//
// A policy (NetworkPolicy or ClusterNetworkPolicy) annotated nftpolicy.io/mode: audit
// is not enforced; for the local pods it selects, every new connection is judged twice
// in the kernel, with the same compiled rules:
//
//	map ingress-pods-v4 { <pod> : jump shadow-in-<h1> }      the class with the audited policies
//	chain shadow-in-<h1>        a copy of the class's chains (no counters, no logs) whose
//	                            verdicts lead to the enforced class instead of ending:
//	  ... accept      →  goto enforce-in-<h2>   (would allow)
//	  ... drop        →  goto enforce-in-<h3>   (would deny)
//	chain enforce-in-<h2>       a copy of the class without the audited policies, knowing
//	                            they would allow:  accept; drop → goto audit-allow-in-<h>
//	chain enforce-in-<h3>       the same, knowing they would deny:
//	                            accept → goto audit-deny-in-<h>; drop
//	chain audit-deny-in-<h>     [log "would deny" to nflog]  counter accept
//	chain audit-allow-in-<h>    counter drop
//
// So a connection the audited policies would deny and the enforced ones allow passes
// and is counted (and logged under LogDenied) in an audit-deny chain; one they would
// allow where the enforced ones deny is dropped and counted in an audit-allow chain.
// Copies are made per class and only for classes with an audited policy: pods no
// audited policy selects keep their chains, and every pod keeps the per-packet cost of
// the established-connection accept (only first packets reach these chains).
//
// Every path through a copy ends in accept, drop or a goto to another copy that ends
// so: a chain that the original leaves by falling off its end (back to the base chain,
// which accepts) gets an explicit "allowed" verdict when it runs in the dispatch's frame,
// and chains reached by jump (a NetworkPolicy's chain, whose end returns to the
// isolation chain) keep their end. So a verdict reached in a nested chain — a
// NetworkPolicy's accept becoming `goto enforce-…` — never returns into the shadow copy.
//
// Options.Audit (the agent's --audit) is the same with nothing enforced: the shadow copy
// of every class goes to accept or to an audit-deny chain naming the policies that
// drop there.

import (
	"fmt"
	"slices"
	"strings"

	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// AuditAnnotation on a NetworkPolicy or ClusterNetworkPolicy selects its mode:
// ModeAudit (judged as if enforced, counted and logged, not enforced) or ModeEnforce
// (the default).
const (
	AuditAnnotation = "nftpolicy.io/mode"
	ModeAudit       = "audit"
	ModeEnforce     = "enforce"
)

// auditField is the field a Problem about the annotation names.
const auditField = "metadata.annotations[" + AuditAnnotation + "]"

// auditMode reads the annotation. An unknown value is an error and the policy is
// enforced: a typo must not silently open what the policy closes.
func auditMode(annotations map[string]string) (bool, error) {
	v, ok := annotations[AuditAnnotation]
	if !ok {
		return false, nil
	}
	switch v {
	case ModeAudit:
		return true, nil
	case ModeEnforce:
		return false, nil
	}
	return false, fmt.Errorf("unknown mode %q (want %q or %q): the policy is enforced", v, ModeAudit, ModeEnforce)
}

// IsAudit reports whether annotations put a policy in audit mode, as the compiler reads
// them (an unknown value enforces).
func IsAudit(annotations map[string]string) bool {
	a, _ := auditMode(annotations)
	return a
}

// Prefixes of the names of the chains audit mode adds.
func shadowChainPrefix(dir Direction) string     { return "shadow-" + short(dir) + "-" }
func enforceChainPrefix(dir Direction) string    { return "enforce-" + short(dir) + "-" }
func auditDenyChainPrefix(dir Direction) string  { return "audit-deny-" + short(dir) + "-" }
func auditAllowChainPrefix(dir Direction) string { return "audit-allow-" + short(dir) + "-" }

// AuditDenyChainOf returns the audit-deny chain a LogDenied prefix names and its
// direction: the packet starts a connection the audited policies (the chain owner's
// Policies) would deny, and that passes.
func AuditDenyChainOf(prefix string) (string, Direction, bool) {
	chain, ok := strings.CutSuffix(prefix, " ")
	if !ok {
		return "", "", false
	}
	for _, dir := range []Direction{Ingress, Egress} {
		if strings.HasPrefix(chain, auditDenyChainPrefix(dir)) {
			return chain, dir, true
		}
	}
	return "", "", false
}

// podChain returns the chain a local pod's addresses of a family are dispatched to for
// a direction ("" when no policy selects it): its class chain, or with audited policies
// among those selecting it (or Options.Audit), the shadow copy described above.
// npChains and nps are every NetworkPolicy isolating it, audited or not.
func (c *compilation) podChain(pod *model.Pod, dir Direction, npChains []string, nps []*policy, fam ruleset.Family) string {
	admin, baseline := c.clusterSubjects(pod, dir)
	shadow := c.classChain(dir, admin, baseline, npChains, nps, fam)
	if shadow == "" {
		return ""
	}
	if !c.opts.Audit && !anyAudited(nps, admin, baseline) {
		// The common case, for every local pod on every structure rebuild: no copies.
		return shadow
	}
	var audited []ruleset.PolicyRef
	var eChains []string
	var eNPs []*policy
	for i, p := range nps {
		if p.audit || c.opts.Audit {
			audited = append(audited, p.ref)
		} else {
			eChains, eNPs = append(eChains, npChains[i]), append(eNPs, p)
		}
	}
	keep := func(ps []*clusterPolicy) []*clusterPolicy {
		var out []*clusterPolicy
		for _, p := range ps {
			if p.audit || c.opts.Audit {
				audited = append(audited, p.ref)
			} else {
				out = append(out, p)
			}
		}
		return out
	}
	eAdmin, eBaseline := keep(admin), keep(baseline)
	enforced := c.classChain(dir, eAdmin, eBaseline, eChains, eNPs, fam)
	return c.auditChain(dir, shadow, enforced, sortedRefs(audited))
}

func anyAudited(nps []*policy, admin, baseline []*clusterPolicy) bool {
	for _, p := range nps {
		if p.audit {
			return true
		}
	}
	for _, ps := range [][]*clusterPolicy{admin, baseline} {
		for _, p := range ps {
			if p.audit {
				return true
			}
		}
	}
	return false
}

func sortedRefs(refs []ruleset.PolicyRef) []ruleset.PolicyRef {
	slices.SortFunc(refs, func(a, b ruleset.PolicyRef) int { return strings.Compare(a.String(), b.String()) })
	return slices.Compact(refs)
}

func refsKey(refs []ruleset.PolicyRef) string {
	keys := make([]string, len(refs))
	for i, r := range refs {
		keys[i] = r.String()
	}
	return strings.Join(keys, ",")
}

// copyVariant says how a copy of a chain graph ends a judgement.
type copyVariant struct {
	// id distinguishes the copies of one chain; prefix starts their names.
	id, prefix string
	dir        Direction
	// shadow: the copy only decides where to go next; it counts and logs nothing (the
	// enforced copy does), and its chains have the shadow role.
	shadow bool
	// accept is the verdict replacing accept (and the end of a chain in the dispatch's
	// frame); drop the one replacing a drop, given the policies dropping there.
	accept func() ruleset.Verdict
	drop   func(policies []ruleset.PolicyRef) ruleset.Verdict
}

// auditChain returns the shadow copy of the class chain shadow, whose verdicts go to
// copies of the class chain enforced ("" when nothing is enforced: accept) that count
// where the two disagree. audited are the audited policies of the class (every policy
// under Options.Audit).
func (c *compilation) auditChain(dir Direction, shadow, enforced string, audited []ruleset.PolicyRef) string {
	allowVariant := &copyVariant{id: "allow>" + refsKey(audited), prefix: enforceChainPrefix(dir), dir: dir,
		accept: func() ruleset.Verdict { return ruleset.Accept },
		drop: func([]ruleset.PolicyRef) ruleset.Verdict {
			return ruleset.Verdict{Kind: ruleset.VerdictGoto, Chain: c.auditAllowChain(dir, audited)}
		}}
	denyVariant := func(key []ruleset.PolicyRef) *copyVariant {
		return &copyVariant{id: "deny>" + refsKey(key), prefix: enforceChainPrefix(dir), dir: dir,
			accept: func() ruleset.Verdict {
				return ruleset.Verdict{Kind: ruleset.VerdictGoto, Chain: c.auditDenyChain(dir, key)}
			},
			drop: func([]ruleset.PolicyRef) ruleset.Verdict { return ruleset.Drop }}
	}
	v := &copyVariant{id: "shadow>" + enforced + ">" + refsKey(audited), prefix: shadowChainPrefix(dir), dir: dir, shadow: true,
		accept: func() ruleset.Verdict {
			if enforced == "" {
				return ruleset.Accept
			}
			return ruleset.Verdict{Kind: ruleset.VerdictGoto, Chain: c.copyChain(enforced, allowVariant, true)}
		},
		drop: func(dropping []ruleset.PolicyRef) ruleset.Verdict {
			// Charged to the audited policies that drop here, else to every audited
			// policy of the class (an audited Pass or Accept changed the path).
			var key []ruleset.PolicyRef
			for _, r := range dropping {
				if slices.Contains(audited, r) {
					key = append(key, r)
				}
			}
			if len(key) == 0 {
				key = audited
			}
			key = sortedRefs(slices.Clone(key))
			if enforced == "" {
				return ruleset.Verdict{Kind: ruleset.VerdictGoto, Chain: c.auditDenyChain(dir, key)}
			}
			return ruleset.Verdict{Kind: ruleset.VerdictGoto, Chain: c.copyChain(enforced, denyVariant(key), true)}
		}}
	return c.copyChain(shadow, v, true)
}

// copyChain returns the copy of chain orig (and of the chains it reaches) for variant
// v. top: the copy runs in the dispatch's frame (reached by the verdict map's jump or by
// gotos from there), where falling off the end means "allowed".
func (c *compilation) copyChain(orig string, v *copyVariant, top bool) string {
	name := v.prefix + shortHash(fmt.Sprintf("%s|%s|%v", orig, v.id, top))
	if _, ok := c.chains[name]; ok {
		return name
	}
	och, oown := c.chains[orig], c.chainOwners[orig]
	ch := &ruleset.Chain{Name: name, Comment: truncate(map[bool]string{true: "as if enforced: ", false: "enforced: "}[v.shadow]+och.Comment, ruleset.MaxCommentLen)}
	owner := &ruleset.ChainOwner{Role: oown.Role, Direction: oown.Direction, Policies: oown.Policies}
	if v.shadow {
		owner.Role = ruleset.RoleShadow
	}
	// Registered before the rules are copied, so that a chain reached twice is copied once.
	c.addChain(ch, owner)
	c.copied = true
	ended := false
	for i, r := range och.Rules {
		ro := oown.Rules[i]
		if v.shadow {
			if r.Log != nil && r.Verdict.Kind == ruleset.VerdictNone {
				continue
			}
			r.Counter = false
		}
		if r.Log != nil {
			// The log names the chain it is in (the original may be gone: dropUnreachable).
			l := *r.Log
			l.Prefix = DenyLogPrefix(name)
			r.Log = &l
		}
		switch r.Verdict.Kind {
		case ruleset.VerdictAccept:
			r.Verdict = v.accept()
		case ruleset.VerdictDrop:
			r.Verdict = v.drop(dropPolicies(oown, ro))
		case ruleset.VerdictJump:
			r.Verdict = ruleset.Jump(c.copyChain(r.Verdict.Chain, v, false))
		case ruleset.VerdictGoto:
			r.Verdict = ruleset.Verdict{Kind: ruleset.VerdictGoto, Chain: c.copyChain(r.Verdict.Chain, v, top)}
		}
		ch.Rules = append(ch.Rules, r)
		owner.Rules = append(owner.Rules, ro)
		ended = len(r.Matches) == 0 && r.VMap == nil && r.Verdict.Kind != ruleset.VerdictNone && r.Verdict.Kind != ruleset.VerdictJump
	}
	if top && !ended {
		ch.Rules = append(ch.Rules, ruleset.Rule{Verdict: v.accept(), Comment: "end of the chain: allowed"})
		owner.Rules = append(owner.Rules, ruleset.RuleOwner{Role: ruleset.RoleChainEnd})
	}
	return name
}

// dropPolicies are the policies a drop rule drops for: a ClusterNetworkPolicy Deny
// rule's policy, or the policies of the chain (an isolation chain's).
func dropPolicies(co *ruleset.ChainOwner, ro ruleset.RuleOwner) []ruleset.PolicyRef {
	if ro.Role == ruleset.RoleClusterDeny {
		return []ruleset.PolicyRef{ro.Policy}
	}
	return co.Policies
}

// auditDenyChain returns the chain counting (and under LogDenied logging) connections
// the policies would deny and that pass.
func (c *compilation) auditDenyChain(dir Direction, pols []ruleset.PolicyRef) string {
	name := auditDenyChainPrefix(dir) + shortHash(refsKey(pols))
	if _, ok := c.chains[name]; ok {
		return name
	}
	comment := truncate("audit: "+refsKey(pols)+" would deny; allowed", ruleset.MaxCommentLen)
	ch := &ruleset.Chain{Name: name, Comment: comment}
	owner := &ruleset.ChainOwner{Role: ruleset.RoleAuditDeny, Direction: dir, Policies: pols}
	if c.opts.LogDenied {
		ch.Rules = append(ch.Rules, c.opts.denyLogRule(name))
		owner.Rules = append(owner.Rules, ruleset.RuleOwner{Role: ruleset.RoleDenyLog})
	}
	ch.Rules = append(ch.Rules, ruleset.Rule{Counter: true, Verdict: ruleset.Accept, Comment: comment})
	owner.Rules = append(owner.Rules, ruleset.RuleOwner{Role: ruleset.RoleAuditDeny})
	c.addChain(ch, owner)
	return name
}

// auditAllowChain returns the chain counting connections the audited policies would
// allow and that the enforced ones drop.
func (c *compilation) auditAllowChain(dir Direction, pols []ruleset.PolicyRef) string {
	name := auditAllowChainPrefix(dir) + shortHash(refsKey(pols))
	if _, ok := c.chains[name]; ok {
		return name
	}
	comment := truncate("audit: "+refsKey(pols)+" would allow; dropped", ruleset.MaxCommentLen)
	c.addChain(&ruleset.Chain{Name: name, Comment: comment, Rules: []ruleset.Rule{{Counter: true, Verdict: ruleset.Drop, Comment: comment}}},
		&ruleset.ChainOwner{Role: ruleset.RoleAuditAllow, Direction: dir, Policies: pols, Rules: []ruleset.RuleOwner{{Role: ruleset.RoleAuditAllow}}})
	return name
}

// dropUnreachable removes the chains that neither a base chain nor a dispatch map
// reaches: the originals of the chains audit mode copied, when no pod without an audited
// policy uses them. The kernel would hold them for nothing, and a drop rule that no
// packet reaches would only confuse someone reading the table.
func (c *compilation) dropUnreachable() {
	seen := map[string]bool{}
	var visit func(name string)
	visit = func(name string) {
		if seen[name] || c.chains[name] == nil {
			return
		}
		seen[name] = true
		for _, r := range c.chains[name].Rules {
			if r.Verdict.Kind == ruleset.VerdictJump || r.Verdict.Kind == ruleset.VerdictGoto {
				visit(r.Verdict.Chain)
			}
		}
	}
	for name, ch := range c.chains {
		if ch.Base != nil {
			visit(name)
		}
	}
	for _, m := range []string{MapEgressV4, MapEgressV6, MapIngressV4, MapIngressV6} {
		for _, e := range c.sets[m].Elements {
			if e.Verdict != nil {
				visit(e.Verdict.Chain)
			}
		}
	}
	for name := range c.chains {
		if !seen[name] {
			delete(c.chains, name)
			delete(c.chainOwners, name)
		}
	}
}
