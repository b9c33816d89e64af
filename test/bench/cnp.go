package bench

// The ClusterNetworkPolicy load (issue 13): Admin and Baseline policies over the
// synthetic cluster, of which a few Admin ones select the bench's client and server,
// measured by the data path's configurations (e) and (f) and by two API write →
// enforced experiments.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

const (
	// cnpChannel is the CRD the bench installs: the standard channel, as the chart
	// does by default (the load uses no experimental field).
	cnpChannel = "standard"
	cnpCRDName = "clusternetworkpolicies.policy.networking.k8s.io"

	// cnpRulesPerDirection is the number of ingress rules of every policy, and of
	// egress rules.
	cnpRulesPerDirection = 10

	// The client and the server carry cnpSubjectLabel: the subject of the bench's
	// Admin policies (client2 and server2 do not).
	cnpSubjectLabel = "cnp"
	cnpSubjectValue = "subject"
	// quarantineLabel on the client makes every bench Admin policy deny it at the
	// server (the cnp-peer-label change).
	quarantineLabel = "quarantine"

	// cnpDenyName is the Admin policy the cnp-create-delete change creates ahead of
	// every other (priority 0) to deny the client at the server.
	cnpDenyName = "bench-deny"
)

// cnpEnforceKinds are the ClusterNetworkPolicy changes of the enforcement experiment,
// each denying the client → server flow and then allowing it again:
//
//   - cnp-update: the last bench Admin policy's last ingress rule (the Pass the flow
//     ends at) becomes a Deny, then a Pass again;
//   - cnp-peer-label: the client gets the label a Deny rule of every bench Admin
//     policy selects (pod set elements change, no rule), then loses it;
//   - cnp-create-delete: an Admin policy of priority 0 denying the client at the
//     server is created, then deleted.
var cnpEnforceKinds = []string{"cnp-update", "cnp-peer-label", "cnp-create-delete"}

// CNPReport describes the ClusterNetworkPolicy load.
type CNPReport struct {
	Channel string `json:"crd_channel"`
	// Background is the synthetic load the policies come on top of.
	Background Scale `json:"background"`
	// Admin and Baseline policies, RulesPerDirection ingress and as many egress
	// rules each; ClientPolicies of the Admin ones select the client and the server.
	Admin             int `json:"admin"`
	Baseline          int `json:"baseline"`
	RulesPerDirection int `json:"rules_per_direction"`
	ClientPolicies    int `json:"client_policies"`
	// LoadSeconds is CRD installation plus creating the policies.
	LoadSeconds float64 `json:"load_seconds"`
	// WalkedRules is, per node, the number of rules before the Pass that decides the
	// client → server flow in the Admin chain of the agent's table (node1: the
	// client's egress, node2: the server's ingress): what every new connection of
	// configuration (e) crosses.
	WalkedRules map[string]int `json:"walked_rules,omitempty"`
}

func (r CNPReport) objects() int { return r.Admin + r.Baseline }

// describe is the load in one line of the table.
func (r CNPReport) describe() string {
	s := fmt.Sprintf("%d Admin + %d Baseline ClusterNetworkPolicies (%d ingress + %d egress rules each, %s CRD) over %s; %d Admin policies select client and server",
		r.Admin, r.Baseline, r.RulesPerDirection, r.RulesPerDirection, r.Channel, r.Background, r.ClientPolicies)
	if r.WalkedRules != nil {
		s += fmt.Sprintf(": a new connection crosses %d rules on node1 (egress) and %d on node2 (ingress) before the Pass to its NetworkPolicies", r.WalkedRules["node1"], r.WalkedRules["node2"])
	}
	return s
}

// cnpAdminPriority is the priority of the i-th of n Admin policies (10 ... < 1000,
// all distinct, so that no two policies selecting a pod tie); the bench's are spread
// among them (cnpBenchIndex).
func cnpPriority(i, n int) int32 { return int32(10 + i*(980/n)) }

