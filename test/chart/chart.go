// Package chart renders the Helm chart (config/helm/nftpolicy) for tests and decodes
// manifests into unstructured objects.
package chart

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// RepoRoot is the module root: two levels above this package's source (test/chart).
func RepoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the test source")
	}
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Helm is where the tests look for helm: $HELM, else bin/helm under root (make helm).
func Helm(root string) string {
	if h := os.Getenv("HELM"); h != "" {
		return h
	}
	return filepath.Join(root, "bin", "helm")
}

// Template runs `helm template nftpolicy <root>/config/helm/nftpolicy --namespace
// <namespace> args...` and returns the rendered objects.
func Template(t testing.TB, helm, root, namespace string, args ...string) []*unstructured.Unstructured {
	t.Helper()
	cmdArgs := append([]string{"template", "nftpolicy", filepath.Join(root, "config", "helm", "nftpolicy"), "--namespace", namespace}, args...)
	var stderr bytes.Buffer
	cmd := exec.Command(helm, cmdArgs...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(cmdArgs, " "), err, stderr.String())
	}
	return Decode(t, out)
}

// Decode splits YAML or JSON manifests into objects, skipping empty documents.
func Decode(t testing.TB, manifests []byte) []*unstructured.Unstructured {
	t.Helper()
	var objs []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(manifests), 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return objs
			}
			t.Fatalf("decoding manifests: %v", err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
}
