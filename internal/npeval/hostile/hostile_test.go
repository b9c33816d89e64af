package hostile

import (
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/internal/npeval"
	"github.com/nftpolicy/nftpolicy/pkg/model"
)

var probes = []struct {
	proto corev1.Protocol
	port  uint16
}{{corev1.ProtocolTCP, 80}, {corev1.ProtocolTCP, 84}, {corev1.ProtocolTCP, 10055}, {corev1.ProtocolTCP, 8003},
	{corev1.ProtocolUDP, 2002}, {corev1.ProtocolUDP, 53}, {corev1.ProtocolSCTP, 80}, {npeval.ProtocolICMP, 0}}

// outcome is what decided one end, for counting which paths a cluster exercises.
type outcome struct {
	tier   npeval.Tier
	action cnp.ClusterNetworkPolicyRuleAction
	passed bool
	closed bool
}

func outcomes(ev *npeval.Evaluator, addrs []netip.Addr) map[outcome]int {
	seen := map[outcome]int{}
	for _, s := range addrs {
		for _, d := range addrs {
			if s == d || s.Is4() != d.Is4() {
				continue
			}
			for _, pr := range probes {
				v := ev.Verdict(npeval.Conn{Src: s, Dst: d, Proto: pr.proto, Port: pr.port})
				for _, dec := range []npeval.Decision{v.Egress, v.Ingress} {
					if dec.Pod != nil {
						seen[outcome{dec.Tier, dec.Action, len(dec.Passes) > 0, dec.FailClosed}]++
					}
				}
			}
		}
	}
	return seen
}

// TestCNPCluster: the hostile ClusterNetworkPolicies are opt-in, and on a sample of the
// cluster's connections they exercise every tier and action.
func TestCNPCluster(t *testing.T) {
	if c := Cluster(); c.ClusterPolicies != nil || c.Nodes != nil {
		t.Fatal("Cluster must stay NetworkPolicy-only")
	}
	c := CNPCluster()
	var addrs []netip.Addr
	for i, p := range c.Pods {
		if i%5 == 0 || i%8 == 3 { // a sample: every fifth pod and half of group 3
			addrs = append(addrs, p.IPs...)
		}
	}
	addrs = append(addrs, External...)
	for i := range 3 {
		addrs = append(addrs, NodeIP4(i), NodeIP6(i))
	}
	seen := outcomes(npeval.New(c), addrs)
	t.Logf("outcomes: %v", seen)
	accept, deny := cnp.ClusterNetworkPolicyRuleActionAccept, cnp.ClusterNetworkPolicyRuleActionDeny
	for _, want := range []outcome{
		{npeval.TierAdmin, accept, false, false}, {npeval.TierAdmin, deny, false, false},
		{npeval.TierNetworkPolicy, accept, true, false}, {npeval.TierNetworkPolicy, deny, true, false}, // after an Admin Pass
		{npeval.TierNetworkPolicy, accept, false, false}, {npeval.TierNetworkPolicy, deny, false, false},
		{npeval.TierBaseline, accept, false, false}, {npeval.TierBaseline, deny, false, false},
		{npeval.TierDefault, "", true, false}, // after a Pass
		{npeval.TierDefault, "", false, false},
	} {
		if seen[want] == 0 {
			t.Errorf("no decision %+v", want)
		}
	}
	// The tie between the Baseline policies goes to the first name, which denies.
	ev := npeval.New(c)
	v := ev.Verdict(npeval.Conn{Src: PodIP4(1, 0), Dst: PodIP4(0, 3), Proto: corev1.ProtocolTCP, Port: 80})
	if v.Allowed || v.Ingress.Tier != npeval.TierBaseline || v.Ingress.Policy != BaselineTiePolicy("a", deny).Name {
		t.Errorf("tie: %s", v)
	}
	// Group 3 of NSB is passed by the Baseline tier before the tie.
	v = ev.Verdict(npeval.Conn{Src: PodIP4(1, 3), Dst: PodIP4(0, 3), Proto: corev1.ProtocolTCP, Port: 80})
	if !v.Ingress.Allowed || len(v.Ingress.Passes) != 1 || v.Ingress.Tier != npeval.TierDefault {
		t.Errorf("baseline pass: %s", v)
	}
}

