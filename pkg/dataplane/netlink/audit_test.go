package netlink

// Audit mode against the real kernel: compiled rulesets with audited policies are
// applied to a node namespace of a lab (pods are namespaces behind veths, routed by
// the node, so every connection crosses the node's forward hook) and real TCP and UDP
// connections between the pods must get the verdicts pkg/tracer gives over the same
// ruleset, and the kernel's counters — those of the audit-deny and audit-allow rules
// above all — must hold exactly the packets the tracer sends through them.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/internal/testns"
	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
	"github.com/nftpolicy/nftpolicy/pkg/tracer"
	"github.com/nftpolicy/nftpolicy/test/lab"
)

// probeTimeout bounds a probe. A dropped TCP connection sends its SYN again after
// the kernel's retransmission timeout (1 s, then 2 s): each SYN is one more packet
// through the class chains, and the probe reads how many it sent (TCP_INFO) rather
// than racing the timer, which a loaded machine loses. A UDP probe sends one datagram.
// The rest of an allowed connection, replies included, is established and meets no
// counted rule.
const probeTimeout = 2500 * time.Millisecond

// kernelPod is a pod of the lab and of the snapshot.
type kernelPod struct {
	ns, name string
	v4, v6   netip.Addr
	lab      *lab.Pod
}

func (p *kernelPod) key() string { return p.ns + "/" + p.name }

func (p *kernelPod) addr(fam ruleset.Family) netip.Addr {
	if fam == ruleset.IPv6 {
		return p.v6
	}
	return p.v4
}

// kernelProbe is one connection: its packet as the tracer sees it and what happened.
type kernelProbe struct {
	from, to *kernelPod
	pkt      tracer.Packet
	kernel   bool // the connection was established (TCP) or echoed (UDP)
	// packets is the number of first packets the probe sent: 1, or with retransmitted
	// SYNs more.
	packets uint64
	err     error
	trace   tracer.Result
}

func (p *kernelProbe) String() string {
	return fmt.Sprintf("%s -> %s %s", p.from.key(), p.to.key(), p.pkt)
}

// auditLab is a node with pods x/a, x/b, y/a, y/b and z/a (dual-stack), each serving
// TCP 80 and 81 and UDP 80, and a dataplane programming the node's table.
type auditLab struct {
	node *lab.Node
	pods []*kernelPod
	d    *Dataplane
}

func newAuditLab(t *testing.T) *auditLab {
	t.Helper()
	if os.Geteuid() != 0 {
		testns.SkipUnlessRequired(t, "kernel test: needs root (a lab node and its pods: network namespaces, veths, nftables); run e.g. `sudo -E go test ./pkg/dataplane/netlink -run Audit`")
	}
	// nft itself is only used to show the table when something fails, but a machine
	// without it is not one these tests were meant for (make deps installs it).
	if _, err := exec.LookPath("nft"); err != nil {
		testns.SkipUnlessRequired(t, "kernel test: nft not installed (make deps)")
	}
	l := lab.NewForTest(t) // skips unless root
	node, err := l.AddNode("n1")
	if err != nil {
		testns.SkipUnlessRequired(t, "kernel test: cannot create a lab node: %v", err)
	}
	al := &auditLab{node: node}
	for i, k := range []string{"x/a", "x/b", "y/a", "y/b", "z/a"} {
		ns, name, _ := strings.Cut(k, "/")
		p := &kernelPod{ns: ns, name: name,
			v4: netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), v6: netip.MustParseAddr(fmt.Sprintf("fd00:10::%d", i+1))}
		if p.lab, err = l.AddPod(node, ns+name, p.v4, p.v6); err != nil {
			t.Fatalf("pod %s: %v", k, err)
		}
		for _, port := range []int{80, 81} {
			if _, err := p.lab.ServeTCP(port); err != nil {
				t.Fatalf("pod %s: %v", k, err)
			}
		}
		if _, err := p.lab.ServeUDP(80); err != nil {
			t.Fatalf("pod %s: %v", k, err)
		}
		al.pods = append(al.pods, p)
	}
	al.d, err = New(WithNetNSPath(node.NS.Path()), WithLogger(testr.NewWithOptions(t, testr.Options{Verbosity: 1})))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return al
}

