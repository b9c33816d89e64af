package compiler

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/internal/npeval"
	"github.com/nftpolicy/nftpolicy/internal/npeval/hostile"
	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
	"github.com/nftpolicy/nftpolicy/pkg/tracer"
)

// FuzzCompile decodes the input into a small cluster (namespaces, pods on two nodes,
// policies valid and invalid), compiles it for each node with Compile and with the
// Engine, and checks that the two agree, that the rulesets are valid, and that the
// tracer's verdict on every connection between the cluster's addresses matches the
// independent evaluator's (internal/npeval). The corpus is testdata/fuzz/FuzzCompile.
func FuzzCompile(f *testing.F) {
	// Seeds: bytes are read in order by decodeCluster; see its comments for meanings.
	f.Add([]byte{})
	// Deny-all ingress in x (policy selector 0 = {}, types none, no rules).
	f.Add([]byte{0x05, 3, 0, 0, 0, 0, 1, 0x11, 1, 3, 2, 0, 0, 1, 0x22, 2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0})
	// Ingress from ipBlock ::ffff:10.0.0.0/80 (an IPv4-mapped CIDR shorter than /96).
	f.Add([]byte{0x07, 3, 0, 0, 1, 0, 1, 0x11, 1, 3, 1, 0, 1, 1, 0x22, 0, 0, 0, 0, 1, 0, 1, 0, 1, 0, 1, 3, 10, 0, 0})
	// Egress to named ports, an endPort on a name, an unknown protocol.
	f.Add([]byte{0x03, 4, 0, 1, 1, 0, 1, 0x1f, 3, 1, 0, 0, 1, 2, 0x0f, 1, 2, 0, 0, 2, 1, 1, 2, 1, 1, 3, 3, 5, 11, 8, 0})
	// Malformed selectors everywhere, a policy in a namespace with no object.
	f.Add([]byte{0x00, 5, 3, 0, 0, 0, 1, 0x33, 0, 4, 0, 3, 1, 1, 0x13, 1, 3, 7, 1, 2, 1, 1, 2, 8, 2, 11, 1, 0, 0, 2, 1, 7, 1, 0})
	// Two pods claiming one address (one Pending), hostNetwork and finished pods.
	f.Add([]byte{0x01, 6, 0, 0, 2, 2, 1, 0x10, 0, 0, 2, 2, 0, 0x10, 2, 4, 1, 0, 1, 0x01, 1, 3, 1, 1, 1, 0x04, 0, 1, 1, 0, 0, 0x11, 2, 0, 0, 0, 1, 0, 0})
	// x/p0 (app=a, http/TCP/80) isolated by a rule whose only port is "http" with an
	// endPort: that entry is invalid and allows nothing, not the named port.
	f.Add([]byte{0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 1, 0, 1, 0, 1, 0, 1, 11})
	// The same rule with an unknown protocol (8), then with port 70000 (12).
	f.Add([]byte{0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 1, 0, 1, 0, 1, 0, 1, 8})
	f.Add([]byte{0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 1, 0, 1, 0, 1, 0, 1, 12})
	// Namespace selectors on the name label the API server sets: x/p0 admits pods of
	// namespaces other than x and gone (p1 is in gone, which has no object), and pods of
	// y (whose object lacks the label).
	f.Add([]byte{0, 0, 0, 0, 0, 1, 0, 0, 0, 3, 1, 0, 0, 1, 0, 0, 1, 0, 1, 0, 1, 1, 1, 12, 0})
	f.Add([]byte{0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 1, 0, 0, 1, 0, 1, 0, 1, 1, 1, 10, 0})
	// ClusterNetworkPolicies: after the pods and policies, a count and the generator's
	// bytes (internal/npeval/hostile.RandomClusterPolicies).
	for i := range 8 {
		seed := []byte{0x05, 4, 0, 0, 0, 0, 1, 0x11, 1, 3, 2, 0, 0, 1, 0x22, 2, 0, 0, 1, 0x12, 0, 1, 1, 1, 0x03, 0, 0, byte(1 + i%4)}
		for j := range 96 {
			seed = append(seed, byte((j*37+i*11)%251))
		}
		f.Add(seed)
	}
	// Audit mode (the last byte, see decodeCluster): policies audited, then the node.
	for i, last := range []byte{0x9f, 0x83, 0xff, 0xe4} {
		seed := []byte{0x05, 4, 0, 0, 0, 0, 1, 0x11, 1, 3, 2, 0, 0, 1, 0x22, 2, 0, 0, 1, 0x12, 0, 1, 1, 1, 0x03, 0, 0, byte(1 + i%4)}
		for j := range 96 {
			seed = append(seed, byte((j*41+i*13)%251))
		}
		f.Add(append(seed, last))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cl := decodeCluster(data)
		checkCluster(t, cl)
	})
}

