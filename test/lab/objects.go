package lab

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/pkg/manifest"
)

// Objects lists what the agents read from the API server — Namespaces, Pods,
// NetworkPolicies, Nodes and, once their CRD is served, ClusterNetworkPolicies — as
// the CLI holds them (`nftpolicy explain` and `reach` over the cluster's state).
func (c *Cluster) Objects(ctx context.Context) (*manifest.Objects, error) {
	var nss corev1.NamespaceList
	var pods corev1.PodList
	var nps networkingv1.NetworkPolicyList
	var nodes corev1.NodeList
	for what, l := range map[string]client.ObjectList{"namespaces": &nss, "pods": &pods, "networkpolicies": &nps, "nodes": &nodes} {
		if err := c.Client().List(ctx, l); err != nil {
			return nil, fmt.Errorf("listing %s: %w", what, err)
		}
	}
	objs := &manifest.Objects{}
	for i := range nss.Items {
		objs.Namespaces = append(objs.Namespaces, &nss.Items[i])
	}
	for i := range pods.Items {
		objs.Pods = append(objs.Pods, &pods.Items[i])
	}
	for i := range nps.Items {
		objs.Policies = append(objs.Policies, &nps.Items[i])
	}
	for i := range nodes.Items {
		objs.Nodes = append(objs.Nodes, &nodes.Items[i])
	}
	// Before the CRD is installed listing fails (no such kind): no ClusterNetworkPolicies.
	var cnps cnp.ClusterNetworkPolicyList
	if err := c.Client().List(ctx, &cnps); err == nil {
		for i := range cnps.Items {
			objs.ClusterPolicies = append(objs.ClusterPolicies, &cnps.Items[i])
		}
	}
	return objs, nil
}
