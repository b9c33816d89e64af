package controllers

import (
	"context"
	"strconv"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// CounterReader reads the kernel counters of the table's rules, per chain in rule
// order (dataplane.Dataplane).
type CounterReader interface {
	Counters(ctx context.Context) (map[string][]dataplane.RuleCounter, error)
}

var (
	descAllowedPackets = prometheus.NewDesc("nftpolicy_policy_allowed_packets_total",
		"Packets of new connections accepted by a rule of a NetworkPolicy on this node (kernel rule counters; they restart when the policy's chain is rewritten).",
		[]string{"namespace", "policy", "direction", "rule"}, nil)
	descAllowedBytes = prometheus.NewDesc("nftpolicy_policy_allowed_bytes_total",
		"Bytes of the packets counted by nftpolicy_policy_allowed_packets_total.",
		[]string{"namespace", "policy", "direction", "rule"}, nil)
	descDroppedPackets = prometheus.NewDesc("nftpolicy_policy_dropped_packets_total",
		"Packets dropped for local pods the policy isolates because no policy selecting the pod allowed them (counted for every policy isolating the pod; restart when the set of policies isolating a pod changes).",
		[]string{"namespace", "policy", "direction"}, nil)
	descClusterRulePackets = prometheus.NewDesc("nftpolicy_cluster_policy_rule_packets_total",
		"Packets of new connections a ClusterNetworkPolicy rule matched on this node, by its action (Accept, Deny, Pass); rule is the rule's name, or its index when it has none (kernel rule counters; they restart when a tier chain holding the rule is rewritten).",
		[]string{"policy", "tier", "direction", "rule", "action"}, nil)
	descClusterRuleBytes = prometheus.NewDesc("nftpolicy_cluster_policy_rule_bytes_total",
		"Bytes of the packets counted by nftpolicy_cluster_policy_rule_packets_total.",
		[]string{"policy", "tier", "direction", "rule", "action"}, nil)
	descAuditDeniedPackets = prometheus.NewDesc("nftpolicy_policy_audit_denied_packets_total",
		"Packets of new connections that policies in audit mode (annotation nftpolicy.io/mode: audit, or every policy under --audit) would deny and that passed, counted for each such policy; namespace is empty for a ClusterNetworkPolicy (kernel rule counters; they restart when the audit chain is rewritten).",
		[]string{"namespace", "policy", "direction"}, nil)
	descAuditDeniedBytes = prometheus.NewDesc("nftpolicy_policy_audit_denied_bytes_total",
		"Bytes of the packets counted by nftpolicy_policy_audit_denied_packets_total.",
		[]string{"namespace", "policy", "direction"}, nil)
	descAuditAllowedPackets = prometheus.NewDesc("nftpolicy_policy_audit_allowed_packets_total",
		"Packets of new connections that policies in audit mode would allow and that the enforced policies dropped, counted for each audited policy of the pod; namespace is empty for a ClusterNetworkPolicy (kernel rule counters; they restart when the audit chain is rewritten).",
		[]string{"namespace", "policy", "direction"}, nil)
	descAuditAllowedBytes = prometheus.NewDesc("nftpolicy_policy_audit_allowed_bytes_total",
		"Bytes of the packets counted by nftpolicy_policy_audit_allowed_packets_total.",
		[]string{"namespace", "policy", "direction"}, nil)
	descPodsIsolated = prometheus.NewDesc("nftpolicy_local_pods_isolated",
		"Addresses of local pods isolated by at least one policy, by direction (a dual-stack pod counts once per address family).",
		[]string{"direction"}, nil)
	descPolicies = prometheus.NewDesc("nftpolicy_policies",
		"NetworkPolicies in force on this node: those selecting at least one local pod.",
		nil, nil)
)

// VerdictCollector exposes the per-policy verdict counters and the ruleset gauges. At
// scrape time it dumps the kernel's rule counters (one netlink dump, no per-packet
// work in userspace) and attributes each counted rule to its policy through the owners
// of the ruleset the Syncer last applied. Label cardinality is bounded by the policies of
// this node: (namespace, policy, direction, rule index).
type VerdictCollector struct {
	Counters CounterReader
	// Applied returns the ruleset in the kernel (Syncer.Applied); nil before the first
	// apply.
	Applied func() *ruleset.Ruleset
	// Timeout bounds the kernel read of one scrape (default 5s).
	Timeout time.Duration
	Log     logr.Logger
}

var _ prometheus.Collector = (*VerdictCollector)(nil)

// Describe implements prometheus.Collector.
func (c *VerdictCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAllowedPackets, descAllowedBytes, descDroppedPackets, descClusterRulePackets, descClusterRuleBytes,
		descAuditDeniedPackets, descAuditDeniedBytes, descAuditAllowedPackets, descAuditAllowedBytes, descPodsIsolated, descPolicies} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *VerdictCollector) Collect(ch chan<- prometheus.Metric) {
	rs := c.Applied()
	if rs == nil {
		return // nothing applied yet: no series rather than misleading zeros
	}
	for _, d := range []struct {
		dir    compiler.Direction
		v4, v6 string
	}{{compiler.Ingress, compiler.MapIngressV4, compiler.MapIngressV6}, {compiler.Egress, compiler.MapEgressV4, compiler.MapEgressV6}} {
		n := 0
		for _, m := range []string{d.v4, d.v6} {
			if s := rs.Set(m); s != nil {
				n += len(s.Elements)
			}
		}
		ch <- prometheus.MustNewConstMetric(descPodsIsolated, prometheus.GaugeValue, float64(n), string(d.dir))
	}

	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	kernel, err := c.Counters.Counters(ctx)
	if err != nil {
		// The scrape still gets every other metric; the verdict series are absent
		// rather than wrong.
		c.Log.Error(err, "reading the rule counters for metrics")
		kernel = nil
	}
	v := attribute(rs, kernel)
	ch <- prometheus.MustNewConstMetric(descPolicies, prometheus.GaugeValue, float64(len(v.policies)))
	if kernel == nil {
		return
	}
	for k, n := range v.allowed {
		ch <- prometheus.MustNewConstMetric(descAllowedPackets, prometheus.CounterValue, float64(n.packets), k.namespace, k.name, k.dir, k.rule)
		ch <- prometheus.MustNewConstMetric(descAllowedBytes, prometheus.CounterValue, float64(n.bytes), k.namespace, k.name, k.dir, k.rule)
	}
	for k, n := range v.dropped {
		ch <- prometheus.MustNewConstMetric(descDroppedPackets, prometheus.CounterValue, float64(n), k.namespace, k.name, k.dir)
	}
	for k, n := range v.cluster {
		ch <- prometheus.MustNewConstMetric(descClusterRulePackets, prometheus.CounterValue, float64(n.packets), k.policy, k.tier, k.dir, k.rule, k.action)
		ch <- prometheus.MustNewConstMetric(descClusterRuleBytes, prometheus.CounterValue, float64(n.bytes), k.policy, k.tier, k.dir, k.rule, k.action)
	}
	for k, n := range v.auditDenied {
		ch <- prometheus.MustNewConstMetric(descAuditDeniedPackets, prometheus.CounterValue, float64(n.packets), k.namespace, k.name, k.dir)
		ch <- prometheus.MustNewConstMetric(descAuditDeniedBytes, prometheus.CounterValue, float64(n.bytes), k.namespace, k.name, k.dir)
	}
	for k, n := range v.auditAllowed {
		ch <- prometheus.MustNewConstMetric(descAuditAllowedPackets, prometheus.CounterValue, float64(n.packets), k.namespace, k.name, k.dir)
		ch <- prometheus.MustNewConstMetric(descAuditAllowedBytes, prometheus.CounterValue, float64(n.bytes), k.namespace, k.name, k.dir)
	}
}

