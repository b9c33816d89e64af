// Package deploy tests the deployment manifests: the Helm chart config/helm/nftpolicy
// (rendered with bin/helm) and the kustomize bases under config/. Every rendered object
// is applied with server-side apply and dry-run to a real kube-apiserver (envtest), so
// schema, defaulting and validation are the API server's own; the agent's DaemonSet is
// checked for what the agent needs and nothing more; and the ClusterRoles are applied
// and asked, through SubjectAccessReviews, exactly what the agent's ServiceAccount and
// a scraper bound to the metrics-reader role may do.
package deploy

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/nftpolicy/nftpolicy/internal/testns"
	"github.com/nftpolicy/nftpolicy/test/chart"
)

const fieldOwner = client.FieldOwner("nftpolicy-deploy-test")

// helmBinary is $HELM or bin/helm (make helm).
func helmBinary(t *testing.T) string {
	t.Helper()
	h := chart.Helm(chart.RepoRoot(t))
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
		t.Setenv("KUBEBUILDER_ASSETS", filepath.Join(chart.RepoRoot(t), "bin", "k8s"))
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
	return chart.Template(t, helm, chart.RepoRoot(t), "kube-system", args...)
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

// findNamed returns the object of the kind and name.
func findNamed(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, u := range objs {
		if u.GetKind() == kind && u.GetName() == name {
			return u
		}
	}
	t.Fatalf("no %s/%s in %v", kind, name, kinds(objs))
	return nil
}

// find decodes the object of the kind strictly: a misspelt field fails here even
// before the API server sees it.
func find[T any](t *testing.T, objs []*unstructured.Unstructured, kind string) *T {
	t.Helper()
	return decodeStrict[T](t, findObject(t, objs, kind))
}

func decodeStrict[T any](t *testing.T, u *unstructured.Unstructured) *T {
	t.Helper()
	data, err := yaml.Marshal(u.Object)
	if err != nil {
		t.Fatal(err)
	}
	out := new(T)
	if err := yaml.UnmarshalStrict(data, out); err != nil {
		t.Fatalf("%s %s does not decode strictly: %v", u.GetKind(), u.GetName(), err)
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
			if _, err := fmt.Sscan(v, &healthPort); err != nil {
				t.Errorf("--health-probe-bind-address=:%s: the port is not a number: %v", v, err)
			}
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

// cnpCRD is the ClusterNetworkPolicy CRD's kind/name as kinds lists it.
const cnpCRD = "CustomResourceDefinition/clusternetworkpolicies.policy.networking.k8s.io"

// checkDefaultDeploy checks what the chart's default rendering and config/default
// share: exactly the agent's objects (and extra ones), each accepted by the API server
// (dry run), and a DaemonSet that tolerates every taint and whose agent container passes
// checkAgent. what starts the message of a wrong set of objects.
func checkDefaultDeploy(t *testing.T, c client.Client, objs []*unstructured.Unstructured, what string, extra ...string) (*appsv1.DaemonSet, *corev1.Container) {
	t.Helper()
	want := append([]string{"ClusterRole/nftpolicy-agent", "ClusterRole/nftpolicy-metrics-reader", "ClusterRoleBinding/nftpolicy-agent", "DaemonSet/nftpolicy-agent", "ServiceAccount/nftpolicy-agent"}, extra...)
	slices.Sort(want)
	if got := kinds(objs); !slices.Equal(got, want) {
		t.Errorf("%s %v, want %v", what, got, want)
	}
	applyDryRun(t, c, objs)
	ds := find[appsv1.DaemonSet](t, objs, "DaemonSet")
	ctr := checkAgent(t, ds)
	checkToleratesAll(t, ds)
	return ds, ctr
}

func TestChart(t *testing.T) {
	helm := helmBinary(t)
	c := startAPIServer(t)

	t.Run("defaults", func(t *testing.T) {
		objs := helmTemplate(t, helm)
		// The ClusterNetworkPolicy CRD of the standard channel by default.
		ds, ctr := checkDefaultDeploy(t, c, objs, "rendered", cnpCRD)
		checkCNPCRD(t, objs, "standard")
		if ds.Namespace != "kube-system" || ds.Spec.Template.Spec.ServiceAccountName != "nftpolicy-agent" {
			t.Errorf("DaemonSet %s/%s runs as %q", ds.Namespace, ds.Name, ds.Spec.Template.Spec.ServiceAccountName)
		}
		wantArgs := []string{
			"--node-name=$(NODE_NAME)", "--health-probe-bind-address=:9091", "--metrics-bind-address=:9090", "--metrics-secure=true",
			"--resync-period=1m", "--revoke-established=true", "--log-denied=false", "--table=nftpolicy", "--cluster-policy-check-period=10s", "-v=0",
		}
		if !slices.Equal(ctr.Args, wantArgs) {
			t.Errorf("args = %q, want %q", ctr.Args, wantArgs)
		}
		if ctr.Image != "nftpolicy/agent:0.1.0" || ctr.ImagePullPolicy != corev1.PullIfNotPresent {
			t.Errorf("image %s (%s), want nftpolicy/agent:<appVersion> (IfNotPresent)", ctr.Image, ctr.ImagePullPolicy)
		}
		ann := ds.Spec.Template.Annotations
		if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != "9090" || ann["prometheus.io/scheme"] != "https" {
			t.Errorf("scrape annotations = %v", ann)
		}
		if len(ds.Spec.Template.Spec.Volumes) != 0 || len(ctr.VolumeMounts) != 0 {
			t.Errorf("volumes %v, mounts %v: the default self-signed metrics certificate needs none", ds.Spec.Template.Spec.Volumes, ctr.VolumeMounts)
		}
	})

	t.Run("every value set", func(t *testing.T) {
		objs := helmTemplate(t, helm, "--values", filepath.Join("testdata", "all-values.yaml"))
		want := []string{"ClusterRole/np-agent", "ClusterRole/np-metrics-reader", "ClusterRoleBinding/np-agent", "ClusterRoleBinding/np-metrics-reader",
			cnpCRD, "DaemonSet/np-agent", "Service/np-agent-metrics", "ServiceAccount/np-sa", "ServiceMonitor/np-agent"}
		if got := kinds(objs); !slices.Equal(got, want) {
			t.Errorf("rendered %v, want %v", got, want)
		}
		checkCNPCRD(t, objs, "experimental")
		applyDryRun(t, c, objs)
		ds := find[appsv1.DaemonSet](t, objs, "DaemonSet")
		ctr := checkAgent(t, ds)
		wantArgs := []string{
			"--node-name=$(NODE_NAME)", "--health-probe-bind-address=:19091", "--metrics-bind-address=:19090",
			"--metrics-secure=true", "--metrics-cert-dir=/etc/nftpolicy/metrics-certs", "--resync-period=30s", "--revoke-established=false", "--log-denied=true", "--audit", "--table=nftpolicy_test", "--cluster-policy-check-period=5s", "-v=2", "--kubeconfig=",
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
		crb := findNamed(t, objs, "ClusterRoleBinding", "np-agent")
		subjects, _, _ := unstructured.NestedSlice(crb.Object, "subjects")
		if len(subjects) != 1 || subjects[0].(map[string]any)["name"] != "np-sa" {
			t.Errorf("ClusterRoleBinding subjects %v, want the ServiceAccount np-sa", subjects)
		}
		reader := findNamed(t, objs, "ClusterRoleBinding", "np-metrics-reader")
		if ref, _, _ := unstructured.NestedString(reader.Object, "roleRef", "name"); ref != "np-metrics-reader" {
			t.Errorf("metrics-reader binding refers to %q", ref)
		}
		subjects, _, _ = unstructured.NestedSlice(reader.Object, "subjects")
		if len(subjects) != 1 || subjects[0].(map[string]any)["name"] != "prometheus" || subjects[0].(map[string]any)["namespace"] != "monitoring" {
			t.Errorf("metrics-reader binding subjects %v, want metrics.readerSubjects (monitoring/prometheus)", subjects)
		}
		// The certificate Secret is mounted where --metrics-cert-dir points, read-only.
		vols := ds.Spec.Template.Spec.Volumes
		if len(vols) != 1 || vols[0].Secret == nil || vols[0].Secret.SecretName != "np-metrics-tls" {
			t.Fatalf("volumes %+v, want the Secret np-metrics-tls", vols)
		}
		if len(ctr.VolumeMounts) != 1 || ctr.VolumeMounts[0].Name != vols[0].Name || ctr.VolumeMounts[0].MountPath != "/etc/nftpolicy/metrics-certs" || !ctr.VolumeMounts[0].ReadOnly {
			t.Errorf("volume mounts %+v, want %s read-only at /etc/nftpolicy/metrics-certs", ctr.VolumeMounts, vols[0].Name)
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
		for _, a := range ctr.Args {
			if strings.HasPrefix(a, "--metrics-secure") {
				t.Errorf("args %q: %s with metrics off", ctr.Args, a)
			}
		}
		for _, u := range objs {
			if u.GetKind() == "ServiceMonitor" || u.GetKind() == "Service" || u.GetName() == "nftpolicy-metrics-reader" {
				t.Errorf("%s %s rendered with metrics off", u.GetKind(), u.GetName())
			}
		}
		checkRules(t, objs, false)
	})

	const scraper = "system:serviceaccount:monitoring:metrics-scraper"
	t.Run("RBAC allows exactly what the agent needs", func(t *testing.T) {
		// The defaults, plus a binding of the metrics-reader role to a scraper.
		objs := helmTemplate(t, helm, "--set-json", `metrics.readerSubjects=[{"kind":"ServiceAccount","name":"metrics-scraper","namespace":"monitoring"}]`)
		checkRules(t, objs, true)
		applyRBAC(t, c, objs)
		checkAccess(t, c, "system:serviceaccount:kube-system:nftpolicy-agent", agentAccess(true))
		checkAccess(t, c, scraper, readerAccess())
	})

	t.Run("RBAC with plain metrics", func(t *testing.T) {
		// Applied over the previous subtest's objects: the agent's role loses the
		// reviews (the reader role and binding are not rendered, so stay).
		objs := helmTemplate(t, helm, "--set", "metrics.secure=false")
		checkRules(t, objs, false)
		applyRBAC(t, c, objs)
		checkAccess(t, c, "system:serviceaccount:kube-system:nftpolicy-agent", agentAccess(false))
	})

	t.Run("ClusterNetworkPolicy CRD channels", func(t *testing.T) {
		// Each channel renders its CRD and changes nothing else; none renders none.
		others := func(objs []*unstructured.Unstructured) []*unstructured.Unstructured {
			return slices.DeleteFunc(slices.Clone(objs), func(u *unstructured.Unstructured) bool { return u.GetKind() == "CustomResourceDefinition" })
		}
		base := others(helmTemplate(t, helm))
		for _, channel := range []string{"standard", "experimental", "none"} {
			objs := helmTemplate(t, helm, "--set", "clusterNetworkPolicy.crds="+channel)
			if channel == "none" {
				for _, u := range objs {
					if u.GetKind() == "CustomResourceDefinition" {
						t.Errorf("crds=none renders CRD %s", u.GetName())
					}
				}
			} else {
				checkCNPCRD(t, objs, channel)
				applyDryRun(t, c, objs)
			}
			if got := others(objs); !equality.Semantic.DeepEqual(got, base) {
				t.Errorf("crds=%s changes objects other than the CRD: %v", channel, kinds(got))
			}
			checkCNPRules(t, objs)
		}
		// The value is checked: a typo is an error, not a silent none.
		args := []string{"template", "nftpolicy", filepath.Join(chart.RepoRoot(t), "config", "helm", "nftpolicy"), "--set", "clusterNetworkPolicy.crds=Experimental"}
		out, err := exec.Command(helm, args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "want standard, experimental or none") {
			t.Errorf("helm %s: %v, want an error naming the channels:\n%s", strings.Join(args, " "), err, out)
		}
	})

	t.Run("lint", func(t *testing.T) {
		chart := filepath.Join(chart.RepoRoot(t), "config", "helm", "nftpolicy")
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

// applyRBAC applies the rendered RBAC objects for real (server-side apply: a rule
// no longer rendered is removed).
func applyRBAC(t *testing.T, c client.Client, objs []*unstructured.Unstructured) {
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
}

// access is one request a user may or may not make: on a resource (group, resource
// or resource/subresource) or, with path set, on a non-resource URL.
type access struct {
	group, resource, path, verb string
	allowed                     bool
}

func (a access) String() string {
	if a.path != "" {
		return a.verb + " " + a.path
	}
	return a.verb + " " + a.resource + "." + a.group
}

// agentAccess is what the agent's ServiceAccount must and must not be allowed to do.
// With secureMetrics its metrics endpoint reviews every scraper's token and access
// (and so needs create on tokenreviews and subjectaccessreviews); the agent never
// reads /metrics itself.
func agentAccess(secureMetrics bool) []access {
	var cases []access
	for _, r := range []struct{ group, resource string }{
		{"", "pods"}, {"", "namespaces"}, {"networking.k8s.io", "networkpolicies"}, {"", "nodes"},
		{"policy.networking.k8s.io", "clusternetworkpolicies"},
	} {
		for _, v := range []string{"get", "list", "watch"} {
			cases = append(cases, access{group: r.group, resource: r.resource, verb: v, allowed: true})
		}
		for _, v := range []string{"create", "update", "patch", "delete", "deletecollection"} {
			cases = append(cases, access{group: r.group, resource: r.resource, verb: v})
		}
	}
	// ClusterNetworkPolicies are read, never written: not even their status.
	for _, v := range []string{"get", "update", "patch"} {
		cases = append(cases, access{group: "policy.networking.k8s.io", resource: "clusternetworkpolicies/status", verb: v})
	}
	cases = append(cases, access{group: "apiextensions.k8s.io", resource: "customresourcedefinitions", verb: "list"},
		access{group: "apiextensions.k8s.io", resource: "customresourcedefinitions", verb: "create"})
	for _, g := range []string{"", "events.k8s.io"} {
		cases = append(cases, access{group: g, resource: "events", verb: "create", allowed: true}, access{group: g, resource: "events", verb: "patch", allowed: true},
			access{group: g, resource: "events", verb: "delete"}, access{group: g, resource: "events", verb: "list"})
	}
	cases = append(cases,
		access{group: "authentication.k8s.io", resource: "tokenreviews", verb: "create", allowed: secureMetrics},
		access{group: "authorization.k8s.io", resource: "subjectaccessreviews", verb: "create", allowed: secureMetrics},
		access{group: "authorization.k8s.io", resource: "subjectaccessreviews", verb: "list"},
		access{group: "", resource: "secrets", verb: "get"}, access{group: "", resource: "secrets", verb: "list"},
		access{group: "", resource: "configmaps", verb: "list"},
		access{group: "", resource: "services", verb: "list"}, access{group: "", resource: "pods/exec", verb: "create"},
		access{group: "", resource: "serviceaccounts/token", verb: "create"},
		access{group: "discovery.k8s.io", resource: "endpointslices", verb: "list"},
		access{group: "rbac.authorization.k8s.io", resource: "clusterroles", verb: "escalate"},
		access{path: "/metrics", verb: "get"},
	)
	return cases
}

// readerAccess is what a user bound to the metrics-reader role may do: GET /metrics,
// nothing more.
func readerAccess() []access {
	return []access{
		{path: "/metrics", verb: "get", allowed: true},
		{path: "/metrics", verb: "post"},
		{path: "/debug/pprof/", verb: "get"},
		{path: "/logs", verb: "get"},
		{group: "", resource: "pods", verb: "list"},
		{group: "", resource: "secrets", verb: "get"},
		{group: "authentication.k8s.io", resource: "tokenreviews", verb: "create"},
	}
}

// checkRules checks the agent's ClusterRole has the reviews of secure metrics exactly
// when they are on, and that the metrics-reader role, when rendered, grants GET on
// /metrics and nothing else.
func checkRules(t *testing.T, objs []*unstructured.Unstructured, secureMetrics bool) {
	t.Helper()
	var agentRole, reader *rbacv1.ClusterRole
	for _, u := range objs {
		if u.GetKind() != "ClusterRole" {
			continue
		}
		r := decodeStrict[rbacv1.ClusterRole](t, u)
		if strings.HasSuffix(r.Name, "-metrics-reader") {
			reader = r
		} else {
			agentRole = r
		}
	}
	if agentRole == nil {
		t.Fatalf("no agent ClusterRole in %v", kinds(objs))
	}
	checkReadOnlyRule(t, agentRole, "policy.networking.k8s.io", "clusternetworkpolicies")
	checkReadOnlyRule(t, agentRole, "", "nodes")
	reviews := 0
	for _, r := range agentRole.Rules {
		if slices.Contains(r.Resources, "tokenreviews") || slices.Contains(r.Resources, "subjectaccessreviews") {
			reviews++
			if !slices.Equal(r.Verbs, []string{"create"}) || len(r.Resources) != 1 {
				t.Errorf("agent ClusterRole rule %+v: want create on one review resource", r)
			}
		}
	}
	if want := map[bool]int{true: 2, false: 0}[secureMetrics]; reviews != want {
		t.Errorf("agent ClusterRole has %d review rules, want %d (secure metrics %v): %+v", reviews, want, secureMetrics, agentRole.Rules)
	}
	if (reader != nil) != secureMetrics {
		t.Errorf("metrics-reader ClusterRole rendered: %v, want %v", reader != nil, secureMetrics)
	}
	if reader != nil {
		want := []rbacv1.PolicyRule{{NonResourceURLs: []string{"/metrics"}, Verbs: []string{"get"}}}
		if !equality.Semantic.DeepEqual(reader.Rules, want) {
			t.Errorf("metrics-reader rules %+v, want %+v", reader.Rules, want)
		}
	}
}

// checkCNPRules checks the agent's ClusterRole reads ClusterNetworkPolicies and nodes
// (checkReadOnlyRule).
func checkCNPRules(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	for _, u := range objs {
		if u.GetKind() == "ClusterRole" && !strings.HasSuffix(u.GetName(), "-metrics-reader") {
			r := decodeStrict[rbacv1.ClusterRole](t, u)
			checkReadOnlyRule(t, r, "policy.networking.k8s.io", "clusternetworkpolicies")
			checkReadOnlyRule(t, r, "", "nodes")
			return
		}
	}
	t.Fatalf("no agent ClusterRole in %v", kinds(objs))
}

// checkReadOnlyRule checks that exactly one rule of role names the resource (or a
// subresource of it) in the group, and that it grants get, list and watch on it and
// nothing else; and that no other rule grants anything in that group, but for the core
// group which other resources share.
func checkReadOnlyRule(t *testing.T, role *rbacv1.ClusterRole, group, resource string) {
	t.Helper()
	var found []rbacv1.PolicyRule
	for _, r := range role.Rules {
		names := slices.ContainsFunc(r.Resources, func(res string) bool { return res == resource || strings.HasPrefix(res, resource+"/") })
		if names {
			found = append(found, r)
		} else if group != "" && slices.Contains(r.APIGroups, group) {
			t.Errorf("ClusterRole %s rule %+v grants more in %s than %s", role.Name, r, group, resource)
		}
	}
	want := rbacv1.PolicyRule{APIGroups: []string{group}, Resources: []string{resource}, Verbs: []string{"get", "list", "watch"}}
	if len(found) != 1 || !equality.Semantic.DeepEqual(found[0], want) {
		t.Errorf("ClusterRole %s rules on %s: %+v, want exactly %+v", role.Name, resource, found, want)
	}
}

// checkAccess asks the API server, with SubjectAccessReviews, whether user may make
// each request, and fails on every answer that is not the expected one. RBAC takes
// effect once the authorizer's informers see the applied objects: the answers are
// polled until they all match or 30 seconds pass.
func checkAccess(t *testing.T, c client.Client, user string, cases []access) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var wrong []string
		for _, a := range cases {
			if got := allowed(t, c, user, a); got != a.allowed {
				wrong = append(wrong, fmt.Sprintf("%s may %s: %v, want %v", user, a, got, a.allowed))
			}
		}
		if len(wrong) == 0 {
			return
		}
		if time.Now().After(deadline) {
			for _, w := range wrong {
				t.Error(w)
			}
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// allowed asks whether user (a ServiceAccount's, with the groups the API server gives
// it) may make the request a.
func allowed(t *testing.T, c client.Client, user string, a access) bool {
	t.Helper()
	groups := []string{"system:authenticated"}
	if rest, ok := strings.CutPrefix(user, "system:serviceaccount:"); ok {
		ns, _, _ := strings.Cut(rest, ":")
		groups = append(groups, "system:serviceaccounts", "system:serviceaccounts:"+ns)
	}
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{User: user, Groups: groups}}
	if a.path != "" {
		sar.Spec.NonResourceAttributes = &authorizationv1.NonResourceAttributes{Path: a.path, Verb: a.verb}
	} else {
		res, sub, _ := strings.Cut(a.resource, "/")
		sar.Spec.ResourceAttributes = &authorizationv1.ResourceAttributes{
			Namespace: "default", Group: a.group, Resource: res, Subresource: sub, Verb: a.verb,
		}
	}
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
	objs := kustomizeResources(t, filepath.Join(chart.RepoRoot(t), "config", "default"))
	_, ctr := checkDefaultDeploy(t, c, objs, "config/default has")
	if !slices.Contains(ctr.Args, "--metrics-secure=true") {
		t.Errorf("args %q do not serve metrics securely", ctr.Args)
	}
	checkRules(t, objs, true)
	applyRBAC(t, c, objs)
	checkAccess(t, c, "system:serviceaccount:kube-system:nftpolicy-agent", agentAccess(true))

	// The CRD, apart (config/crd/CHANNEL): upstream's file of each channel, unchanged.
	for _, channel := range []string{"standard", "experimental"} {
		objs := kustomizeResources(t, filepath.Join(chart.RepoRoot(t), "config", "crd", channel))
		if got := kinds(objs); !slices.Equal(got, []string{cnpCRD}) {
			t.Errorf("config/crd/%s has %v, want %s", channel, got, cnpCRD)
			continue
		}
		if want := upstreamCRD(t, channel); !equality.Semantic.DeepEqual(objs[0], want) {
			t.Errorf("config/crd/%s is not upstream's %s CRD", channel, channel)
		}
		applyDryRun(t, c, objs)
	}
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
