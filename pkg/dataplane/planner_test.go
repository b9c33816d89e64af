package dataplane_test

// The planner's decisions, run against both backends: the in-memory fake, and the
// kernel in a throwaway network namespace. The same cases must pass on both: that is
// what keeps the fake, which the controller tests run on, honest.

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/nftpolicy/nftpolicy/internal/testns"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane/fake"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane/netlink"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// kernel is one backend under the planner, and a way to change its table behind the
// planner's back.
type kernel struct {
	dp dataplane.Dataplane
	// tamper replaces the table with f(table) (nil: no table) the way another program
	// would: the planner under test is not told.
	tamper func(f func(*ruleset.Ruleset) *ruleset.Ruleset)
	// lastGen is the Generation of the last successful Apply, to check they increase.
	lastGen dataplane.Generation
}

var backends = map[string]func(t *testing.T) *kernel{
	"fake": func(*testing.T) *kernel {
		d := fake.New()
		return &kernel{dp: d, tamper: d.Mutate}
	},
	"netlink": func(t *testing.T) *kernel {
		ns := testns.New(t)
		d, err := netlink.New(netlink.WithNetNSFd(ns))
		if err != nil {
			t.Fatal(err)
		}
		// Another dataplane on the same table, as a second writer the planner under
		// test knows nothing of.
		other, err := netlink.New(netlink.WithNetNSFd(ns))
		if err != nil {
			t.Fatal(err)
		}
		return &kernel{dp: d, tamper: func(f func(*ruleset.Ruleset) *ruleset.Ruleset) {
			t.Helper()
			ctx := context.Background()
			rs, err := other.Read(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if rs = f(rs); rs == nil {
				err = other.Delete(ctx)
			} else {
				_, err = other.Apply(ctx, rs, dataplane.ApplyOptions{Full: true})
			}
			if err != nil {
				t.Fatalf("tamper: %v", err)
			}
		}}
	},
}

func (k *kernel) apply(t *testing.T, rs *ruleset.Ruleset, opts dataplane.ApplyOptions) dataplane.Result {
	t.Helper()
	res, err := k.dp.Apply(context.Background(), rs, opts)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if res.Generation <= k.lastGen {
		t.Fatalf("Apply returned generation %d after %d: generations must increase", res.Generation, k.lastGen)
	}
	k.lastGen = res.Generation
	k.requireTable(t, rs)
	return res
}

// requireTable checks that the kernel holds exactly want.
func (k *kernel) requireTable(t *testing.T, want *ruleset.Ruleset) {
	t.Helper()
	got, err := k.dp.Read(context.Background())
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	if got == nil {
		t.Fatal("Read: no table")
	}
	w := normalized(want)
	if !ruleset.Diff(w, got).Empty() || ruleset.Render(w) != ruleset.Render(got) {
		t.Fatalf("the table differs from the desired ruleset\n--- want\n%s\n--- got\n%s", ruleset.Render(w), ruleset.Render(got))
	}
}

func normalized(rs *ruleset.Ruleset) *ruleset.Ruleset {
	c := rs.Clone()
	c.Normalize()
	return c
}

// changes are the changes from a to b, as a caller computes them.
func changes(a, b *ruleset.Ruleset) *ruleset.Changes {
	return ruleset.Diff(normalized(a), normalized(b))
}

func peer(s string) ruleset.Element {
	return ruleset.Element{Key: []ruleset.Range{ruleset.Addr(netip.MustParseAddr(s))}}
}

// The rulesets are normalized, as the compiler's are: the planner keeps a desired
// ruleset passed with trusted changes as it is.

// v1 is a small table: a base chain jumping to a policy chain that accepts a set.
func v1() *ruleset.Ruleset {
	v4 := []ruleset.KeyType{ruleset.KeyIPv4Addr}
	return normalized(&ruleset.Ruleset{
		Table: dataplane.DefaultTable,
		Sets: []*ruleset.Set{
			{Name: "peers", Comment: "peers of pol", Key: v4, Elements: []ruleset.Element{peer("10.0.0.1"), peer("10.0.0.2")}},
		},
		Chains: []*ruleset.Chain{
			{Name: "forward", Base: &ruleset.BaseChain{Hook: ruleset.HookForward}, Rules: []ruleset.Rule{
				{Verdict: ruleset.Jump("pol"), Comment: "to pol"},
			}},
			{Name: "pol", Comment: "policy", Rules: []ruleset.Rule{
				{Matches: []ruleset.Match{{Kind: ruleset.MatchLookup, Fields: []ruleset.Field{ruleset.FieldIPv4Saddr}, Set: "peers"}},
					Counter: true, Verdict: ruleset.Accept, Comment: "allow peers"},
			}},
		},
	})
}

// v2 is v1 with one more peer: one element to add.
func v2() *ruleset.Ruleset {
	rs := v1()
	s := rs.Set("peers")
	s.Elements = append(s.Elements, peer("10.0.0.3"))
	return normalized(rs)
}

// v3 is v2 with one peer fewer and a new set and rule.
func v3() *ruleset.Ruleset {
	rs := v2()
	rs.Set("peers").Elements = rs.Set("peers").Elements[1:]
	rs.Sets = append(rs.Sets, &ruleset.Set{Name: "more", Key: []ruleset.KeyType{ruleset.KeyIPv4Addr}, Elements: []ruleset.Element{peer("10.0.1.1")}})
	pol := rs.Chain("pol")
	pol.Rules = append(pol.Rules, ruleset.Rule{Matches: []ruleset.Match{{Kind: ruleset.MatchLookup, Fields: []ruleset.Field{ruleset.FieldIPv4Saddr}, Set: "more"}},
		Verdict: ruleset.Accept, Comment: "allow more"})
	return normalized(rs)
}

func TestPlanner(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name string
		run  func(t *testing.T, k *kernel)
	}{
		{"first apply replaces the table", func(t *testing.T, k *kernel) {
			if res := k.apply(t, v1(), dataplane.ApplyOptions{}); !res.Full || res.Patched || res.Generation == 0 {
				t.Errorf("first apply: %+v, want a full replace with a generation", res)
			}
		}},
		{"the caller's changes are sent as they are", func(t *testing.T, k *kernel) {
			gen := k.apply(t, v1(), dataplane.ApplyOptions{}).Generation
			ch := changes(v1(), v2())
			res := k.apply(t, v2(), dataplane.ApplyOptions{Changes: ch, BaseGeneration: gen})
			if !res.Patched || res.Full || res.Ops != 1 {
				t.Errorf("patch: %+v, want the caller's 1 op", res)
			}
			ch = changes(v2(), v3())
			res = k.apply(t, v3(), dataplane.ApplyOptions{Changes: ch, BaseGeneration: res.Generation})
			if !res.Patched || res.Ops != ch.Ops() {
				t.Errorf("structural patch: %+v, want the caller's %d ops", res, ch.Ops())
			}
		}},
		{"without changes the planner diffs", func(t *testing.T, k *kernel) {
			k.apply(t, v1(), dataplane.ApplyOptions{})
			res := k.apply(t, v3(), dataplane.ApplyOptions{})
			if res.Full || res.Patched || res.Ops != changes(v1(), v3()).Ops() {
				t.Errorf("diff: %+v, want %d ops", res, changes(v1(), v3()).Ops())
			}
			if res := k.apply(t, v3(), dataplane.ApplyOptions{}); res.Ops != 0 || res.Full {
				t.Errorf("unchanged: %+v, want nothing sent", res)
			}
			if res := k.apply(t, v3(), dataplane.ApplyOptions{Full: true}); !res.Full {
				t.Errorf("Full: %+v", res)
			}
		}},
		{"read-back finds drift and repairs it", func(t *testing.T, k *kernel) {
			k.apply(t, v2(), dataplane.ApplyOptions{})
			if res := k.apply(t, v2(), dataplane.ApplyOptions{ReadBack: true}); res.Drift || res.Ops != 0 {
				t.Errorf("read-back of an intact table: %+v", res)
			}
			// An element removed: found with or without (empty) changes, repaired by
			// one element.
			dropPeer := func(rs *ruleset.Ruleset) *ruleset.Ruleset {
				rs.Set("peers").Elements = rs.Set("peers").Elements[1:]
				return rs
			}
			k.tamper(dropPeer)
			res := k.apply(t, v2(), dataplane.ApplyOptions{ReadBack: true, Changes: changes(v2(), v2()), BaseGeneration: k.lastGen})
			if !res.Drift || res.Full || res.Patched || res.Ops != 1 {
				t.Errorf("read-back with trusted empty changes: %+v, want drift repaired by 1 op", res)
			}
			k.tamper(dropPeer)
			if res := k.apply(t, v2(), dataplane.ApplyOptions{ReadBack: true}); !res.Drift || res.Full || res.Ops != 1 {
				t.Errorf("read-back: %+v, want drift repaired by 1 op", res)
			}
			// Changes are not sent blindly on a read-back: they would delete a missing
			// element.
			k.tamper(func(rs *ruleset.Ruleset) *ruleset.Ruleset {
				rs.Set("peers").Elements = rs.Set("peers").Elements[:2]
				return rs
			})
			if res := k.apply(t, v1(), dataplane.ApplyOptions{ReadBack: true, Changes: changes(v2(), v1()), BaseGeneration: k.lastGen}); !res.Drift || res.Patched || res.Ops != 0 {
				t.Errorf("read-back with changes the kernel already has: %+v, want drift and nothing to send", res)
			}
			// The table deleted: replaced.
			k.tamper(func(*ruleset.Ruleset) *ruleset.Ruleset { return nil })
			if res := k.apply(t, v1(), dataplane.ApplyOptions{ReadBack: true}); !res.Drift || !res.Full {
				t.Errorf("read-back of a deleted table: %+v, want drift and a full replace", res)
			}
		}},
		{"a failed apply resets: the next is full", func(t *testing.T, k *kernel) {
			gen := k.apply(t, v2(), dataplane.ApplyOptions{}).Generation
			// Someone removed the element the caller's changes delete: the kernel
			// refuses the transaction, and keeps its table as it was.
			var tampered *ruleset.Ruleset
			k.tamper(func(rs *ruleset.Ruleset) *ruleset.Ruleset {
				rs.Set("peers").Elements = rs.Set("peers").Elements[1:]
				tampered = rs.Clone()
				return rs
			})
			res, err := k.dp.Apply(ctx, v3(), dataplane.ApplyOptions{Changes: changes(v2(), v3()), BaseGeneration: gen})
			if err == nil {
				t.Fatalf("changes deleting a missing element: %+v, want an error", res)
			}
			if res.Generation != 0 {
				t.Errorf("failed apply returned generation %d", res.Generation)
			}
			t.Logf("refused: %v", err)
			k.requireTable(t, tampered)
			// The planner no longer knows what the kernel holds: the same generation
			// is not trusted, and the table is replaced.
			res = k.apply(t, v3(), dataplane.ApplyOptions{Changes: changes(v2(), v3()), BaseGeneration: gen})
			if !res.Full || res.Patched {
				t.Errorf("apply after a failure: %+v, want a full replace", res)
			}
			// And an invalid ruleset, refused before the kernel, resets too.
			bad := v3()
			bad.Chain("pol").Rules[0].Verdict = ruleset.Jump("nowhere")
			if _, err := k.dp.Apply(ctx, bad, dataplane.ApplyOptions{}); err == nil {
				t.Fatal("invalid ruleset applied")
			}
			k.requireTable(t, v3())
			if res := k.apply(t, v3(), dataplane.ApplyOptions{}); !res.Full {
				t.Errorf("apply after a refused ruleset: %+v, want a full replace", res)
			}
		}},
		{"a stale generation is not trusted", func(t *testing.T, k *kernel) {
			g1 := k.apply(t, v1(), dataplane.ApplyOptions{}).Generation
			k.apply(t, v2(), dataplane.ApplyOptions{Changes: changes(v1(), v2()), BaseGeneration: g1})
			// Changes from v1, named by its generation, while the kernel holds v2: sent
			// as they are they would add an element that exists and miss one. The
			// planner diffs instead.
			res := k.apply(t, v3(), dataplane.ApplyOptions{Changes: changes(v1(), v3()), BaseGeneration: g1})
			if res.Patched || res.Ops != changes(v2(), v3()).Ops() {
				t.Errorf("stale generation: %+v, want the planner's diff of %d ops", res, changes(v2(), v3()).Ops())
			}
			// No generation names no Apply.
			if res := k.apply(t, v1(), dataplane.ApplyOptions{Changes: changes(v3(), v1())}); res.Patched {
				t.Errorf("zero generation: %+v, want the planner's diff", res)
			}
		}},
		{"Delete then Apply", func(t *testing.T, k *kernel) {
			if err := k.dp.Delete(ctx); err != nil {
				t.Fatalf("Delete of a missing table: %v", err)
			}
			gen := k.apply(t, v1(), dataplane.ApplyOptions{}).Generation
			if err := k.dp.Delete(ctx); err != nil {
				t.Fatalf("Delete: %v", err)
			}
			if rs, err := k.dp.Read(ctx); err != nil || rs != nil {
				t.Fatalf("Read after Delete: %v, %v", rs, err)
			}
			res := k.apply(t, v2(), dataplane.ApplyOptions{Changes: changes(v1(), v2()), BaseGeneration: gen})
			if !res.Full || res.Patched {
				t.Errorf("apply after Delete: %+v, want a full replace", res)
			}
		}},
		{"counters follow the rules of the table", func(t *testing.T, k *kernel) {
			if got, err := k.dp.Counters(ctx); err != nil || len(got) != 0 {
				t.Fatalf("Counters without a table: %v, %v", got, err)
			}
			k.apply(t, v3(), dataplane.ApplyOptions{})
			got, err := k.dp.Counters(ctx)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string][]dataplane.RuleCounter{
				"forward": {{Comment: "to pol"}},
				"pol":     {{Counted: true, Comment: "allow peers"}, {Comment: "allow more"}},
			}
			if len(got) != len(want) {
				t.Errorf("Counters: %v, want %v", got, want)
			}
			for chain, w := range want {
				if g := got[chain]; len(g) != len(w) || !equalCounters(g, w) {
					t.Errorf("Counters of chain %s: %+v, want %+v", chain, g, w)
				}
			}
		}},
	}
	for name, newKernel := range backends {
		t.Run(name, func(t *testing.T) {
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) { c.run(t, newKernel(t)) })
			}
		})
	}
}

