package compiler

import (
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/nftpolicy/nftpolicy/internal/npeval"
	"github.com/nftpolicy/nftpolicy/internal/npeval/hostile"
	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
	"github.com/nftpolicy/nftpolicy/pkg/tracer"
)

// TestHostileInput compiles the hostile cluster (internal/npeval/hostile: hundreds of
// peers and ports, 0.0.0.0/0 and ::/0 minus 500 excepts, overlapping CIDRs, IPv4 and
// IPv6 in one rule, a pod with 3000 labels, 63-character names) for both nodes and
// checks that the rulesets are valid, that Engine and Compile agree, that every name
// fits, and that the verdicts on sampled connections agree with npeval.
func TestHostileInput(t *testing.T) {
	t.Run("NetworkPolicy", func(t *testing.T) { testHostileInput(t, hostile.Cluster()) })
	// The same with ClusterNetworkPolicies at the API's limits in both tiers, and the
	// nodes as destinations of their node peers.
	t.Run("ClusterNetworkPolicy", func(t *testing.T) { testHostileInput(t, hostile.CNPCluster()) })
}

func testHostileInput(t *testing.T, cl npeval.Cluster) {
	trs := map[string]*tracer.Tracer{}
	for _, node := range []string{"n1", "n2"} {
		snap := &model.Snapshot{NodeName: node, Pods: cl.Pods, Namespaces: cl.Namespaces, Policies: cl.Policies,
			ClusterPolicies: cl.ClusterPolicies, Nodes: cl.Nodes}
		start := time.Now()
		res := Compile(snap, Options{Revocation: true})
		t.Logf("node %s: compiled in %v: %+v", node, time.Since(start), res.Ruleset.Stats())
		for _, p := range res.Problems {
			// The hostile Baseline tie is deliberate: a warning, not a problem of the input.
			if !IsSamePriority(p) {
				t.Errorf("node %s: valid hostile input reported a problem: %v", node, p)
			}
		}
		if err := res.Ruleset.Validate(); err != nil {
			t.Fatalf("node %s: invalid ruleset: %v", node, err)
		}
		for _, s := range res.Ruleset.Sets {
			if len(s.Name) > ruleset.MaxNameLen {
				t.Errorf("set name %q longer than %d", s.Name, ruleset.MaxNameLen)
			}
		}
		for _, c := range res.Ruleset.Chains {
			if len(c.Name) > ruleset.MaxNameLen {
				t.Errorf("chain name %q longer than %d", c.Name, ruleset.MaxNameLen)
			}
		}
		eres, _ := newEngineFrom(snap, Options{Revocation: true}).Flush()
		if d := ruleset.Diff(res.Ruleset, eres.Ruleset); !d.Empty() {
			t.Fatalf("node %s: Engine and Compile differ: %d ops", node, d.Ops())
		}
		trs[node] = tracer.New(res.Ruleset)
	}

	ev := npeval.New(cl)
	type ep struct {
		ip   netip.Addr
		node string
		host bool // a node's own address
	}
	var pods, ext []ep
	for _, p := range cl.Pods {
		for _, ip := range p.IPs {
			pods = append(pods, ep{ip: ip, node: p.NodeName})
		}
	}
	for _, ip := range hostile.External {
		ext = append(ext, ep{ip: ip})
	}
	var hosts []ep
	for _, n := range cl.Nodes {
		for _, ip := range n.Addrs {
			hosts = append(hosts, ep{ip: ip, node: n.Name, host: true})
		}
	}
	probes := []struct {
		proto corev1.Protocol
		port  uint16
	}{{corev1.ProtocolTCP, 80}, {corev1.ProtocolTCP, 84}, {corev1.ProtocolTCP, 10055}, {corev1.ProtocolTCP, 8003},
		{corev1.ProtocolUDP, 2002}, {corev1.ProtocolUDP, 53}, {corev1.ProtocolSCTP, 80}}
	allowed, denied := 0, 0
	check := func(src, dst ep) {
		for _, pr := range probes {
			pn, _ := ProtocolNumber(pr.proto)
			pkt := tracer.Packet{Src: src.ip, Dst: dst.ip, Proto: pn, DPort: pr.port}
			if dst.host && dst.node == src.node {
				pkt.Hook = ruleset.HookInput // a pod to its own node
			}
			got := true
			if src.node != "" {
				got = trs[src.node].Allowed(pkt)
			}
			if dst.node != "" && dst.node != src.node && !dst.host {
				got = trs[dst.node].Allowed(pkt) && got
			}
			want := ev.Allowed(npeval.Conn{Src: src.ip, Dst: dst.ip, Proto: pr.proto, Port: pr.port})
			if got != want {
				t.Errorf("%s -> %s %s/%d: ruleset allowed=%v, npeval %v", src.ip, dst.ip, pr.proto, pr.port, got, want)
			}
			if got {
				allowed++
			} else {
				denied++
			}
		}
	}
	// Sampled pairs: each pod to a handful of others in both namespaces (same family),
	// and every pod to and from the outside addresses.
	for i, s := range pods {
		for _, step := range []int{2, 3, 2*hostile.Pods + 2, 2*hostile.Pods + 7, 2*hostile.Pods + 14} {
			d := pods[(i+step)%len(pods)]
			if d.ip.Is4() == s.ip.Is4() {
				check(s, d)
			}
		}
		for _, x := range ext {
			if x.ip.Is4() == s.ip.Is4() {
				check(s, x)
				check(x, s)
			}
		}
		for _, h := range hosts {
			if h.ip.Is4() == s.ip.Is4() {
				check(s, h)
			}
		}
	}
	t.Logf("%d connections allowed, %d denied", allowed, denied)
	// The sample must exercise both outcomes, or it proves little.
	if allowed == 0 || denied == 0 {
		t.Errorf("sample judged %d allowed and %d denied: the hostile cluster lost its teeth", allowed, denied)
	}
}
