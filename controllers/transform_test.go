package controllers

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftpolicy/nftpolicy/pkg/model"
)

// TestTrimPodKeepsWhatEnforcementReads: the cached pod's model is the model of the pod,
// for pods with and without named ports, sidecars and plain init containers; trimming
// twice changes nothing; the cached pod answers as a client.Object with the pod's
// identity; pods with equal labels and ports share them.
func TestTrimPodKeepsWhatEnforcementReads(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	pods := []*corev1.Pod{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "plain", UID: "u1", ResourceVersion: "7", Labels: map[string]string{"app": "a"},
			Annotations: map[string]string{"big": "annotation"}},
			Spec:   corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Image: "i", Env: []corev1.EnvVar{{Name: "A", Value: "B"}}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.1", PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}, {IP: "fd00::1"}}}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "ports"},
			Spec: corev1.PodSpec{NodeName: "n2",
				InitContainers: []corev1.Container{
					{Name: "setup", Ports: []corev1.ContainerPort{{Name: "ignored", ContainerPort: 1}}},
					{Name: "sidecar", RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9090}}},
				},
				Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{
					{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
					{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
					{ContainerPort: 9999},
				}}}},
			Status: corev1.PodStatus{Phase: corev1.PodPending}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "host"}, Spec: corev1.PodSpec{HostNetwork: true}},
	}
	for _, p := range pods {
		want := model.PodFromAPI(p)
		once, _ := TrimPod(p)
		twice, _ := TrimPod(once)
		for i, got := range []any{once, twice} {
			c, ok := got.(*CachedPod)
			if !ok {
				t.Fatalf("%s (trimmed %d times): %T, want *CachedPod", p.Name, i+1, got)
			}
			if m, _ := cachedModel(c); !reflect.DeepEqual(m, want) {
				t.Errorf("%s (trimmed %d times): model %+v, want %+v", p.Name, i+1, m, want)
			}
			if c.GetNamespace() != p.Namespace || c.GetName() != p.Name || c.GetUID() != p.UID ||
				c.GetResourceVersion() != p.ResourceVersion || !reflect.DeepEqual(c.GetLabels(), p.GetLabels()) {
				t.Errorf("%s: object metadata %s/%s %s %s %v", p.Name, c.GetNamespace(), c.GetName(), c.GetUID(), c.GetResourceVersion(), c.GetLabels())
			}
			if cp := c.DeepCopyObject().(*CachedPod); !reflect.DeepEqual(cp, c) {
				t.Errorf("%s: DeepCopyObject %+v, want %+v", p.Name, cp, c)
			}
		}
		if m, _ := cachedModel(p); !reflect.DeepEqual(m, want) {
			t.Errorf("%s: model of the full pod %+v, want %+v", p.Name, m, want)
		}
	}
	a1, _ := TrimPod(pods[1])
	a2, _ := TrimPod(pods[1].DeepCopy())
	if &a1.(*CachedPod).Pod.Ports[0] != &a2.(*CachedPod).Pod.Ports[0] {
		t.Error("equal port lists are not shared")
	}
	b1, _ := TrimPod(pods[0])
	b2, _ := TrimPod(pods[0].DeepCopy())
	if reflect.ValueOf(b1.(*CachedPod).Pod.Labels).UnsafePointer() != reflect.ValueOf(b2.(*CachedPod).Pod.Labels).UnsafePointer() {
		t.Error("equal label sets are not shared")
	}
	if tomb, _ := TrimPod("tombstone"); tomb != "tombstone" {
		t.Errorf("a non-Pod is changed: %v", tomb)
	}
}

// TestTrimNodeKeepsWhatTheAgentReads: the trimmed node keeps its name, labels,
// readiness and InternalIP/ExternalIP addresses and nothing else (images, annotations,
// other conditions, hostnames, heartbeat times); its model is the node's; heartbeats
// trim to the same node; trimming twice changes nothing; a node without a Ready
// condition is not Ready.
func TestTrimNodeKeepsWhatTheAgentReads(t *testing.T) {
	now := metav1.Now()
	full := func(heartbeat metav1.Time) *corev1.Node {
		return &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: "node-a", UID: "u", ResourceVersion: "9", Labels: map[string]string{"zone": "z"}, Annotations: map[string]string{"big": "x"}},
			Spec:       corev1.NodeSpec{PodCIDR: "10.244.1.0/24"},
			Status: corev1.NodeStatus{
				Conditions: []corev1.NodeCondition{
					{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, LastHeartbeatTime: heartbeat},
					{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: heartbeat, Reason: "KubeletReady", Message: "kubelet is posting ready status"},
				},
				Images: []corev1.ContainerImage{{Names: []string{"registry/image:tag"}, SizeBytes: 1 << 20}},
				Addresses: []corev1.NodeAddress{
					{Type: corev1.NodeHostName, Address: "node-a"},
					{Type: corev1.NodeInternalIP, Address: "192.168.0.1"},
					{Type: corev1.NodeInternalDNS, Address: "node-a.internal"},
					{Type: corev1.NodeExternalIP, Address: "203.0.113.1"},
					{Type: corev1.NodeInternalIP, Address: "fd00::1"},
				},
			},
		}
	}
	once, _ := TrimNode(full(now))
	twice, _ := TrimNode(once)
	want := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a", UID: "u", ResourceVersion: "9", Labels: map[string]string{"zone": "z"}},
		Status: corev1.NodeStatus{
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}},
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: "192.168.0.1"},
				{Type: corev1.NodeExternalIP, Address: "203.0.113.1"},
				{Type: corev1.NodeInternalIP, Address: "fd00::1"},
			},
		}}
	for i, got := range []any{once, twice} {
		if !reflect.DeepEqual(got, want) {
			t.Errorf("trimmed %d times: %+v, want %+v", i+1, got, want)
		}
		if !nodeReady(got.(*corev1.Node)) {
			t.Errorf("trimmed %d times: not Ready", i+1)
		}
		if m, w := model.NodeFromAPI(got.(*corev1.Node)), model.NodeFromAPI(full(now)); !reflect.DeepEqual(m, w) {
			t.Errorf("trimmed %d times: model %+v, want %+v", i+1, m, w)
		}
	}
	if later, _ := TrimNode(full(metav1.NewTime(now.Add(10e9)))); !reflect.DeepEqual(later, once) {
		t.Errorf("a heartbeat changes the trimmed node: %+v, was %+v", later, once)
	}
	bare, _ := TrimNode(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "new"}})
	if nodeReady(bare.(*corev1.Node)) {
		t.Error("a node without a Ready condition is Ready")
	}
	if tomb, _ := TrimNode("tombstone"); tomb != "tombstone" {
		t.Errorf("a non-Node is changed: %v", tomb)
	}
}
