package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/controllers"
	"github.com/nftpolicy/nftpolicy/internal/testns"
)

// startClusterForTest starts a cluster that is closed (and checked to leave
// nothing behind) at the end of the test.
func startClusterForTest(t *testing.T, opts ClusterOptions) *Cluster {
	t.Helper()
	SkipUnlessCluster(t)
	if err := CleanupStale(opts.StateDir); err != nil {
		t.Logf("lab: cleaning up stale labs: %v", err)
	}
	opts.Progress = TestLog(t)
	c, err := StartCluster(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeAndCheck(t, c) })
	return c
}

// closeAndCheck closes the cluster and checks that no namespace, recorded
// process or state is left.
func closeAndCheck(t *testing.T, c *Cluster) {
	t.Helper()
	pids := recordedPIDs(t, c.lab.PidDir())
	if err := c.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	assertGone(t, c.Prefix(), pids, c.lab.Dir(), c.lab.lock.Name())
}

// recordedPIDs reads the PID files of a lab (control plane and agents).
func recordedPIDs(t *testing.T, pidDir string) map[string]int {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(pidDir, "*.pid"))
	pids := map[string]int{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			pids[strings.TrimSuffix(filepath.Base(f), ".pid")] = pid
		}
	}
	return pids
}

// assertGone checks that no namespace has the prefix, that the processes
// are gone and that the paths do not exist.
func assertGone(t *testing.T, prefix string, pids map[string]int, paths ...string) {
	t.Helper()
	assertNoNetns(t, prefix)
	for name, pid := range pids {
		if !waitGone(pid, 5*time.Second) {
			t.Errorf("process %s (pid %d) still running", name, pid)
		}
	}
	for _, p := range paths {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left behind (err=%v)", p, err)
		}
	}
}

// probeAll probes every (family, protocol) matrix concurrently and compares
// each with want.
func probeAll(t *testing.T, c *Cluster, froms, tos []*ClusterPod, port int, want func(f Family, proto string) *Matrix) {
	t.Helper()
	type combo struct {
		f     Family
		proto string
	}
	var combos []combo
	for _, f := range c.Families() {
		for _, proto := range []string{"tcp", "udp"} {
			combos = append(combos, combo{f, proto})
		}
	}
	got := make([]*Matrix, len(combos))
	errs := make([]error, len(combos))
	var wg sync.WaitGroup
	for i, cb := range combos {
		wg.Go(func() {
			got[i], errs[i] = c.ProbeMatrix(context.Background(), froms, tos, PodTarget(cb.f, port), cb.proto, ProbeOptions{})
		})
	}
	wg.Wait()
	for i, cb := range combos {
		if errs[i] != nil {
			t.Fatalf("%s %v: %v", cb.proto, cb.f, errs[i])
		}
		if d := Diff(want(cb.f, cb.proto), got[i]); d != "" {
			t.Error(d)
		} else {
			t.Logf("\n%s", got[i])
		}
	}
}

func TestClusterRouted(t *testing.T) { testClusterTopology(t, Routed) }

func TestClusterBridgeVXLAN(t *testing.T) { testClusterTopology(t, BridgeVXLAN) }

