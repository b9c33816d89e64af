package lab

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestMatrixRender(t *testing.T) {
	names := []string{"a", "b", "c"}
	m := NewMatrix(names, names, true).DenyTo("b").Allow("a", "b").DenyFrom("c").AllowSelf()
	m.Title = "tcp/80 IPv4"
	// Column b is denied except a->b and b->b (AllowSelf); row c is
	// denied except c->c.
	want := "" +
		"tcp/80 IPv4  a  b  c\n" +
		"a            .  .  .\n" +
		"b            .  .  .\n" +
		"c            X  X  .\n"
	if got := m.String(); got != want {
		t.Errorf("render:\n%s\nwant:\n%s", got, want)
	}
	if allowed, ok := m.Get("c", "b"); allowed || !ok {
		t.Errorf("c->b = %v,%v; want denied", allowed, ok)
	}
	if _, ok := m.Get("c", "zz"); ok {
		t.Error("unknown cell reported present")
	}
}

func TestMatrixDiff(t *testing.T) {
	pods := []*Pod{{Name: "a"}, {Name: "b"}}
	want := NewMatrix(PodNames(pods), PodNames(pods), true).Deny("a", "b")
	if d := Diff(want, want.Clone()); d != "" {
		t.Errorf("diff of clone: %s", d)
	}

	cases := []Case{
		{FromName: "a", ToName: "a"}, {FromName: "a", ToName: "b"},
		{FromName: "b", ToName: "a"}, {FromName: "b", ToName: "b"},
	}
	results := []ProbeResult{
		{OK: true}, {OK: true},
		{Err: errors.New("i/o timeout")}, {OK: true},
	}
	got := MatrixFromResults("udp/81 IPv6", cases, results)
	d := Diff(want, got)
	for _, s := range []string{
		"udp/81 IPv6: 2 of 4 cells differ",
		"a -> b: expected denied (X), got allowed (.)",
		"b -> a: expected allowed (.), got denied (X) (i/o timeout)",
		"expected:\n", "actual:\n",
	} {
		if !strings.Contains(d, s) {
			t.Errorf("diff lacks %q:\n%s", s, d)
		}
	}
	if want.Equal(got) {
		t.Error("Equal reports differing matrices equal")
	}

	// Missing rows/columns are reported, not ignored.
	bigger := NewMatrix([]string{"a", "b", "c"}, []string{"a", "b"}, true).Deny("a", "b")
	if d := Diff(bigger, want); !strings.Contains(d, "c -> a: expected allowed (.), got missing (?)") {
		t.Errorf("missing row not reported:\n%s", d)
	}
}

func TestMatrixUnknownNamePanics(t *testing.T) {
	defer func() {
		if r := recover(); r == nil || !strings.Contains(r.(string), `unknown column (to) "x"`) {
			t.Errorf("recovered %v", r)
		}
	}()
	NewMatrix([]string{"a"}, []string{"a"}, true).DenyTo("x")
}

func TestHostVethName(t *testing.T) {
	n := hostVethName("npt-abcd-some-very-long-pod-name-in-namespace")
	if len(n) > 15 || !strings.HasPrefix(n, "v") {
		t.Errorf("host veth name %q", n)
	}
	if (&Pod{IPv4: netip.MustParseAddr("10.244.1.2")}).AddrPort(IPv4, 80).String() != "10.244.1.2:80" {
		t.Error("AddrPort")
	}
}
