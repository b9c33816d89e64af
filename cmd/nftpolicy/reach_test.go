package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/pkg/manifest"
)

// The demo's manifests for kind (pods without IPs or nodes) as a directory: the
// matrix the README shows.
func TestReachDemoManifests(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"reach", "-f", "../../config/samples/demo"}, nil, &out); err != nil {
		t.Fatalf("reach: %v\n%s", err, out.String())
	}
	want := `8080/TCP IPv4 (rows from, columns to)
                                  1  2  3  4
  1  app/backend                  -  X  .  .
  2  app/frontend                 .  -  .  .
  3  ingress-nginx/ingress-nginx  X  .  -  .
  4  other/client                 X  X  .  -
`
	if !strings.Contains(out.String(), want) || !strings.Contains(out.String(), "synthetic addresses") {
		t.Errorf("got\n%s\nwant it to hold\n%s", out.String(), want)
	}
}

func TestReachJSONAndHTML(t *testing.T) {
	var out bytes.Buffer
	err := run([]string{"reach", "-f", "../../pkg/render/testdata/demo", "-o", "json", "--family", "both", "--port", "80/TCP,53/UDP", "--to-addr", "169.254.169.254", "-n", "app"}, nil, &out)
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Families, Ports, Addresses []string
		Pods                       []struct{ Key string }
		Blocks                     []struct{ Verdict, Explanation string }
	}
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	// 2 families × 2 ports × 2 source groups × (2 pod groups + 1 address).
	if len(rep.Families) != 2 || len(rep.Ports) != 2 || len(rep.Addresses) != 1 || len(rep.Pods) != 2 || len(rep.Blocks) != 24 {
		t.Errorf("json: %s", out.String())
	}
	out.Reset()
	if err := run([]string{"reach", "-f", "../../pkg/render/testdata/demo", "-o", "html"}, nil, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "<!DOCTYPE html>") || !strings.Contains(out.String(), `id="tip"`) {
		t.Errorf("html: %.300s", out.String())
	}
}

// --before/--after: exit status 1 (errFound) exactly when a flow becomes denied.
func TestReachBeforeAfterExitStatus(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	workload := "../../config/samples/demo/workload.yaml"
	policies := "../../config/samples/demo/policies.yaml"
	allowAll := write("allow-all.yaml", `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: app, name: allow-all}
spec: {podSelector: {}, ingress: [{}]}
`)

	// Adding the demo's policies takes flows away.
	var out bytes.Buffer
	err := run([]string{"reach", "--before", workload, "--after", workload + "," + policies}, nil, &out)
	if !errors.Is(err, errFound) {
		t.Fatalf("adding policies: err %v, want errFound\n%s", err, out.String())
	}
	for _, s := range []string{"- other/client -> app/backend: allowed -> DENIED", "newly denied"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("lacks %q:\n%s", s, out.String())
		}
	}
	// Opening everything in app only adds flows: exit 0, the flows printed.
	out.Reset()
	err = run([]string{"reach", "--before", workload, "--before", policies, "--after", workload + "," + policies + "," + allowAll, "-o", "json"}, nil, &out)
	if err != nil {
		t.Fatalf("widening: %v\n%s", err, out.String())
	}
	var d struct {
		Revoked int
		Changes []struct{ Before, After, Explanation string }
	}
	if err := json.Unmarshal(out.Bytes(), &d); err != nil {
		t.Fatal(err)
	}
	if d.Revoked != 0 || len(d.Changes) == 0 {
		t.Errorf("widening: %s", out.String())
	}
	for _, c := range d.Changes {
		if c.Before != "denied" || c.After != "allowed" || !strings.Contains(c.Explanation, "allow-all") {
			t.Errorf("widening change %+v", c)
		}
	}
	// No change at all.
	out.Reset()
	if err := run([]string{"reach", "--before", workload, "--after", workload}, nil, &out); err != nil || !strings.Contains(out.String(), "0 of 16 cells changed") {
		t.Errorf("no change: %v\n%s", err, out.String())
	}
}

// Bad usage is an error (exit status 2), never errFound.
func TestReachUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--before", "x"},
		{"-f", "x", "--after", "y"},
		{"-o", "xml", "-f", "x"},
		{"--family", "ipx", "-f", "x"},
		{"--port", "http", "-f", "x"},
		{"--to-addr", "nowhere", "-f", "x"},
		{"-f", "/does/not/exist"},
	} {
		err := run(append([]string{"reach"}, args...), nil, &bytes.Buffer{})
		if err == nil || errors.Is(err, errFound) {
			t.Errorf("%v: err %v, want a usage error", args, err)
		}
	}
}

// --after alone compares the live cluster with the cluster after applying the
// manifests: the pods the API server holds (no IPs: nothing runs them, so both sides
// give them the same synthetic addresses) under the cluster's policies (none) and
// under the demo's.
func TestReachAfterAgainstCluster(t *testing.T) {
	cfg := startAPIServer(t)
	workload, err := manifest.Load([]string{"../../config/samples/demo/workload.yaml"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, ns := range workload.Namespaces {
		if err := c.Create(ctx, ns); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range workload.Pods {
		if err := c.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["envtest"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "envtest"}
	kc.CurrentContext = "envtest"
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}

	// The demo's whole directory, or only its policies: applied to the cluster, both
	// are the same change.
	for _, after := range []string{"../../config/samples/demo", "../../config/samples/demo/policies.yaml"} {
		var out bytes.Buffer
		err = run([]string{"reach", "--kubeconfig", kubeconfig, "--after", after}, nil, &out)
		if !errors.Is(err, errFound) {
			t.Fatalf("--after %s: err %v, want errFound\n%s", after, err, out.String())
		}
		for _, s := range []string{"- other/client -> app/backend: allowed -> DENIED", "4 of 16 cells changed: 4 newly denied"} {
			if !strings.Contains(out.String(), s) {
				t.Errorf("--after %s: lacks %q:\n%s", after, s, out.String())
			}
		}
		if strings.Contains(out.String(), "only ") {
			t.Errorf("--after %s: pods of one side only:\n%s", after, out.String())
		}
	}
}