// testClusterTopology checks a 2-node dual-stack cluster without agents:
// API objects, all-pairs connectivity, host-network pods, ClusterIPs,
// that the node's inet forward hook sees pod traffic, and cleanup.
func testClusterTopology(t *testing.T, topo Topology) {
	ctx := context.Background()
	c := startClusterForTest(t, ClusterOptions{Topology: topo, DualStack: true})
	for _, ns := range []string{"x", "y"} {
		if err := c.CreateNamespace(ctx, ns, nil); err != nil {
			t.Fatal(err)
		}
	}
	mk := func(spec PodSpec) *ClusterPod {
		t.Helper()
		if spec.Ports == nil {
			spec.Ports = TCPUDPPorts(80)
		}
		p, err := c.CreatePod(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	a := mk(PodSpec{Namespace: "x", Name: "a", Node: "node1", Labels: map[string]string{"app": "a"}})
	b := mk(PodSpec{Namespace: "x", Name: "b", Node: "node1", Labels: map[string]string{"app": "b"}})
	cc := mk(PodSpec{Namespace: "x", Name: "c", Node: "node2", Labels: map[string]string{"app": "c"}})
	d := mk(PodSpec{Namespace: "y", Name: "d", Node: "node2"})
	host := mk(PodSpec{Namespace: "y", Name: "host", Node: "node2", HostNetwork: true})
	pods := []*ClusterPod{a, b, cc, d, host}
	names := PodKeys(pods)
	allAllowed := func(Family, string) *Matrix { return NewMatrix(names, names, true) }

	t.Run("API objects", func(t *testing.T) {
		var nodes corev1.NodeList
		if err := c.Client().List(ctx, &nodes); err != nil {
			t.Fatal(err)
		}
		if len(nodes.Items) != 2 {
			t.Fatalf("%d Node objects, want 2", len(nodes.Items))
		}
		for _, n := range nodes.Items {
			var ips []string
			for _, a := range n.Status.Addresses {
				if a.Type == corev1.NodeInternalIP {
					ips = append(ips, a.Address)
				}
			}
			want := []string{c.Node(n.Name).UnderlayIPv4.String(), c.Node(n.Name).UnderlayIPv6.String()}
			if !slices.Equal(ips, want) {
				t.Errorf("node %s InternalIPs %v, want %v", n.Name, ips, want)
			}
		}
		for _, p := range pods {
			var obj corev1.Pod
			if err := c.Client().Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: p.Name}, &obj); err != nil {
				t.Fatal(err)
			}
			var ips []string
			for _, ip := range obj.Status.PodIPs {
				ips = append(ips, ip.IP)
			}
			want := []string{p.IPv4.String(), p.IPv6.String()}
			if !slices.Equal(ips, want) || obj.Status.Phase != corev1.PodRunning || obj.Spec.NodeName != p.Node.Name || obj.Spec.HostNetwork != p.HostNetwork {
				t.Errorf("pod %s: podIPs %v phase %s node %s hostNetwork %v; want %v Running %s %v",
					p, ips, obj.Status.Phase, obj.Spec.NodeName, obj.Spec.HostNetwork, want, p.Node.Name, p.HostNetwork)
			}
		}
		if host.IPv4 != c.Node("node2").UnderlayIPv4 {
			t.Errorf("host-network pod IP %s, want node2's %s", host.IPv4, c.Node("node2").UnderlayIPv4)
		}
		if !a.Node.PodCIDRv4.Contains(a.IPv4) || !cc.Node.PodCIDRv6.Contains(cc.IPv6) {
			t.Errorf("pod addresses outside their node's pod CIDRs: %v %v", a.IPs(), cc.IPs())
		}
	})

	// Same node (a, b), cross node (a, c), and the host-network pod both
	// ways, over both families and protocols.
	t.Run("all pairs before any policy", func(t *testing.T) {
		probeAll(t, c, pods, pods, 80, allAllowed)
	})

	if topo == BridgeVXLAN {
		// A port whose MAC sorts below every pod veth's joins node2's cni0 (as
		// a new pod's veth may). An unpinned bridge would take that MAC, and c
		// and d would keep sending their IPv6 packets to the gateway's old one
		// (see bridgeMAC), which only the pod whose veth owns that MAC gets
		// through; the cross-node IPv6 pairs, probed after the neighbour caches
		// were filled above, show whether both still reach their gateway.
		t.Run("pod churn keeps the pods' gateway", func(t *testing.T) {
			node2 := c.Node("node2").NS
			mac := func() string {
				t.Helper()
				out, err := node2.IP(ctx, "-br", "link", "show", "dev", BridgeName)
				f := strings.Fields(string(out))
				if err != nil || len(f) < 3 {
					t.Fatalf("cni0 of node2: %q %v", out, err)
				}
				return f[2]
			}
			before := mac()
			// eth_random_addr never yields less than 02:00:00:00:00:00.
			for _, args := range [][]string{
				{"link", "add", "lowmac", "address", "02:00:00:00:00:00", "type", "veth", "peer", "name", "lowmac-peer"},
				{"link", "set", "lowmac", "master", BridgeName, "up"},
			} {
				if _, err := node2.IP(ctx, args...); err != nil {
					t.Fatal(err)
				}
			}
			defer func() {
				if _, err := node2.IP(ctx, "link", "del", "lowmac"); err != nil {
					t.Error(err)
				}
			}()
			if after := mac(); after != before {
				t.Errorf("node2's cni0 changed its MAC from %s to %s when a port joined", before, after)
			}
			node1Pods, node2Pods := []*ClusterPod{a}, []*ClusterPod{cc, d}
			for _, pair := range [][2][]*ClusterPod{{node1Pods, node2Pods}, {node2Pods, node1Pods}} {
				m, err := c.ProbeMatrix(ctx, pair[0], pair[1], PodTarget(IPv6, 80), "tcp", ProbeOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if diff := Diff(NewMatrix(PodKeys(pair[0]), PodKeys(pair[1]), true), m); diff != "" {
					t.Errorf("after a port joined node2's cni0: %s", diff)
				}
			}
		})
	}

	t.Run("ClusterIP", func(t *testing.T) {
		svc, err := c.CreateService(ctx, "x", "web", map[string]string{"app": "b"}, []corev1.ServicePort{
			{Name: "http", Port: 8080, TargetPort: intstr.FromString("tcp-80")},
			{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(80)},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := c.DeleteService(ctx, svc); err != nil {
				t.Error(err)
			}
		}()
		if got := PodKeys(svc.Endpoints()); !slices.Equal(got, []string{"x/b"}) {
			t.Fatalf("endpoints %v, want [x/b]", got)
		}
		// From the same node (a), from the endpoint itself (hairpin), from
		// the other node (c) and from a host-network pod.
		froms := []*ClusterPod{a, b, cc, host}
		check := func(t *testing.T, want func(from *ClusterPod) []string) {
			t.Helper()
			var wg sync.WaitGroup
			for _, f := range c.Families() {
				for _, pp := range []struct {
					proto string
					port  int
				}{{"tcp", 8080}, {"udp", 53}} {
					for _, from := range froms {
						wg.Go(func() {
							to := svc.AddrPort(f, pp.port)
							r, err := c.Probe(ctx, from, to, pp.proto, 0)
							w := want(from)
							if err != nil || (r.OK && slices.Contains(w, r.Reply)) != (len(w) > 0) {
								t.Errorf("%s %v %s -> %s: %+v %v, want a reply from %v", pp.proto, f, from, to, r, err, w)
							}
						})
					}
				}
			}
			wg.Wait()
		}
		check(t, func(*ClusterPod) []string { return []string{"x/b"} })

		// A second endpoint on the other node: connections spread over both.
		e := mk(PodSpec{Namespace: "x", Name: "e", Node: "node2", Labels: map[string]string{"app": "b"}})
		if got := PodKeys(svc.Endpoints()); !slices.Equal(got, []string{"x/b", "x/e"}) {
			t.Fatalf("endpoints %v, want [x/b x/e]", got)
		}
		seen := map[string]int{}
		for range 30 {
			r, err := c.Probe(ctx, a, svc.AddrPort(IPv4, 8080), "tcp", 0)
			if err != nil || !r.OK {
				t.Fatalf("a -> %s: %+v %v", svc.AddrPort(IPv4, 8080), r, err)
			}
			seen[r.Reply]++
		}
		if len(seen) != 2 {
			t.Errorf("30 connections reached %v, want both endpoints", seen)
		}
		// Endpoints follow labels, phases and deletions.
		if err := c.SetPodLabels(ctx, b, map[string]string{"app": "gone"}); err != nil {
			t.Fatal(err)
		}
		check(t, func(*ClusterPod) []string { return []string{"x/e"} })
		if err := c.SetPodLabels(ctx, b, map[string]string{"app": "b"}); err != nil {
			t.Fatal(err)
		}
		if err := c.DeletePod(ctx, e); err != nil {
			t.Fatal(err)
		}
		if err := c.SetPodPhase(ctx, b, corev1.PodSucceeded); err != nil {
			t.Fatal(err)
		}
		if n := len(svc.Endpoints()); n != 0 {
			t.Errorf("%d endpoints with the only pod Succeeded, want 0", n)
		}
		check(t, func(*ClusterPod) []string { return nil })
		if err := c.SetPodPhase(ctx, b, corev1.PodRunning); err != nil {
			t.Fatal(err)
		}
		check(t, func(*ClusterPod) []string { return []string{"x/b"} })
		if e.NS != nil {
			if _, err := os.Stat(e.NS.Path()); !os.IsNotExist(err) {
				t.Errorf("deleted pod's namespace %s still exists (err=%v)", e.NS.Path(), err)
			}
		}
	})

	// A drop rule for b in node1's inet forward hook must stop traffic to
	// b from its node neighbour a: in the bridge topology that traffic is
	// bridged, and only br_netfilter hands it to the inet hooks. (If it
	// did not, the agent's rules would never see same-node traffic.)
	t.Run("node forward hook sees pod traffic", func(t *testing.T) {
		node1 := c.Node("node1").NS
		rules := fmt.Sprintf("add table inet labtest\n"+
			"add chain inet labtest f { type filter hook forward priority 0; }\n"+
			"add rule inet labtest f ip daddr %s th dport 80 counter drop\n"+
			"add rule inet labtest f ip6 daddr %s th dport 80 counter drop\n", b.IPv4, b.IPv6)
		cmd := node1.Command(ctx, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(rules)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nft: %v: %s", err, out)
		}
		defer func() {
			if _, err := node1.Exec(ctx, "nft", "delete", "table", "inet", "labtest"); err != nil {
				t.Error(err)
			}
		}()
		// b reaches itself without its node; everyone else is dropped at
		// node1 (c, d and host come from node2 through node1's forward).
		probeAll(t, c, pods, pods, 80, func(Family, string) *Matrix {
			return NewMatrix(names, names, true).DenyTo("x/b").AllowSelf()
		})
		if topo != BridgeVXLAN {
			return
		}
		// The counter-proof: with br_netfilter off in node1, same-node
		// bridged traffic bypasses the forward hook (cross-node traffic is
		// routed and still dropped).
		if err := node1.Sysctl("net/bridge/bridge-nf-call-iptables", "0"); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := node1.Sysctl("net/bridge/bridge-nf-call-iptables", "1"); err != nil {
				t.Error(err)
			}
		}()
		m, err := c.ProbeMatrix(ctx, []*ClusterPod{a, cc}, []*ClusterPod{b}, PodTarget(IPv4, 80), "tcp", ProbeOptions{})
		if err != nil {
			t.Fatal(err)
		}
		want := NewMatrix([]string{"x/a", "x/c"}, []string{"x/b"}, true).Deny("x/c", "x/b")
		if d := Diff(want, m); d != "" {
			t.Errorf("with bridge-nf-call-iptables=0: %s", d)
		}
	})

	if topo == BridgeVXLAN {
		// Without br_netfilter the reply of b to a ClusterIP connection
		// from a (same bridge) is bridged straight back to a, skipping
		// conntrack's reverse DNAT: a sees a reply from b's address, not
		// from the ClusterIP, and the connection fails.
		t.Run("same-node ClusterIP needs br_netfilter", func(t *testing.T) {
			svc, err := c.CreateService(ctx, "x", "web2", map[string]string{"app": "b"}, []corev1.ServicePort{{Port: 80}})
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := c.DeleteService(ctx, svc); err != nil {
					t.Error(err)
				}
			}()
			node1 := c.Node("node1").NS
			for _, on := range []bool{false, true} {
				v := map[bool]string{false: "0", true: "1"}[on]
				if err := node1.Sysctl("net/bridge/bridge-nf-call-iptables", v); err != nil {
					t.Fatal(err)
				}
				r, err := c.Probe(ctx, a, svc.AddrPort(IPv4, 80), "tcp", 0)
				if err != nil {
					t.Fatal(err)
				}
				if r.OK != on {
					t.Errorf("bridge-nf-call-iptables=%s: a -> %s: %+v, want ok=%v", v, svc.AddrPort(IPv4, 80), r, on)
				}
			}
		})
	}

	t.Run("delete pod", func(t *testing.T) {
		if err := c.DeletePod(ctx, d); err != nil {
			t.Fatal(err)
		}
		r, err := c.Probe(ctx, a, d.AddrPort(IPv4, 80), "tcp", 0)
		if err != nil || r.OK {
			t.Errorf("probe of a deleted pod: %+v %v", r, err)
		}
		var obj corev1.Pod
		if err := c.Client().Get(ctx, client.ObjectKey{Namespace: "y", Name: "d"}, &obj); err == nil {
			t.Error("Pod object y/d still exists")
		}
	})
}

