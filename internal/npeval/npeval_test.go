package npeval

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nftpolicy/nftpolicy/pkg/model"
)

// Each case is checked by hand against the NetworkPolicy API documentation; the comment
// of a case says which sentence of it the case exercises.

func pod(ns, name, ip string, l map[string]string, ports ...model.NamedPort) *model.Pod {
	p := &model.Pod{Namespace: ns, Name: name, Labels: l, Phase: corev1.PodRunning, Ports: ports}
	if ip != "" {
		p.IPs = []netip.Addr{netip.MustParseAddr(ip)}
	}
	return p
}

func pol(ns, name string, sel map[string]string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: sel}}}
}

func tcpPort(n int32) networkingv1.NetworkPolicyPort {
	p := intstr.FromInt32(n)
	return networkingv1.NetworkPolicyPort{Port: &p}
}

func protoPort(proto corev1.Protocol, n int32) networkingv1.NetworkPolicyPort {
	p := tcpPort(n)
	p.Protocol = &proto
	return p
}

func namedPort(name string) networkingv1.NetworkPolicyPort {
	p := intstr.FromString(name)
	return networkingv1.NetworkPolicyPort{Port: &p}
}

func rng(from, to int32) networkingv1.NetworkPolicyPort {
	p := tcpPort(from)
	p.EndPort = &to
	return p
}

func sel(l map[string]string) *metav1.LabelSelector { return &metav1.LabelSelector{MatchLabels: l} }

func block(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

func conn(src, dst string, port uint16) Conn {
	return Conn{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), Proto: corev1.ProtocolTCP, Port: port}
}

type check struct {
	name string
	c    Conn
	want bool
}

func run(t *testing.T, cl Cluster, checks ...check) {
	t.Helper()
	e := New(cl)
	for _, ch := range checks {
		if got := e.Allowed(ch.c); got != ch.want {
			t.Errorf("%s: %s -> %s %s/%d: allowed=%v, want %v", ch.name, ch.c.Src, ch.c.Dst, ch.c.Proto, ch.c.Port, got, ch.want)
		}
	}
}

// base: namespaces a (team=x) and b (team=y); a/web (app=web, port http=8080), a/db
// (app=db), b/cli (app=cli); 203.0.113.9 is outside the cluster.
func base() Cluster {
	return Cluster{
		Pods: []*model.Pod{
			pod("a", "web", "10.0.0.1", map[string]string{"app": "web"}, model.NamedPort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 8080}),
			pod("a", "db", "10.0.0.2", map[string]string{"app": "db"}),
			pod("b", "cli", "10.0.1.1", map[string]string{"app": "cli"}),
		},
		Namespaces: map[string]*model.Namespace{
			"a": {Name: "a", Labels: map[string]string{"team": "x"}},
			"b": {Name: "b", Labels: map[string]string{"team": "y"}},
		},
	}
}

const web, db, cli, ext = "10.0.0.1", "10.0.0.2", "10.0.1.1", "203.0.113.9"

func TestNPEvalNoPolicyAllowsAll(t *testing.T) {
	run(t, base(),
		check{"pods are non-isolated by default", conn(cli, web, 80), true},
		check{"external in", conn(ext, db, 1), true},
		check{"external out", conn(web, ext, 443), true})
}

func TestNPEvalDenyAllIngress(t *testing.T) {
	cl := base()
	cl.Policies = []*networkingv1.NetworkPolicy{pol("a", "deny", nil)} // empty podSelector, no rules
	run(t, cl,
		check{"empty selector isolates every pod of the namespace", conn(cli, web, 80), false},
		check{"same namespace too", conn(db, web, 80), false},
		check{"egress is not isolated by an ingress-only default", conn(web, cli, 80), true},
		check{"other namespaces untouched", conn(web, cli, 80), true})
}

func TestNPEvalPolicyTypesDefault(t *testing.T) {
	cl := base()
	np := pol("a", "eg", map[string]string{"app": "web"})
	np.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{PodSelector: sel(map[string]string{"app": "db"})}}}}
	cl.Policies = []*networkingv1.NetworkPolicy{np}
	run(t, cl,
		check{"egress rules make it an egress policy", conn(web, cli, 80), false},
		check{"allowed egress peer", conn(web, db, 80), true},
		check{"and Ingress is always implied", conn(cli, web, 80), false},
		check{"unselected pod unaffected", conn(db, cli, 80), true})

	np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	run(t, cl, check{"explicit Egress only: ingress open", conn(cli, web, 80), true})
	np.Spec.PolicyTypes = []networkingv1.PolicyType{"Sideways"}
	run(t, cl,
		check{"unknown type isolates nothing (in)", conn(cli, web, 80), true},
		check{"unknown type isolates nothing (out)", conn(web, cli, 80), true})
}

