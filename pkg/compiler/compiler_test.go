package compiler

import (
	"math/rand"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
	"github.com/nftpolicy/nftpolicy/pkg/tracer"
)

const (
	TCP  = corev1.ProtocolTCP
	UDP  = corev1.ProtocolUDP
	SCTP = corev1.ProtocolSCTP
)

func all(string, string) bool { return true }

func TestNoPolicyAllowsEverything(t *testing.T) {
	c := upstream(t)
	for _, fam := range []ruleset.Family{ruleset.IPv4, ruleset.IPv6} {
		c.matrix(TCP, 80, fam, all)
		c.matrix(UDP, 81, fam, all)
	}
}

func TestDefaultDenyIngress(t *testing.T) {
	c := upstream(t)
	c.policy(types(netpol("x", "deny-ingress", nil), networkingv1.PolicyTypeIngress))
	// Nothing reaches x's pods except themselves from... nothing: even same-namespace.
	for _, fam := range []ruleset.Family{ruleset.IPv4, ruleset.IPv6} {
		c.matrix(TCP, 80, fam, func(f, to string) bool { return nsOf(to) != "x" })
	}
	// Egress of x is not isolated.
	c.expect(tcp("x/a", "y/b", 80, true))
}

func TestDefaultDenyEgress(t *testing.T) {
	c := upstream(t)
	c.policy(types(netpol("x", "deny-egress", nil), networkingv1.PolicyTypeEgress))
	c.matrix(TCP, 80, ruleset.IPv4, func(f, to string) bool { return nsOf(f) != "x" })
	c.matrix(UDP, 80, ruleset.IPv6, func(f, to string) bool { return nsOf(f) != "x" })
}

func TestSeedBackendOnlyFromFrontend(t *testing.T) {
	c := newCluster(t)
	c.ns("app", nil).ns("ingress-nginx", nil).ns("other", nil)
	c.pod("ingress-nginx", "controller", "n1", "10.1.0.1", m("app", "ingress-nginx"))
	c.pod("app", "frontend", "n1", "10.1.0.2", m("app", "frontend"))
	c.pod("app", "backend", "n2", "10.1.0.3", m("app", "backend"))
	c.pod("app", "backend2", "n1", "10.1.0.5", m("app", "backend"))
	c.pod("other", "client", "n2", "10.1.0.4", m("app", "frontend"))
	c.policy(ingress(netpol("app", "backend-policy", m("app", "backend")), from(podSel(m("app", "frontend")))))
	c.expect(
		tcp("app/frontend", "app/backend", 80, true),  // cross node
		tcp("app/frontend", "app/backend2", 80, true), // same node
		tcp("ingress-nginx/controller", "app/backend", 80, false),
		tcp("other/client", "app/backend", 80, false), // same labels, other namespace
		tcp("other/client", "app/backend2", 80, false),
		tcp("app/backend", "app/frontend", 80, true), // frontend is not isolated
		tcp("ingress-nginx/controller", "app/frontend", 443, true),
	)
	// Replies of the allowed connection and of the denied direction's established flows.
	res := tracer.Trace(c.compile("n2").Ruleset, tracer.Packet{Src: c.find("app/backend").IPs[0], Dst: c.find("other/client").IPs[0],
		Proto: 6, DPort: 40000, CtState: "established"})
	if !res.Allowed() {
		t.Errorf("established packet dropped: %v", res.Steps)
	}
}

func TestPolicyTypesDefaulting(t *testing.T) {
	c := upstream(t)
	// Egress rules and no policyTypes: isolated both ways; the ingress side has no rules.
	c.policy(egress(netpol("x", "eg", m("pod", "a")), to(podSel(m("pod", "b")))))
	c.expect(
		tcp("x/a", "x/b", 80, true),
		tcp("x/a", "x/c", 80, false),
		tcp("x/b", "x/a", 80, false), // ingress isolated by defaulting, no ingress rules
	)
	// Ingress rules only, no policyTypes: only ingress isolated.
	c2 := upstream(t)
	c2.policy(ingress(netpol("x", "in", m("pod", "a")), from(podSel(m("pod", "b")))))
	c2.expect(
		tcp("x/a", "y/c", 80, true),
		tcp("x/b", "x/a", 80, true),
		tcp("x/c", "x/a", 80, false),
	)
	// policyTypes Egress only with ingress rules present: the ingress rules are ignored.
	c3 := upstream(t)
	c3.policy(types(ingress(netpol("x", "eg-only", m("pod", "a")), from(podSel(m("pod", "b")))), networkingv1.PolicyTypeEgress))
	c3.expect(
		tcp("x/c", "x/a", 80, true),
		tcp("x/a", "x/c", 80, false),
	)
}

