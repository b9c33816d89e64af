package deploy

import (
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
)

// TestChartMetricsScrape checks that the chart's scrape configuration reaches the
// agent: the ServiceMonitor (off by default) selects the headless Service, the Service
// selects the agent pods and targets their metrics port, the ServiceMonitor scrapes
// the Service's port by name at the agent's path, and the scrape annotations follow
// metrics.port and can be turned off on their own.
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
		if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != "9090" || ann["prometheus.io/path"] != "/metrics" {
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
		eps, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
		if len(eps) != 1 {
			t.Fatalf("ServiceMonitor endpoints %v, want 1", eps)
		}
		ep := eps[0].(map[string]any)
		if ep["port"] != "metrics" || ep["path"] != "/metrics" || ep["interval"] != "30s" {
			t.Errorf("ServiceMonitor endpoint %v, want port metrics, path /metrics, interval 30s", ep)
		}
		if ds.Spec.Template.Annotations["prometheus.io/port"] != "19500" {
			t.Errorf("annotation port %q, want 19500", ds.Spec.Template.Annotations["prometheus.io/port"])
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
