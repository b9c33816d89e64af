// Package netpol is the upstream Kubernetes e2e suite with only the NetworkPolicy
// specs linked in: hack/conformance/build.sh compiles it with `go test -c` in a
// throwaway module that requires k8s.io/kubernetes (see docs/conformance.md).
// The flag handling is that of k8s.io/kubernetes/test/e2e/e2e_test.go; the test
// sources are cut down to test/e2e/network/netpol, which keeps the binary (and its
// build) small.
package netpol

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/onsi/ginkgo/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/component-base/version"
	"k8s.io/kubernetes/test/e2e"
	"k8s.io/kubernetes/test/e2e/framework"
	"k8s.io/kubernetes/test/e2e/framework/config"
	"k8s.io/kubernetes/test/e2e/framework/testfiles"
	e2etestingmanifests "k8s.io/kubernetes/test/e2e/testing-manifests"
	testfixtures "k8s.io/kubernetes/test/fixtures"
	"sigs.k8s.io/yaml"

	// define and freeze constants
	_ "k8s.io/kubernetes/test/e2e/feature"

	// the only test sources: NetworkPolicy
	_ "k8s.io/kubernetes/test/e2e/network/netpol"

	// reconfigure the framework as the full suite does
	_ "k8s.io/kubernetes/test/e2e/framework/debug/init"
	_ "k8s.io/kubernetes/test/e2e/framework/metrics/init"
	_ "k8s.io/kubernetes/test/e2e/framework/node/init"
	_ "k8s.io/kubernetes/test/utils/ktesting/format"
)

func TestMain(m *testing.M) {
	versionFlag := flag.CommandLine.Bool("version", false, "Displays version information.")
	config.CopyFlags(config.Flags, flag.CommandLine)
	framework.RegisterCommonFlags(flag.CommandLine)
	framework.RegisterClusterFlags(flag.CommandLine)
	flag.Parse()
	if *versionFlag {
		fmt.Printf("%s\n", version.Get())
		os.Exit(0)
	}
	if flag.CommandLine.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "unknown additional command line arguments: %s\n", flag.CommandLine.Args())
		os.Exit(1)
	}
	testfiles.AddFileSource(e2etestingmanifests.GetE2ETestingManifestsFS())
	testfiles.AddFileSource(testfixtures.GetTestFixturesFS())
	framework.AfterReadingAllFlags(&framework.TestContext)
	// Registered only now: AfterReadingAllFlags previews the specs on a clone of the
	// suite that keeps top-level containers but drops top-level setup nodes, so a
	// `var _ = JustAfterEach(…)` would be lost.
	ginkgo.JustAfterEach(collectEvidence)
	os.Exit(m.Run())
}

func TestE2E(t *testing.T) {
	e2e.RunE2ETests(t)
}