func TestNPEvalSelectors(t *testing.T) {
	cl := base()
	np := pol("a", "in", map[string]string{"app": "web"})
	np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{
		{From: []networkingv1.NetworkPolicyPeer{{PodSelector: sel(nil)}}}, // every pod of a
		{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel(map[string]string{"team": "y"}), PodSelector: sel(map[string]string{"app": "nope"})}}},
	}
	cl.Policies = []*networkingv1.NetworkPolicy{np}
	run(t, cl,
		check{"podSelector alone: the policy's namespace", conn(db, web, 80), true},
		check{"combined selectors need both", conn(cli, web, 80), false},
		check{"pod selectors never match external addresses", conn(ext, web, 80), false})

	np.Spec.Ingress[1].From[0].PodSelector = nil
	run(t, cl, check{"namespaceSelector alone: every pod there", conn(cli, web, 80), true})

	np.Spec.Ingress[1].From[0].NamespaceSelector = sel(map[string]string{NamespaceNameLabel: "b"})
	run(t, cl, check{"the name label is implied", conn(cli, web, 80), true})

	// b is deleted but its pod lingers: it still has its name label.
	delete(cl.Namespaces, "b")
	run(t, cl, check{"missing namespace keeps its name label", conn(cli, web, 80), true})

	np.Spec.Ingress[1].From[0].NamespaceSelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "team", Operator: "Bogus"}}}
	run(t, cl, check{"malformed selector matches nothing", conn(cli, web, 80), false})

	np.Spec.PodSelector = metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: metav1.LabelSelectorOpIn}}}
	run(t, cl, check{"a policy whose podSelector is malformed is ignored", conn(ext, web, 80), true})
}

func TestNPEvalIPBlock(t *testing.T) {
	cl := base()
	np := pol("a", "in", map[string]string{"app": "web"})
	np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{block("0.0.0.0/0", "10.0.1.0/24", "fd00::/8")}}}
	cl.Policies = []*networkingv1.NetworkPolicy{np}
	run(t, cl,
		check{"inside the cidr", conn(ext, web, 80), true},
		check{"ipBlock matches pod addresses too", conn(db, web, 80), true},
		check{"except cuts a pod out", conn(cli, web, 80), false})

	np.Spec.Ingress[0].From[0] = block("::ffff:203.0.113.0/120")
	run(t, cl, check{"IPv4-mapped CIDR means the IPv4 CIDR", conn(ext, web, 80), true},
		check{"outside it", conn(db, web, 80), false})

	np.Spec.Ingress[0].From[0] = block("203.0.113.0/24", "garbage")
	run(t, cl, check{"an unparseable except voids the block", conn(ext, web, 80), false})

	p := block("0.0.0.0/0")
	p.PodSelector = sel(nil)
	np.Spec.Ingress[0].From[0] = p
	run(t, cl, check{"ipBlock with a selector is invalid: nothing", conn(ext, web, 80), false})

	np.Spec.Ingress[0].From = []networkingv1.NetworkPolicyPeer{{}, block("10.0.0.2/32")}
	run(t, cl, check{"an empty peer matches nothing, the next peer still does", conn(db, web, 80), true},
		check{"empty peer is not 'everyone'", conn(ext, web, 80), false})
}

