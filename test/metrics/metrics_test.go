// Package metrics checks the agent's per-policy verdict metrics against real traffic:
// a lab cluster (network namespaces, a real API server) runs the agent on every node
// with its metrics endpoint on, and the test scrapes it inside the node's namespace
// while probes are allowed and denied.
package metrics

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nftpolicy/nftpolicy/internal/testns"
	"github.com/nftpolicy/nftpolicy/test/bench"
	"github.com/nftpolicy/nftpolicy/test/lab"
)

const (
	metricsAddr = "127.0.0.1:19090"
	ns          = "metrics"
	port        = 8080
)

// scraper reads one agent's /metrics inside its node's namespace.
type scraper struct {
	t    *testing.T
	http *http.Client
}

func newScraper(t *testing.T, node *lab.ClusterNode) *scraper {
	return &scraper{t: t, http: node.NS.HTTPClient(10 * time.Second)}
}

func (s *scraper) scrape(ctx context.Context) (bench.Metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+metricsAddr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape: %s", resp.Status)
	}
	return bench.ParseMetrics(resp.Body)
}

func (s *scraper) mustScrape(ctx context.Context) bench.Metrics {
	s.t.Helper()
	m, err := s.scrape(ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	return m
}

// value returns the sample of name whose labels include want, and whether there is one.
func value(m bench.Metrics, name string, want map[string]string) (float64, bool) {
next:
	for _, s := range m {
		if s.Name != name {
			continue
		}
		for k, v := range want {
			if s.Labels[k] != v {
				continue next
			}
		}
		return s.Value, true
	}
	return 0, false
}

// series returns every sample of the verdict metrics, keyed by name and labels.
func series(m bench.Metrics) map[string]float64 {
	out := map[string]float64{}
	for _, s := range m {
		if !strings.HasPrefix(s.Name, "nftpolicy_policy_") {
			continue
		}
		out[fmt.Sprintf("%s%v", s.Name, s.Labels)] = s.Value
	}
	return out
}

func ingressFrom(name string, podLabels, fromLabels map[string]string, ports ...int) *networkingv1.NetworkPolicy {
	rule := networkingv1.NetworkPolicyIngressRule{
		From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: fromLabels}}},
	}
	tcp := corev1.ProtocolTCP
	for _, p := range ports {
		pp := intstr.FromInt32(int32(p))
		rule.Ports = append(rule.Ports, networkingv1.NetworkPolicyPort{Protocol: &tcp, Port: &pp})
	}
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: podLabels},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{rule},
		},
	}
}

