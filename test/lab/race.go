package lab

import (
	"context"
	"errors"
	"fmt"
	"maps"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// StagedPod is a pod whose network is up — namespace, veth, addresses and servers, as a
// CNI leaves it — while its Pod object does not exist yet or does not carry the pod's
// IP. CreatePod does all steps at once; a StagedPod lets a test take them one by one
// (object created, bound to a node, IP reported, phase changed) and look at what passes
// in between, which is where pod lifecycle races live.
//
// The pod belongs to the cluster from StagePod on: DeletePod and Close remove it.
type StagedPod struct {
	*ClusterPod
	spec PodSpec
}

// StagePod wires the pod's namespace on spec.Node and starts its servers like CreatePod,
// but creates no Pod object.
func (c *Cluster) StagePod(ctx context.Context, spec PodSpec) (_ *StagedPod, err error) {
	c.podOps.Lock()
	defer c.podOps.Unlock()
	defer func() {
		if err != nil {
			err = fmt.Errorf("stage pod %s/%s: %w", spec.Namespace, spec.Name, err)
		}
	}()
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	if spec.Namespace == "" || spec.Name == "" || spec.Node == "" {
		return nil, errors.New("namespace, name and node are required")
	}
	if spec.HostNetwork {
		return nil, errors.New("a host-network pod has no network of its own to stage")
	}
	node := c.Node(spec.Node)
	if node == nil {
		return nil, fmt.Errorf("no node %q", spec.Node)
	}
	if c.Pod(spec.Namespace, spec.Name) != nil {
		return nil, errors.New("already exists")
	}
	// Pending until a status says otherwise: the API server resets the status of a
	// created Pod to that.
	p := &ClusterPod{
		Namespace: spec.Namespace, Name: spec.Name, Node: node, c: c,
		ports: servedPorts(spec), labels: maps.Clone(spec.Labels), phase: corev1.PodPending,
	}
	if err := c.assignAddrs(p, spec); err != nil {
		return nil, err
	}
	lp, err := c.addNetwork(node, p)
	if err != nil {
		return nil, err
	}
	p.labPod, p.NS = lp, lp.NS
	if err := c.servePod(p); err != nil {
		return nil, errors.Join(err, p.closeServers(), c.lab.RemovePod(lp))
	}
	c.mu.Lock()
	c.pods = append(c.pods, p)
	c.mu.Unlock()
	c.logf("pod %s staged on %s: %s, no Pod object yet", p.Key(), node.Name, joinList(p.IPs()))
	return &StagedPod{ClusterPod: p, spec: spec}, c.saveState()
}

// CreateObject creates the Pod object without a status (the API server makes it
// Pending, without IPs). With scheduled false, spec.nodeName is left empty, as before
// the scheduler binds the pod (see Bind).
func (s *StagedPod) CreateObject(ctx context.Context, scheduled bool) error {
	obj := s.object(s.spec)
	if !scheduled {
		obj.Spec.NodeName = ""
	}
	if err := s.c.client.Create(ctx, obj); err != nil {
		return fmt.Errorf("create Pod object %s: %w", s.Key(), err)
	}
	return nil
}

// Bind binds the unscheduled Pod object to the staged pod's node through the binding
// subresource, as the scheduler does; spec.nodeName cannot be changed otherwise.
func (s *StagedPod) Bind(ctx context.Context) error {
	obj := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: s.Namespace, Name: s.Name}}
	b := &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Namespace: s.Namespace, Name: s.Name},
		Target:     corev1.ObjectReference{Kind: "Node", Name: s.Node.Name},
	}
	if err := s.c.client.SubResource("binding").Create(ctx, obj, b); err != nil {
		return fmt.Errorf("bind pod %s to %s: %w", s.Key(), s.Node.Name, err)
	}
	return nil
}

// SetStatus writes the status kubelet would report in phase, with the pod's IPs when
// withIPs (a Pending pod before its sandbox has an address has none).
func (s *StagedPod) SetStatus(ctx context.Context, phase corev1.PodPhase, withIPs bool) error {
	c := s.c
	c.podOps.Lock()
	defer c.podOps.Unlock()
	err := c.writeStatus(ctx, s.ClusterPod, phase, func(st, _ *corev1.PodStatus) {
		if !withIPs {
			st.PodIP, st.PodIPs = "", nil
		}
	})
	if err != nil {
		return fmt.Errorf("set status of pod %s: %w", s.Key(), err)
	}
	return nil
}
