package npeval

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/pkg/model"
)

// Each case is checked by hand against the ClusterNetworkPolicy API's types and doc
// comments (sigs.k8s.io/network-policy-api v0.3.0, apis/v1beta1); the name of a check
// says what it exercises.

const (
	accept = cnp.ClusterNetworkPolicyRuleActionAccept
	deny   = cnp.ClusterNetworkPolicyRuleActionDeny
	pass   = cnp.ClusterNetworkPolicyRuleActionPass
	admin  = cnp.AdminTier
	basel  = cnp.BaselineTier
)

// Addresses of cbase.
const (
	web6, cli6   = "fd00::1", "fd00:1::1"
	hostIP       = "192.168.0.1" // node n1, and the hostNetwork pod a/host
	n1v6, n2     = "fd00:ff::1", "192.168.0.2"
	ext6         = "2001:db8::9"
	doneIP, noIP = "10.0.0.9", ""
)

// cbase: base() with dual-stack a/web (http on TCP 8080 and UDP 5353, a second http on
// TCP 9090 that the first hides) and b/cli, a hostNetwork pod a/host (app=web) on node
// n1, and nodes n1 (role=worker: 192.168.0.1, fd00:ff::1) and n2 (role=control:
// 192.168.0.2).
func cbase() Cluster {
	cl := base()
	w := cl.Pods[0]
	w.IPs = append(w.IPs, netip.MustParseAddr(web6))
	w.Ports = []model.NamedPort{
		{Name: "http", Protocol: corev1.ProtocolTCP, Port: 8080},
		{Name: "http", Protocol: corev1.ProtocolUDP, Port: 5353},
		{Name: "http", Protocol: corev1.ProtocolTCP, Port: 9090},
	}
	cl.Pods[2].IPs = append(cl.Pods[2].IPs, netip.MustParseAddr(cli6))
	host := pod("a", "host", hostIP, map[string]string{"app": "web"})
	host.HostNetwork = true
	host.NodeName = "n1"
	cl.Pods = append(cl.Pods, host)
	cl.Nodes = []*model.Node{
		{Name: "n1", Labels: map[string]string{"role": "worker"}, Addrs: []netip.Addr{netip.MustParseAddr(hostIP), netip.MustParseAddr(n1v6)}},
		{Name: "n2", Labels: map[string]string{"role": "control"}, Addrs: []netip.Addr{netip.MustParseAddr(n2)}},
	}
	return cl
}

func cpol(name string, tier cnp.Tier, prio int32, subj cnp.ClusterNetworkPolicySubject) *cnp.ClusterNetworkPolicy {
	return &cnp.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: cnp.ClusterNetworkPolicySpec{Tier: tier, Priority: prio, Subject: subj}}
}

// Subjects.
func nsSubj(l map[string]string) cnp.ClusterNetworkPolicySubject {
	return cnp.ClusterNetworkPolicySubject{Namespaces: sel(l)}
}

func podSubj(ns, p map[string]string) cnp.ClusterNetworkPolicySubject {
	return cnp.ClusterNetworkPolicySubject{Pods: &cnp.NamespacedPod{NamespaceSelector: *sel(ns), PodSelector: *sel(p)}}
}

// Peers, as egress peers (ingress rules take their namespaces and pods).
type peer = cnp.ClusterNetworkPolicyEgressPeer

func nsPeer(l map[string]string) peer { return peer{Namespaces: sel(l)} }
func podPeer(ns, p map[string]string) peer {
	return peer{Pods: &cnp.NamespacedPod{NamespaceSelector: *sel(ns), PodSelector: *sel(p)}}
}
func netPeer(cidrs ...string) peer {
	out := peer{Networks: []cnp.CIDR{}}
	for _, c := range cidrs {
		out.Networks = append(out.Networks, cnp.CIDR(c))
	}
	return out
}
func nodePeer(l map[string]string) peer { return peer{Nodes: sel(l)} }

var all = map[string]string{} // sel(all) is the empty selector: everything

// Protocols.
type proto = cnp.ClusterNetworkPolicyProtocol

func tcp(n int32) proto {
	return proto{TCP: &cnp.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnp.Port{Number: n}}}
}
func udp(n int32) proto {
	return proto{UDP: &cnp.ClusterNetworkPolicyProtocolUDP{DestinationPort: &cnp.Port{Number: n}}}
}
func sctp(n int32) proto {
	return proto{SCTP: &cnp.ClusterNetworkPolicyProtocolSCTP{DestinationPort: &cnp.Port{Number: n}}}
}
func tcpRange(from, to int32) proto {
	return proto{TCP: &cnp.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnp.Port{Range: &cnp.PortRange{Start: from, End: to}}}}
}
func named(name string) proto { return proto{DestinationNamedPort: name} }

// Rules.
func in(a cnp.ClusterNetworkPolicyRuleAction, peers []peer, protos ...proto) cnp.ClusterNetworkPolicyIngressRule {
	r := cnp.ClusterNetworkPolicyIngressRule{Action: a, Protocols: protos}
	if peers != nil {
		r.From = []cnp.ClusterNetworkPolicyIngressPeer{}
	}
	for _, p := range peers {
		r.From = append(r.From, cnp.ClusterNetworkPolicyIngressPeer{Namespaces: p.Namespaces, Pods: p.Pods})
	}
	return r
}

func out(a cnp.ClusterNetworkPolicyRuleAction, peers []peer, protos ...proto) cnp.ClusterNetworkPolicyEgressRule {
	return cnp.ClusterNetworkPolicyEgressRule{Action: a, To: peers, Protocols: protos}
}

func peers(ps ...peer) []peer { return ps }

func withIn(p *cnp.ClusterNetworkPolicy, rs ...cnp.ClusterNetworkPolicyIngressRule) *cnp.ClusterNetworkPolicy {
	p.Spec.Ingress = append(p.Spec.Ingress, rs...)
	return p
}