// fuzzCluster is a decoded cluster with the addresses its connections are probed on.
type fuzzCluster struct {
	pods       []*model.Pod
	namespaces map[string]*model.Namespace
	policies   []*networkingv1.NetworkPolicy
	cnps       []*cnp.ClusterNetworkPolicy
	nodes      []*model.Node
	// nodeIPs are the nodes' own addresses (hostNetwork pods use them).
	nodeIPs map[string][]netip.Addr
	// external are addresses outside the cluster (one inside the pod range).
	external []netip.Addr
	// audit: the node is in audit mode (Options.Audit); some policies may carry the
	// audit annotation too.
	audit bool
}

// byteReader hands out the fuzz input a byte at a time; past the end it yields zeros,
// so every input decodes to some cluster.
type byteReader struct {
	b []byte
	i int
}

func (r *byteReader) next() int {
	if r.i >= len(r.b) {
		return 0
	}
	r.i++
	return int(r.b[r.i-1])
}

func (r *byteReader) pick(n int) int { return r.next() % n }

var (
	fuzzNamespaces = []string{"x", "y", "z", "gone"} // "gone" has pods and policies but no Namespace
	fuzzNodes      = []string{"n1", "n2"}
	fuzzPhases     = []corev1.PodPhase{corev1.PodRunning, corev1.PodRunning, corev1.PodPending, corev1.PodSucceeded, corev1.PodFailed}
	fuzzPorts      = []model.NamedPort{
		{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80},
		{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53},
		{Name: "alt", Protocol: corev1.ProtocolTCP, Port: 8080},
		{Name: "http", Protocol: corev1.ProtocolUDP, Port: 81},
		{Name: "sctp", Protocol: corev1.ProtocolSCTP, Port: 9000},
		{Name: "alt", Protocol: corev1.ProtocolTCP, Port: 81}, // a second "alt": the first wins
	}
	fuzzCIDRs = []string{
		"10.0.0.0/24", "10.0.0.0/29", "10.0.0.4/30", "0.0.0.0/0", "::/0", "fd00::/120", "fd00::4/126",
		"203.0.113.0/24", "2001:db8::/32", "::ffff:10.0.0.0/120", "::ffff:10.0.0.0/80", "10.0.0.1/32",
		"garbage", "10.0.0.0/33", "10.0.0.3/29", "fd00::2/128",
	}
	fuzzProbes = []struct {
		proto corev1.Protocol
		port  uint16
	}{{corev1.ProtocolTCP, 80}, {corev1.ProtocolTCP, 81}, {corev1.ProtocolTCP, 8080}, {corev1.ProtocolUDP, 53}, {corev1.ProtocolUDP, 81}, {corev1.ProtocolSCTP, 9000}}
)

