package netpol

import (
	"context"
	"errors"
	"go/build"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/internal/testns"
	"github.com/nftpolicy/nftpolicy/test/lab"
)

func newTracerEnv(t *testing.T, p Placement, opts TracerOptions) *TracerEnv {
	t.Helper()
	env, err := NewTracerEnv(context.Background(), NewModel(p), opts)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// runCase runs c on env as a subtest outcome: skipped when the environment lacks what
// it needs, skipped with the failure when the case is a known bug, failed when a case
// marked as a known bug passes (the flag must go).
func runCase(t *testing.T, env Env, c *Case, opts RunOptions) {
	t.Helper()
	err := RunCase(context.Background(), env, c, opts)
	var skip *SkipError
	switch {
	case errors.As(err, &skip):
		testns.SkipUnlessRequired(t, "%s", skip.Reason)
	case c.KnownBug != "" && err != nil:
		t.Skipf("known compiler bug (%s); remove Case.KnownBug once fixed:\n%v", c.KnownBug, err) //nolint:forbidigo // a declared expected failure: the case ran; none is declared today
	case c.KnownBug != "":
		t.Errorf("case is marked KnownBug %q but passes: remove the flag", c.KnownBug)
	case err != nil:
		t.Fatal(err)
	}
}

// TestCasesOnTracer runs every case on the pure environment for three placements (so
// pairs are on one node in one and across nodes in another) and both families. The cases of one placement run one after the
// other on a single environment, which also proves RunCase's reset.
func TestCasesOnTracer(t *testing.T) {
	placements := []struct {
		name string
		p    Placement
	}{
		{"default", DefaultPlacement},
		{"single-node", SingleNodePlacement},
		{"by-namespace", NamespacePlacement},
	}
	for _, pl := range placements {
		t.Run(pl.name, func(t *testing.T) {
			env := newTracerEnv(t, pl.p, TracerOptions{})
			for _, fam := range []lab.Family{lab.IPv4, lab.IPv6} {
				t.Run(fam.String(), func(t *testing.T) {
					for _, c := range AllCases() {
						t.Run(c.FullName(), func(t *testing.T) {
							runCase(t, env, &c, RunOptions{Family: fam})
						})
					}
				})
			}
			if probs := env.Problems(); len(probs) > 0 {
				t.Errorf("the compiler reported problems with the cases' policies: %v", probs)
			}
		})
	}
}

// upstreamIts lists every connectivity It() of upstream's network_policy.go at v1.37.2,
// as "<Context> <It>", in file order. A case missing here or in UpstreamCases fails
// TestUpstreamCasesComplete.
var upstreamIts = []string{
	ContextTCP + " should support a 'default-deny-ingress' policy",
	ContextTCP + " should support a 'default-deny-all' policy",
	ContextTCP + " should enforce policy to allow traffic from pods within server namespace based on PodSelector",
	ContextTCP + " should enforce policy to allow ingress traffic for a target",
	ContextTCP + " should enforce policy to allow ingress traffic from pods in all namespaces",
	ContextTCP + " should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
	ContextTCP + " should enforce policy based on PodSelector with MatchExpressions",
	ContextTCP + " should enforce policy based on NamespaceSelector with MatchExpressions",
	ContextTCP + " should enforce policy based on PodSelector or NamespaceSelector",
	ContextTCP + " should enforce policy based on PodSelector and NamespaceSelector",
	ContextTCP + " should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
	ContextTCP + " should enforce policy based on any PodSelectors",
	ContextTCP + " should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
	ContextTCP + " should enforce policy based on Ports",
	ContextTCP + " should enforce multiple, stacked policies with overlapping podSelectors",
	ContextTCP + " should support allow-all policy",
	ContextTCP + " should allow ingress access on one named port",
	ContextTCP + " should allow ingress access from namespace on one named port",
	ContextTCP + " should allow egress access on one named port",
	ContextTCP + " should not allow all ports if it cannot limit to the requested port",
	ContextTCP + " should enforce updated policy",
	ContextTCP + " should allow ingress access from updated namespace",
	ContextTCP + " should allow ingress access from updated pod",
	ContextTCP + " should deny ingress from pods on other namespaces",
	ContextTCP + " should deny ingress access to updated pod",
	ContextTCP + " should deny egress from pods based on PodSelector",
	ContextTCP + " should deny egress from all pods in a namespace",
	ContextTCP + " should work with Ingress, Egress specified together",
	ContextTCP + " should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)",
	ContextTCP + " should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector",
	ContextTCP + " should enforce ingress policy allowing any port traffic to a server on a specific protocol",
	ContextTCP + " should enforce multiple ingress policies with ingress allow-all policy taking precedence",
	ContextTCP + " should enforce multiple egress policies with egress allow-all policy taking precedence",
	ContextTCP + " should stop enforcing policies after they are deleted",
	ContextTCP + " should allow egress access to server in CIDR block",
	ContextTCP + " should enforce except clause while egress access to server in CIDR block",
	ContextTCP + " should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
	ContextTCP + " should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector",
	ContextTCP + " should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP",
	ContextTCP + " should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP",
	ContextTCP + " should not allow access by TCP when a policy specifies only UDP",
	ContextTCP + " should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label",
	ContextTCP + " should enforce policy based on NamespaceSelector with MatchExpressions using default ns label",
	ContextUDP + " should support a 'default-deny-ingress' policy",
	ContextUDP + " should enforce policy based on Ports",
	ContextUDP + " should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
	ContextSCTP + " should support a 'default-deny-ingress' policy",
	ContextSCTP + " should enforce policy based on Ports",
	ContextSCTP + " should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
}

func TestUpstreamCasesComplete(t *testing.T) {
	if len(upstreamIts) != 49 {
		t.Fatalf("upstream has 49 connectivity tests, the list has %d", len(upstreamIts))
	}
	var got []string
	lines := map[string]bool{}
	for _, c := range UpstreamCases() {
		got = append(got, c.FullName())
		if c.Upstream == "" || lines[c.Upstream] {
			t.Errorf("case %q: missing or duplicate upstream location %q", c.FullName(), c.Upstream)
		}
		lines[c.Upstream] = true
		if c.KnownBug != "" {
			t.Logf("known bug: %s: %s", c.FullName(), c.KnownBug)
		}
	}
	if !slices.Equal(got, upstreamIts) {
		for _, n := range upstreamIts {
			if !slices.Contains(got, n) {
				t.Errorf("not ported: %s", n)
			}
		}
		for _, n := range got {
			if !slices.Contains(upstreamIts, n) {
				t.Errorf("not upstream: %s", n)
			}
		}
		if !t.Failed() {
			t.Errorf("ported cases are not in upstream's order")
		}
	}
	for _, c := range ExtraCases() {
		if c.Upstream != "" || c.Context != ContextExtra {
			t.Errorf("extra case %q claims to be upstream", c.Name)
		}
	}
	names := map[string]bool{}
	for _, c := range AllCases() {
		if names[c.FullName()] {
			t.Errorf("duplicate case %q", c.FullName())
		}
		names[c.FullName()] = true
	}
}

// TestUpstreamSourceMatches checks the list above, and each case's line, against
// upstream's source when the module cache has it (it is not a dependency of this
// module, so the test skips otherwise).
func TestUpstreamSourceMatches(t *testing.T) {
	modcache := os.Getenv("GOMODCACHE")
	if modcache == "" {
		modcache = filepath.Join(build.Default.GOPATH, "pkg", "mod")
	}
	path := filepath.Join(modcache, "k8s.io", "kubernetes@"+UpstreamVersion, "test", "e2e", "network", "netpol", "network_policy.go")
	src, err := os.ReadFile(path)
	if err != nil {
		testns.SkipUnlessRequired(t, "upstream source not in the module cache: %v", err)
	}
	contextRe := regexp.MustCompile(`ginkgo\.Context\("([^"]+)"`)
	itRe := regexp.MustCompile(`f\.It\("([^"]+)"`)
	var its []string
	byLine := map[string]string{}
	context := ""
	for i, line := range strings.Split(string(src), "\n") {
		if m := contextRe.FindStringSubmatch(line); m != nil {
			context = m[1]
		}
		if m := itRe.FindStringSubmatch(line); m != nil {
			name := context + " " + m[1]
			its = append(its, name)
			byLine["network_policy.go:"+strconv.Itoa(i+1)] = name
		}
	}
	if !slices.Equal(its, upstreamIts) {
		t.Errorf("upstream's It()s differ from the list:\nupstream: %q\nlist:     %q", its, upstreamIts)
	}
	for _, c := range UpstreamCases() {
		if byLine[c.Upstream] != c.FullName() {
			t.Errorf("case %q says %s, which is %q", c.FullName(), c.Upstream, byLine[c.Upstream])
		}
	}
}

// wrongExpectation is default-deny-ingress with an expectation that forgets the policy.
func wrongExpectation() *Case {
	return &Case{
		Context: ContextExtra, Name: "wrong expectation",
		Pods: Refs("x/a", "x/b", "y/a"),
		Run: func(r *Run) {
			r.CreatePolicy(X, GenNetworkPolicyWithNameAndPodSelector("deny-ingress", metav1.LabelSelector{}, SetSpecIngressRules()))
			r.Validate(80, TCP, r.Reachability(true).Expect("y/a", "x/a", false))
		},
	}
}

func TestWrongExpectationFails(t *testing.T) {
	env := newTracerEnv(t, nil, TracerOptions{})
	err := RunCase(context.Background(), env, wrongExpectation(), RunOptions{})
	if err == nil {
		t.Fatal("a wrong expectation passed")
	}
	for _, want := range []string{"x/b -> x/a: expected allowed (.), got denied (X)", "y/a -> x/b", "create policy x/deny-ingress"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "y/a -> x/a") {
		t.Errorf("error reports a cell that matched:\n%v", err)
	}
}

// fakeVerdictEnv answers every probe the same way, except loopback: an enforcer that
// enforces nothing (or blocks everything). Cases must catch both.
type fakeVerdictEnv struct {
	*TracerEnv
	allowed bool
}

func (e fakeVerdictEnv) Probe(ctx context.Context, spec ProbeSpec) (*lab.Matrix, error) {
	m := lab.NewMatrix(RefNames(spec.Froms), RefNames(spec.Tos), e.allowed)
	return m.AllowSelf(), nil
}

func TestCasesCatchBrokenEnforcers(t *testing.T) {
	// With nothing enforced, only the cases whose every matrix is all-allowed pass; with
	// everything blocked, only the one whose topology is all inside the denied namespace
	// (upstream's readiness check, waitForHTTPServers, catches that enforcer).
	allAllowed := []string{
		ContextTCP + " should enforce policy to allow ingress traffic from pods in all namespaces",
		ContextTCP + " should enforce policy based on any PodSelectors", // x/b, x/c -> x/a allowed: all cells
		ContextTCP + " should support allow-all policy",
	}
	allDenied := []string{ContextTCP + " should support a 'default-deny-all' policy"}
	for _, allowed := range []bool{true, false} {
		env := fakeVerdictEnv{newTracerEnv(t, nil, TracerOptions{}), allowed}
		var passed []string
		for _, c := range AllCases() {
			if err := RunCase(context.Background(), env, &c, RunOptions{}); err == nil {
				passed = append(passed, c.FullName())
			} else if errors.As(err, new(*SkipError)) {
				t.Errorf("%s skipped: %v", c.FullName(), err)
			}
		}
		want := allAllowed
		if !allowed {
			want = allDenied
		}
		if !slices.Equal(passed, want) {
			t.Errorf("enforcer answering allowed=%v: cases passing %q, want %q", allowed, passed, want)
		}
	}
}

// flakyEnv disagrees for the first probes, like an agent that has not caught up yet.
type flakyEnv struct {
	*TracerEnv
	wrong int
	retry RetryPolicy
	specs *[]ProbeSpec
}

func (e *flakyEnv) Retry() RetryPolicy { return e.retry }

func (e *flakyEnv) Probe(ctx context.Context, spec ProbeSpec) (*lab.Matrix, error) {
	*e.specs = append(*e.specs, spec)
	if e.wrong > 0 {
		e.wrong--
		return lab.NewMatrix(RefNames(spec.Froms), RefNames(spec.Tos), true), nil
	}
	return e.TracerEnv.Probe(ctx, spec)
}

func TestRetryPolicy(t *testing.T) {
	c := UpstreamCases()[0] // default-deny-ingress: the first probe after the policy disagrees
	var specs []ProbeSpec
	env := &flakyEnv{TracerEnv: newTracerEnv(t, nil, TracerOptions{}), wrong: 2, specs: &specs}
	if err := RunCase(context.Background(), env, &c, RunOptions{}); err == nil {
		t.Fatal("no retry policy: a stale first probe must fail the case")
	}
	env.wrong = 2
	env.retry = RetryPolicy{Timeout: time.Minute, Interval: time.Millisecond}
	if err := RunCase(context.Background(), env, &c, RunOptions{}); err != nil {
		t.Fatalf("with retries the case must pass once the environment catches up: %v", err)
	}
	env.wrong = 1 << 30
	env.retry = RetryPolicy{Timeout: 20 * time.Millisecond, Interval: time.Millisecond}
	if err := RunCase(context.Background(), env, &c, RunOptions{}); err == nil || !strings.Contains(err.Error(), "probe(s) in") {
		t.Fatalf("a matrix that never matches must fail after the timeout, got %v", err)
	}
}

func TestValidateProbesPodIPAndService(t *testing.T) {
	var specs []ProbeSpec
	env := &flakyEnv{TracerEnv: newTracerEnv(t, nil, TracerOptions{}), specs: &specs}
	c := UpstreamCases()[0]
	if err := RunCase(context.Background(), env, &c, RunOptions{}); err != nil {
		t.Fatal(err)
	}
	if len(specs) != 2 || specs[0].ViaService || !specs[1].ViaService {
		t.Fatalf("want one pod-IP and one Service probe, got %+v", specs)
	}
	if specs[0].Expected == nil || specs[0].Family != lab.IPv4 || specs[0].Port != 80 || specs[0].Protocol != TCP {
		t.Errorf("probe spec %+v", specs[0])
	}
	specs = nil
	if err := RunCase(context.Background(), env, &c, RunOptions{PodIPOnly: true}); err != nil {
		t.Fatal(err)
	}
	if len(specs) != 1 || specs[0].ViaService {
		t.Errorf("PodIPOnly: want one pod-IP probe, got %+v", specs)
	}
	// Extra pods have no Service: only the pod-IP path.
	specs = nil
	for _, c := range ExtraCases() {
		if strings.Contains(c.Name, "sidecar") {
			if err := RunCase(context.Background(), env, &c, RunOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, s := range specs {
		if s.ViaService {
			t.Errorf("Service probe to extra pods: %+v", s)
		}
	}
}

func TestSkipsWhatTheEnvironmentLacks(t *testing.T) {
	env := newTracerEnv(t, nil, TracerOptions{Families: []lab.Family{lab.IPv4}})
	env.caps.SCTP = false
	env.caps.HostNetworkPods = false
	var skipped []string
	for _, c := range AllCases() {
		err := RunCase(context.Background(), env, &c, RunOptions{})
		var skip *SkipError
		if errors.As(err, &skip) {
			skipped = append(skipped, c.FullName())
		} else if err != nil {
			t.Errorf("%s: %v", c.FullName(), err)
		}
	}
	if len(skipped) != 4 || !strings.Contains(skipped[3], "hostNetwork") {
		t.Errorf("want the 3 SCTP cases and the hostNetwork case skipped, got %q", skipped)
	}
	c := UpstreamCases()[0]
	if err := RunCase(context.Background(), env, &c, RunOptions{Family: lab.IPv6}); !errors.As(err, new(*SkipError)) {
		t.Errorf("IPv6 on an IPv4-only environment: want a skip, got %v", err)
	}
}

// TestResetRestoresTheModel runs the cases that relabel and create pods and checks that
// nothing of them is left.
func TestResetRestoresTheModel(t *testing.T) {
	ctx := context.Background()
	env := newTracerEnv(t, nil, TracerOptions{})
	for _, c := range AllCases() {
		if err := RunCase(ctx, env, &c, RunOptions{}); err != nil {
			t.Fatalf("%s: %v", c.FullName(), err)
		}
		var pols networkingv1.NetworkPolicyList
		if err := env.Client().List(ctx, &pols); err != nil || len(pols.Items) > 0 {
			t.Fatalf("after %s: policies left: %d (%v)", c.FullName(), len(pols.Items), err)
		}
		var pods corev1.PodList
		if err := env.Client().List(ctx, &pods); err != nil || len(pods.Items) != len(env.Model().Pods) {
			t.Fatalf("after %s: %d pods, want %d (%v)", c.FullName(), len(pods.Items), len(env.Model().Pods), err)
		}
		for _, p := range pods.Items {
			spec, ok := env.Model().Pod(PodRef{p.Namespace, p.Name})
			if !ok || !maps.Equal(p.Labels, spec.Labels) {
				t.Fatalf("after %s: pod %s/%s has labels %v", c.FullName(), p.Namespace, p.Name, p.Labels)
			}
		}
		for _, ns := range env.Model().Namespaces {
			var obj corev1.Namespace
			if err := env.Client().Get(ctx, client.ObjectKey{Name: ns.Name}, &obj); err != nil || !maps.Equal(obj.Labels, ns.Labels) {
				t.Fatalf("after %s: namespace %s has labels %v (%v)", c.FullName(), ns.Name, obj.Labels, err)
			}
		}
	}
}

func TestModel(t *testing.T) {
	m := NewModel(nil)
	if len(m.Pods) != 9 || len(m.Namespaces) != 3 {
		t.Fatalf("model has %d pods in %d namespaces", len(m.Pods), len(m.Namespaces))
	}
	a, _ := m.Pod(Ref("y/a"))
	b, _ := m.Pod(Ref("y/b"))
	if a.Node == b.Node {
		t.Errorf("default placement puts a and b on one node")
	}
	var names []string
	for _, c := range a.Pod().Spec.Containers {
		for _, p := range c.Ports {
			names = append(names, p.Name)
		}
	}
	want := []string{"serve-80-tcp", "serve-81-tcp", "serve-80-udp", "serve-81-udp", "serve-80-sctp", "serve-81-sctp"}
	if !slices.Equal(names, want) {
		t.Errorf("container ports %v, want %v", names, want)
	}
	if len(a.ServedPorts()) != 6 {
		t.Errorf("served ports %v", a.ServedPorts())
	}
	if svc := m.Service(a.Ref()); svc.Name != "s-y-a" || len(svc.Spec.Ports) != 6 {
		t.Errorf("service %s with %d ports", svc.Name, len(svc.Spec.Ports))
	}
	always := corev1.ContainerRestartPolicyAlways
	side := PodSpec{
		InitContainers: []corev1.Container{
			{Ports: []corev1.ContainerPort{{ContainerPort: 80}}},
			{RestartPolicy: &always, Ports: []corev1.ContainerPort{{ContainerPort: 81, Protocol: UDP}}},
		},
	}
	if got := side.ServedPorts(); !slices.Equal(got, []ServedPort{{81, UDP}}) {
		t.Errorf("sidecar served ports %v", got)
	}
	if (PodSpec{Phase: corev1.PodSucceeded, Containers: a.Containers}).ServedPorts() != nil {
		t.Errorf("a completed pod serves nothing")
	}
}

// TestCasesCatchPlantedBugs plants one enforcer bug at a time in the pure environment and
// checks that the cases written for it fail (and that, without the bug, they pass).
func TestCasesCatchPlantedBugs(t *testing.T) {
	byName := map[string]Case{}
	for _, c := range AllCases() {
		byName[c.Name] = c
	}
	bugs := []struct {
		name     string
		mutation mutation
		caught   []string // cases that must fail
	}{
		{"hostNetwork pods treated as pods", mutation{pod: func(p *corev1.Pod) { p.Spec.HostNetwork = false }},
			[]string{"should never isolate or select hostNetwork pods, but match their node address in ipBlocks"}},
		{"ended pods keep their address", mutation{pod: func(p *corev1.Pod) {
			if p.Status.Phase == corev1.PodSucceeded {
				p.Status.Phase = corev1.PodRunning
			}
		}}, []string{"should ignore a completed pod whose address now belongs to a running pod"}},
		{"ports of every init container count", mutation{pod: func(p *corev1.Pod) {
			always := corev1.ContainerRestartPolicyAlways
			for i := range p.Spec.InitContainers {
				p.Spec.InitContainers[i].RestartPolicy = &always
			}
		}}, []string{"should resolve a named port that only a restartable init container (sidecar) declares"}},
		{"endPort ignored", mutation{policy: func(np *networkingv1.NetworkPolicy) {
			for i := range np.Spec.Ingress {
				for j := range np.Spec.Ingress[i].Ports {
					np.Spec.Ingress[i].Ports[j].EndPort = nil
				}
			}
			for i := range np.Spec.Egress {
				for j := range np.Spec.Egress[i].Ports {
					np.Spec.Egress[i].Ports[j].EndPort = nil
				}
			}
		}}, []string{"should enforce ingress policies with endPort ranges", "should enforce egress policies with endPort ranges"}},
		{"ipBlock except ignored", mutation{policy: func(np *networkingv1.NetworkPolicy) {
			for i := range np.Spec.Ingress {
				for j := range np.Spec.Ingress[i].From {
					if b := np.Spec.Ingress[i].From[j].IPBlock; b != nil {
						b.Except = nil
					}
				}
			}
			for i := range np.Spec.Egress {
				for j := range np.Spec.Egress[i].To {
					if b := np.Spec.Egress[i].To[j].IPBlock; b != nil {
						b.Except = nil
					}
				}
			}
		}}, []string{
			"should enforce ingress ipBlock with except, which also applies to pod addresses",
			"should enforce except clause while egress access to server in CIDR block",
			"should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
		}},
		{"egress not judged across nodes", mutation{destinationOnly: true},
			[]string{"should give same-node and cross-node pairs the same matrix"}},
	}
	for _, bug := range bugs {
		t.Run(bug.name, func(t *testing.T) {
			env := newTracerEnv(t, nil, TracerOptions{})
			for _, name := range bug.caught {
				c, ok := byName[name]
				if !ok {
					t.Fatalf("no case %q", name)
				}
				env.mutation = mutation{}
				if err := RunCase(context.Background(), env, &c, RunOptions{}); err != nil {
					t.Fatalf("%s fails without the bug: %v", name, err)
				}
				env.mutation = bug.mutation
				if err := RunCase(context.Background(), env, &c, RunOptions{}); err == nil {
					t.Errorf("%s passes with the bug", name)
				}
			}
		})
	}
}