func withOut(p *cnp.ClusterNetworkPolicy, rs ...cnp.ClusterNetworkPolicyEgressRule) *cnp.ClusterNetworkPolicy {
	p.Spec.Egress = append(p.Spec.Egress, rs...)
	return p
}

func pconn(proto corev1.Protocol, src, dst string, port uint16) Conn {
	c := conn(src, dst, port)
	c.Proto = proto
	return c
}

// sum is a compact form of a decision: "-" when the end is not a participating pod,
// otherwise the Pass rules ("pass:Tier/policy/rule ") then "default" or
// "Tier/policy/rule/Action", with "!" when the rule failed closed.
func sum(d Decision) string {
	if d.Pod == nil {
		return "-"
	}
	var b strings.Builder
	for _, p := range d.Passes {
		fmt.Fprintf(&b, "pass:%s/%s/%d ", p.Tier, p.Policy, p.Rule)
	}
	if d.Tier == TierDefault {
		b.WriteString("default")
	} else {
		fmt.Fprintf(&b, "%s/%s/%d/%s", d.Tier, d.Policy, d.Rule, d.Action)
	}
	if d.FailClosed {
		b.WriteString("!")
	}
	return b.String()
}

// vcheck is a connection, whether it is allowed, and (when not "") the summaries of
// the source's egress and the destination's ingress decisions.
type vcheck struct {
	name    string
	c       Conn
	want    bool
	eg, ing string
}

func runV(t *testing.T, cl Cluster, checks ...vcheck) {
	t.Helper()
	e := New(cl)
	for _, ch := range checks {
		v := e.Verdict(ch.c)
		if v.Allowed != ch.want {
			t.Errorf("%s: %s -> %s %s/%d: allowed=%v, want %v\n  %s", ch.name, ch.c.Src, ch.c.Dst, ch.c.Proto, ch.c.Port, v.Allowed, ch.want, v)
		}
		if got := e.Allowed(ch.c); got != v.Allowed {
			t.Errorf("%s: Allowed=%v but Verdict.Allowed=%v", ch.name, got, v.Allowed)
		}
		if v.Allowed != (v.Egress.Allowed && v.Ingress.Allowed) {
			t.Errorf("%s: verdict %v is not the conjunction of its ends", ch.name, v)
		}
		if ch.eg != "" && sum(v.Egress) != ch.eg {
			t.Errorf("%s: egress decision %q, want %q\n  %s", ch.name, sum(v.Egress), ch.eg, v)
		}
		if ch.ing != "" && sum(v.Ingress) != ch.ing {
			t.Errorf("%s: ingress decision %q, want %q\n  %s", ch.name, sum(v.Ingress), ch.ing, v)
		}
	}
}

var (
	appWeb = map[string]string{"app": "web"}
	appDB  = map[string]string{"app": "db"}
	appCli = map[string]string{"app": "cli"}
	teamX  = map[string]string{"team": "x"}
	teamY  = map[string]string{"team": "y"}
)

func TestCNPNoPolicies(t *testing.T) {
	runV(t, cbase(),
		vcheck{"pods are open by default", conn(cli, web, 80), true, "default", "default"},
		vcheck{"an outside address has no policy", conn(ext, web, 80), true, "-", "default"},
		vcheck{"a hostNetwork pod has no policy", conn(web, hostIP, 80), true, "default", "-"})
}

