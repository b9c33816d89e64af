package reach

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftpolicy/nftpolicy/pkg/manifest"
	"github.com/nftpolicy/nftpolicy/pkg/model"
)

// Synthetic addresses and node. A pod read from a manifest that was never applied has
// no IP and no node, and a workload (Deployment, ...) has no pod at all; policy needs
// both to judge a connection. They get addresses from ranges that no cluster hands to
// pods — 198.18.0.0/15 (RFC 2544, benchmarking) and 2001:db8::/32 (RFC 3849,
// documentation) — and the node SyntheticNode. Where a policy's ipBlock covers these
// ranges (0.0.0.0/0 does) the pod matches it by its synthetic address, as a real pod
// matches by its real one.
var (
	SyntheticV4 = netip.MustParsePrefix("198.18.0.0/15")
	SyntheticV6 = netip.MustParsePrefix("2001:db8::/32")
)

// SyntheticNode is the node of pods without spec.nodeName. One node for all of them
// keeps the work at one compiled ruleset; the verdict between two pods does not depend
// on whether they share a node (egress and ingress are judged separately either way).
const SyntheticNode = "reach-unscheduled"

// Pod is one pod of the report.
type Pod struct {
	Key   string `json:"key"`
	Group string `json:"group"`
	Node  string `json:"node"`
	// IPs are the addresses used, synthetic ones included.
	IPs []string `json:"ips"`
	// SyntheticIPs: the pod had no IP (a manifest never applied, or a stand-in for a
	// workload); SyntheticNode: it had no node.
	SyntheticIPs  bool `json:"syntheticIPs,omitempty"`
	SyntheticNode bool `json:"syntheticNode,omitempty"`
	// Workload is set for a stand-in of a workload that has no pod in the input:
	// "Deployment app/web".
	Workload string `json:"workload,omitempty"`

	model *model.Pod
	// ports are the container ports the pod declares (for the default ports).
	ports []Port
}

// Skipped is a pod left out of the matrix, and why.
type Skipped struct {
	Pod    string `json:"pod"`
	Reason string `json:"reason"`
}