// cnpBenchIndex is the position among the Admin policies of the k-th of m bench
// policies (m ≤ n): evenly spread.
func cnpBenchIndex(k, m, n int) int { return (2*k + 1) * n / (2 * m) }

// cnpBench is the number of bench Admin policies (at most every Admin policy).
func (p Profile) cnpBench() int { return min(p.CNPClientPolicies, p.CNPAdmin) }

// cnpWanted: the profile loads ClusterNetworkPolicies.
func (p Profile) cnpWanted() bool { return p.cnpBench() > 0 }

func benchAdminName(k int) string { return fmt.Sprintf("bench-admin-%d", k) }

// cnpPolicies returns the load of profile p: p.CNPAdmin Admin policies of which
// p.CNPClientPolicies select the client and the server (benchAdminPolicy), the rest
// and p.CNPBaseline Baseline policies select synthetic pods (backgroundCNP).
func cnpPolicies(p Profile) []*cnp.ClusterNetworkPolicy {
	m := p.cnpBench()
	bench := map[int]int{} // Admin index → bench policy
	for k := range m {
		bench[cnpBenchIndex(k, m, p.CNPAdmin)] = k
	}
	var out []*cnp.ClusterNetworkPolicy
	j := 0
	for i := range p.CNPAdmin {
		prio := cnpPriority(i, p.CNPAdmin)
		if k, ok := bench[i]; ok {
			out = append(out, benchAdminPolicy(k, k == m-1, prio))
			continue
		}
		out = append(out, backgroundCNP(cnp.AdminTier, fmt.Sprintf("admin-%d", j), j, prio))
		j++
	}
	for i := range p.CNPBaseline {
		out = append(out, backgroundCNP(cnp.BaselineTier, fmt.Sprintf("baseline-%d", i), j+i, cnpPriority(i, p.CNPBaseline)))
	}
	return out
}

// Peers, ports and selectors of the load.
func nsLabels(kv ...string) *metav1.LabelSelector {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return &metav1.LabelSelector{MatchLabels: m}
}

func podsPeer(ns, pod *metav1.LabelSelector) *cnp.NamespacedPod {
	return &cnp.NamespacedPod{NamespaceSelector: *ns, PodSelector: *pod}
}

func tcpPorts(from, to int32) cnp.ClusterNetworkPolicyProtocol {
	if from == to {
		return cnp.ClusterNetworkPolicyProtocol{TCP: &cnp.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnp.Port{Number: from}}}
	}
	return cnp.ClusterNetworkPolicyProtocol{TCP: &cnp.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnp.Port{Range: &cnp.PortRange{Start: from, End: to}}}}
}

func udpPorts(from, to int32) cnp.ClusterNetworkPolicyProtocol {
	if from == to {
		return cnp.ClusterNetworkPolicyProtocol{UDP: &cnp.ClusterNetworkPolicyProtocolUDP{DestinationPort: &cnp.Port{Number: from}}}
	}
	return cnp.ClusterNetworkPolicyProtocol{UDP: &cnp.ClusterNetworkPolicyProtocolUDP{DestinationPort: &cnp.Port{Range: &cnp.PortRange{Start: from, End: to}}}}
}

func protos(ps ...cnp.ClusterNetworkPolicyProtocol) []cnp.ClusterNetworkPolicyProtocol { return ps }

// cnpRule is one rule of either direction: ingress uses nsPeer/podPeer, egress
// also networks.
type cnpRule struct {
	name     string
	action   cnp.ClusterNetworkPolicyRuleAction
	ns       *metav1.LabelSelector
	pods     *cnp.NamespacedPod
	networks []cnp.CIDR
	protos   []cnp.ClusterNetworkPolicyProtocol
}

