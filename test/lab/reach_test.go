package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/manifest"
	"github.com/nftpolicy/nftpolicy/pkg/reach"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// TestReachMatchesProbes checks `nftpolicy reach` against the real thing: on a
// dual-stack lab with the agents enforcing the demo's NetworkPolicies (and then its
// ClusterNetworkPolicy), the cluster's objects are dumped as `kubectl get -o yaml`
// would print them, read back the way the CLI reads -f, and every cell of reach's
// matrix is compared with the probes of the same pair in each family.
func TestReachMatchesProbes(t *testing.T) {
	SkipUnlessCluster(t)
	bin := agentBinary(t)
	ctx := context.Background()
	c := startClusterForTest(t, ClusterOptions{Topology: Routed, DualStack: true, AgentBinary: bin,
		// Notice the CRD installed mid-test within a second.
		AgentArgs: []string{"--cluster-policy-check-period", "1s"}})
	sc, err := CreateDemoScenario(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	pods := sc.Pods()
	names := PodKeys(pods)
	for _, np := range DemoPolicies() {
		if err := c.Client().Create(ctx, np); err != nil {
			t.Fatal(err)
		}
	}
	want := NewMatrix(names, names, true).
		DenyTo(sc.Frontend.Key()).Allow(sc.Ingress.Key(), sc.Frontend.Key()).
		DenyTo(sc.Backend.Key()).Allow(sc.Frontend.Key(), sc.Backend.Key()).
		AllowSelf()
	// awaitMatrix waits for enforcement only; the comparison with reach below is over
	// the matrices probed after it, whatever they are.
	awaitMatrix(t, c, "the demo's NetworkPolicies", pods, pods, demoPort, want)
	compareReach(t, c, pods, "NetworkPolicies")

	if err := c.InstallCNPCRD(ctx, "standard"); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitAgentsLog(ctx, ClusterPoliciesWatchedLog, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.Client().Create(ctx, DemoClusterPolicy()); err != nil {
		t.Fatal(err)
	}
	awaitMatrix(t, c, "the demo's ClusterNetworkPolicy", pods, pods, demoPort, want.Clone().Allow(sc.Client.Key(), sc.Backend.Key()))
	compareReach(t, c, pods, "NetworkPolicies and a ClusterNetworkPolicy")
}

// compareReach probes the pod matrix in each family, dumps the cluster, runs reach
// over the dump and compares every cell.
func compareReach(t *testing.T, c *Cluster, pods []*ClusterPod, what string) {
	t.Helper()
	ctx := context.Background()
	probed := map[ruleset.Family]*Matrix{}
	for _, f := range c.Families() {
		m, err := c.ProbeMatrix(ctx, pods, pods, PodTarget(f, demoPort), "tcp", ProbeOptions{})
		if err != nil {
			t.Fatal(err)
		}
		probed[map[Family]ruleset.Family{IPv4: ruleset.IPv4, IPv6: ruleset.IPv6}[f]] = m
	}
	dump := filepath.Join(t.TempDir(), "cluster.yaml")
	if err := dumpCluster(ctx, c, dump); err != nil {
		t.Fatal(err)
	}
	objs, err := manifest.Load([]string{dump}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var fams []ruleset.Family
	for f := range probed {
		fams = append(fams, f)
	}
	m, err := reach.Compute(objs, reach.Options{Families: fams, Ports: []reach.Port{{Protocol: corev1.ProtocolTCP, Port: demoPort}},
		Compiler: compiler.Options{Table: compiler.DefaultTable, Revocation: true}})
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := m.WriteText(&out, false); err != nil {
		t.Fatal(err)
	}
	t.Logf("reach over the dump (%s):\n%s", what, out.String())
	cells := 0
	for fam, pm := range probed {
		for _, from := range pm.Froms() {
			for _, to := range pm.Tos() {
				allowed, _ := pm.Get(from, to)
				v, ok := m.Verdict(fam, reach.Port{Protocol: corev1.ProtocolTCP, Port: demoPort}, from, to)
				if !ok {
					t.Errorf("%s: reach has no cell %s -> %s (%v)", what, from, to, fam)
					continue
				}
				cells++
				// A pod to itself is always allowed (reach: Self).
				if got := v == reach.Allowed || v == reach.Self; got != allowed || v == reach.NA {
					text, _ := m.Explain(fam, reach.Port{Protocol: corev1.ProtocolTCP, Port: demoPort}, from, to)
					t.Errorf("%s, %v: %s -> %s: reach says %s, the probe allowed=%v\n%s", what, fam, from, to, v, allowed, text)
				}
			}
		}
	}
	if want := len(probed) * len(pods) * len(pods); cells != want {
		t.Errorf("%s: compared %d cells, want %d", what, cells, want)
	}
}

// dumpCluster writes the cluster's Namespaces, Pods, NetworkPolicies, Nodes and
// ClusterNetworkPolicies (when their CRD is served) as one v1 List in YAML, as
// `kubectl get namespaces,pods,networkpolicies,nodes,clusternetworkpolicies -A -o yaml`
// prints it.
func dumpCluster(ctx context.Context, c *Cluster, path string) error {
	objs, err := c.Objects(ctx)
	if err != nil {
		return fmt.Errorf("dumping the cluster: %w", err)
	}
	// Listed objects carry no kind; a List's items need theirs.
	var items []any
	add := func(o client.Object, gvk schema.GroupVersionKind) {
		o.GetObjectKind().SetGroupVersionKind(gvk)
		items = append(items, o)
	}
	core := corev1.SchemeGroupVersion.WithKind
	for _, o := range objs.Namespaces {
		add(o, core("Namespace"))
	}
	for _, o := range objs.Pods {
		add(o, core("Pod"))
	}
	for _, o := range objs.Policies {
		add(o, networkingv1.SchemeGroupVersion.WithKind("NetworkPolicy"))
	}
	for _, o := range objs.Nodes {
		add(o, core("Node"))
	}
	for _, o := range objs.ClusterPolicies {
		add(o, schema.GroupVersionKind{Group: cnp.GroupVersion.Group, Version: cnp.GroupVersion.Version, Kind: "ClusterNetworkPolicy"})
	}
	out, err := yaml.Marshal(map[string]any{"apiVersion": "v1", "kind": "List", "items": items})
	if err != nil {
		return fmt.Errorf("dumping the cluster: %w", err)
	}
	if err := os.WriteFile(path, out, 0o600); err != nil {
		return fmt.Errorf("dumping the cluster: %w", err)
	}
	return nil
}
