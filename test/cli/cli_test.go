// Package cli tests the nftpolicy CLI (cmd/nftpolicy) on a lab cluster: explain against
// live cluster state, whose answers the demo's policies make known and which probes
// confirm, and explain --node on a node whose kernel table was drifted by hand.
package cli

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/nftpolicy/nftpolicy/internal/testns"
	"github.com/nftpolicy/nftpolicy/test/lab"
)

// buildCLI builds cmd/nftpolicy into a temporary directory removed after the test.
func buildCLI(t *testing.T) string {
	t.Helper()
	root, err := lab.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "nftpolicy")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/nftpolicy")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building nftpolicy: %v\n%s", err, out)
	}
	return bin
}

// runIn runs the CLI in the node's network namespace and returns its output and exit
// status.
func runIn(ctx context.Context, t *testing.T, node *lab.ClusterNode, args ...string) (string, int) {
	t.Helper()
	out, err := node.NS.Command(ctx, args...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	t.Fatalf("%v: %v\n%s", args, err, out)
	return "", -1
}

// dumpManifests writes the cluster's namespaces, pods and policies, as the API server
// holds them, to one multi-document YAML file (what `kubectl get -o yaml` would give).
func dumpManifests(ctx context.Context, t *testing.T, c *lab.Cluster) string {
	t.Helper()
	var docs []string
	add := func(list client.ObjectList, kind string) {
		if err := c.Client().List(ctx, list); err != nil {
			t.Fatal(err)
		}
		if err := meta.EachListItem(list, func(o runtime.Object) error {
			o.GetObjectKind().SetGroupVersionKind(schema.GroupVersionKind{Group: map[string]string{"NetworkPolicy": "networking.k8s.io"}[kind], Version: "v1", Kind: kind})
			b, err := yaml.Marshal(o)
			docs = append(docs, string(b))
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	add(&corev1.NamespaceList{}, "Namespace")
	add(&corev1.PodList{}, "Pod")
	add(&networkingv1.NetworkPolicyList{}, "NetworkPolicy")
	path := filepath.Join(t.TempDir(), "cluster.yaml")
	if err := os.WriteFile(path, []byte(strings.Join(docs, "---\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// explainIn runs `nftpolicy explain` in the node's network namespace and returns its
// output and exit status.
func explainIn(ctx context.Context, t *testing.T, node *lab.ClusterNode, bin, kubeconfig string, args ...string) (string, int) {
	t.Helper()
	return runIn(ctx, t, node, append([]string{bin, "explain", "--kubeconfig", kubeconfig}, args...)...)
}

// explained logs an explain run and checks its exit code and that its output holds
// every one of want.
func explained(t *testing.T, what, out string, rc, wantRC int, want ...string) {
	t.Helper()
	t.Logf("%s:\n%s", what, out)
	if rc != wantRC {
		t.Errorf("%s: exit %d, want %d", what, rc, wantRC)
	}
	outputHolds(t, what, out, want...)
}

// outputHolds checks that out holds every one of want.
func outputHolds(t *testing.T, what, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("%s: output lacks %q", what, w)
		}
	}
}

func TestExplainLab(t *testing.T) {
	lab.SkipUnlessCluster(t)
	agent := os.Getenv("NFTPOLICY_AGENT")
	if agent == "" {
		testns.SkipUnlessRequired(t, "NFTPOLICY_AGENT is not set (make build; make test sets it)")
	}
	bin := buildCLI(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := lab.CleanupStale(""); err != nil {
		t.Logf("cleaning up stale labs: %v", err)
	}
	// No periodic resync: the drift made below must stay until explain sees it.
	c, err := lab.StartCluster(ctx, lab.ClusterOptions{Nodes: 2, AgentBinary: agent,
		AgentArgs: []string{"--resync-period", "0"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("closing the lab: %v", err)
		}
	})
	sc, err := lab.CreateDemoScenario(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	for _, np := range lab.DemoPolicies() {
		if err := c.Client().Create(ctx, np); err != nil {
			t.Fatal(err)
		}
	}
	backendNode := sc.Backend.Node
	kc := c.Kubeconfig()
	allowedArgs := []string{"--from", sc.Frontend.Key(), "--to", sc.Backend.Key(), "--port", "80/TCP", "--node", backendNode.Name}
	deniedArgs := []string{"--from", sc.Client.Key(), "--to", sc.Backend.Key(), "--port", "80/TCP", "--node", backendNode.Name}

	// Wait until the backend's node enforces the policies: explain --node of the
	// allowed pair exits 0 once the kernel holds everything its verdict depends on.
	var out string
	var rc int
	deadline := time.Now().Add(time.Minute)
	for {
		out, rc = explainIn(ctx, t, backendNode, bin, kc, allowedArgs...)
		if rc == 0 || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	t.Logf("allowed pair:\n%s", out)
	if rc != 0 {
		t.Fatalf("explain of the allowed pair: exit %d\n%s\nagent log:\n%s", rc, out, c.AgentLog(backendNode.Name))
	}
	outputHolds(t, "allowed pair", out,
		"app/frontend ("+sc.Frontend.IPv4.String(),
		"TCP/80: ALLOWED",
		"ingress of app/backend: isolated by app/backend-policy; allowed by app/backend-policy ingress rule 0 (judged on "+backendNode.Name+")",
		"kernel of "+backendNode.Name+": holds every chain, rule and element this verdict depends on",
	)

	out, rc = explainIn(ctx, t, backendNode, bin, kc, deniedArgs...)
	explained(t, "denied pair", out, rc, 1,
		"TCP/80: DENIED",
		"ingress of app/backend: isolated by app/backend-policy; DENIED: no rule of them allows it (judged on "+backendNode.Name+")",
		"kernel of "+backendNode.Name+": holds every chain, rule and element this verdict depends on",
	)

	// The answers are the network's: probes agree.
	to := sc.Backend.AddrPort(lab.IPv4, 80)
	if r, err := c.Probe(ctx, sc.Frontend, to, "tcp", 0); err != nil || !r.OK {
		t.Errorf("probe frontend -> backend: %+v %v, explain said allowed", r, err)
	}
	if r, err := c.Probe(ctx, sc.Client, to, "tcp", 0); err != nil || r.OK {
		t.Errorf("probe client -> backend: %+v %v, explain said denied", r, err)
	}

	// render --diff from the cluster's manifests against the node's live table: the
	// agent programmed exactly what render prints.
	manifests := dumpManifests(ctx, t, c)
	if out, rc := runIn(ctx, t, backendNode, bin, "render", "--node", backendNode.Name, "-f", manifests, "--diff"); rc != 0 {
		t.Errorf("render --diff against the agent's table: exit %d, want 0\n%s", rc, out)
	}

	// Drift: remove the backend's element from the ingress dispatch map by hand. The
	// kernel then no longer isolates the backend, and explain --node must say so.
	if b, err := backendNode.NS.Exec(ctx, "nft", "delete", "element", "inet", "nftpolicy", "ingress-pods-v4",
		"{ "+sc.Backend.IPv4.String()+" }"); err != nil {
		t.Fatalf("drifting the kernel: %v\n%s", err, b)
	}
	out, rc = explainIn(ctx, t, backendNode, bin, kc, deniedArgs...)
	explained(t, "denied pair, drifted kernel", out, rc, 1,
		"TCP/80: DENIED",
		"kernel of "+backendNode.Name+": DRIFT",
		"set ingress-pods-v4 lacks element "+sc.Backend.IPv4.String()+" : jump isolate-in-",
		"the kernel's table accepts this packet; the compiled ruleset would drop it",
	)
	out, rc = runIn(ctx, t, backendNode, bin, "render", "--node", backendNode.Name, "-f", manifests, "--diff")
	t.Logf("render --diff, drifted kernel:\n%s", out)
	if rc != 1 || !strings.Contains(out, "ingress-pods-v4") || !strings.Contains(out, sc.Backend.IPv4.String()) {
		t.Errorf("render --diff after the drift: exit %d, want 1 naming the missing element of ingress-pods-v4\n%s", rc, out)
	}
	// The drift is real: the client now gets through.
	if r, err := c.Probe(ctx, sc.Client, to, "tcp", 0); err != nil || !r.OK {
		t.Errorf("probe client -> backend after the drift: %+v %v, explain said the kernel accepts it", r, err)
	}
}