func (r cnpRule) ingress() cnp.ClusterNetworkPolicyIngressRule {
	peer := cnp.ClusterNetworkPolicyIngressPeer{Namespaces: r.ns, Pods: r.pods}
	if r.networks != nil {
		panic("networks peer in an ingress rule")
	}
	return cnp.ClusterNetworkPolicyIngressRule{Name: r.name, Action: r.action, From: []cnp.ClusterNetworkPolicyIngressPeer{peer}, Protocols: r.protos}
}

func (r cnpRule) egress() cnp.ClusterNetworkPolicyEgressRule {
	peer := cnp.ClusterNetworkPolicyEgressPeer{Namespaces: r.ns, Pods: r.pods, Networks: r.networks}
	return cnp.ClusterNetworkPolicyEgressRule{Name: r.name, Action: r.action, To: []cnp.ClusterNetworkPolicyEgressPeer{peer}, Protocols: r.protos}
}

var (
	deny   = cnp.ClusterNetworkPolicyRuleActionDeny
	accept = cnp.ClusterNetworkPolicyRuleActionAccept
	pass   = cnp.ClusterNetworkPolicyRuleActionPass
)

// benchNSSel selects the bench namespace (its purpose label: no dependence on the
// kubernetes.io/metadata.name label the API server adds).
func benchNSSel() *metav1.LabelSelector { return nsLabels("purpose", "bench") }

// benchAdminPolicy is the k-th Admin policy selecting the client and the server. None
// of its rules matches the client → server flow (TCP 8080-8082) — each misses on its
// peer, on its port or on both, so a packet does every lookup of the rules it crosses
// — except, in the last bench policy (last), the last ingress and egress rules:
// a Pass for exactly that flow, which hands it to the NetworkPolicies (server-allow,
// client-egress) that allow it. Rule 3 of ingress denies quarantined pods (the
// cnp-peer-label change); the last policy's ingress rule 9 is what cnp-update
// toggles.
func benchAdminPolicy(k int, last bool, prio int32) *cnp.ClusterNetworkPolicy {
	team := func(i int) string { return fmt.Sprintf("t%d", i%10) }
	benchPods := func(kv ...string) *cnp.NamespacedPod { return podsPeer(benchNSSel(), nsLabels(kv...)) }
	benchPorts := tcpPorts(sinkPort, discardPort)
	in := []cnpRule{
		// peer miss
		{name: "deny-team", action: deny, ns: nsLabels("team", team(k))},
		// peer miss
		{name: "deny-attacker", action: deny, pods: benchPods("app", "attacker"), protos: protos(benchPorts)},
		// peer hit, port miss
		{name: "bench-high-ports", action: accept, ns: benchNSSel(), protos: protos(tcpPorts(9000, 9999))},
		// peer miss (until cnp-peer-label)
		{name: "deny-quarantined", action: deny, pods: benchPods(quarantineLabel, "yes")},
		// peer miss
		{name: "pass-team", action: pass, ns: nsLabels("team", team(k+5)), protos: protos(benchPorts)},
		// peer hit, port miss
		{name: "deny-client-udp", action: deny, pods: podsPeer(&metav1.LabelSelector{}, nsLabels("app", "client")), protos: protos(udpPorts(sinkPort, discardPort))},
		// peer hit, port miss
		{name: "bench-https", action: accept, ns: benchNSSel(), protos: protos(tcpPorts(443, 443))},
		// peer miss
		{name: "deny-synthetic", action: deny, pods: podsPeer(nsLabels("team", team(k+1)), nsLabels("app", fmt.Sprintf("app-%d", k%20))), protos: protos(benchPorts)},
		// peer miss
		{name: "deny-low-ports", action: deny, ns: nsLabels("team", team(k+2)), protos: protos(tcpPorts(1, 1023))},
		// peer miss
		{name: "pass-denied", action: pass, pods: benchPods("app", "denied"), protos: protos(benchPorts)},
	}
	out := []cnpRule{
		// peer miss
		{name: "deny-team", action: deny, ns: nsLabels("team", team(k))},
		// peer miss
		{name: "deny-to-denied", action: deny, pods: benchPods("app", "denied"), protos: protos(benchPorts)},
		// peer miss
		{name: "deny-private", action: deny, networks: []cnp.CIDR{cnp.CIDR(fmt.Sprintf("192.168.%d.0/24", k)), "172.16.0.0/12"}},
		// peer hit, port miss
		{name: "bench-high-ports", action: accept, ns: benchNSSel(), protos: protos(tcpPorts(9000, 9999))},
		// peer miss
		{name: "pass-team", action: pass, ns: nsLabels("team", team(k+5)), protos: protos(benchPorts)},
		// peer hit, port miss
		{name: "deny-server-udp", action: deny, pods: podsPeer(&metav1.LabelSelector{}, nsLabels("app", "server")), protos: protos(udpPorts(sinkPort, discardPort))},
		// peer miss
		{name: "deny-synthetic-net", action: deny, networks: []cnp.CIDR{"10.64.0.0/16"}},
		// peer hit, port miss
		{name: "pods-https", action: accept, networks: []cnp.CIDR{"10.244.0.0/16"}, protos: protos(tcpPorts(443, 443))},
		// peer miss
		{name: "deny-synthetic", action: deny, pods: podsPeer(nsLabels("team", team(k+1)), nsLabels("app", fmt.Sprintf("app-%d", k%20)))},
		// peer miss
		{name: "pass-attacker", action: pass, pods: benchPods("app", "attacker"), protos: protos(benchPorts)},
	}
	if last {
		in[len(in)-1] = cnpRule{name: "pass-client", action: pass, pods: benchPods("app", "client"), protos: protos(benchPorts)}
		out[len(out)-1] = cnpRule{name: "pass-server", action: pass, pods: benchPods("app", "server"), protos: protos(benchPorts)}
	}
	p := &cnp.ClusterNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: benchAdminName(k)},
		Spec: cnp.ClusterNetworkPolicySpec{Tier: cnp.AdminTier, Priority: prio,
			Subject: cnp.ClusterNetworkPolicySubject{Pods: podsPeer(benchNSSel(), nsLabels(cnpSubjectLabel, cnpSubjectValue))}},
	}
	for _, r := range in {
		p.Spec.Ingress = append(p.Spec.Ingress, r.ingress())
	}
	for _, r := range out {
		p.Spec.Egress = append(p.Spec.Egress, r.egress())
	}
	return p
}

