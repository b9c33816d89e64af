// Package netpol holds the Kubernetes NetworkPolicy connectivity cases — every
// connectivity test of the upstream e2e suite (k8s.io/kubernetes v1.37.2,
// test/e2e/network/netpol/network_policy.go) plus cases upstream lacks — written
// once, independent of where they run.
//
// The pieces:
//
//   - Model: the upstream topology (namespaces x, y, z; pods a, b, c in each,
//     serving ports 80 and 81 over TCP, UDP and SCTP; services s-<ns>-<pod>)
//     spread over two nodes by a Placement. An environment's Setup creates it.
//   - Env: what a case needs from an environment — a controller-runtime client
//     for policies and labels, a matrix Probe, extra pods (hostNetwork,
//     completed, sidecar), its capabilities and its retry policy.
//   - Case and Run: a case is a sequence of steps (create/update/delete
//     policies, relabel, Validate a reachability matrix) written against Run,
//     which records the first error and turns later steps into no-ops, so cases
//     read like the upstream ones without error plumbing. RunCase resets the
//     environment before and after each case so cases run in sequence on one
//     environment.
//   - TracerEnv: a pure environment — a fake client holding the objects, the
//     compiler producing each node's ruleset and the tracer judging every cell
//     — that runs every case as a fast unit test.
//
// A lab-backed Env (network namespaces, a real API server, real agents) only has
// to implement Env; the cases and the runner stay as they are.
package netpol