// snapshot is the lab's cluster with the policies.
func (al *auditLab) snapshot(nps []*networkingv1.NetworkPolicy, cnps []*cnp.ClusterNetworkPolicy) *model.Snapshot {
	snap := &model.Snapshot{NodeName: "n1", Namespaces: map[string]*model.Namespace{}, Policies: nps, ClusterPolicies: cnps,
		Nodes: []*model.Node{{Name: "n1"}}}
	for _, p := range al.pods {
		snap.Namespaces[p.ns] = &model.Namespace{Name: p.ns, Labels: map[string]string{compiler.NamespaceNameLabel: p.ns}}
		snap.Pods = append(snap.Pods, &model.Pod{Namespace: p.ns, Name: p.name, NodeName: "n1", Phase: corev1.PodRunning,
			Labels: map[string]string{"pod": p.name}, IPs: []netip.Addr{p.v4, p.v6}})
	}
	return snap
}

// probes are every ordered pair of pods, both families, TCP 80 and 81 and UDP 80.
func (al *auditLab) probes() []*kernelProbe {
	var out []*kernelProbe
	for _, from := range al.pods {
		for _, to := range al.pods {
			if from == to {
				continue
			}
			for _, fam := range []ruleset.Family{ruleset.IPv4, ruleset.IPv6} {
				for _, pp := range []struct {
					proto uint8
					port  uint16
				}{{6, 80}, {6, 81}, {17, 80}} {
					out = append(out, &kernelProbe{from: from, to: to,
						pkt: tracer.Packet{Src: from.addr(fam), Dst: to.addr(fam), Proto: pp.proto, DPort: pp.port}})
				}
			}
		}
	}
	return out
}

// run sends one connection per probe (16 at a time) and records whether it got
// through.
func (al *auditLab) run(t *testing.T, probes []*kernelProbe) {
	t.Helper()
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for _, p := range probes {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			p.kernel, p.packets, p.err = connectOnce(t.Context(), p.from.lab.NS, p.pkt)
		})
	}
	wg.Wait()
	for _, p := range probes {
		if p.err != nil {
			t.Fatalf("%s: %v", p, p.err)
		}
	}
}

// connectOnce opens one TCP connection or sends one UDP datagram and waits for its
// echo; it returns whether that succeeded within probeTimeout and how many packets
// started the connection (SYNs, retransmissions included). The error is set only when
// the probe could not be carried out.
func connectOnce(ctx context.Context, from *lab.Netns, pkt tracer.Packet) (bool, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	to := netip.AddrPortFrom(pkt.Dst, pkt.DPort)
	switch pkt.Proto {
	case 6:
		return connectTCP(from, to)
	case 17:
		c, err := from.DialContext(ctx, "udp", to.String())
		if err != nil {
			return false, 0, err
		}
		defer c.Close()
		if _, err := c.Write([]byte("audit probe")); err != nil {
			return false, 0, err
		}
		deadline, _ := ctx.Deadline()
		_ = c.SetReadDeadline(deadline)
		buf := make([]byte, 512)
		n, err := c.Read(buf)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return false, 1, nil
		}
		if err != nil {
			return false, 0, err
		}
		return strings.Contains(string(buf[:n]), "audit probe"), 1, nil
	}
	return false, 0, fmt.Errorf("protocol %d", pkt.Proto)
}

// connectTCP connects a non-blocking socket made in the namespace, waits up to
// probeTimeout, reads the SYNs sent from TCP_INFO and closes with RST (SO_LINGER 0).
func connectTCP(from *lab.Netns, to netip.AddrPort) (bool, uint64, error) {
	var domain int
	var sa unix.Sockaddr
	if to.Addr().Is4() {
		domain, sa = unix.AF_INET, &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()}
	} else {
		domain, sa = unix.AF_INET6, &unix.SockaddrInet6{Port: int(to.Port()), Addr: to.Addr().As16()}
	}
	fd := -1
	err := from.Do(func() error {
		var err error
		fd, err = unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
			return fmt.Errorf("connect %s: %w", to, err)
		}
		return nil
	})
	if fd >= 0 {
		defer func() {
			_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
			unix.Close(fd)
		}()
	}
	if err != nil {
		return false, 0, err
	}
	deadline := time.Now().Add(probeTimeout)
	connected := false
	for {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(pfd, int(left.Milliseconds())+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false, 0, fmt.Errorf("poll: %w", err)
		}
		if n > 0 {
			soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
			if err != nil {
				return false, 0, err
			}
			if soErr != 0 {
				return false, 0, fmt.Errorf("connect %s: %w", to, unix.Errno(soErr))
			}
			connected = true
		}
		break
	}
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return false, 0, fmt.Errorf("TCP_INFO: %w", err)
	}
	return connected, 1 + uint64(info.Total_retrans), nil
}