func TestCNPAdminTier(t *testing.T) {
	cl := cbase()
	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{
		withIn(cpol("deny-y", admin, 10, podSubj(all, appWeb)), in(deny, peers(nsPeer(teamY)))),
	}
	runV(t, cl,
		vcheck{"Admin Deny drops the selected traffic", conn(cli, web, 80), false, "default", "Admin/deny-y/0/Deny"},
		vcheck{"other peers are not implicitly isolated", conn(db, web, 80), true, "", "default"},
		vcheck{"other subjects untouched", conn(cli, db, 80), true, "", "default"},
		vcheck{"an ingress-only policy does not affect egress", conn(web, cli, 80), true, "default", "default"})

	// NetworkPolicy allows cli; the Admin Deny wins over it.
	np := pol("a", "allow-cli", appWeb)
	np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel(teamY)}}}}
	cl.Policies = []*networkingv1.NetworkPolicy{np}
	runV(t, cl,
		vcheck{"Admin Deny cannot be overridden by NetworkPolicy", conn(cli, web, 80), false, "", "Admin/deny-y/0/Deny"},
		vcheck{"NetworkPolicy decides what Admin leaves", conn(db, web, 80), false, "", "NetworkPolicy//-1/Deny"},
		vcheck{"NetworkPolicy selects only web", conn(cli, db, 80), true, "", "default"})

	// Admin Accept over a NetworkPolicy deny-all.
	cl.Policies = []*networkingv1.NetworkPolicy{pol("a", "deny-all", nil)}
	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{
		withIn(cpol("accept-y", admin, 10, nsSubj(teamX)), in(accept, peers(nsPeer(teamY)))),
	}
	runV(t, cl,
		vcheck{"Admin Accept overrides NetworkPolicy isolation", conn(cli, web, 80), true, "", "Admin/accept-y/0/Accept"},
		vcheck{"the rest is NetworkPolicy's", conn(db, web, 80), false, "", "NetworkPolicy//-1/Deny"},
		vcheck{"the subject is every pod of the namespace", conn(cli, db, 80), true, "", "Admin/accept-y/0/Accept"})

	// Admin Pass delegates to NetworkPolicy, skipping later Admin rules.
	np = pol("a", "allow-db", appWeb)
	np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{
		{Ports: []networkingv1.NetworkPolicyPort{tcpPort(1)}},
		{From: []networkingv1.NetworkPolicyPeer{{PodSelector: sel(appDB)}}},
	}
	cl.Policies = []*networkingv1.NetworkPolicy{np}
	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{
		withIn(cpol("pass-a", admin, 10, nsSubj(teamX)), in(pass, peers(nsPeer(teamX))), in(deny, peers(nsPeer(all)))),
		withIn(cpol("deny-all", admin, 20, nsSubj(teamX)), in(deny, peers(nsPeer(all)))),
	}
	runV(t, cl,
		vcheck{"Pass then NetworkPolicy allows", conn(db, web, 80), true, "", "pass:Admin/pass-a/0 NetworkPolicy/a/allow-db/1/Accept"},
		vcheck{"Pass, no NetworkPolicy, no Baseline: default", conn(web, db, 80), true, "", "pass:Admin/pass-a/0 default"},
		vcheck{"not passed: the next rule of the policy", conn(cli, web, 80), false, "", "Admin/pass-a/1/Deny"},
		vcheck{"Pass skips the rest of the Admin tier", conn(web, db, 81), true, "", "pass:Admin/pass-a/0 default"})
	np.Spec.PodSelector = *sel(appDB)
	np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: sel(appCli)}}}}
	runV(t, cl, vcheck{"Pass then NetworkPolicy denies", conn(web, db, 80), false, "", "pass:Admin/pass-a/0 NetworkPolicy//-1/Deny"})

	// Egress in the Admin tier.
	cl.Policies = nil
	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{
		withOut(cpol("egress", admin, 0, podSubj(teamX, appDB)),
			out(accept, peers(podPeer(teamX, appWeb))), out(pass, peers(nsPeer(teamY))), out(deny, peers(netPeer("0.0.0.0/0")))),
		withOut(cpol("after", admin, 1, podSubj(teamX, appDB)), out(deny, peers(nsPeer(all)))),
		withOut(cpol("base", basel, 0, podSubj(teamX, appDB)), out(accept, peers(nsPeer(all)))),
	}
	runV(t, cl,
		vcheck{"egress Accept", conn(db, web, 80), true, "Admin/egress/0/Accept", "default"},
		vcheck{"egress Pass reaches Baseline", conn(db, cli, 80), true, "pass:Admin/egress/1 Baseline/base/0/Accept", "default"},
		vcheck{"egress Deny by networks", conn(db, ext, 80), false, "Admin/egress/2/Deny", "-"},
		vcheck{"the subject's ingress is untouched", conn(ext, db, 80), true, "-", "default"})
}

func TestCNPBaselineTier(t *testing.T) {
	cl := cbase()
	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{
		withIn(cpol("default-deny", basel, 100, nsSubj(teamX)), in(deny, peers(nsPeer(all)))),
		withIn(cpol("same-ns", basel, 10, nsSubj(teamX)), in(accept, peers(nsPeer(teamX)))),
	}
	runV(t, cl,
		vcheck{"Baseline Accept", conn(db, web, 80), true, "", "Baseline/same-ns/0/Accept"},
		vcheck{"Baseline Deny", conn(cli, web, 80), false, "", "Baseline/default-deny/0/Deny"},
		vcheck{"Baseline pod peers never match outside addresses", conn(ext, web, 80), true, "-", "default"})

	// A NetworkPolicy that isolates the pod overrides the Baseline tier both ways.
	np := pol("a", "np", appWeb)
	np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel(teamY)}}}}
	cl.Policies = []*networkingv1.NetworkPolicy{np}
	runV(t, cl,
		vcheck{"NetworkPolicy allows over Baseline Deny", conn(cli, web, 80), true, "", "NetworkPolicy/a/np/0/Accept"},
		vcheck{"NetworkPolicy denies over Baseline Accept", conn(db, web, 80), false, "", "NetworkPolicy//-1/Deny"},
		vcheck{"a pod the NetworkPolicy does not select", conn(cli, db, 80), false, "", "Baseline/default-deny/0/Deny"})

	// Baseline Pass skips the rest of the Baseline tier: the default allows.
	cl.Policies = nil
	cl.ClusterPolicies = append(cl.ClusterPolicies,
		withIn(cpol("pass-y", basel, 5, nsSubj(teamX)), in(pass, peers(nsPeer(teamY)))))
	runV(t, cl,
		vcheck{"Baseline Pass: default allow", conn(cli, web, 80), true, "", "pass:Baseline/pass-y/0 default"},
		vcheck{"not passed", conn(db, web, 80), true, "", "Baseline/same-ns/0/Accept"})

	// Admin Pass then Baseline Pass: both recorded, default allow.
	cl.ClusterPolicies = append(cl.ClusterPolicies,
		withIn(cpol("admin-pass", admin, 5, nsSubj(teamX)), in(pass, peers(nsPeer(all)))))
	runV(t, cl,
		vcheck{"Pass in both tiers", conn(cli, web, 80), true, "", "pass:Admin/admin-pass/0 pass:Baseline/pass-y/0 default"},
		vcheck{"Admin Pass then Baseline decides", conn(db, web, 80), true, "", "pass:Admin/admin-pass/0 Baseline/same-ns/0/Accept"})
}

