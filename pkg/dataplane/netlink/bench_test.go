package netlink

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftpolicy/nftpolicy/internal/testns"
	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
	"github.com/nftpolicy/nftpolicy/pkg/model"
)

// BenchmarkPatch: one pod added or removed in a peer set of n pods, sent as the
// engine's changes — the kernel commit of an incremental sync. Its cost must not
// depend on n.
func BenchmarkPatch(b *testing.B) {
	for _, n := range []int{1000, 50000} {
		b.Run(fmt.Sprintf("pods=%d", n), func(b *testing.B) {
			ns := testns.New(b)
			d, err := New(WithNetNSFd(ns))
			if err != nil {
				b.Fatal(err)
			}
			e := compiler.NewEngine("n1", compiler.Options{})
			e.SetNamespace(&model.Namespace{Name: "x"})
			e.SetPolicy(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "web"},
				Spec: networkingv1.NetworkPolicySpec{
					PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
					Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
						{NamespaceSelector: &metav1.LabelSelector{}}}}},
				}})
			pod := func(name, node string, ip netip.Addr, app string) *model.Pod {
				return &model.Pod{Namespace: "x", Name: name, NodeName: node, Phase: corev1.PodRunning,
					Labels: map[string]string{"app": app}, IPs: []netip.Addr{ip}}
			}
			e.SetPod(pod("web", "n1", netip.MustParseAddr("10.99.0.1"), "web"))
			base := netip.MustParseAddr("10.0.0.0")
			ip := base
			for i := range n {
				ip = ip.Next()
				e.SetPod(pod(fmt.Sprintf("p%d", i), "n2", ip, "client"))
			}
			res, ch := e.Flush()
			out, err := d.Apply(context.Background(), res.Ruleset, dataplane.ApplyOptions{Changes: ch})
			if err != nil {
				b.Fatal(err)
			}
			extra := netip.MustParseAddr("10.200.0.1")
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if i%2 == 0 {
					e.SetPod(pod("extra", "n2", extra, "client"))
				} else {
					e.DeletePod("x", "extra")
				}
				res, ch = e.Flush()
				out, err = d.Apply(context.Background(), res.Ruleset, dataplane.ApplyOptions{Changes: ch, BaseGeneration: out.Generation})
				if err != nil || !out.Patched || out.Ops != 1 {
					b.Fatalf("apply: %+v %v", out, err)
				}
			}
		})
	}
}