// backgroundCNP is the j-th policy over the synthetic cluster: its subject is the
// namespaces of team t(j%10) (even j) or the pods app-(j%20) there (odd j), so node1
// and node2 hold subjects of a fifth of the policies; its rules cycle through
// namespace, pod and network peers, single ports, port ranges and no ports, and the
// three actions.
func backgroundCNP(tier cnp.Tier, name string, j int, prio int32) *cnp.ClusterNetworkPolicy {
	team := func(i int) string { return fmt.Sprintf("t%d", i%10) }
	subject := cnp.ClusterNetworkPolicySubject{Namespaces: nsLabels("team", team(j))}
	if j%2 == 1 {
		subject = cnp.ClusterNetworkPolicySubject{Pods: podsPeer(nsLabels("team", team(j)), nsLabels("app", fmt.Sprintf("app-%d", j%20)))}
	}
	p := &cnp.ClusterNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       cnp.ClusterNetworkPolicySpec{Tier: tier, Priority: prio, Subject: subject},
	}
	for r := range cnpRulesPerDirection {
		var in, out cnpRule
		switch (j + r) % 5 {
		case 0:
			in = cnpRule{action: deny, ns: nsLabels("team", team(j+r)), protos: protos(tcpPorts(int32(1000+100*r), int32(1099+100*r)))}
			out = in
		case 1:
			in = cnpRule{action: accept, pods: podsPeer(nsLabels("team", team(r)), nsLabels("tier", fmt.Sprintf("tier-%d", r%3))), protos: protos(tcpPorts(int32(80+r), int32(80+r)))}
			out = in
		case 2:
			in = cnpRule{action: deny, ns: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
				{Key: "team", Operator: metav1.LabelSelectorOpIn, Values: []string{team(r), team(r + 3)}}}}}
			out = cnpRule{action: deny, networks: []cnp.CIDR{cnp.CIDR(fmt.Sprintf("10.64.%d.0/24", j%250)), cnp.CIDR(fmt.Sprintf("192.168.%d.0/24", r))}}
		case 3:
			in = cnpRule{action: pass, pods: podsPeer(&metav1.LabelSelector{}, nsLabels("app", fmt.Sprintf("app-%d", (j+r)%20))), protos: protos(tcpPorts(8000, 8999), udpPorts(53, 53))}
			out = in
		case 4:
			in = cnpRule{action: accept, ns: nsLabels("team", team(j)), protos: protos(tcpPorts(30000, 32767))}
			out = in
		}
		in.name, out.name = fmt.Sprintf("r%d", r), fmt.Sprintf("r%d", r)
		p.Spec.Ingress = append(p.Spec.Ingress, in.ingress())
		p.Spec.Egress = append(p.Spec.Egress, out.egress())
	}
	return p
}

