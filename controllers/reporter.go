package controllers

// Problems that no node's compile reports on its own: those of policies that no node
// compiles, and those of ClusterNetworkPolicies, which every node's compile gives alike.
//
// A policy's rules are compiled only on the nodes where it selects a pod, so a policy
// that selects none (typically: its namespace has no pods) is compiled nowhere and its
// rules' problems would reach no one. Every agent therefore validates every policy when
// it changes (compiler.Validate, kept in Syncer.validated), and one agent reports the
// problems of the policies that no node compiles: the agent on the node that sorts first
// by name among the Ready nodes, the reporter. Every agent reads the same Nodes, so
// they agree on the reporter without talking to each other.
//
// Who reports what, in the steady state:
//   - Problems of parsing a policy (its podSelector, policyTypes, SCTP ports on a kernel
//     without SCTP): every agent, whether or not it compiles the policy, as before. The
//     SCTP one is a fact about each node's kernel.
//   - Problems of a policy's rules: each agent on a node where the policy selects a pod
//     that is eligible and owns an address (the nodes that compile it), as before. When
//     no Ready node is such a node, the reporter reports them as well, once; it leaves
//     out whatever its own compile reports (the parse problems), so no agent reports a
//     problem twice.
//
// ClusterNetworkPolicies select pods of any namespace and have no namespace of their
// own; their problems depend on nothing but the object (compiler.ValidateCluster). Every
// agent validates each one when it changes (Syncer.clusterValidated), every agent's
// compile gives the same problems again, and only the reporter reports them, once for
// the cluster, as Warning Events on the ClusterNetworkPolicy (in namespace "default",
// where Events about cluster-scoped objects go). What a compile finds besides — two
// policies of one tier and priority selecting a common pod (compiler.ErrSamePriority),
// SCTP on a node whose kernel has none — is reported by each node that finds it, like a
// NetworkPolicy's compile problems.
//
// Each report is one Warning Event per distinct problem while the problem lasts
// (Syncer.report); the same problem after the set of reporting nodes changed is
// reported again by the new node. When the reporter goes NotReady or its Node is
// deleted, the Node event makes every agent sync; the next Ready node by name becomes
// the reporter, reports the problems of the uncompiled policies (which it had not
// reported) and every later one. A policy that gains a pod on a Ready node is reported
// by that node from then on, and the reporter stops covering it.
//
// Counting only pods on Ready nodes loses nothing when a node dies with its agent; a
// NotReady node whose agent still runs goes on reporting what it compiles, so such a
// problem may be reported by it and by the reporter until the node is Ready again. The
// rule assumes an agent on every Ready node (the chart's DaemonSet tolerates every
// taint): when the first Ready node runs no agent, nobody reports uncompiled policies.

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// compilerOptions are the options of the engine and of Validate alike, so that a
// policy validated here is reported with the text its compile would give.
func (s *Syncer) compilerOptions() compiler.Options {
	return compiler.Options{Table: s.Table, Revocation: s.Flows != nil && !s.Audit, SCTPUnsupported: s.SCTPUnsupported,
		LogDenied: s.LogDenied, Audit: s.Audit}
}

// setPolicy hands a new or changed policy to the engine and validates it. Until the
// first ruleset is in the kernel the validation waits (validatePending): the first sync
// sets every policy of the cluster, and validating 10k of them would delay enforcement
// by a tenth of a second for problem reports that can come right after.
func (s *Syncer) setPolicy(np *networkingv1.NetworkPolicy) {
	s.engine.SetPolicy(np)
	key := types.NamespacedName{Namespace: np.Namespace, Name: np.Name}
	if !s.ready.Load() {
		if s.unvalidated == nil {
			s.unvalidated = map[types.NamespacedName]bool{}
		}
		s.unvalidated[key] = true
		return
	}
	s.validate(key, np)
}

// validatePending validates the policies setPolicy left for after the first ruleset,
// and reports whether any has a problem.
func (s *Syncer) validatePending() bool {
	for key := range s.unvalidated {
		if np := s.engine.Policy(key.Namespace, key.Name); np != nil {
			s.validate(key, np)
		}
	}
	s.unvalidated = nil
	return len(s.validated) > 0
}

