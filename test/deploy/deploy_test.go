// Package deploy tests the deployment manifests: the Helm chart config/helm/nftpolicy
// (rendered with bin/helm) and the kustomize bases under config/. Every rendered object
// is applied with server-side apply and dry-run to a real kube-apiserver (envtest), so
// schema, defaulting and validation are the API server's own; the agent's DaemonSet is
// checked for what the agent needs and nothing more; and the ClusterRole is applied and
// asked, through SubjectAccessReviews, exactly what the agent's ServiceAccount may do.
package deploy

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/nftpolicy/nftpolicy/internal/testns"
	"github.com/nftpolicy/nftpolicy/test/chart"
)

const fieldOwner = client.FieldOwner("nftpolicy-deploy-test")

func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the test source")
	}
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// helmBinary is $HELM or bin/helm (make helm).
func helmBinary(t *testing.T) string {
	t.Helper()
	h := os.Getenv("HELM")
	if h == "" {
		h = filepath.Join(repoRoot(t), "bin", "helm")
	}
	if _, err := exec.LookPath(h); err != nil {
		testns.SkipUnlessRequired(t, "no helm at %s: run `make helm` (make test builds it)", h)
	}
	return h
}

// startAPIServer starts envtest's kube-apiserver and etcd (KUBEBUILDER_ASSETS, default
// bin/k8s) with the stand-in ServiceMonitor CRD, or skips when they are not built.
func startAPIServer(t *testing.T) client.Client {
	t.Helper()
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		t.Setenv("KUBEBUILDER_ASSETS", filepath.Join(repoRoot(t), "bin", "k8s"))
	}
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if _, err := os.Stat(filepath.Join(assets, "kube-apiserver")); err != nil {
		testns.SkipUnlessRequired(t, "no control plane in %s: run `make envtest-assets` (make test builds it)", assets)
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("testdata", "crds")},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("starting envtest: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stopping envtest: %v", err)
		}
	})
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	return c
}

// helmTemplate renders the chart with helm template and the given extra arguments.
func helmTemplate(t *testing.T, helm string, args ...string) []*unstructured.Unstructured {
	t.Helper()
	return chart.Template(t, helm, repoRoot(t), "kube-system", args...)
}

func decode(t *testing.T, manifests []byte) []*unstructured.Unstructured {
	t.Helper()
	return chart.Decode(t, manifests)
}

// applyDryRun applies every object with server-side apply and dry-run: the API server
// validates and defaults each one and stores nothing.
func applyDryRun(t *testing.T, c client.Client, objs []*unstructured.Unstructured) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, u := range objs {
		err := c.Apply(ctx, client.ApplyConfigurationFromUnstructured(u.DeepCopy()), fieldOwner, client.ForceOwnership, client.DryRunAll)
		if err != nil {
			t.Errorf("server-side apply (dry run) of %s %s/%s: %v", u.GetKind(), u.GetNamespace(), u.GetName(), err)
		}
	}
}

func kinds(objs []*unstructured.Unstructured) []string {
	var ks []string
	for _, u := range objs {
		ks = append(ks, u.GetKind()+"/"+u.GetName())
	}
	slices.Sort(ks)
	return ks
}

func findObject(t *testing.T, objs []*unstructured.Unstructured, kind string) *unstructured.Unstructured {
	t.Helper()
	for _, u := range objs {
		if u.GetKind() == kind {
			return u
		}
	}
	t.Fatalf("no %s in %v", kind, kinds(objs))
	return nil
}

// find decodes the object of the kind strictly: a misspelt field fails here even
// before the API server sees it.
func find[T any](t *testing.T, objs []*unstructured.Unstructured, kind string) *T {
	t.Helper()
	u := findObject(t, objs, kind)
	data, err := yaml.Marshal(u.Object)
	if err != nil {
		t.Fatal(err)
	}
	out := new(T)
	if err := yaml.UnmarshalStrict(data, out); err != nil {
		t.Fatalf("%s %s does not decode strictly: %v", kind, u.GetName(), err)
	}
	return out
}

// checkToleratesAll: the agent must run on every node, tainted or not.
func checkToleratesAll(t *testing.T, ds *appsv1.DaemonSet) {
	t.Helper()
	if !slices.ContainsFunc(ds.Spec.Template.Spec.Tolerations, func(tol corev1.Toleration) bool {
		return tol.Operator == corev1.TolerationOpExists && tol.Key == "" && tol.Effect == ""
	}) {
		t.Errorf("tolerations %v do not tolerate every taint: some nodes would go unenforced", ds.Spec.Template.Spec.Tolerations)
	}
}

