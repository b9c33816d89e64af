package compiler

import (
	"fmt"
	"maps"
	"net/netip"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
	"github.com/nftpolicy/nftpolicy/pkg/tracer"
)

// cluster is a test fixture: pods spread over nodes, namespaces and policies. Traffic is
// judged the way the kernel would: the packet goes through the ruleset of the source's
// node and, when the destination lives elsewhere, through the destination node's too.
type cluster struct {
	t          *testing.T
	pods       []*model.Pod
	namespaces map[string]*model.Namespace
	policies   []*networkingv1.NetworkPolicy
	cnps       []*cnp.ClusterNetworkPolicy
	nodeIPs    map[string][]netip.Addr
	nodeLabels map[string]map[string]string
	// opts are the compiler's options (zero by default).
	opts Options
}

func newCluster(t *testing.T) *cluster {
	return &cluster{t: t, namespaces: map[string]*model.Namespace{}, nodeIPs: map[string][]netip.Addr{
		"n1": {netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("fd00::1")},
		"n2": {netip.MustParseAddr("192.168.0.2"), netip.MustParseAddr("fd00::2")},
	}}
}

// upstream builds the upstream e2e model: namespaces x, y, z, pods a, b, c in each with
// label pod=<name>, dual-stack, ports serve-80-tcp/serve-81-tcp/serve-80-udp/serve-81-udp,
// a and c on n1, b on n2.
func upstream(t *testing.T) *cluster {
	c := newCluster(t)
	for i, ns := range []string{"x", "y", "z"} {
		c.ns(ns, nil)
		for j, name := range []string{"a", "b", "c"} {
			node := "n1"
			if name == "b" {
				node = "n2"
			}
			c.pod(ns, name, node, fmt.Sprintf("10.%d.0.%d", i+1, j+1), map[string]string{"pod": name},
				port("serve-80-tcp", corev1.ProtocolTCP, 80), port("serve-81-tcp", corev1.ProtocolTCP, 81),
				port("serve-80-udp", corev1.ProtocolUDP, 80), port("serve-81-udp", corev1.ProtocolUDP, 81))
			c.last().IPs = append(c.last().IPs, netip.MustParseAddr(fmt.Sprintf("fd00:%d::%d", i+1, j+1)))
		}
	}
	return c
}

func port(name string, proto corev1.Protocol, n int32) model.NamedPort {
	return model.NamedPort{Name: name, Protocol: proto, Port: n}
}

func (c *cluster) ns(name string, l map[string]string) *cluster {
	labels := map[string]string{NamespaceNameLabel: name}
	for k, v := range l {
		labels[k] = v
	}
	c.namespaces[name] = &model.Namespace{Name: name, Labels: labels}
	return c
}

func (c *cluster) pod(ns, name, node, ip string, l map[string]string, ports ...model.NamedPort) *model.Pod {
	p := &model.Pod{Namespace: ns, Name: name, NodeName: node, Labels: l, Phase: corev1.PodRunning, Ports: ports}
	if ip != "" {
		p.IPs = []netip.Addr{netip.MustParseAddr(ip)}
	}
	c.pods = append(c.pods, p)
	return p
}

func (c *cluster) last() *model.Pod { return c.pods[len(c.pods)-1] }

func (c *cluster) find(key string) *model.Pod {
	for _, p := range c.pods {
		if p.Key() == key {
			return p
		}
	}
	c.t.Fatalf("no pod %s", key)
	return nil
}

func (c *cluster) policy(np *networkingv1.NetworkPolicy) *cluster {
	c.policies = append(c.policies, np)
	return c
}

func (c *cluster) snapshot(node string) *model.Snapshot {
	return &model.Snapshot{NodeName: node, Pods: c.pods, Namespaces: c.namespaces, Policies: c.policies,
		ClusterPolicies: c.cnps, Nodes: c.nodes()}
}

