package netpol

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/test/lab"
)

// Protocols, for brevity in cases.
const (
	TCP  = corev1.ProtocolTCP
	UDP  = corev1.ProtocolUDP
	SCTP = corev1.ProtocolSCTP
)

// Case is one connectivity test: a topology and a sequence of steps.
type Case struct {
	// Context and Name are the upstream ginkgo.Context and It() texts for ported cases;
	// extra cases use ContextExtra and a descriptive name.
	Context, Name string
	// Upstream locates the ported It() in upstream's network_policy.go ("file:line" at
	// v1.37.2); empty for extra cases.
	Upstream string
	// Pods is the topology the case probes (upstream's per-test initializeResources
	// list); every model pod when empty. It may name extra pods the case creates before
	// its first Validate. The environment holds every model pod regardless.
	Pods []PodRef
	// Needs are the capabilities the case requires beyond probing TCP and UDP.
	Needs Needs
	// KnownBug, when set, says the case fails because of a known bug in the enforcer
	// (not in the case); test harnesses report a failure as a skip and a pass as "the bug
	// is fixed, remove the flag". Remove it with the fix.
	KnownBug string
	// Run performs the steps. It must not sleep: Validate polls as the Env says.
	Run func(r *Run)
}

// FullName is Context and Name, unique among the cases (upstream repeats It() texts in
// its UDP and SCTP contexts).
func (c *Case) FullName() string { return c.Context + " " + c.Name }

// Needs are requirements a case has of the environment.
type Needs struct {
	SCTP            bool // probes over SCTP
	ExtraPods       bool // creates ordinary pods
	HostNetworkPods bool // creates hostNetwork pods
	CompletedPods   bool // creates completed pods with stale addresses
	TwoNodes        bool // places pods on two different nodes
}

// missing returns why the environment cannot run a case with these needs, or "".
func (n Needs) missing(env Env) string {
	caps := env.Capabilities()
	var why []string
	if n.SCTP && !caps.SCTP {
		why = append(why, "SCTP probes")
	}
	if (n.ExtraPods || n.HostNetworkPods || n.CompletedPods) && !caps.ExtraPods {
		why = append(why, "extra pods")
	}
	if n.HostNetworkPods && !caps.HostNetworkPods {
		why = append(why, "hostNetwork pods")
	}
	if n.CompletedPods && !caps.CompletedPods {
		why = append(why, "completed pods")
	}
	if n.TwoNodes && len(env.Model().Nodes) < 2 {
		why = append(why, "two nodes")
	}
	if len(why) == 0 {
		return ""
	}
	return "environment lacks " + strings.Join(why, ", ")
}

// Contexts of the cases: upstream's three ginkgo.Context texts and one for the cases
// upstream lacks.
const (
	ContextTCP   = "NetworkPolicy between server and client"
	ContextUDP   = "NetworkPolicy between server and client using UDP"
	ContextSCTP  = "NetworkPolicy between server and client using SCTP"
	ContextExtra = "NetworkPolicy beyond upstream"
)

// RunOptions select how a case runs.
type RunOptions struct {
	// Family of the probes and of the addresses cases put into ipBlocks; zero means the
	// environment's first family.
	Family lab.Family
	// PodIPOnly skips the Service path even when the environment supports it.
	PodIPOnly bool
}

// SkipError is returned by RunCase when the environment cannot run the case.
type SkipError struct{ Reason string }

func (e *SkipError) Error() string { return "skipped: " + e.Reason }

// RunCase runs one case on env: it resets the environment (no policies, model labels,
// no extra pods), runs the steps, and resets again, so cases can run one after another
// on one environment. The error is the first failed step, with the steps that led to
// it; a *SkipError when env lacks what the case needs.
func RunCase(ctx context.Context, env Env, c *Case, opts RunOptions) (err error) {
	if why := c.Needs.missing(env); why != "" {
		return &SkipError{Reason: why}
	}
	caps := env.Capabilities()
	if opts.Family == 0 {
		if len(caps.Families) == 0 {
			return errors.New("environment has no address family")
		}
		opts.Family = caps.Families[0]
	}
	if !caps.HasFamily(opts.Family) {
		return &SkipError{Reason: fmt.Sprintf("environment lacks %s", opts.Family)}
	}
	if err := Reset(ctx, env); err != nil {
		return fmt.Errorf("reset before the case: %w", err)
	}
	// The case's own topology only: upstream's expectations name just the pods of each
	// test's topology (a pod outside it may be isolated by the same policy).
	r := &Run{ctx: ctx, env: env, opts: opts, pods: slices.Clone(c.Pods)}
	if len(r.pods) == 0 {
		r.pods = env.Model().PodRefs()
	}
	defer func() {
		// Clean up even after a failure, so the next case starts from the model.
		var cleanup []error
		for _, ref := range slices.Backward(r.created) {
			if derr := env.DeletePod(ctx, ref); derr != nil {
				cleanup = append(cleanup, fmt.Errorf("delete pod %s: %w", ref, derr))
			}
		}
		if rerr := Reset(ctx, env); rerr != nil {
			cleanup = append(cleanup, fmt.Errorf("reset after the case: %w", rerr))
		}
		err = errors.Join(append([]error{err}, cleanup...)...)
	}()
	c.Run(r)
	return r.Err()
}

