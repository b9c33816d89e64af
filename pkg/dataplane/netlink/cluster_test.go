package netlink

import (
	"context"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
	"github.com/nftpolicy/nftpolicy/pkg/model"
)

// TestClusterTiersInKernel drives the kernel with the tier chains of
// ClusterNetworkPolicies (Admin with Accept, Deny and Pass; Baseline; node, network and
// named-port peers) through the engine's patches: the kernel takes the gotos, the node
// sets and the shared sets, and holds exactly the engine's ruleset after each change.
func TestClusterTiersInKernel(t *testing.T) {
	ns := newNetNS(t)
	d := newDataplane(t, ns)
	e := compiler.NewEngine("n1", compiler.Options{Revocation: true, LogDenied: true})
	pod := func(nsName, name, node, ip4, ip6 string) *model.Pod {
		return &model.Pod{Namespace: nsName, Name: name, NodeName: node, Phase: corev1.PodRunning,
			Labels: map[string]string{"app": name}, IPs: []netip.Addr{netip.MustParseAddr(ip4), netip.MustParseAddr(ip6)},
			Ports: []model.NamedPort{{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53}}}
	}
	for _, n := range []string{"x", "y"} {
		e.SetNamespace(&model.Namespace{Name: n, Labels: map[string]string{"kubernetes.io/metadata.name": n}})
	}
	e.SetNode(&model.Node{Name: "n1", Labels: map[string]string{"role": "cp"}, Addrs: []netip.Addr{netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("fd00::1")}})
	e.SetNode(&model.Node{Name: "n2", Addrs: []netip.Addr{netip.MustParseAddr("192.168.0.2")}})
	e.SetPod(pod("x", "a", "n1", "10.0.0.1", "fd00:10::1"))
	e.SetPod(pod("y", "b", "n2", "10.0.1.1", "fd00:11::1"))

	sel := func(ns string) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}}
	}
	admin := &cnp.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "admin"}, Spec: cnp.ClusterNetworkPolicySpec{
		Tier: cnp.AdminTier, Priority: 5, Subject: cnp.ClusterNetworkPolicySubject{Namespaces: sel("x")},
		Ingress: []cnp.ClusterNetworkPolicyIngressRule{
			{Name: "pass-y", Action: cnp.ClusterNetworkPolicyRuleActionPass, From: []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: sel("y")}}},
			{Name: "dns", Action: cnp.ClusterNetworkPolicyRuleActionAccept, From: []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}},
				Protocols: []cnp.ClusterNetworkPolicyProtocol{{DestinationNamedPort: "dns"}}},
		},
		Egress: []cnp.ClusterNetworkPolicyEgressRule{
			{Name: "cp", Action: cnp.ClusterNetworkPolicyRuleActionAccept, To: []cnp.ClusterNetworkPolicyEgressPeer{{Nodes: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "cp"}}}},
				Protocols: []cnp.ClusterNetworkPolicyProtocol{{TCP: &cnp.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnp.Port{Range: &cnp.PortRange{Start: 6443, End: 6444}}}}}},
			{Name: "imds", Action: cnp.ClusterNetworkPolicyRuleActionDeny, To: []cnp.ClusterNetworkPolicyEgressPeer{{Networks: []cnp.CIDR{"169.254.169.254/32", "fd00:ec2::254/128"}}}},
		},
	}}
	baseline := &cnp.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "baseline"}, Spec: cnp.ClusterNetworkPolicySpec{
		Tier: cnp.BaselineTier, Priority: 0, Subject: cnp.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{}},
		Ingress: []cnp.ClusterNetworkPolicyIngressRule{{Action: cnp.ClusterNetworkPolicyRuleActionDeny, From: []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}}}},
	}}

	var gen dataplane.Generation
	step := func(what string) {
		t.Helper()
		res, ch := e.Flush()
		if err := res.Ruleset.Validate(); err != nil {
			t.Fatalf("%s: invalid ruleset: %v", what, err)
		}
		out, err := d.Apply(context.Background(), res.Ruleset, dataplane.ApplyOptions{Changes: ch, BaseGeneration: gen})
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		requireKernel(t, d, res.Ruleset)
		gen = out.Generation
	}
	step("no cluster policies")
	e.SetClusterPolicy(admin)
	step("admin tier")
	e.SetClusterPolicy(baseline)
	step("baseline tier")
	e.SetNode(&model.Node{Name: "n2", Labels: map[string]string{"role": "cp"}, Addrs: []netip.Addr{netip.MustParseAddr("192.168.0.2")}})
	step("node relabelled")
	e.SetNamespace(&model.Namespace{Name: "x", Labels: map[string]string{"kubernetes.io/metadata.name": "x", "team": "t"}})
	e.SetPod(pod("x", "c", "n1", "10.0.0.2", "fd00:10::2"))
	step("namespace relabelled, pod added")
	e.DeleteClusterPolicy("admin")
	step("admin deleted")
	e.DeleteClusterPolicy("baseline")
	step("baseline deleted")
}