// decodeCluster: byte 0 picks the namespace labels; then the pod count and each pod's
// bytes; then the policy count and each policy's bytes (see the helpers).
func decodeCluster(data []byte) *fuzzCluster {
	r := &byteReader{b: data}
	c := &fuzzCluster{
		namespaces: map[string]*model.Namespace{},
		nodeIPs: map[string][]netip.Addr{
			"n1": {netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("fd00:ff::1")},
			"n2": {netip.MustParseAddr("192.168.0.2"), netip.MustParseAddr("fd00:ff::2")},
		},
		external: []netip.Addr{netip.MustParseAddr("203.0.113.5"), netip.MustParseAddr("10.0.0.200"), netip.MustParseAddr("2001:db8::5")},
	}
	nsBits := r.next()
	teams := []string{"red", "blue"}
	for i, ns := range fuzzNamespaces[:3] {
		l := map[string]string{"team": teams[(nsBits>>i)&1]}
		if nsBits&(8<<i) != 0 {
			l[NamespaceNameLabel] = ns // as the API server sets it; otherwise implied
		}
		if i == 2 && nsBits&0x40 != 0 {
			continue // z exists only through its pods and policies
		}
		c.namespaces[ns] = &model.Namespace{Name: ns, Labels: l}
	}
	nPods := 2 + r.pick(6)
	for i := range nPods {
		c.pods = append(c.pods, decodePod(r, i, c.nodeIPs))
	}
	nPol := r.pick(5)
	for i := range nPol {
		c.policies = append(c.policies, decodePolicy(r, i))
	}
	// Then the number of ClusterNetworkPolicies; the rest of the input drives their
	// generator (internal/npeval/hostile), valid and invalid shapes alike. Inputs that
	// end before (the older corpus) have none.
	nCNP := r.pick(5)
	if r.i < len(r.b) {
		src := &hostile.Bytes{B: r.b[r.i:]}
		c.nodes = hostile.RandomNodes(src, c.nodeIPs)
		c.cnps = hostile.RandomClusterPolicies(src, npeval.Cluster{Pods: c.pods, Namespaces: c.namespaces}, nCNP, true)
	}
	// Audit mode, from the input's last byte (read again: it also decoded something
	// above, so that older corpus entries keep their clusters): with its top bit set,
	// its low bits put policies in audit mode, and bits 5 and 6 together the node.
	if len(data) > 0 && data[len(data)-1]&0x80 != 0 {
		m := int(data[len(data)-1])
		for i, np := range c.policies {
			if m>>(i%5)&1 != 0 {
				np.Annotations = map[string]string{AuditAnnotation: ModeAudit}
			}
		}
		for i, p := range c.cnps {
			if m>>((i+2)%5)&1 != 0 {
				p.Annotations = map[string]string{AuditAnnotation: ModeAudit}
			}
		}
		c.audit = m&0x60 == 0x60
	}
	return c
}

// decodePod reads: namespace, node, phase byte (phase, hostNetwork, no IPv4, IPv6),
// labels byte, IPv4 host, IPv6 host, named ports bits.
func decodePod(r *byteReader, i int, nodeIPs map[string][]netip.Addr) *model.Pod {
	p := &model.Pod{Namespace: fuzzNamespaces[r.pick(4)], Name: fmt.Sprintf("p%d", i), NodeName: fuzzNodes[r.pick(2)]}
	ph := r.next()
	p.Phase = fuzzPhases[ph%5]
	lb := r.next()
	p.Labels = map[string]string{}
	if lb&1 != 0 {
		p.Labels["app"] = []string{"a", "b"}[(lb>>1)&1]
	}
	if lb&4 != 0 {
		p.Labels["tier"] = "x"
	}
	if lb&8 != 0 {
		p.Labels["team"] = "red" // a pod label that namespace selectors must not see
	}
	v4, v6 := r.next(), r.next()
	if ph&0x10 == 0 {
		p.IPs = append(p.IPs, netip.AddrFrom4([4]byte{10, 0, 0, byte(1 + v4%8)}))
	}
	if ph&0x20 != 0 {
		p.IPs = append(p.IPs, netip.AddrFrom16([16]byte{0: 0xfd, 15: byte(1 + v6%8)}))
	}
	if ph&0x40 != 0 {
		p.HostNetwork = true
		p.IPs = nodeIPs[p.NodeName]
	}
	pb := r.next()
	for j, np := range fuzzPorts {
		if pb&(1<<j) != 0 {
			p.Ports = append(p.Ports, np)
		}
	}
	return p
}