// checkAgent asserts what every agent DaemonSet must have, however it is deployed.
func checkAgent(t *testing.T, ds *appsv1.DaemonSet) *corev1.Container {
	t.Helper()
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork {
		t.Error("hostNetwork is not set: the agent must program the node's own netfilter")
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(spec.Containers))
	}
	c := &spec.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("no securityContext.capabilities")
	}
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities.drop = %v, want [ALL]", sc.Capabilities.Drop)
	}
	if !slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_ADMIN"}) {
		t.Errorf("capabilities.add = %v, want exactly [NET_ADMIN]", sc.Capabilities.Add)
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("the agent must not be privileged")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation must be false")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem must be true")
	}
	var nodeName *corev1.EnvVar
	for i := range c.Env {
		if c.Env[i].Name == "NODE_NAME" {
			nodeName = &c.Env[i]
		}
	}
	if nodeName == nil || nodeName.ValueFrom == nil || nodeName.ValueFrom.FieldRef == nil || nodeName.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("NODE_NAME must come from the downward API (spec.nodeName), got %+v", nodeName)
	}
	if !slices.Contains(c.Args, "--node-name=$(NODE_NAME)") {
		t.Errorf("args %v do not pass --node-name=$(NODE_NAME)", c.Args)
	}
	healthPort := int32(0)
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--health-probe-bind-address=:"); ok {
			fmt.Sscan(v, &healthPort)
		}
	}
	named := map[string]int32{}
	for _, p := range c.Ports {
		named[p.Name] = p.ContainerPort
	}
	if healthPort == 0 || named["health"] != healthPort {
		t.Errorf("health port %d (args) and the container port named health %d must agree", healthPort, named["health"])
	}
	for _, probe := range []struct {
		name string
		p    *corev1.Probe
		path string
	}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
		if probe.p == nil || probe.p.HTTPGet == nil {
			t.Errorf("%s probe must be an HTTP GET", probe.name)
			continue
		}
		if probe.p.HTTPGet.Path != probe.path || probe.p.HTTPGet.Port.String() != "health" {
			t.Errorf("%s probe = GET %s on %s, want GET %s on port health", probe.name, probe.p.HTTPGet.Path, probe.p.HTTPGet.Port.String(), probe.path)
		}
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
		t.Errorf("resource requests %v must set cpu and memory", c.Resources.Requests)
	}
	return c
}