// nodes are the model nodes of nodeIPs, labelled kubernetes.io/hostname=<name> plus
// nodeLabels.
func (c *cluster) nodes() []*model.Node {
	var out []*model.Node
	for name, ips := range c.nodeIPs {
		l := map[string]string{"kubernetes.io/hostname": name}
		for k, v := range c.nodeLabels[name] {
			l[k] = v
		}
		out = append(out, &model.Node{Name: name, Labels: l, Addrs: ips})
	}
	return out
}

func (c *cluster) clusterPolicy(p *cnp.ClusterNetworkPolicy) *cluster {
	c.cnps = append(c.cnps, p)
	return c
}

func (c *cluster) compile(node string) *Result {
	res := Compile(c.snapshot(node), c.opts)
	if err := res.Ruleset.Validate(); err != nil {
		c.t.Fatalf("compiled ruleset for %s is invalid: %v\n%s", node, err, ruleset.Render(res.Ruleset))
	}
	if err := checkOwners(res.Ruleset); err != nil {
		c.t.Fatalf("compiled ruleset for %s: %v\n%s", node, err, ruleset.Render(res.Ruleset))
	}
	return res
}

// checkOwners checks that rs.Owners describes rs exactly: one owner per chain, rule and
// set; allow rules accept and belong to their chain's policy; an isolation chain jumps
// to the chains of its policies in order and ends in its drop; each set's role fits it.
func checkOwners(rs *ruleset.Ruleset) error {
	o := rs.Owners
	if o == nil {
		return fmt.Errorf("no owners")
	}
	if len(o.Chains) != len(rs.Chains) || len(o.Sets) != len(rs.Sets) {
		return fmt.Errorf("owners of %d chains and %d sets, the ruleset has %d and %d", len(o.Chains), len(o.Sets), len(rs.Chains), len(rs.Sets))
	}
	for _, ch := range rs.Chains {
		co := o.Chain(ch.Name)
		if co == nil || len(co.Rules) != len(ch.Rules) || co.Direction == "" {
			return fmt.Errorf("chain %s: owner %+v does not describe its %d rules", ch.Name, co, len(ch.Rules))
		}
		if copiedChain(ch.Name) {
			// A copy (audit mode): its rules keep the owners of the rules they copy, with
			// verdicts leading to other copies or to the audit chains.
			for i, r := range ch.Rules {
				ro := co.Rules[i]
				target := r.Verdict.Kind == ruleset.VerdictJump || r.Verdict.Kind == ruleset.VerdictGoto
				if ro.Role == "" || (target && o.Chain(r.Verdict.Chain) == nil) || (r.Log != nil && r.Log.Prefix != DenyLogPrefix(ch.Name)) ||
					(ro.Role == ruleset.RoleChainEnd && (i != len(ch.Rules)-1 || len(r.Matches) != 0)) {
					return fmt.Errorf("copied chain %s rule %d (%s): owner %+v", ch.Name, i, ruleset.FormatRule(r), ro)
				}
			}
			if (co.Role == ruleset.RoleShadow) != strings.HasPrefix(ch.Name, "shadow-") {
				return fmt.Errorf("copied chain %s has role %s", ch.Name, co.Role)
			}
			continue
		}
		var jumped []ruleset.PolicyRef
		for i, r := range ch.Rules {
			ro := co.Rules[i]
			var ok bool
			switch ro.Role {
			case ruleset.RoleAllow:
				ok = co.Role == ruleset.RolePolicy && r.Verdict == ruleset.Accept && len(co.Policies) == 1 && ro.Policy == co.Policies[0]
			case ruleset.RolePolicyJump:
				target := o.Chain(r.Verdict.Chain)
				ok = co.Role == ruleset.RoleIsolation && r.Verdict.Kind == ruleset.VerdictJump && target != nil &&
					target.Role == ruleset.RolePolicy && target.Direction == co.Direction && target.Policies[0] == ro.Policy
				jumped = append(jumped, ro.Policy)
			case ruleset.RoleIsolationDrop:
				ok = co.Role == ruleset.RoleIsolation && r.Verdict == ruleset.Drop && i == len(ch.Rules)-1
			case ruleset.RoleDenyLog:
				ok = (co.Role == ruleset.RoleIsolation || co.Role == ruleset.RoleClusterDenyLog || co.Role == ruleset.RoleAuditDeny) && r.Log != nil
			case ruleset.RoleAuditDeny:
				ok = co.Role == ruleset.RoleAuditDeny && r.Verdict == ruleset.Accept && r.Counter && len(co.Policies) > 0 && i == len(ch.Rules)-1
			case ruleset.RoleAuditAllow:
				ok = co.Role == ruleset.RoleAuditAllow && r.Verdict == ruleset.Drop && r.Counter && len(co.Policies) > 0 && i == len(ch.Rules)-1
			case ruleset.RoleDispatch:
				ok = co.Role == ruleset.RoleBase && r.VMap != nil && o.Sets[r.VMap.Map] != nil && o.Sets[r.VMap.Map].Direction == co.Direction
			case ruleset.RoleEstablished, ruleset.RoleNeighbourDiscovery, ruleset.RoleRevoked:
				ok = co.Role == ruleset.RoleBase
			case ruleset.RoleClusterAccept, ruleset.RoleClusterDeny, ruleset.RoleClusterPass:
				want := map[ruleset.Role]string{ruleset.RoleClusterAccept: "Accept", ruleset.RoleClusterDeny: "Deny", ruleset.RoleClusterPass: "Pass"}[ro.Role]
				ok = (co.Role == ruleset.RoleAdminTier || co.Role == ruleset.RoleBaselineTier || co.Role == ruleset.RoleClusterDenyLog) && ro.Policy.Cluster() &&
					ro.Cluster != nil && (ro.Cluster.Action == want || (ro.Role == ruleset.RoleClusterDeny && r.Verdict == ruleset.Drop)) &&
					slices.Contains(co.Policies, ro.Policy)
				switch ro.Role {
				case ruleset.RoleClusterAccept:
					ok = ok && r.Verdict == ruleset.Accept
				case ruleset.RoleClusterDeny:
					// A drop, or (LogDenied) a goto to the rule's deny chain.
					target := o.Chain(r.Verdict.Chain)
					ok = ok && (r.Verdict == ruleset.Drop || (r.Verdict.Kind == ruleset.VerdictGoto && target != nil &&
						target.Role == ruleset.RoleClusterDenyLog && target.Policies[0] == ro.Policy))
				case ruleset.RoleClusterPass:
					ok = ok && (r.Verdict == ruleset.Accept || (r.Verdict.Kind == ruleset.VerdictGoto && o.Chain(r.Verdict.Chain) != nil))
				}
			case ruleset.RoleTierNext:
				ok = co.Role == ruleset.RoleAdminTier && r.Verdict.Kind == ruleset.VerdictGoto && o.Chain(r.Verdict.Chain) != nil && i == len(ch.Rules)-1
			default:
				ok = false
			}
			if !ok {
				return fmt.Errorf("chain %s rule %d (%s): owner %+v in a %s chain", ch.Name, i, ruleset.FormatRule(r), ro, co.Role)
			}
		}
		if co.Role == ruleset.RoleIsolation && fmt.Sprint(jumped) != fmt.Sprint(co.Policies) {
			return fmt.Errorf("isolation chain %s jumps to %v, owned by %v", ch.Name, jumped, co.Policies)
		}
	}
	for _, s := range rs.Sets {
		so := o.Sets[s.Name]
		if so == nil || (so.Role == ruleset.RoleDispatch) != s.IsMap {
			return fmt.Errorf("set %s: owner %+v", s.Name, so)
		}
	}
	return nil
}

