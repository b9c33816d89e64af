package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

const phaseCompute = "compute"

var (
	syncDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "nftpolicy_sync_duration_seconds",
		Help:    "Time of one sync by phase: compute (snapshot and compile), full or incremental (kernel commit).",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
	}, []string{"phase"})
	syncFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nftpolicy_sync_failures_total",
		Help: "Syncs whose kernel transaction failed (the previous ruleset stayed in force).",
	})
	driftRepairs = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nftpolicy_drift_repairs_total",
		Help: "Periodic read-backs that found the kernel table different from the applied ruleset and repaired it.",
	})
	revocationDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "nftpolicy_revocation_duration_seconds",
		Help: "Time from the kernel commit of a ruleset change to the marks of the established flows it denies written (the revocation pass runs after the sync, never in its way).",
		// From 100 µs: a change that concerns no flow costs next to nothing.
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
	})
	revocationJudged = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nftpolicy_revocation_flows_judged_total",
		Help: "Conntrack entries judged by revocation: by the passes after changes (judged=\"change\": those whose first packet's addresses a change concerned, all of them after a full replace) and, within half a second after a pass, those the table learnt of since in its scope (judged=\"late\").",
	}, []string{"judged"})
	revocationPasses = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nftpolicy_revocation_passes_total",
		Help: "Revocation passes by scope: addresses (the flows of the addresses a change concerned) or all (every flow: a first or full ruleset, drift repaired, the conntrack view rebuilt).",
	}, []string{"scope"})
	revokedFlows = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nftpolicy_revoked_flows_total",
		Help: "Established conntrack entries marked revoked (their packets dropped) because a new ruleset denies them.",
	})
	rulesetSize = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "nftpolicy_ruleset_size",
		Help: "Size of the applied ruleset by object kind (chains, rules, elements).",
	}, []string{"kind"})
	cacheObjects = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "nftpolicy_cache_objects",
		Help: "Objects the agent holds (informer caches and compiler indexes) by kind: pods, namespaces, networkpolicies, clusternetworkpolicies, nodes.",
	}, []string{"kind"})
	auditMode = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "nftpolicy_audit_mode",
		Help: "1 when the agent runs with --audit: this node enforces no policy, it counts and logs what the policies would deny; 0 when it enforces.",
	})
	nodeEventsSuppressed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nftpolicy_node_events_suppressed_total",
		Help: "Dataplane failures not reported as a Node Event because the same error was reported less than the rate limit ago.",
	})
)

func init() {
	metrics.Registry.MustRegister(syncDuration, syncFailures, driftRepairs, revokedFlows, revocationDuration, revocationJudged, revocationPasses, rulesetSize, cacheObjects, auditMode, nodeEventsSuppressed)
}
