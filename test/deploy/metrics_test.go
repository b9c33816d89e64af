package deploy

import (
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/nftpolicy/nftpolicy/test/chart"
)

// TestChartMetricsScrape checks that the chart's scrape configuration reaches the
// agent: the ServiceMonitor (off by default) selects the headless Service, the Service
// selects the agent pods and targets their metrics port, the ServiceMonitor scrapes
// the Service's port by name at the agent's path — over HTTPS with a bearer token
// unless metrics.secure is false — and the scrape annotations follow metrics.port and
// metrics.secure and can be turned off on their own.
func TestChartMetricsScrape(t *testing.T) {
	helm := helmBinary(t)

	t.Run("defaults: annotations, no ServiceMonitor", func(t *testing.T) {
		objs := helmTemplate(t, helm)
		for _, u := range objs {
			if u.GetKind() == "ServiceMonitor" || u.GetKind() == "Service" {
				t.Errorf("%s rendered by default", u.GetKind())
			}
		}
		ds := find[appsv1.DaemonSet](t, objs, "DaemonSet")
		ann := ds.Spec.Template.Annotations
		if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != "9090" || ann["prometheus.io/path"] != "/metrics" || ann["prometheus.io/scheme"] != "https" {
			t.Errorf("scrape annotations = %v", ann)
		}
	})

	t.Run("ServiceMonitor wiring", func(t *testing.T) {
		objs := helmTemplate(t, helm, "--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.port=19500",
			"--set", "metrics.serviceMonitor.labels.release=prom")
		ds := find[appsv1.DaemonSet](t, objs, "DaemonSet")
		svc := find[corev1.Service](t, objs, "Service")
		sm := findObject(t, objs, "ServiceMonitor")

		if svc.Spec.ClusterIP != corev1.ClusterIPNone {
			t.Errorf("Service clusterIP %q, want None (headless: one endpoint per agent)", svc.Spec.ClusterIP)
		}
		if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(ds.Spec.Template.Labels)) || len(svc.Spec.Selector) == 0 {
			t.Errorf("Service selector %v does not select the agent pods %v", svc.Spec.Selector, ds.Spec.Template.Labels)
		}
		if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "metrics" || svc.Spec.Ports[0].Port != 19500 || svc.Spec.Ports[0].TargetPort.String() != "metrics" {
			t.Fatalf("Service ports %+v, want metrics 19500 -> metrics", svc.Spec.Ports)
		}
		var containerPort int32
		for _, p := range ds.Spec.Template.Spec.Containers[0].Ports {
			if p.Name == "metrics" {
				containerPort = p.ContainerPort
			}
		}
		if containerPort != 19500 {
			t.Errorf("agent metrics container port %d, want 19500", containerPort)
		}

		if sm.GetAPIVersion() != "monitoring.coreos.com/v1" || sm.GetLabels()["release"] != "prom" {
			t.Errorf("ServiceMonitor %s labels %v", sm.GetAPIVersion(), sm.GetLabels())
		}
		match, _, _ := unstructured.NestedStringMap(sm.Object, "spec", "selector", "matchLabels")
		if len(match) == 0 || !labels.SelectorFromSet(match).Matches(labels.Set(svc.Labels)) {
			t.Errorf("ServiceMonitor selector %v does not select the Service %v", match, svc.Labels)
		}
		nsNames, _, _ := unstructured.NestedStringSlice(sm.Object, "spec", "namespaceSelector", "matchNames")
		if len(nsNames) != 1 || nsNames[0] != svc.Namespace {
			t.Errorf("ServiceMonitor namespaces %v, want the Service's %q", nsNames, svc.Namespace)
		}
		ep := serviceMonitorEndpoint(t, objs)
		if ep["port"] != "metrics" || ep["path"] != "/metrics" || ep["interval"] != "30s" {
			t.Errorf("ServiceMonitor endpoint %v, want port metrics, path /metrics, interval 30s", ep)
		}
		// kubebuilder's shape: https, Prometheus' own token, and no verification of
		// the agent's self-signed certificate.
		if ep["scheme"] != "https" || ep["bearerTokenFile"] != "/var/run/secrets/kubernetes.io/serviceaccount/token" {
			t.Errorf("ServiceMonitor endpoint %v, want scheme https with Prometheus' ServiceAccount token", ep)
		}
		if _, ok := ep["authorization"]; ok {
			t.Errorf("ServiceMonitor endpoint %v has both a token file and authorization", ep)
		}
		if tls, _ := ep["tlsConfig"].(map[string]any); len(tls) != 1 || tls["insecureSkipVerify"] != true {
			t.Errorf("ServiceMonitor tlsConfig %v, want {insecureSkipVerify: true}", ep["tlsConfig"])
		}
		if ds.Spec.Template.Annotations["prometheus.io/port"] != "19500" {
			t.Errorf("annotation port %q, want 19500", ds.Spec.Template.Annotations["prometheus.io/port"])
		}
	})

	t.Run("ServiceMonitor with a token Secret and a CA", func(t *testing.T) {
		objs := helmTemplate(t, helm, "--values", filepath.Join("testdata", "all-values.yaml"))
		ep := serviceMonitorEndpoint(t, objs)
		if _, ok := ep["bearerTokenFile"]; ok {
			t.Errorf("ServiceMonitor endpoint %v has a token file although authorization is given", ep)
		}
		auth, _ := ep["authorization"].(map[string]any)
		creds, _ := auth["credentials"].(map[string]any)
		if auth["type"] != "Bearer" || creds["name"] != "prometheus-token" || creds["key"] != "token" {
			t.Errorf("ServiceMonitor authorization %v, want metrics.serviceMonitor.authorization", ep["authorization"])
		}
		// The given tlsConfig replaces the default: no insecureSkipVerify left over.
		tls, _ := ep["tlsConfig"].(map[string]any)
		if _, ok := tls["insecureSkipVerify"]; ok || tls["serverName"] != "np-agent-metrics" || tls["ca"] == nil {
			t.Errorf("ServiceMonitor tlsConfig %v, want metrics.serviceMonitor.tlsConfig only", tls)
		}
	})

	t.Run("plain metrics only by explicit value", func(t *testing.T) {
		objs := helmTemplate(t, helm, "--set", "metrics.secure=false", "--set", "metrics.serviceMonitor.enabled=true")
		ds := find[appsv1.DaemonSet](t, objs, "DaemonSet")
		ctr := checkAgent(t, ds)
		if !slices.Contains(ctr.Args, "--metrics-secure=false") {
			t.Errorf("args %q do not pass --metrics-secure=false", ctr.Args)
		}
		if got := ds.Spec.Template.Annotations["prometheus.io/scheme"]; got != "http" {
			t.Errorf("annotation prometheus.io/scheme %q, want http", got)
		}
		ep := serviceMonitorEndpoint(t, objs)
		if ep["scheme"] != "http" {
			t.Errorf("ServiceMonitor scheme %v, want http", ep["scheme"])
		}
		for _, k := range []string{"bearerTokenFile", "authorization", "tlsConfig"} {
			if _, ok := ep[k]; ok {
				t.Errorf("ServiceMonitor endpoint has %s with plain metrics: %v", k, ep)
			}
		}
	})

	t.Run("a certificate needs secure metrics", func(t *testing.T) {
		args := []string{"template", "nftpolicy", filepath.Join(chart.RepoRoot(t), "config", "helm", "nftpolicy"),
			"--set", "metrics.secure=false", "--set", "metrics.certSecret=tls"}
		out, err := exec.Command(helm, args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "metrics.certSecret needs metrics.secure") {
			t.Errorf("helm %s: err %v, want a failure naming metrics.certSecret:\n%s", strings.Join(args, " "), err, out)
		}
	})

	t.Run("annotations off, metrics on", func(t *testing.T) {
		objs := helmTemplate(t, helm, "--set", "metrics.scrapeAnnotations=false")
		ds := find[appsv1.DaemonSet](t, objs, "DaemonSet")
		for _, k := range []string{"prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path"} {
			if _, ok := ds.Spec.Template.Annotations[k]; ok {
				t.Errorf("annotation %s with scrapeAnnotations=false", k)
			}
		}
		ctr := checkAgent(t, ds)
		found := false
		for _, a := range ctr.Args {
			found = found || a == "--metrics-bind-address=:9090"
		}
		if !found {
			t.Errorf("args %q: metrics should stay on", ctr.Args)
		}
	})
}

// serviceMonitorEndpoint returns the rendered ServiceMonitor's only endpoint.
func serviceMonitorEndpoint(t *testing.T, objs []*unstructured.Unstructured) map[string]any {
	t.Helper()
	eps, _, _ := unstructured.NestedSlice(findObject(t, objs, "ServiceMonitor").Object, "spec", "endpoints")
	if len(eps) != 1 {
		t.Fatalf("ServiceMonitor endpoints %v, want 1", eps)
	}
	return eps[0].(map[string]any)
}
