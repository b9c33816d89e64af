package compiler

import (
	"errors"
	"fmt"
	"math/rand"
	"net/netip"
	"reflect"
	"sort"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/pkg/manifest"
	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
	"github.com/nftpolicy/nftpolicy/pkg/tracer"
)

// randomWorld drives the Engine and a plain snapshot through the same random events.
type randomWorld struct {
	r          *rand.Rand
	pods       map[string]*model.Pod
	namespaces map[string]*model.Namespace
	policies   map[string]*networkingv1.NetworkPolicy
	cnps       map[string]*cnp.ClusterNetworkPolicy
	nodes      map[string]*model.Node
	// audit: a third of the policies carry the audit annotation.
	audit bool
}

// maybeAudit annotates a third of the policies of an audit world.
func (w *randomWorld) maybeAudit(o metav1.Object) {
	if w.audit && w.r.Intn(3) == 0 {
		o.SetAnnotations(map[string]string{AuditAnnotation: ModeAudit})
	}
}

// clusterPolicy is a random ClusterNetworkPolicy, occasionally invalid.
func (w *randomWorld) clusterPolicy() *cnp.ClusterNetworkPolicy {
	tier := cnp.AdminTier
	if w.r.Intn(2) == 0 {
		tier = cnp.BaselineTier
	}
	p := clusterPol(tier, fmt.Sprintf("cnp%d", w.r.Intn(6)), int32(w.r.Intn(3)), nsSubject(w.pick(rwNamespaces...)))
	switch w.r.Intn(4) {
	case 0:
		p.Spec.Subject = cnp.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"team": w.pick("x", "y")}}}
	case 1:
		p.Spec.Subject = podSubject(w.selector(), w.labels())
	}
	actions := []cnp.ClusterNetworkPolicyRuleAction{accept, deny, pass}
	for range w.r.Intn(3) {
		peers := w.clusterPeers(false)
		p = cIngress(p, actions[w.r.Intn(3)], "", peers, w.clusterProtocols()...)
	}
	for range w.r.Intn(3) {
		p = cEgress(p, actions[w.r.Intn(3)], "", w.clusterPeers(true), w.clusterProtocols()...)
	}
	w.maybeAudit(p)
	return p
}

func (w *randomWorld) clusterPeers(egress bool) []cpeer {
	var out []cpeer
	for range 1 + w.r.Intn(2) {
		kinds := 2
		if egress {
			kinds = 4
		}
		switch w.r.Intn(kinds + 1) {
		case 0:
			out = append(out, cpeer{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"team": w.pick("x", "y")}}})
		case 1:
			out = append(out, peerPods(w.selector(), w.labels()))
		case 2:
			if w.r.Intn(10) == 0 {
				out = append(out, cpeer{}) // fails closed
			} else {
				out = append(out, peerNS(w.pick(rwNamespaces...)))
			}
		case 3:
			out = append(out, peerNets(w.pick("10.0.0.0/29", "fd00::/120", "0.0.0.0/0", "192.168.0.0/24")))
		default:
			out = append(out, peerNodes(map[string]string{"zone": w.pick("1", "2")}))
		}
	}
	return out
}

func (w *randomWorld) clusterProtocols() []cnp.ClusterNetworkPolicyProtocol {
	var out []cnp.ClusterNetworkPolicyProtocol
	for range w.r.Intn(3) {
		switch w.r.Intn(4) {
		case 0:
			out = append(out, cNamed(w.pick("http", "dns")))
		case 1:
			out = append(out, cTCPRange(80, 82))
		case 2:
			out = append(out, cUDP(53))
		default:
			out = append(out, cTCP(int32(80+w.r.Intn(3))))
		}
	}
	return out
}

