// Package lab provides end-to-end tests of the nftpolicy agent with a
// cluster stand-in made of network namespaces: no containers, a real API
// server.
//
// Building blocks:
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
//   - ServeTCP/ServeUDP/ServeSCTP: in-process servers whose sockets live in a
//     pod namespace.
//   - Probe/ProbeCases/ProbeMatrix and Matrix: concurrent reachability
//     probing rendered like the upstream Kubernetes netpol tests.
//   - ForwardTCP: expose a root-namespace TCP endpoint (the envtest API
//     server) inside a node namespace.
//   - StartProcess: long-running commands (the agent) inside a namespace,
//     with PID files for crash cleanup.
//
// The cluster (StartCluster, built from the blocks above):
//
//   - an envtest kube-apiserver and etcd, with their PIDs recorded for crash
//     cleanup, a client and a kubeconfig for the agents;
//   - an underlay namespace with a bridge, and node namespaces plugged into
//     it (172.18.0.10+N, fd00:172:18::10+N), registered as Node objects;
//   - the Routed or BridgeVXLAN (Flannel style: cni0 with a fixed MAC,
//     flannel.1 and, dual-stack, flannel-v6.1, br_netfilter) topology
//     between pods and nodes;
//   - pods (namespaces, servers, Pod objects with status), ClusterIP
//     Services (kube-proxy's DNAT in every node), and the agent per node;
//   - Probe/ProbeMatrix from pods, with "ns/name" rows and columns.
//
// RunDemo is the README's `make demo`.
//
// Everything here needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN); tests should
// call NewForTest, which skips when not running as root.
package lab