// cnpDenyPolicy denies the client at the server ahead of every other Admin policy.
func cnpDenyPolicy() *cnp.ClusterNetworkPolicy {
	return &cnp.ClusterNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: cnpDenyName},
		Spec: cnp.ClusterNetworkPolicySpec{Tier: cnp.AdminTier, Priority: 0,
			Subject: cnp.ClusterNetworkPolicySubject{Pods: podsPeer(benchNSSel(), nsLabels("app", "server"))},
			Ingress: []cnp.ClusterNetworkPolicyIngressRule{
				cnpRule{name: "deny-client", action: deny, pods: podsPeer(benchNSSel(), nsLabels("app", "client"))}.ingress(),
			}},
	}
}

// loadCNP installs the CRD and creates the load (8 writers).
func (e *env) loadCNP(ctx context.Context, p Profile, rep *CNPReport) error {
	start := time.Now()
	e.cnpInstalled = true // from here on, unloadCNP has something to remove
	if err := e.c.InstallCNPCRD(ctx, cnpChannel); err != nil {
		return err
	}
	objs := cnpPolicies(p)
	jobs := make(chan *cnp.ClusterNetworkPolicy)
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for range 8 {
		wg.Go(func() {
			for o := range jobs {
				if err := e.cnpc.Create(ctx, o); err != nil && !apierrors.IsAlreadyExists(err) {
					mu.Lock()
					errs = append(errs, fmt.Errorf("create ClusterNetworkPolicy %s: %w", o.Name, err))
					mu.Unlock()
				}
			}
		})
	}
	for _, o := range objs {
		jobs <- o
	}
	close(jobs)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	e.cnpLoaded = true
	rep.LoadSeconds = time.Since(start).Seconds()
	e.opts.logf("   %d ClusterNetworkPolicies (%d Admin, %d Baseline) in %.1fs", len(objs), p.CNPAdmin, p.CNPBaseline, rep.LoadSeconds)
	return nil
}