// node is a random node: labels and addresses change.
func (w *randomWorld) node() *model.Node {
	name := w.pick(rwNodes...)
	n := &model.Node{Name: name, Labels: map[string]string{"zone": w.pick("1", "2")}}
	n.Addrs = []netip.Addr{netip.AddrFrom4([4]byte{192, 168, 0, byte(1 + w.r.Intn(3))})}
	if w.r.Intn(2) == 0 {
		n.Addrs = append(n.Addrs, netip.MustParseAddr(fmt.Sprintf("fd00:1::%d", 1+w.r.Intn(3))))
	}
	return n
}

var (
	rwNamespaces = []string{"a", "b", "c", "d"}
	rwNodes      = []string{"node-0", "node-1"}
)

func (w *randomWorld) pick(xs ...string) string { return xs[w.r.Intn(len(xs))] }

func (w *randomWorld) labels() map[string]string {
	l := map[string]string{}
	if w.r.Intn(4) > 0 {
		l["app"] = w.pick("web", "db", "cache")
	}
	if w.r.Intn(2) == 0 {
		l["tier"] = w.pick("1", "2")
	}
	return l
}

func (w *randomWorld) pod() *model.Pod {
	p := &model.Pod{Namespace: w.pick(rwNamespaces...), Name: fmt.Sprintf("p%d", w.r.Intn(12)),
		NodeName: w.pick(rwNodes...), Labels: w.labels(), Phase: corev1.PodRunning}
	// Few addresses, so that pods often claim the same one (IP reuse).
	p.IPs = []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 0, byte(w.r.Intn(10))})}
	if w.r.Intn(3) == 0 {
		p.IPs = append(p.IPs, netip.MustParseAddr(fmt.Sprintf("fd00::%d", w.r.Intn(10))))
	}
	switch w.r.Intn(8) {
	case 0:
		p.Phase = corev1.PodSucceeded
	case 1:
		p.Phase = corev1.PodPending
	case 2:
		p.HostNetwork = true
	case 3:
		p.IPs = nil
	}
	if w.r.Intn(2) == 0 {
		p.Ports = append(p.Ports, model.NamedPort{Name: "http", Protocol: corev1.ProtocolTCP, Port: int32(8080 + w.r.Intn(2))})
	}
	if w.r.Intn(3) == 0 {
		p.Ports = append(p.Ports, model.NamedPort{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53})
	}
	return p
}

func (w *randomWorld) selector() *metav1.LabelSelector {
	switch w.r.Intn(4) {
	case 0:
		return &metav1.LabelSelector{}
	case 1:
		return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: "tier", Operator: metav1.LabelSelectorOpIn, Values: []string{"1", "2"}}}}
	}
	return &metav1.LabelSelector{MatchLabels: w.labels()}
}

func (w *randomWorld) peers() []networkingv1.NetworkPolicyPeer {
	var out []networkingv1.NetworkPolicyPeer
	for range w.r.Intn(3) {
		switch w.r.Intn(4) {
		case 0:
			out = append(out, networkingv1.NetworkPolicyPeer{PodSelector: w.selector()})
		case 1:
			out = append(out, networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": w.pick("x", "y")}}})
		case 2:
			out = append(out, networkingv1.NetworkPolicyPeer{NamespaceSelector: w.selector(), PodSelector: w.selector()})
		default:
			out = append(out, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: w.pick("10.0.0.0/29", "fd00::/120", "0.0.0.0/0"), Except: []string{"10.0.0.4/31"}}})
		}
	}
	return out
}

func (w *randomWorld) ports() []networkingv1.NetworkPolicyPort {
	var out []networkingv1.NetworkPolicyPort
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	for range w.r.Intn(3) {
		switch w.r.Intn(3) {
		case 0:
			p := intstr.FromString("http")
			out = append(out, networkingv1.NetworkPolicyPort{Protocol: &tcp, Port: &p})
		case 1:
			p := intstr.FromString("dns")
			out = append(out, networkingv1.NetworkPolicyPort{Protocol: &udp, Port: &p})
		default:
			p := intstr.FromInt32(int32(80 + w.r.Intn(3)))
			out = append(out, networkingv1.NetworkPolicyPort{Protocol: &tcp, Port: &p})
		}
	}
	return out
}

