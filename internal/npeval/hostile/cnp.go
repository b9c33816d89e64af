package hostile

import (
	"fmt"
	"net/netip"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/internal/npeval"
	"github.com/nftpolicy/nftpolicy/pkg/model"
)

// MaxItems is the API's limit on a ClusterNetworkPolicy's rules per direction, a rule's
// peers and protocols, and a peer's networks.
const MaxItems = 25

// NodeIP4 and NodeIP6 are the addresses of node i (0: n1, 1: n2, 2: n3, which has no
// pods).
func NodeIP4(i int) netip.Addr { return netip.AddrFrom4([4]byte{192, 168, 0, byte(i + 1)}) }
func NodeIP6(i int) netip.Addr {
	return netip.AddrFrom16([16]byte{0: 0xfd, 1: 0x00, 3: 0xff, 15: byte(i + 1)})
}

// NodeRoleKey is the node label `nodes` peers select on: a prefixed 63-character name.
var NodeRoleKey = "node.hostile.example.com/" + Long("role-")

// Nodes returns the nodes of the hostile cluster: n1 and n2 (NodeRoleKey worker) carry
// the pods, n3 (control) none; each has an IPv4 and an IPv6 address.
func Nodes() []*model.Node {
	var out []*model.Node
	for i, name := range []string{"n1", "n2", "n3"} {
		role := "worker"
		if i == 2 {
			role = "control"
		}
		out = append(out, &model.Node{Name: name,
			Labels: map[string]string{"kubernetes.io/hostname": name, NodeRoleKey: Long(role + "-")},
			Addrs:  []netip.Addr{NodeIP4(i), NodeIP6(i)}})
	}
	return out
}

// CNPCluster is Cluster with the hostile ClusterNetworkPolicies and Nodes: opt-in, so
// tests of NetworkPolicy alone keep judging Cluster.
func CNPCluster() npeval.Cluster {
	c := Cluster()
	c.ClusterPolicies = ClusterPolicies()
	c.Nodes = Nodes()
	return c
}

// ClusterPolicies returns valid ClusterNetworkPolicies at the API's limits: 25 rules of
// 25 peers and 25 protocols, networks of 25 CIDRs of both families, priorities 0 and
// 1000 and ties between 63-character names, 100-character rule names, every action in
// both tiers.
func ClusterPolicies() []*cnp.ClusterNetworkPolicy {
	return []*cnp.ClusterNetworkPolicy{
		AdminManyRulesPolicy(), AdminNetworksPolicy(), BaselineTiePolicy("a", cnp.ClusterNetworkPolicyRuleActionDeny),
		BaselineTiePolicy("b", cnp.ClusterNetworkPolicyRuleActionAccept), BaselinePassPolicy(),
	}
}

func clusterPolicy(name string, tier cnp.Tier, prio int32) *cnp.ClusterNetworkPolicy {
	return &cnp.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: cnp.ClusterNetworkPolicySpec{Tier: tier, Priority: prio}}
}

// ruleName is a rule name of the API's maximum length, 100 characters.
func ruleName(prefix string, i int) string {
	s := fmt.Sprintf("%s-%d-", prefix, i)
	return s + strings.Repeat("r", 100-len(s))
}

var actions = []cnp.ClusterNetworkPolicyRuleAction{
	cnp.ClusterNetworkPolicyRuleActionDeny, cnp.ClusterNetworkPolicyRuleActionAccept, cnp.ClusterNetworkPolicyRuleActionPass,
}

func idxSelector(idx ...int) metav1.LabelSelector {
	var vals []string
	for _, i := range idx {
		vals = append(vals, fmt.Sprint(i))
	}
	return metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "idx", Operator: metav1.LabelSelectorOpIn, Values: vals}}}
}

func nsSelector(n int) metav1.LabelSelector {
	return metav1.LabelSelector{MatchLabels: map[string]string{LabelKey: Long(fmt.Sprintf("v%d-", n))}}
}

