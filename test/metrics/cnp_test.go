package metrics

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/test/bench"
	"github.com/nftpolicy/nftpolicy/test/lab"
)

// TestClusterPolicyRuleCounters: with the ClusterNetworkPolicy CRD installed after the
// agents started, a connection an Admin Deny rule drops moves that rule's counter and
// gives a denied-connection log line naming the policy and rule; one its Accept rule
// admits moves the Accept counter; the cache gauge counts the policy.
func TestClusterPolicyRuleCounters(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := startLab(ctx, t, "--cluster-policy-check-period", "1s")
	pod := func(name, node string, ports ...int32) *lab.ClusterPod {
		p, err := c.CreatePod(ctx, lab.PodSpec{Namespace: ns, Name: name, Node: node,
			Labels: map[string]string{"role": name}, Ports: lab.TCPUDPPorts(ports...)})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	client, intruder, server := pod("client", "node1"), pod("intruder", "node1"), pod("server", "node2", port)
	if err := c.InstallCNPCRD(ctx, "standard"); err != nil {
		t.Fatal(err)
	}
	from := func(role string) []cnp.ClusterNetworkPolicyIngressPeer {
		return []cnp.ClusterNetworkPolicyIngressPeer{{Pods: &cnp.NamespacedPod{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": role}}}}}
	}
	guard := &cnp.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "guard"}, Spec: cnp.ClusterNetworkPolicySpec{
		Tier: cnp.AdminTier, Priority: 5,
		Subject: cnp.ClusterNetworkPolicySubject{Pods: &cnp.NamespacedPod{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "server"}}}},
		Ingress: []cnp.ClusterNetworkPolicyIngressRule{
			{Name: "no-intruder", Action: cnp.ClusterNetworkPolicyRuleActionDeny, From: from("intruder")},
			{Name: "client", Action: cnp.ClusterNetworkPolicyRuleActionAccept, From: from("client")},
		},
	}}
	if err := c.Client().Create(ctx, guard); err != nil {
		t.Fatal(err)
	}
	s := newScraper(t, c.Node("node2"))
	counter := func(rule, action string) map[string]string {
		return map[string]string{"policy": "guard", "tier": "Admin", "direction": "ingress", "rule": rule, "action": action}
	}
	const name = "nftpolicy_cluster_policy_rule_packets_total"
	// Enforced once node2's agent exposes the series of both rules.
	var before bench.Metrics
	for deadline := time.Now().Add(time.Minute); ; {
		m, err := s.scrape(ctx)
		if err == nil {
			_, d := value(m, name, counter("no-intruder", "Deny"))
			_, a := value(m, name, counter("client", "Accept"))
			if d && a {
				before = m
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the rule series did not appear (last scrape error %v); agent log:\n%s", err, c.AgentLog("node2"))
		}
		time.Sleep(100 * time.Millisecond) // polling a scrape: no event to wait on
	}
	if v, ok := value(before, "nftpolicy_cache_objects", map[string]string{"kind": "clusternetworkpolicies"}); !ok || v != 1 {
		t.Errorf("cache_objects{kind=clusternetworkpolicies} = %v (present %v), want 1", v, ok)
	}

	to := server.AddrPort(lab.IPv4, port)
	if r, err := c.Probe(ctx, intruder, to, "tcp", time.Second); err != nil || r.OK {
		t.Fatalf("intruder -> server: %+v, %v; want denied", r, err)
	}
	if r, err := c.Probe(ctx, client, to, "tcp", 5*time.Second); err != nil || !r.OK {
		t.Fatalf("client -> server: %+v, %v; want allowed", r, err)
	}
	after := s.mustScrape(ctx)
	for _, rc := range [][2]string{{"no-intruder", "Deny"}, {"client", "Accept"}} {
		b, _ := value(before, name, counter(rc[0], rc[1]))
		a, ok := value(after, name, counter(rc[0], rc[1]))
		if !ok || a-b < 1 {
			t.Errorf("%s%v moved by %v, want at least 1", name, counter(rc[0], rc[1]), a-b)
		}
	}
	wantLog := []string{`"msg":"denied connection"`, `"src":"` + ns + `/intruder"`, `"policies":["ClusterNetworkPolicy/guard"]`,
		`"rule":"ClusterNetworkPolicy guard, rule no-intruder, Admin tier, priority 5"`}
	for deadline := time.Now().Add(30 * time.Second); ; {
		for _, line := range strings.Split(c.AgentLog("node2"), "\n") {
			ok := true
			for _, w := range wantLog {
				ok = ok && strings.Contains(line, w)
			}
			if ok {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q in node2's agent log:\n%s", wantLog, c.AgentLog("node2"))
		}
		time.Sleep(100 * time.Millisecond) // polling a log file: no event to wait on
	}
}
