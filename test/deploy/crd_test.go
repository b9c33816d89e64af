package deploy

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/nftpolicy/nftpolicy/internal/testns"
	"github.com/nftpolicy/nftpolicy/test/chart"
)

// The ClusterNetworkPolicy CRD: sigs.k8s.io/network-policy-api's, in two channels,
// shipped verbatim in the chart (files/crds/CHANNEL/) and rendered with
// clusterNetworkPolicy.crds; config/crd/CHANNEL is the same file for kustomize.

const (
	cnpModule  = "sigs.k8s.io/network-policy-api"
	cnpCRDFile = "policy.networking.k8s.io_clusternetworkpolicies.yaml"
	keepPolicy = "helm.sh/resource-policy"
)

// chartCRDFile is the chart's copy of the channel's CRD.
func chartCRDFile(t *testing.T, channel string) string {
	return filepath.Join(chart.RepoRoot(t), "config", "helm", "nftpolicy", "files", "crds", channel, cnpCRDFile)
}

// upstreamCRD decodes the chart's copy of the channel's CRD (TestCNPCRDFiles checks it
// is the module's).
func upstreamCRD(t *testing.T, channel string) *unstructured.Unstructured {
	t.Helper()
	b, err := os.ReadFile(chartCRDFile(t, channel))
	if err != nil {
		t.Fatal(err)
	}
	objs := decode(t, b)
	if len(objs) != 1 {
		t.Fatalf("%s: %d objects, want the CRD", chartCRDFile(t, channel), len(objs))
	}
	return objs[0]
}

// checkCNPCRD checks the rendering has exactly one CRD, the channel's: upstream's
// object with only the chart's labels and the keep policy added, so that uninstalling
// the chart leaves every ClusterNetworkPolicy in place.
func checkCNPCRD(t *testing.T, objs []*unstructured.Unstructured, channel string) {
	t.Helper()
	var crds []*unstructured.Unstructured
	for _, u := range objs {
		if u.GetKind() == "CustomResourceDefinition" {
			crds = append(crds, u)
		}
	}
	if len(crds) != 1 {
		t.Fatalf("crds=%s: %d CRDs rendered, want 1: %v", channel, len(crds), kinds(objs))
	}
	got := crds[0].DeepCopy()
	ann := got.GetAnnotations()
	if ann[keepPolicy] != "keep" {
		t.Errorf("crds=%s: annotation %s = %q, want keep: helm uninstall would delete every ClusterNetworkPolicy", channel, keepPolicy, ann[keepPolicy])
	}
	if ann["policy.networking.k8s.io/channel"] != channel || ann["policy.networking.k8s.io/bundle-version"] != "v0.3.0" {
		t.Errorf("crds=%s: annotations %v: not the %s channel of v0.3.0", channel, ann, channel)
	}
	labels := got.GetLabels()
	if labels["app.kubernetes.io/managed-by"] != "Helm" || labels["app.kubernetes.io/instance"] != "nftpolicy" {
		t.Errorf("crds=%s: labels %v lack the chart's", channel, labels)
	}
	if _, ok := labels["app.kubernetes.io/component"]; ok {
		t.Errorf("crds=%s: labels %v: the CRD is not the agent component", channel, labels)
	}
	delete(ann, keepPolicy)
	got.SetAnnotations(ann)
	got.SetLabels(nil)
	if want := upstreamCRD(t, channel); !equality.Semantic.DeepEqual(got, want) {
		t.Errorf("crds=%s: the rendered CRD differs from upstream's beyond the chart's labels and %s", channel, keepPolicy)
	}
}

// TestCNPCRDFiles checks that the chart's CRD files are the module's (the version in
// go.mod) byte for byte, and that the kustomize bases point at them.
func TestCNPCRDFiles(t *testing.T) {
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}} {{.Version}}", cnpModule)
	cmd.Dir = chart.RepoRoot(t)
	out, err := cmd.Output()
	if err != nil {
		testns.SkipUnlessRequired(t, "go list -m %s: %v (the module is not downloaded?)", cnpModule, err)
	}
	dir, version, _ := strings.Cut(strings.TrimSpace(string(out)), " ")
	if dir == "" {
		testns.SkipUnlessRequired(t, "%s %s is not in the module cache: go mod download", cnpModule, version)
	}
	for _, channel := range []string{"standard", "experimental"} {
		want, err := os.ReadFile(filepath.Join(dir, "config", "crd", channel, cnpCRDFile))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(chartCRDFile(t, channel))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is not %s@%s config/crd/%s/%s: copy it again", chartCRDFile(t, channel), cnpModule, version, channel, cnpCRDFile)
		}
	}
	t.Logf("the chart's CRDs are %s@%s's", cnpModule, version)
}
