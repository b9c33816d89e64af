package lab

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

func TestClusterNetworkPolicyRouted(t *testing.T) { testClusterNetworkPolicy(t, Routed) }

func TestClusterNetworkPolicyBridgeVXLAN(t *testing.T) {
	testClusterNetworkPolicy(t, BridgeVXLAN)
}

// testClusterNetworkPolicy runs ClusterNetworkPolicy through real agents on a
// dual-stack two-node cluster: the CRD installed after the agents started, both tiers
// around a NetworkPolicy, Pass, priorities, network, node and named-port peers, and
// live label changes of namespaces, pods and nodes. Each step is checked over both
// families between every pod and every pod and host-network pod.
func testClusterNetworkPolicy(t *testing.T, topo Topology) {
	SkipUnlessCluster(t)
	bin := agentBinary(t)
	ctx := context.Background()
	c := startClusterForTest(t, ClusterOptions{Topology: topo, DualStack: true, AgentBinary: bin})
	for _, ns := range []string{"x", "y", "z"} {
		if err := c.CreateNamespace(ctx, ns, nil); err != nil {
			t.Fatal(err)
		}
	}
	var pods []*ClusterPod
	mk := func(s PodSpec) *ClusterPod {
		t.Helper()
		s.Ports = TCPUDPPorts(80, 81)
		if s.Labels == nil {
			s.Labels = map[string]string{"app": s.Name}
		}
		p, err := c.CreatePod(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
		return p
	}
	mk(PodSpec{Namespace: "x", Name: "a", Node: "node1"})
	mk(PodSpec{Namespace: "x", Name: "b", Node: "node2"})
	ya := mk(PodSpec{Namespace: "y", Name: "a", Node: "node1"})
	mk(PodSpec{Namespace: "y", Name: "b", Node: "node2"})
	mk(PodSpec{Namespace: "z", Name: "a", Node: "node1"})
	froms := append([]*ClusterPod(nil), pods...)
	host := mk(PodSpec{Namespace: "y", Name: "host", Node: "node2", HostNetwork: true})
	fromNames, toNames := PodKeys(froms), PodKeys(pods)

	// want starts from everything allowed; each step edits it.
	want := NewMatrix(fromNames, toNames, true)
	expect := func(what string, port int) {
		t.Helper()
		for _, f := range c.Families() {
			var got *Matrix
			deadline := time.Now().Add(20 * time.Second)
			for {
				var err error
				got, err = c.ProbeMatrix(ctx, froms, pods, PodTarget(f, port), "tcp", ProbeOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if Diff(want, got) == "" || time.Now().After(deadline) {
					break
				}
			}
			if d := Diff(want, got); d != "" {
				t.Fatalf("%s (%v, tcp/%d): %s\nagent log node1:\n%s\nagent log node2:\n%s", what, f, port, d,
					tail(c.AgentLog("node1"), 20), tail(c.AgentLog("node2"), 20))
			}
		}
	}
	apply := func(objs ...client.Object) {
		t.Helper()
		for _, o := range objs {
			if err := c.Apply(ctx, o); err != nil {
				t.Fatalf("apply %T %s: %v", o, o.GetName(), err)
			}
		}
	}
	remove := func(objs ...client.Object) {
		t.Helper()
		for _, o := range objs {
			if err := c.Client().Delete(ctx, o); err != nil {
				t.Fatalf("delete %T %s: %v", o, o.GetName(), err)
			}
		}
	}
	nsSel := func(name string) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": name}}
	}
	relabel := func(obj client.Object, key, value string) {
		t.Helper()
		if err := c.Client().Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
			t.Fatal(err)
		}
		l := obj.GetLabels()
		if l == nil {
			l = map[string]string{}
		}
		if value == "" {
			delete(l, key)
		} else {
			l[key] = value
		}
		obj.SetLabels(l)
		if err := c.Client().Update(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}
	ingressFromNS := func(action cnp.ClusterNetworkPolicyRuleAction, name string, from *metav1.LabelSelector) cnp.ClusterNetworkPolicyIngressRule {
		return cnp.ClusterNetworkPolicyIngressRule{Name: name, Action: action, From: []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: from}}}
	}
	clusterPolicy := func(name string, tier cnp.Tier, prio int32, subject *metav1.LabelSelector) *cnp.ClusterNetworkPolicy {
		return &cnp.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: cnp.ClusterNetworkPolicySpec{Tier: tier, Priority: prio, Subject: cnp.ClusterNetworkPolicySubject{Namespaces: subject}}}
	}
	denyFromTo := func(fromNS, toNS string, allowed bool) {
		for _, f := range fromNames {
			for _, to := range toNames {
				if nsOfKey(f) == fromNS && nsOfKey(to) == toNS && to != host.Key() {
					want.Set(f, to, allowed)
				}
			}
		}
	}

	expect("no CRD, no policy", 80)

	// The CRD arrives after the agents started: they must notice without a restart.
	if err := c.InstallCNPCRD(ctx, "experimental"); err != nil {
		t.Fatal(err)
	}
	guard := clusterPolicy("guard-x", cnp.AdminTier, 10, nsSel("x"))
	guard.Spec.Ingress = []cnp.ClusterNetworkPolicyIngressRule{ingressFromNS(cnp.ClusterNetworkPolicyRuleActionDeny, "no-y", nsSel("y"))}
	apply(guard)
	denyFromTo("y", "x", false)
	expect("Admin deny y -> x", 80)

	allowAll := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "allow-all"},
		Spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{}}}}
	apply(allowAll)
	expect("Admin deny beats a NetworkPolicy allowing all", 80)

	guard.Spec.Ingress[0].Action = cnp.ClusterNetworkPolicyRuleActionPass
	apply(guard)
	denyFromTo("y", "x", true)
	expect("Admin pass: the NetworkPolicy allows", 80)

	onlyZ := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "allow-all"},
		Spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: nsSel("z")}}}}}}
	apply(onlyZ)
	denyFromTo("y", "x", false)
	denyFromTo("x", "x", false)
	want.AllowSelf()
	expect("Admin pass: the NetworkPolicy (from z only) denies", 80)
	remove(onlyZ)
	denyFromTo("y", "x", true)
	denyFromTo("x", "x", true)

	// Baseline: applies where no NetworkPolicy isolates.
	zDefault := clusterPolicy("z-default-deny", cnp.BaselineTier, 0, nsSel("z"))
	zDefault.Spec.Ingress = []cnp.ClusterNetworkPolicyIngressRule{ingressFromNS(cnp.ClusterNetworkPolicyRuleActionDeny, "", &metav1.LabelSelector{})}
	apply(zDefault)
	for _, from := range []string{"x", "y"} {
		denyFromTo(from, "z", false)
	}
	expect("Baseline deny into z", 80)
	zFromX := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "z", Name: "from-x"},
		Spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: nsSel("x")}}}}}}
	apply(zFromX)
	denyFromTo("x", "z", true)
	expect("a NetworkPolicy in z overrides the Baseline", 80)

	// Priorities, pod peers and a pod relabelled live.
	yb := clusterPolicy("deny-y-b", cnp.AdminTier, 1, nsSel("x"))
	yb.Spec.Ingress = []cnp.ClusterNetworkPolicyIngressRule{{Action: cnp.ClusterNetworkPolicyRuleActionDeny,
		From: []cnp.ClusterNetworkPolicyIngressPeer{{Pods: &cnp.NamespacedPod{NamespaceSelector: *nsSel("y"),
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "b"}}}}}}}
	apply(yb)
	want.Deny("y/b", "x/a").Deny("y/b", "x/b")
	expect("priority 1 deny before the priority 10 pass", 80)
	relabel(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "y", Name: ya.Name}}, "app", "b")
	want.Deny("y/a", "x/a").Deny("y/a", "x/b")
	expect("y/a relabelled app=b", 80)
	relabel(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "y", Name: ya.Name}}, "app", "a")
	want.Allow("y/a", "x/a").Allow("y/a", "x/b")
	expect("y/a relabelled back", 80)

	// Named ports and port ranges: an Admin accept of y's named port tcp-81 into z
	// beats the NetworkPolicy of z; a range denies x -> y on 80-81.
	named := clusterPolicy("z-named", cnp.AdminTier, 0, nsSel("z"))
	named.Spec.Ingress = []cnp.ClusterNetworkPolicyIngressRule{{Action: cnp.ClusterNetworkPolicyRuleActionAccept,
		From:      []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: nsSel("y")}},
		Protocols: []cnp.ClusterNetworkPolicyProtocol{{DestinationNamedPort: "tcp-81"}}}}
	apply(named)
	expect("named port tcp-81 accepted: port 80 unchanged", 80)
	denyFromTo("y", "z", true)
	expect("named port tcp-81 accepted: y -> z on 81", 81)
	denyFromTo("y", "z", false)
	rng := clusterPolicy("x-to-y-range", cnp.AdminTier, 2, nsSel("x"))
	rng.Spec.Egress = []cnp.ClusterNetworkPolicyEgressRule{{Action: cnp.ClusterNetworkPolicyRuleActionDeny,
		To:        []cnp.ClusterNetworkPolicyEgressPeer{{Namespaces: nsSel("y")}},
		Protocols: []cnp.ClusterNetworkPolicyProtocol{{TCP: &cnp.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnp.Port{Range: &cnp.PortRange{Start: 79, End: 80}}}}}}}
	apply(rng)
	denyFromTo("x", "y", false)
	expect("x -> y denied on 79-80", 80)
	denyFromTo("x", "y", true)
	denyFromTo("y", "z", true)
	expect("x -> y allowed on 81", 81)
	denyFromTo("y", "z", false)
	denyFromTo("x", "y", false)
	remove(rng, named)
	denyFromTo("x", "y", true)
	expect("range and named-port policies removed", 80)

	// Networks: x may not reach y/b's addresses; nodes: x may not reach nodes labelled
	// blocked, node2 labelled live.
	out := clusterPolicy("x-out", cnp.AdminTier, 3, nsSel("x"))
	var nets []cnp.CIDR
	for _, ip := range c.podByKey(t, "y/b").IPs() {
		nets = append(nets, cnp.CIDR(fmt.Sprintf("%s/%d", ip, ip.BitLen())))
	}
	out.Spec.Egress = []cnp.ClusterNetworkPolicyEgressRule{
		{Name: "no-y-b", Action: cnp.ClusterNetworkPolicyRuleActionDeny, To: []cnp.ClusterNetworkPolicyEgressPeer{{Networks: nets}}},
		{Name: "no-blocked-nodes", Action: cnp.ClusterNetworkPolicyRuleActionDeny,
			To: []cnp.ClusterNetworkPolicyEgressPeer{{Nodes: &metav1.LabelSelector{MatchLabels: map[string]string{"nftpolicy.test/blocked": "true"}}}}},
	}
	apply(out)
	want.Deny("x/a", "y/b").Deny("x/b", "y/b")
	expect("networks peer", 80)
	node2 := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node2"}}
	relabel(node2, "nftpolicy.test/blocked", "true")
	// x/b lives on node2: its traffic to its own node's address never crosses forward
	// or input of another node, but the input hook of node2 judges it.
	want.Deny("x/a", host.Key()).Deny("x/b", host.Key())
	expect("node2 labelled blocked", 80)
	relabel(node2, "nftpolicy.test/blocked", "")
	want.Allow("x/a", host.Key()).Allow("x/b", host.Key())
	expect("node2 unlabelled", 80)

	// A namespace relabelled live changes what a Baseline selects.
	red := clusterPolicy("red-default-deny", cnp.BaselineTier, 5, &metav1.LabelSelector{MatchLabels: map[string]string{"team": "red"}})
	red.Spec.Ingress = []cnp.ClusterNetworkPolicyIngressRule{ingressFromNS(cnp.ClusterNetworkPolicyRuleActionDeny, "", &metav1.LabelSelector{})}
	apply(red)
	expect("no namespace is red yet", 80)
	relabel(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "y"}}, "team", "red")
	for _, from := range []string{"x", "y", "z"} {
		denyFromTo(from, "y", false)
	}
	want.AllowSelf()
	expect("y labelled red", 80)
	relabel(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "y"}}, "team", "")
	for _, from := range []string{"y", "z"} {
		denyFromTo(from, "y", true)
	}
	want.Allow("x/a", "y/a").Allow("x/b", "y/a")
	expect("y unlabelled", 80)

	remove(out, red, yb, guard, zDefault, zFromX) // allow-all went with onlyZ
	want = NewMatrix(fromNames, toNames, true)
	expect("every policy removed", 80)
}

// nsOfKey is the namespace of "namespace/name".
func nsOfKey(key string) string {
	for i := range key {
		if key[i] == '/' {
			return key[:i]
		}
	}
	return key
}

// podByKey returns the cluster pod "namespace/name".
func (c *Cluster) podByKey(t *testing.T, key string) *ClusterPod {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.pods {
		if p.Key() == key {
			return p
		}
	}
	t.Fatalf("no pod %s", key)
	return nil
}
