package controllers

import (
	"testing"

	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// Counts are attributed through the applied ruleset: accept rules by their policy rule
// comment (summed over the rules one policy rule compiles to), isolation drops to
// every policy the chain jumps to, and a chain whose kernel rules do not line up with
// the applied ones (being rewritten) contributes nothing.
func TestAttribute(t *testing.T) {
	acc := func(c string) ruleset.Rule { return ruleset.Rule{Counter: true, Verdict: ruleset.Accept, Comment: c} }
	rs := &ruleset.Ruleset{Chains: []*ruleset.Chain{
		{Name: "pol-in-aaaa-ns.a", Rules: []ruleset.Rule{acc("ns/a ingress rule 0"), acc("ns/a ingress rule 0"), acc("ns/a ingress rule 1 named ports")}},
		{Name: "pol-in-bbbb-ns.b", Rules: []ruleset.Rule{acc("ns/b ingress rule 0")}},
		{Name: "pol-eg-cccc-ns.c", Rules: []ruleset.Rule{acc("ns/c egress rule 0")}},
		{Name: "isolate-in-1111", Rules: []ruleset.Rule{
			{Verdict: ruleset.Jump("pol-in-aaaa-ns.a"), Comment: "ns/a"},
			{Verdict: ruleset.Jump("pol-in-bbbb-ns.b"), Comment: "ns/b"},
			{Counter: true, Verdict: ruleset.Drop, Comment: "drop: no rule of ns/a, ns/b allows it"}}},
		{Name: "isolate-in-2222", Rules: []ruleset.Rule{
			{Verdict: ruleset.Jump("pol-in-aaaa-ns.a"), Comment: "ns/a"},
			{Counter: true, Verdict: ruleset.Drop, Comment: "drop: no rule of ns/a allows it"}}},
		{Name: "isolate-eg-3333", Rules: []ruleset.Rule{
			{Verdict: ruleset.Jump("pol-eg-cccc-ns.c"), Comment: "ns/c"},
			{Counter: true, Verdict: ruleset.Drop, Comment: "drop: no rule of ns/c allows it"}}},
	}}
	rc := func(p, b uint64, c string) dataplane.RuleCounter {
		return dataplane.RuleCounter{Packets: p, Bytes: b, Counted: true, Comment: c}
	}
	kernel := map[string][]dataplane.RuleCounter{
		"pol-in-aaaa-ns.a": {rc(1, 60, "ns/a ingress rule 0"), rc(2, 80, "ns/a ingress rule 0"), rc(5, 300, "ns/a ingress rule 1 named ports")},
		"pol-in-bbbb-ns.b": {rc(7, 700, "ns/b ingress rule 0")},
		// Rewritten in the kernel already: another rule at this position.
		"pol-eg-cccc-ns.c": {rc(9, 900, "ns/c egress rule 4")},
		"isolate-in-1111":  {{Comment: "ns/a"}, {Comment: "ns/b"}, rc(10, 1000, "drop: no rule of ns/a, ns/b allows it")},
		"isolate-in-2222":  {{Comment: "ns/a"}, rc(3, 100, "drop: no rule of ns/a allows it")},
		"isolate-eg-3333":  {{Comment: "ns/c"}, rc(4, 100, "drop: no rule of ns/c allows it")},
	}
	v := attribute(rs, kernel)
	wantAllowed := map[ruleKey]packetsBytes{
		{"ns", "a", "ingress", "0"}: {3, 140},
		{"ns", "a", "ingress", "1"}: {5, 300},
		{"ns", "b", "ingress", "0"}: {7, 700},
	}
	if len(v.allowed) != len(wantAllowed) {
		t.Errorf("allowed = %v, want %v", v.allowed, wantAllowed)
	}
	for k, w := range wantAllowed {
		if v.allowed[k] != w {
			t.Errorf("allowed %v = %v, want %v", k, v.allowed[k], w)
		}
	}
	wantDropped := map[policyDir]uint64{{"ns", "a", "ingress"}: 13, {"ns", "b", "ingress"}: 10, {"ns", "c", "egress"}: 4}
	if len(v.dropped) != len(wantDropped) {
		t.Errorf("dropped = %v, want %v", v.dropped, wantDropped)
	}
	for k, w := range wantDropped {
		if v.dropped[k] != w {
			t.Errorf("dropped %v = %v, want %v", k, v.dropped[k], w)
		}
	}
	if len(v.policies) != 3 {
		t.Errorf("policies in force = %v, want ns/a, ns/b, ns/c", v.policies)
	}
	if _, _, _, ok := parseRuleComment("ns/a-very-long-name-cut ingress rul...", "ingress"); ok {
		t.Error("a truncated comment was attributed")
	}
}