// fuzzSelector maps a byte to a label selector; some are malformed.
func fuzzSelector(b int) *metav1.LabelSelector {
	req := func(key string, op metav1.LabelSelectorOperator, vals ...string) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: vals}}}
	}
	switch b % 13 {
	case 0:
		return &metav1.LabelSelector{}
	case 1:
		return &metav1.LabelSelector{MatchLabels: map[string]string{"app": "a"}}
	case 2:
		return &metav1.LabelSelector{MatchLabels: map[string]string{"app": "b"}}
	case 3:
		return req("tier", metav1.LabelSelectorOpIn, "x")
	case 4:
		return req("app", metav1.LabelSelectorOpNotIn, "a")
	case 5:
		return req("tier", metav1.LabelSelectorOpExists)
	case 6:
		return req("app", metav1.LabelSelectorOpDoesNotExist)
	case 7:
		return req("app", "Bogus", "a") // malformed: unknown operator
	case 8:
		return req("app", metav1.LabelSelectorOpIn) // malformed: In without values
	case 9:
		return &metav1.LabelSelector{MatchLabels: map[string]string{"team": "red"}}
	case 10:
		return &metav1.LabelSelector{MatchLabels: map[string]string{NamespaceNameLabel: "y"}}
	case 11:
		return &metav1.LabelSelector{MatchLabels: map[string]string{"app": "not valid!"}} // malformed value
	default:
		return req(NamespaceNameLabel, metav1.LabelSelectorOpNotIn, "x", "gone")
	}
}

// decodePolicy reads: namespace, podSelector, policyTypes, rule counts byte, then the
// rules (peer count, peers, port count, ports).
func decodePolicy(r *byteReader, i int) *networkingv1.NetworkPolicy {
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: fuzzNamespaces[r.pick(4)], Name: fmt.Sprintf("np%d", i)}}
	np.Spec.PodSelector = *fuzzSelector(r.next())
	switch r.pick(6) {
	case 1:
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	case 2:
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	case 3:
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
	case 4:
		np.Spec.PolicyTypes = []networkingv1.PolicyType{"Bogus", networkingv1.PolicyTypeEgress}
	}
	counts := r.next()
	for range counts % 3 {
		peers, ports := decodeRule(r)
		np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: peers, Ports: ports})
	}
	for range (counts / 3) % 3 {
		peers, ports := decodeRule(r)
		np.Spec.Egress = append(np.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: peers, Ports: ports})
	}
	return np
}

func decodeRule(r *byteReader) ([]networkingv1.NetworkPolicyPeer, []networkingv1.NetworkPolicyPort) {
	var peers []networkingv1.NetworkPolicyPeer
	for range r.pick(4) {
		peers = append(peers, decodePeer(r))
	}
	var ports []networkingv1.NetworkPolicyPort
	for range r.pick(4) {
		ports = append(ports, decodePort(r.next()))
	}
	return peers, ports
}

func decodePeer(r *byteReader) networkingv1.NetworkPolicyPeer {
	block := func() *networkingv1.IPBlock {
		return &networkingv1.IPBlock{CIDR: fuzzCIDRs[r.pick(len(fuzzCIDRs))]}
	}
	switch r.pick(8) {
	case 0:
		return networkingv1.NetworkPolicyPeer{PodSelector: fuzzSelector(r.next())}
	case 1:
		return networkingv1.NetworkPolicyPeer{NamespaceSelector: fuzzSelector(r.next())}
	case 2:
		return networkingv1.NetworkPolicyPeer{NamespaceSelector: fuzzSelector(r.next()), PodSelector: fuzzSelector(r.next())}
	case 3:
		return networkingv1.NetworkPolicyPeer{IPBlock: block()}
	case 4:
		b := block()
		for range 1 + r.pick(3) {
			b.Except = append(b.Except, fuzzCIDRs[r.pick(len(fuzzCIDRs))])
		}
		return networkingv1.NetworkPolicyPeer{IPBlock: b}
	case 5:
		return networkingv1.NetworkPolicyPeer{} // invalid: selects nothing
	case 6:
		return networkingv1.NetworkPolicyPeer{IPBlock: block(), PodSelector: fuzzSelector(r.next())} // invalid
	default:
		return networkingv1.NetworkPolicyPeer{IPBlock: block(), NamespaceSelector: &metav1.LabelSelector{}} // invalid
	}
}