// smallCluster is a fuzz-sized cluster for the random policies.
func smallCluster() (npeval.Cluster, map[string][]netip.Addr) {
	nodes := map[string][]netip.Addr{
		"n1": {netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("fd00:ff::1")},
		"n2": {netip.MustParseAddr("192.168.0.2")},
	}
	c := npeval.Cluster{Namespaces: map[string]*model.Namespace{
		"x": {Name: "x", Labels: map[string]string{"team": "red"}},
		"y": {Name: "y", Labels: map[string]string{"team": "blue"}},
	}}
	ports := []model.NamedPort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}, {Name: "http", Protocol: corev1.ProtocolUDP, Port: 53}}
	for i, ns := range []string{"x", "x", "y", "y", "gone"} {
		c.Pods = append(c.Pods, &model.Pod{Namespace: ns, Name: string(rune('a' + i)), NodeName: []string{"n1", "n2"}[i%2],
			Phase: corev1.PodRunning, Labels: map[string]string{"app": []string{"a", "b"}[i%2]},
			IPs:   []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), netip.AddrFrom16([16]byte{0: 0xfd, 15: byte(i + 1)})},
			Ports: ports[:i%3]})
	}
	host := &model.Pod{Namespace: "x", Name: "host", NodeName: "n1", Phase: corev1.PodRunning, HostNetwork: true, IPs: nodes["n1"]}
	c.Pods = append(c.Pods, host)
	return c, nodes
}

func TestRandomDeterministic(t *testing.T) {
	c, nodes := smallCluster()
	gen := func(seed uint64, invalid bool) ([]*model.Node, []*cnp.ClusterNetworkPolicy) {
		r := rand.New(rand.NewPCG(seed, 0))
		c.Nodes = RandomNodes(r, nodes)
		return c.Nodes, RandomClusterPolicies(r, c, 6, invalid)
	}
	for seed := range uint64(20) {
		n1, p1 := gen(seed, true)
		n2, p2 := gen(seed, true)
		if !reflect.DeepEqual(n1, n2) || !reflect.DeepEqual(p1, p2) {
			t.Fatalf("seed %d: two runs differ", seed)
		}
	}
	// A spent fuzz input decodes to small valid policies: Admin, priority 0, every pod,
	// no rules.
	b := &Bytes{}
	for _, p := range RandomClusterPolicies(b, c, 3, true) {
		if p.Spec.Tier != cnp.AdminTier || p.Spec.Priority != 0 || p.Spec.Subject.Namespaces == nil || len(p.Spec.Ingress)+len(p.Spec.Egress) != 0 {
			t.Errorf("empty input: %+v", p.Spec)
		}
	}
	if RandomNodes(&Bytes{B: []byte{1, 2}}, nodes)[0].Labels["zone"] != "b" {
		t.Errorf("Bytes not read in order")
	}
}

// TestRandomShapes: random policies, valid only and with invalid shapes, exercise every
// tier, action and fail-closed path of npeval without upsetting it.
func TestRandomShapes(t *testing.T) {
	c, nodes := smallCluster()
	var addrs []netip.Addr
	for _, p := range c.Pods {
		addrs = append(addrs, p.IPs...)
	}
	addrs = append(addrs, netip.MustParseAddr("192.168.0.2"), netip.MustParseAddr("203.0.113.5"), netip.MustParseAddr("2001:db8::5"))
	for _, invalid := range []bool{false, true} {
		total := map[outcome]int{}
		r := rand.New(rand.NewPCG(1, 2))
		for range 150 {
			c.Nodes = RandomNodes(r, nodes)
			c.ClusterPolicies = RandomClusterPolicies(r, c, 1+r.IntN(4), invalid)
			for o, n := range outcomes(npeval.New(c), addrs) {
				total[o] += n
			}
		}
		t.Logf("invalid=%v: %v", invalid, total)
		closed := 0
		for o, n := range total {
			if o.closed {
				closed += n
			}
		}
		if invalid != (closed > 0) {
			t.Errorf("invalid=%v: %d fail-closed decisions", invalid, closed)
		}
		for _, tier := range []npeval.Tier{npeval.TierAdmin, npeval.TierBaseline} {
			for _, a := range []cnp.ClusterNetworkPolicyRuleAction{cnp.ClusterNetworkPolicyRuleActionAccept, cnp.ClusterNetworkPolicyRuleActionDeny} {
				if total[outcome{tier, a, false, false}] == 0 || total[outcome{tier, a, true, false}] == 0 && tier == npeval.TierBaseline {
					t.Errorf("invalid=%v: no %s %s (with and without a Pass before)", invalid, tier, a)
				}
			}
		}
		if total[outcome{npeval.TierDefault, "", true, false}] == 0 {
			t.Errorf("invalid=%v: no default after a Pass", invalid)
		}
	}
}