func TestPeerSelectors(t *testing.T) {
	c := upstream(t)
	c.ns("y", m("team", "blue"))
	c.policy(ingress(netpol("x", "ns-only", m("pod", "a")), from(nsSel(m("team", "blue")))))
	c.policy(ingress(netpol("x", "ns-and-pod", m("pod", "b")), from(nsPodSel(m("team", "blue"), m("pod", "c")))))
	c.policy(ingress(netpol("x", "all-ns", m("pod", "c")), from(nsSel(nil))))
	c.matrix(TCP, 80, ruleset.IPv4, func(f, to string) bool {
		switch to {
		case "x/a":
			return nsOf(f) == "y"
		case "x/b":
			return f == "y/c"
		case "x/c":
			return true // namespaceSelector {} = every pod in every namespace
		}
		return true
	})
	// podSelector {} as a peer: every pod of the policy's namespace only.
	c2 := upstream(t)
	c2.policy(ingress(netpol("y", "same-ns", nil), from(podSel(nil))))
	c2.matrix(TCP, 81, ruleset.IPv6, func(f, to string) bool { return nsOf(to) != "y" || nsOf(f) == "y" })
}

func TestMatchExpressions(t *testing.T) {
	c := upstream(t)
	c.ns("z", m("env", "prod"))
	sel := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
		{Key: "pod", Operator: metav1.LabelSelectorOpIn, Values: []string{"b", "c"}},
	}}
	nsExpr := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
		{Key: "env", Operator: metav1.LabelSelectorOpExists},
	}}
	np := netpol("x", "expr", nil)
	np.Spec.PodSelector = metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
		{Key: "pod", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"a"}},
	}}
	c.policy(ingress(np, from(networkingv1.NetworkPolicyPeer{NamespaceSelector: nsExpr, PodSelector: sel})))
	c.matrix(TCP, 80, ruleset.IPv4, func(f, to string) bool {
		if to == "x/b" || to == "x/c" {
			return f == "z/b" || f == "z/c"
		}
		return true
	})
	// DoesNotExist on the namespace label.
	c2 := upstream(t)
	c2.ns("z", m("env", "prod"))
	c2.policy(ingress(netpol("x", "not-prod", nil), from(networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{
		MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "env", Operator: metav1.LabelSelectorOpDoesNotExist}}}})))
	c2.matrix(TCP, 80, ruleset.IPv4, func(f, to string) bool { return nsOf(to) != "x" || nsOf(f) != "z" })
}

func TestIPBlockIngressAndExceptCarvesPodIP(t *testing.T) {
	c := upstream(t)
	// x/a accepts 10.0.0.0/8 except z/b's address (10.3.0.2/32) and all of y (10.2.0.0/16).
	c.policy(ingress(netpol("x", "cidr", m("pod", "a")), from(ipBlock("10.0.0.0/8", "10.3.0.2/32", "10.2.0.0/16"))))
	c.expect(
		tcp("z/a", "x/a", 80, true),
		tcp("z/b", "x/a", 80, false),
		tcp("y/c", "x/a", 80, false),
		tcp("x/b", "x/a", 80, true),
		tcp("192.168.7.7", "x/a", 80, false), // outside the CIDR
		tcp("node:n2", "x/a", 80, false),     // another node's host is not the local node
		tcp("node:n1", "x/a", 80, true),      // the local node always reaches its pods
	)
	// IPv4-only peers do not allow IPv6.
	c.expectFamily(ruleset.IPv6, tcp("z/a", "x/a", 80, false))
}