// AdminManyRulesPolicy (Admin, priority 0) selects the pods of NSA whose idx is a
// multiple of 4, for ingress: 25 rules, Deny, Accept and Pass in turn; rule i has 24
// pods peers (pods of either namespace by idx, most of which do not exist) and a
// namespaces peer that selects nothing, and 25 protocols: TCP 80+i, a TCP range from
// 10000+100i, UDP 2000+i, the named port "web" (TCP 8000+idx), SCTP on every port.
func AdminManyRulesPolicy() *cnp.ClusterNetworkPolicy {
	p := clusterPolicy(Long("admin-many-rules-"), cnp.AdminTier, 0)
	var mult4 []int
	for i := 0; i < Pods; i += 4 {
		mult4 = append(mult4, i)
	}
	sel := idxSelector(mult4...)
	p.Spec.Subject.Pods = &cnp.NamespacedPod{NamespaceSelector: nsSelector(0), PodSelector: sel}
	for i := range MaxItems {
		r := cnp.ClusterNetworkPolicyIngressRule{Name: ruleName("many", i), Action: actions[i%3]}
		for j := range MaxItems - 1 {
			r.From = append(r.From, cnp.ClusterNetworkPolicyIngressPeer{Pods: &cnp.NamespacedPod{
				NamespaceSelector: nsSelector(j % 2), PodSelector: idxSelector((i*(MaxItems-1) + j) % (3 * Pods))}})
		}
		r.From = append(r.From, cnp.ClusterNetworkPolicyIngressPeer{Namespaces: &metav1.LabelSelector{
			MatchExpressions: []metav1.LabelSelectorRequirement{{Key: LabelKey, Operator: metav1.LabelSelectorOpIn, Values: []string{Long("v9-")}}}}})
		for k := range MaxItems {
			var pr cnp.ClusterNetworkPolicyProtocol
			switch k % 5 {
			case 0:
				pr.TCP = &cnp.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnp.Port{Number: int32(80 + i)}}
			case 1:
				start := int32(10000 + 100*i)
				pr.TCP = &cnp.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnp.Port{Range: &cnp.PortRange{Start: start, End: start + int32(k)}}}
			case 2:
				pr.UDP = &cnp.ClusterNetworkPolicyProtocolUDP{DestinationPort: &cnp.Port{Number: int32(2000 + i)}}
			case 3:
				pr.DestinationNamedPort = "web"
			default:
				pr.SCTP = &cnp.ClusterNetworkPolicyProtocolSCTP{}
			}
			r.Protocols = append(r.Protocols, pr)
		}
		p.Spec.Ingress = append(p.Spec.Ingress, r)
	}
	return p
}

// AdminNetworksPolicy (Admin, priority 1000) selects every pod of NSB (by the name
// label) for egress: 25 rules, Deny, Accept and Pass in turn; rule i has 5 networks
// peers of 25 CIDRs each (single pod addresses of NSA, IPv4 and IPv6 prefixes, and one
// of the outside addresses' networks, NSB's first pods or all pods' IPv6 addresses), a
// nodes peer for the worker nodes and a pods peer, and TCP ports 80+i to 90+i or, for
// every fifth rule, no protocols.
func AdminNetworksPolicy() *cnp.ClusterNetworkPolicy {
	p := clusterPolicy(Long("admin-networks-"), cnp.AdminTier, 1000)
	p.Spec.Subject.Namespaces = &metav1.LabelSelector{MatchLabels: map[string]string{npeval.NamespaceNameLabel: NSB}}
	for i := range MaxItems {
		r := cnp.ClusterNetworkPolicyEgressRule{Name: ruleName("networks", i), Action: actions[i%3]}
		for j := range 5 {
			var nets []cnp.CIDR
			for k := range MaxItems {
				n := (i*5+j)*MaxItems + k
				var c string
				switch k % 5 {
				case 0:
					c = netip.PrefixFrom(PodIP4(0, n%Pods), 32).String()
				case 1:
					c = netip.PrefixFrom(PodIP6(0, n%Pods), 128).String()
				case 2:
					c = fmt.Sprintf("172.%d.%d.0/24", 16+n%16, n%256)
				case 3:
					c = fmt.Sprintf("2001:db8:%x::/48", n)
				default: // one outside or pod network a rule, in its first peer
					c = fmt.Sprintf("172.31.%d.0/24", n%256)
					if j == 0 && k == 4 {
						c = []string{"8.8.0.0/16", "10.1.0.0/16", "2606:4700::/32", "10.244.1.0/28", "fd00:244::/32"}[i%5]
					}
				}
				nets = append(nets, cnp.CIDR(c))
			}
			r.To = append(r.To, cnp.ClusterNetworkPolicyEgressPeer{Networks: nets})
		}
		r.To = append(r.To,
			cnp.ClusterNetworkPolicyEgressPeer{Nodes: &metav1.LabelSelector{MatchLabels: map[string]string{NodeRoleKey: Long("worker-")}}},
			cnp.ClusterNetworkPolicyEgressPeer{Pods: &cnp.NamespacedPod{NamespaceSelector: nsSelector(0), PodSelector: idxSelector(i, i+MaxItems)}})
		if i%5 != 4 {
			r.Protocols = []cnp.ClusterNetworkPolicyProtocol{{TCP: &cnp.ClusterNetworkPolicyProtocolTCP{
				DestinationPort: &cnp.Port{Range: &cnp.PortRange{Start: int32(80 + i), End: int32(90 + i)}}}}}
		}
		p.Spec.Egress = append(p.Spec.Egress, r)
	}
	return p
}