// validate records the problems compiler.Validate finds in the policy.
func (s *Syncer) validate(key types.NamespacedName, np *networkingv1.NetworkPolicy) {
	problems := compiler.Validate(np, s.compilerOptions())
	if len(problems) == 0 {
		delete(s.validated, key)
		return
	}
	if s.validated == nil {
		s.validated = map[types.NamespacedName][]compiler.Problem{}
	}
	s.validated[key] = problems
}

// deletePolicy removes a policy from the engine and its problems with it.
func (s *Syncer) deletePolicy(namespace, name string) {
	s.engine.DeletePolicy(namespace, name)
	delete(s.validated, types.NamespacedName{Namespace: namespace, Name: name})
	delete(s.unvalidated, types.NamespacedName{Namespace: namespace, Name: name})
}

// nodeReady reports whether the node's Ready condition is True.
func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// readyNodes returns the Ready nodes of the cache and the first of them by name (the
// reporter; "" when no node is Ready).
func (s *Syncer) readyNodes(ctx context.Context) (map[string]bool, string, error) {
	ready := map[string]bool{}
	first := ""
	err := s.each(ctx, &corev1.Node{}, &corev1.NodeList{}, func(o client.Object) {
		if n := o.(*corev1.Node); nodeReady(n) {
			ready[n.Name] = true
			if first == "" || n.Name < first {
				first = n.Name
			}
		}
	})
	return ready, first, err
}

// reporterProblems returns, when this agent is the reporter, what it reports for the
// whole cluster: the problems of the policies that select no pod on a Ready node, less
// those in reported (what this node's own compile reports), and the problems of the
// ClusterNetworkPolicies; nil on the other agents.
func (s *Syncer) reporterProblems(ctx context.Context, reported []compiler.Problem) (uncompiled, cluster []compiler.Problem, _ error) {
	if s.engine == nil || (len(s.validated) == 0 && len(s.clusterValidated) == 0) {
		return nil, nil, nil
	}
	ready, first, err := s.readyNodes(ctx)
	if err != nil {
		return nil, nil, err
	}
	if first != s.NodeName {
		return nil, nil, nil
	}
	for _, problems := range s.clusterValidated {
		cluster = append(cluster, problems...)
	}
	known := make(map[string]bool, len(reported))
	for _, p := range reported {
		known[p.Error()] = true
	}
	for key, problems := range s.validated {
		compiled, err := s.compiledOnReadyNode(ctx, key, ready)
		if err != nil {
			return nil, nil, err
		}
		if compiled {
			continue
		}
		for _, p := range problems {
			if !known[p.Error()] {
				uncompiled = append(uncompiled, p)
			}
		}
	}
	return uncompiled, cluster, nil
}

// withoutClusterWide returns problems less the ClusterNetworkPolicy problems that
// ValidateCluster gives too (every node's compile gives them; the reporter reports
// them). problems itself is left as it is.
func (s *Syncer) withoutClusterWide(problems []compiler.Problem) []compiler.Problem {
	if len(s.clusterValidated) == 0 {
		return problems
	}
	wide := map[string]bool{}
	for _, ps := range s.clusterValidated {
		for _, p := range ps {
			wide[p.Error()] = true
		}
	}
	out := make([]compiler.Problem, 0, len(problems))
	for _, p := range problems {
		if p.Kind == ruleset.KindClusterNetworkPolicy && wide[p.Error()] {
			continue
		}
		out = append(out, p)
	}
	return out
}

// compiledOnReadyNode reports whether the policy selects, on a Ready node, a pod that
// the compiler puts in that node's ruleset (eligible and owning an address): then
// that node compiles the policy and reports its problems. Only the policy's namespace
// is read, from the engine (which indexes pods by namespace; the cache holds
// CachedPods, which client.List cannot return).
func (s *Syncer) compiledOnReadyNode(ctx context.Context, key types.NamespacedName, ready map[string]bool) (bool, error) {
	np := s.engine.Policy(key.Namespace, key.Name)
	if np == nil {
		return false, nil
	}
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		//nolint:nilerr // not a failure: a selector that does not parse selects nothing, so no node compiles the policy (its parse problem is reported by every agent)
		return false, nil
	}
	found := false
	s.engine.EachPodIn(key.Namespace, func(p *model.Pod) {
		if found || !ready[p.NodeName] || !sel.Matches(labels.Set(p.Labels)) {
			return
		}
		for _, ip := range p.IPs {
			if s.engine.OwnerOf(ip) == p {
				found = true
				return
			}
		}
	})
	return found, nil
}
