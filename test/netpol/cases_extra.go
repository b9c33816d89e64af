package netpol

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftpolicy/nftpolicy/test/lab"
)

// ExtraCases returns cases upstream's suite lacks, each checking full matrices like the
// upstream ones: endPort ranges, ingress ipBlock with except, ipBlocks and address
// families, hostNetwork pods, a completed pod holding a reused address, a named port on
// a sidecar, and same-node versus cross-node pairs. IPv6 is not a case of its own: every
// case runs once per family the environment has.
func ExtraCases() []Case {
	return []Case{
		{
			Context: ContextExtra, Name: "should enforce ingress policies with endPort ranges",
			Pods: Refs("x/a", "x/b", "y/a", "y/b", "z/a"),
			Run: func(r *Run) {
				// x/a: from namespace y only, TCP 80-81 (both probe ports inside the range).
				r.CreatePolicy(X, GenNetworkPolicyWithNameAndPodMatchLabel("x-a-from-y-tcp-80-81", podName("a"),
					SetSpecIngressRules(networkingv1.NetworkPolicyIngressRule{
						From:  []networkingv1.NetworkPolicyPeer{nsSelector(nsName(Y))},
						Ports: []networkingv1.NetworkPolicyPort{portRange(proto(TCP), 80, 81)},
					})))
				// x/b: from anyone, TCP 81-65535 (starts just above 80) and every UDP port (a
				// UDP range opens no TCP port).
				r.CreatePolicy(X, GenNetworkPolicyWithNameAndPodMatchLabel("x-b-tcp-81-up-udp-all", podName("b"),
					SetSpecIngressRules(networkingv1.NetworkPolicyIngressRule{
						Ports: []networkingv1.NetworkPolicyPort{portRange(proto(TCP), 81, 65535), portRange(proto(UDP), 1, 65535)},
					})))
				// z/a: from anyone, TCP 79-80 (ends just below 81).
				r.CreatePolicy(Z, GenNetworkPolicyWithNameAndPodMatchLabel("z-a-tcp-79-80", podName("a"),
					SetSpecIngressRules(networkingv1.NetworkPolicyIngressRule{
						Ports: []networkingv1.NetworkPolicyPort{portRange(proto(TCP), 79, 80)},
					})))

				tcp80 := r.Reachability(true)
				tcp80.ExpectAllIngress("x/a", false).ExpectPeer(Peer{Namespace: Y}, Peer{Namespace: X, Pod: "a"}, true)
				tcp80.ExpectAllIngress("x/b", false)
				r.Validate(80, TCP, tcp80)

				tcp81 := r.Reachability(true)
				tcp81.ExpectAllIngress("x/a", false).ExpectPeer(Peer{Namespace: Y}, Peer{Namespace: X, Pod: "a"}, true)
				tcp81.ExpectAllIngress("z/a", false)
				r.Validate(81, TCP, tcp81)

				udp80 := r.Reachability(true)
				udp80.ExpectAllIngress("x/a", false)
				udp80.ExpectAllIngress("z/a", false)
				r.Validate(80, UDP, udp80)
			},
		},
		{
			Context: ContextExtra, Name: "should enforce egress policies with endPort ranges",
			Pods: Refs("x/a", "x/b", "y/a", "y/b", "z/a"),
			Run: func(r *Run) {
				// x/a: anywhere on TCP 81-82, namespace z also on TCP 79-80.
				r.CreatePolicy(X, GenNetworkPolicyWithNameAndPodMatchLabel("x-a-egress-ranges", podName("a"), SetSpecEgressRules(
					networkingv1.NetworkPolicyEgressRule{Ports: []networkingv1.NetworkPolicyPort{portRange(proto(TCP), 81, 82)}},
					networkingv1.NetworkPolicyEgressRule{
						To:    []networkingv1.NetworkPolicyPeer{nsSelector(nsName(Z))},
						Ports: []networkingv1.NetworkPolicyPort{portRange(proto(TCP), 79, 80)},
					},
				)))
				// y/b: UDP 80-81 only.
				r.CreatePolicy(Y, GenNetworkPolicyWithNameAndPodMatchLabel("y-b-egress-udp-80-81", podName("b"), SetSpecEgressRules(
					networkingv1.NetworkPolicyEgressRule{Ports: []networkingv1.NetworkPolicyPort{portRange(proto(UDP), 80, 81)}},
				)))

				tcp80 := r.Reachability(true)
				tcp80.ExpectAllEgress("x/a", false).ExpectPeer(Peer{Namespace: X, Pod: "a"}, Peer{Namespace: Z}, true)
				tcp80.ExpectAllEgress("y/b", false)
				r.Validate(80, TCP, tcp80)

				tcp81 := r.Reachability(true)
				tcp81.ExpectAllEgress("y/b", false)
				r.Validate(81, TCP, tcp81)

				udp81 := r.Reachability(true)
				udp81.ExpectAllEgress("x/a", false)
				r.Validate(81, UDP, udp81)
			},
		},
		{
			Context: ContextExtra, Name: "should enforce ingress ipBlock with except, which also applies to pod addresses",
			Pods: Refs("x/a", "x/b", "y/a", "y/b", "z/a"),
			Run: func(r *Run) {
				r.Step("x/a: ingress from a large block around y/b, except y/b itself")
				fromBlock := GenNetworkPolicyWithNameAndPodMatchLabel("x-a-from-block-except-y-b", podName("a"),
					SetSpecIngressRules(networkingv1.NetworkPolicyIngressRule{
						From: []networkingv1.NetworkPolicyPeer{ipBlock(r.LargeCIDR("y/b"), r.HostCIDR("y/b"))},
					}))
				r.CreatePolicy(X, fromBlock)
				r.Step("x/b: ingress from y/a's address only")
				r.CreatePolicy(X, GenNetworkPolicyWithNameAndPodMatchLabel("x-b-from-y-a-address", podName("b"),
					SetSpecIngressRules(networkingv1.NetworkPolicyIngressRule{
						From: []networkingv1.NetworkPolicyPeer{ipBlock(r.HostCIDR("y/a"))},
					})))

				want := r.Reachability(true)
				want.Expect("y/b", "x/a", false)
				want.ExpectAllIngress("x/b", false).Expect("y/a", "x/b", true)
				r.Validate(80, TCP, want)

				r.Step("an except carves only its own ipBlock: a pod selector for y/b in the same rule lets it in")
				fromBlock.Spec.Ingress[0].From = append(fromBlock.Spec.Ingress[0].From, nsPodSelector(nsName(Y), podName("b")))
				r.UpdatePolicy(X, fromBlock)

				want = r.Reachability(true)
				want.ExpectAllIngress("x/b", false).Expect("y/a", "x/b", true)
				r.Validate(80, TCP, want)
			},
		},
		{
			Context: ContextExtra, Name: "should match ipBlocks only against addresses of their own family",
			Pods: Refs("x/a", "x/b", "y/a", "z/a"),
			Run: func(r *Run) {
				// "Everything" in each family: 0.0.0.0/0 matches no IPv6 address and ::/0 no
				// IPv4 address, so which pods are reachable depends on the probe family.
				r.CreatePolicy(X, GenNetworkPolicyWithNameAndPodMatchLabel("x-a-from-all-ipv4", podName("a"),
					SetSpecIngressRules(networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{ipBlock("0.0.0.0/0")}})))
				r.CreatePolicy(X, GenNetworkPolicyWithNameAndPodMatchLabel("x-b-from-all-ipv6", podName("b"),
					SetSpecIngressRules(networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{ipBlock("::/0")}})))
				r.CreatePolicy(Y, GenNetworkPolicyWithNameAndPodMatchLabel("y-a-to-all-ipv4", podName("a"),
					SetSpecEgressRules(networkingv1.NetworkPolicyEgressRule{To: []networkingv1.NetworkPolicyPeer{ipBlock("0.0.0.0/0")}})))

				want := r.Reachability(true)
				if r.Family() == lab.IPv4 {
					want.ExpectAllIngress("x/b", false)
				} else {
					want.ExpectAllIngress("x/a", false)
					want.ExpectAllEgress("y/a", false)
				}
				r.Validate(80, TCP, want)
			},
		},
		{
			Context: ContextExtra, Name: "should never isolate or select hostNetwork pods, but match their node address in ipBlocks",
			Pods:  Refs("x/a", "x/b", "x/c", "y/a", "y/b", "x/host"),
			Needs: Needs{HostNetworkPods: true},
			Run: func(r *Run) {
				m := r.Env().Model()
				r.CreatePod(PodSpec{
					Namespace: X, Name: "host", Labels: podName("host"), Node: m.Nodes[0], HostNetwork: true,
					Containers: []corev1.Container{ServingContainer(m.Ports, []corev1.Protocol{TCP, UDP})},
				})
				xPods := []string{"x/a", "x/b", "x/c"}
				host := "x/host"

				r.Step("deny all ingress and egress in x: the hostNetwork pod in x is not selected")
				r.CreatePolicy(X, GenNetworkPolicyWithNameAndPodSelector("deny-all", metav1.LabelSelector{}, SetSpecIngressRules(), SetSpecEgressRules()))
				want := r.Reachability(true)
				for _, p := range xPods {
					want.ExpectAllIngress(p, false).ExpectAllEgress(p, false)
				}
				// A node always reaches its own pods (kubelet probes), and a hostNetwork pod
				// is its node: only x's pods on other nodes are closed to it.
				for _, p := range xPods {
					if r.Node(p) == r.Node(host) {
						want.Expect(host, p, true)
					}
				}
				r.Validate(80, TCP, want)

				r.Step("allow x's pods to each other, by pod selectors that would match the hostNetwork pod's labels")
				peers := []networkingv1.NetworkPolicyPeer{podSelector(map[string]string{}), podSelector(podName("host"))}
				r.CreatePolicy(X, GenNetworkPolicyWithNameAndPodSelector("allow-within-x", metav1.LabelSelector{},
					SetSpecIngressRules(networkingv1.NetworkPolicyIngressRule{From: peers}),
					SetSpecEgressRules(networkingv1.NetworkPolicyEgressRule{To: peers})))
				for _, p := range xPods {
					for _, q := range xPods {
						want.Expect(p, q, true)
					}
				}
				r.Validate(80, TCP, want)

				// Its address is the node's; with a VXLAN CNI its traffic to pods on other
				// nodes leaves from the VXLAN device's address, which the block must hold too.
				r.Step("allow the hostNetwork pod's source addresses (its node's) by ipBlock")
				var nodeBlocks []networkingv1.NetworkPolicyPeer
				for _, cidr := range r.HostSourceCIDRs(host) {
					nodeBlocks = append(nodeBlocks, ipBlock(cidr))
				}
				r.CreatePolicy(X, GenNetworkPolicyWithNameAndPodSelector("allow-node-address", metav1.LabelSelector{},
					SetSpecIngressRules(networkingv1.NetworkPolicyIngressRule{From: nodeBlocks}),
					SetSpecEgressRules(networkingv1.NetworkPolicyEgressRule{To: nodeBlocks})))
				for _, p := range xPods {
					want.Expect(host, p, true).Expect(p, host, true)
				}
				r.Validate(80, TCP, want)
			},
		},
		{
			Context: ContextExtra, Name: "should ignore a completed pod whose address now belongs to a running pod",
			Pods:  Refs("x/a", "x/b", "y/a", "y/b"),
			Needs: Needs{CompletedPods: true},
			Run: func(r *Run) {
				m := r.Env().Model()
				xb, _ := m.Pod(Ref("x/b"))
				stale := Ref("x/b")
				// Its name sorts before x/b's, so an enforcer that counted ended pods and broke
				// ties by name would give the address to it.
				r.CreatePod(PodSpec{
					Namespace: X, Name: "a-old", Labels: podName("old"), Node: xb.Node,
					Containers: []corev1.Container{ServingContainer(m.Ports, m.Protocols)},
					Phase:      corev1.PodSucceeded, StaleIPsOf: &stale,
				})

				r.Step("isolating the completed pod isolates nothing: its address is x/b's")
				r.CreatePolicy(X, GenNetworkPolicyWithNameAndPodMatchLabel("isolate-old", podName("old"), SetSpecIngressRules(), SetSpecEgressRules()))
				want := r.Reachability(true)
				r.Validate(80, TCP, want)

				r.Step("allowing the completed pod as a peer allows nothing")
				fromOld := GenNetworkPolicyWithNameAndPodMatchLabel("y-a-from-old", podName("a"),
					SetSpecIngressRules(networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{nsPodSelector(nsName(X), podName("old"))}}))
				r.CreatePolicy(Y, fromOld)
				want.ExpectAllIngress("y/a", false)
				r.Validate(80, TCP, want)

				r.Step("the address is x/b's: selecting x/b allows it")
				fromOld.Spec.Ingress[0].From = append(fromOld.Spec.Ingress[0].From, nsPodSelector(nsName(X), podName("b")))
				r.UpdatePolicy(Y, fromOld)
				want.Expect("x/b", "y/a", true)
				r.Validate(80, TCP, want)

				r.Step("egress to the completed pod reaches nothing")
				r.CreatePolicy(X, GenNetworkPolicyWithNameAndPodMatchLabel("x-a-to-old", podName("a"),
					SetSpecEgressRules(networkingv1.NetworkPolicyEgressRule{To: []networkingv1.NetworkPolicyPeer{podSelector(podName("old"))}})))
				want.ExpectAllEgress("x/a", false)
				r.Validate(80, TCP, want)
			},
		},
		{
			Context: ContextExtra, Name: "should resolve a named port that only a restartable init container (sidecar) declares",
			Pods:  Refs("x/a", "x/b", "y/a", "x/sidecar"),
			Needs: Needs{ExtraPods: true},
			Run: func(r *Run) {
				m := r.Env().Model()
				always := corev1.ContainerRestartPolicyAlways
				r.CreatePod(PodSpec{
					Namespace: X, Name: "sidecar", Labels: podName("sidecar"), Node: m.Nodes[len(m.Nodes)-1],
					InitContainers: []corev1.Container{
						// An ordinary init container has finished before the pod runs: its ports
						// are not the pod's. Port 80 is served by the app container, so a wrong
						// resolution of init-tcp would show as an open port 80.
						{Name: "setup", Image: "busybox", Ports: []corev1.ContainerPort{{Name: "init-tcp", ContainerPort: 80, Protocol: TCP}}},
						{Name: "proxy", Image: "busybox", RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "sidecar-tcp", ContainerPort: 81, Protocol: TCP}}},
					},
					Containers: []corev1.Container{
						{Name: "app", Image: "busybox", Ports: []corev1.ContainerPort{{Name: "web", ContainerPort: 80, Protocol: TCP}}},
					},
				})

				r.Step("ingress to the sidecar's named port")
				r.CreatePolicy(X, GenNetworkPolicyWithNameAndPodMatchLabel("sidecar-port", podName("sidecar"),
					SetSpecIngressRules(networkingv1.NetworkPolicyIngressRule{Ports: []networkingv1.NetworkPolicyPort{namedPort(proto(TCP), "sidecar-tcp")}})))
				tcp81 := r.Reachability(true)
				r.Validate(81, TCP, tcp81)
				tcp80 := r.Reachability(true)
				tcp80.ExpectAllIngress("x/sidecar", false)
				r.Validate(80, TCP, tcp80)

				r.Step("an ordinary init container's named port resolves to nothing")
				r.CreatePolicy(X, GenNetworkPolicyWithNameAndPodMatchLabel("init-port", podName("sidecar"),
					SetSpecIngressRules(networkingv1.NetworkPolicyIngressRule{Ports: []networkingv1.NetworkPolicyPort{namedPort(proto(TCP), "init-tcp")}})))
				r.Validate(80, TCP, tcp80)

				r.Step("egress to the sidecar's named port reaches only the pod that declares it")
				r.CreatePolicy(Y, GenNetworkPolicyWithNameAndPodMatchLabel("y-a-egress-sidecar-port", podName("a"),
					SetSpecEgressRules(networkingv1.NetworkPolicyEgressRule{Ports: []networkingv1.NetworkPolicyPort{namedPort(proto(TCP), "sidecar-tcp")}})))
				tcp81.ExpectAllEgress("y/a", false).Expect("y/a", "x/sidecar", true)
				r.Validate(81, TCP, tcp81)
				tcp80.ExpectAllEgress("y/a", false)
				r.Validate(80, TCP, tcp80)
			},
		},
		{
			Context: ContextExtra, Name: "should give same-node and cross-node pairs the same matrix",
			Pods:  Refs("x/server-1", "x/server-2", "y/client-1", "y/client-2", "x/a", "y/b"),
			Needs: Needs{ExtraPods: true, TwoNodes: true},
			Run: func(r *Run) {
				// Twins with equal labels, one on each node: every client/server pair exists
				// on one node and across nodes, and policy must not tell them apart. Ingress
				// is judged where the server runs and egress where the client runs, on one
				// node or on two.
				m := r.Env().Model()
				serving := []corev1.Container{ServingContainer(m.Ports, []corev1.Protocol{TCP, UDP})}
				for i, node := range m.Nodes[:2] {
					n := string(rune('1' + i))
					r.CreatePod(PodSpec{Namespace: X, Name: "server-" + n, Labels: map[string]string{"role": "server"}, Node: node, Containers: serving})
					r.CreatePod(PodSpec{Namespace: Y, Name: "client-" + n, Labels: map[string]string{"role": "client"}, Node: node, Containers: serving})
				}
				servers, clients := []string{"x/server-1", "x/server-2"}, []string{"y/client-1", "y/client-2"}

				r.CreatePolicy(X, GenNetworkPolicyWithNameAndPodMatchLabel("servers-from-clients", map[string]string{"role": "server"},
					SetSpecIngressRules(networkingv1.NetworkPolicyIngressRule{
						From:  []networkingv1.NetworkPolicyPeer{nsPodSelector(nsName(Y), map[string]string{"role": "client"})},
						Ports: []networkingv1.NetworkPolicyPort{port(proto(TCP), 80)},
					})))
				r.CreatePolicy(Y, GenNetworkPolicyWithNameAndPodMatchLabel("clients-to-servers", map[string]string{"role": "client"},
					SetSpecEgressRules(networkingv1.NetworkPolicyEgressRule{
						To:    []networkingv1.NetworkPolicyPeer{nsPodSelector(nsName(X), map[string]string{"role": "server"})},
						Ports: []networkingv1.NetworkPolicyPort{port(proto(TCP), 80)},
					})))

				tcp80 := r.Reachability(true)
				for _, s := range servers {
					tcp80.ExpectAllIngress(s, false)
				}
				for _, c := range clients {
					tcp80.ExpectAllEgress(c, false)
					for _, s := range servers {
						tcp80.Expect(c, s, true)
					}
				}
				r.Validate(80, TCP, tcp80)

				tcp81 := r.Reachability(true)
				for _, s := range servers {
					tcp81.ExpectAllIngress(s, false)
				}
				for _, c := range clients {
					tcp81.ExpectAllEgress(c, false)
				}
				r.Validate(81, TCP, tcp81)
			},
		},
	}
}

// AllCases is UpstreamCases followed by ExtraCases.
func AllCases() []Case { return append(UpstreamCases(), ExtraCases()...) }