type policyDir struct{ namespace, name, dir string }

type ruleKey struct {
	namespace, name, dir, rule string
}

type packetsBytes struct{ packets, bytes uint64 }

// clusterRuleKey names one ClusterNetworkPolicy rule's counters.
type clusterRuleKey struct{ policy, tier, dir, rule, action string }

type verdicts struct {
	allowed  map[ruleKey]packetsBytes
	dropped  map[policyDir]uint64
	cluster  map[clusterRuleKey]packetsBytes
	policies map[ruleset.PolicyRef]bool // policies in force
	// auditDenied and auditAllowed: what audited policies would have denied (and
	// passed) or allowed (and was dropped), per policy; a ClusterNetworkPolicy has an
	// empty namespace.
	auditDenied, auditAllowed map[policyDir]packetsBytes
}

// attribute maps the kernel counters onto policies through the owners of the applied
// ruleset (the kernel's table has none: chains are matched by name, rules by
// position). A kernel chain is used only when its rules line up with the applied
// chain's (same count, same comments): between a commit and the Syncer noting it the
// two can differ for a moment, and a count must never be attributed to the wrong rule.
//
// Allow rules are attributed to the policy rule they compile (several allow rules of
// one policy rule are summed), the drop ending an isolation chain to every policy the
// chain isolates with.
//
// Audit mode (compiler/audit.go) copies chains. The shadow copies, which judge as if
// the audited policies were enforced, have no counters and are skipped; the copies of
// the enforced chains keep their roles, owners and counters and count what they really
// accept and drop, each packet in one copy only, so the sums above stay true. The
// audit-deny and audit-allow chains count, once each, what the audited policies they
// name would have done differently.
func attribute(rs *ruleset.Ruleset, kernel map[string][]dataplane.RuleCounter) verdicts {
	v := verdicts{allowed: map[ruleKey]packetsBytes{}, dropped: map[policyDir]uint64{}, cluster: map[clusterRuleKey]packetsBytes{},
		policies: map[ruleset.PolicyRef]bool{}, auditDenied: map[policyDir]packetsBytes{}, auditAllowed: map[policyDir]packetsBytes{}}
	for _, ch := range rs.Chains {
		co := rs.Owners.Chain(ch.Name)
		if co == nil {
			continue
		}
		if co.Role == ruleset.RoleAuditDeny || co.Role == ruleset.RoleAuditAllow {
			into := v.auditDenied
			if co.Role == ruleset.RoleAuditAllow {
				into = v.auditAllowed
			}
			kc, ok := lineUp(ch, kernel[ch.Name])
			if !ok {
				continue
			}
			for i, ro := range co.Rules {
				if ro.Role != co.Role || !ch.Rules[i].Counter || !kc[i].Counted {
					continue
				}
				for _, p := range co.Policies {
					k := policyDir{p.Namespace, p.Name, string(co.Direction)}
					pb := into[k]
					pb.packets += kc[i].Packets
					pb.bytes += kc[i].Bytes
					into[k] = pb
				}
			}
			continue
		}
		// A ClusterNetworkPolicy rule is counted where the tier chains match it (not
		// again in its deny-log chain). One rule of a policy may be inlined in the tier
		// chains of several sets of pods: their counts add up.
		if co.Role == ruleset.RoleAdminTier || co.Role == ruleset.RoleBaselineTier {
			kc, ok := lineUp(ch, kernel[ch.Name])
			if !ok {
				continue
			}
			for i, ro := range co.Rules {
				if ro.Cluster == nil || !ch.Rules[i].Counter || !kc[i].Counted {
					continue
				}
				rule := ro.Cluster.Name
				if rule == "" {
					rule = strconv.Itoa(ro.Rule)
				}
				k := clusterRuleKey{ro.Policy.Name, ro.Cluster.Tier, string(co.Direction), rule, ro.Cluster.Action}
				pb := v.cluster[k]
				pb.packets += kc[i].Packets
				pb.bytes += kc[i].Bytes
				v.cluster[k] = pb
			}
			continue
		}
		if co.Role != ruleset.RoleIsolation && co.Role != ruleset.RolePolicy {
			continue
		}
		dir := string(co.Direction)
		if co.Role == ruleset.RoleIsolation {
			for _, p := range co.Policies {
				v.policies[p] = true
			}
		}
		kc, ok := lineUp(ch, kernel[ch.Name])
		if !ok {
			continue
		}
		for i, ro := range co.Rules {
			if !ch.Rules[i].Counter || !kc[i].Counted {
				continue
			}
			switch ro.Role {
			case ruleset.RoleIsolationDrop:
				for _, p := range co.Policies {
					v.dropped[policyDir{p.Namespace, p.Name, dir}] += kc[i].Packets
				}
			case ruleset.RoleAllow:
				k := ruleKey{ro.Policy.Namespace, ro.Policy.Name, dir, strconv.Itoa(ro.Rule)}
				pb := v.allowed[k]
				pb.packets += kc[i].Packets
				pb.bytes += kc[i].Bytes
				v.allowed[k] = pb
			}
		}
	}
	return v
}

