package controllers

import (
	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// CacheOptions are the informer cache options of the agent's manager
// (cmd/nftpolicy-agent). They live here, not in the command, so that the fan-out
// harness (test/bench) and the wire test watch exactly what the agent watches, with the
// same transforms.
//
// The wire format is not set here: controller-runtime's informers ask for protobuf for
// every kind of client-go's scheme (Pods, Namespaces, Nodes, NetworkPolicies) when the
// rest.Config leaves ContentType empty (kubeconfigs and the in-cluster configuration do),
// and JSON for the rest (the ClusterNetworkPolicy CRD, which has no protobuf form).
// Setting ContentType on the whole config would also ask it of the CRD.
func CacheOptions(log logr.Logger) cache.Options {
	return cache.Options{
		// ClusterNetworkPolicies are small and few: stripping managedFields is all
		// the trimming they need.
		DefaultTransform: cache.TransformStripManagedFields(),
		// The ClusterNetworkPolicy informer fails on every retry between the CRD's
		// removal and the watcher's next check: not an error worth a log line each.
		DefaultWatchErrorHandler: WatchErrorHandler(log.WithName("watch")),
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}:       {Transform: TrimPod},
			&corev1.Namespace{}: {Transform: TrimNamespace},
			&corev1.Node{}:      {Transform: TrimNode},
		},
	}
}