func TestCNPPriorityAndRuleOrder(t *testing.T) {
	cl := cbase()
	mk := func(name string, prio int32, a cnp.ClusterNetworkPolicyRuleAction) *cnp.ClusterNetworkPolicy {
		return withIn(cpol(name, admin, prio, podSubj(all, appWeb)), in(a, peers(nsPeer(all))))
	}
	for _, order := range []bool{false, true} {
		cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{mk("z-accept", 1, accept), mk("a-deny", 2, deny)}
		if order {
			slices.Reverse(cl.ClusterPolicies)
		}
		runV(t, cl, vcheck{"lower priority value first, whatever the input order", conn(db, web, 80), true, "", "Admin/z-accept/0/Accept"})
	}
	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{mk("p1000", 1000, accept), mk("p0", 0, deny)}
	runV(t, cl, vcheck{"0 before 1000", conn(db, web, 80), false, "", "Admin/p0/0/Deny"})

	// Equal priorities: the first name wins (nftpolicy's tie-break).
	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{mk("b-accept", 7, accept), mk("a-deny", 7, deny)}
	runV(t, cl, vcheck{"tie: a-deny before b-accept", conn(db, web, 80), false, "", "Admin/a-deny/0/Deny"})
	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{mk("a-accept", 7, accept), mk("b-deny", 7, deny)}
	runV(t, cl, vcheck{"tie: a-accept before b-deny", conn(db, web, 80), true, "", "Admin/a-accept/0/Accept"})
	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{mk("b-accept", 7, accept), mk("a-pass", 7, pass), mk("c-deny", 3, deny)}
	runV(t, cl, vcheck{"priority before name", conn(db, web, 80), false, "", "Admin/c-deny/0/Deny"})
	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{
		withIn(cpol("b", basel, 7, nsSubj(all)), in(accept, peers(nsPeer(all)))),
		withIn(cpol("a", basel, 7, nsSubj(all)), in(deny, peers(nsPeer(all)))),
	}
	runV(t, cl, vcheck{"tie in Baseline too", conn(db, web, 80), false, "", "Baseline/a/0/Deny"})

	// Rules in the order written; the first that matches acts.
	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{withIn(cpol("rules", admin, 1, podSubj(all, appWeb)),
		in(deny, peers(nsPeer(teamY)), tcp(22)),
		in(accept, peers(nsPeer(teamY))),
		in(deny, peers(nsPeer(all))),
	)}
	runV(t, cl,
		vcheck{"first rule", conn(cli, web, 22), false, "", "Admin/rules/0/Deny"},
		vcheck{"first rule does not match: second", conn(cli, web, 80), true, "", "Admin/rules/1/Accept"},
		vcheck{"third", conn(db, web, 22), false, "", "Admin/rules/2/Deny"})
}

func TestCNPBothEnds(t *testing.T) {
	cl := cbase()
	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{
		withOut(cpol("db-out", admin, 1, podSubj(all, appDB)), out(accept, peers(nsPeer(all)))),
		withIn(cpol("cli-in", admin, 2, podSubj(all, appCli)), in(deny, peers(nsPeer(teamX)))),
		withOut(cpol("cli-out", admin, 3, podSubj(all, appCli)), out(deny, peers(podPeer(all, appDB)))),
		withIn(cpol("db-in", admin, 4, podSubj(all, appDB)), in(accept, peers(nsPeer(all)))),
	}
	runV(t, cl,
		vcheck{"egress Accept does not bypass the destination's ingress", conn(db, cli, 80), false, "Admin/db-out/0/Accept", "Admin/cli-in/0/Deny"},
		vcheck{"ingress Accept does not bypass the source's egress", conn(cli, db, 80), false, "Admin/cli-out/0/Deny", "Admin/db-in/0/Accept"},
		vcheck{"egress Accept and default ingress", conn(db, web, 80), true, "Admin/db-out/0/Accept", "default"})

	// The egress Accept also overrides the source's own NetworkPolicy egress isolation,
	// but not the destination's.
	eg := pol("a", "db-eg", appDB)
	eg.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	wi := pol("a", "web-in", appWeb)
	cl.Policies = []*networkingv1.NetworkPolicy{eg, wi}
	runV(t, cl,
		vcheck{"Admin Accept over own NetworkPolicy egress", conn(db, cli, 80), false, "Admin/db-out/0/Accept", "Admin/cli-in/0/Deny"},
		vcheck{"destination NetworkPolicy still applies", conn(db, web, 80), false, "Admin/db-out/0/Accept", "NetworkPolicy//-1/Deny"},
		vcheck{"own NetworkPolicy egress where Admin does not match", conn(db, ext, 80), false, "NetworkPolicy//-1/Deny", "-"})
}

func TestCNPSubjects(t *testing.T) {
	cl := cbase()
	denyAll := func(name string, s cnp.ClusterNetworkPolicySubject) *cnp.ClusterNetworkPolicy {
		return withIn(cpol(name, admin, 1, s), in(deny, peers(nsPeer(all))))
	}
	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{denyAll("by-name", nsSubj(map[string]string{NamespaceNameLabel: "b"}))}
	runV(t, cl,
		vcheck{"namespaces subject by the name label", conn(web, cli, 80), false, "", "Admin/by-name/0/Deny"},
		vcheck{"other namespaces", conn(cli, web, 80), true, "", "default"})
	delete(cl.Namespaces, "b")
	runV(t, cl, vcheck{"a namespace missing from the state keeps its name label", conn(web, cli, 80), false, "", "Admin/by-name/0/Deny"})

	cl = cbase()
	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{denyAll("pods", podSubj(teamX, appWeb))}
	runV(t, cl,
		vcheck{"pods subject: namespace and pod selectors", conn(db, web, 80), false, "", "Admin/pods/0/Deny"},
		vcheck{"pod selector alone is not enough", conn(web, db, 80), true, "", "default"})
	cl.Pods = append(cl.Pods, pod("b", "web", "10.0.1.2", appWeb))
	runV(t, cl, vcheck{"namespace selector must match too", conn(web, "10.0.1.2", 80), true, "", "default"})

	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{denyAll("everyone", nsSubj(all))}
	runV(t, cl,
		vcheck{"empty namespaces selector: every pod", conn(web, "10.0.1.2", 80), false, "", "Admin/everyone/0/Deny"},
		vcheck{"hostNetwork pods are never subjects", conn(web, hostIP, 80), true, "", "-"})
	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{denyAll("everyone", podSubj(all, all))}
	runV(t, cl, vcheck{"empty pods selectors: every pod", conn(web, "10.0.1.2", 80), false, "", "Admin/everyone/0/Deny"})
}