func (w *randomWorld) policy() *networkingv1.NetworkPolicy {
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: w.pick(rwNamespaces...), Name: fmt.Sprintf("np%d", w.r.Intn(5))}}
	np.Spec.PodSelector = *w.selector()
	for range w.r.Intn(3) {
		np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: w.peers(), Ports: w.ports()})
	}
	for range w.r.Intn(3) {
		np.Spec.Egress = append(np.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: w.peers(), Ports: w.ports()})
	}
	if w.r.Intn(3) == 0 {
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
	}
	if w.r.Intn(20) == 0 {
		np.Spec.PodSelector.MatchExpressions = []metav1.LabelSelectorRequirement{{Key: "app", Operator: "Bogus"}}
	}
	w.maybeAudit(np)
	return np
}

func (w *randomWorld) snapshot(node string) *model.Snapshot {
	snap := &model.Snapshot{NodeName: node, Namespaces: map[string]*model.Namespace{}}
	for _, p := range w.pods {
		snap.Pods = append(snap.Pods, p)
	}
	sort.Slice(snap.Pods, func(i, j int) bool { return model.Less(snap.Pods[i], snap.Pods[j]) })
	for k, ns := range w.namespaces {
		snap.Namespaces[k] = ns
	}
	for _, np := range w.policies {
		snap.Policies = append(snap.Policies, np)
	}
	for _, p := range w.cnps {
		snap.ClusterPolicies = append(snap.ClusterPolicies, p)
	}
	for _, n := range w.nodes {
		snap.Nodes = append(snap.Nodes, n)
	}
	return snap
}

// step applies one random event to the world and the engine.
func (w *randomWorld) step(e *Engine) string {
	if w.cnps != nil {
		switch w.r.Intn(14) {
		case 0, 1:
			p := w.clusterPolicy()
			w.cnps[p.Name] = p
			e.SetClusterPolicy(p)
			return "set cnp " + p.Name
		case 2:
			p := w.clusterPolicy()
			delete(w.cnps, p.Name)
			e.DeleteClusterPolicy(p.Name)
			return "delete cnp " + p.Name
		case 3:
			n := w.node()
			if w.r.Intn(4) == 0 {
				delete(w.nodes, n.Name)
				e.DeleteNode(n.Name)
				return "delete node " + n.Name
			}
			w.nodes[n.Name] = n
			e.SetNode(n)
			return "set node " + n.Name
		}
	}
	switch n := w.r.Intn(10); {
	case n < 5:
		p := w.pod()
		w.pods[p.Key()] = p
		e.SetPod(p)
		return "set pod " + p.Key()
	case n < 6:
		p := w.pod()
		delete(w.pods, p.Key())
		e.DeletePod(p.Namespace, p.Name)
		return "delete pod " + p.Key()
	case n < 7:
		name := w.pick(rwNamespaces...)
		if w.r.Intn(4) == 0 {
			delete(w.namespaces, name)
			e.DeleteNamespace(name)
			return "delete namespace " + name
		}
		ns := &model.Namespace{Name: name, Labels: map[string]string{"team": w.pick("x", "y", "z")}}
		w.namespaces[name] = ns
		e.SetNamespace(ns)
		return "set namespace " + name
	case n < 9:
		np := w.policy()
		w.policies[np.Namespace+"/"+np.Name] = np
		e.SetPolicy(np)
		return "set policy " + np.Namespace + "/" + np.Name
	default:
		np := w.policy()
		delete(w.policies, np.Namespace+"/"+np.Name)
		e.DeletePolicy(np.Namespace, np.Name)
		return "delete policy " + np.Namespace + "/" + np.Name
	}
}

func problemStrings(ps []Problem) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Error())
	}
	sort.Strings(out)
	return out
}