func TestNPEvalPorts(t *testing.T) {
	cl := base()
	np := pol("a", "in", map[string]string{"app": "web"})
	udp := corev1.ProtocolUDP
	np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{
		tcpPort(80), rng(1000, 1002), namedPort("http"), {Protocol: &udp}, protoPort("ICMP", 7), tcpPort(70000),
	}}}
	cl.Policies = []*networkingv1.NetworkPolicy{np}
	udpConn := conn(cli, web, 53)
	udpConn.Proto = corev1.ProtocolUDP
	sctpConn := conn(cli, web, 80)
	sctpConn.Proto = corev1.ProtocolSCTP
	run(t, cl,
		check{"numeric port, TCP by default", conn(cli, web, 80), true},
		check{"other port", conn(cli, web, 81), false},
		check{"endPort is inclusive", conn(cli, web, 1002), true},
		check{"beyond endPort", conn(cli, web, 1003), false},
		check{"named port resolved on the destination", conn(cli, web, 8080), true},
		check{"protocol without port: every port of it", udpConn, true},
		check{"protocol must match", sctpConn, false},
		check{"unknown protocol and out-of-range port allow nothing", conn(cli, web, 7), false})

	// Egress: a named port resolves on the destination pod, which db lacks.
	eg := pol("a", "eg", map[string]string{"app": "db"})
	eg.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{namedPort("http")}}}
	cl.Policies = []*networkingv1.NetworkPolicy{eg}
	run(t, cl,
		check{"egress named port on a pod that has it", conn(db, web, 8080), true},
		check{"egress named port on an external address", conn(db, ext, 8080), false})

	bad := namedPort("http")
	end := int32(9000)
	bad.EndPort = &end
	eg.Spec.Egress[0].Ports = []networkingv1.NetworkPolicyPort{bad}
	run(t, cl, check{"endPort with a named port is invalid", conn(db, web, 8080), false})
}

func TestNPEvalIneligiblePodsAndOwnership(t *testing.T) {
	cl := base()
	host := pod("a", "host", "192.168.0.1", map[string]string{"app": "web"})
	host.HostNetwork = true
	done := pod("a", "done", "10.0.0.9", map[string]string{"app": "web"})
	done.Phase = corev1.PodSucceeded
	// A pending pod claims db's address; db is Running and keeps it. A second claimant
	// in namespace "0" (sorted before "a") also loses to the Running pod.
	pend := pod("0", "pending", db, map[string]string{"app": "web"})
	pend.Phase = corev1.PodPending
	cl.Pods = append(cl.Pods, host, done, pend)
	cl.Policies = []*networkingv1.NetworkPolicy{pol("a", "deny", map[string]string{"app": "web"})}
	run(t, cl,
		check{"hostNetwork pods are never isolated", conn(cli, "192.168.0.1", 80), true},
		check{"finished pods are never isolated", conn(cli, "10.0.0.9", 80), true},
		check{"the Running claimant owns the address", conn(cli, db, 80), true},
		check{"selected running pod is isolated", conn(cli, web, 80), false})
	e := New(cl)
	if o := e.Owner(netip.MustParseAddr(db)); o == nil || o.Name != "db" {
		t.Errorf("owner of %s: %v, want a/db", db, o)
	}
	// Between two pods that are both not Running, the first by namespace/name wins.
	pend2 := pod("a", "zz", db, nil)
	pend2.Phase = corev1.PodPending
	cl.Pods = []*model.Pod{pend2, pend}
	if o := New(cl).Owner(netip.MustParseAddr(db)); o != pend {
		t.Errorf("owner among pending pods: %v, want 0/pending", o)
	}
	// hostNetwork pods are never selected as peers either.
	cl = base()
	cl.Pods = append(cl.Pods, host)
	np := pol("a", "in", map[string]string{"app": "db"})
	np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: sel(map[string]string{"app": "web"})}}}}
	cl.Policies = []*networkingv1.NetworkPolicy{np}
	run(t, cl, check{"hostNetwork pod not selected", conn("192.168.0.1", db, 80), false},
		check{"regular pod selected", conn(web, db, 80), true})
}

func TestNPEvalIPv6AndBothSides(t *testing.T) {
	cl := base()
	cl.Pods[0].IPs = append(cl.Pods[0].IPs, netip.MustParseAddr("fd00::1"))
	cl.Pods[2].IPs = append(cl.Pods[2].IPs, netip.MustParseAddr("fd00:1::1"))
	in := pol("a", "in", map[string]string{"app": "web"})
	in.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{block("fd00:1::/64")}}}
	eg := pol("b", "eg", nil)
	eg.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	eg.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{tcpPort(443)}}}
	cl.Policies = []*networkingv1.NetworkPolicy{in, eg}
	run(t, cl,
		check{"both sides allow", conn("fd00:1::1", "fd00::1", 443), true},
		check{"egress of the source denies", conn("fd00:1::1", "fd00::1", 80), false},
		check{"ingress of the destination denies (IPv4 source outside the block)", conn(cli, web, 443), false})
}