func TestClusterObjectOnlyPod(t *testing.T) {
	ctx := context.Background()
	c := startClusterForTest(t, ClusterOptions{Nodes: 1})
	if err := c.CreateNamespace(ctx, "x", map[string]string{"team": "a"}); err != nil {
		t.Fatal(err)
	}
	var ns corev1.Namespace
	if err := c.Client().Get(ctx, client.ObjectKey{Name: "x"}, &ns); err != nil {
		t.Fatal(err)
	}
	if ns.Labels["kubernetes.io/metadata.name"] != "x" || ns.Labels["team"] != "a" {
		t.Errorf("namespace labels %v", ns.Labels)
	}
	live, err := c.CreatePod(ctx, PodSpec{Namespace: "x", Name: "live", Node: "node1", Ports: TCPUDPPorts(80)})
	if err != nil {
		t.Fatal(err)
	}
	// A Completed pod still claiming live's address.
	done, err := c.CreatePodObjectOnly(ctx, PodSpec{Namespace: "x", Name: "done", Node: "node1",
		Phase: corev1.PodSucceeded, IPs: []netip.Addr{live.IPv4}})
	if err != nil {
		t.Fatal(err)
	}
	var obj corev1.Pod
	if err := c.Client().Get(ctx, client.ObjectKey{Namespace: "x", Name: "done"}, &obj); err != nil {
		t.Fatal(err)
	}
	if obj.Status.Phase != corev1.PodSucceeded || obj.Status.PodIP != live.IPv4.String() {
		t.Errorf("object-only pod status: %s %s", obj.Status.Phase, obj.Status.PodIP)
	}
	if _, err := c.Probe(ctx, done, live.AddrPort(IPv4, 80), "tcp", 0); err == nil {
		t.Error("probe from an object-only pod: want error")
	}
	if err := c.DeletePod(ctx, done); err != nil {
		t.Fatal(err)
	}
	// Sidecar ports are served, SCTP only where the kernel has it.
	restart := corev1.ContainerRestartPolicyAlways
	side, err := c.CreatePod(ctx, PodSpec{Namespace: "x", Name: "side", Node: "node1",
		Ports: []corev1.ContainerPort{{Name: "sctp-90", ContainerPort: 90, Protocol: corev1.ProtocolSCTP}},
		InitContainers: []corev1.Container{
			{Name: "sidecar", RestartPolicy: &restart, Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9000}}},
			{Name: "init", Ports: []corev1.ContainerPort{{Name: "never", ContainerPort: 9001}}},
		}})
	if err != nil {
		t.Fatal(err)
	}
	for port, want := range map[int]bool{9000: true, 9001: false} {
		r, err := c.Probe(ctx, live, side.AddrPort(IPv4, port), "tcp", 0)
		if err != nil || r.OK != want {
			t.Errorf("live -> side:%d: %+v %v, want ok=%v", port, r, err, want)
		}
	}
	if SCTPSupported() {
		r, err := c.Probe(ctx, live, side.AddrPort(IPv4, 90), "sctp", 0)
		if err != nil || !r.OK || r.Reply != "x/side" {
			t.Errorf("sctp live -> side:90: %+v %v", r, err)
		}
	} else if _, err := c.Probe(ctx, live, side.AddrPort(IPv4, 90), "sctp", 0); !errors.Is(err, errNoSCTP) {
		// No SCTP here: the server was not started and a probe says why.
		t.Errorf("sctp live -> side:90 on a kernel without SCTP: got %v, want %v", err, errNoSCTP)
	}
}

