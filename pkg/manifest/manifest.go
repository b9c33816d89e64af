// Package manifest reads the objects NetworkPolicy enforcement depends on — Namespaces,
// Pods, NetworkPolicies, ClusterNetworkPolicies and Nodes — from YAML or JSON manifests: files, directories (every
// *.yaml, *.yml and *.json in name order, not recursive) or a reader such as stdin.
// A file may hold several documents (---) and List kinds (`kubectl get -o yaml` prints
// a v1 List; PodList and the like are taken too). Other kinds (Services,
// Deployments, ...) are skipped and counted, since a directory of manifests usually
// holds more than policy needs.
package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/pkg/model"
)

// Objects is what the manifests held.
type Objects struct {
	Namespaces []*corev1.Namespace
	Pods       []*corev1.Pod
	Policies   []*networkingv1.NetworkPolicy
	// ClusterPolicies are the ClusterNetworkPolicies, v1beta1 or v1alpha2 (one schema;
	// the API server serves either as the other).
	ClusterPolicies []*cnp.ClusterNetworkPolicy
	// Nodes are what ClusterNetworkPolicy `nodes` peers select.
	Nodes []*corev1.Node
	// Workloads are the pod templates of Deployments, StatefulSets, DaemonSets,
	// ReplicaSets, Jobs and CronJobs: a GitOps repository holds these rather than pods,
	// and `nftpolicy reach` stands one pod in for each workload that has no pod in the
	// input. Policy is enforced on pods only, so they are also counted in Skipped.
	Workloads []*Workload
	// Skipped counts documents of other kinds, by kind.
	Skipped map[string]int
}

// Workload is a controller of pods and the template its pods are made from.
type Workload struct {
	// Kind is Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or CronJob.
	Kind            string
	Namespace, Name string
	// Controller is the workload's own controller (a Deployment's ReplicaSet, a
	// CronJob's Job), nil when none.
	Controller *metav1.OwnerReference
	// Replicas is spec.replicas where the kind has it (nil: unset or no such field).
	Replicas *int32
	Template corev1.PodTemplateSpec
}

// Load reads every path in order; "-" reads stdin.
func Load(paths []string, stdin io.Reader) (*Objects, error) {
	objs := &Objects{Skipped: map[string]int{}}
	for _, p := range paths {
		if p == "-" {
			if err := objs.Read(stdin, "<stdin>"); err != nil {
				return nil, err
			}
			continue
		}
		fi, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("reading manifests: %w", err)
		}
		files := []string{p}
		if fi.IsDir() {
			if files, err = manifestFiles(p); err != nil {
				return nil, err
			}
		}
		for _, f := range files {
			if err := objs.readFile(f); err != nil {
				return nil, err
			}
		}
	}
	return objs, nil
}

// manifestFiles lists the manifest files of a directory in name order.
func manifestFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("reading manifest directory %s: %w", dir, err)
	}
	var out []string
	for _, e := range entries {
		ext := strings.ToLower(filepath.Ext(e.Name()))
		if !e.IsDir() && (ext == ".yaml" || ext == ".yml" || ext == ".json") {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	sort.Strings(out)
	return out, nil
}

func (o *Objects) readFile(path string) error {
	f, err := os.Open(path) //nolint:gosec // G304: the path is the user's own manifest, named on the command line
	if err != nil {
		return fmt.Errorf("reading manifests: %w", err)
	}
	defer f.Close()
	return o.Read(f, path)
}

// Read adds the objects of every document in r; name identifies r in errors.
func (o *Objects) Read(r io.Reader, name string) error {
	if o.Skipped == nil {
		o.Skipped = map[string]int{}
	}
	dec := yaml.NewYAMLOrJSONDecoder(r, 4096)
	for doc := 1; ; doc++ {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("%s: document %d: %w", name, doc, err)
		}
		if len(bytes.TrimSpace(raw)) == 0 || string(bytes.TrimSpace(raw)) == "null" {
			continue // an empty document, e.g. after a trailing ---
		}
		if err := o.add(raw, fmt.Sprintf("%s: document %d", name, doc)); err != nil {
			return err
		}
	}
}

