package main

import (
	"context"
	"k8s.io/client-go/rest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/internal/testns"
)

// explain's view of a cluster: nodes always, ClusterNetworkPolicies once their CRD is
// installed (none, and no error, before).
func TestFromClusterReadsNodesAndClusterPolicies(t *testing.T) {
	cfg := startAPIServer(t)
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := cnp.Install(scheme); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := c.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{"zone": "a"}}}); err != nil {
		t.Fatal(err)
	}

	objs, err := fromConfig(cfg)
	if err != nil {
		t.Fatalf("without the CRD: %v", err)
	}
	if len(objs.Nodes) != 1 || objs.Nodes[0].Labels["zone"] != "a" || len(objs.ClusterPolicies) != 0 {
		t.Errorf("without the CRD: nodes %v, cluster policies %v; want n1 and none", objs.Nodes, objs.ClusterPolicies)
	}

	mod, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/network-policy-api").Output()
	if err != nil {
		t.Fatalf("finding sigs.k8s.io/network-policy-api: %v", err)
	}
	crd := filepath.Join(strings.TrimSpace(string(mod)), "config", "crd", "standard", "policy.networking.k8s.io_clusternetworkpolicies.yaml")
	if _, err := envtest.InstallCRDs(cfg, envtest.CRDInstallOptions{Paths: []string{crd}, ErrorIfPathMissing: true}); err != nil {
		t.Fatal(err)
	}
	p := &cnp.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "deny"},
		Spec: cnp.ClusterNetworkPolicySpec{Tier: cnp.AdminTier, Priority: 1,
			Subject: cnp.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{}},
			Ingress: []cnp.ClusterNetworkPolicyIngressRule{{Action: cnp.ClusterNetworkPolicyRuleActionDeny,
				From: []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}}}}}}
	if err := c.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	objs, err = fromConfig(cfg)
	if err != nil {
		t.Fatalf("with the CRD: %v", err)
	}
	snap := objs.Snapshot("n1")
	if len(snap.ClusterPolicies) != 1 || snap.ClusterPolicies[0].Name != "deny" || len(snap.Nodes) != 1 {
		t.Errorf("with the CRD: snapshot cluster policies %v, nodes %v; want deny and n1", snap.ClusterPolicies, snap.Nodes)
	}
}

// TestAgentModeFlags: --audit and --log-denied compile what an agent with those flags
// programs: nothing dropped and no revocation rule under --audit, log rules with
// --log-denied.
func TestAgentModeFlags(t *testing.T) {
	render := func(args ...string) string {
		t.Helper()
		var out strings.Builder
		if err := run(append([]string{"render", "--node", "node2", "-f", "../../pkg/render/testdata/demo"}, args...), nil, &out); err != nil {
			t.Fatal(err)
		}
		return out.String()
	}
	plain := render()
	if !strings.Contains(plain, "counter drop") || strings.Contains(plain, "audit-deny-") || strings.Contains(plain, " log ") {
		t.Fatalf("default render: want drops, no audit chains, no log rules:\n%s", plain)
	}
	audit := render("--audit", "--log-denied")
	if strings.Contains(audit, "counter drop") || strings.Contains(audit, "0x10000000") || !strings.Contains(audit, "audit-deny-in-") || !strings.Contains(audit, `log prefix "audit-deny-in-`) {
		t.Fatalf("render --audit --log-denied: want no drop at all, audit-deny chains that log:\n%s", audit)
	}
}

// startAPIServer starts a kube-apiserver and etcd (envtest, bin/k8s or
// $KUBEBUILDER_ASSETS) for the test and stops them when it ends; it skips without them
// (fails under CI=true).
func startAPIServer(t *testing.T) *rest.Config {
	t.Helper()
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		assets, _ = filepath.Abs("../../bin/k8s")
	}
	if _, err := os.Stat(filepath.Join(assets, "kube-apiserver")); err != nil {
		testns.SkipUnlessRequired(t, "no control plane in %s: run `make envtest-assets`", assets)
	}
	env := &envtest.Environment{BinaryAssetsDirectory: assets}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("starting envtest: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stopping envtest: %v", err)
		}
	})
	return cfg
}
