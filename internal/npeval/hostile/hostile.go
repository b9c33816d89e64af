// Package hostile builds a cluster of oversized and awkward — but valid — input: policies
// with hundreds of peers and ports, ipBlocks of the whole address space minus hundreds
// of excepts, overlapping CIDRs, IPv4 and IPv6 in one rule, a pod with thousands of
// labels, and 63-character names wherever the API allows them. The compiler's hostile
// tests check it against npeval; the kernel test applies its ruleset.
//
// ClusterNetworkPolicies are opt-in, so that Cluster stays NetworkPolicy-only:
// CNPCluster adds ClusterPolicies (valid, at the API's limits) and Nodes, and
// RandomClusterPolicies and RandomNodes generate random ones, valid or not, for fuzzers.
package hostile

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nftpolicy/nftpolicy/internal/npeval"
	"github.com/nftpolicy/nftpolicy/pkg/model"
)

// Long returns a 63-character DNS label (the longest name a namespace, label name or
// label value may have) starting with prefix.
func Long(prefix string) string {
	return prefix + strings.Repeat("x", 62-len(prefix)) + "z"
}

// Sizes of the hostile objects.
const (
	Pods        = 40   // pods per namespace, spread over two nodes
	ManyLabels  = 3000 // labels of the heavy pod
	ManyPeers   = 300  // peers of one rule
	ManyPorts   = 200  // ports of one rule
	ManyExcepts = 500  // excepts per family of the huge ipBlocks
)

// Namespaces of the cluster: both with 63-character names.
var (
	NSA = Long("ns-a-")
	NSB = Long("ns-b-")
	// LabelKey is a label name with a prefix and a 63-character name part.
	LabelKey = "hostile.example.com/" + Long("k-")
)

// PodIP4 and PodIP6 are the addresses of pod i of namespace n (0 or 1).
func PodIP4(n, i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 244, byte(n), byte(i + 1)}) }
func PodIP6(n, i int) netip.Addr {
	return netip.AddrFrom16([16]byte{0: 0xfd, 1: 0x00, 2: 0x02, 3: 0x44, 7: byte(n), 15: byte(i + 1)})
}

// External are addresses outside the pods: inside and outside the huge ipBlocks' excepts.
var External = []netip.Addr{
	netip.MustParseAddr("8.8.8.8"), netip.MustParseAddr("172.16.3.5"), netip.MustParseAddr("10.1.2.3"),
	netip.MustParseAddr("10.1.9.9"), netip.MustParseAddr("2606:4700::1"), netip.MustParseAddr("2001:db8:5::1"),
}

// Cluster returns the hostile cluster. Pods of NSA are on nodes n1 (even) and n2 (odd);
// pod 0 of NSA carries ManyLabels labels.
func Cluster() npeval.Cluster {
	c := npeval.Cluster{Namespaces: map[string]*model.Namespace{}}
	for n, ns := range []string{NSA, NSB} {
		c.Namespaces[ns] = &model.Namespace{Name: ns, Labels: map[string]string{
			npeval.NamespaceNameLabel: ns, LabelKey: Long(fmt.Sprintf("v%d-", n)),
		}}
		for i := range Pods {
			p := &model.Pod{
				Namespace: ns, Name: Long(fmt.Sprintf("pod-%d-", i)), NodeName: []string{"n1", "n2"}[i%2],
				Phase: corev1.PodRunning, IPs: []netip.Addr{PodIP4(n, i), PodIP6(n, i)},
				Labels: map[string]string{"idx": fmt.Sprint(i), LabelKey: Long(fmt.Sprintf("grp%d-", i%4))},
				Ports: []model.NamedPort{
					{Name: "web", Protocol: corev1.ProtocolTCP, Port: int32(8000 + i)},
					{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53},
				},
			}
			if n == 0 && i == 0 {
				for j := range ManyLabels {
					p.Labels[fmt.Sprintf("l%d.example.com/%s", j, Long("k-"))] = Long(fmt.Sprintf("v%d-", j))
				}
			}
			c.Pods = append(c.Pods, p)
		}
	}
	c.Policies = []*networkingv1.NetworkPolicy{ManyPeersPolicy(), HugeBlocksPolicy(), OverlapPolicy(), LabelsPolicy()}
	return c
}

func policy(ns, name string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
}

func tcp(n int32) networkingv1.NetworkPolicyPort {
	p, proto := intstr.FromInt32(n), corev1.ProtocolTCP
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &p}
}

