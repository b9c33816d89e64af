package bench

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// The fan-out cluster: synthetic namespaces and policies as objects.go makes them (50
// pods and 5 policies per namespace), but pods shaped like a Deployment's pods on a
// real node — owner reference, a container with resources, probe, env and the service
// account volume, five conditions and a container status — because what a watch costs
// is proportional to the object's size, and objects.go's pods (made for the agent's
// compile, which reads a few fields) are a third of a real pod. Pods are spread over
// fanNodes(i) nodes, each emulated agent being one of them.

var fanPodBase = netip.MustParseAddr("10.80.0.0")

// fanChurnBase numbers the pods the churn creates and deletes.
var fanChurnBase = netip.MustParseAddr("10.90.0.0")

func fanNodeName(i int) string { return fmt.Sprintf("fnode-%d", i) }

// fanPod returns pod i of the cluster, as created (no status).
func fanPod(name, ns, node string, i int) *corev1.Pod {
	lbl := synPodLabels(i)
	lbl["pod-template-hash"] = "7d9c6b5f4"
	rs := fmt.Sprintf("%s-7d9c6b5f4", lbl["app"])
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: ns, Labels: lbl,
			GenerateName: rs + "-",
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rs,
				UID: "6a1f0c1e-3b7d-4c55-9f1e-2a9d3c1b7e40", Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}},
		},
		Spec: corev1.PodSpec{
			NodeName: node,
			Containers: []corev1.Container{{
				Name: "main", Image: "registry.example.com/team/app:v1.42.7", ImagePullPolicy: corev1.PullIfNotPresent,
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
					{Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolTCP}},
				Env: []corev1.EnvVar{{Name: "LOG_LEVEL", Value: "info"}, {Name: "GOMAXPROCS", Value: "2"},
					{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.name"}}}},
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
					Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
				},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http"), Scheme: corev1.URISchemeHTTP}},
					PeriodSeconds: 10, TimeoutSeconds: 1, SuccessThreshold: 1, FailureThreshold: 3},
				VolumeMounts:             []corev1.VolumeMount{{Name: "kube-api-access-x7k2p", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true}},
				TerminationMessagePath:   "/dev/termination-log",
				TerminationMessagePolicy: corev1.TerminationMessageReadFile,
			}},
			Volumes: []corev1.Volume{{Name: "kube-api-access-x7k2p", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
				DefaultMode: ptr.To(int32(420)),
				Sources: []corev1.VolumeProjection{
					{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: ptr.To(int64(3607))}},
					{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"},
						Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
					{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{Path: "namespace",
						FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}}}}},
				},
			}}}},
			RestartPolicy: corev1.RestartPolicyAlways, DNSPolicy: corev1.DNSClusterFirst,
			TerminationGracePeriodSeconds: ptr.To(int64(30)), ServiceAccountName: "default",
			SchedulerName: corev1.DefaultSchedulerName, EnableServiceLinks: ptr.To(true),
			Tolerations: []corev1.Toleration{
				{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To(int64(300))},
				{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To(int64(300))},
			},
		},
	}
}

// fanStatus is what kubelet reports: Running with an IP, ready or not yet.
func fanStatus(ip netip.Addr, hostIP string, ready bool) corev1.PodStatus {
	now := metav1.Now()
	cond := func(t corev1.PodConditionType, ok bool) corev1.PodCondition {
		s := corev1.ConditionTrue
		if !ok {
			s = corev1.ConditionFalse
		}
		return corev1.PodCondition{Type: t, Status: s, LastTransitionTime: now}
	}
	return corev1.PodStatus{
		Phase: corev1.PodRunning, HostIP: hostIP, HostIPs: []corev1.HostIP{{IP: hostIP}},
		PodIP: ip.String(), PodIPs: []corev1.PodIP{{IP: ip.String()}}, StartTime: &now, QOSClass: corev1.PodQOSBurstable,
		Conditions: []corev1.PodCondition{cond("PodReadyToStartContainers", true), cond(corev1.PodInitialized, true),
			cond(corev1.PodReady, ready), cond(corev1.ContainersReady, ready), cond(corev1.PodScheduled, true)},
		ContainerStatuses: []corev1.ContainerStatus{{
			Name: "main", Ready: ready, Started: ptr.To(true), RestartCount: 0,
			Image: "registry.example.com/team/app:v1.42.7", ImageID: "registry.example.com/team/app@sha256:4b1e5c0d9a7f3e2b8c6d1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a291807",
			ContainerID: "containerd://9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0",
			State:       corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		}},
	}
}

// fanHostIP is node i's address in the pods' status.
func fanHostIP(node int) string { return addrPlus(netip.MustParseAddr("172.30.0.10"), node).String() }