// Reset brings env back to its model: deletes every NetworkPolicy and every pod that is
// not a model pod in the model's namespaces, and restores namespace and pod labels.
func Reset(ctx context.Context, env Env) error {
	c, m := env.Client(), env.Model()
	for _, ns := range m.Namespaces {
		var pols networkingv1.NetworkPolicyList
		if err := c.List(ctx, &pols, client.InNamespace(ns.Name)); err != nil {
			return fmt.Errorf("list policies in %s: %w", ns.Name, err)
		}
		for i := range pols.Items {
			if err := c.Delete(ctx, &pols.Items[i]); err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("delete policy %s/%s: %w", ns.Name, pols.Items[i].Name, err)
			}
		}
		var obj corev1.Namespace
		if err := c.Get(ctx, client.ObjectKey{Name: ns.Name}, &obj); err != nil {
			return fmt.Errorf("get namespace %s: %w", ns.Name, err)
		}
		if !maps.Equal(obj.Labels, ns.Labels) {
			obj.Labels = maps.Clone(ns.Labels)
			if err := c.Update(ctx, &obj); err != nil {
				return fmt.Errorf("restore labels of namespace %s: %w", ns.Name, err)
			}
		}
		var pods corev1.PodList
		if err := c.List(ctx, &pods, client.InNamespace(ns.Name)); err != nil {
			return fmt.Errorf("list pods in %s: %w", ns.Name, err)
		}
		for i := range pods.Items {
			pod := &pods.Items[i]
			ref := PodRef{pod.Namespace, pod.Name}
			spec, ok := m.Pod(ref)
			if !ok {
				if err := env.DeletePod(ctx, ref); err != nil {
					return fmt.Errorf("delete extra pod %s: %w", ref, err)
				}
				continue
			}
			if !maps.Equal(pod.Labels, spec.Labels) {
				pod.Labels = maps.Clone(spec.Labels)
				if err := c.Update(ctx, pod); err != nil {
					return fmt.Errorf("restore labels of pod %s: %w", ref, err)
				}
			}
		}
	}
	return nil
}

// Run is a case in progress. Its methods are the steps of a case; the first one that
// fails records the error and every later step does nothing, so a case reads as a plain
// sequence like upstream's (which stops at the first failed assertion).
type Run struct {
	ctx     context.Context
	env     Env
	opts    RunOptions
	pods    []PodRef
	created []PodRef
	steps   []string
	err     error
}

// Context is the case's context.
func (r *Run) Context() context.Context { return r.ctx }

// Env is the environment the case runs on.
func (r *Run) Env() Env { return r.env }

// Family is the address family of this run.
func (r *Run) Family() lab.Family { return r.opts.Family }

// Pods is the topology probed by Validate.
func (r *Run) Pods() []PodRef { return slices.Clone(r.pods) }

// Err is the first failure, annotated with the steps taken, or nil.
func (r *Run) Err() error { return r.err }

// Failed reports whether a step has failed (later steps are no-ops).
func (r *Run) Failed() bool { return r.err != nil }

// Step records what the case does next (upstream's ginkgo.By); failures list the steps.
func (r *Run) Step(format string, args ...any) {
	if r.err == nil {
		r.steps = append(r.steps, fmt.Sprintf(format, args...))
	}
}

// Fail records a failure unless one is recorded already.
func (r *Run) Fail(err error) {
	if r.err != nil || err == nil {
		return
	}
	if len(r.steps) > 0 {
		err = fmt.Errorf("%w\nsteps:\n  %s", err, strings.Join(r.steps, "\n  "))
	}
	r.err = err
}

// Failf records a formatted failure.
func (r *Run) Failf(format string, args ...any) { r.Fail(fmt.Errorf(format, args...)) }

