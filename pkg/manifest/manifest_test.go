package manifest

import (
	"strings"
	"testing"
)

func TestReadStdinAndTypedList(t *testing.T) {
	// A PodList as `kubectl get pods -o json` prints it: items carry no kind.
	in := `{"apiVersion": "v1", "kind": "PodList", "items": [
  {"metadata": {"name": "a", "namespace": "x"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.1"}]}}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny}
spec: {podSelector: {}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
---
`
	objs, err := Load([]string{"-"}, strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs.Pods) != 1 || objs.Pods[0].Name != "a" || objs.Pods[0].Namespace != "x" {
		t.Fatalf("pods: %+v", objs.Pods)
	}
	if len(objs.Policies) != 1 || objs.Policies[0].Namespace != "default" {
		t.Fatalf("policies: %+v", objs.Policies)
	}
	if objs.Skipped["Deployment"] != 1 {
		t.Fatalf("skipped: %v", objs.Skipped)
	}
	snap := objs.Snapshot("n1")
	if snap.NodeName != "n1" || len(snap.Pods) != 1 || snap.Pods[0].IPs[0].String() != "10.0.0.1" {
		t.Fatalf("snapshot: %+v", snap)
	}
}

func TestReadErrors(t *testing.T) {
	for _, in := range []string{
		"kind: [",                          // not YAML
		"metadata: {name: x}",              // no kind
		"kind: Pod\nspec: {nodeName: [1]}", // wrong field type
	} {
		if _, err := Load([]string{"-"}, strings.NewReader(in)); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
	if _, err := Load([]string{"testdata-does-not-exist"}, nil); err == nil {
		t.Error("missing path: no error")
	}
}