func decodePort(b int) networkingv1.NetworkPolicyPort {
	port := func(proto corev1.Protocol, p intstr.IntOrString) networkingv1.NetworkPolicyPort {
		pp := networkingv1.NetworkPolicyPort{Port: &p}
		if proto != "" {
			pp.Protocol = &proto
		}
		return pp
	}
	num := func(proto corev1.Protocol, n int32) networkingv1.NetworkPolicyPort {
		return port(proto, intstr.FromInt32(n))
	}
	named := func(proto corev1.Protocol, name string) networkingv1.NetworkPolicyPort {
		return port(proto, intstr.FromString(name))
	}
	end := func(pp networkingv1.NetworkPolicyPort, e int32) networkingv1.NetworkPolicyPort {
		pp.EndPort = &e
		return pp
	}
	only := func(proto corev1.Protocol) networkingv1.NetworkPolicyPort {
		return networkingv1.NetworkPolicyPort{Protocol: &proto}
	}
	switch b % 17 {
	case 0:
		return num("", 80)
	case 1:
		return num(corev1.ProtocolTCP, 8080)
	case 2:
		return num(corev1.ProtocolUDP, 53)
	case 3:
		return num(corev1.ProtocolSCTP, 9000)
	case 4:
		return end(num(corev1.ProtocolTCP, 79), 81)
	case 5:
		return named("", "http")
	case 6:
		return named(corev1.ProtocolUDP, "dns")
	case 7:
		return only(corev1.ProtocolUDP)
	case 8:
		return num("ICMP", 80) // invalid: unknown protocol
	case 9:
		return num(corev1.ProtocolTCP, 0) // invalid: out of range
	case 10:
		return end(num(corev1.ProtocolTCP, 81), 80) // invalid: endPort below port
	case 11:
		return end(named(corev1.ProtocolTCP, "http"), 90) // invalid: endPort with a name
	case 12:
		return num(corev1.ProtocolTCP, 70000) // invalid: out of range
	case 13:
		return named(corev1.ProtocolTCP, "alt")
	case 14:
		return only(corev1.ProtocolSCTP)
	case 15:
		return named(corev1.ProtocolUDP, "http")
	default:
		return end(num(corev1.ProtocolUDP, 50), 65535)
	}
}

