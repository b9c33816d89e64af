package netlink

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
	"github.com/nftpolicy/nftpolicy/pkg/model"
)

// TestPatchFromEngine drives the kernel with the changes the incremental compiler
// computes (ApplyOptions.Changes): pod churn, relabels, policies added and removed.
// After each step the kernel must hold exactly the engine's ruleset; a BaseGeneration
// that is not the last Apply's, or a read-back, falls back to the full diff.
func TestPatchFromEngine(t *testing.T) {
	ns := newNetNS(t)
	d := newDataplane(t, ns)
	e := compiler.NewEngine("n1", compiler.Options{Revocation: true})
	pod := func(name, node, ip, app string) *model.Pod {
		return &model.Pod{Namespace: "x", Name: name, NodeName: node, Phase: corev1.PodRunning,
			Labels: map[string]string{"app": app}, IPs: []netip.Addr{netip.MustParseAddr(ip)},
			Ports: []model.NamedPort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 8080}}}
	}
	policy := func(name, app, from string) *networkingv1.NetworkPolicy {
		return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: name},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": app}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
					{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": from}}}}}},
			}}
	}
	e.SetNamespace(&model.Namespace{Name: "x"})
	e.SetPolicy(policy("web", "web", "client"))
	e.SetPod(pod("web-1", "n1", "10.0.0.1", "web"))
	e.SetPod(pod("client-1", "n2", "10.0.1.1", "client"))

	var gen dataplane.Generation // of the Apply of the engine's last Flush
	step := func(what string, wantPatch bool) {
		t.Helper()
		res, ch := e.Flush()
		out, err := d.Apply(context.Background(), res.Ruleset, dataplane.ApplyOptions{Changes: ch, BaseGeneration: gen})
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if out.Patched != wantPatch || (wantPatch && out.Ops != ch.Ops()) {
			t.Errorf("%s: %+v; want patched %v with the engine's %d ops", what, out, wantPatch, ch.Ops())
		}
		requireKernel(t, d, res.Ruleset)
		gen = out.Generation
	}
	step("first", false)
	for i := range 20 {
		e.SetPod(pod(fmt.Sprintf("client-%d", i+2), "n2", fmt.Sprintf("10.0.1.%d", i+2), "client"))
	}
	step("clients added", true)
	e.SetPod(pod("web-2", "n1", "10.0.0.2", "web"))
	step("local pod added", true)
	e.SetPod(pod("client-3", "n2", "10.0.1.3", "other"))
	e.DeletePod("x", "client-4")
	step("client relabelled and deleted", true)
	e.SetPolicy(policy("web-too", "web", "other"))
	step("policy added", true)
	e.DeletePolicy("x", "web")
	step("policy deleted", true)

	// Changes against a generation the dataplane did not apply last are not trusted.
	e.SetPod(pod("client-5", "n2", "10.0.1.5", "other"))
	res, ch := e.Flush()
	out, err := d.Apply(context.Background(), res.Ruleset, dataplane.ApplyOptions{Changes: ch, BaseGeneration: gen - 1})
	if err != nil || out.Patched {
		t.Fatalf("changes against a stale generation: %+v, %v", out, err)
	}
	requireKernel(t, d, res.Ruleset)
	gen = out.Generation

	// Drift is found by a read-back even when changes are passed.
	flushed := ""
	for _, s := range res.Ruleset.Sets {
		if !s.IsMap && len(s.Elements) > 0 && flushed == "" {
			flushed = s.Name
		}
	}
	nft(t, ns, "flush", "set", "inet", "nftpolicy", flushed)
	e.SetPod(pod("client-6", "n2", "10.0.1.6", "other"))
	res, ch = e.Flush()
	out, err = d.Apply(context.Background(), res.Ruleset, dataplane.ApplyOptions{Changes: ch, BaseGeneration: gen, ReadBack: true})
	if err != nil {
		t.Fatal(err)
	}
	if !out.Drift || out.Patched {
		t.Error("read-back did not see the flushed set")
	}
	requireKernel(t, d, res.Ruleset)

	// The periodic read-back with nothing changed: one diff finds and repairs drift.
	gen = out.Generation
	nft(t, ns, "flush", "set", "inet", "nftpolicy", flushed)
	res, ch = e.Flush()
	if !ch.Empty() {
		t.Fatalf("nothing changed, yet %d ops", ch.Ops())
	}
	out, err = d.Apply(context.Background(), res.Ruleset, dataplane.ApplyOptions{Changes: ch, BaseGeneration: gen, ReadBack: true})
	if err != nil || !out.Drift || out.Ops == 0 {
		t.Fatalf("read-back without changes: %+v, %v", out, err)
	}
	requireKernel(t, d, res.Ruleset)
	out, err = d.Apply(context.Background(), res.Ruleset, dataplane.ApplyOptions{Changes: ch, BaseGeneration: out.Generation, ReadBack: true})
	if err != nil || out.Drift || out.Ops != 0 {
		t.Fatalf("read-back of an intact table: %+v, %v", out, err)
	}
}
