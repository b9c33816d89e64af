package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/discovery"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

// CNPCRDFile is the ClusterNetworkPolicy CRD of a channel ("standard" or
// "experimental") as the Helm chart ships it, relative to the repository root.
func CNPCRDFile(channel string) string {
	return filepath.Join("config", "helm", "nftpolicy", "files", "crds", channel, "policy.networking.k8s.io_clusternetworkpolicies.yaml")
}

// InstallCNPCRD creates the ClusterNetworkPolicy CRD of the channel from the chart's
// copy and waits until the API server serves the kind.
func (c *Cluster) InstallCNPCRD(ctx context.Context, channel string) error {
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	data, err := os.ReadFile(filepath.Join(root, CNPCRDFile(channel)))
	if err != nil {
		return fmt.Errorf("ClusterNetworkPolicy CRD: %w", err)
	}
	obj := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(data, &obj.Object); err != nil {
		return fmt.Errorf("ClusterNetworkPolicy CRD %s: %w", channel, err)
	}
	if err := c.client.Create(ctx, obj); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create ClusterNetworkPolicy CRD: %w", err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(c.cfg)
	if err != nil {
		return err
	}
	// Served once discovery lists it (the CRD's Established condition comes first).
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := dc.ServerResourcesForGroupVersion("policy.networking.k8s.io/v1beta1")
		if err == nil {
			for _, r := range res.APIResources {
				if r.Name == "clusternetworkpolicies" {
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			if err == nil {
				return fmt.Errorf("ClusterNetworkPolicy CRD not served after 30s")
			}
			return fmt.Errorf("ClusterNetworkPolicy CRD not served after 30s: %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Apply creates obj, or updates it to obj's spec and labels when it exists.
func (c *Cluster) Apply(ctx context.Context, obj client.Object) error {
	cur := obj.DeepCopyObject().(client.Object)
	err := c.client.Get(ctx, client.ObjectKeyFromObject(obj), cur)
	switch {
	case apierrors.IsNotFound(err):
		obj.SetResourceVersion("")
		return c.client.Create(ctx, obj)
	case err != nil:
		return err
	}
	obj.SetResourceVersion(cur.GetResourceVersion())
	return c.client.Update(ctx, obj)
}
