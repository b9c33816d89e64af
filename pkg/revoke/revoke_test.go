package revoke

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
	"github.com/nftpolicy/nftpolicy/pkg/tracer"
)

var (
	frontend = netip.MustParseAddr("10.244.1.2")
	backend  = netip.MustParseAddr("10.244.1.3")
	other    = netip.MustParseAddr("10.244.2.4")
	nodeIP   = netip.MustParseAddr("172.18.0.10")
	svcIP    = netip.MustParseAddr("10.96.0.10")
)

// backendOnlyFromFrontend compiles the seed policy for node n1, where frontend and
// backend run; other runs on n2.
func backendOnlyFromFrontend() *ruleset.Ruleset {
	pod := func(name, node string, ip netip.Addr) *model.Pod {
		return &model.Pod{Namespace: "app", Name: name, NodeName: node, Labels: map[string]string{"app": name},
			Phase: corev1.PodRunning, IPs: []netip.Addr{ip}}
	}
	snap := &model.Snapshot{NodeName: "n1",
		Pods:       []*model.Pod{pod("frontend", "n1", frontend), pod("backend", "n1", backend), pod("other", "n2", other)},
		Namespaces: map[string]*model.Namespace{"app": {Name: "app"}},
		Policies: []*networkingv1.NetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "backend-policy"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "backend"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
					{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "frontend"}}}}}},
			}}},
	}
	return compiler.Compile(snap, compiler.Options{}).Ruleset
}

func direct(proto uint8, src, dst netip.Addr, sport, dport uint16) dataplane.Flow {
	return dataplane.Flow{Proto: proto, Orig: dataplane.Tuple{Src: src, Dst: dst, SPort: sport, DPort: dport}, Reply: dataplane.Tuple{Src: dst, Dst: src, SPort: dport, DPort: sport}}
}

func TestDenied(t *testing.T) {
	rs := backendOnlyFromFrontend()
	// A connection to a Service: the entry's original destination is the ClusterIP,
	// the reply comes from the backend pod the DNAT chose.
	viaService := dataplane.Flow{Proto: ruleset.ProtoTCP, Orig: dataplane.Tuple{Src: other, Dst: svcIP, SPort: 40000, DPort: 80},
		Reply: dataplane.Tuple{Src: backend, Dst: other, SPort: 8080, DPort: 40000}}
	viaServiceAllowed := viaService
	viaServiceAllowed.Orig.Src, viaServiceAllowed.Reply.Dst = frontend, frontend
	flows := []dataplane.Flow{
		direct(ruleset.ProtoTCP, other, backend, 40001, 80),    // denied
		direct(ruleset.ProtoUDP, other, backend, 40002, 53),    // denied
		direct(ruleset.ProtoTCP, frontend, backend, 40003, 80), // allowed
		direct(ruleset.ProtoTCP, backend, other, 40004, 80),    // backend's egress is open
		direct(ruleset.ProtoTCP, nodeIP, backend, 40005, 8080), // the node itself (kubelet probe)
		direct(1, other, backend, 0, 0),                        // ICMP: left alone
		viaService,                                             // denied (judged after DNAT)
		viaServiceAllowed,                                      // allowed
	}
	// An allowed flow still carrying the revoked mark (its policy came back) is restored;
	// a denied flow already revoked is left alone.
	marks := Marks{Mask: compiler.CtMarkMask, Revoked: compiler.RevokedMark, Cleared: compiler.ClearedMark}
	comeback := direct(ruleset.ProtoTCP, frontend, backend, 40006, 80)
	comeback.Mark = 0xff | compiler.RevokedMark
	stillDenied := direct(ruleset.ProtoTCP, other, backend, 40007, 80)
	stillDenied.Mark = compiler.RevokedMark
	closed := direct(ruleset.ProtoTCP, other, backend, 40008, 80) // denied, but over: left alone
	closed.Closed = true
	flows = append(flows, comeback, stillDenied, closed)

	local := func(a netip.Addr) bool { return a == nodeIP }
	d := Decide(tracer.New(rs), flows, local, marks)
	check := func(what string, got, want []dataplane.Flow) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%s: %d flows, want %d: %+v", what, len(got), len(want), got)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("%s[%d] = %+v, want %+v", what, i, got[i], want[i])
			}
		}
	}
	check("revoke", d.Revoke, []dataplane.Flow{flows[0], flows[1], viaService})
	check("restore", d.Restore, []dataplane.Flow{comeback})
}

// TestDecideLate: a flow that came to light after a change was judged is revoked only
// when the change turned its verdict from allowed to denied.
func TestDecideLate(t *testing.T) {
	before := tracer.New(compiler.Compile(&model.Snapshot{NodeName: "n1"}, compiler.Options{}).Ruleset) // no policy: all allowed
	after := tracer.New(backendOnlyFromFrontend())
	marks := Marks{Mask: compiler.CtMarkMask, Revoked: compiler.RevokedMark, Cleared: compiler.ClearedMark}
	none := func(netip.Addr) bool { return false }
	turned := direct(ruleset.ProtoTCP, other, backend, 40001, 80)   // allowed before, denied after
	still := direct(ruleset.ProtoTCP, frontend, backend, 40002, 80) // allowed both
	d := DecideLate(before, after, []dataplane.Flow{turned, still}, none, marks)
	if len(d.Revoke) != 1 || d.Revoke[0] != turned || len(d.Restore) != 0 {
		t.Fatalf("late decision %+v, want the turned flow revoked alone", d)
	}
	// Denied under both (let through by something else, e.g. a drifted table): not
	// this change's doing.
	if d := DecideLate(after, after, []dataplane.Flow{turned}, none, marks); len(d.Revoke) != 0 {
		t.Fatalf("a flow denied before and after was revoked: %+v", d)
	}
}