// CreatePolicy creates a copy of np in namespace ns.
func (r *Run) CreatePolicy(ns string, np *networkingv1.NetworkPolicy) {
	if r.err != nil {
		return
	}
	obj := np.DeepCopy()
	obj.Namespace = ns
	obj.ResourceVersion = ""
	r.Step("create policy %s/%s", ns, obj.Name)
	if err := r.env.Client().Create(r.ctx, obj); err != nil {
		r.Failf("create policy %s/%s: %w", ns, obj.Name, err)
	}
}

// UpdatePolicy replaces the spec of the policy of np's name in ns with np's.
func (r *Run) UpdatePolicy(ns string, np *networkingv1.NetworkPolicy) {
	if r.err != nil {
		return
	}
	r.Step("update policy %s/%s", ns, np.Name)
	var cur networkingv1.NetworkPolicy
	if err := r.env.Client().Get(r.ctx, client.ObjectKey{Namespace: ns, Name: np.Name}, &cur); err != nil {
		r.Failf("get policy %s/%s: %w", ns, np.Name, err)
		return
	}
	cur.Spec = *np.Spec.DeepCopy()
	if err := r.env.Client().Update(r.ctx, &cur); err != nil {
		r.Failf("update policy %s/%s: %w", ns, np.Name, err)
	}
}

// DeletePolicy deletes one policy.
func (r *Run) DeletePolicy(ns, name string) {
	if r.err != nil {
		return
	}
	r.Step("delete policy %s/%s", ns, name)
	np := &networkingv1.NetworkPolicy{}
	np.Namespace, np.Name = ns, name
	if err := r.env.Client().Delete(r.ctx, np); err != nil {
		r.Failf("delete policy %s/%s: %w", ns, name, err)
	}
}

// DeletePolicies deletes every policy in the model's namespaces (upstream's
// cleanNetworkPolicies).
func (r *Run) DeletePolicies() {
	if r.err != nil {
		return
	}
	r.Step("delete all policies")
	for _, ns := range r.env.Model().Namespaces {
		var pols networkingv1.NetworkPolicyList
		if err := r.env.Client().List(r.ctx, &pols, client.InNamespace(ns.Name)); err != nil {
			r.Failf("list policies in %s: %w", ns.Name, err)
			return
		}
		for i := range pols.Items {
			if err := r.env.Client().Delete(r.ctx, &pols.Items[i]); err != nil {
				r.Failf("delete policy %s/%s: %w", ns.Name, pols.Items[i].Name, err)
				return
			}
		}
	}
}

// AddNamespaceLabel sets a label on a namespace.
func (r *Run) AddNamespaceLabel(ns, key, value string) {
	r.Step("label namespace %s %s=%s", ns, key, value)
	r.updateNamespace(ns, func(l map[string]string) { l[key] = value })
}

// DeleteNamespaceLabel removes a label from a namespace.
func (r *Run) DeleteNamespaceLabel(ns, key string) {
	r.Step("unlabel namespace %s %s", ns, key)
	r.updateNamespace(ns, func(l map[string]string) { delete(l, key) })
}

func (r *Run) updateNamespace(ns string, edit func(map[string]string)) {
	if r.err != nil {
		return
	}
	var obj corev1.Namespace
	if err := r.env.Client().Get(r.ctx, client.ObjectKey{Name: ns}, &obj); err != nil {
		r.Failf("get namespace %s: %w", ns, err)
		return
	}
	if obj.Labels == nil {
		obj.Labels = map[string]string{}
	}
	edit(obj.Labels)
	if err := r.env.Client().Update(r.ctx, &obj); err != nil {
		r.Failf("update namespace %s: %w", ns, err)
	}
}

// AddPodLabels adds labels to a pod ("ns/name").
func (r *Run) AddPodLabels(pod string, labels map[string]string) {
	r.Step("label pod %s %v", pod, labels)
	r.updatePod(Ref(pod), func(p *corev1.Pod) {
		if p.Labels == nil {
			p.Labels = map[string]string{}
		}
		maps.Copy(p.Labels, labels)
	})
}

// ResetPodLabels gives a pod back exactly its model labels (upstream's ResetPodLabels).
func (r *Run) ResetPodLabels(pod string) {
	r.Step("reset labels of pod %s", pod)
	spec, ok := r.env.Model().Pod(Ref(pod))
	if !ok {
		r.Failf("reset labels: %s is not a model pod", pod)
		return
	}
	r.updatePod(Ref(pod), func(p *corev1.Pod) { p.Labels = maps.Clone(spec.Labels) })
}