// TestEngineMatchesCompile: after any sequence of changes the engine's ruleset is
// Compile's for the same state, owners included, and its changes turn the previous ruleset into it.
func TestEngineMatchesCompile(t *testing.T) {
	tierChains := map[ruleset.Role]int{}
	for seed := int64(1); seed <= 120; seed++ {
		w := &randomWorld{r: rand.New(rand.NewSource(seed)), pods: map[string]*model.Pod{},
			namespaces: map[string]*model.Namespace{}, policies: map[string]*networkingv1.NetworkPolicy{}}
		if seed > 60 {
			// The second half adds ClusterNetworkPolicies and Nodes to the mix.
			w.cnps, w.nodes = map[string]*cnp.ClusterNetworkPolicy{}, map[string]*model.Node{}
		}
		opts := Options{Revocation: seed%2 == 0, LogDenied: seed%3 == 0}
		// Every fourth world audits some policies, one in ten the whole node.
		w.audit = seed%4 == 1
		if seed%10 == 7 {
			opts.Audit, opts.Revocation = true, false
		}
		e := NewEngine("node-0", opts)
		var prev *ruleset.Ruleset
		var log []string
		for i := 0; i < 150; i++ {
			log = append(log, w.step(e))
			if w.r.Intn(3) > 0 {
				continue
			}
			res, ch := e.Flush()
			want := Compile(w.snapshot("node-0"), opts)
			if d := ruleset.Diff(want.Ruleset, res.Ruleset); !d.Empty() {
				t.Fatalf("seed %d after %v:\nengine:\n%s\ncompile:\n%s", seed, log, ruleset.Render(res.Ruleset), ruleset.Render(want.Ruleset))
			}
			if err := res.Ruleset.Validate(); err != nil {
				t.Fatalf("seed %d: invalid ruleset: %v", seed, err)
			}
			if !reflect.DeepEqual(res.Ruleset.Owners, want.Ruleset.Owners) {
				t.Fatalf("seed %d after %v: owners differ\nengine:  %s\ncompile: %s", seed, log, describeOwners(res.Ruleset.Owners), describeOwners(want.Ruleset.Owners))
			}
			if err := checkOwners(res.Ruleset); err != nil {
				t.Fatalf("seed %d after %v: %v\n%s", seed, log, err, ruleset.Render(res.Ruleset))
			}
			if got, exp := problemStrings(res.Problems), problemStrings(want.Problems); fmt.Sprint(got) != fmt.Sprint(exp) {
				t.Fatalf("seed %d: problems\n%v\nwant\n%v", seed, got, exp)
			}
			if prev != nil && !ch.NeedsReplace {
				applied := ch.Apply(prev, res.Ruleset)
				if d := ruleset.Diff(applied, res.Ruleset); !d.Empty() {
					t.Fatalf("seed %d after %v: changes do not lead to the ruleset:\napplied:\n%s\nwant:\n%s", seed, log, ruleset.Render(applied), ruleset.Render(res.Ruleset))
				}
			}
			if prev == nil && !ch.NeedsReplace {
				t.Fatalf("seed %d: first flush must replace the table", seed)
			}
			prev = res.Ruleset
			log = nil
			for _, co := range res.Ruleset.Owners.Chains {
				tierChains[co.Role]++
			}
		}
	}
	// The ClusterNetworkPolicy half must have exercised both tiers.
	if tierChains[ruleset.RoleAdminTier] == 0 || tierChains[ruleset.RoleBaselineTier] == 0 || tierChains[ruleset.RoleShadow] == 0 || tierChains[ruleset.RoleAuditDeny] == 0 || tierChains[ruleset.RoleAuditAllow] == 0 {
		t.Errorf("tier chains compiled: %v; want both tiers exercised", tierChains)
	}
}