// TestSCTPProbesAgree: the lab (which opens an SCTP socket) and the agent (which reads
// /proc/net/protocols) must agree on whether this kernel has SCTP. Where it has none the
// lab cannot probe SCTP, and test/e2e/netpol asserts instead that the agent reports
// SCTP ports as Unsupported; a disagreement would make that check, or the SCTP cases,
// wrong. The socket goes first: it may load the sctp module, which the agent then sees.
func TestSCTPProbesAgree(t *testing.T) {
	lab := SCTPSupported()
	if agent := controllers.KernelHasSCTP(); agent != lab {
		t.Fatalf("the agent says the kernel has SCTP: %v; an SCTP socket says %v", agent, lab)
	}
}

// agentBinary returns $NFTPOLICY_AGENT (set by `make test`) or skips.
func agentBinary(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("NFTPOLICY_AGENT")
	if bin == "" {
		testns.SkipUnlessRequired(t, "lab: NFTPOLICY_AGENT is not set (make build; make test sets it)")
	}
	if _, err := os.Stat(bin); err != nil {
		testns.SkipUnlessRequired(t, "lab: agent binary: %v (make build)", err)
	}
	return bin
}

// TestClusterAgent runs the agent on both nodes of the bridge topology and
// checks that it enforces a policy on same-node (bridged) traffic, and
// keeps enforcing across a restart.
func TestClusterAgent(t *testing.T) {
	SkipUnlessCluster(t)
	bin := agentBinary(t)
	ctx := context.Background()
	c := startClusterForTest(t, ClusterOptions{Topology: BridgeVXLAN, DualStack: true, AgentBinary: bin,
		AgentArgs: []string{"--resync-period", "2s"}})
	for _, ns := range []string{"app", "other"} {
		if err := c.CreateNamespace(ctx, ns, nil); err != nil {
			t.Fatal(err)
		}
	}
	var pods []*ClusterPod
	for _, s := range []PodSpec{
		{Namespace: "app", Name: "frontend", Node: "node1", Labels: map[string]string{"app": "frontend"}},
		{Namespace: "app", Name: "backend", Node: "node1", Labels: map[string]string{"app": "backend"}},
		{Namespace: "other", Name: "client", Node: "node1"},
		{Namespace: "app", Name: "remote", Node: "node2", Labels: map[string]string{"app": "frontend"}},
	} {
		s.Ports = TCPUDPPorts(80)
		p, err := c.CreatePod(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
	}
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "backend-policy"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "backend"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
				{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "frontend"}}},
			}}},
		},
	}
	if err := c.Client().Create(ctx, np); err != nil {
		t.Fatal(err)
	}
	names := PodKeys(pods)
	want := NewMatrix(names, names, true).DenyTo("app/backend").Allow("app/frontend", "app/backend").
		Allow("app/remote", "app/backend").AllowSelf()
	expect := func(what string) {
		t.Helper()
		awaitMatrix(t, c, what, pods, pods, 80, want)
	}
	expect("backend-policy (client -> backend is bridged in node1)")
	if err := c.StopAgent("node1", syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	expect("agent stopped (the table stays)")
	if err := c.RestartAgent(ctx, "node1"); err != nil {
		t.Fatal(err)
	}
	expect("agent restarted")
}