func (r *Run) updatePod(ref PodRef, edit func(*corev1.Pod)) {
	if r.err != nil {
		return
	}
	var obj corev1.Pod
	if err := r.env.Client().Get(r.ctx, client.ObjectKey{Namespace: ref.Namespace, Name: ref.Name}, &obj); err != nil {
		r.Failf("get pod %s: %w", ref, err)
		return
	}
	edit(&obj)
	if err := r.env.Client().Update(r.ctx, &obj); err != nil {
		r.Failf("update pod %s: %w", ref, err)
	}
}

// CreatePod creates an extra pod; RunCase deletes it when the case ends.
func (r *Run) CreatePod(spec PodSpec) {
	if r.err != nil {
		return
	}
	r.Step("create pod %s on %s (hostNetwork=%v, phase=%q)", spec.Ref(), spec.Node, spec.HostNetwork, spec.Phase)
	if err := r.env.CreatePod(r.ctx, spec); err != nil {
		r.Failf("create pod %s: %w", spec.Ref(), err)
		return
	}
	r.created = append(r.created, spec.Ref())
}

// Pod reads a pod ("ns/name") from the API; nil after a failure.
func (r *Run) Pod(pod string) *corev1.Pod {
	if r.err != nil {
		return nil
	}
	ref := Ref(pod)
	var obj corev1.Pod
	if err := r.env.Client().Get(r.ctx, client.ObjectKey{Namespace: ref.Namespace, Name: ref.Name}, &obj); err != nil {
		r.Failf("get pod %s: %w", ref, err)
		return nil
	}
	return &obj
}

// PodIP is the pod's address of the run's family, from its status (a hostNetwork pod's
// is its node's).
func (r *Run) PodIP(pod string) netip.Addr {
	p := r.Pod(pod)
	if p == nil {
		return netip.Addr{}
	}
	ips := []string{p.Status.PodIP}
	for _, ip := range p.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	for _, s := range ips {
		if a, err := netip.ParseAddr(s); err == nil && (a.Unmap().Is4() == (r.opts.Family == lab.IPv4)) {
			return a.Unmap()
		}
	}
	r.Failf("pod %s has no %s address in its status", pod, r.opts.Family)
	return netip.Addr{}
}

// HostCIDR is the pod's address as a one-address CIDR (/32 or /128), as upstream builds
// its ipBlocks.
func (r *Run) HostCIDR(pod string) string {
	ip := r.PodIP(pod)
	if !ip.IsValid() {
		return ""
	}
	return netip.PrefixFrom(ip, ip.BitLen()).String()
}

// HostSourceEnv is implemented by environments where a host-network pod's traffic may
// carry more source addresses than its node's (e.g. a VXLAN device's, as with Flannel).
type HostSourceEnv interface {
	HostSourceAddrs(node string, f lab.Family) []netip.Addr
}

// HostSourceCIDRs are one-address CIDRs of every source address traffic of the
// host-network pod carries: its address, plus what the environment adds.
func (r *Run) HostSourceCIDRs(pod string) []string {
	out := []string{r.HostCIDR(pod)}
	if hs, ok := r.env.(HostSourceEnv); ok {
		for _, a := range hs.HostSourceAddrs(r.Node(pod), r.opts.Family) {
			if c := netip.PrefixFrom(a, a.BitLen()).String(); c != out[0] {
				out = append(out, c)
			}
		}
	}
	return out
}

// LargeCIDR is the /4 holding the pod's address (upstream's makeLargeCIDRForIP): a block
// around the pod that holds many other addresses, every pod's in practice.
func (r *Run) LargeCIDR(pod string) string {
	ip := r.PodIP(pod)
	if !ip.IsValid() {
		return ""
	}
	return netip.PrefixFrom(ip, 4).Masked().String()
}

// Node is the node a pod runs on, from its spec.
func (r *Run) Node(pod string) string {
	if p := r.Pod(pod); p != nil {
		return p.Spec.NodeName
	}
	return ""
}

// Reachability starts an expectation over the run's topology, every cell allowed or
// denied (upstream's NewReachability(k8s.AllPodStrings(), defaultExpectation)).
func (r *Run) Reachability(allowed bool) *Reachability {
	names := RefNames(r.pods)
	return &Reachability{pods: slices.Clone(r.pods), m: lab.NewMatrix(names, names, allowed)}
}