// ruleKey is a rule of the table: chain and index.
type ruleKey struct {
	chain string
	rule  int
}

// kernelRun is the outcome of a scenario: the probes, traced, and the counts.
type kernelRun struct {
	rs     *ruleset.Ruleset
	probes []*kernelProbe
	// audit counts, per audit chain ("audit-deny ingress [x/deny-all]"), the probes
	// the tracer sends through its counted rule.
	audit map[string]int
	// nested are the probes whose judgement went from a shadow copy of a chain
	// reached by jump (a NetworkPolicy's chain) by goto to an enforce- copy.
	nested []*kernelProbe
}

// applyAndProbe compiles the scenario, replaces the node's table with it (counters
// from zero), sends every probe and checks the kernel against the tracer: each
// verdict, and every counted rule's packets. It returns the traced probes.
func (al *auditLab) applyAndProbe(t *testing.T, nps []*networkingv1.NetworkPolicy, cnps []*cnp.ClusterNetworkPolicy, opts compiler.Options) *kernelRun {
	t.Helper()
	ctx := t.Context()
	res := compiler.Compile(al.snapshot(nps, cnps), opts)
	for _, p := range res.Problems {
		t.Fatalf("compile: %v", p)
	}
	rs := res.Ruleset
	if err := al.d.Delete(ctx); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := al.d.Apply(ctx, rs, dataplane.ApplyOptions{Full: true}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	// Connections of an earlier scenario must not pass as established.
	if _, err := exec.LookPath("conntrack"); err == nil {
		_, _ = al.node.NS.Exec(ctx, "conntrack", "-F")
	}

	run := &kernelRun{rs: rs, probes: al.probes(), audit: map[string]int{}}
	al.run(t, run.probes)

	tr := tracer.New(rs)
	want := map[ruleKey]uint64{}
	retransmitted := 0
	for _, p := range run.probes {
		if p.packets > 1 {
			retransmitted++
		}
		p.trace = tr.Trace(p.pkt)
		if p.kernel != p.trace.Allowed() {
			t.Errorf("%s: the kernel %s, the tracer %s:\n%s", p, passed(p.kernel), passed(p.trace.Allowed()), formatSteps(p.trace.Steps))
		}
		for i, s := range p.trace.Steps {
			if s.Rule < 0 {
				continue
			}
			r := rs.Chain(s.Chain).Rules[s.Rule]
			if r.Counter {
				want[ruleKey{s.Chain, s.Rule}] += p.packets
			}
			co := rs.Owners.Chain(s.Chain)
			if co == nil {
				continue
			}
			if ro, _ := rs.Owners.Rule(s.Chain, s.Rule); (ro.Role == ruleset.RoleAuditDeny || ro.Role == ruleset.RoleAuditAllow) && r.Counter {
				var pols []string
				for _, ref := range co.Policies {
					pols = append(pols, ref.String())
				}
				run.audit[fmt.Sprintf("%s %s [%s]", ro.Role, co.Direction, strings.Join(pols, " "))]++
			}
			// The nested frame: a shadow chain entered by jump leaving by goto to an
			// enforce- copy.
			if co.Role == ruleset.RoleShadow && strings.HasPrefix(s.Verdict, "goto enforce-") && enteredByJump(rs, p.trace.Steps, i) {
				run.nested = append(run.nested, p)
			}
		}
	}

	t.Logf("%d connections, %d allowed by the kernel, %d with a retransmitted SYN", len(run.probes), run.count(func(p *kernelProbe) bool { return p.kernel }), retransmitted)

	got, err := al.d.Counters(ctx)
	if err != nil {
		t.Fatalf("Counters: %v", err)
	}
	for _, ch := range rs.Chains {
		rules := got[ch.Name]
		if len(rules) != len(ch.Rules) {
			t.Errorf("chain %s: the kernel has %d rules, want %d", ch.Name, len(rules), len(ch.Rules))
			continue
		}
		for i, r := range ch.Rules {
			if rules[i].Counted != r.Counter {
				t.Errorf("chain %s rule %d: counted %v in the kernel, want %v", ch.Name, i, rules[i].Counted, r.Counter)
				continue
			}
			if r.Counter && rules[i].Packets != want[ruleKey{ch.Name, i}] {
				t.Errorf("chain %s rule %d (%s): the kernel counted %d packets, the tracer sent %d through it",
					ch.Name, i, ruleset.FormatRule(r), rules[i].Packets, want[ruleKey{ch.Name, i}])
			}
		}
	}
	if t.Failed() {
		if out, err := al.node.NS.Exec(ctx, "nft", "list", "table", "inet", rs.Table); err == nil {
			t.Logf("the node's table:\n%s", out)
		}
	}
	return run
}

// enteredByJump reports whether the chain of steps[i] was entered by a jump from a
// regular chain (an isolation chain's jump to a policy's chain), not by the dispatch
// map of a base chain or by a goto: the step before it that named it as target.
func enteredByJump(rs *ruleset.Ruleset, steps []tracer.Step, i int) bool {
	for j := i - 1; j >= 0; j-- {
		if steps[j].Target == steps[i].Chain {
			return strings.HasPrefix(steps[j].Verdict, "jump ") && rs.Chain(steps[j].Chain).Base == nil
		}
	}
	return false
}

func passed(ok bool) string {
	if ok {
		return "passed it"
	}
	return "dropped it"
}

func formatSteps(steps []tracer.Step) string {
	var b strings.Builder
	for _, s := range steps {
		fmt.Fprintf(&b, "\t%s -> %s\n", s, s.Verdict)
	}
	return b.String()
}

// count returns how many probes match f.
func (r *kernelRun) count(f func(*kernelProbe) bool) int {
	n := 0
	for _, p := range r.probes {
		if f(p) {
			n++
		}
	}
	return n
}

// expectAudit checks the traced audit counts (which the kernel's counters were checked
// against) and, for every probe from a pod to a pod, the kernel's verdict.
func (r *kernelRun) expectAudit(t *testing.T, audit map[string]int, allowed func(from, to string, proto uint8, port uint16) bool) {
	t.Helper()
	for k, n := range audit {
		if r.audit[k] != n {
			t.Errorf("%s: %d connections counted, want %d", k, r.audit[k], n)
		}
	}
	for k, n := range r.audit {
		if _, ok := audit[k]; !ok {
			t.Errorf("%s: %d connections counted, want none", k, n)
		}
	}
	for _, p := range r.probes {
		if want := allowed(p.from.key(), p.to.key(), p.pkt.Proto, p.pkt.DPort); p.kernel != want {
			t.Errorf("%s: the kernel %s, the policies say allowed=%v", p, passed(p.kernel), want)
		}
	}
}

func auditedNP(np *networkingv1.NetworkPolicy) *networkingv1.NetworkPolicy {
	np.Annotations = map[string]string{compiler.AuditAnnotation: compiler.ModeAudit}
	return np
}

func auditedCNP(p *cnp.ClusterNetworkPolicy) *cnp.ClusterNetworkPolicy {
	p.Annotations = map[string]string{compiler.AuditAnnotation: compiler.ModeAudit}
	return p
}

func npOf(ns, name string, pod map[string]string, types ...networkingv1.PolicyType) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: pod}, PolicyTypes: types}}
}