// TestVerdictCounters: an allowed connection moves exactly the allowing policy rule's
// packet and byte counters; a denied one moves exactly the drop counter of the policy
// isolating its target; series of an unrelated policy and of the other rule do not move.
func TestVerdictCounters(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := startLab(ctx, t)
	pod := func(name, node string, labels map[string]string, ports ...int32) *lab.ClusterPod {
		p, err := c.CreatePod(ctx, lab.PodSpec{Namespace: ns, Name: name, Node: node, Labels: labels, Ports: lab.TCPUDPPorts(ports...)})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	client := pod("client", "node1", map[string]string{"role": "client"})
	intruder := pod("intruder", "node1", map[string]string{"role": "intruder"})
	server := pod("server", "node2", map[string]string{"role": "server"}, port, port+1)
	pod("bystander", "node2", map[string]string{"role": "bystander"}, port)

	// allow-client: rule 0 admits the client on port+1 only (never used), rule 1 on
	// port: the probe must move rule 1 and not rule 0. unrelated isolates another pod;
	// its name has the API's maximum length (253), longer than any chain name or rule
	// comment can hold, and its series must still carry it whole.
	allow := ingressFrom("allow-client", map[string]string{"role": "server"}, map[string]string{"role": "client"}, port+1)
	allow.Spec.Ingress = append(allow.Spec.Ingress, ingressFrom("", nil, map[string]string{"role": "client"}, port).Spec.Ingress...)
	unrelatedName := "unrelated-" + strings.Repeat("x", 253-len("unrelated-"))
	unrelated := ingressFrom(unrelatedName, map[string]string{"role": "bystander"}, map[string]string{"role": "nobody"}, port)
	for _, np := range []*networkingv1.NetworkPolicy{allow, unrelated} {
		if err := c.Client().Create(ctx, np); err != nil {
			t.Fatalf("create policy %s: %v", np.Name, err)
		}
	}

	s := newScraper(t, c.Node("node2"))
	rule := func(r string) map[string]string {
		return map[string]string{"namespace": ns, "policy": "allow-client", "direction": "ingress", "rule": r}
	}
	dropsOf := func(policy string) map[string]string {
		return map[string]string{"namespace": ns, "policy": policy, "direction": "ingress"}
	}
	// The agent applies the policies asynchronously: wait for node2's agent to expose
	// the series of both policies (they exist once the chains are in the kernel).
	var before bench.Metrics
	deadline := time.Now().Add(time.Minute)
	for {
		m, err := s.scrape(ctx)
		if err == nil {
			_, a := value(m, "nftpolicy_policy_allowed_packets_total", rule("1"))
			_, d := value(m, "nftpolicy_policy_dropped_packets_total", dropsOf(unrelatedName))
			if a && d {
				before = m
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the verdict series of both policies did not appear (last scrape error %v); agent log:\n%s", err, c.AgentLog("node2"))
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	for _, g := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"nftpolicy_policies", nil, 2},
		{"nftpolicy_local_pods_isolated", map[string]string{"direction": "ingress"}, 2},
		{"nftpolicy_local_pods_isolated", map[string]string{"direction": "egress"}, 0},
		{"nftpolicy_cache_objects", map[string]string{"kind": "networkpolicies"}, 2},
		{"nftpolicy_cache_objects", map[string]string{"kind": "pods"}, 4},
	} {
		if v, ok := value(before, g.name, g.labels); !ok || v != g.want {
			t.Errorf("%s%v = %v (present %v), want %v", g.name, g.labels, v, ok, g.want)
		}
	}

	to := server.AddrPort(lab.IPv4, port)
	// Denied: the intruder's SYNs are dropped by the isolation chain of allow-client.
	if r, err := c.Probe(ctx, intruder, to, "tcp", time.Second); err != nil || r.OK {
		t.Fatalf("intruder -> server: %+v, %v; want denied", r, err)
	}
	afterDeny := s.mustScrape(ctx)
	// --log-denied: node2's agent decodes the dropped SYN from nflog into one line naming
	// both pods, the port and the isolating policy.
	wantLog := []string{`"msg":"denied connection"`, `"src":"` + ns + `/intruder"`, `"dst":"` + ns + `/server"`,
		fmt.Sprintf(`"port":%d`, port), `"policies":["` + ns + `/allow-client"]`}
	for deadline := time.Now().Add(30 * time.Second); ; {
		found := false
		for _, line := range strings.Split(c.AgentLog("node2"), "\n") {
			ok := true
			for _, w := range wantLog {
				ok = ok && strings.Contains(line, w)
			}
			found = found || ok
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q in node2's agent log:\n%s", wantLog, c.AgentLog("node2"))
		}
		time.Sleep(100 * time.Millisecond) // polling a log file: no event to wait on
	}
	// Allowed: the client's connection is accepted by rule 1 (its first packet; the
	// rest of the connection is accepted as established before any policy rule).
	if r, err := c.Probe(ctx, client, to, "tcp", 5*time.Second); err != nil || !r.OK {
		t.Fatalf("client -> server: %+v, %v; want allowed", r, err)
	}
	afterAllow := s.mustScrape(ctx)

	delta := func(a, b bench.Metrics, name string, labels map[string]string) float64 {
		t.Helper()
		va, ok1 := value(a, name, labels)
		vb, ok2 := value(b, name, labels)
		if !ok1 || !ok2 {
			t.Fatalf("%s%v missing from a scrape", name, labels)
		}
		return vb - va
	}
	if d := delta(before, afterDeny, "nftpolicy_policy_dropped_packets_total", dropsOf("allow-client")); d < 1 {
		t.Errorf("denied probe: drops of allow-client moved by %v, want >= 1", d)
	}
	if d := delta(before, afterDeny, "nftpolicy_policy_allowed_packets_total", rule("1")); d != 0 {
		t.Errorf("denied probe: allowed packets of allow-client rule 1 moved by %v, want 0", d)
	}
	if d := delta(afterDeny, afterAllow, "nftpolicy_policy_allowed_packets_total", rule("1")); d < 1 {
		t.Errorf("allowed probe: allowed packets of allow-client rule 1 moved by %v, want >= 1", d)
	}
	// A TCP SYN in IPv4 is at least 40 bytes.
	if d := delta(afterDeny, afterAllow, "nftpolicy_policy_allowed_bytes_total", rule("1")); d < 40 {
		t.Errorf("allowed probe: allowed bytes of allow-client rule 1 moved by %v, want >= 40", d)
	}
	if d := delta(afterDeny, afterAllow, "nftpolicy_policy_dropped_packets_total", dropsOf("allow-client")); d != 0 {
		t.Errorf("allowed probe: drops of allow-client moved by %v, want 0", d)
	}
	// Nothing else moved: every other verdict series is the same in all three scrapes.
	moved := map[string]bool{
		fmt.Sprintf("nftpolicy_policy_dropped_packets_total%v", dropsOf("allow-client")): true,
		fmt.Sprintf("nftpolicy_policy_allowed_packets_total%v", rule("1")):               true,
		fmt.Sprintf("nftpolicy_policy_allowed_bytes_total%v", rule("1")):                 true,
	}
	b, a := series(before), series(afterAllow)
	if len(b) != len(a) {
		t.Errorf("verdict series changed: before %v, after %v", b, a)
	}
	for k, v := range b {
		if !moved[k] && a[k] != v {
			t.Errorf("unrelated series %s moved from %v to %v", k, v, a[k])
		}
	}
	for _, want := range []string{
		fmt.Sprintf("nftpolicy_policy_allowed_packets_total%v", rule("0")),
		fmt.Sprintf("nftpolicy_policy_dropped_packets_total%v", dropsOf(unrelatedName)),
		fmt.Sprintf("nftpolicy_policy_allowed_packets_total%v", map[string]string{"namespace": ns, "policy": unrelatedName, "direction": "ingress", "rule": "0"}),
	} {
		if _, ok := a[want]; !ok {
			t.Errorf("series %s missing; have %v", want, a)
		}
	}
}

// startLab starts a 2-node routed lab whose agents serve their metrics on metricsAddr
// and log denied connections, with namespace ns created; closed at the test's end.
// The lab starts agents with metrics off (and plain HTTP, --metrics-secure=false, for
// whoever turns them on); a later flag wins.
func startLab(ctx context.Context, t *testing.T, extraArgs ...string) *lab.Cluster {
	t.Helper()
	lab.SkipUnlessCluster(t)
	agent := os.Getenv("NFTPOLICY_AGENT")
	if agent == "" {
		testns.SkipUnlessRequired(t, "NFTPOLICY_AGENT is not set (make build; make test sets it)")
	}
	if err := lab.CleanupStale(""); err != nil {
		t.Logf("cleaning up stale labs: %v", err)
	}
	c, err := lab.StartCluster(ctx, lab.ClusterOptions{
		Nodes: 2, Topology: lab.Routed, AgentBinary: agent, Progress: lab.TestLog(t),
		AgentArgs: append([]string{"--metrics-bind-address", metricsAddr, "--log-denied"}, extraArgs...),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close the lab: %v", err)
		}
	})
	if err := c.CreateNamespace(ctx, ns, nil); err != nil {
		t.Fatal(err)
	}
	return c
}
