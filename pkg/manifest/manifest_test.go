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
	// The Deployment's pod template is kept for reach.
	if len(objs.Workloads) != 1 || objs.Workloads[0].Kind != "Deployment" || objs.Workloads[0].Name != "d" || objs.Workloads[0].Namespace != "default" {
		t.Fatalf("workloads: %+v", objs.Workloads)
	}
	snap := objs.Snapshot("n1")
	if snap.NodeName != "n1" || len(snap.Pods) != 1 || snap.Pods[0].IPs[0].String() != "10.0.0.1" {
		t.Fatalf("snapshot: %+v", snap)
	}
}

// ClusterNetworkPolicies of either served version and Nodes (as `kubectl get nodes -o
// yaml` prints them) reach the snapshot.
func TestReadClusterPoliciesAndNodes(t *testing.T) {
	in := `apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: deny-all}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: baseline}
spec: {tier: Baseline, priority: 5, subject: {namespaces: {}}}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {name: n1, labels: {zone: a}}
  status:
    addresses: [{type: InternalIP, address: 192.168.0.1}, {type: Hostname, address: n1}]
`
	objs, err := Load([]string{"-"}, strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	snap := objs.Snapshot("n1")
	if len(snap.ClusterPolicies) != 2 || snap.ClusterPolicies[0].Name != "deny-all" || snap.ClusterPolicies[0].Namespace != "" ||
		snap.ClusterPolicies[0].Spec.Priority != 10 || snap.ClusterPolicies[1].Spec.Tier != "Baseline" {
		t.Fatalf("cluster policies: %+v", snap.ClusterPolicies)
	}
	if len(snap.Nodes) != 1 || snap.Nodes[0].Name != "n1" || snap.Nodes[0].Labels["zone"] != "a" ||
		len(snap.Nodes[0].Addrs) != 1 || snap.Nodes[0].Addrs[0].String() != "192.168.0.1" {
		t.Fatalf("nodes: %+v", snap.Nodes)
	}
	if len(objs.Skipped) != 0 {
		t.Fatalf("skipped: %v", objs.Skipped)
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

// Apply replaces objects by name, adds new ones, keeps the rest, and a pod manifest
// keeps the running pod's node and addresses.
func TestApply(t *testing.T) {
	base, err := Load([]string{"-"}, strings.NewReader(`
{apiVersion: v1, kind: Namespace, metadata: {name: x, labels: {team: a}}}
---
{apiVersion: v1, kind: Pod, metadata: {namespace: x, name: p, labels: {v: "1"}}, spec: {nodeName: n1}, status: {phase: Running, podIPs: [{ip: 10.0.0.1}]}}
---
{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {namespace: x, name: keep}, spec: {podSelector: {}}}
---
{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {namespace: x, name: change}, spec: {podSelector: {}}}
`))
	if err != nil {
		t.Fatal(err)
	}
	change, err := Load([]string{"-"}, strings.NewReader(`
{apiVersion: v1, kind: Namespace, metadata: {name: x, labels: {team: b}}}
---
{apiVersion: v1, kind: Pod, metadata: {namespace: x, name: p, labels: {v: "2"}}, spec: {containers: [{name: c, image: i}]}}
---
{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {namespace: x, name: change}, spec: {podSelector: {matchLabels: {a: b}}}}
---
{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {namespace: x, name: new}, spec: {podSelector: {}}}
`))
	if err != nil {
		t.Fatal(err)
	}
	got := base.Apply(change)
	if len(got.Namespaces) != 1 || got.Namespaces[0].Labels["team"] != "b" {
		t.Errorf("namespaces %+v", got.Namespaces)
	}
	var names []string
	for _, p := range got.Policies {
		names = append(names, p.Name)
	}
	if strings.Join(names, ",") != "keep,change,new" || got.Policies[1].Spec.PodSelector.MatchLabels["a"] != "b" {
		t.Errorf("policies %v", names)
	}
	if len(got.Pods) != 1 || got.Pods[0].Labels["v"] != "2" || got.Pods[0].Spec.NodeName != "n1" || got.Pods[0].Status.PodIPs[0].IP != "10.0.0.1" {
		t.Errorf("pod %+v", got.Pods[0])
	}
	if base.Pods[0].Labels["v"] != "1" || len(change.Pods[0].Status.PodIPs) != 0 {
		t.Errorf("Apply modified its inputs")
	}
}
