package compiler

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
	"github.com/nftpolicy/nftpolicy/pkg/tracer"
)

// TestOwners: the path of a packet reads back, through Owners alone, as the policies
// that isolate the destination, the policy rule that allowed the packet and the
// isolation drop — with namespace and name whole at the API's length limits (63 and
// 253 characters), where names and comments are cut short — and each set names the
// policy rules that look it up.
func TestOwners(t *testing.T) {
	ns, name := strings.Repeat("n", 63), strings.Repeat("p", 253)
	long := ruleset.PolicyRef{Namespace: ns, Name: name}
	other := ruleset.PolicyRef{Namespace: ns, Name: "other"}
	c := newCluster(t)
	c.ns(ns, nil).ns("client", nil)
	c.pod(ns, "db", "n1", "10.1.0.1", m("app", "db"))
	c.pod("client", "web", "n2", "10.1.0.2", m("app", "web"))
	c.pod("client", "batch", "n2", "10.1.0.3", m("app", "batch"))
	c.policy(ingress(netpol(ns, name, m("app", "db")),
		withPorts(from(nsSel(m(NamespaceNameLabel, "client"))), numPort(TCP, 9999)),
		withPorts(from(nsSel(m(NamespaceNameLabel, "client"))), numPort(TCP, 5432))))
	c.policy(types(netpol(ns, "other", m("app", "db")), networkingv1.PolicyTypeIngress))
	rs := c.compile("n1").Ruleset

	for _, tc := range []struct {
		dport   uint16
		allowed bool
		want    string
	}{
		{5432, true, fmt.Sprintf("isolated by [%s %s]; allow %s ingress rule 1", other, long, long)},
		{80, false, fmt.Sprintf("isolated by [%s %s]; isolation-drop", other, long)},
	} {
		tr := tracer.Trace(rs, tracer.Packet{Src: c.find("client/web").IPs[0], Dst: c.find(ns + "/db").IPs[0], Proto: ruleset.ProtoTCP, DPort: tc.dport})
		if tr.Allowed() != tc.allowed {
			t.Fatalf("port %d: allowed=%v, want %v: %v", tc.dport, tr.Allowed(), tc.allowed, tr.Steps)
		}
		var got []string
		for _, st := range tr.Steps {
			co, ro := rs.Owners.Chain(st.Chain), ruleset.RuleOwner{}
			if st.Rule >= 0 {
				ro, _ = rs.Owners.Rule(st.Chain, st.Rule)
			}
			switch {
			case ro.Role == ruleset.RoleDispatch:
				got = append(got, fmt.Sprintf("isolated by %v", rs.Owners.Chain(strings.TrimPrefix(st.Verdict, "jump ")).Policies))
			case ro.Role == ruleset.RoleAllow:
				got = append(got, fmt.Sprintf("allow %s %s rule %d", ro.Policy, co.Direction, ro.Rule))
			case ro.Role == ruleset.RoleIsolationDrop:
				got = append(got, string(ro.Role))
			}
		}
		if s := strings.Join(got, "; "); s != tc.want {
			t.Errorf("port %d: path reads\n %s\nwant\n %s", tc.dport, s, tc.want)
		}
	}

	var ports []string
	for _, s := range rs.Sets {
		if so := rs.Owners.Sets[s.Name]; (so.Role == ruleset.RolePorts || so.Role == ruleset.RolePodPeers) && !strings.HasSuffix(s.Name, "-v6") {
			ports = append(ports, fmt.Sprintf("%s %v", so.Role, so.Rules))
		}
	}
	// Both rules share the peer set (of each family); each has its own port set.
	want := []string{
		fmt.Sprintf("%s [{%v ingress 0} {%v ingress 1}]", ruleset.RolePodPeers, long, long),
		fmt.Sprintf("%s [{%v ingress 0}]", ruleset.RolePorts, long),
		fmt.Sprintf("%s [{%v ingress 1}]", ruleset.RolePorts, long),
	}
	slices.Sort(ports)
	slices.Sort(want)
	if !slices.Equal(ports, want) {
		t.Errorf("set owners\n %q\nwant\n %q", ports, want)
	}
}
