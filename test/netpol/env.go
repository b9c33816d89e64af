package netpol

import (
	"context"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/test/lab"
)

// Env is an environment the cases run against. It has created the Model (namespaces
// with their labels, running pods with addresses and servers on every ServedPort, and a
// Service per model pod when it supports services) before the first case runs.
type Env interface {
	// Model is the cluster the environment was set up from.
	Model() *Model
	// Client reads and writes the cluster's objects: cases create, update and delete
	// NetworkPolicies and relabel namespaces and pods through it; the runner reads pod
	// addresses and nodes from it.
	Client() client.Client
	// Capabilities says what the environment can do; cases that need more are skipped.
	Capabilities() Capabilities
	// Retry is how long the runner keeps probing while a matrix disagrees with the
	// expectation: zero for an environment that is consistent the moment a write
	// returns, a timeout for one whose enforcement follows the API asynchronously.
	Retry() RetryPolicy
	// Probe runs every probe of one matrix and returns what it observed: rows are
	// spec.Froms, columns spec.Tos, named "ns/name". A probe that fails (timeout,
	// refused, reset) is a denied cell, with the reason as the cell's note; an error
	// means the environment could not probe at all.
	Probe(ctx context.Context, spec ProbeSpec) (*lab.Matrix, error)
	// CreatePod creates an extra pod: the API object and, when it is running, whatever
	// makes it real (an address on its node, servers on its ServedPorts; a hostNetwork
	// pod gets the node's address). It returns once the pod is probe-able and its status
	// (phase, podIPs) is in the API.
	CreatePod(ctx context.Context, spec PodSpec) error
	// DeletePod removes a pod CreatePod made, object and all. Deleting a pod that does
	// not exist is not an error.
	DeletePod(ctx context.Context, ref PodRef) error
}

// Capabilities are what an environment supports.
type Capabilities struct {
	// Families the pods have addresses of; cases run once per family.
	Families []lab.Family
	// SCTP: probes over SCTP work (the SCTP context of upstream needs it). Policies that
	// merely mention SCTP need no support and always run.
	SCTP bool
	// Services: probes can go to a model pod's Service ClusterIP (ProbeSpec.ViaService).
	Services bool
	// ExtraPods: CreatePod works for ordinary (running, pod-network) pods.
	ExtraPods bool
	// HostNetworkPods: CreatePod works for hostNetwork pods, and they can be probed.
	HostNetworkPods bool
	// CompletedPods: CreatePod can create pods in phase Succeeded whose status lists the
	// addresses of a running pod (StaleIPsOf).
	CompletedPods bool
}

// HasFamily reports whether the environment has addresses of the family.
func (c Capabilities) HasFamily(f lab.Family) bool { return slices.Contains(c.Families, f) }

// RetryPolicy is how the runner polls a matrix until it matches.
type RetryPolicy struct {
	// Timeout bounds the polling of one expectation; zero means a single probe.
	// Upstream polls each probe for 10 s.
	Timeout time.Duration
	// Interval is the pause between two probes of a matrix that disagreed.
	Interval time.Duration
}

// ProbeSpec is one matrix of probes.
type ProbeSpec struct {
	// Port and Protocol are the destination port and transport (TCP, UDP or SCTP).
	Port     int32
	Protocol corev1.Protocol
	// Family is the address family of the probes.
	Family lab.Family
	// ViaService sends each probe to the destination's Service (s-<ns>-<pod>) ClusterIP
	// instead of its pod IP, as upstream does. DNAT happens before the filter hooks, so a
	// correct enforcer sees the pod IP either way; only the loopback cells may differ
	// (hairpin traffic leaves the pod).
	ViaService bool
	// Froms and Tos are the rows and columns. Every one must exist and be running.
	Froms, Tos []PodRef
	// Expected, when set, is what the runner expects. An environment may use it to
	// re-probe only disagreeing cells (as upstream's prober does); it must not use it to
	// fill in results.
	Expected *lab.Matrix
}
