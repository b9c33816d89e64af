package compiler

import (
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// synthetic builds a cluster of pods spread over namespaces and nodes, and policies
// of the common shapes (pod selector peers, namespace selectors, ipBlocks, ports).
func synthetic(pods, policies, nodes int) *model.Snapshot {
	const perNS = 50
	snap := &model.Snapshot{NodeName: "node-0", Namespaces: map[string]*model.Namespace{}}
	for i := 0; i < pods; i++ {
		ns := fmt.Sprintf("ns-%d", i/perNS)
		if _, ok := snap.Namespaces[ns]; !ok {
			snap.Namespaces[ns] = &model.Namespace{Name: ns, Labels: map[string]string{NamespaceNameLabel: ns, "team": fmt.Sprintf("t%d", i/perNS%10)}}
		}
		ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		snap.Pods = append(snap.Pods, &model.Pod{Namespace: ns, Name: fmt.Sprintf("p-%d", i), NodeName: fmt.Sprintf("node-%d", i%nodes),
			Labels: map[string]string{"app": fmt.Sprintf("app-%d", i%20), "tier": fmt.Sprintf("tier-%d", i%3)},
			Phase:  corev1.PodRunning, IPs: []netip.Addr{ip},
			Ports: []model.NamedPort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 8080}}})
	}
	nsCount := (pods + perNS - 1) / perNS
	tcp := corev1.ProtocolTCP
	for i := 0; i < policies; i++ {
		ns := fmt.Sprintf("ns-%d", i%nsCount)
		p80, named := intstr.FromInt32(int32(80+i%10)), intstr.FromString("http")
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("pol-%d", i)},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", i%20)}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{
					{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": fmt.Sprintf("tier-%d", i%3)}}}},
						Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p80}, {Protocol: &tcp, Port: &named}}},
					{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("t%d", i%10)}}}}},
				},
				Egress: []networkingv1.NetworkPolicyEgressRule{
					{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8", Except: []string{fmt.Sprintf("10.%d.0.0/16", i%200)}}}}},
				},
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			}}
		snap.Policies = append(snap.Policies, np)
	}
	return snap
}

var benchSizes = []struct{ pods, policies, nodes int }{{1000, 100, 10}, {10000, 1000, 100}, {50000, 5000, 500}}

func BenchmarkCompile(b *testing.B) {
	for _, sz := range benchSizes {
		snap := synthetic(sz.pods, sz.policies, sz.nodes)
		b.Run(fmt.Sprintf("pods=%d/policies=%d", sz.pods, sz.policies), func(b *testing.B) {
			var st ruleset.Stats
			for i := 0; i < b.N; i++ {
				st = Compile(snap, Options{}).Ruleset.Stats()
			}
			b.ReportMetric(float64(st.Elements), "elements")
			b.ReportMetric(float64(st.Rules), "rules")
		})
	}
}

// BenchmarkDiffOneLabelChange: the incremental path after one pod's label change.
func BenchmarkDiffOneLabelChange(b *testing.B) {
	for _, sz := range benchSizes {
		snap := synthetic(sz.pods, sz.policies, sz.nodes)
		before := Compile(snap, Options{}).Ruleset
		snap.Pods[7].Labels = map[string]string{"app": "app-3", "tier": "tier-0"}
		after := Compile(snap, Options{}).Ruleset
		b.Run(fmt.Sprintf("pods=%d/policies=%d", sz.pods, sz.policies), func(b *testing.B) {
			ops := 0
			for i := 0; i < b.N; i++ {
				ops = ruleset.Diff(before, after).Ops()
			}
			b.ReportMetric(float64(ops), "ops")
		})
	}
}

// BenchmarkEngineChange: one change through the incremental engine, Flush included —
// what the agent computes per event. The cost must not grow with the cluster.
func BenchmarkEngineChange(b *testing.B) {
	for _, sz := range benchSizes {
		snap := synthetic(sz.pods, sz.policies, sz.nodes)
		e := newEngineFrom(snap, Options{})
		e.Flush()
		local := snap.Pods[0] // on node-0
		remote := snap.Pods[1]
		kinds := []struct {
			name string
			fn   func(i int)
		}{
			{"remote-pod-label", func(i int) {
				p := *remote
				p.Labels = map[string]string{"app": remote.Labels["app"], "tier": fmt.Sprintf("tier-%d", i%3)}
				e.SetPod(&p)
			}},
			{"local-pod-label", func(i int) {
				p := *local
				p.Labels = map[string]string{"app": fmt.Sprintf("app-%d", i%2), "tier": "tier-0"}
				e.SetPod(&p)
			}},
			{"pod-add-delete", func(i int) {
				if i%2 == 0 {
					p := *local
					p.Name, p.IPs = "extra", []netip.Addr{netip.MustParseAddr("10.250.0.1")}
					e.SetPod(&p)
				} else {
					e.DeletePod(local.Namespace, "extra")
				}
			}},
			{"namespace-relabel", func(i int) {
				ns := *snap.Namespaces[local.Namespace]
				ns.Labels = map[string]string{"team": fmt.Sprintf("t%d", i%2)}
				e.SetNamespace(&ns)
			}},
			{"policy-change", func(i int) {
				np := snap.Policies[0].DeepCopy()
				np.Name = "extra"
				if i%2 == 0 {
					e.SetPolicy(np)
				} else {
					e.DeletePolicy(np.Namespace, np.Name)
				}
			}},
		}
		for _, k := range kinds {
			b.Run(fmt.Sprintf("%s/pods=%d/policies=%d", k.name, sz.pods, sz.policies), func(b *testing.B) {
				ops := 0
				for i := 0; i < b.N; i++ {
					k.fn(i)
					_, ch := e.Flush()
					ops += ch.Ops()
				}
				b.ReportMetric(float64(ops)/float64(b.N), "ops")
			})
		}
	}
}

