package bench

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// Scale is an amount of synthetic API objects: pods and NetworkPolicies (plus one
// namespace per 50 pods).
type Scale struct {
	Pods     int `json:"pods"`
	Policies int `json:"policies"`
}

func (s Scale) String() string { return count(s.Pods) + "/" + count(s.Policies) }

// count prints 1000 as 1k, 50000 as 50k, 1500 as 1.5k.
func count(n int) string {
	switch {
	case n >= 1000 && n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	case n >= 1000 && n%100 == 0:
		return fmt.Sprintf("%.1fk", float64(n)/1000)
	}
	return fmt.Sprint(n)
}

// The synthetic cluster has the shape of pkg/compiler's benchmarks: namespaces of 50
// pods labelled app-(i%20) and tier-(i%3), each namespace labelled team=t(ns%10) and
// holding 5 policies. Policy i selects app-(i%20) and allows ingress from its
// namespace's tier-(i%3) on port 80+i%10 and the named port "http", and from every
// namespace of team t(i%10) on any port; egress to 10.0.0.0/8 except one /16.
//
// Pods come in blocks of 100: block 0 runs on node1, block 1 on node2, block b on
// the virtual node vnode-b (no Node object, no namespace: only the agent's view of
// the cluster). So node1 and node2 hold 100 synthetic pods at every scale, as a node
// of a real cluster does (kubelet's default limit is 110), and the rest of the
// cluster grows around them. Synthetic pods exist only in the API; their IPs,
// 10.64.0.0/16, are never routed anywhere.
const (
	synPodsPerNS     = 50
	synPoliciesPerNS = 5
	synPodsPerNode   = 100
	synNSPrefix      = "syn-"
)

var synPodBase = netip.MustParseAddr("10.64.0.0")

// extraPodBase numbers the pods the incremental and churn measurements add.
var extraPodBase = netip.MustParseAddr("10.66.0.0")

func synNamespace(i int) string { return fmt.Sprintf("%s%04d", synNSPrefix, i) }

func synNode(i int) string {
	switch b := i / synPodsPerNode; b {
	case 0:
		return "node1"
	case 1:
		return "node2"
	default:
		return fmt.Sprintf("vnode-%d", b)
	}
}

func addrPlus(base netip.Addr, n int) netip.Addr {
	b := base.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func synNamespaceCount(s Scale) int {
	return max((s.Pods+synPodsPerNS-1)/synPodsPerNS, (s.Policies+synPoliciesPerNS-1)/synPoliciesPerNS, 1)
}

func synNamespaceObject(i int) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: synNamespace(i), Labels: map[string]string{
		"team": fmt.Sprintf("t%d", i%10),
	}}}
}

func synPodLabels(i int) map[string]string {
	return map[string]string{"app": fmt.Sprintf("app-%d", i%20), "tier": fmt.Sprintf("tier-%d", i%3)}
}

// podObject returns a Pod object and the status kubelet would report.
func podObject(ns, name, node string, labels map[string]string, ip netip.Addr) (*corev1.Pod, corev1.PodStatus) {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName: node,
			Containers: []corev1.Container{{Name: "main", Image: "registry.k8s.io/pause:3.10",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}}}},
		},
	}
	now := metav1.Now()
	st := corev1.PodStatus{
		Phase: corev1.PodRunning, PodIP: ip.String(), PodIPs: []corev1.PodIP{{IP: ip.String()}}, StartTime: &now,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}},
	}
	return p, st
}

func synPolicy(i int) *networkingv1.NetworkPolicy {
	tcp := corev1.ProtocolTCP
	port, named := intstr.FromInt32(int32(80+i%10)), intstr.FromString("http")
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: synNamespace(i / synPoliciesPerNS), Name: fmt.Sprintf("pol-%d", i)},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", i%20)}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{
				{
					From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": fmt.Sprintf("tier-%d", i%3)}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}, {Protocol: &tcp, Port: &named}},
				},
				{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("t%d", i%10)}}}}},
			},
			Egress: []networkingv1.NetworkPolicyEgressRule{{
				To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8", Except: []string{fmt.Sprintf("10.%d.0.0/16", i%200)}}}},
			}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
		},
	}
}

// createPod creates the Pod object and sets its status (two writes, as the API
// server ignores the status of a create).
func createPod(ctx context.Context, cs kubernetes.Interface, p *corev1.Pod, st corev1.PodStatus) error {
	created, err := cs.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	created.Status = st
	if _, err := cs.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("set status of pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return nil
}

func deletePod(ctx context.Context, cs kubernetes.Interface, ns, name string) error {
	zero := int64(0)
	err := cs.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete pod %s/%s: %w", ns, name, err)
	}
	return nil
}

// loadScale creates the synthetic objects that scale to has and from lacks, with
// parallel writers, and reports how long it took.
func loadScale(ctx context.Context, cs kubernetes.Interface, from, to Scale, workers int) (time.Duration, error) {
	start := time.Now()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		firstErr error
		done     atomic.Int64
	)
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
			cancel()
		}
		mu.Unlock()
	}
	run := func(jobs int, fn func(i int) error) {
		next := atomic.Int64{}
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for {
					i := int(next.Add(1) - 1)
					if i >= jobs || ctx.Err() != nil {
						return
					}
					if err := fn(i); err != nil && !apierrors.IsAlreadyExists(err) {
						fail(err)
						return
					}
					done.Add(1)
				}
			})
		}
		wg.Wait()
	}
	nsFrom, nsTo := 0, synNamespaceCount(to)
	if from.Pods > 0 || from.Policies > 0 {
		nsFrom = synNamespaceCount(from)
	}
	run(nsTo-nsFrom, func(i int) error {
		_, err := cs.CoreV1().Namespaces().Create(ctx, synNamespaceObject(nsFrom+i), metav1.CreateOptions{})
		return err
	})
	if firstErr != nil {
		return time.Since(start), firstErr
	}
	run(max(0, to.Pods-from.Pods)+max(0, to.Policies-from.Policies), func(j int) error {
		// Interleave policies with pods so both grow together.
		npods := max(0, to.Pods-from.Pods)
		if j < npods {
			i := from.Pods + j
			p, st := podObject(synNamespace(i/synPodsPerNS), fmt.Sprintf("p-%d", i), synNode(i), synPodLabels(i), addrPlus(synPodBase, i))
			err := createPod(ctx, cs, p, st)
			if apierrors.IsAlreadyExists(err) {
				return nil
			}
			return err
		}
		i := from.Policies + j - npods
		_, err := cs.NetworkingV1().NetworkPolicies(synNamespace(i/synPoliciesPerNS)).Create(ctx, synPolicy(i), metav1.CreateOptions{})
		return err
	})
	return time.Since(start), firstErr
}