// copiedChain reports whether a chain is one of audit mode's copies.
func copiedChain(name string) bool {
	return strings.HasPrefix(name, "shadow-") || strings.HasPrefix(name, "enforce-")
}

// describeOwners prints owners for a failure message.
func describeOwners(o *ruleset.Owners) string {
	if o == nil {
		return "<nil>"
	}
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(o.Chains)) {
		fmt.Fprintf(&b, "\n  chain %s: %+v", name, *o.Chains[name])
	}
	for _, name := range slices.Sorted(maps.Keys(o.Sets)) {
		fmt.Fprintf(&b, "\n  set %s: %+v", name, *o.Sets[name])
	}
	return b.String()
}

// endpoint resolves a pod (ns/name), a node's host ("node:n1") or a bare address.
func (c *cluster) endpoint(ref string, family ruleset.Family) tracer.Endpoint {
	if len(ref) > 5 && ref[:5] == "node:" {
		n := ref[5:]
		ip := c.nodeIPs[n][0]
		if family == ruleset.IPv6 {
			ip = c.nodeIPs[n][1]
		}
		return tracer.Endpoint{Addr: ip, Node: n, Host: true}
	}
	if a, err := netip.ParseAddr(ref); err == nil {
		for _, p := range c.pods {
			for _, ip := range p.IPs {
				if ip == a && p.Eligible() {
					if p.HostNetwork {
						return tracer.Endpoint{Addr: a, Node: p.NodeName, Host: true}
					}
					return tracer.Endpoint{Addr: a, Node: p.NodeName}
				}
			}
		}
		return tracer.Endpoint{Addr: a}
	}
	p := c.find(ref)
	if p.HostNetwork {
		return c.endpoint("node:"+p.NodeName, family)
	}
	for _, ip := range p.IPs {
		if ip.Is4() == (family == ruleset.IPv4) {
			return tracer.Endpoint{Addr: ip, Node: p.NodeName}
		}
	}
	c.t.Fatalf("pod %s has no %s address", ref, family)
	return tracer.Endpoint{}
}

