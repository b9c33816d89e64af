package compiler

import (
	"sort"

	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/pkg/model"
)

// The Engine's ClusterNetworkPolicies and Nodes.
//
// A ClusterNetworkPolicy may select pods of any namespace, so any change to one
// rebuilds the structure (they are few and change rarely). Nodes matter only through
// the `nodes` peers of egress rules: a node whose labels or addresses change rebuilds
// the structure, and the compiled fragments of ClusterNetworkPolicies are not reused
// across it (their node sets are part of them).

type engineClusterPolicy struct {
	obj      *cnp.ClusterNetworkPolicy
	parsed   *clusterPolicy
	problems []Problem
}

// SetClusterPolicy adds or replaces a ClusterNetworkPolicy. The engine keeps p: the
// caller must not modify it afterwards.
func (e *Engine) SetClusterPolicy(p *cnp.ClusterNetworkPolicy) {
	parsed, problems := parseClusterPolicy(p, e.opts)
	e.cnps[p.Name] = &engineClusterPolicy{obj: p, parsed: parsed, problems: problems}
	e.reindexClusterPolicies()
}

// DeleteClusterPolicy removes a ClusterNetworkPolicy; unknown names are ignored.
func (e *Engine) DeleteClusterPolicy(name string) {
	if _, ok := e.cnps[name]; !ok {
		return
	}
	delete(e.cnps, name)
	e.reindexClusterPolicies()
}

func (e *Engine) reindexClusterPolicies() {
	var ps []*clusterPolicy
	for _, p := range e.cnps {
		if p.parsed != nil {
			ps = append(ps, p.parsed)
		}
	}
	sortClusterPolicies(ps)
	e.cnpSorted = ps
	e.cnpGen++
	e.dirty = true
}

// ClusterPolicy returns the ClusterNetworkPolicy of that name, nil when there is none.
func (e *Engine) ClusterPolicy(name string) *cnp.ClusterNetworkPolicy {
	if p := e.cnps[name]; p != nil {
		return p.obj
	}
	return nil
}

// EachClusterPolicy calls fn for every ClusterNetworkPolicy the engine holds.
func (e *Engine) EachClusterPolicy(fn func(p *cnp.ClusterNetworkPolicy)) {
	for _, p := range e.cnps {
		fn(p.obj)
	}
}

// SetNode adds or replaces a node. The engine keeps n: the caller must not modify it
// afterwards.
func (e *Engine) SetNode(n *model.Node) {
	if old := e.nodes[n.Name]; old != nil && old.Equivalent(n) {
		e.nodes[n.Name] = n
		return
	}
	e.nodes[n.Name] = n
	e.nodesChanged()
}

// DeleteNode removes a node; unknown names are ignored.
func (e *Engine) DeleteNode(name string) {
	if _, ok := e.nodes[name]; !ok {
		return
	}
	delete(e.nodes, name)
	e.nodesChanged()
}

// Node returns the node of that name, nil when there is none.
func (e *Engine) Node(name string) *model.Node { return e.nodes[name] }

// EachNode calls fn for every node the engine holds.
func (e *Engine) EachNode(fn func(n *model.Node)) {
	for _, n := range e.nodes {
		fn(n)
	}
}

func (e *Engine) nodesChanged() {
	e.nodeGen++
	// Only policies with node peers read nodes; without any, nothing changes.
	for _, p := range e.cnpSorted {
		if p.usesNodes {
			e.dirty = true
			return
		}
	}
}

func (e *Engine) clusterPolicies() []*clusterPolicy { return e.cnpSorted }

func (e *Engine) eachNode(fn func(n *model.Node)) {
	names := make([]string, 0, len(e.nodes))
	for n := range e.nodes {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fn(e.nodes[n])
	}
}

func (e *Engine) nodeGeneration() uint64 { return e.nodeGen }

func (e *Engine) clusterPolicyGeneration() uint64 { return e.cnpGen }

func (e *Engine) namespaceGeneration(ns string) uint64 { return e.nsGen[ns] }
