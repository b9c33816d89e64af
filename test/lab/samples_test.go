package lab

import (
	"os"
	"path/filepath"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// The kind demo (config/samples/demo, make kind-demo) applies the same policies as the
// lab's demo: the manifests and DemoPolicies must not drift apart.
func TestDemoSamplesMatchDemoPolicies(t *testing.T) {
	path := filepath.Join("..", "..", "config", "samples", "demo", "policies.yaml")
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	dec := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	got := map[string]networkingv1.NetworkPolicySpec{}
	for {
		var np networkingv1.NetworkPolicy
		if err := dec.Decode(&np); err != nil {
			break
		}
		if np.Name != "" {
			got[np.Namespace+"/"+np.Name] = np.Spec
		}
	}
	want := DemoPolicies()
	if len(got) != len(want) {
		t.Fatalf("%s holds %d policies, DemoPolicies %d", path, len(got), len(want))
	}
	for _, np := range want {
		spec, ok := got[np.Namespace+"/"+np.Name]
		if !ok {
			t.Errorf("%s lacks %s/%s", path, np.Namespace, np.Name)
			continue
		}
		if !equality.Semantic.DeepEqual(spec, np.Spec) {
			t.Errorf("%s/%s in %s differs from DemoPolicies:\n got %+v\nwant %+v", np.Namespace, np.Name, path, spec, np.Spec)
		}
	}
}