// On a failed spec, before the framework deletes its namespaces, write what it takes to
// judge the enforcer into $NFTPOLICY_EVIDENCE_DIR/<spec>.txt: the failure and the spec's
// log (the expected and observed reachability matrices), the NetworkPolicies and pods
// of the cluster, every node's ruleset ($NFTPOLICY_RULESET_CMD, run by sh; default
// `nft list table inet nftpolicy`, the one node of this machine), and the agents' log
// lines since the spec started (read through the API from the pods labelled
// $NFTPOLICY_AGENT_SELECTOR in kube-system).
func collectEvidence(ctx context.Context) {
	dir := os.Getenv("NFTPOLICY_EVIDENCE_DIR")
	report := ginkgo.CurrentSpecReport()
	if dir == "" || !report.Failed() {
		return
	}
	var b strings.Builder
	section := func(title string) { fmt.Fprintf(&b, "\n===== %s\n", title) }
	fmt.Fprintf(&b, "spec: %s\nstarted: %s\nfailed: %s\n", report.FullText(), report.StartTime.UTC().Format(time.RFC3339Nano), time.Now().UTC().Format(time.RFC3339Nano))
	section("failure")
	fmt.Fprintf(&b, "%s\n%s\n", report.Failure.Message, report.Failure.Location)
	section("spec log (expected and observed matrices)")
	b.WriteString(report.CapturedGinkgoWriterOutput)
	cs, err := client()
	if err != nil {
		fmt.Fprintf(&b, "(client: %v)\n", err)
	}
	if cs != nil {
		dumpCluster(ctx, cs, &b, section)
	}
	rulesetCmd := os.Getenv("NFTPOLICY_RULESET_CMD")
	if rulesetCmd == "" {
		rulesetCmd = "nft list table inet nftpolicy"
	}
	section(rulesetCmd)
	out, err := exec.CommandContext(ctx, "sh", "-c", rulesetCmd).CombinedOutput()
	b.Write(out)
	if err != nil {
		fmt.Fprintf(&b, "(%v)\n", err)
	}
	section("agent logs since the spec started")
	if cs != nil {
		dumpAgentLogs(ctx, cs, &b, report.StartTime)
	}
	name := regexp.MustCompile(`[^A-Za-z0-9._-]+`).ReplaceAllString(report.LeafNodeText, "_")
	if len(name) > 150 {
		name = name[:150]
	}
	_ = os.MkdirAll(dir, 0o755)
	if err := os.WriteFile(filepath.Join(dir, name+".txt"), []byte(b.String()), 0o644); err != nil {
		ginkgo.GinkgoWriter.Printf("writing evidence: %v\n", err)
	}
}

func client() (kubernetes.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", framework.TestContext.KubeConfig)
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

func dumpCluster(ctx context.Context, cs kubernetes.Interface, b *strings.Builder, section func(string)) {
	section("pods (namespace/name node ip phase labels)")
	if pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); err != nil {
		fmt.Fprintf(b, "(listing pods: %v)\n", err)
	} else {
		for _, p := range pods.Items {
			fmt.Fprintf(b, "%s/%s %s %s %s %v\n", p.Namespace, p.Name, p.Spec.NodeName, p.Status.PodIP, p.Status.Phase, p.Labels)
		}
	}
	section("namespaces (name labels)")
	if nss, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); err != nil {
		fmt.Fprintf(b, "(listing namespaces: %v)\n", err)
	} else {
		for _, n := range nss.Items {
			fmt.Fprintf(b, "%s %v\n", n.Name, n.Labels)
		}
	}
	section("NetworkPolicies")
	pols, err := cs.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{})
	if err != nil {
		fmt.Fprintf(b, "(listing networkpolicies: %v)\n", err)
		return
	}
	for i := range pols.Items {
		p := &pols.Items[i]
		p.ManagedFields = nil
		y, _ := yaml.Marshal(p)
		fmt.Fprintf(b, "---\n%s", y)
	}
}

// dumpAgentLogs copies the log lines of every agent pod written at or after since.
func dumpAgentLogs(ctx context.Context, cs kubernetes.Interface, b *strings.Builder, since time.Time) {
	selector := os.Getenv("NFTPOLICY_AGENT_SELECTOR")
	if selector == "" {
		selector = "app.kubernetes.io/name=nftpolicy"
	}
	pods, err := cs.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		fmt.Fprintf(b, "(listing agent pods %q: %v)\n", selector, err)
		return
	}
	if len(pods.Items) == 0 {
		fmt.Fprintf(b, "(no pod in kube-system matches %q)\n", selector)
	}
	st := metav1.NewTime(since)
	for _, p := range pods.Items {
		fmt.Fprintf(b, "--- %s (node %s)\n", p.Name, p.Spec.NodeName)
		raw, err := cs.CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{SinceTime: &st}).DoRaw(ctx)
		if err != nil {
			fmt.Fprintf(b, "(%v)\n", err)
			continue
		}
		b.Write(raw)
	}
}