// verdict judges a new connection from → to. Each node on the path evaluates it
// (tracer.Judge).
func (c *cluster) verdict(from, to string, proto corev1.Protocol, dport uint16, family ruleset.Family) (bool, []tracer.Result) {
	src, dst := c.endpoint(from, family), c.endpoint(to, family)
	pn, _ := ProtocolNumber(proto)
	j, _ := tracer.Judge(src, dst, tracer.Packet{Proto: pn, DPort: dport}, func(node string) (*tracer.Tracer, error) {
		return tracer.New(c.compile(node).Ruleset), nil
	})
	var results []tracer.Result
	for _, h := range j.Hops {
		results = append(results, h.Result)
	}
	return j.Allowed(), results
}

// probe is one expected verdict.
type probe struct {
	from, to string
	proto    corev1.Protocol
	port     uint16
	allowed  bool
}

func tcp(from, to string, port uint16, allowed bool) probe {
	return probe{from, to, corev1.ProtocolTCP, port, allowed}
}

func udp(from, to string, port uint16, allowed bool) probe {
	return probe{from, to, corev1.ProtocolUDP, port, allowed}
}

func (c *cluster) expect(probes ...probe) {
	c.t.Helper()
	c.expectFamily(ruleset.IPv4, probes...)
}

func (c *cluster) expectFamily(fam ruleset.Family, probes ...probe) {
	c.t.Helper()
	for _, p := range probes {
		got, results := c.verdict(p.from, p.to, p.proto, p.port, fam)
		if got != p.allowed {
			msg := fmt.Sprintf("%s %s -> %s %s/%d: allowed=%v, want %v", fam, p.from, p.to, p.proto, p.port, got, p.allowed)
			for _, r := range results {
				msg += "\n  trace:"
				for _, s := range r.Steps {
					msg += "\n    " + s.String()
				}
			}
			c.t.Error(msg)
		}
	}
}