func TestCNPIneligiblePods(t *testing.T) {
	cl := cbase()
	done := pod("a", "done", doneIP, appWeb)
	done.Phase = corev1.PodFailed
	cl.Pods = append(cl.Pods, done, pod("a", "noip", noIP, appWeb))
	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{
		withIn(cpol("in", admin, 1, nsSubj(all)), in(deny, peers(nsPeer(all)))),
		withOut(cpol("out", admin, 1, nsSubj(all)), out(deny, peers(nsPeer(all)))),
		withIn(cpol("web-in", admin, 0, podSubj(all, appWeb)), in(accept, peers(podPeer(all, appWeb)))),
	}
	runV(t, cl,
		vcheck{"hostNetwork pod is no subject (ingress)", conn(ext, hostIP, 80), true, "-", "-"},
		vcheck{"hostNetwork pod is no subject (egress)", conn(hostIP, ext, 80), true, "-", "-"},
		vcheck{"hostNetwork pod is no peer (namespaces {})", conn(hostIP, db, 80), true, "-", "default"},
		vcheck{"hostNetwork pod is no peer (app=web)", conn(hostIP, web, 80), true, "-", "default"},
		vcheck{"nor to egress pod peers", conn(db, hostIP, 80), true, "default", "-"},
		vcheck{"a finished pod is neither", conn(doneIP, web, 80), true, "-", "default"},
		vcheck{"a finished pod has no policy", conn(db, doneIP, 80), true, "default", "-"},
		vcheck{"regular pods: denied", conn(db, web, 80), false, "Admin/out/0/Deny", "Admin/in/0/Deny"})
}

func TestCNPPeers(t *testing.T) {
	cl := cbase()
	cl.Pods = append(cl.Pods, pod("a", "other", "10.0.0.4", map[string]string{"app": "other"}))
	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{withIn(cpol("in", admin, 1, podSubj(all, appWeb)),
		in(accept, peers(podPeer(teamY, appDB), podPeer(teamX, appDB))), // pods: namespace AND pod
		in(pass, peers(nsPeer(map[string]string{NamespaceNameLabel: "b"}))),
		in(deny, peers(podPeer(all, all))),
	)}
	runV(t, cl,
		vcheck{"pods peer: both selectors match", conn(db, web, 80), true, "", "Admin/in/0/Accept"},
		vcheck{"namespaces peer by name", conn(cli, web, 80), true, "", "pass:Admin/in/1 default"},
		vcheck{"empty selectors: every pod", conn("10.0.0.4", web, 80), false, "", "Admin/in/2/Deny"},
		vcheck{"pod peers never match outside addresses", conn(ext, web, 80), true, "-", "default"})

	// Egress peers: pods, namespaces, networks (pods included), nodes, domainNames.
	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{withOut(cpol("out", admin, 1, podSubj(all, appDB)),
		out(deny, peers(cnp.ClusterNetworkPolicyEgressPeer{DomainNames: []cnp.DomainName{"example.com"}}, nsPeer(teamY)), tcp(1)),
		out(accept, peers(netPeer("10.0.0.0/31", "203.0.113.0/24"))),
		out(deny, peers(nodePeer(map[string]string{"role": "worker"}))),
		out(accept, peers(nodePeer(all))),
		out(pass, peers(netPeer("10.0.0.0/8"))),
		out(deny, peers(netPeer("0.0.0.0/0", "::/0"))),
	)}
	runV(t, cl,
		vcheck{"domainNames match nothing; the rule's other peer does", conn(db, cli, 1), false, "Admin/out/0/Deny", ""},
		vcheck{"domainNames do not match outside addresses", conn(db, ext, 1), true, "Admin/out/1/Accept", "-"},
		vcheck{"networks match pod addresses", conn(db, web, 80), true, "Admin/out/1/Accept", "default"},
		vcheck{"networks: any CIDR of the list", conn(db, ext, 80), true, "Admin/out/1/Accept", "-"},
		vcheck{"networks match the destination only", conn(db, "10.0.0.3", 80), true, "pass:Admin/out/4 default", "-"},
		vcheck{"nodes: an address of a selected node", conn(db, hostIP, 80), false, "Admin/out/2/Deny", "-"},
		vcheck{"nodes: empty selector, every node", conn(db, n2, 80), true, "Admin/out/3/Accept", "-"},
		vcheck{"nodes do not match pods", conn(db, cli, 80), true, "pass:Admin/out/4 default", "default"},
		vcheck{"outside everything", conn(db, "198.51.100.1", 80), false, "Admin/out/5/Deny", "-"})
	cl.Pods[1].IPs = append(cl.Pods[1].IPs, netip.MustParseAddr("fd00::2"))
	runV(t, cl,
		vcheck{"nodes: every address of a selected node", conn("fd00::2", n1v6, 80), false, "Admin/out/2/Deny", "-"},
		vcheck{"networks ::/0", conn("fd00::2", ext6, 80), false, "Admin/out/5/Deny", "-"},
		vcheck{"IPv6 pod to IPv6 pod", conn("fd00::2", web6, 80), false, "Admin/out/5/Deny", "default"})
	cl.Nodes[0].Labels = nil
	runV(t, cl, vcheck{"a node losing its label leaves the peer", conn(db, hostIP, 80), true, "Admin/out/3/Accept", "-"})
	cl.Nodes = nil
	runV(t, cl, vcheck{"without nodes, node addresses are plain addresses", conn(db, hostIP, 80), false, "Admin/out/5/Deny", "-"})

	// Ingress from a namespace selector on a pod peer that is in another namespace.
	cl = cbase()
	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{withIn(cpol("in", basel, 1, nsSubj(teamY)),
		in(deny, peers(nsPeer(teamX)), named("http")))}
	runV(t, cl, vcheck{"ingress named port on a destination without it", conn(web, cli, 8080), true, "", "default"})
}