// Validate probes port/protocol from every pod of the topology to every pod and compares
// with want, polling as the environment's RetryPolicy says. It checks the pod-IP path
// and, where the environment has Services and every destination is a model pod (which
// has one), the Service path upstream uses.
//
// Loopback (a pod probing itself) follows no policy: through its own pod IP the packet
// never leaves the pod, so the pod-IP path expects it allowed whatever want says; through
// a Service it hairpins through the node and CNIs differ (kubernetes#95879), so the
// Service path ignores it, as upstream does.
func (r *Run) Validate(port int32, proto corev1.Protocol, want *Reachability) {
	if r.err != nil {
		return
	}
	caps := r.env.Capabilities()
	if proto == SCTP && !caps.SCTP {
		r.Failf("case probes SCTP but does not declare Needs.SCTP")
		return
	}
	r.Step("validate %s/%d %s", strings.ToLower(string(proto)), port, r.opts.Family)
	viaService := []bool{false}
	if caps.Services && !r.opts.PodIPOnly {
		all := true
		for _, p := range want.pods {
			if _, ok := r.env.Model().Pod(p); !ok {
				all = false
			}
		}
		if all {
			viaService = append(viaService, true)
		}
	}
	for _, svc := range viaService {
		if err := r.validate(port, proto, svc, want); err != nil {
			r.Fail(err)
			return
		}
	}
}

func (r *Run) validate(port int32, proto corev1.Protocol, viaService bool, want *Reachability) error {
	path := "pod IP"
	if viaService {
		path = "Service"
	}
	expected := want.m.Clone()
	expected.Title = fmt.Sprintf("%s/%d %s %s", strings.ToLower(string(proto)), port, r.opts.Family, path)
	if !viaService {
		expected.AllowSelf()
	}
	spec := ProbeSpec{
		Port: port, Protocol: proto, Family: r.opts.Family, ViaService: viaService,
		Froms: slices.Clone(want.pods), Tos: slices.Clone(want.pods), Expected: expected,
	}
	retry := r.env.Retry()
	start := time.Now()
	for attempt := 1; ; attempt++ {
		got, err := r.env.Probe(r.ctx, spec)
		if err != nil {
			return fmt.Errorf("probe %s: %w", expected.Title, err)
		}
		exp := expected
		if viaService {
			exp = expected.Clone()
			for _, p := range want.pods {
				if ok, found := got.Get(p.String(), p.String()); found {
					exp.Set(p.String(), p.String(), ok)
				}
			}
		}
		diff := lab.Diff(exp, got)
		if diff == "" {
			return nil
		}
		if retry.Timeout <= 0 || time.Since(start) >= retry.Timeout {
			return fmt.Errorf("after %d probe(s) in %v: %s", attempt, time.Since(start).Round(time.Millisecond), diff)
		}
		// Wait for the enforcer to catch up; this is the environment's poll interval, not a
		// fixed sleep in a case.
		t := time.NewTimer(retry.Interval)
		select {
		case <-r.ctx.Done():
			t.Stop()
			return fmt.Errorf("%w while waiting for: %s", r.ctx.Err(), diff)
		case <-t.C:
		}
	}
}

// Peer matches pods by namespace and name; an empty field matches everything
// (upstream's Peer).
type Peer struct {
	Namespace, Pod string
}

// Matches reports whether the peer matches the pod.
func (p Peer) Matches(ref PodRef) bool {
	return (p.Namespace == "" || p.Namespace == ref.Namespace) && (p.Pod == "" || p.Pod == ref.Name)
}

// Reachability is an expected matrix over a topology, with upstream's setters.
type Reachability struct {
	pods []PodRef
	m    *lab.Matrix
}

// Expect sets one cell (pods as "ns/name").
func (x *Reachability) Expect(from, to string, allowed bool) *Reachability {
	x.m.Set(Ref(from).String(), Ref(to).String(), allowed)
	return x
}

// ExpectPeer sets every cell whose source matches from and destination matches to.
func (x *Reachability) ExpectPeer(from, to Peer, allowed bool) *Reachability {
	for _, f := range x.pods {
		if !from.Matches(f) {
			continue
		}
		for _, t := range x.pods {
			if to.Matches(t) {
				x.m.Set(f.String(), t.String(), allowed)
			}
		}
	}
	return x
}

// ExpectAllIngress sets the whole column of pod (all traffic to it).
func (x *Reachability) ExpectAllIngress(pod string, allowed bool) *Reachability {
	x.m.SetTo(Ref(pod).String(), allowed)
	return x
}

// ExpectAllEgress sets the whole row of pod (all traffic from it).
func (x *Reachability) ExpectAllEgress(pod string, allowed bool) *Reachability {
	x.m.SetFrom(Ref(pod).String(), allowed)
	return x
}

// Pods is the topology of the expectation.
func (x *Reachability) Pods() []PodRef { return slices.Clone(x.pods) }

// Matrix is the expected matrix (a copy).
func (x *Reachability) Matrix() *lab.Matrix { return x.m.Clone() }