// Group is a row or column of the matrix: the pods of one workload, or one address.
type Group struct {
	// ID is unique: "namespace/Kind/name", or "address/IP".
	ID        string `json:"id"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	// Kind is what made the group: Deployment, StatefulSet, DaemonSet, ReplicaSet,
	// Job, CronJob (the pods' controller), Label (the app.kubernetes.io/name or app
	// label), Pod (a pod of its own) or Address.
	Kind string   `json:"kind"`
	Pods []string `json:"pods,omitempty"`
}

// Label is how tables name the group: "namespace/name", or the address.
func (g *Group) Label() string {
	if g.Kind == KindAddress {
		return g.Name
	}
	return g.Namespace + "/" + g.Name
}

// Group kinds that are not controllers.
const (
	KindLabel   = "Label"
	KindPod     = "Pod"
	KindAddress = "Address"
)

// cronJobName matches the Jobs a CronJob makes, "<cronjob>-<minutes since the epoch>".
var cronJobName = regexp.MustCompile(`^(.+)-[0-9]{8,}$`)

// groupOf names a pod's group: its controller (a ReplicaSet with the
// pod-template-hash suffix is its Deployment; a Job named like a CronJob's is that
// CronJob), else its app.kubernetes.io/name or app label, else the pod itself.
func groupOf(meta metav1.ObjectMeta) (kind, name string) {
	if ref := metav1.GetControllerOf(&meta); ref != nil {
		switch ref.Kind {
		case "ReplicaSet":
			if h := meta.Labels["pod-template-hash"]; h != "" && strings.HasSuffix(ref.Name, "-"+h) {
				return "Deployment", strings.TrimSuffix(ref.Name, "-"+h)
			}
			return "ReplicaSet", ref.Name
		case "Job":
			if m := cronJobName.FindStringSubmatch(ref.Name); m != nil {
				return "CronJob", m[1]
			}
			return "Job", ref.Name
		case "StatefulSet", "DaemonSet":
			return ref.Kind, ref.Name
		}
	}
	for _, l := range []string{"app.kubernetes.io/name", "app"} {
		if v := meta.Labels[l]; v != "" {
			return KindLabel, v
		}
	}
	return KindPod, meta.Name
}

func groupID(namespace, kind, name string) string { return namespace + "/" + kind + "/" + name }

// declaredPorts lists the container ports of a pod spec (containers and restartable
// init containers, which serve for the pod's whole life).
func declaredPorts(spec *corev1.PodSpec) []Port {
	var out []Port
	add := func(c corev1.Container) {
		for _, cp := range c.Ports {
			proto := cp.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			if cp.ContainerPort > 0 && cp.ContainerPort < 65536 {
				out = append(out, Port{Protocol: proto, Port: uint16(cp.ContainerPort)})
			}
		}
	}
	for _, c := range spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			add(c)
		}
	}
	for _, c := range spec.Containers {
		add(c)
	}
	return out
}

// population is the pods of one side (one set of objects), ready to be judged.
type population struct {
	pods    []*Pod // eligible, sorted by key
	byKey   map[string]*Pod
	skipped []Skipped
	groups  map[string]*Group
	snap    *model.Snapshot
}

// collect converts the objects' pods (and stand-ins for workloads without pods) into
// the model, without addresses assigned yet for pods that have none.
func collect(objs *manifest.Objects, namespaces []string) *population {
	pop := &population{byKey: map[string]*Pod{}, groups: map[string]*Group{}}
	snap := objs.Snapshot("")
	snap.Pods = nil
	inScope := func(ns string) bool { return len(namespaces) == 0 || slices.Contains(namespaces, ns) }
	add := func(meta metav1.ObjectMeta, spec *corev1.PodSpec, mp *model.Pod, workload string) {
		kind, name := groupOf(meta)
		if workload != "" {
			kind, name, _ = strings.Cut(workload, " ")
			_, name, _ = strings.Cut(name, "/")
		}
		p := &Pod{Key: mp.Key(), Group: groupID(mp.Namespace, kind, name), Node: mp.NodeName, Workload: workload, model: mp, ports: declaredPorts(spec)}
		g := pop.groups[p.Group]
		if g == nil {
			g = &Group{ID: p.Group, Namespace: mp.Namespace, Name: name, Kind: kind}
			pop.groups[p.Group] = g
		}
		g.Pods = append(g.Pods, p.Key)
		pop.pods = append(pop.pods, p)
		pop.byKey[p.Key] = p
	}
	covered := map[string]bool{} // group IDs with a pod of their own
	for _, ap := range objs.Pods {
		mp := model.PodFromAPI(ap)
		// Every pod stays in the snapshot (as the agent sees them): those out of scope
		// or skipped still match selectors and claim addresses.
		snap.Pods = append(snap.Pods, mp)
		kind, name := groupOf(ap.ObjectMeta)
		covered[groupID(ap.Namespace, kind, name)] = true
		switch {
		case !inScope(ap.Namespace):
			continue
		case mp.HostNetwork:
			pop.skipped = append(pop.skipped, Skipped{Pod: mp.Key(), Reason: "hostNetwork: it has its node's address, and policy cannot tell it from the node"})
			continue
		case mp.Terminated():
			pop.skipped = append(pop.skipped, Skipped{Pod: mp.Key(), Reason: fmt.Sprintf("phase %s: it takes no part in policy", mp.Phase)})
			continue
		}
		add(ap.ObjectMeta, &ap.Spec, mp, "")
	}
	for _, w := range objs.Workloads {
		meta := w.Template.ObjectMeta
		meta.Namespace, meta.Name = w.Namespace, strings.ToLower(w.Kind)+"/"+w.Name
		id := groupID(w.Namespace, w.Kind, w.Name)
		switch {
		case covered[id] || !inScope(w.Namespace):
			continue
		case w.Controller != nil:
			// A Deployment's ReplicaSet, a CronJob's Job (`kubectl get all` lists
			// both): the controller stands in for its pods, not each revision.
			continue
		case w.Replicas != nil && *w.Replicas == 0:
			pop.skipped = append(pop.skipped, Skipped{Pod: w.Kind + " " + w.Namespace + "/" + w.Name, Reason: "scaled to zero replicas: no pod to stand in for"})
			continue
		}
		covered[id] = true
		mp := model.PodFromAPI(&corev1.Pod{ObjectMeta: meta, Spec: w.Template.Spec})
		snap.Pods = append(snap.Pods, mp)
		if mp.HostNetwork {
			pop.skipped = append(pop.skipped, Skipped{Pod: mp.Key(), Reason: "hostNetwork: it has its node's address, and policy cannot tell it from the node"})
			continue
		}
		add(meta, &w.Template.Spec, mp, w.Kind+" "+w.Namespace+"/"+w.Name)
	}
	sort.Slice(pop.pods, func(i, j int) bool { return model.Less(pop.pods[i].model, pop.pods[j].model) })
	for _, g := range pop.groups {
		sort.Strings(g.Pods)
	}
	sort.Slice(pop.skipped, func(i, j int) bool { return pop.skipped[i].Pod < pop.skipped[j].Pod })
	pop.snap = snap
	return pop
}

// synthesize gives the pods of every population that have no address synthetic ones
// (the same key gets the same address on every side, so that before and after compare)
// and the pods without a node SyntheticNode, then fills in the report's view of them.
func synthesize(pops ...*population) error {
	used := map[netip.Addr]bool{}
	var keys []string
	need := map[string]bool{}
	for _, pop := range pops {
		for _, mp := range pop.snap.Pods {
			for _, a := range mp.IPs {
				used[a] = true
			}
		}
		for _, p := range pop.pods {
			if len(p.model.IPs) == 0 && !need[p.Key] {
				need[p.Key] = true
				keys = append(keys, p.Key)
			}
		}
	}
	sort.Strings(keys)
	next4, next6 := SyntheticV4.Addr().Next(), SyntheticV6.Addr().Next()
	take := func(next *netip.Addr, pfx netip.Prefix) (netip.Addr, error) {
		for ; pfx.Contains(*next); *next = next.Next() {
			if !used[*next] {
				a := *next
				*next = next.Next()
				return a, nil
			}
		}
		return netip.Addr{}, fmt.Errorf("more pods without an address than %s holds", pfx)
	}
	addrs := map[string][]netip.Addr{}
	for _, k := range keys {
		a4, err := take(&next4, SyntheticV4)
		if err != nil {
			return err
		}
		a6, err := take(&next6, SyntheticV6)
		if err != nil {
			return err
		}
		addrs[k] = []netip.Addr{a4, a6}
	}
	for _, pop := range pops {
		for _, p := range pop.pods {
			if a, ok := addrs[p.Key]; ok && len(p.model.IPs) == 0 {
				p.model.IPs = a
				p.SyntheticIPs = true
			}
			if p.model.NodeName == "" {
				p.model.NodeName = SyntheticNode
				p.SyntheticNode = true
			}
			p.Node = p.model.NodeName
			p.IPs = nil
			for _, a := range p.model.IPs {
				p.IPs = append(p.IPs, a.String())
			}
		}
	}
	return nil
}
