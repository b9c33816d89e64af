package controllers

// Hostile input through the whole sync, without an API server: a controller-runtime
// fake client holds objects the API server would have refused (it does no validation),
// the Syncer reads them by List (the fake client is no informer cache), compiles and
// applies to the fake dataplane. A plain test, not part of the envtest suite.

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/go-logr/logr/funcr"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"
	fakeclient "sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/nftpolicy/nftpolicy/internal/npeval"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane/fake"
	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/tracer"
)

// namingRecorder is a FakeRecorder that also keeps which object each Event is about:
// FakeRecorder's strings carry only type, reason and message.
type namingRecorder struct {
	*events.FakeRecorder
	mu    sync.Mutex
	about []string // namespace/name of the regarding object, per Event
	notes []string
}

func (r *namingRecorder) Eventf(regarding, related runtime.Object, eventtype, reason, action, note string, args ...any) {
	r.mu.Lock()
	if ref, ok := regarding.(*corev1.ObjectReference); ok {
		r.about = append(r.about, ref.Kind+" "+ref.Namespace+"/"+ref.Name)
	} else {
		r.about = append(r.about, fmt.Sprintf("%T", regarding))
	}
	r.notes = append(r.notes, eventtype+" "+reason+" "+fmt.Sprintf(note, args...))
	r.mu.Unlock()
	r.FakeRecorder.Eventf(regarding, related, eventtype, reason, action, note, args...)
}

func hostilePod(ns, name, ip string, l map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: l},
		Spec:       corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
}

func hostilePolicy(ns, name string, sel map[string]string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + ns + "-" + name)},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: sel}}}
}

func hostilePort(proto corev1.Protocol, port int32) networkingv1.NetworkPolicyPort {
	p := intstr.FromInt32(port)
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &p}
}