func equalCounters(a, b []dataplane.RuleCounter) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// The fake's counters are what a test sets, and restart with the rules, as the
// kernel's do.
func TestFakeCounters(t *testing.T) {
	ctx := context.Background()
	d := fake.New()
	if _, err := d.Apply(ctx, v2(), dataplane.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := d.SetCounter("forward", 0, 1, 1); err == nil {
		t.Error("SetCounter on a rule without a counter succeeded")
	}
	if err := d.SetCounter("pol", 0, 7, 700); err != nil {
		t.Fatal(err)
	}
	count := func() dataplane.RuleCounter {
		t.Helper()
		got, err := d.Counters(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return got["pol"][0]
	}
	if got := count(); got.Packets != 7 || got.Bytes != 700 || !got.Counted {
		t.Errorf("counter: %+v, want 7 packets, 700 bytes", got)
	}
	// An element change keeps the rule, and its counter.
	if _, err := d.Apply(ctx, v1(), dataplane.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := count(); got.Packets != 7 {
		t.Errorf("counter after an element change: %+v, want it kept", got)
	}
	// A rewrite of the chain restarts it.
	if _, err := d.Apply(ctx, v3(), dataplane.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := count(); got.Packets != 0 || got.Bytes != 0 {
		t.Errorf("counter after the chain was rewritten: %+v, want 0", got)
	}
}

// An injected failure is the kernel refusing the next transaction.
func TestFakeFailNextApply(t *testing.T) {
	ctx := context.Background()
	d := fake.New()
	injected := errors.New("injected")
	d.FailNextApply(injected)
	if _, err := d.Apply(ctx, v1(), dataplane.ApplyOptions{}); !errors.Is(err, injected) {
		t.Fatalf("Apply: %v, want the injected failure", err)
	}
	if d.Table() != nil {
		t.Fatal("a refused transaction created the table")
	}
	res, err := d.Apply(ctx, v1(), dataplane.ApplyOptions{})
	if err != nil || !res.Full {
		t.Fatalf("Apply after the failure: %+v, %v", res, err)
	}
	if applies, full, ops := d.Counts(); applies != 1 || full != 1 || ops != res.Ops {
		t.Errorf("Counts: %d applies, %d full, %d ops; want 1, 1, %d", applies, full, ops, res.Ops)
	}
}