// crashHelperEnv makes the test binary run crashHelper (see TestMain) with the
// state directory it names.
const crashHelperEnv = "NFTPOLICY_LAB_CRASH_HELPER_STATE"

// crashHelper is the child process of TestClusterCrashCleanup: it starts a
// cluster, prints READY and waits to be killed. It never returns.
func crashHelper(stateDir string) {
	c, err := StartCluster(context.Background(), ClusterOptions{
		Nodes: 2, DualStack: true, StateDir: stateDir, AgentBinary: os.Getenv("NFTPOLICY_AGENT"),
	})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	if err := c.CreateNamespace(context.Background(), "x", nil); err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	if _, err := c.CreatePod(context.Background(), PodSpec{Namespace: "x", Name: "a", Node: "node1", Ports: TCPUDPPorts(80)}); err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	fmt.Println("READY", c.Prefix())
	select {} // until SIGKILL
}

// TestClusterCrashCleanup starts a cluster in a child process, SIGKILLs it
// and checks that CleanupStale removes what it left: the API server and
// etcd (which survive their parent), namespaces and state.
func TestClusterCrashCleanup(t *testing.T) {
	SkipUnlessCluster(t)
	stateDir := t.TempDir()
	// TestMain runs crashHelper instead of the tests; -test.run=^$ runs none should it not.
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashHelperEnv+"="+stateDir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			// Cleanup after a failure: the exit status of a killed child says nothing.
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()
	prefix := ""
	lines := bufio.NewScanner(stdout)
	for lines.Scan() {
		line := lines.Text()
		if p, ok := strings.CutPrefix(line, "READY "); ok {
			prefix = p
			break
		}
		if strings.HasPrefix(line, "ERROR") {
			t.Fatalf("helper: %s", line)
		}
	}
	if prefix == "" {
		t.Fatalf("helper exited before it was ready: %v", lines.Err())
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }() // drain until the child dies
	pids := recordedPIDs(t, filepath.Join(stateDir, prefix, "pids"))
	for _, want := range []string{"kube-apiserver", "etcd"} {
		if pids[want] == 0 {
			t.Fatalf("no PID recorded for %s (have %v)", want, pids)
		}
	}
	t.Logf("helper lab %s, recorded processes %v", prefix, pids)

	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var exit *exec.ExitError
	if err := cmd.Wait(); !errors.As(err, &exit) {
		t.Fatalf("helper after SIGKILL: want an exit error, got %v", err)
	}
	killed = true
	// The control plane outlives its killed parent: that is what
	// CleanupStale is for.
	if waitGone(pids["kube-apiserver"], 0) {
		t.Log("kube-apiserver died with its parent")
	} else {
		t.Log("kube-apiserver survived its parent's SIGKILL, as expected")
	}
	if names, _ := ListNetns(prefix); len(names) == 0 {
		t.Fatal("the killed lab left no namespaces: nothing to test")
	}
	if err := CleanupStale(stateDir); err != nil {
		t.Fatal(err)
	}
	assertGone(t, prefix, pids, filepath.Join(stateDir, prefix), filepath.Join(stateDir, prefix+".lock"))
}

