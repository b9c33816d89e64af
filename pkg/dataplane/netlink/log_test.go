package netlink

import (
	"strings"
	"testing"

	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// TestLimitAndLogRoundTrip: rules with `limit` and `log` (what LogDenied adds to the
// isolation chains, and the variants of both: default burst, no prefix, with a counter
// and a verdict) are programmed through netlink, read back equal to what was written,
// and listed by nft exactly as nft lists the Render text of the same ruleset.
func TestLimitAndLogRoundTrip(t *testing.T) {
	rs := compiled(t)
	limit := func(rate uint64, burst uint32) ruleset.Match {
		return ruleset.Match{Kind: ruleset.MatchLimit, Rate: rate, Burst: burst}
	}
	isolations := 0
	for _, ch := range rs.Chains {
		if !strings.HasPrefix(ch.Name, "isolate-") {
			continue
		}
		isolations++
		n := len(ch.Rules)
		logRule := ruleset.Rule{Matches: []ruleset.Match{limit(10, 20)}, Log: &ruleset.Log{Group: 100, Prefix: ch.Name + " "}}
		ch.Rules = append(ch.Rules[:n-1:n-1], logRule, ch.Rules[n-1])
	}
	if isolations == 0 {
		t.Fatal("the compiled ruleset has no isolation chain")
	}
	rs.Chains = append(rs.Chains, &ruleset.Chain{Name: "log-variants", Rules: []ruleset.Rule{
		{Matches: []ruleset.Match{limit(3, ruleset.DefaultLimitBurst)}, Log: &ruleset.Log{Group: 0}},
		{Log: &ruleset.Log{Group: 65535, Prefix: "p"}, Counter: true},
		{Matches: []ruleset.Match{{Kind: ruleset.MatchL4Proto, Proto: ruleset.ProtoUDP}, limit(1, 1)}, Counter: true, Verdict: ruleset.Accept},
		{Matches: []ruleset.Match{limit(1000000, 100000)}, Log: &ruleset.Log{Group: 1, Prefix: strings.Repeat("x", ruleset.MaxLogPrefixLen)}, Verdict: ruleset.Drop, Comment: "both"},
	}})
	if err := rs.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}

	viaNetlink := newNetNS(t)
	d := newDataplane(t, viaNetlink)
	apply(t, d, rs, dataplane.ApplyOptions{})
	requireKernel(t, d, rs)
	want := listing(t, viaNetlink)
	if !strings.Contains(want, `limit rate 10/second burst 20 packets log prefix "isolate-`) {
		t.Fatalf("nft does not list the log rule as expected:\n%s", want)
	}
	// A second apply of the same ruleset finds nothing to change: the decoded rules
	// compare equal to the desired ones.
	if res := apply(t, d, rs, dataplane.ApplyOptions{ReadBack: true}); res.Drift {
		t.Errorf("read back differs from the applied ruleset: %+v", res)
	}

	if got := renderedListing(t, rs); got != want {
		t.Errorf("nft lists the rendered ruleset differently from the netlink one:\n--- netlink\n%s\n--- rendered\n%s", want, got)
	}
}

// TestValidateLimitAndLog: what the kernel would not read back as written is refused.
func TestValidateLimitAndLog(t *testing.T) {
	for _, r := range []ruleset.Rule{
		{Matches: []ruleset.Match{{Kind: ruleset.MatchLimit, Rate: 10}}, Log: &ruleset.Log{}},
		{Matches: []ruleset.Match{{Kind: ruleset.MatchLimit, Burst: 10}}, Log: &ruleset.Log{}},
		{Log: &ruleset.Log{Prefix: strings.Repeat("x", ruleset.MaxLogPrefixLen+1)}},
		{Log: &ruleset.Log{Prefix: `a"b`}},
		{Matches: []ruleset.Match{{Kind: ruleset.MatchLimit, Rate: 10, Burst: 10}}},
	} {
		rs := &ruleset.Ruleset{Table: "t", Chains: []*ruleset.Chain{{Name: "c", Rules: []ruleset.Rule{r}}}}
		if err := rs.Validate(); err == nil {
			t.Errorf("Validate accepted %s", ruleset.FormatRule(r))
		}
	}
}