func TestCNPProtocols(t *testing.T) {
	cl := cbase()
	anyTCP := proto{TCP: &cnp.ClusterNetworkPolicyProtocolTCP{}}
	anySCTP := proto{SCTP: &cnp.ClusterNetworkPolicyProtocolSCTP{}}
	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{withIn(cpol("in", admin, 1, podSubj(all, appWeb)),
		in(accept, peers(nsPeer(teamY)), tcp(80), udp(53), sctp(9000), tcpRange(1000, 1002), tcpRange(2000, 2000), named("http")),
		in(accept, peers(nsPeer(teamX)), anyTCP, anySCTP),
		in(deny, peers(nsPeer(all))),
	)}
	icmp := pconn(ProtocolICMP, cli, web, 0)
	runV(t, cl,
		vcheck{"tcp number", conn(cli, web, 80), true, "", "Admin/in/0/Accept"},
		vcheck{"protocol must match", pconn(corev1.ProtocolUDP, cli, web, 80), false, "", "Admin/in/2/Deny"},
		vcheck{"udp number", pconn(corev1.ProtocolUDP, cli, web, 53), true, "", "Admin/in/0/Accept"},
		vcheck{"sctp number", pconn(corev1.ProtocolSCTP, cli, web, 9000), true, "", "Admin/in/0/Accept"},
		vcheck{"range start", conn(cli, web, 1000), true, "", "Admin/in/0/Accept"},
		vcheck{"range end is inclusive", conn(cli, web, 1002), true, "", "Admin/in/0/Accept"},
		vcheck{"past the range", conn(cli, web, 1003), false, "", "Admin/in/2/Deny"},
		vcheck{"a one-port range", conn(cli, web, 2000), true, "", "Admin/in/0/Accept"},
		vcheck{"named port, TCP", conn(cli, web, 8080), true, "", "Admin/in/0/Accept"},
		vcheck{"named port, UDP declaration", pconn(corev1.ProtocolUDP, cli, web, 5353), true, "", "Admin/in/0/Accept"},
		vcheck{"named port: protocol of the declaration", pconn(corev1.ProtocolUDP, cli, web, 8080), false, "", "Admin/in/2/Deny"},
		vcheck{"named port: the first declaration for the protocol", conn(cli, web, 9090), false, "", "Admin/in/2/Deny"},
		vcheck{"ICMP matches no protocol entry", icmp, false, "", "Admin/in/2/Deny"},
		vcheck{"tcp without destinationPort: every TCP port", conn(db, web, 65535), true, "", "Admin/in/1/Accept"},
		vcheck{"sctp without destinationPort", pconn(corev1.ProtocolSCTP, db, web, 1), true, "", "Admin/in/1/Accept"},
		vcheck{"but not UDP", pconn(corev1.ProtocolUDP, db, web, 1), false, "", "Admin/in/2/Deny"},
		vcheck{"no protocols: ICMP too", pconn(ProtocolICMP, db, web, 0), false, "", "Admin/in/2/Deny"},
		vcheck{"pod peers never match an outside address, any protocol", pconn("GRE", ext, web, 0), true, "-", "default"})

	// Egress named ports resolve on the destination pod; other destinations match
	// nothing. (The API refuses named ports in a rule with networks or nodes peers;
	// such a rule is evaluated as written, not failed closed.)
	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{withOut(cpol("out", basel, 1, podSubj(all, appDB)),
		out(accept, peers(nsPeer(all), netPeer("0.0.0.0/0")), named("http")),
		out(deny, peers(netPeer("0.0.0.0/0"), nodePeer(all))),
	)}
	runV(t, cl,
		vcheck{"egress named port on the destination pod", conn(db, web, 8080), true, "Baseline/out/0/Accept", "default"},
		vcheck{"UDP declaration", pconn(corev1.ProtocolUDP, db, web, 5353), true, "Baseline/out/0/Accept", "default"},
		vcheck{"a pod without the name", conn(db, cli, 8080), false, "Baseline/out/1/Deny", "default"},
		vcheck{"an outside address has no named ports", conn(db, ext, 8080), false, "Baseline/out/1/Deny", "-"},
		vcheck{"nor a node", conn(db, hostIP, 8080), false, "Baseline/out/1/Deny", "-"},
		vcheck{"ICMP to pods is denied", pconn(ProtocolICMP, db, web, 0), false, "Baseline/out/1/Deny", "default"})
}

