// Package lab provides building blocks for end-to-end tests of the
// nftpolicy agent without a real cluster: network namespaces stand in for
// nodes and pods.
//
// The pieces are deliberately small and generic so that a multi-node lab can
// be built from them later:
//
//   - Netns: a named network namespace ("ip netns add") with Do (run Go code
//     on a locked OS thread inside it) and Exec (run a command inside it).
//   - Lab: owns a unique name prefix; every namespace, PID file and log it
//     creates carries that prefix so that Cleanup/CleanupStale can remove all
//     of it, including leftovers of a crashed previous run.
//   - AddNode/AddPod: a "routed" CNI topology (Calico/kindnet style): each
//     pod gets a veth whose host side lives in the node namespace, a /32
//     (and /128) address, and default routes through a link-local gateway
//     (169.254.1.1 for IPv4, fe80::1 for IPv6). Pod-to-pod traffic is
//     therefore always forwarded by the node namespace, where the agent's
//     nftables rules apply.
//   - ServeTCP/ServeUDP: in-process servers whose sockets live in a pod
//     namespace.
//   - Probe/ProbeCases/ProbeMatrix and Matrix: concurrent reachability
//     probing rendered like the upstream Kubernetes netpol tests.
//   - ForwardTCP: expose a root-namespace TCP endpoint (the envtest API
//     server) inside a node namespace.
//   - StartProcess: long-running commands (the agent) inside a namespace,
//     with PID files for crash cleanup.
//
// Everything here needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN); tests should
// call NewForTest, which skips when not running as root.
package lab