func TestHostileObjectsThroughSync(t *testing.T) {
	ctx := context.Background()
	const (
		web, db, heavy, cli, orphan = "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.1.1", "10.0.2.1"
		stray, outside              = "10.0.3.1", "203.0.113.7"
	)
	heavyLabels := map[string]string{"app": "heavy"}
	for i := range 3000 {
		heavyLabels[fmt.Sprintf("l%d.example.com/k", i)] = fmt.Sprintf("v%d", i)
	}

	dbAllowWeb := hostilePolicy("prod", "db-allow-web", map[string]string{"app": "db"})
	dbAllowWeb.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
		From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}}},
		Ports: []networkingv1.NetworkPolicyPort{hostilePort(corev1.ProtocolTCP, 5432)},
	}}
	heavyDeny := hostilePolicy("prod", "heavy-deny", map[string]string{"app": "heavy"})
	// Invalid CIDR next to a valid peer: the valid peer still applies.
	badCIDR := hostilePolicy("prod", "bad-cidr", map[string]string{"app": "web"})
	badCIDR.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
		{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/33"}},
		{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}},
	}}}
	// Unknown protocol next to a valid port.
	badProto := hostilePolicy("prod", "bad-proto", map[string]string{"app": "web"})
	badProto.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{
		hostilePort("ICMP", 80), hostilePort(corev1.ProtocolTCP, 8080),
	}}}
	// Malformed podSelector: which pods it isolates is unknown, so it is ignored.
	badSelector := hostilePolicy("dev", "bad-selector", nil)
	badSelector.Spec.PodSelector = metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: metav1.LabelSelectorOpIn}}}
	// Port out of range: db's egress is isolated and allows nothing.
	badPort := hostilePolicy("prod", "bad-port", map[string]string{"app": "db"})
	badPort.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	badPort.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{hostilePort(corev1.ProtocolTCP, 70000)}}}
	// A policy in a namespace about to be deleted, with an empty peer besides a valid one.
	ghost := hostilePolicy("ghost", "ghost-pol", nil)
	ghost.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
		{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{npeval.NamespaceNameLabel: "dev"}}},
		{},
	}}}
	// A policy in a namespace that never existed (but has a pod here: a node compiles,
	// and so reports, only the policies of namespaces with local pods), with a bad except.
	nowhere := hostilePolicy("nowhere", "bad-except", nil)
	nowhere.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
		{IPBlock: &networkingv1.IPBlock{CIDR: "0.0.0.0/0", Except: []string{"not-a-cidr"}}},
	}}}

	objs := []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "prod", Labels: map[string]string{npeval.NamespaceNameLabel: "prod"}}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "dev", Labels: map[string]string{npeval.NamespaceNameLabel: "dev"}}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ghost", Labels: map[string]string{npeval.NamespaceNameLabel: "ghost"}}},
		hostilePod("prod", "web", web, map[string]string{"app": "web"}),
		hostilePod("prod", "db", db, map[string]string{"app": "db"}),
		hostilePod("prod", "heavy", heavy, heavyLabels),
		hostilePod("dev", "cli", cli, map[string]string{"app": "cli"}),
		hostilePod("ghost", "orphan", orphan, map[string]string{"app": "orphan"}),
		hostilePod("nowhere", "stray", stray, nil),
		dbAllowWeb, heavyDeny, badCIDR, badProto, badSelector, badPort, ghost, nowhere,
	}
	c := fakeclient.NewClientBuilder().WithObjects(objs...).Build()

	var logMu sync.Mutex
	var logLines []string
	log := funcr.New(func(prefix, args string) {
		logMu.Lock()
		logLines = append(logLines, args)
		logMu.Unlock()
	}, funcr.Options{})
	rec := &namingRecorder{FakeRecorder: events.NewFakeRecorder(100)}
	dp := fake.New()
	s := &Syncer{Client: c, Dataplane: dp, NodeName: "n1", Recorder: rec, Log: log}

	if _, err := s.Reconcile(ctx, reconcile.Request{}); err != nil {
		t.Fatalf("Reconcile: %v", err)
	}

	// Every invalid policy: one Warning Event about it naming the field, and a log line
	// naming object and field.
	wantProblems := []struct{ ns, name, field string }{
		{"prod", "bad-cidr", "spec.ingress[0].from[0].ipBlock"},
		{"prod", "bad-proto", "spec.ingress[0].ports[0].protocol"},
		{"dev", "bad-selector", "spec.podSelector"},
		{"prod", "bad-port", "spec.egress[0].ports[0]"},
		{"ghost", "ghost-pol", "spec.ingress[0].from[1]"},
		{"nowhere", "bad-except", "spec.ingress[0].from[0].ipBlock"},
	}
	rec.mu.Lock()
	about, notes := append([]string(nil), rec.about...), append([]string(nil), rec.notes...)
	rec.mu.Unlock()
	for _, w := range wantProblems {
		found := false
		for i := range about {
			if about[i] == "NetworkPolicy "+w.ns+"/"+w.name && strings.HasPrefix(notes[i], "Warning CompileError "+w.field+":") {
				found = true
			}
		}
		if !found {
			t.Errorf("no Warning Event on NetworkPolicy %s/%s naming %s; events: %q about %q", w.ns, w.name, w.field, notes, about)
		}
		logMu.Lock()
		found = false
		for _, l := range logLines {
			if strings.Contains(l, fmt.Sprintf(`"namespace"="%s"`, w.ns)) && strings.Contains(l, fmt.Sprintf(`"name"="%s"`, w.name)) &&
				strings.Contains(l, fmt.Sprintf(`"field"="%s"`, w.field)) {
				found = true
			}
		}
		logMu.Unlock()
		if !found {
			t.Errorf("no log line naming %s/%s and %s; log:\n%s", w.ns, w.name, w.field, strings.Join(logLines, "\n"))
		}
	}
	if len(about) != len(wantProblems) {
		t.Errorf("got %d Events, want %d (one per problem): %q", len(about), len(wantProblems), notes)
	}

	type probe struct {
		from, to string
		port     uint16
		allowed  bool
		why      string
	}
	probes := []probe{
		{web, db, 5432, true, "valid policy db-allow-web"},
		{cli, db, 5432, false, "db-allow-web admits only web"},
		{db, web, 80, false, "bad-port isolates db's egress and allows nothing"},
		{cli, web, 8080, true, "bad-proto's valid TCP 8080 entry"},
		{cli, web, 80, false, "neither the ICMP entry nor the bad CIDR allows anything"},
		{outside, web, 80, false, "a bad CIDR does not become 'everyone'"},
		{cli, heavy, 80, false, "heavy-deny on a pod with 3000 labels"},
		{cli, orphan, 80, true, "ghost-pol's namespaceSelector on dev"},
		{web, orphan, 80, false, "ghost-pol's empty peer matches nothing"},
		{cli, outside, 443, true, "bad-selector is ignored: dev is not isolated"},
		{cli, stray, 80, false, "bad-except's block is void: stray is isolated and nothing allowed"},
	}
	check := func(stage string) {
		t.Helper()
		tr := tracer.New(dp.Table())
		for _, p := range probes {
			pkt := tracer.Packet{Src: netip.MustParseAddr(p.from), Dst: netip.MustParseAddr(p.to), Proto: 6, DPort: p.port}
			if got := tr.Allowed(pkt); got != p.allowed {
				t.Errorf("%s: %s -> %s tcp/%d: allowed=%v, want %v (%s)", stage, p.from, p.to, p.port, got, p.allowed, p.why)
			}
		}
	}
	check("first sync")

	// The same verdicts from the independent evaluator over every pair, so the hand
	// list above is not the only judge.
	compareWithNPEval := func(stage string) {
		t.Helper()
		var pods corev1.PodList
		var nss corev1.NamespaceList
		var nps networkingv1.NetworkPolicyList
		for _, l := range []client.ObjectList{&pods, &nss, &nps} {
			if err := c.List(ctx, l); err != nil {
				t.Fatal(err)
			}
		}
		cl := npeval.Cluster{Namespaces: map[string]*model.Namespace{}}
		for i := range pods.Items {
			cl.Pods = append(cl.Pods, model.PodFromAPI(&pods.Items[i]))
		}
		for _, ns := range nss.Items {
			cl.Namespaces[ns.Name] = &model.Namespace{Name: ns.Name, Labels: ns.Labels}
		}
		for i := range nps.Items {
			cl.Policies = append(cl.Policies, &nps.Items[i])
		}
		ev := npeval.New(cl)
		tr := tracer.New(dp.Table())
		addrs := []string{web, db, heavy, cli, orphan, stray, outside}
		for _, a := range addrs {
			for _, b := range addrs {
				for _, port := range []uint16{80, 5432, 8080} {
					if a == b {
						continue
					}
					src, dst := netip.MustParseAddr(a), netip.MustParseAddr(b)
					got := tr.Allowed(tracer.Packet{Src: src, Dst: dst, Proto: 6, DPort: port})
					if want := ev.Allowed(npeval.Conn{Src: src, Dst: dst, Proto: corev1.ProtocolTCP, Port: port}); got != want {
						t.Errorf("%s: %s -> %s tcp/%d: ruleset allowed=%v, npeval %v", stage, a, b, port, got, want)
					}
				}
			}
		}
	}
	compareWithNPEval("first sync")

	// The namespace is deleted while its policy and pod remain: still enforced (the
	// namespace keeps its name label for selectors).
	if err := c.Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ghost"}}); err != nil {
		t.Fatal(err)
	}
	s.markDirty(dirtyKey{kind: kindNamespace, name: "ghost"})
	if _, err := s.Reconcile(ctx, reconcile.Request{}); err != nil {
		t.Fatalf("Reconcile after deleting the namespace: %v", err)
	}
	check("namespace deleted")
	compareWithNPEval("namespace deleted")
	if _, full, _ := dp.Counts(); full != 1 {
		t.Errorf("%d full applies, want 1: the second sync should have been incremental", full)
	}
}