// BaselineTiePolicy (Baseline, priority 1000) selects every pod of NSA for ingress from
// NSB with the given action. Its 63-character name differs from its twin's only by
// which ("a" or "b"): the tie between them is broken by name.
func BaselineTiePolicy(which string, action cnp.ClusterNetworkPolicyRuleAction) *cnp.ClusterNetworkPolicy {
	p := clusterPolicy(Long("baseline-tie-")[:62]+which, cnp.BaselineTier, 1000)
	p.Spec.Subject.Namespaces = &metav1.LabelSelector{MatchLabels: map[string]string{LabelKey: Long("v0-")}}
	ns := nsSelector(1)
	p.Spec.Ingress = []cnp.ClusterNetworkPolicyIngressRule{{Name: ruleName("tie-"+which, 0), Action: action,
		From: []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: &ns}}}}
	return p
}

// BaselinePassPolicy (Baseline, priority 0) selects every pod of NSA. Ingress from
// NSB's pods of group 3 passes (the default then allows it past the tie policies;
// NetworkPolicy leaves only NSA's group 3 to the Baseline tier). Egress (NSA's even
// pods have no egress NetworkPolicy) accepts DNS to any pod by named port and denies
// every other UDP destination.
func BaselinePassPolicy() *cnp.ClusterNetworkPolicy {
	p := clusterPolicy(Long("baseline-pass-"), cnp.BaselineTier, 0)
	p.Spec.Subject.Pods = &cnp.NamespacedPod{NamespaceSelector: nsSelector(0)}
	p.Spec.Ingress = []cnp.ClusterNetworkPolicyIngressRule{{Action: cnp.ClusterNetworkPolicyRuleActionPass,
		From: []cnp.ClusterNetworkPolicyIngressPeer{{Pods: &cnp.NamespacedPod{NamespaceSelector: nsSelector(1),
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{LabelKey: Long("grp3-")}}}}}}}
	p.Spec.Egress = []cnp.ClusterNetworkPolicyEgressRule{
		{Action: cnp.ClusterNetworkPolicyRuleActionAccept, To: []cnp.ClusterNetworkPolicyEgressPeer{{Namespaces: &metav1.LabelSelector{}}},
			Protocols: []cnp.ClusterNetworkPolicyProtocol{{DestinationNamedPort: "dns"}}},
		{Action: cnp.ClusterNetworkPolicyRuleActionDeny, To: []cnp.ClusterNetworkPolicyEgressPeer{{Networks: []cnp.CIDR{"0.0.0.0/0", "::/0"}}},
			Protocols: []cnp.ClusterNetworkPolicyProtocol{{UDP: &cnp.ClusterNetworkPolicyProtocolUDP{}}}},
	}
	return p
}