// labCluster is the cluster of `make bench` (test/bench/objects.go) as node1 sees it:
// namespaces of 50 pods labelled team=t(ns%10), five policies per namespace whose
// namespace-selector peers match whole teams, pods in blocks of 100 per node with
// block 0 on node1. Unlike synthetic, node1's share of the cluster stays 100 pods
// while its peer sets grow with the cluster (a tenth of every pod per team set), so
// the cost of a change here is what the agent pays at that scale.
func labCluster(pods int) *model.Snapshot {
	snap := synthetic(0, 0, 1)
	snap.NodeName = "node1"
	labels := map[int]map[string]string{}
	ports := []model.NamedPort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 8080}}
	for i := range pods {
		ns := fmt.Sprintf("syn-%04d", i/50)
		if _, ok := snap.Namespaces[ns]; !ok {
			snap.Namespaces[ns] = &model.Namespace{Name: ns, Labels: map[string]string{"team": fmt.Sprintf("t%d", i/50%10)}}
		}
		if labels[i%60] == nil {
			labels[i%60] = map[string]string{"app": fmt.Sprintf("app-%d", i%20), "tier": fmt.Sprintf("tier-%d", i%3)}
		}
		node := fmt.Sprintf("vnode-%d", i/100)
		if i < 100 {
			node = "node1"
		}
		snap.Pods = append(snap.Pods, &model.Pod{Namespace: ns, Name: fmt.Sprintf("p-%d", i), NodeName: node,
			Labels: labels[i%60], Phase: corev1.PodRunning, Ports: ports,
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 64 + byte(i>>16), byte(i >> 8), byte(i)})}})
	}
	for i, np := range synthetic(pods, pods/10, 1).Policies { // pol-i
		np.Namespace = fmt.Sprintf("syn-%04d", i/5)
		snap.Policies = append(snap.Policies, np)
	}
	return snap
}

// BenchmarkLabColdFlush: the agent's first compile at the lab's scales (the engine
// filled from scratch, then the first Flush).
func BenchmarkLabColdFlush(b *testing.B) {
	for _, pods := range []int{1000, 50000, 100000} {
		snap := labCluster(pods)
		b.Run(fmt.Sprintf("pods=%d", pods), func(b *testing.B) {
			var st ruleset.Stats
			for i := 0; i < b.N; i++ {
				res, _ := newEngineFrom(snap, Options{}).Flush()
				st = res.Ruleset.Stats()
			}
			b.ReportMetric(float64(st.Elements), "elements")
		})
	}
}

// BenchmarkLabPodAdd: the bench's pod-add and pod-delete (a pod on node1 that a policy
// selects and whose tier a peer selects) through the engine, Flush included, at the
// lab's scales. The cost must not grow with the cluster: the added pod enters a team's
// peer set, a tenth of the cluster.
func BenchmarkLabPodAdd(b *testing.B) {
	for _, pods := range []int{1000, 50000, 100000} {
		snap := labCluster(pods)
		e := newEngineFrom(snap, Options{})
		e.Flush()
		b.Run(fmt.Sprintf("pods=%d", pods), func(b *testing.B) {
			ops := 0
			for i := 0; i < b.N; i++ {
				if i%2 == 0 {
					e.SetPod(&model.Pod{Namespace: "syn-0000", Name: "extra", NodeName: "node1", Phase: corev1.PodRunning,
						Labels: map[string]string{"app": "app-0", "tier": "tier-1"}, IPs: []netip.Addr{netip.MustParseAddr("10.66.0.1")}})
				} else {
					e.DeletePod("syn-0000", "extra")
				}
				_, ch := e.Flush()
				ops += ch.Ops()
			}
			b.ReportMetric(float64(ops)/float64(b.N), "ops")
		})
	}
}