func TestIPBlockEgressWithExcept(t *testing.T) {
	c := upstream(t)
	c.policy(egress(netpol("x", "cidr", m("pod", "a")), to(ipBlock("10.0.0.0/8", "10.2.0.0/16")), to(ipBlock("fd00:3::/64"))))
	c.expect(
		tcp("x/a", "z/b", 80, true),
		tcp("x/a", "y/b", 80, false),
		tcp("x/a", "8.8.8.8", 53, false),
		tcp("x/a", "10.9.9.9", 53, true),
	)
	c.expectFamily(ruleset.IPv6,
		tcp("x/a", "z/b", 80, true),
		tcp("x/a", "y/b", 80, false),
	)
}

func TestPorts(t *testing.T) {
	c := upstream(t)
	c.policy(ingress(netpol("x", "ports", m("pod", "a")),
		withPorts(from(), numPort(TCP, 80), rangePort(TCP, 8000, 8080), protoOnly(SCTP)),
		withPorts(from(podSel(m("pod", "b"))), noProto(81)),
		withPorts(from(), numPort(UDP, 53))))
	c.expect(
		tcp("y/b", "x/a", 80, true),
		tcp("y/b", "x/a", 81, false),
		tcp("x/b", "x/a", 81, true), // second rule: default protocol TCP
		udp("x/b", "x/a", 81, false),
		tcp("y/c", "x/a", 8000, true),
		tcp("y/c", "x/a", 8080, true),
		tcp("y/c", "x/a", 8081, false),
		tcp("y/c", "x/a", 7999, false),
		probe{"y/c", "x/a", SCTP, 9999, true},
		udp("y/c", "x/a", 53, true),
		tcp("y/c", "x/a", 53, false),
		udp("y/c", "x/a", 80, false),
	)
	c.expectFamily(ruleset.IPv6, tcp("y/c", "x/a", 8042, true), udp("y/c", "x/a", 54, false))
}

func TestNamedPorts(t *testing.T) {
	c := upstream(t)
	// x/c lacks serve-81-tcp: the rule matches nothing on it.
	c.find("x/c").Ports = []model.NamedPort{port("serve-80-tcp", TCP, 80)}
	c.find("x/b").Ports = append(c.find("x/b").Ports, port("metrics", TCP, 9090))
	c.policy(ingress(netpol("x", "named", nil), withPorts(from(), namePort(TCP, "serve-81-tcp"), namePort(UDP, "serve-80-udp"), namePort(TCP, "metrics"))))
	c.expect(
		tcp("y/a", "x/a", 81, true),
		tcp("y/a", "x/a", 80, false),
		udp("y/a", "x/a", 80, true),
		udp("y/a", "x/a", 81, false),
		tcp("y/a", "x/c", 81, false), // name missing on x/c
		tcp("y/a", "x/b", 9090, true),
		tcp("y/a", "x/a", 9090, false), // only x/b has "metrics"
	)
	c.expectFamily(ruleset.IPv6, tcp("y/a", "x/b", 81, true), tcp("y/a", "x/c", 81, false))
	// Egress named ports resolve on the destination pod.
	c2 := upstream(t)
	c2.find("y/c").Ports = []model.NamedPort{port("serve-80-tcp", TCP, 8080)}
	c2.policy(egress(netpol("x", "named-egress", m("pod", "a")), withEgressPorts(to(nsSel(m(NamespaceNameLabel, "y"))), namePort(TCP, "serve-80-tcp"))))
	c2.expect(
		tcp("x/a", "y/a", 80, true),
		tcp("x/a", "y/c", 80, false),
		tcp("x/a", "y/c", 8080, true),
		tcp("x/a", "z/a", 80, false),
		tcp("x/a", "y/a", 81, false),
	)
	// Egress named port with an ipBlock peer: only pods inside the block, on their port.
	c3 := upstream(t)
	c3.policy(egress(netpol("x", "named-cidr", m("pod", "a")), withEgressPorts(to(ipBlock("10.2.0.0/16", "10.2.0.3/32")), namePort(TCP, "serve-81-tcp"))))
	c3.expect(
		tcp("x/a", "y/a", 81, true),
		tcp("x/a", "y/c", 81, false),
		tcp("x/a", "z/a", 81, false),
		tcp("x/a", "10.2.9.9", 81, false), // not a pod: the name cannot resolve
	)
}