// lineUp returns the kernel rules of the chain when they are the applied ones.
func lineUp(ch *ruleset.Chain, kc []dataplane.RuleCounter) ([]dataplane.RuleCounter, bool) {
	if len(kc) != len(ch.Rules) {
		return nil, false
	}
	for i, r := range ch.Rules {
		if kc[i].Comment != r.Comment {
			return nil, false
		}
	}
	return kc, true
}

// Applied returns the ruleset of the last successful apply (nil before the first):
// metrics read it at scrape time without taking the sync lock.
func (s *Syncer) Applied() *ruleset.Ruleset { return s.applied.Load() }

// noteApplied records a ruleset the kernel now holds and the cache sizes; called with
// the sync lock held after every successful apply.
func (s *Syncer) noteApplied(rs *ruleset.Ruleset) {
	s.applied.Store(rs)
	if s.engine != nil {
		pods, namespaces, policies := s.engine.Sizes()
		cacheObjects.WithLabelValues("pods").Set(float64(pods))
		cacheObjects.WithLabelValues("namespaces").Set(float64(namespaces))
		cacheObjects.WithLabelValues("networkpolicies").Set(float64(policies))
		// Few enough (tens of policies, thousands of nodes) to count on every sync.
		var cnps, nodes int
		s.engine.EachClusterPolicy(func(*cnp.ClusterNetworkPolicy) { cnps++ })
		s.engine.EachNode(func(*model.Node) { nodes++ })
		cacheObjects.WithLabelValues("clusternetworkpolicies").Set(float64(cnps))
		cacheObjects.WithLabelValues("nodes").Set(float64(nodes))
	}
}