func TestCNPFailClosed(t *testing.T) {
	bad := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: "Bogus"}}}
	type badPeer struct {
		name string
		p    peer
		in   bool // also an ingress peer
	}
	for _, bp := range []badPeer{
		{"a peer with no field", peer{}, true},
		{"a peer with two fields", peer{Namespaces: sel(all), Pods: &cnp.NamespacedPod{}}, true},
		{"a namespaces peer with a bad selector", peer{Namespaces: bad}, true},
		{"a pods peer with a bad pod selector", peer{Pods: &cnp.NamespacedPod{PodSelector: *bad}}, true},
		{"a pods peer with a bad namespace selector", peer{Pods: &cnp.NamespacedPod{NamespaceSelector: *bad}}, true},
		{"networks and nodes", peer{Nodes: sel(all), Networks: []cnp.CIDR{"10.0.0.0/8"}}, false},
		{"a nodes peer with a bad selector", peer{Nodes: bad}, false},
		{"an unparsable CIDR", netPeer("10.0.0.0/8", "garbage"), false},
		{"a CIDR with host bits", netPeer("10.0.0.1/24"), false},
		{"a CIDR out of range", netPeer("10.0.0.0/33"), false},
		{"an IPv4-mapped CIDR", netPeer("::ffff:10.0.0.0/120"), false},
		{"empty networks", netPeer(), false},
		{"empty domainNames", peer{DomainNames: []cnp.DomainName{}}, false},
	} {
		isIn := bp.in
		// Accept: the bad peer matches nothing, the rule's other peer still does.
		cl := cbase()
		cl.Policies = []*networkingv1.NetworkPolicy{denyBoth("a"), denyBoth("b")}
		cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{
			withOut(cpol("out", admin, 1, podSubj(all, appDB)), out(accept, peers(bp.p, podPeer(all, appCli)))),
		}
		if isIn {
			cl.ClusterPolicies = append(cl.ClusterPolicies,
				withIn(cpol("in", admin, 1, podSubj(all, appCli)), in(accept, peers(bp.p, podPeer(all, appDB)))))
		}
		runV(t, cl,
			vcheck{"Accept, " + bp.name + ": the other peer", conn(db, cli, 80), isIn, "Admin/out/0/Accept", ""},
			vcheck{"Accept, " + bp.name + ": matches nothing", conn(db, web, 80), false, "NetworkPolicy//-1/Deny", ""},
			vcheck{"Accept, " + bp.name + ": matches nothing outside", conn(db, ext, 80), false, "NetworkPolicy//-1/Deny", "-"})
		// Deny and Pass: the rule denies everything, whatever its other peers.
		for _, a := range []cnp.ClusterNetworkPolicyRuleAction{deny, pass} {
			cl := cbase()
			cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{
				withOut(cpol("out", basel, 1, podSubj(all, appDB)), out(a, peers(podPeer(all, appCli), bp.p), tcp(1))),
			}
			if isIn {
				cl.ClusterPolicies = append(cl.ClusterPolicies,
					withIn(cpol("in", basel, 1, podSubj(all, appCli)), in(a, peers(podPeer(all, appDB), bp.p), tcp(1))))
			}
			name := fmt.Sprintf("%s, %s", a, bp.name)
			runV(t, cl,
				vcheck{name + ": egress deny-all", conn(db, ext, 80), false, "Baseline/out/0/Deny!", "-"},
				vcheck{name + ": egress deny-all (ICMP)", pconn(ProtocolICMP, db, ext, 0), false, "Baseline/out/0/Deny!", "-"},
				vcheck{name + ": other pods untouched", conn(web, ext, 80), true, "default", "-"})
			if isIn {
				runV(t, cl, vcheck{name + ": ingress deny-all", conn(ext, cli, 80), false, "-", "Baseline/in/0/Deny!"})
			}
		}
	}

	// Empty peer lists: an Accept never matches; Deny and Pass deny everything.
	cl := cbase()
	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{
		withIn(cpol("in", admin, 1, podSubj(all, appWeb)), in(accept, nil), in(accept, []peer{}), in(pass, peers())),
		withOut(cpol("out", admin, 1, podSubj(all, appWeb)), out(deny, nil)),
	}
	runV(t, cl,
		vcheck{"Pass with no peers denies", conn(ext, web, 80), false, "-", "Admin/in/2/Deny!"},
		vcheck{"Deny with no peers denies", conn(web, ext, 80), false, "Admin/out/0/Deny!", "-"})

	// Unknown actions deny everything, even with peers that would match nothing.
	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{
		withIn(cpol("in", admin, 1, podSubj(all, appWeb)), in("Allow", peers(podPeer(all, map[string]string{"app": "none"})))),
	}
	runV(t, cl, vcheck{"unknown action", conn(ext, web, 80), false, "-", "Admin/in/0/Deny!"})

	// Protocol entries.
	badProtos := []struct {
		name string
		p    proto
	}{
		{"no field", proto{}},
		{"tcp and udp", proto{TCP: &cnp.ClusterNetworkPolicyProtocolTCP{}, UDP: &cnp.ClusterNetworkPolicyProtocolUDP{}}},
		{"tcp and a named port", proto{TCP: &cnp.ClusterNetworkPolicyProtocolTCP{}, DestinationNamedPort: "http"}},
		{"port 0", tcp(0)},
		{"port 70000", udp(70000)},
		{"negative port", sctp(-80)},
		{"empty destinationPort", proto{TCP: &cnp.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnp.Port{}}}},
		{"number and range", proto{TCP: &cnp.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnp.Port{Number: 80, Range: &cnp.PortRange{Start: 80, End: 81}}}}},
		{"range start above end", tcpRange(81, 80)},
		{"range end above 65535", tcpRange(80, 65536)},
		{"range start 0", tcpRange(0, 80)},
	}
	for _, bp := range badProtos {
		cl := cbase()
		cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{withIn(cpol("in", admin, 1, podSubj(all, appWeb)),
			in(accept, peers(nsPeer(teamY)), bp.p, tcp(443)), in(deny, peers(nsPeer(all))))}
		runV(t, cl,
			vcheck{"Accept, " + bp.name + ": the other entry", conn(cli, web, 443), true, "", "Admin/in/0/Accept"},
			vcheck{"Accept, " + bp.name + ": matches nothing", conn(cli, web, 80), false, "", "Admin/in/1/Deny"},
			vcheck{"Accept, " + bp.name + ": not even ICMP", pconn(ProtocolICMP, cli, web, 0), false, "", "Admin/in/1/Deny"})
		for _, a := range []cnp.ClusterNetworkPolicyRuleAction{deny, pass} {
			cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{withIn(cpol("in", admin, 1, podSubj(all, appWeb)),
				in(a, peers(podPeer(all, map[string]string{"app": "none"})), tcp(443), bp.p))}
			runV(t, cl, vcheck{fmt.Sprintf("%s, %s: deny-all", a, bp.name), pconn(ProtocolICMP, ext, web, 0), false, "-", "Admin/in/0/Deny!"})
		}
	}
	// An empty (not absent) protocol list is invalid too.
	cl = cbase()
	empty := []proto{}
	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{withIn(cpol("in", admin, 1, podSubj(all, appWeb)),
		cnp.ClusterNetworkPolicyIngressRule{Action: accept, From: []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: sel(all)}}, Protocols: empty},
		in(deny, peers(nsPeer(teamY))))}
	runV(t, cl,
		vcheck{"Accept with protocols: [] matches nothing", conn(cli, web, 80), false, "", "Admin/in/1/Deny"},
		vcheck{"and allows by default what nothing else matches", conn(db, web, 80), true, "", "default"})
	cl.ClusterPolicies[0].Spec.Ingress[0].Action = pass
	runV(t, cl, vcheck{"Pass with protocols: [] denies all", conn(db, web, 80), false, "", "Admin/in/0/Deny!"})

	// A fail-closed Baseline rule is still overridden by NetworkPolicy.
	cl = cbase()
	np := pol("a", "np", appWeb)
	np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{}}
	cl.Policies = []*networkingv1.NetworkPolicy{np}
	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{withIn(cpol("in", basel, 1, nsSubj(all)), in(deny, peers(peer{})))}
	runV(t, cl,
		vcheck{"NetworkPolicy before a fail-closed Baseline rule", conn(ext, web, 80), true, "-", "NetworkPolicy/a/np/0/Accept"},
		vcheck{"the Baseline rule where NetworkPolicy is silent", conn(ext, db, 80), false, "-", "Baseline/in/0/Deny!"})
}