// TestEngineChangesAreSmall: one pod or namespace change is a handful of element
// operations, whatever the size of the cluster.
func TestEngineChangesAreSmall(t *testing.T) {
	snap := synthetic(5000, 500, 50)
	e := newEngineFrom(snap, Options{})
	if _, ch := e.Flush(); !ch.NeedsReplace {
		t.Fatal("first flush must replace")
	}
	p := *snap.Pods[0] // node-0's pod
	p.Labels = map[string]string{"app": "app-1", "tier": "tier-2"}
	e.SetPod(&p)
	res, ch := e.Flush()
	if ch.NeedsReplace || ch.Ops() > 40 {
		t.Fatalf("relabelling a local pod: %d ops (replace %v)", ch.Ops(), ch.NeedsReplace)
	}
	remote := *snap.Pods[1]
	remote.Name = "new"
	remote.IPs = []netip.Addr{netip.MustParseAddr("10.200.0.1")}
	e.SetPod(&remote)
	_, ch = e.Flush()
	if ch.NeedsReplace || len(ch.AddChains)+len(ch.RewriteChains)+len(ch.AddSets) > 0 || ch.Ops() == 0 || ch.Ops() > 10 {
		t.Fatalf("adding a remote pod: %+v", ch)
	}
	want := Compile(&model.Snapshot{NodeName: snap.NodeName, Namespaces: snap.Namespaces, Policies: snap.Policies,
		Pods: append(append([]*model.Pod{&p}, snap.Pods[1:]...), &remote)}, Options{})
	_ = res
	if d := ruleset.Diff(want.Ruleset, e.out); !d.Empty() {
		t.Fatalf("engine differs from compile: %d ops", d.Ops())
	}
}

func TestPatchElements(t *testing.T) {
	el := func(b byte) ruleset.Element { return ruleset.Element{Key: []ruleset.Range{ruleset.Single([]byte{b})}} }
	list := func(bs ...byte) []ruleset.Element {
		var out []ruleset.Element
		for _, b := range bs {
			out = append(out, el(b))
		}
		return out
	}
	r := rand.New(rand.NewSource(1))
	for range 500 {
		have := map[byte]bool{}
		var cur []byte
		for b := 0; b < 40; b++ {
			if r.Intn(2) == 0 {
				have[byte(b)] = true
				cur = append(cur, byte(b))
			}
		}
		var add, del []byte
		want := map[byte]bool{}
		for b := range have {
			want[b] = true
		}
		for b := 0; b < 40; b++ {
			switch {
			case have[byte(b)] && r.Intn(5) == 0:
				del = append(del, byte(b))
				delete(want, byte(b))
			case !have[byte(b)] && r.Intn(5) == 0:
				add = append(add, byte(b))
				want[byte(b)] = true
			}
		}
		got := patchElements(list(cur...), list(add...), list(del...))
		var exp []byte
		for b := 0; b < 40; b++ {
			if want[byte(b)] {
				exp = append(exp, byte(b))
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(list(exp...)) {
			t.Fatalf("cur %v add %v del %v: got %v want %v", cur, add, del, got, exp)
		}
	}
}

// TestSCTPUnsupported: on a node without SCTP every SCTP port is a Problem wrapping
// ErrUnsupported, from Compile and the Engine alike; the rules are still compiled.
func TestSCTPUnsupported(t *testing.T) {
	sctp, tcp := corev1.ProtocolSCTP, corev1.ProtocolTCP
	port := intstr.FromInt32(5000)
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "p"},
		Spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{
			Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}, {Protocol: &sctp, Port: &port}}}}}}
	snap := &model.Snapshot{NodeName: "n1", Policies: []*networkingv1.NetworkPolicy{np}}
	for _, opts := range []Options{{}, {SCTPUnsupported: true}} {
		res := Compile(snap, opts)
		e := newEngineFrom(snap, opts)
		eres, _ := e.Flush()
		for _, got := range [][]Problem{res.Problems, eres.Problems} {
			if !opts.SCTPUnsupported {
				if len(got) != 0 {
					t.Errorf("with SCTP: problems %v", got)
				}
				continue
			}
			if len(got) != 1 || got[0].Field != "spec.ingress[0].ports[1].protocol" || !errors.Is(got[0].Err, ErrUnsupported) {
				t.Errorf("without SCTP: problems %v, want one on spec.ingress[0].ports[1].protocol", got)
			}
		}
	}
}

