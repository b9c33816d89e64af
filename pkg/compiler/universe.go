package compiler

import (
	"net/netip"
	"sort"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/nftpolicy/nftpolicy/pkg/model"
)

// universe is the cluster as the compilation reads it. Compile builds one from a
// snapshot; the incremental Engine is one, kept up to date event by event. Everything
// the compiled ruleset depends on is read through it, so both produce the same output
// from the same state.
type universe interface {
	nodeName() string
	// localPods are the pods of this node that own at least one IP, sorted by key.
	localPods() []*model.Pod
	// ownedIPs are the pod's addresses no other pod owns in preference to it (see
	// model.IPOwners); none for pods that are not eligible.
	ownedIPs(p *model.Pod) []netip.Addr
	// policiesIn are the parsed policies of a namespace, sorted by key.
	policiesIn(ns string) []*policy
	// namespaceLabels are a namespace's labels, with the name label the API server sets.
	namespaceLabels(ns string) labels.Set
	// eachNamespace calls fn for every namespace that has pods.
	eachNamespace(fn func(ns string))
	// eachPodIn calls fn for the pods of a namespace; eachPod for every pod.
	eachPodIn(ns string, fn func(p *model.Pod))
	eachPod(fn func(p *model.Pod))
	// clusterPolicies are the parsed ClusterNetworkPolicies in evaluation order (tier,
	// priority, name).
	clusterPolicies() []*clusterPolicy
	// eachNode calls fn for every node, by name; nodeGeneration changes whenever a node
	// that `nodes` peers may read changes.
	eachNode(fn func(n *model.Node))
	nodeGeneration() uint64
	// clusterPolicyGeneration changes whenever a ClusterNetworkPolicy does, and
	// namespaceGeneration whenever a namespace's labels do (what decides the subjects
	// of ClusterNetworkPolicies).
	clusterPolicyGeneration() uint64
	namespaceGeneration(ns string) uint64
}

// snapshotUniverse is a universe over a snapshot, indexed once.
type snapshotUniverse struct {
	snap     *model.Snapshot
	owners   map[netip.Addr]*model.Pod
	podIPs   map[*model.Pod][]netip.Addr
	pods     []*model.Pod            // pods owning at least one IP, sorted
	byNS     map[string][]*model.Pod // of those
	nsNames  []string                // namespaces of byNS, sorted
	local    []*model.Pod
	policies map[string][]*policy
	problems []Problem // parse problems of the policies
	nsLabels map[string]labels.Set
	cnps     []*clusterPolicy
	nodes    []*model.Node // sorted by name
}

func newSnapshotUniverse(snap *model.Snapshot, opts Options) *snapshotUniverse {
	u := &snapshotUniverse{
		snap:     snap,
		owners:   model.IPOwners(snap.Pods),
		podIPs:   map[*model.Pod][]netip.Addr{},
		byNS:     map[string][]*model.Pod{},
		policies: map[string][]*policy{},
		nsLabels: map[string]labels.Set{},
	}
	eligible := make([]*model.Pod, 0, len(snap.Pods))
	for _, p := range snap.Pods {
		if p.Eligible() {
			eligible = append(eligible, p)
		}
	}
	sort.Slice(eligible, func(i, j int) bool { return model.Less(eligible[i], eligible[j]) })
	for _, p := range eligible {
		for _, ip := range p.IPs {
			if u.owners[ip] == p {
				u.podIPs[p] = append(u.podIPs[p], ip)
			}
		}
		if len(u.podIPs[p]) == 0 {
			continue
		}
		u.pods = append(u.pods, p)
		if _, ok := u.byNS[p.Namespace]; !ok {
			u.nsNames = append(u.nsNames, p.Namespace)
		}
		u.byNS[p.Namespace] = append(u.byNS[p.Namespace], p)
		if p.NodeName == snap.NodeName {
			u.local = append(u.local, p)
		}
	}
	sort.Strings(u.nsNames)
	for _, np := range snap.Policies {
		p, problems := parsePolicy(np, opts)
		u.problems = append(u.problems, problems...)
		if p != nil {
			u.policies[np.Namespace] = append(u.policies[np.Namespace], p)
		}
	}
	for _, ps := range u.policies {
		sortPolicies(ps)
	}
	for _, obj := range snap.ClusterPolicies {
		p, problems := parseClusterPolicy(obj, opts)
		u.problems = append(u.problems, problems...)
		if p != nil {
			u.cnps = append(u.cnps, p)
		}
	}
	sortClusterPolicies(u.cnps)
	u.nodes = append(u.nodes, snap.Nodes...)
	sort.Slice(u.nodes, func(i, j int) bool { return u.nodes[i].Name < u.nodes[j].Name })
	return u
}

func sortPolicies(ps []*policy) { sort.Slice(ps, func(i, j int) bool { return ps[i].key < ps[j].key }) }

func (u *snapshotUniverse) nodeName() string                   { return u.snap.NodeName }
func (u *snapshotUniverse) localPods() []*model.Pod            { return u.local }
func (u *snapshotUniverse) ownedIPs(p *model.Pod) []netip.Addr { return u.podIPs[p] }
func (u *snapshotUniverse) policiesIn(ns string) []*policy     { return u.policies[ns] }

func (u *snapshotUniverse) clusterPolicies() []*clusterPolicy { return u.cnps }
func (u *snapshotUniverse) nodeGeneration() uint64            { return 0 }
func (u *snapshotUniverse) clusterPolicyGeneration() uint64   { return 0 }
func (u *snapshotUniverse) namespaceGeneration(string) uint64 { return 0 }

func (u *snapshotUniverse) eachNode(fn func(*model.Node)) {
	for _, n := range u.nodes {
		fn(n)
	}
}

func (u *snapshotUniverse) namespaceLabels(name string) labels.Set {
	l, ok := u.nsLabels[name]
	if !ok {
		l = nsLabels(name, u.snap.Namespaces[name])
		u.nsLabels[name] = l
	}
	return l
}

func (u *snapshotUniverse) eachNamespace(fn func(string)) {
	for _, ns := range u.nsNames {
		fn(ns)
	}
}

func (u *snapshotUniverse) eachPodIn(ns string, fn func(*model.Pod)) {
	for _, p := range u.byNS[ns] {
		fn(p)
	}
}

func (u *snapshotUniverse) eachPod(fn func(*model.Pod)) {
	for _, p := range u.pods {
		fn(p)
	}
}

// nsLabels returns the labels of a namespace, synthesising the name label the API
// server would have set when the namespace is unknown (not yet cached, or deleted).
func nsLabels(name string, ns *model.Namespace) labels.Set {
	if ns != nil {
		if _, has := ns.Labels[NamespaceNameLabel]; has {
			return ns.Labels
		}
		l := labels.Set{NamespaceNameLabel: name}
		for k, v := range ns.Labels {
			l[k] = v
		}
		return l
	}
	return labels.Set{NamespaceNameLabel: name}
}

// policyProblem is a Problem on a NetworkPolicy.
func policyProblem(np *networkingv1.NetworkPolicy, field string, err error) Problem {
	return Problem{Kind: "NetworkPolicy", Namespace: np.Namespace, Name: np.Name, Field: field, Err: err}
}