func nsSelector(ns string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: map[string]string{compiler.NamespaceNameLabel: ns}}
}

// TestAuditInKernel: the audit scenarios of pkg/compiler's tests against the kernel.
// 5 pods × 4 peers × 2 families × 3 ports = 120 connections per scenario.
func TestAuditInKernel(t *testing.T) {
	al := newAuditLab(t)
	const perPair = 6 // probes per ordered pair: 2 families × (TCP 80, TCP 81, UDP 80)

	t.Run("audited deny-all", func(t *testing.T) {
		// x/deny-all audited: nothing is dropped; every connection into x is counted.
		r := al.applyAndProbe(t, []*networkingv1.NetworkPolicy{
			auditedNP(npOf("x", "deny-all", nil, networkingv1.PolicyTypeIngress)),
		}, nil, compiler.Options{})
		r.expectAudit(t, map[string]int{"audit-deny ingress [x/deny-all]": 2 * 4 * perPair},
			func(from, to string, proto uint8, port uint16) bool { return true })
	})

	t.Run("audited allow beside enforced", func(t *testing.T) {
		// Enforced: x/a accepts only pod b of x. Audited: x/a also from namespace y
		// (would allow what is dropped), and x/b only from its namespace (would deny
		// what passes).
		aFromB := npOf("x", "a-from-b", map[string]string{"pod": "a"}, networkingv1.PolicyTypeIngress)
		aFromB.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"pod": "b"}}}}}}
		aFromY := npOf("x", "a-from-y", map[string]string{"pod": "a"}, networkingv1.PolicyTypeIngress)
		aFromY.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: nsSelector("y")}}}}
		bFromX := npOf("x", "b-from-x", map[string]string{"pod": "b"}, networkingv1.PolicyTypeIngress)
		bFromX.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{}}}}}
		r := al.applyAndProbe(t, []*networkingv1.NetworkPolicy{aFromB, auditedNP(aFromY), auditedNP(bFromX)}, nil, compiler.Options{})
		r.expectAudit(t, map[string]int{
			"audit-allow ingress [x/a-from-y]": 2 * perPair, // y/a, y/b → x/a
			"audit-deny ingress [x/b-from-x]":  3 * perPair, // y/a, y/b, z/a → x/b
		}, func(from, to string, proto uint8, port uint16) bool { return to != "x/a" || from == "x/b" })
		// The nested frame: the shadow isolation chain of x/a jumps to the shadow copies
		// of a-from-b and a-from-y, whose accepts became `goto enforce-…`; the enforce
		// copy's verdict is the kernel's and nothing returns into the shadow isolation
		// chain. x/b → x/a: a-from-b accepts, the enforce copy accepts (counted
		// nowhere). y → x/a: a-from-y accepts, the enforce copy drops in audit-allow (had
		// the judgement returned into the shadow isolation chain, it would have gone on
		// to its drop and the other enforce copy: dropped, not counted).
		if len(r.nested) != 3*perPair {
			t.Errorf("%d connections went from a jumped shadow chain to an enforce copy, want %d (x/b, y/a, y/b → x/a)", len(r.nested), 3*perPair)
		}
		for _, p := range r.nested {
			last := p.trace.Last()
			wantChain, wantVerdict := "enforce-in-", "accept"
			if p.from.key() != "x/b" {
				wantChain, wantVerdict = "audit-allow-in-", "drop"
			}
			if p.to.key() != "x/a" || !strings.HasPrefix(last.Chain, wantChain) || last.Verdict != wantVerdict || p.kernel != (wantVerdict == "accept") {
				t.Errorf("nested frame: %s: the kernel %s; want %s in %s…, traced:\n%s", p, passed(p.kernel), wantVerdict, wantChain, formatSteps(p.trace.Steps))
			}
		}
	})

	t.Run("audited ClusterNetworkPolicy", func(t *testing.T) {
		// Enforced: x allows all ingress, y denies all ingress. Audited Admin policies:
		// Deny y → x (over the enforced allow) and Accept x → y (over the enforced
		// deny-all), and a Pass z → x on TCP 81 (to the NetworkPolicies: the same).
		allowAll := npOf("x", "allow-all", nil, networkingv1.PolicyTypeIngress)
		allowAll.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{}}
		denyAll := npOf("y", "deny-all", nil, networkingv1.PolicyTypeIngress)
		tcp81 := []cnp.ClusterNetworkPolicyProtocol{{TCP: &cnp.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnp.Port{Number: 81}}}}
		noYToX := &cnp.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "no-y-to-x"}, Spec: cnp.ClusterNetworkPolicySpec{
			Tier: cnp.AdminTier, Priority: 10, Subject: cnp.ClusterNetworkPolicySubject{Namespaces: nsSelector("x")},
			Ingress: []cnp.ClusterNetworkPolicyIngressRule{
				{Name: "pass-z", Action: cnp.ClusterNetworkPolicyRuleActionPass, From: []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: nsSelector("z")}}, Protocols: tcp81},
				{Name: "block-y", Action: cnp.ClusterNetworkPolicyRuleActionDeny, From: []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: nsSelector("y")}}},
			},
		}}
		xToY := &cnp.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "x-to-y"}, Spec: cnp.ClusterNetworkPolicySpec{
			Tier: cnp.AdminTier, Priority: 20, Subject: cnp.ClusterNetworkPolicySubject{Namespaces: nsSelector("y")},
			Ingress: []cnp.ClusterNetworkPolicyIngressRule{
				{Name: "from-x", Action: cnp.ClusterNetworkPolicyRuleActionAccept, From: []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: nsSelector("x")}}},
			},
		}}
		r := al.applyAndProbe(t, []*networkingv1.NetworkPolicy{allowAll, denyAll}, []*cnp.ClusterNetworkPolicy{auditedCNP(noYToX), auditedCNP(xToY)}, compiler.Options{})
		r.expectAudit(t, map[string]int{
			"audit-deny ingress [ClusterNetworkPolicy/no-y-to-x]": 2 * 2 * perPair, // y/a, y/b → x/a, x/b
			"audit-allow ingress [ClusterNetworkPolicy/x-to-y]":   2 * 2 * perPair, // x/a, x/b → y/a, y/b
		}, func(from, to string, proto uint8, port uint16) bool { return !strings.HasPrefix(to, "y/") })
	})

	// Options.Audit: nothing enforced, every drop counted and charged to what drops.
	wholeNode := func(t *testing.T, logDenied bool) {
		denyAll := npOf("x", "deny-all", nil, networkingv1.PolicyTypeIngress)
		toZ := npOf("y", "to-z", map[string]string{"pod": "a"}, networkingv1.PolicyTypeEgress)
		toZ.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: nsSelector("z")}}}}
		noXToZ := &cnp.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "no-x-to-z"}, Spec: cnp.ClusterNetworkPolicySpec{
			Tier: cnp.AdminTier, Priority: 10, Subject: cnp.ClusterNetworkPolicySubject{Namespaces: nsSelector("z")},
			Ingress: []cnp.ClusterNetworkPolicyIngressRule{
				{Name: "block-x", Action: cnp.ClusterNetworkPolicyRuleActionDeny, From: []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: nsSelector("x")}}},
			},
		}}
		r := al.applyAndProbe(t, []*networkingv1.NetworkPolicy{denyAll, toZ}, []*cnp.ClusterNetworkPolicy{noXToZ},
			compiler.Options{Audit: true, LogDenied: logDenied})
		r.expectAudit(t, map[string]int{
			"audit-deny ingress [x/deny-all]":                     2 * 4 * perPair, // everyone → x/a, x/b
			"audit-deny egress [y/to-z]":                          3 * perPair,     // y/a → x/a, x/b, y/b
			"audit-deny ingress [ClusterNetworkPolicy/no-x-to-z]": 2 * perPair,     // x/a, x/b → z/a
		}, func(from, to string, proto uint8, port uint16) bool { return true })
		for _, ch := range r.rs.Chains {
			for _, rule := range ch.Rules {
				if rule.Verdict == ruleset.Drop {
					t.Errorf("chain %s drops under Options.Audit: %s", ch.Name, ruleset.FormatRule(rule))
				}
			}
		}
		if logs := r.count(func(p *kernelProbe) bool {
			return slices.ContainsFunc(p.trace.Steps, func(s tracer.Step) bool { return s.Rule >= 0 && r.rs.Chain(s.Chain).Rules[s.Rule].Log != nil })
		}); logDenied != (logs > 0) {
			t.Errorf("LogDenied %v: %d connections logged", logDenied, logs)
		}
	}
	t.Run("Options.Audit", func(t *testing.T) { wholeNode(t, false) })
	t.Run("Options.Audit with LogDenied", func(t *testing.T) { wholeNode(t, true) })
}