// add decodes one object, descending into lists.
func (o *Objects) add(raw json.RawMessage, where string) error {
	var tm metav1.TypeMeta
	if err := json.Unmarshal(raw, &tm); err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	group := ""
	if i := strings.LastIndex(tm.APIVersion, "/"); i >= 0 {
		group = tm.APIVersion[:i]
	}
	decode := func(into any) error {
		if err := json.Unmarshal(raw, into); err != nil {
			return fmt.Errorf("%s: %s: %w", where, tm.Kind, err)
		}
		return nil
	}
	// decodeNamespaced decodes a namespaced object; one without a namespace is in
	// "default", as kubectl would create it.
	decodeNamespaced := func(into metav1.Object) error {
		if err := decode(into); err != nil {
			return err
		}
		if into.GetNamespace() == "" {
			into.SetNamespace("default")
		}
		return nil
	}
	switch {
	case tm.Kind == "":
		return fmt.Errorf("%s: no kind", where)
	case strings.HasSuffix(tm.Kind, "List"):
		var l struct {
			Items []json.RawMessage `json:"items"`
		}
		if err := decode(&l); err != nil {
			return err
		}
		// kubectl omits apiVersion and kind of items of typed lists (PodList).
		itemKind := strings.TrimSuffix(tm.Kind, "List")
		for i, it := range l.Items {
			if itemKind != "" {
				if it2, err := withDefaultKind(it, tm.APIVersion, itemKind); err == nil {
					it = it2
				}
			}
			if err := o.add(it, fmt.Sprintf("%s: items[%d]", where, i)); err != nil {
				return err
			}
		}
	case tm.Kind == "Namespace" && group == "":
		ns := &corev1.Namespace{}
		if err := decode(ns); err != nil {
			return err
		}
		o.Namespaces = append(o.Namespaces, ns)
	case tm.Kind == "Pod" && group == "":
		p := &corev1.Pod{}
		if err := decodeNamespaced(p); err != nil {
			return err
		}
		o.Pods = append(o.Pods, p)
	case tm.Kind == "NetworkPolicy" && group == "networking.k8s.io":
		np := &networkingv1.NetworkPolicy{}
		if err := decodeNamespaced(np); err != nil {
			return err
		}
		o.Policies = append(o.Policies, np)
	case tm.Kind == "ClusterNetworkPolicy" && group == cnp.GroupName:
		p := &cnp.ClusterNetworkPolicy{}
		if err := decode(p); err != nil {
			return err
		}
		o.ClusterPolicies = append(o.ClusterPolicies, p)
	case tm.Kind == "Node" && group == "":
		n := &corev1.Node{}
		if err := decode(n); err != nil {
			return err
		}
		o.Nodes = append(o.Nodes, n)
	case group == "apps" || group == "batch":
		w, err := decodeWorkload(tm.Kind, decode)
		if err != nil {
			return err
		}
		if w != nil {
			if w.Namespace == "" {
				w.Namespace = "default"
			}
			o.Workloads = append(o.Workloads, w)
		}
		o.Skipped[tm.Kind]++
	default:
		o.Skipped[tm.Kind]++
	}
	return nil
}

// decodeWorkload decodes the controllers of pods (nil for other kinds of apps and
// batch, e.g. ControllerRevision).
func decodeWorkload(kind string, decode func(any) error) (*Workload, error) {
	var meta metav1.ObjectMeta
	var tmpl *corev1.PodTemplateSpec
	var replicas *int32
	switch kind {
	case "Deployment":
		var d appsv1.Deployment
		if err := decode(&d); err != nil {
			return nil, err
		}
		meta, tmpl, replicas = d.ObjectMeta, &d.Spec.Template, d.Spec.Replicas
	case "StatefulSet":
		var d appsv1.StatefulSet
		if err := decode(&d); err != nil {
			return nil, err
		}
		meta, tmpl, replicas = d.ObjectMeta, &d.Spec.Template, d.Spec.Replicas
	case "DaemonSet":
		var d appsv1.DaemonSet
		if err := decode(&d); err != nil {
			return nil, err
		}
		meta, tmpl = d.ObjectMeta, &d.Spec.Template
	case "ReplicaSet":
		var d appsv1.ReplicaSet
		if err := decode(&d); err != nil {
			return nil, err
		}
		meta, tmpl, replicas = d.ObjectMeta, &d.Spec.Template, d.Spec.Replicas
	case "Job":
		var d batchv1.Job
		if err := decode(&d); err != nil {
			return nil, err
		}
		meta, tmpl = d.ObjectMeta, &d.Spec.Template
	case "CronJob":
		var d batchv1.CronJob
		if err := decode(&d); err != nil {
			return nil, err
		}
		meta, tmpl = d.ObjectMeta, &d.Spec.JobTemplate.Spec.Template
	default:
		return nil, nil
	}
	return &Workload{Kind: kind, Namespace: meta.Namespace, Name: meta.Name, Controller: metav1.GetControllerOf(&meta), Replicas: replicas, Template: *tmpl}, nil
}