// ManyPeersPolicy isolates the even pods of NSA for ingress with one rule of ManyPeers
// peers (pod selectors by index, namespace selectors, /32 and /128 blocks) and
// ManyPorts ports (single, ranges, UDP, named), and a second rule of IPv4 and IPv6
// blocks together.
func ManyPeersPolicy() *networkingv1.NetworkPolicy {
	np := policy(NSA, Long("many-peers-"))
	np.Spec.PodSelector = metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
		{Key: "idx", Operator: metav1.LabelSelectorOpIn, Values: evens(Pods)}}}
	var peers []networkingv1.NetworkPolicyPeer
	for i := range ManyPeers {
		switch i % 3 {
		case 0: // pods by index in this namespace; most indexes do not exist
			peers = append(peers, networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"idx": fmt.Sprint(i / 3 * 7)}}})
		case 1: // pods by index in NSB, selected by its 63-character label
			peers = append(peers, networkingv1.NetworkPolicyPeer{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{LabelKey: Long("v1-")}},
				PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"idx": fmt.Sprint(i/3*5 + 1)}}})
		default: // single addresses, both families
			a := netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}).String() + "/32"
			if i%2 == 0 {
				a = fmt.Sprintf("2001:db8:ffff::%x/128", i)
			}
			peers = append(peers, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: a}})
		}
	}
	var ports []networkingv1.NetworkPolicyPort
	udp := corev1.ProtocolUDP
	for i := range ManyPorts {
		switch i % 4 {
		case 0:
			ports = append(ports, tcp(int32(80+i)))
		case 1:
			p := tcp(int32(10000 + i*10))
			end := int32(10000 + i*10 + 5)
			p.EndPort = &end
			ports = append(ports, p)
		case 2:
			p := tcp(int32(2000 + i))
			p.Protocol = &udp
			ports = append(ports, p)
		default:
			name := intstr.FromString("web")
			if i%8 == 7 {
				name = intstr.FromString(fmt.Sprintf("nope-%d", i))
			}
			ports = append(ports, networkingv1.NetworkPolicyPort{Port: &name})
		}
	}
	np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{
		{From: peers, Ports: ports},
		{From: []networkingv1.NetworkPolicyPeer{
			{IPBlock: &networkingv1.IPBlock{CIDR: "8.8.8.0/24"}},
			{IPBlock: &networkingv1.IPBlock{CIDR: "2606:4700::/32"}},
		}},
	}
	return np
}

// HugeBlocksPolicy isolates every pod of NSB for ingress and egress: in from 0.0.0.0/0
// and ::/0 minus ManyExcepts excepts each (among them every third pod of NSA and every
// fourth of NSB), out to the same blocks on TCP 80-90.
func HugeBlocksPolicy() *networkingv1.NetworkPolicy {
	np := policy(NSB, Long("huge-blocks-"))
	v4 := &networkingv1.IPBlock{CIDR: "0.0.0.0/0"}
	v6 := &networkingv1.IPBlock{CIDR: "::/0"}
	for i := range ManyExcepts {
		switch {
		case i < Pods && i%3 == 0:
			v4.Except = append(v4.Except, PodIP4(0, i).String()+"/32")
			v6.Except = append(v6.Except, PodIP6(0, i).String()+"/128")
		case i < 2*Pods && (i-Pods)%4 == 0:
			v4.Except = append(v4.Except, PodIP4(1, i-Pods).String()+"/32")
			v6.Except = append(v6.Except, PodIP6(1, i-Pods).String()+"/128")
		default:
			// Not adjacent, so they do not merge: each is a hole of its own.
			v4.Except = append(v4.Except, fmt.Sprintf("172.%d.%d.0/24", 16+i/128, 2*(i%128)))
			v6.Except = append(v6.Except, fmt.Sprintf("2001:db8:%x::/48", 2*i))
		}
	}
	// Excepts of the other family and overlapping excepts cut nothing more.
	v4.Except = append(v4.Except, "2001:db8::/32", "172.16.0.0/23")
	np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
	peers := []networkingv1.NetworkPolicyPeer{{IPBlock: v4}, {IPBlock: v6}}
	end := int32(90)
	p := tcp(80)
	p.EndPort = &end
	np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: peers}}
	np.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{To: peers, Ports: []networkingv1.NetworkPolicyPort{p}}}
	return np
}

// OverlapPolicy isolates the odd pods of NSA for egress to overlapping CIDRs whose
// excepts cut holes another peer fills again.
func OverlapPolicy() *networkingv1.NetworkPolicy {
	np := policy(NSA, Long("overlap-"))
	np.Spec.PodSelector = metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
		{Key: "idx", Operator: metav1.LabelSelectorOpNotIn, Values: evens(Pods)}}}
	np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	np.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{
		{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8", Except: []string{"10.1.0.0/16", "10.244.0.0/24"}}},
		{IPBlock: &networkingv1.IPBlock{CIDR: "10.1.0.0/16", Except: []string{"10.1.2.0/24"}}},
		{IPBlock: &networkingv1.IPBlock{CIDR: "10.1.2.3/32"}},
		{IPBlock: &networkingv1.IPBlock{CIDR: "10.244.0.8/29"}},
		{IPBlock: &networkingv1.IPBlock{CIDR: "fd00:244::/32", Except: []string{"fd00:244::/64"}}},
		{IPBlock: &networkingv1.IPBlock{CIDR: "::ffff:8.8.8.0/120"}},
	}}}
	return np
}

// LabelsPolicy selects by 63-character label names and values: in NSA, pods of group 1
// accept only pods of group 2 of either namespace, and the heavy pod.
func LabelsPolicy() *networkingv1.NetworkPolicy {
	np := policy(NSA, Long("labels-"))
	np.Spec.PodSelector = metav1.LabelSelector{MatchLabels: map[string]string{LabelKey: Long("grp1-")}}
	np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
		{NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: LabelKey, Operator: metav1.LabelSelectorOpExists}}},
			PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{LabelKey: Long("grp2-")}}},
		{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{
			fmt.Sprintf("l%d.example.com/%s", ManyLabels-1, Long("k-")): Long(fmt.Sprintf("v%d-", ManyLabels-1))}}},
	}}}
	return np
}

func evens(n int) []string {
	var out []string
	for i := 0; i < n; i += 2 {
		out = append(out, fmt.Sprint(i))
	}
	return out
}