func TestNamedPortOnRestartableInitContainer(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	apiPod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "sidecar", Labels: m("pod", "s")},
		Spec: corev1.PodSpec{NodeName: "n1",
			InitContainers: []corev1.Container{
				{Name: "proxy", RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "proxy", ContainerPort: 15001}}},
				{Name: "setup", Ports: []corev1.ContainerPort{{Name: "setup", ContainerPort: 9999}}},
			},
			Containers: []corev1.Container{{Name: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: TCP}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.1.0.50", PodIPs: []corev1.PodIP{{IP: "10.1.0.50"}}},
	}
	c := upstream(t)
	c.pods = append(c.pods, model.PodFromAPI(apiPod))
	c.policy(ingress(netpol("x", "sidecar", m("pod", "s")), withPorts(from(), namePort(TCP, "proxy"), namePort(TCP, "setup"), namePort(TCP, "http"))))
	c.expect(
		tcp("y/a", "x/sidecar", 15001, true),
		tcp("y/a", "x/sidecar", 8080, true),
		tcp("y/a", "x/sidecar", 9999, false), // a plain init container has finished
	)
}

func TestUnionOfPoliciesWithDifferentPorts(t *testing.T) {
	c := upstream(t)
	c.policy(ingress(netpol("x", "p80", m("pod", "a")), withPorts(from(podSel(m("pod", "b"))), numPort(TCP, 80))))
	c.policy(ingress(netpol("x", "p81", nil), withPorts(from(podSel(m("pod", "c"))), numPort(TCP, 81))))
	c.expect(
		tcp("x/b", "x/a", 80, true),
		tcp("x/b", "x/a", 81, false),
		tcp("x/c", "x/a", 81, true),
		tcp("x/c", "x/a", 80, false),
		tcp("x/c", "x/b", 81, true), // x/b only by p81
		tcp("x/b", "x/c", 81, false),
		tcp("x/a", "x/b", 80, false),
	)
}

func TestEgressAllowedButIngressDenied(t *testing.T) {
	c := upstream(t)
	c.policy(egress(netpol("x", "eg", m("pod", "a")), to(nsSel(nil))))
	c.policy(types(netpol("y", "deny", m("pod", "b")), networkingv1.PolicyTypeIngress))
	c.expect(
		tcp("x/a", "y/a", 80, true),
		tcp("x/a", "y/b", 80, false), // cross node: n1 egress allows, n2 ingress denies
		tcp("x/a", "y/c", 80, true),
	)
	// Ingress allowed but egress denied, same node.
	c2 := upstream(t)
	c2.policy(types(netpol("x", "deny-eg", m("pod", "a")), networkingv1.PolicyTypeEgress))
	c2.policy(ingress(netpol("x", "allow-in", m("pod", "c")), from(podSel(m("pod", "a")))))
	c2.expect(tcp("x/a", "x/c", 80, false), tcp("x/b", "x/c", 80, false), tcp("x/c", "x/a", 80, true))
}

func TestEgressToTheNodeUsesInputHook(t *testing.T) {
	c := upstream(t)
	c.policy(egress(netpol("x", "to-node", m("pod", "a")), to(ipBlock("192.168.0.1/32"))))
	c.expect(
		tcp("x/a", "node:n1", 10250, true),
		tcp("x/a", "node:n2", 10250, false),
		tcp("x/c", "node:n2", 10250, true),
	)
}

func TestNodeToLocalPodsAlwaysAllowed(t *testing.T) {
	c := upstream(t)
	c.policy(types(netpol("x", "deny-all", nil), networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress))
	c.expect(
		tcp("node:n1", "x/a", 8080, true),
		tcp("node:n2", "x/b", 8080, true),
		tcp("node:n2", "x/a", 8080, false),
	)
	c.expectFamily(ruleset.IPv6, tcp("node:n1", "x/c", 80, true))
}

