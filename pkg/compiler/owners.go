package compiler

import (
	"cmp"
	"slices"

	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// ownerTable returns the Owners of the compiled structure: the owners recorded with
// each chain, and each set's role completed with the policy rules whose allow rules
// look it up. It depends on the structure only (not on set elements), so the Engine
// builds it once per structure and shares it between the rulesets of its Flushes.
func (c *compilation) ownerTable() *ruleset.Owners {
	if c.owners != nil {
		return c.owners
	}
	o := &ruleset.Owners{Chains: make(map[string]*ruleset.ChainOwner, len(c.chainOwners)), Sets: make(map[string]*ruleset.SetOwner, len(c.setOwners))}
	users := map[string][]ruleset.PolicyRule{}
	for name, co := range c.chainOwners {
		o.Chains[name] = co
		if co.Role != ruleset.RolePolicy && co.Role != ruleset.RoleAdminTier && co.Role != ruleset.RoleBaselineTier {
			continue
		}
		for i, r := range c.chains[name].Rules {
			ro := co.Rules[i]
			if ro.Role == ruleset.RoleTierNext {
				continue
			}
			for _, m := range r.Matches {
				if m.Kind == ruleset.MatchLookup {
					users[m.Set] = append(users[m.Set], ruleset.PolicyRule{Policy: ro.Policy, Direction: co.Direction, Rule: ro.Rule})
				}
			}
		}
	}
	for name, so := range c.setOwners {
		rules := users[name]
		slices.SortFunc(rules, comparePolicyRules)
		so.Rules = slices.Compact(rules)
		o.Sets[name] = &so
	}
	c.owners = o
	return o
}

func comparePolicyRules(a, b ruleset.PolicyRule) int {
	return cmp.Or(cmp.Compare(a.Policy.Kind, b.Policy.Kind), cmp.Compare(a.Policy.Namespace, b.Policy.Namespace), cmp.Compare(a.Policy.Name, b.Policy.Name),
		cmp.Compare(a.Direction, b.Direction), cmp.Compare(a.Rule, b.Rule))
}