// TestGotoFromJumpedChainInKernel checks, with the smallest ruleset that has it, the
// nftables semantics audit mode relies on and the tracer models: a chain entered by
// jump (a NetworkPolicy's) that goes to another chain (an enforce- copy) by goto is
// replaced by it, so the goto's target returns — when it falls off its end — to the
// chain that jumped (the isolation chain), never to the chain that did the goto; and a
// verdict in the goto's target ends the judgement. The kernel's verdicts and counters
// must be the tracer's.
//
//	output: udp daddr 127.0.0.2 → jump iso
//	iso:    jump np; counter drop                            ("iso end")
//	np:     dport 1000 goto enf-accept; dport 1001 goto enf-fall; dport 1002 accept
//	enf-accept: counter accept
//	enf-fall:   counter                                      (falls off its end)
func TestGotoFromJumpedChainInKernel(t *testing.T) {
	ns := newNetNS(t)
	if _, err := inNS(t, ns, "ip", "link", "set", "lo", "up"); err != nil {
		testns.SkipUnlessRequired(t, "cannot bring up lo: %v", err)
	}
	d := newDataplane(t, ns)
	port := func(name string, p uint16) *ruleset.Set {
		return &ruleset.Set{Name: name, Key: pp, Interval: true, Elements: []ruleset.Element{el(udp, ruleset.PortRange(p, p))}}
	}
	dst := &ruleset.Set{Name: "dst", Key: v4, Elements: []ruleset.Element{el(ruleset.Addr(addr("127.0.0.2")))}}
	rs := &ruleset.Ruleset{Table: DefaultTable,
		Sets: []*ruleset.Set{dst, port("p1000", 1000), port("p1001", 1001), port("p1002", 1002)},
		Chains: []*ruleset.Chain{
			{Name: "out", Base: &ruleset.BaseChain{Hook: ruleset.HookOutput}, Rules: []ruleset.Rule{
				{Matches: []ruleset.Match{{Kind: ruleset.MatchL4Proto, Proto: ruleset.ProtoUDP}, lookup("dst", ruleset.FieldIPv4Daddr)}, Verdict: ruleset.Jump("iso")},
			}},
			{Name: "iso", Rules: []ruleset.Rule{
				{Verdict: ruleset.Jump("np")},
				{Counter: true, Verdict: ruleset.Drop, Comment: "iso end"},
			}},
			{Name: "np", Rules: []ruleset.Rule{
				{Matches: []ruleset.Match{lookup("p1000", fpp...)}, Verdict: ruleset.Verdict{Kind: ruleset.VerdictGoto, Chain: "enf-accept"}},
				{Matches: []ruleset.Match{lookup("p1001", fpp...)}, Verdict: ruleset.Verdict{Kind: ruleset.VerdictGoto, Chain: "enf-fall"}},
				{Matches: []ruleset.Match{lookup("p1002", fpp...)}, Verdict: ruleset.Accept},
			}},
			{Name: "enf-accept", Rules: []ruleset.Rule{{Counter: true, Verdict: ruleset.Accept, Comment: "enforced accept"}}},
			{Name: "enf-fall", Rules: []ruleset.Rule{{Counter: true, Comment: "enforced, falls off"}}},
		},
	}
	apply(t, d, rs, dataplane.ApplyOptions{})
	s4 := udpSocket(t, ns, unix.AF_INET)
	tr := tracer.New(rs)
	sent := map[uint16]int{}
	for _, c := range []struct {
		port uint16
		pass bool
	}{{1000, true}, {1001, false}, {1002, true}, {1003, false}, {1000, true}, {1001, false}} {
		pkt := tracer.Packet{Src: addr("127.0.0.1"), Dst: addr("127.0.0.2"), Proto: 17, DPort: c.port, Hook: ruleset.HookOutput}
		kernel := sendUDP(t, s4, "127.0.0.2", int(c.port))
		traced := tr.Trace(pkt)
		if kernel != traced.Allowed() || kernel != c.pass {
			t.Errorf("udp to port %d: the kernel %s, the tracer %s, want passed=%v:\n%s", c.port, passed(kernel), passed(traced.Allowed()), c.pass, formatSteps(traced.Steps))
		}
		sent[c.port]++
	}
	got, err := d.Counters(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		chain string
		rule  int
		want  int
	}{
		{"enf-accept", 0, sent[1000]},
		{"enf-fall", 0, sent[1001]},
		// enf-fall returned into iso, which went on to its drop; so did np's own end.
		{"iso", 1, sent[1001] + sent[1003]},
	} {
		if g := got[c.chain][c.rule]; !g.Counted || g.Packets != uint64(c.want) {
			t.Errorf("chain %s rule %d: %+v, want %d packets", c.chain, c.rule, g, c.want)
		}
	}
}

// sendUDP sends one datagram; a drop in the output hook fails sendto with EPERM.
func sendUDP(t *testing.T, fd int, dst string, port int) bool {
	t.Helper()
	err := unix.Sendto(fd, []byte("x"), 0, &unix.SockaddrInet4{Port: port, Addr: addr(dst).As4()})
	if err != nil && !errors.Is(err, unix.EPERM) {
		t.Fatalf("sendto %s:%d: %v", dst, port, err)
	}
	return err == nil
}
