package compiler

import (
	"slices"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestValidateIsWhatCompilingReports: for each bad policy, Validate returns exactly the
// problems (same text, same order) Compile reports on a node where the policy selects a
// pod, while a node where it selects none reports only its parse problems — the gap
// Validate fills.
func TestValidateIsWhatCompilingReports(t *testing.T) {
	badSel := netpol("x", "bad-selector", nil)
	badSel.Spec.PodSelector = metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: "Bogus"}}}
	cases := []struct {
		np *networkingv1.NetworkPolicy
		// fields with a problem: all of them (Validate), and those a node without
		// the policy's pods reports (parse problems).
		fields, parse []string
	}{
		{ingress(netpol("x", "bad-ingress", m("pod", "a")),
			from(ipBlock("010.0.0.0/8"), podSel(m("pod", "b"))),
			withPorts(from(), namePort("ICMP", "x"), rangePort(TCP, 90, 80))),
			[]string{"spec.ingress[0].from[0].ipBlock", "spec.ingress[1].ports[0].protocol", "spec.ingress[1].ports[1]"}, nil},
		{egress(netpol("x", "bad-egress", m("pod", "c")), to(networkingv1.NetworkPolicyPeer{}, ipBlock("10.0.0.0/8", "nope"))),
			[]string{"spec.egress[0].to[0]", "spec.egress[0].to[1].ipBlock"}, nil},
		// The egress rules of an ingress-only policy are never compiled.
		{types(egress(netpol("x", "ingress-only", m("pod", "a")), to(ipBlock("bad"))), networkingv1.PolicyTypeIngress), nil, nil},
		{types(ingress(netpol("x", "unknown-type", m("pod", "a")), from(ipBlock("bad"))), "Sideways", networkingv1.PolicyTypeIngress),
			[]string{"spec.policyTypes[0]", "spec.ingress[0].from[0].ipBlock"}, []string{"spec.policyTypes[0]"}},
		{ingress(netpol("x", "sctp", m("pod", "c")), withPorts(from(), numPort(SCTP, 9), rangePort(TCP, 0, 5))),
			[]string{"spec.ingress[0].ports[0].protocol", "spec.ingress[0].ports[1]"}, []string{"spec.ingress[0].ports[0].protocol"}},
		{badSel, []string{"spec.podSelector"}, []string{"spec.podSelector"}},
	}
	opts := Options{SCTPUnsupported: true}
	fieldsOf := func(ps []Problem) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.Field)
		}
		return out
	}
	for _, tc := range cases {
		key := tc.np.Namespace + "/" + tc.np.Name
		got := Validate(tc.np, opts)
		if !slices.Equal(fieldsOf(got), tc.fields) {
			t.Errorf("%s: Validate reports %q, want %q", key, fieldsOf(got), tc.fields)
		}
		c := upstream(t).policy(tc.np)
		// x/a and x/c run on n1; n3 has no pods.
		if on := Compile(c.snapshot("n1"), opts).Problems; !slices.Equal(problemStrings(got), problemStrings(on)) {
			t.Errorf("%s: Validate %q, Compile on a node with its pods %q", key, problemStrings(got), problemStrings(on))
		}
		if off := fieldsOf(Compile(c.snapshot("n3"), opts).Problems); !slices.Equal(off, tc.parse) {
			t.Errorf("%s: Compile on a node without its pods reports %q, want %q", key, off, tc.parse)
		}
	}
	if got := Validate(ingress(netpol("x", "fine", nil), from(ipBlock("10.0.0.0/8", "10.1.0.0/16"))), opts); len(got) != 0 {
		t.Errorf("a valid policy: problems %v", got)
	}
}