func TestHostNetworkPods(t *testing.T) {
	c := upstream(t)
	hn := c.pod("x", "hostnet", "n1", "192.168.0.1", m("pod", "a"))
	hn.HostNetwork = true
	// deny-all in x must not make the host-network pod a subject; pod=a selectors must
	// not match it.
	c.policy(types(netpol("x", "deny-all", nil), networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress))
	c.policy(ingress(netpol("y", "from-a", m("pod", "b")), from(nsPodSel(nil, m("pod", "a")))))
	res := c.compile("n1").Ruleset
	for _, s := range res.Sets {
		for _, e := range s.Elements {
			if strings.Contains(ruleset.FormatElement(s, e), "192.168.0.1") {
				t.Errorf("host-network pod IP in set %s", s.Name)
			}
		}
	}
	c.expect(
		tcp("x/a", "y/b", 80, false),       // x/a's egress is denied by deny-all
		tcp("y/a", "y/b", 80, true),        // y/a matches pod=a
		tcp("x/hostnet", "y/b", 80, false), // host-network never matches a pod selector
		tcp("x/hostnet", "y/a", 80, true),  // and is never isolated
	)
	// An ipBlock can match it.
	c2 := upstream(t)
	c2.policy(ingress(netpol("y", "from-nodes", m("pod", "b")), from(ipBlock("192.168.0.0/24"))))
	c2.expect(tcp("node:n1", "y/b", 80, true), tcp("x/a", "y/b", 80, false))
}

func TestTerminatedAndIPLessPodsIgnored(t *testing.T) {
	c := upstream(t)
	// A completed pod that held 10.1.0.9 and was labelled as frontend; the IP now belongs
	// to a running pod without that label.
	old := c.pod("x", "old-job", "n1", "10.1.0.9", m("role", "frontend"))
	old.Phase = corev1.PodSucceeded
	c.pod("x", "new", "n1", "10.1.0.9", m("role", "other"))
	failed := c.pod("x", "failed", "n1", "10.1.0.10", m("role", "frontend"))
	failed.Phase = corev1.PodFailed
	c.pod("x", "pending", "n1", "", m("role", "frontend"))
	c.policy(ingress(netpol("x", "fe", m("pod", "a")), from(podSel(m("role", "frontend")))))
	// The failed pod is also not isolated: a deny-all for role=frontend has nothing to act on.
	c.policy(types(netpol("x", "deny-fe", m("role", "frontend")), networkingv1.PolicyTypeIngress))
	c.expect(
		tcp("x/new", "x/a", 80, false),
		tcp("10.1.0.10", "x/a", 80, false),
		tcp("x/b", "10.1.0.10", 80, true),
	)
	rs := c.compile("n1").Ruleset
	for _, name := range []string{MapIngressV4, MapEgressV4} {
		for _, e := range rs.Set(name).Elements {
			if f := ruleset.FormatElement(rs.Set(name), e); strings.HasPrefix(f, "10.1.0.10 ") {
				t.Errorf("failed pod dispatched in %s: %s", name, f)
			}
		}
	}
}

func TestRunningPodWinsIPCollision(t *testing.T) {
	c := upstream(t)
	// Stale status: a pending pod still reports the IP a running pod now owns.
	p := c.pod("x", "stale", "n1", "10.1.0.1", m("role", "admin"))
	p.Phase = corev1.PodPending
	c.policy(ingress(netpol("y", "admins", m("pod", "a")), from(nsPodSel(nil, m("role", "admin")))))
	c.expect(tcp("x/a", "y/a", 80, false)) // 10.1.0.1 is x/a, which is not an admin
	// And the other way round: the running pod is the admin.
	c2 := upstream(t)
	c2.find("x/a").Labels["role"] = "admin"
	p2 := c2.pod("x", "stale", "n1", "10.1.0.1", m("role", "nobody"))
	p2.Phase = corev1.PodPending
	c2.policy(ingress(netpol("y", "admins", m("pod", "a")), from(nsPodSel(nil, m("role", "admin")))))
	c2.expect(tcp("x/a", "y/a", 80, true))
}