// checkCluster compiles the cluster for both nodes, checks the rulesets, and compares
// every connection's verdict with npeval's.
func checkCluster(t *testing.T, c *fuzzCluster) {
	t.Helper()
	rulesets := map[string]*ruleset.Ruleset{}
	tracers := map[string]*tracer.Tracer{}
	for _, node := range fuzzNodes {
		snap := &model.Snapshot{NodeName: node, Pods: c.pods, Namespaces: c.namespaces, Policies: c.policies,
			ClusterPolicies: c.cnps, Nodes: c.nodes}
		opts := Options{Revocation: !c.audit, Audit: c.audit, LogDenied: len(c.pods)%2 == 0}
		res := Compile(snap, opts)
		if err := res.Ruleset.Validate(); err != nil {
			t.Fatalf("node %s: invalid ruleset: %v\n%s\n%s", node, err, describeFuzzCluster(c), ruleset.Render(res.Ruleset))
		}
		eres, _ := newEngineFrom(snap, opts).Flush()
		if d := ruleset.Diff(res.Ruleset, eres.Ruleset); !d.Empty() {
			t.Fatalf("node %s: Engine and Compile differ\n%s\n--- Compile\n%s\n--- Engine\n%s", node, describeFuzzCluster(c),
				ruleset.Render(res.Ruleset), ruleset.Render(eres.Ruleset))
		}
		if !reflect.DeepEqual(res.Ruleset.Owners, eres.Ruleset.Owners) {
			t.Fatalf("node %s: Engine and Compile owners differ\n%s\nCompile: %s\nEngine:  %s", node, describeFuzzCluster(c),
				describeOwners(res.Ruleset.Owners), describeOwners(eres.Ruleset.Owners))
		}
		if err := checkOwners(res.Ruleset); err != nil {
			t.Fatalf("node %s: %v\n%s\n%s", node, err, describeFuzzCluster(c), ruleset.Render(res.Ruleset))
		}
		if a, b := distinctProblems(res.Problems), distinctProblems(eres.Problems); !slices.Equal(a, b) {
			t.Fatalf("node %s: problems differ\nCompile: %q\nEngine:  %q", node, a, b)
		}
		rulesets[node] = res.Ruleset
		tracers[node] = tracer.New(res.Ruleset)
	}

	// ev judges as if every policy were enforced; enf as the node enforces: without the
	// audited policies (nothing under Options.Audit). The kernel's verdict must be enf's,
	// and it must count in audit chains exactly where the two differ.
	ev := npeval.New(npeval.Cluster{Pods: c.pods, Namespaces: c.namespaces, Policies: c.policies, ClusterPolicies: c.cnps, Nodes: c.nodes})
	enf := ev
	if c.audit {
		enf = npeval.New(npeval.Cluster{Pods: c.pods, Namespaces: c.namespaces, Nodes: c.nodes})
	} else if audited(c) {
		var nps []*networkingv1.NetworkPolicy
		var cnps []*cnp.ClusterNetworkPolicy
		for _, np := range c.policies {
			if !IsAudit(np.Annotations) {
				nps = append(nps, np)
			}
		}
		for _, p := range c.cnps {
			if !IsAudit(p.Annotations) {
				cnps = append(cnps, p)
			}
		}
		enf = npeval.New(npeval.Cluster{Pods: c.pods, Namespaces: c.namespaces, Policies: nps, ClusterPolicies: cnps, Nodes: c.nodes})
	}
	owners := model.IPOwners(c.pods)
	var ends []tracer.Endpoint
	seen := map[netip.Addr]bool{}
	add := func(e tracer.Endpoint) {
		if !seen[e.Addr] {
			seen[e.Addr] = true
			ends = append(ends, e)
		}
	}
	for _, node := range fuzzNodes {
		for _, ip := range c.nodeIPs[node] {
			add(tracer.Endpoint{Addr: ip, Node: node, Host: true})
		}
	}
	for _, p := range c.pods {
		for _, ip := range p.IPs {
			if o := owners[ip]; o != nil {
				add(tracer.Endpoint{Addr: ip, Node: o.NodeName})
			} else if !seen[ip] {
				add(tracer.Endpoint{Addr: ip}) // no pod owns it: an address like any outside one
			}
		}
	}
	for _, ip := range c.external {
		add(tracer.Endpoint{Addr: ip})
	}
	for _, src := range ends {
		for _, dst := range ends {
			if src.Addr == dst.Addr || src.Addr.Is4() != dst.Addr.Is4() {
				continue
			}
			if src.Host && dst.Node == src.Node {
				continue // the node reaches its own pods (output hook): not NetworkPolicy
			}
			if src.Node == "" && dst.Node == "" {
				continue // never through a node
			}
			for _, pr := range fuzzProbes {
				pn, _ := ProtocolNumber(pr.proto)
				j, _ := tracer.Judge(src, dst, tracer.Packet{Proto: pn, DPort: pr.port}, func(node string) (*tracer.Tracer, error) {
					return tracers[node], nil
				})
				got := j.Allowed()
				var trace []string
				for _, h := range j.Hops {
					for _, s := range h.Result.Steps {
						trace = append(trace, h.Node+": "+s.String())
					}
				}
				conn := npeval.Conn{Src: src.Addr, Dst: dst.Addr, Proto: pr.proto, Port: pr.port}
				want := enf.Verdict(conn)
				if got != want.Allowed {
					t.Fatalf("%s -> %s %s/%d: ruleset allowed=%v, npeval %v (as if the audited policies were enforced: %s)\n%s\ntrace:\n  %s", src.Addr, dst.Addr, pr.proto, pr.port, got,
						want, ev.Verdict(conn), describeFuzzCluster(c), strings.Join(trace, "\n  "))
				}
				if gotAudit, wantAudit := auditHits(j, rulesets), expectedAudit(ev.Verdict(conn), want); gotAudit != wantAudit {
					t.Fatalf("%s -> %s %s/%d: audit chains %q, want %q (as if enforced: %s; enforced: %s)\n%s\ntrace:\n  %s", src.Addr, dst.Addr, pr.proto, pr.port,
						gotAudit, wantAudit, ev.Verdict(conn), want, describeFuzzCluster(c), strings.Join(trace, "\n  "))
				}
			}
		}
	}
}

