package compiler

import (
	"net/netip"
	"slices"
	"sort"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// Engine is the incremental compiler: it holds the cluster as a set of indexes, takes
// changes one object at a time, and on Flush returns the same ruleset Compile would
// build from the same state together with the changes from the ruleset of the previous
// Flush. The cost of a change depends on the change, not on the size of the cluster:
//
//   - a pod change re-evaluates that pod (and any pod sharing one of its addresses)
//     against each pod set of the ruleset, and patches the sets it enters or leaves;
//   - a namespace change re-evaluates the pods of that namespace;
//   - a change to a policy or to a pod of this node rebuilds the structure (chains,
//     maps, the list of sets), which depends only on this node's pods and the policies
//     of their namespaces; only the pod sets that are new are filled from the indexes.
//
// An Engine is not safe for concurrent use. It is pure like Compile: no kernel, no
// API clients.
type Engine struct {
	opts Options
	node string

	// byNS holds every pod, by namespace and name: one map insert per pod (the first
	// sync makes 50k of them), and namespace-selector peers walk a namespace's pods.
	byNS   map[string]map[string]*model.Pod // namespace → name → pod
	npods  int
	claims map[netip.Addr][]*model.Pod // eligible pods claiming each address
	// contested are the addresses more than one claim holds (normally none): every
	// other address of an eligible pod is its own, which spares ownedIPs a lookup in
	// claims per pod and address — most of the first Flush's time at 50k pods.
	contested  map[netip.Addr]bool
	local      map[string]*model.Pod               // pods of this node, by key
	namespaces map[string]labels.Set               // labels, the name label included
	policies   map[string]map[string]*enginePolicy // namespace → name → policy
	polByNS    map[string][]*policy                // parsed, sorted by key
	invalid    map[string][]Problem                // parse problems by policy key
	cnps       map[string]*engineClusterPolicy     // by name
	cnpSorted  []*clusterPolicy                    // parsed, in evaluation order
	nodes      map[string]*model.Node              // by name
	nodeGen    uint64                              // counts node changes
	cnpGen     uint64                              // counts ClusterNetworkPolicy changes
	nsGen      map[string]uint64                   // counts label changes per namespace

	// structure is the last compiled structure (pod sets empty); dirty asks for a new one.
	structure *compilation
	dirty     bool
	// elems are the elements of each pod set, sorted as Normalize sorts them.
	elems map[string][]ruleset.Element
	// pending are the changes to pod sets since the last Flush.
	pending map[string]*setDelta
	out     *ruleset.Ruleset
}

type enginePolicy struct {
	np       *networkingv1.NetworkPolicy
	parsed   *policy
	problems []Problem
}

// setDelta is the net change of one pod set: elements added and removed, by identity.
type setDelta struct {
	add, del map[string]ruleset.Element
}

// NewEngine returns an empty engine for the node.
func NewEngine(node string, opts Options) *Engine {
	return &Engine{
		opts:       opts,
		node:       node,
		byNS:       map[string]map[string]*model.Pod{},
		claims:     map[netip.Addr][]*model.Pod{},
		contested:  map[netip.Addr]bool{},
		local:      map[string]*model.Pod{},
		namespaces: map[string]labels.Set{},
		policies:   map[string]map[string]*enginePolicy{},
		polByNS:    map[string][]*policy{},
		invalid:    map[string][]Problem{},
		cnps:       map[string]*engineClusterPolicy{},
		nodes:      map[string]*model.Node{},
		nsGen:      map[string]uint64{},
		elems:      map[string][]ruleset.Element{},
		pending:    map[string]*setDelta{},
		dirty:      true,
	}
}

// SetPod adds or replaces a pod (keyed by namespace/name). The engine keeps p: the
// caller must not modify it afterwards.
func (e *Engine) SetPod(p *model.Pod) { e.changePods(p.Namespace, p.Name, p) }

// DeletePod removes a pod; unknown keys are ignored.
func (e *Engine) DeletePod(namespace, name string) { e.changePods(namespace, name, nil) }

// changePods replaces the pod namespace/name with p (nil: removes it). Every pod whose
// contribution may change — the pod itself, and the pods claiming one of its old or
// new addresses, whose ownership may move — is taken out of the pod sets before and
// put back after.
func (e *Engine) changePods(namespace, name string, p *model.Pod) {
	old := e.byNS[namespace][name]
	if old == nil && p == nil {
		return
	}
	if old != nil && p != nil && old != p && old.Equivalent(p) {
		// Only the version differs (an update nothing here reads): the new object takes
		// the old one's place in the indexes and the sets stay as they are. The agent
		// hands the engine its cache's own pods, so it keeps the newest one.
		e.byNS[namespace][name] = p
		if p.NodeName == e.node {
			e.local[p.Key()] = p
		}
		if p.Eligible() {
			for _, ip := range p.IPs {
				for i, c := range e.claims[ip] {
					if c == old {
						e.claims[ip][i] = p
					}
				}
			}
		}
		return
	}
	if (old != nil && old.NodeName == e.node) || (p != nil && p.NodeName == e.node) {
		e.dirty = true
	}
	if e.structure == nil {
		// Nothing compiled yet, so no contributions to track: the first Flush fills
		// every set from the indexes.
		if old != nil {
			e.removePod(old)
		}
		if p != nil {
			e.addPod(p)
		}
		return
	}
	// Pods that share an address with the old or new pod: the owner of that address
	// may change. Normally none (addresses are unique among running pods).
	var others []*model.Pod
	seen := map[*model.Pod]bool{}
	for _, x := range []*model.Pod{old, p} {
		if x == nil {
			continue
		}
		for _, ip := range x.IPs {
			for _, c := range e.claims[ip] {
				if c != old && !seen[c] {
					seen[c] = true
					others = append(others, c)
				}
			}
		}
	}
	if old != nil {
		e.contribute(old, false)
	}
	for _, a := range others {
		e.contribute(a, false)
	}
	if old != nil {
		e.removePod(old)
	}
	if p != nil {
		e.addPod(p)
		e.contribute(p, true)
	}
	for _, a := range others {
		e.contribute(a, true)
		// A change of ownership of a local pod's address changes the dispatch maps.
		if a.NodeName == e.node {
			e.dirty = true
		}
	}
}

func (e *Engine) addPod(p *model.Pod) {
	pods := e.byNS[p.Namespace]
	if pods == nil {
		pods = map[string]*model.Pod{}
		e.byNS[p.Namespace] = pods
	}
	pods[p.Name] = p
	e.npods++
	if p.NodeName == e.node {
		e.local[p.Key()] = p
	}
	if p.Eligible() {
		for _, ip := range p.IPs {
			cs := append(e.claims[ip], p)
			e.claims[ip] = cs
			if len(cs) > 1 {
				e.contested[ip] = true
			}
		}
	}
}

func (e *Engine) removePod(p *model.Pod) {
	delete(e.byNS[p.Namespace], p.Name)
	e.npods--
	if len(e.byNS[p.Namespace]) == 0 {
		delete(e.byNS, p.Namespace)
	}
	if p.NodeName == e.node {
		delete(e.local, p.Key())
	}
	for _, ip := range p.IPs {
		cs := slices.DeleteFunc(e.claims[ip], func(c *model.Pod) bool { return c == p })
		if len(cs) == 0 {
			delete(e.claims, ip)
		} else {
			e.claims[ip] = cs
		}
		if len(cs) <= 1 {
			delete(e.contested, ip)
		}
	}
}

// contribute adds (or removes) the elements pod contributes to every pod set.
func (e *Engine) contribute(pod *model.Pod, add bool) {
	if e.structure == nil {
		return // nothing compiled yet: the first Flush fills every set
	}
	ips := e.ownedIPs(pod)
	if len(ips) == 0 {
		return
	}
	var buf []ruleset.Element
	for name, ps := range e.structure.podSets {
		buf = ps.contribute(e, pod, ips, buf[:0])
		for _, el := range buf {
			e.delta(name).record(el, add)
		}
	}
}

func (e *Engine) delta(set string) *setDelta {
	d := e.pending[set]
	if d == nil {
		d = &setDelta{add: map[string]ruleset.Element{}, del: map[string]ruleset.Element{}}
		e.pending[set] = d
	}
	return d
}

// record notes that el enters (add) or leaves the set; an element that leaves and
// comes back within one Flush is no change at all.
func (d *setDelta) record(el ruleset.Element, add bool) {
	id := el.Identity()
	if add {
		if _, ok := d.del[id]; ok {
			delete(d.del, id)
			return
		}
		d.add[id] = el
		return
	}
	if _, ok := d.add[id]; ok {
		delete(d.add, id)
		return
	}
	d.del[id] = el
}

// Pod returns the pod under namespace/name, nil when there is none.
func (e *Engine) Pod(namespace, name string) *model.Pod { return e.byNS[namespace][name] }

// Policy returns the NetworkPolicy under namespace/name, nil when there is none.
func (e *Engine) Policy(namespace, name string) *networkingv1.NetworkPolicy {
	if p := e.policies[namespace][name]; p != nil {
		return p.np
	}
	return nil
}

// EachPod calls fn for every pod, EachNamespace for every namespace and EachPolicy for
// every policy the engine holds (fn must not change the engine).
func (e *Engine) EachPod(fn func(p *model.Pod)) { e.eachPod(fn) }

// EachPodIn calls fn for every pod of the namespace.
func (e *Engine) EachPodIn(namespace string, fn func(p *model.Pod)) { e.eachPodIn(namespace, fn) }

func (e *Engine) EachNamespace(fn func(name string)) {
	for name := range e.namespaces {
		fn(name)
	}
}

func (e *Engine) EachPolicy(fn func(np *networkingv1.NetworkPolicy)) {
	for _, ps := range e.policies {
		for _, p := range ps {
			fn(p.np)
		}
	}
}

// SetNamespace adds or replaces a namespace.
func (e *Engine) SetNamespace(ns *model.Namespace) {
	e.changeNamespace(ns.Name, nsLabels(ns.Name, ns))
}

// DeleteNamespace removes a namespace; its pods still match selectors on its name.
func (e *Engine) DeleteNamespace(name string) { e.changeNamespace(name, nil) }

func (e *Engine) changeNamespace(name string, l labels.Set) {
	old, had := e.namespaces[name]
	if had && l != nil && labels.Equals(old, l) {
		return
	}
	// ClusterNetworkPolicy subjects select namespaces by label: which of this node's
	// pods they select may change.
	if len(e.cnpSorted) > 0 && e.hasLocalPodsIn(name) {
		e.dirty = true
	}
	pods := e.byNS[name]
	for _, p := range pods {
		e.contribute(p, false)
	}
	if l == nil {
		delete(e.namespaces, name)
	} else {
		e.namespaces[name] = l
	}
	e.nsGen[name]++
	for _, p := range pods {
		e.contribute(p, true)
	}
}

// SetPolicy adds or replaces a NetworkPolicy. The engine keeps np: the caller must not
// modify it afterwards.
func (e *Engine) SetPolicy(np *networkingv1.NetworkPolicy) {
	parsed, problems := parsePolicy(np, e.opts)
	if e.policies[np.Namespace] == nil {
		e.policies[np.Namespace] = map[string]*enginePolicy{}
	}
	e.policies[np.Namespace][np.Name] = &enginePolicy{np: np, parsed: parsed, problems: problems}
	if key := np.Namespace + "/" + np.Name; len(problems) > 0 {
		e.invalid[key] = problems
	} else {
		delete(e.invalid, key)
	}
	e.reindexPolicies(np.Namespace)
}

// DeletePolicy removes a NetworkPolicy; unknown keys are ignored.
func (e *Engine) DeletePolicy(namespace, name string) {
	if _, ok := e.policies[namespace][name]; !ok {
		return
	}
	delete(e.policies[namespace], name)
	delete(e.invalid, namespace+"/"+name)
	if len(e.policies[namespace]) == 0 {
		delete(e.policies, namespace)
	}
	e.reindexPolicies(namespace)
}

func (e *Engine) reindexPolicies(ns string) {
	var ps []*policy
	for _, p := range e.policies[ns] {
		if p.parsed != nil {
			ps = append(ps, p.parsed)
		}
	}
	sortPolicies(ps)
	if len(ps) == 0 {
		delete(e.polByNS, ns)
	} else {
		e.polByNS[ns] = ps
	}
	// Policies of namespaces without local pods cannot change this node's ruleset.
	if e.hasLocalPodsIn(ns) {
		e.dirty = true
	}
}

func (e *Engine) hasLocalPodsIn(ns string) bool {
	for _, p := range e.byNS[ns] {
		if p.NodeName == e.node {
			return true
		}
	}
	return false
}

// Flush returns the ruleset for the current state and the changes from the ruleset of
// the previous Flush (NeedsReplace on the first). The returned ruleset is normalized
// and never modified afterwards: the next Flush builds new objects for whatever
// changes and shares the rest. Its Owners depend on the structure alone: built anew
// when the structure is, shared with the previous Flush's otherwise.
func (e *Engine) Flush() (*Result, *ruleset.Changes) {
	prev := e.structure
	if e.dirty || prev == nil {
		c := newCompilation(e, e.opts)
		if prev != nil {
			c.prevFragments = prev.fragments
			c.prevClusterFragments = prev.clusterFragments
			c.prevSubjects = prev.subjects
		}
		c.run()
		e.structure, e.dirty = c, false
	}
	cur := e.structure
	ch := &ruleset.Changes{AddElements: map[string][]ruleset.Element{}, DelElements: map[string][]ruleset.Element{}}
	if prev != cur && prev != nil {
		ch = ruleset.Diff(structureRuleset(prev), structureRuleset(cur))
		// The structure diff sees pod sets empty; new ones are added filled below.
		ch.AddSets = slices.DeleteFunc(ch.AddSets, func(s *ruleset.Set) bool { return cur.podSets[s.Name] != nil })
	}
	prevSets := map[string]*ruleset.Set{}
	if e.out != nil {
		for _, s := range e.out.Sets {
			prevSets[s.Name] = s
		}
	}

	rs := &ruleset.Ruleset{Table: cur.table, Owners: cur.ownerTable()}
	for name, s := range cur.sets {
		ps := cur.podSets[name]
		if ps == nil {
			rs.Sets = append(rs.Sets, s)
			continue
		}
		old := prevSets[name]
		var was *podSet
		if prev != nil {
			was = prev.podSets[name]
		}
		set := *s // the structure's own set object stays empty
		if was == nil || old == nil || was.key != ps.key {
			// New, or its membership means something else now: fill it from the indexes.
			set.Elements = ps.fill(e)
			ruleset.SortElements(set.Elements)
			e.elems[name] = set.Elements
			switch {
			case old == nil:
				ch.AddSets = append(ch.AddSets, &set)
			case !old.SameDefinition(&set):
				ch.NeedsReplace = true
			default:
				add, del := ruleset.DiffElements(old.Elements, set.Elements)
				if len(add) > 0 {
					ch.AddElements[name] = add
				}
				if len(del) > 0 {
					ch.DelElements[name] = del
				}
			}
			rs.Sets = append(rs.Sets, &set)
			continue
		}
		d := e.pending[name]
		if d == nil || d.empty() {
			if prev == cur {
				rs.Sets = append(rs.Sets, old) // nothing about it changed
				continue
			}
			set.Elements = e.elems[name]
			rs.Sets = append(rs.Sets, &set)
			continue
		}
		add, del := d.sorted()
		set.Elements = patchElements(e.elems[name], add, del)
		e.elems[name] = set.Elements
		rs.Sets = append(rs.Sets, &set)
		if len(add) > 0 {
			ch.AddElements[name] = add
		}
		if len(del) > 0 {
			ch.DelElements[name] = del
		}
	}
	// Pod sets the structure no longer has are deleted by the structure diff.
	for name := range e.elems {
		if cur.podSets[name] == nil {
			delete(e.elems, name)
		}
	}
	clear(e.pending)
	for _, c := range cur.chains {
		rs.Chains = append(rs.Chains, c)
	}
	sort.Slice(rs.Chains, func(i, j int) bool { return rs.Chains[i].Name < rs.Chains[j].Name })
	sort.Slice(rs.Sets, func(i, j int) bool { return rs.Sets[i].Name < rs.Sets[j].Name })
	if e.out == nil {
		ch = &ruleset.Changes{NeedsReplace: true}
	}
	e.out = rs
	return &Result{Ruleset: rs, Problems: e.problems(cur)}, ch
}

// structureRuleset is a compiled structure as a ruleset, pod sets without elements.
func structureRuleset(c *compilation) *ruleset.Ruleset {
	rs := &ruleset.Ruleset{Table: c.table}
	for name, s := range c.sets {
		if ps := c.podSets[name]; ps != nil {
			// One empty copy per pod set, so that the diff sees the same object.
			if ps.empty == nil {
				empty := *s
				empty.Elements = nil
				ps.empty = &empty
			}
			s = ps.empty
		}
		rs.Sets = append(rs.Sets, s)
	}
	for _, ch := range c.chains {
		rs.Chains = append(rs.Chains, ch)
	}
	rs.Normalize()
	return rs
}

func (e *Engine) problems(c *compilation) []Problem {
	var out []Problem
	for _, ps := range e.invalid {
		out = append(out, ps...)
	}
	for _, p := range e.cnps {
		out = append(out, p.problems...)
	}
	return append(out, c.problems...)
}

func (d *setDelta) empty() bool { return len(d.add) == 0 && len(d.del) == 0 }

func (d *setDelta) sorted() (add, del []ruleset.Element) {
	for _, el := range d.add {
		add = append(add, el)
	}
	for _, el := range d.del {
		del = append(del, el)
	}
	ruleset.SortElements(add)
	ruleset.SortElements(del)
	return add, del
}

// patchElements returns a new sorted list: cur without del, with add (both sorted).
// cur is not modified (the previous ruleset still shares it). The unchanged runs
// between the changed positions are copied whole, found by binary search, so a change
// of a few elements costs a copy of the list and a few searches, not a comparison per
// element.
func patchElements(cur, add, del []ruleset.Element) []ruleset.Element {
	out := make([]ruleset.Element, 0, len(cur)+len(add))
	find := func(from int, key []ruleset.Range) int {
		return from + sort.Search(len(cur)-from, func(i int) bool { return ruleset.CompareKeys(cur[from+i].Key, key) >= 0 })
	}
	i, a, d := 0, 0, 0
	for a < len(add) || d < len(del) {
		// The next change in key order: a deletion, or an insertion.
		delNext := d < len(del) && (a >= len(add) || ruleset.CompareKeys(del[d].Key, add[a].Key) <= 0)
		var key []ruleset.Range
		if delNext {
			key = del[d].Key
		} else {
			key = add[a].Key
		}
		j := find(i, key)
		out = append(out, cur[i:j]...)
		i = j
		if delNext {
			if i < len(cur) && ruleset.CompareKeys(cur[i].Key, key) == 0 {
				i++ // dropped
			}
			d++
			continue
		}
		if i < len(cur) && ruleset.CompareKeys(cur[i].Key, key) == 0 {
			i++ // already there (cannot happen when the bookkeeping is right): replaced
		}
		out = append(out, add[a])
		a++
	}
	return append(out, cur[i:]...)
}

// The engine is its own universe.

func (e *Engine) nodeName() string { return e.node }

func (e *Engine) localPods() []*model.Pod {
	var out []*model.Pod
	for _, p := range e.local {
		if len(e.ownedIPs(p)) > 0 {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return model.Less(out[i], out[j]) })
	return out
}

// ownedIPs are the addresses p owns. Callers must not modify the result: when no
// address of p is contested it is p.IPs itself (p is an indexed pod, so an eligible p
// claims each of its addresses, and a sole claim owns it).
func (e *Engine) ownedIPs(p *model.Pod) []netip.Addr {
	if !p.Eligible() {
		return nil
	}
	if len(e.contested) == 0 {
		return p.IPs
	}
	var out []netip.Addr
	for i, ip := range p.IPs {
		if e.contested[ip] && model.Owner(e.claims[ip]) != p {
			if out == nil {
				out = append(make([]netip.Addr, 0, len(p.IPs)), p.IPs[:i]...)
			}
			continue
		}
		if out != nil {
			out = append(out, ip)
		}
	}
	if out == nil {
		return p.IPs
	}
	return out
}

func (e *Engine) policiesIn(ns string) []*policy { return e.polByNS[ns] }

func (e *Engine) namespaceLabels(name string) labels.Set {
	if l, ok := e.namespaces[name]; ok {
		return l
	}
	return labels.Set{NamespaceNameLabel: name}
}

func (e *Engine) eachNamespace(fn func(string)) {
	for ns := range e.byNS {
		fn(ns)
	}
}

func (e *Engine) eachPodIn(ns string, fn func(*model.Pod)) {
	for _, p := range e.byNS[ns] {
		fn(p)
	}
}

func (e *Engine) eachPod(fn func(*model.Pod)) {
	for _, pods := range e.byNS {
		for _, p := range pods {
			fn(p)
		}
	}
}

// Sizes returns how many pods, namespaces and policies the engine holds (the agent
// reports them as cache sizes). It counts the policies namespace by namespace, so it
// costs one step per namespace with policies, not per object.
func (e *Engine) Sizes() (pods, namespaces, policies int) {
	for _, ps := range e.policies {
		policies += len(ps)
	}
	return e.npods, len(e.namespaces), policies
}

// OwnerOf returns the pod owning an address (model.IPOwners' rule), nil when no eligible
// pod claims it.
func (e *Engine) OwnerOf(a netip.Addr) *model.Pod { return model.Owner(e.claims[a]) }