// denyBoth isolates every pod of the namespace both ways.
func denyBoth(ns string) *networkingv1.NetworkPolicy {
	np := pol(ns, "deny-both", nil)
	np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
	return np
}

func TestCNPIgnoredPolicies(t *testing.T) {
	bad := metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: metav1.LabelSelectorOpIn}}}
	for _, c := range []struct {
		name string
		p    *cnp.ClusterNetworkPolicy
	}{
		{"unknown tier", cpol("x", "Middle", 1, nsSubj(all))},
		{"empty tier", cpol("x", "", 1, nsSubj(all))},
		{"subject without a field", cpol("x", admin, 1, cnp.ClusterNetworkPolicySubject{})},
		{"subject with both fields", cpol("x", admin, 1, cnp.ClusterNetworkPolicySubject{Namespaces: sel(all), Pods: &cnp.NamespacedPod{}})},
		{"subject with a bad namespaces selector", cpol("x", admin, 1, cnp.ClusterNetworkPolicySubject{Namespaces: &bad})},
		{"subject with a bad pod selector", cpol("x", admin, 1, cnp.ClusterNetworkPolicySubject{Pods: &cnp.NamespacedPod{PodSelector: bad}})},
		{"subject with a bad namespace selector", cpol("x", basel, 1, cnp.ClusterNetworkPolicySubject{Pods: &cnp.NamespacedPod{NamespaceSelector: bad}})},
	} {
		cl := cbase()
		withIn(c.p, in(deny, nil))
		withOut(c.p, out("Bogus", nil))
		cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{c.p, nil}
		runV(t, cl,
			vcheck{c.name + ": ignored (ingress)", conn(ext, web, 80), true, "-", "default"},
			vcheck{c.name + ": ignored (egress)", conn(web, ext, 80), true, "default", "-"})
	}
}

func TestCNPHairpinAndMappedAddresses(t *testing.T) {
	cl := cbase()
	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{
		withIn(cpol("in", admin, 1, nsSubj(all)), in(deny, peers(nsPeer(all)))),
		withOut(cpol("out", basel, 1, nsSubj(all)), out(deny, peers(netPeer("10.0.0.0/8")))),
	}
	runV(t, cl,
		vcheck{"a pod to its own address is not subject to ClusterNetworkPolicy", conn(web, web, 80), true, "default", "default"},
		vcheck{"IPv6 too", conn(web6, web6, 80), true, "default", "default"},
		vcheck{"another pod is", conn(db, web, 80), false, "Baseline/out/0/Deny", "Admin/in/0/Deny"},
		vcheck{"IPv4-mapped addresses mean the IPv4 ones", conn("::ffff:10.0.0.2", "::ffff:10.0.0.1", 80), false, "Baseline/out/0/Deny", "Admin/in/0/Deny"})
	// NetworkPolicy still applies to hairpin traffic, as before.
	cl.Policies = []*networkingv1.NetworkPolicy{pol("a", "deny", appWeb)}
	runV(t, cl, vcheck{"NetworkPolicy on hairpin", conn(web, web, 80), false, "default", "NetworkPolicy//-1/Deny"})
}

func TestCNPDecisionString(t *testing.T) {
	cl := cbase()
	cl.ClusterPolicies = []*cnp.ClusterNetworkPolicy{
		withIn(cpol("p", admin, 1, nsSubj(all)), in(pass, peers(nsPeer(teamY)))),
		withIn(cpol("b", basel, 1, nsSubj(all)), in(deny, peers(peer{}))),
	}
	v := New(cl).Verdict(conn(cli, web, 80))
	want := "allowed=false (egress: default => allowed; ingress: Baseline b rule 0: Deny (fail closed), after Pass by Admin p rule 0 => denied)"
	if v.String() != want {
		t.Errorf("got  %s\nwant %s", v, want)
	}
	v = New(cl).Verdict(conn(ext, web6, 80))
	if want := "no policy => allowed"; v.Egress.String() != want {
		t.Errorf("got %s, want %s", v.Egress, want)
	}
}