func TestIPv6AndDualStack(t *testing.T) {
	c := upstream(t)
	c.policy(ingress(netpol("x", "v6", m("pod", "a")), withPorts(from(podSel(m("pod", "b")), ipBlock("fd00:3::/64", "fd00:3::3/128")), numPort(TCP, 80))))
	c.expectFamily(ruleset.IPv6,
		tcp("x/b", "x/a", 80, true),
		tcp("x/c", "x/a", 80, false),
		tcp("z/a", "x/a", 80, true),
		tcp("z/c", "x/a", 80, false),
		tcp("x/b", "x/a", 81, false),
	)
	c.expect(
		tcp("x/b", "x/a", 80, true),
		tcp("z/a", "x/a", 80, false), // the IPv6 block says nothing about IPv4
	)
}

func TestEmptyRulesAndAllowAll(t *testing.T) {
	c := upstream(t)
	c.policy(ingress(netpol("x", "allow-all", m("pod", "a")), networkingv1.NetworkPolicyIngressRule{}))
	c.policy(types(netpol("x", "deny-all", nil), networkingv1.PolicyTypeIngress))
	c.matrix(TCP, 80, ruleset.IPv4, func(f, to string) bool { return nsOf(to) != "x" || to == "x/a" })
	c.matrix(UDP, 80, ruleset.IPv6, func(f, to string) bool { return nsOf(to) != "x" || to == "x/a" })
}

func TestDeterministicAndShuffleInvariant(t *testing.T) {
	c := upstream(t)
	c.policy(ingress(netpol("x", "a", m("pod", "a")), withPorts(from(podSel(m("pod", "b")), nsSel(nil)), namePort(TCP, "serve-80-tcp"))))
	c.policy(egress(netpol("y", "b", nil), to(ipBlock("10.0.0.0/8", "10.1.0.0/16"))))
	c.policy(ingress(netpol("z", "c", nil), from(podSel(m("pod", "b")), nsSel(nil))))
	want := ruleset.Render(c.compile("n1").Ruleset)
	for i := 0; i < 5; i++ {
		rand.Shuffle(len(c.pods), func(a, b int) { c.pods[a], c.pods[b] = c.pods[b], c.pods[a] })
		rand.Shuffle(len(c.policies), func(a, b int) { c.policies[a], c.policies[b] = c.policies[b], c.policies[a] })
		if got := ruleset.Render(c.compile("n1").Ruleset); got != want {
			t.Fatalf("output depends on input order:\n%s\n---\n%s", want, got)
		}
	}
	// Identical peers share one set: add a second policy with x/a's peers.
	c.policy(ingress(netpol("x", "a-twin", m("pod", "c")), withPorts(from(podSel(m("pod", "b")), nsSel(nil)), namePort(TCP, "serve-80-tcp"))))
	rs := c.compile("n1").Ruleset
	n := 0
	for _, s := range rs.Sets {
		if strings.HasPrefix(s.Name, "pods-") || strings.HasPrefix(s.Name, "cidr-") {
			n++
		}
	}
	// x/a's peers and z/c's peers differ in namespace (podSelector is namespaced):
	// 2 pod sets × 2 families + y's ipBlock set (IPv4 only).
	if n != 5 {
		t.Errorf("got %d peer sets, want 5:\n%s", n, ruleset.Render(rs))
	}
}

func TestLongNamesFitKernelLimits(t *testing.T) {
	long := strings.Repeat("n", 63)
	c := newCluster(t)
	c.ns(long, nil)
	c.pod(long, strings.Repeat("p", 63), "n1", "10.1.0.1", m(strings.Repeat("k", 63), strings.Repeat("v", 63)))
	np := ingress(netpol(long, strings.Repeat("q", 253), nil), from(podSel(m(strings.Repeat("k", 63), strings.Repeat("v", 63)))))
	c.policy(np)
	c.policy(ingress(netpol(long, strings.Repeat("q", 252)+"r", nil), from(podSel(nil))))
	rs := c.compile("n1").Ruleset // compile validates name and comment lengths
	// Two policies whose names share a long prefix still get distinct chains.
	chains := 0
	for _, ch := range rs.Chains {
		if strings.HasPrefix(ch.Name, "pol-") {
			chains++
			if !strings.Contains(ch.Comment, long) {
				t.Errorf("chain %s comment %q does not name the policy", ch.Name, ch.Comment)
			}
		}
	}
	if chains != 2 {
		t.Errorf("got %d policy chains, want 2", chains)
	}
}