func TestChart(t *testing.T) {
	helm := helmBinary(t)
	c := startAPIServer(t)

	t.Run("defaults", func(t *testing.T) {
		objs := helmTemplate(t, helm)
		want := []string{"ClusterRole/nftpolicy-agent", "ClusterRoleBinding/nftpolicy-agent", "DaemonSet/nftpolicy-agent", "ServiceAccount/nftpolicy-agent"}
		if got := kinds(objs); !slices.Equal(got, want) {
			t.Errorf("rendered %v, want %v", got, want)
		}
		applyDryRun(t, c, objs)
		ds := find[appsv1.DaemonSet](t, objs, "DaemonSet")
		ctr := checkAgent(t, ds)
		checkToleratesAll(t, ds)
		if ds.Namespace != "kube-system" || ds.Spec.Template.Spec.ServiceAccountName != "nftpolicy-agent" {
			t.Errorf("DaemonSet %s/%s runs as %q", ds.Namespace, ds.Name, ds.Spec.Template.Spec.ServiceAccountName)
		}
		wantArgs := []string{
			"--node-name=$(NODE_NAME)", "--health-probe-bind-address=:9091", "--metrics-bind-address=:9090",
			"--resync-period=1m", "--revoke-established=true", "--log-denied=false", "--table=nftpolicy", "-v=0",
		}
		if !slices.Equal(ctr.Args, wantArgs) {
			t.Errorf("args = %q, want %q", ctr.Args, wantArgs)
		}
		if ctr.Image != "nftpolicy/agent:0.1.0" || ctr.ImagePullPolicy != corev1.PullIfNotPresent {
			t.Errorf("image %s (%s), want nftpolicy/agent:<appVersion> (IfNotPresent)", ctr.Image, ctr.ImagePullPolicy)
		}
		ann := ds.Spec.Template.Annotations
		if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != "9090" {
			t.Errorf("scrape annotations = %v", ann)
		}
	})

	t.Run("every value set", func(t *testing.T) {
		objs := helmTemplate(t, helm, "--values", filepath.Join("testdata", "all-values.yaml"))
		want := []string{"ClusterRole/np-agent", "ClusterRoleBinding/np-agent", "DaemonSet/np-agent", "Service/np-agent-metrics", "ServiceAccount/np-sa", "ServiceMonitor/np-agent"}
		if got := kinds(objs); !slices.Equal(got, want) {
			t.Errorf("rendered %v, want %v", got, want)
		}
		applyDryRun(t, c, objs)
		ds := find[appsv1.DaemonSet](t, objs, "DaemonSet")
		ctr := checkAgent(t, ds)
		wantArgs := []string{
			"--node-name=$(NODE_NAME)", "--health-probe-bind-address=:19091", "--metrics-bind-address=:19090",
			"--resync-period=30s", "--revoke-established=false", "--log-denied=true", "--table=nftpolicy_test", "-v=2", "--kubeconfig=",
		}
		if !slices.Equal(ctr.Args, wantArgs) {
			t.Errorf("args = %q, want %q", ctr.Args, wantArgs)
		}
		if !strings.HasSuffix(ctr.Image, "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef") {
			t.Errorf("image %s does not use the digest", ctr.Image)
		}
		if ds.Spec.Template.Spec.ServiceAccountName != "np-sa" || ds.Spec.Template.Labels["team"] != "net" {
			t.Errorf("serviceAccountName %q, labels %v", ds.Spec.Template.Spec.ServiceAccountName, ds.Spec.Template.Labels)
		}
		if got := ctr.Resources.Limits.Memory().String(); got != "300Mi" {
			t.Errorf("memory limit %s, want 300Mi", got)
		}
		crb := findObject(t, objs, "ClusterRoleBinding")
		subjects, _, _ := unstructured.NestedSlice(crb.Object, "subjects")
		if len(subjects) != 1 || subjects[0].(map[string]any)["name"] != "np-sa" {
			t.Errorf("ClusterRoleBinding subjects %v, want the ServiceAccount np-sa", subjects)
		}
	})

	t.Run("metrics off", func(t *testing.T) {
		objs := helmTemplate(t, helm, "--set", "metrics.enabled=false", "--set", "metrics.serviceMonitor.enabled=true")
		applyDryRun(t, c, objs)
		ds := find[appsv1.DaemonSet](t, objs, "DaemonSet")
		ctr := checkAgent(t, ds)
		if !slices.Contains(ctr.Args, "--metrics-bind-address=0") {
			t.Errorf("args %q do not turn metrics off", ctr.Args)
		}
		for _, p := range ctr.Ports {
			if p.Name == "metrics" {
				t.Error("a metrics port is declared with metrics off")
			}
		}
		if _, ok := ds.Spec.Template.Annotations["prometheus.io/scrape"]; ok {
			t.Error("scrape annotations with metrics off")
		}
		for _, u := range objs {
			if u.GetKind() == "ServiceMonitor" || u.GetKind() == "Service" {
				t.Errorf("%s rendered with metrics off", u.GetKind())
			}
		}
	})

	t.Run("RBAC allows exactly what the agent needs", func(t *testing.T) {
		objs := helmTemplate(t, helm)
		checkRBAC(t, c, objs, "system:serviceaccount:kube-system:nftpolicy-agent")
	})

	t.Run("lint", func(t *testing.T) {
		chart := filepath.Join(repoRoot(t), "config", "helm", "nftpolicy")
		for _, args := range [][]string{
			{"lint", "--strict", chart},
			{"lint", "--strict", chart, "--values", filepath.Join("testdata", "all-values.yaml")},
		} {
			if out, err := exec.Command(helm, args...).CombinedOutput(); err != nil {
				t.Errorf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
	})
}

// checkRBAC applies the rendered RBAC objects for real, then asks the API server
// whether user may do what the agent does — and may not do anything more.
func checkRBAC(t *testing.T, c client.Client, objs []*unstructured.Unstructured, user string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, u := range objs {
		switch u.GetKind() {
		case "ClusterRole", "ClusterRoleBinding", "ServiceAccount":
			if err := c.Apply(ctx, client.ApplyConfigurationFromUnstructured(u.DeepCopy()), fieldOwner, client.ForceOwnership); err != nil {
				t.Fatalf("applying %s %s: %v", u.GetKind(), u.GetName(), err)
			}
		}
	}
	type access struct {
		group, resource, verb string
		allowed               bool
	}
	var cases []access
	for _, r := range []struct{ group, resource string }{{"", "pods"}, {"", "namespaces"}, {"networking.k8s.io", "networkpolicies"}} {
		for _, v := range []string{"get", "list", "watch"} {
			cases = append(cases, access{r.group, r.resource, v, true})
		}
		for _, v := range []string{"create", "update", "patch", "delete"} {
			cases = append(cases, access{r.group, r.resource, v, false})
		}
	}
	for _, g := range []string{"", "events.k8s.io"} {
		cases = append(cases, access{g, "events", "create", true}, access{g, "events", "patch", true},
			access{g, "events", "delete", false}, access{g, "events", "list", false})
	}
	cases = append(cases,
		access{"", "secrets", "get", false}, access{"", "secrets", "list", false},
		access{"", "configmaps", "list", false}, access{"", "nodes", "get", false},
		access{"", "services", "list", false}, access{"", "pods/exec", "create", false},
		access{"discovery.k8s.io", "endpointslices", "list", false},
		access{"rbac.authorization.k8s.io", "clusterroles", "escalate", false},
	)
	// RBAC takes effect once the authorizer's informers see the new objects: poll the
	// first allowed case before judging.
	deadline := time.Now().Add(30 * time.Second)
	for !allowed(t, c, user, cases[0].group, cases[0].resource, cases[0].verb) {
		if time.Now().After(deadline) {
			t.Fatalf("%s is still not allowed to %s %s after 30s", user, cases[0].verb, cases[0].resource)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, a := range cases {
		if got := allowed(t, c, user, a.group, a.resource, a.verb); got != a.allowed {
			t.Errorf("%s may %s %s.%s: %v, want %v", user, a.verb, a.resource, a.group, got, a.allowed)
		}
	}
}

func allowed(t *testing.T, c client.Client, user, group, resource, verb string) bool {
	t.Helper()
	res, sub, _ := strings.Cut(resource, "/")
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User:   user,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"},
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Namespace: "default", Group: group, Resource: res, Subresource: sub, Verb: verb,
		},
	}}
	if err := c.Create(context.Background(), sar); err != nil {
		t.Fatalf("SubjectAccessReview: %v", err)
	}
	return sar.Status.Allowed
}

// TestKustomizeBases applies config/default — resolved the way `kubectl apply -k` does
// for bases that only list resources — with dry-run, and checks its DaemonSet and RBAC
// like the chart's.
func TestKustomizeBases(t *testing.T) {
	c := startAPIServer(t)
	objs := kustomizeResources(t, filepath.Join(repoRoot(t), "config", "default"))
	want := []string{"ClusterRole/nftpolicy-agent", "ClusterRoleBinding/nftpolicy-agent", "DaemonSet/nftpolicy-agent", "ServiceAccount/nftpolicy-agent"}
	if got := kinds(objs); !slices.Equal(got, want) {
		t.Errorf("config/default has %v, want %v", got, want)
	}
	applyDryRun(t, c, objs)
	ds := find[appsv1.DaemonSet](t, objs, "DaemonSet")
	checkAgent(t, ds)
	checkToleratesAll(t, ds)
	checkRBAC(t, c, objs, "system:serviceaccount:kube-system:nftpolicy-agent")
}

// kustomizeResources reads a kustomization that only lists resources (files or other
// such kustomizations), failing on any other field: a base that grows patches needs
// a real kustomize here.
func kustomizeResources(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k map[string]any
	if err := yaml.Unmarshal(data, &k); err != nil {
		t.Fatalf("%s/kustomization.yaml: %v", dir, err)
	}
	var objs []*unstructured.Unstructured
	for key, v := range k {
		if key == "apiVersion" || key == "kind" {
			continue
		}
		if key != "resources" {
			t.Fatalf("%s/kustomization.yaml uses %q: only resources are understood by this test", dir, key)
		}
		for _, r := range v.([]any) {
			p := filepath.Join(dir, r.(string))
			if st, err := os.Stat(p); err == nil && st.IsDir() {
				objs = append(objs, kustomizeResources(t, p)...)
				continue
			}
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			objs = append(objs, decode(t, b)...)
		}
	}
	return objs
}
