// Package traffic holds the reliability suite for live traffic: revocation of
// established flows a policy change denies (and only those), and pod lifecycle races
// (a new pod's first packets, IP reuse, Pending → Running, binding, a burst of
// thousands of pods). It runs on a lab cluster (two routed nodes, a real API server, an
// agent per node) and only with NFTPOLICY_RELIABILITY=1 (make test-reliability).
package traffic