func TestBadInputIsReportedAndContained(t *testing.T) {
	c := upstream(t)
	bad := ingress(netpol("x", "bad", m("pod", "a")),
		from(ipBlock("not-a-cidr"), podSel(m("pod", "b"))),
		withPorts(from(), namePort("ICMP", "x"), rangePort(TCP, 90, 80)))
	bad.Spec.Ingress = append(bad.Spec.Ingress, from(networkingv1.NetworkPolicyPeer{}))
	badSel := netpol("y", "bad-selector", nil)
	badSel.Spec.PodSelector = metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: "Bogus"}}}
	c.policy(bad).policy(badSel)
	c.policy(types(netpol("z", "deny", nil), networkingv1.PolicyTypeIngress))
	res := c.compile("n1")
	fields := map[string]bool{}
	for _, p := range res.Problems {
		fields[p.Namespace+"/"+p.Name+" "+p.Field] = true
	}
	for _, want := range []string{
		"x/bad spec.ingress[0].from[0].ipBlock",
		"x/bad spec.ingress[1].ports[0].protocol",
		"x/bad spec.ingress[1].ports[1]",
		"x/bad spec.ingress[2].from[0]",
		"y/bad-selector spec.podSelector",
	} {
		if !fields[want] {
			t.Errorf("no problem reported for %s; got %v", want, fields)
		}
	}
	// The valid parts still apply: x/b may reach x/a; z is still denied; the rule whose
	// only ports were invalid allows nothing (fail closed).
	c.expect(
		tcp("x/b", "x/a", 80, true),
		tcp("x/c", "x/a", 80, false),
		tcp("x/a", "z/a", 80, false),
		tcp("x/a", "y/a", 80, true),
	)
}

func TestRevokedConnectionsAreDropped(t *testing.T) {
	c := upstream(t)
	rs := Compile(c.snapshot("n1"), Options{Revocation: true}).Ruleset
	if err := rs.Validate(); err != nil {
		t.Fatal(err)
	}
	a, b := c.find("x/a").IPs[0], c.find("y/a").IPs[0]
	for _, tc := range []struct {
		mark    uint32
		state   string
		hook    ruleset.Hook
		allowed bool
	}{
		{0, "established", ruleset.HookForward, true},
		{RevokedMark, "established", ruleset.HookForward, false},
		{RevokedMark | 0x1, "established", ruleset.HookForward, false}, // other bits are not ours
		{RevokedMark, "established", ruleset.HookInput, false},
		{ClearedMark, "established", ruleset.HookForward, true},
		{RevokedMark, "new", ruleset.HookForward, false},
	} {
		r := tracer.Trace(rs, tracer.Packet{Src: a, Dst: b, Proto: 6, DPort: 80, CtState: tc.state, CtMark: tc.mark, Hook: tc.hook})
		if r.Allowed() != tc.allowed {
			t.Errorf("mark 0x%x %s %s: allowed=%v, want %v (%v)", tc.mark, tc.state, tc.hook, r.Allowed(), tc.allowed, r.Steps)
		}
	}
	// Without revocation there is no such rule.
	if strings.Contains(ruleset.Render(c.compile("n1").Ruleset), "ct mark") {
		t.Error("ct mark rule present without Options.Revocation")
	}
}

func TestIPv6NeighbourDiscoveryAlwaysPasses(t *testing.T) {
	c := upstream(t)
	c.policy(types(netpol("x", "deny-all", nil), networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress))
	rs := c.compile("n1").Ruleset
	a, cc := c.find("x/a").IPs[1], c.find("x/c").IPs[1] // same node, both isolated
	for _, tc := range []struct {
		icmpType uint8
		allowed  bool
	}{{135, true}, {136, true}, {133, true}, {134, true}, {128, false}, {129, false}} {
		r := tracer.Trace(rs, tracer.Packet{Src: a, Dst: cc, Proto: ruleset.ProtoICMPv6, ICMPType: tc.icmpType})
		if r.Allowed() != tc.allowed {
			t.Errorf("icmpv6 type %d: allowed=%v, want %v (%v)", tc.icmpType, r.Allowed(), tc.allowed, r.Steps)
		}
	}
}