// TestClusterAgentBridgeIPv6NDP: in the bridge topology, br_netfilter hands
// the IPv6 neighbour discovery between two pods of one node to the inet
// forward hook. A pod isolated for ingress must still be able to resolve a
// same-node neighbour it is allowed to reach (egress is open), which needs
// the neighbour's advertisement to pass the isolated pod's ingress chain.
// IPv4 is unaffected (ARP is not IP), and so is the routed topology (pods
// only ever resolve their node).
func TestClusterAgentBridgeIPv6NDP(t *testing.T) {
	SkipUnlessCluster(t)
	bin := agentBinary(t)
	ctx := context.Background()
	c := startClusterForTest(t, ClusterOptions{Nodes: 1, Topology: BridgeVXLAN, DualStack: true, AgentBinary: bin})
	if err := c.CreateNamespace(ctx, "x", nil); err != nil {
		t.Fatal(err)
	}
	isolated, err := c.CreatePod(ctx, PodSpec{Namespace: "x", Name: "isolated", Node: "node1", Labels: map[string]string{"app": "isolated"}, Ports: TCPUDPPorts(80)})
	if err != nil {
		t.Fatal(err)
	}
	open, err := c.CreatePod(ctx, PodSpec{Namespace: "x", Name: "open", Node: "node1", Ports: TCPUDPPorts(80)})
	if err != nil {
		t.Fatal(err)
	}
	denyAll := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "deny-ingress"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "isolated"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		},
	}
	if err := c.Client().Create(ctx, denyAll); err != nil {
		t.Fatal(err)
	}
	// Wait until open -> isolated is denied (the policy is in force), then
	// probe isolated -> open with empty neighbour caches.
	deadline := time.Now().Add(20 * time.Second)
	for {
		r, err := c.Probe(ctx, open, isolated.AddrPort(IPv4, 80), "tcp", 0)
		if err != nil {
			t.Fatal(err)
		}
		if !r.OK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the policy was never enforced")
		}
	}
	for _, p := range []*ClusterPod{isolated, open} {
		if _, err := p.NS.IP(ctx, "-6", "neigh", "flush", "all"); err != nil {
			t.Fatal(err)
		}
	}
	r, err := c.Probe(ctx, isolated, open.AddrPort(IPv6, 80), "tcp", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK {
		neigh, _ := isolated.NS.IP(ctx, "-6", "neigh")
		t.Errorf("isolated -> open over IPv6 (same bridge): %v; isolated's neighbours:\n%s", r.Err, neigh)
	}
}

// awaitMatrix probes TCP from every pod of froms to every pod of tos on port, over each
// family of the cluster, until the matrix is want (at most 20 s), and fails the test
// with the difference and the agents' last log lines otherwise.
func awaitMatrix(t *testing.T, c *Cluster, what string, froms, tos []*ClusterPod, port int, want *Matrix) {
	t.Helper()
	for _, f := range c.Families() {
		var got *Matrix
		deadline := time.Now().Add(20 * time.Second)
		for {
			var err error
			got, err = c.ProbeMatrix(context.Background(), froms, tos, PodTarget(f, port), "tcp", ProbeOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if Diff(want, got) == "" || time.Now().After(deadline) {
				break
			}
		}
		if d := Diff(want, got); d != "" {
			var logs strings.Builder
			for _, n := range c.Nodes() {
				fmt.Fprintf(&logs, "\nagent log %s:\n%s", n.Name, tail(c.AgentLog(n.Name), 20))
			}
			t.Fatalf("%s (%v, tcp/%d): %s%s", what, f, port, d, logs.String())
		}
		t.Logf("%s (%v):\n%s", what, f, got)
	}
}