// matrix checks every pair of the upstream pods on one port/protocol: allowed lists the
// pairs "from>to" that must connect; every other pair must not.
func (c *cluster) matrix(proto corev1.Protocol, port uint16, fam ruleset.Family, allowed func(from, to string) bool) {
	c.t.Helper()
	var names []string
	for _, p := range c.pods {
		if p.Eligible() && !p.HostNetwork {
			names = append(names, p.Key())
		}
	}
	for _, f := range names {
		for _, t := range names {
			want := allowed(f, t)
			c.expectFamily(fam, probe{f, t, proto, port, want})
		}
	}
}

// --- policy builders ---

func netpol(ns, name string, sel map[string]string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: sel}},
	}
}

func types(np *networkingv1.NetworkPolicy, t ...networkingv1.PolicyType) *networkingv1.NetworkPolicy {
	np.Spec.PolicyTypes = t
	return np
}

func ingress(np *networkingv1.NetworkPolicy, rules ...networkingv1.NetworkPolicyIngressRule) *networkingv1.NetworkPolicy {
	np.Spec.Ingress = append(np.Spec.Ingress, rules...)
	return np
}

func egress(np *networkingv1.NetworkPolicy, rules ...networkingv1.NetworkPolicyEgressRule) *networkingv1.NetworkPolicy {
	np.Spec.Egress = append(np.Spec.Egress, rules...)
	return np
}

func from(peers ...networkingv1.NetworkPolicyPeer) networkingv1.NetworkPolicyIngressRule {
	return networkingv1.NetworkPolicyIngressRule{From: peers}
}

func to(peers ...networkingv1.NetworkPolicyPeer) networkingv1.NetworkPolicyEgressRule {
	return networkingv1.NetworkPolicyEgressRule{To: peers}
}

func withPorts(r networkingv1.NetworkPolicyIngressRule, ports ...networkingv1.NetworkPolicyPort) networkingv1.NetworkPolicyIngressRule {
	r.Ports = ports
	return r
}

func withEgressPorts(r networkingv1.NetworkPolicyEgressRule, ports ...networkingv1.NetworkPolicyPort) networkingv1.NetworkPolicyEgressRule {
	r.Ports = ports
	return r
}

func podSel(l map[string]string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{MatchLabels: l}}
}

func nsSel(l map[string]string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{MatchLabels: l}}
}

func nsPodSel(ns, pod map[string]string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{MatchLabels: ns}, PodSelector: &metav1.LabelSelector{MatchLabels: pod}}
}

func ipBlock(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

func numPort(proto corev1.Protocol, n int32) networkingv1.NetworkPolicyPort {
	p := intstr.FromInt32(n)
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &p}
}

func rangePort(proto corev1.Protocol, n, end int32) networkingv1.NetworkPolicyPort {
	p := numPort(proto, n)
	p.EndPort = &end
	return p
}

func namePort(proto corev1.Protocol, name string) networkingv1.NetworkPolicyPort {
	p := intstr.FromString(name)
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &p}
}

func protoOnly(proto corev1.Protocol) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Protocol: &proto}
}

func noProto(n int32) networkingv1.NetworkPolicyPort {
	p := intstr.FromInt32(n)
	return networkingv1.NetworkPolicyPort{Port: &p}
}

func m(kv ...string) map[string]string {
	out := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

func nsOf(key string) string {
	for i := range key {
		if key[i] == '/' {
			return key[:i]
		}
	}
	return key
}

// newEngineFrom returns an engine holding the snapshot, fed object by object as the
// agent feeds its engine from the informer caches.
func newEngineFrom(snap *model.Snapshot, opts Options) *Engine {
	e := NewEngine(snap.NodeName, opts)
	for _, ns := range snap.Namespaces {
		e.SetNamespace(ns)
	}
	for _, np := range snap.Policies {
		e.SetPolicy(np)
	}
	for _, p := range snap.ClusterPolicies {
		e.SetClusterPolicy(p)
	}
	for _, n := range snap.Nodes {
		e.SetNode(n)
	}
	for _, p := range snap.Pods {
		e.SetPod(p)
	}
	return e
}