// loadFanout brings the cluster from `from` to `to` pods (namespaces and policies
// grow with them, one policy per 10 pods) with parallel writers.
func loadFanout(ctx context.Context, cs kubernetes.Interface, from, to, nodes, workers int) error {
	s := Scale{Pods: to, Policies: to / 10}
	var nsFrom int
	if from > 0 {
		nsFrom = synNamespaceCount(Scale{Pods: from, Policies: from / 10})
	}
	jobs := []func(context.Context) error{}
	for i := nsFrom; i < synNamespaceCount(s); i++ {
		jobs = append(jobs, func(ctx context.Context) error {
			_, err := cs.CoreV1().Namespaces().Create(ctx, synNamespaceObject(i), metav1.CreateOptions{})
			return err
		})
	}
	if err := runJobs(ctx, jobs, workers); err != nil {
		return err
	}
	jobs = jobs[:0]
	for i := from; i < to; i++ {
		jobs = append(jobs, func(ctx context.Context) error {
			node := i % nodes
			p := fanPod(fmt.Sprintf("p-%d", i), synNamespace(i/synPodsPerNS), fanNodeName(node), i)
			return createPod(ctx, cs, p, fanStatus(addrPlus(fanPodBase, i), fanHostIP(node), true))
		})
	}
	for i := from / 10; i < to/10; i++ {
		jobs = append(jobs, func(ctx context.Context) error {
			_, err := cs.NetworkingV1().NetworkPolicies(synNamespace(i/synPoliciesPerNS)).Create(ctx, synPolicy(i), metav1.CreateOptions{})
			return err
		})
	}
	return runJobs(ctx, jobs, workers)
}

// createNodes creates the Node objects of the emulated agents' nodes.
func createFanNodes(ctx context.Context, cs kubernetes.Interface, n, workers int) error {
	var jobs []func(context.Context) error
	for i := range n {
		jobs = append(jobs, func(ctx context.Context) error {
			_, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{
				ObjectMeta: metav1.ObjectMeta{Name: fanNodeName(i), Labels: map[string]string{"kubernetes.io/hostname": fanNodeName(i), "kubernetes.io/os": "linux"}},
				Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: fanHostIP(i)}, {Type: corev1.NodeHostName, Address: fanNodeName(i)}},
					Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}},
			}, metav1.CreateOptions{})
			return err
		})
	}
	return runJobs(ctx, jobs, workers)
}

// runJobs runs jobs on `workers` goroutines; an object that already exists is not an
// error (a load resumed after a failure).
func runJobs(ctx context.Context, jobs []func(context.Context) error, workers int) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next     atomic.Int64
		once     sync.Once
		firstErr error
		wg       sync.WaitGroup
	)
	for range max(workers, 1) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(jobs) || ctx.Err() != nil {
					return
				}
				if err := jobs[i](ctx); err != nil && !apierrors.IsAlreadyExists(err) {
					once.Do(func() { firstErr = err; cancel() })
					return
				}
			}
		})
	}
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return firstErr
}

// churner writes pod lifecycles: create (bound to a node, no status yet), Running with
// an IP but not ready, ready, deleted — four writes, four watch events for every
// watcher of all pods, of which the agent's compile cares about two (the IP appearing
// and the pod going).
type churner struct {
	cs    kubernetes.Interface
	nodes int
	nsN   int
	seq   int
}

// run issues `writes` writes, paced at rate per second, and returns how many succeeded
// and how many watch events of all pods they make: one per create and status write,
// two per delete (a pod bound to a node is first updated with its deletionTimestamp,
// then deleted, even with a grace period of 0).
func (c *churner) run(ctx context.Context, writes int, rate float64) (done, events int, err error) {
	start := time.Now()
	interval := time.Duration(float64(time.Second) / rate)
	var cur *corev1.Pod
	var ip netip.Addr
	var node int
	for k := range writes {
		// Pacing, not waiting for a condition: the write rate is the experiment's input.
		if d := time.Until(start.Add(time.Duration(k) * interval)); d > 0 {
			select {
			case <-ctx.Done():
				return done, events, ctx.Err()
			case <-time.After(d):
			}
		}
		ev := 1
		switch k % 4 {
		case 0:
			i := c.seq
			c.seq++
			node = i % c.nodes
			ip = addrPlus(fanChurnBase, i)
			p := fanPod(fmt.Sprintf("churn-%d", i), synNamespace(i%c.nsN), fanNodeName(node), i)
			cur, err = c.cs.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
		case 1, 2:
			if cur == nil {
				continue
			}
			cur.Status = fanStatus(ip, fanHostIP(node), k%4 == 2)
			cur, err = c.cs.CoreV1().Pods(cur.Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		case 3:
			if cur == nil {
				continue
			}
			err = deletePod(ctx, c.cs, cur.Namespace, cur.Name)
			cur, ev = nil, 2
		}
		if err != nil {
			return done, events, fmt.Errorf("churn write %d: %w", k, err)
		}
		done++
		events += ev
	}
	return done, events, nil
}