// audited reports whether a policy of the cluster carries the audit annotation.
func audited(c *fuzzCluster) bool {
	for _, np := range c.policies {
		if IsAudit(np.Annotations) {
			return true
		}
	}
	for _, p := range c.cnps {
		if IsAudit(p.Annotations) {
			return true
		}
	}
	return false
}

// auditHits lists the audit chains a connection's first packet went through, as
// "<role> <direction>" in path order.
func auditHits(j tracer.Judgement, rulesets map[string]*ruleset.Ruleset) string {
	var hits []string
	for _, h := range j.Hops {
		for _, s := range h.Result.Steps {
			if co := rulesets[h.Node].Owners.Chain(s.Chain); co != nil && s.Rule >= 0 && s.Rule < len(co.Rules) &&
				(co.Rules[s.Rule].Role == ruleset.RoleAuditDeny || co.Rules[s.Rule].Role == ruleset.RoleAuditAllow) {
				hits = append(hits, string(co.Role)+" "+string(co.Direction))
			}
		}
	}
	return strings.Join(hits, ", ")
}

// expectedAudit is what auditHits must find: per side the kernel judges (the ingress
// only when the egress passed), an audit-deny where the policies as if enforced deny and
// the enforced ones allow, an audit-allow for the reverse.
func expectedAudit(asIf, enforced npeval.Verdict) string {
	var hits []string
	side := func(dir Direction, a, e npeval.Decision) {
		switch {
		case !a.Allowed && e.Allowed:
			hits = append(hits, string(ruleset.RoleAuditDeny)+" "+string(dir))
		case a.Allowed && !e.Allowed:
			hits = append(hits, string(ruleset.RoleAuditAllow)+" "+string(dir))
		}
	}
	side(Egress, asIf.Egress, enforced.Egress)
	if enforced.Egress.Allowed {
		side(Ingress, asIf.Ingress, enforced.Ingress)
	}
	return strings.Join(hits, ", ")
}

func distinctProblems(ps []Problem) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Error()
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// describeFuzzCluster prints a decoded cluster for a failure message.
func describeFuzzCluster(c *fuzzCluster) string {
	var b strings.Builder
	for _, ns := range fuzzNamespaces {
		if n := c.namespaces[ns]; n != nil {
			fmt.Fprintf(&b, "namespace %s %v\n", ns, n.Labels)
		}
	}
	for _, p := range c.pods {
		fmt.Fprintf(&b, "pod %s node=%s phase=%s host=%v ips=%v labels=%v ports=%v\n", p.Key(), p.NodeName, p.Phase, p.HostNetwork, p.IPs, p.Labels, p.Ports)
	}
	for _, np := range c.policies {
		fmt.Fprintf(&b, "policy %s/%s: %s\n", np.Namespace, np.Name, np.Spec.String())
	}
	for _, n := range c.nodes {
		fmt.Fprintf(&b, "node %s labels=%v addrs=%v\n", n.Name, n.Labels, n.Addrs)
	}
	for _, p := range c.cnps {
		spec, err := json.Marshal(p.Spec)
		if err != nil {
			spec = []byte(err.Error())
		}
		fmt.Fprintf(&b, "clusternetworkpolicy %s: %s\n", p.Name, spec)
	}
	return b.String()
}