// TestEndPortWithoutPort: the API server refuses endPort without port; an object that
// bypassed validation is a Problem on that field, and the entry allows nothing (it is
// not read as "every port").
func TestEndPortWithoutPort(t *testing.T) {
	tcp, end := corev1.ProtocolTCP, int32(90)
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "p"},
		Spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{
			Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, EndPort: &end}}}}}}
	pod := &model.Pod{Namespace: "a", Name: "web", NodeName: "n1", Phase: corev1.PodRunning,
		IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}
	res := Compile(&model.Snapshot{NodeName: "n1", Pods: []*model.Pod{pod}, Policies: []*networkingv1.NetworkPolicy{np}}, Options{})
	if len(res.Problems) != 1 || res.Problems[0].Field != "spec.ingress[0].ports[0].endPort" {
		t.Fatalf("problems %v, want one on spec.ingress[0].ports[0].endPort", res.Problems)
	}
	for _, port := range []uint16{80, 90, 443} {
		pkt := tracer.Packet{Src: netip.MustParseAddr("192.0.2.1"), Dst: pod.IPs[0], Proto: ruleset.ProtoTCP, DPort: port}
		if tracer.Trace(res.Ruleset, pkt).Allowed() {
			t.Errorf("port %d allowed by an invalid entry", port)
		}
	}
}

// TestEngineMatchesCompileOnDemo: for the scenario of pkg/render's golden files (the
// README's demo) the Engine, fed object by object as the agent feeds it, builds what
// Compile builds, owners included.
func TestEngineMatchesCompileOnDemo(t *testing.T) {
	objs, err := manifest.Load([]string{"../render/testdata/demo"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{Table: DefaultTable, Revocation: true}
	for _, node := range []string{"node1", "node2"} {
		snap := objs.Snapshot(node)
		want := Compile(snap, opts).Ruleset
		got, _ := newEngineFrom(snap, opts).Flush()
		if a, b := ruleset.Render(want), ruleset.Render(got.Ruleset); a != b {
			t.Fatalf("%s: engine and Compile differ:\n--- Compile\n%s\n--- Engine\n%s", node, a, b)
		}
		if !reflect.DeepEqual(want.Owners, got.Ruleset.Owners) {
			t.Fatalf("%s: owners differ\nCompile: %s\nEngine:  %s", node, describeOwners(want.Owners), describeOwners(got.Ruleset.Owners))
		}
	}
}

// TestEngineEquivalentPodReplaces: setting a pod equal to the one held but for its
// version changes nothing in the ruleset and leaves the new object in the indexes
// (the agent shares its cache's pods with the engine, and the cache has the newest).
func TestEngineEquivalentPodReplaces(t *testing.T) {
	snap := synthetic(200, 20, 2)
	e := newEngineFrom(snap, Options{})
	before, _ := e.Flush()
	for _, p := range snap.Pods[:20] {
		q := *p
		q.Version = "next"
		e.SetPod(&q)
		if e.Pod(p.Namespace, p.Name) != &q {
			t.Fatalf("%s: the engine kept the old object", p.Key())
		}
		for _, ip := range q.IPs {
			if e.OwnerOf(ip) != &q {
				t.Fatalf("%s: %s is owned by %v, want the new object", p.Key(), ip, e.OwnerOf(ip))
			}
		}
	}
	after, ch := e.Flush()
	if !ch.Empty() {
		t.Errorf("equivalent pods changed the ruleset: %+v", ch)
	}
	if ruleset.Render(after.Ruleset) != ruleset.Render(before.Ruleset) {
		t.Error("equivalent pods changed the rendered ruleset")
	}
}