// unloadCNP deletes the CRD — and with it every ClusterNetworkPolicy — and waits until
// it is gone, so that the measurements after it see the cluster they saw before.
func (e *env) unloadCNP(ctx context.Context) error {
	crd := &unstructured.Unstructured{}
	crd.SetAPIVersion("apiextensions.k8s.io/v1")
	crd.SetKind("CustomResourceDefinition")
	crd.SetName(cnpCRDName)
	if err := e.cnpc.Delete(ctx, crd); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete the ClusterNetworkPolicy CRD: %w", err)
	}
	e.cnpLoaded = false
	deadline := time.Now().Add(2 * time.Minute)
	for {
		err := e.cnpc.Get(ctx, client.ObjectKeyFromObject(crd), crd)
		if apierrors.IsNotFound(err) {
			e.cnpInstalled = false
			return nil
		}
		if time.Now().After(deadline) {
			return errors.Join(errors.New("the ClusterNetworkPolicy CRD is still there after 2 minutes"), err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// changeCNP makes one change of cnpEnforceKinds on fp's flow: deny (allow=false) or
// allow again.
func (e *env) changeCNP(ctx context.Context, fp *flowPair, kind string, allow bool) error {
	if fp != e.pair {
		return fmt.Errorf("%s: only the client → server flow is subject to ClusterNetworkPolicies", kind)
	}
	switch kind {
	case "cnp-update":
		action := deny
		if allow {
			action = pass
		}
		patch, err := json.Marshal([]map[string]any{{"op": "replace", "path": fmt.Sprintf("/spec/ingress/%d/action", cnpRulesPerDirection-1), "value": action}})
		if err != nil {
			return err
		}
		obj := &cnp.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: benchAdminName(e.opts.Profile.cnpBench() - 1)}}
		return e.cnpc.Patch(ctx, obj, client.RawPatch(types.JSONPatchType, patch))
	case "cnp-peer-label":
		var v any // JSON null removes the label
		if !allow {
			v = "yes"
		}
		return e.patch(ctx, "pods", benchNS, fp.client.Name, map[string]any{"metadata": map[string]any{"labels": map[string]any{quarantineLabel: v}}})
	case "cnp-create-delete":
		if allow {
			return e.cnpc.Delete(ctx, &cnp.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: cnpDenyName}})
		}
		return e.cnpc.Create(ctx, cnpDenyPolicy())
	}
	return fmt.Errorf("unknown change %q", kind)
}

// checkCNPTable checks that an agent's table (nft -s list table) holds the rules of
// every bench Admin policy — i.e. that the agent enforces ClusterNetworkPolicies —
// and returns how many rules precede, in the Admin chain of the node's side of the
// client → server flow (node1: the client's egress, node2: the server's ingress), the
// Pass that decides it.
func checkCNPTable(text, node string, p Profile) (walked int, err error) {
	for k := range p.cnpBench() {
		if !strings.Contains(text, `"ClusterNetworkPolicy/`+benchAdminName(k)+" ") {
			return 0, fmt.Errorf("the agent's table has no rule of ClusterNetworkPolicy %s (does the agent watch ClusterNetworkPolicies?)", benchAdminName(k))
		}
	}
	marker := fmt.Sprintf(" ingress rule %d pass-client: Pass", cnpRulesPerDirection-1)
	if node == "node1" {
		marker = fmt.Sprintf(" egress rule %d pass-server: Pass", cnpRulesPerDirection-1)
	}
	n, ok := rulesBefore(text, `"ClusterNetworkPolicy/`+benchAdminName(p.cnpBench()-1)+" ", marker)
	if !ok {
		return 0, fmt.Errorf("no rule %q of %s in the agent's table", strings.TrimSpace(marker), benchAdminName(p.cnpBench()-1))
	}
	return n, nil
}

// rulesBefore finds, in nft's listing of a table, the first rule whose comment
// contains both prefix and marker and returns the number of rules before it in its
// chain.
func rulesBefore(text, prefix, marker string) (int, bool) {
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	inChain, n := false, 0
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "chain ") && strings.HasSuffix(line, "{"):
			inChain, n = true, 0
			continue
		case line == "}":
			inChain = false
			continue
		case !inChain || line == "" || strings.HasPrefix(line, "type ") || strings.HasPrefix(line, "policy "):
			continue
		case strings.HasPrefix(line, "comment ") && n == 0:
			continue // the chain's own comment
		}
		if strings.Contains(line, prefix) && strings.Contains(line, marker) {
			return n, true
		}
		n++
	}
	return 0, false
}