// withDefaultKind sets apiVersion and kind on an item that has none.
func withDefaultKind(item json.RawMessage, apiVersion, kind string) (json.RawMessage, error) {
	var m map[string]any
	if err := json.Unmarshal(item, &m); err != nil {
		return nil, err
	}
	if k, _ := m["kind"].(string); k != "" {
		return item, nil
	}
	m["kind"] = kind
	if _, ok := m["apiVersion"]; !ok {
		m["apiVersion"] = apiVersion
	}
	return json.Marshal(m)
}

// Snapshot is the compiler's input for node: every pod (the compiler needs the remote
// ones for selectors), the namespaces' labels, every policy and ClusterNetworkPolicy,
// and the nodes. Namespaces that only
// pods or policies name get the labels the API server would give them.
func (o *Objects) Snapshot(node string) *model.Snapshot {
	snap := &model.Snapshot{NodeName: node, Namespaces: map[string]*model.Namespace{}}
	for _, ns := range o.Namespaces {
		snap.Namespaces[ns.Name] = &model.Namespace{Name: ns.Name, Labels: ns.Labels}
	}
	for _, p := range o.Pods {
		snap.Pods = append(snap.Pods, model.PodFromAPI(p))
	}
	snap.Policies = append(snap.Policies, o.Policies...)
	snap.ClusterPolicies = append(snap.ClusterPolicies, o.ClusterPolicies...)
	for _, n := range o.Nodes {
		snap.Nodes = append(snap.Nodes, model.NodeFromAPI(n))
	}
	return snap
}

// Pod returns the pod namespace/name, or nil.
func (o *Objects) Pod(namespace, name string) *corev1.Pod {
	for _, p := range o.Pods {
		if p.Namespace == namespace && p.Name == name {
			return p
		}
	}
	return nil
}

// Apply returns the objects o would be after applying p as `kubectl apply` would: an
// object of p replaces the object of the same kind and name in o (namespace/name for
// namespaced kinds), other objects of p are added, the rest of o is kept. A pod of p
// that has no status (a manifest, not a running pod) keeps the node, phase and
// addresses of the pod it replaces, as the API server would keep them. o and p are not
// modified; the objects are shared, except those pods.
func (o *Objects) Apply(p *Objects) *Objects {
	out := &Objects{Skipped: map[string]int{}}
	for k, n := range o.Skipped {
		out.Skipped[k] += n
	}
	for k, n := range p.Skipped {
		out.Skipped[k] += n
	}
	out.Namespaces = applyNamed(o.Namespaces, p.Namespaces, func(n *corev1.Namespace) string { return n.Name })
	out.Policies = applyNamed(o.Policies, p.Policies, func(n *networkingv1.NetworkPolicy) string { return n.Namespace + "/" + n.Name })
	out.ClusterPolicies = applyNamed(o.ClusterPolicies, p.ClusterPolicies, func(n *cnp.ClusterNetworkPolicy) string { return n.Name })
	out.Nodes = applyNamed(o.Nodes, p.Nodes, func(n *corev1.Node) string { return n.Name })
	out.Workloads = applyNamed(o.Workloads, p.Workloads, func(w *Workload) string { return w.Kind + " " + w.Namespace + "/" + w.Name })
	old := map[string]*corev1.Pod{}
	for _, pod := range o.Pods {
		old[pod.Namespace+"/"+pod.Name] = pod
	}
	pods := make([]*corev1.Pod, 0, len(p.Pods))
	for _, pod := range p.Pods {
		if prev := old[pod.Namespace+"/"+pod.Name]; prev != nil && pod.Status.PodIP == "" && len(pod.Status.PodIPs) == 0 {
			pod = pod.DeepCopy()
			pod.Status = *prev.Status.DeepCopy()
			if pod.Spec.NodeName == "" {
				pod.Spec.NodeName = prev.Spec.NodeName
			}
		}
		pods = append(pods, pod)
	}
	out.Pods = applyNamed(o.Pods, pods, func(n *corev1.Pod) string { return n.Namespace + "/" + n.Name })
	return out
}

// applyNamed is base with each element of changes replacing the one of the same name,
// or added after the others.
func applyNamed[T any](base, changes []T, name func(T) string) []T {
	index := map[string]int{}
	out := make([]T, 0, len(base)+len(changes))
	for _, x := range base {
		index[name(x)] = len(out)
		out = append(out, x)
	}
	for _, x := range changes {
		if i, ok := index[name(x)]; ok {
			out[i] = x
			continue
		}
		index[name(x)] = len(out)
		out = append(out, x)
	}
	return out
}
