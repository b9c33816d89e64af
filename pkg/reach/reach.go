// Package reach computes what-if reachability reports: the verdict of every source pod
// to every destination pod (and given addresses) on given ports, per address family,
// by the same compiler and tracer path as `nftpolicy explain` (an explain.Explainer
// compiles each node's ruleset once and judges every pair), grouped by namespace and
// workload so that it stays readable on a real cluster, and the difference between two
// states (a GitOps repository's main branch and a pull request). It is pure: no kernel,
// no API client.
package reach

import (
	"cmp"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/explain"
	"github.com/nftpolicy/nftpolicy/pkg/manifest"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// DefaultPort is the port judged when no --port is given and no destination pod
// declares a container port.
var DefaultPort = Port{Protocol: corev1.ProtocolTCP, Port: 80}

// Port is a destination port.
type Port struct {
	Protocol corev1.Protocol
	Port     uint16
}

func (p Port) String() string { return fmt.Sprintf("%d/%s", p.Port, p.Protocol) }

// ParsePort parses "80", "80/TCP", "53/udp" (TCP by default), as explain does.
func ParsePort(s string) (Port, error) {
	proto, n, err := explain.ParsePort(s)
	return Port{Protocol: proto, Port: n}, err
}

func comparePorts(a, b Port) int {
	return cmp.Or(strings.Compare(string(a.Protocol), string(b.Protocol)), cmp.Compare(a.Port, b.Port))
}

// Family names an address family in reports: "IPv4", "IPv6".
func familyName(f ruleset.Family) string {
	if f == ruleset.IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// Options say what to judge.
type Options struct {
	// Namespaces limits sources and destinations to pods of these namespaces (all when
	// empty). Pods elsewhere still count for selectors.
	Namespaces []string
	// Ports are judged for every pair; when empty, every distinct container port the
	// destination pods declare, or DefaultPort when they declare none.
	Ports []Port
	// Addrs are extra destinations (e.g. 169.254.169.254): addresses outside the
	// cluster's pods, or a pod's address (judged as that pod).
	Addrs []netip.Addr
	// Families are judged in turn; IPv4 only when empty.
	Families []ruleset.Family
	// Compiler are the agent's options (Table, Revocation).
	Compiler compiler.Options
}

// Verdict is a cell's (or block's) verdict.
type Verdict string

// Verdicts.
const (
	Allowed Verdict = "allowed"
	Denied  Verdict = "denied"
	// Self is a pod to its own address: the traffic stays inside the pod and no
	// node judges it; it always passes.
	Self Verdict = "self"
	// NA: one end has no address of the family.
	NA Verdict = "n/a"
	// Mixed is a block whose cells differ.
	Mixed Verdict = "mixed"
)

// Matrix is the verdict of every cell, with what is needed to explain any of them.
type Matrix struct {
	Families []ruleset.Family
	Ports    []Port
	// Pods are the sources and the pod destinations, sorted by group then key.
	Pods []*Pod
	// Addrs are the extra destinations.
	Addrs []netip.Addr
	// Groups are the pods' groups in order, then one group per address.
	Groups  []*Group
	Skipped []Skipped
	// verdicts[family][port][from][to]; to indexes Pods then Addrs.
	verdicts [][][][]Verdict

	explainer *explain.Explainer
}

// Compute judges every cell of objs.
func Compute(objs *manifest.Objects, opts Options) (*Matrix, error) {
	pop := collect(objs, opts.Namespaces)
	if err := synthesize(pop); err != nil {
		return nil, err
	}
	return compute(pop, opts, nil)
}

// defaultPorts are the distinct container ports the pods declare, else DefaultPort.
func defaultPorts(pods []*Pod) []Port {
	var ports []Port
	for _, p := range pods {
		for _, pt := range p.ports {
			if !slices.Contains(ports, pt) {
				ports = append(ports, pt)
			}
		}
	}
	if len(ports) == 0 {
		return []Port{DefaultPort}
	}
	slices.SortFunc(ports, comparePorts)
	return ports
}

// compute judges pop's pods over ports (opts.Ports, else ports, else the default).
func compute(pop *population, opts Options, ports []Port) (*Matrix, error) {
	m := &Matrix{Families: opts.Families, Ports: opts.Ports, Addrs: opts.Addrs, Skipped: pop.skipped,
		explainer: explain.NewExplainer(pop.snap, opts.Compiler)}
	if len(m.Families) == 0 {
		m.Families = []ruleset.Family{ruleset.IPv4}
	}
	if len(m.Ports) == 0 {
		m.Ports = ports
	}
	if len(m.Ports) == 0 {
		m.Ports = defaultPorts(pop.pods)
	}
	// Rows and columns: groups in (namespace, name, kind) order, pods by key within.
	var groups []*Group
	for _, g := range pop.groups {
		groups = append(groups, g)
	}
	sort.Slice(groups, func(i, j int) bool {
		a, b := groups[i], groups[j]
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name), strings.Compare(a.Kind, b.Kind)) < 0
	})
	for _, g := range groups {
		m.Groups = append(m.Groups, g)
		for _, k := range g.Pods {
			m.Pods = append(m.Pods, pop.byKey[k])
		}
	}
	for _, a := range m.Addrs {
		m.Groups = append(m.Groups, &Group{ID: "address/" + a.String(), Name: a.String(), Kind: KindAddress})
	}

	nTo := len(m.Pods) + len(m.Addrs)
	m.verdicts = make([][][][]Verdict, len(m.Families))
	type job struct{ fi, pi, from int }
	jobs := make(chan job)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	// The Explainer is safe for concurrent use: rows are judged in parallel.
	for range max(1, runtime.GOMAXPROCS(0)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				row := m.verdicts[j.fi][j.pi][j.from]
				for to := range nTo {
					v, err := m.judge(j.fi, j.pi, j.from, to)
					if err != nil {
						select {
						case errs <- err:
						default:
						}
						break
					}
					row[to] = v
				}
			}
		}()
	}
	for fi := range m.Families {
		m.verdicts[fi] = make([][][]Verdict, len(m.Ports))
		for pi := range m.Ports {
			m.verdicts[fi][pi] = make([][]Verdict, len(m.Pods))
			for from := range m.Pods {
				m.verdicts[fi][pi][from] = make([]Verdict, nTo)
				jobs <- job{fi, pi, from}
			}
		}
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errs:
		return nil, err
	default:
	}
	return m, nil
}

// destination names column to for explain: a pod key or an address.
func (m *Matrix) destination(to int) string {
	if to < len(m.Pods) {
		return m.Pods[to].Key
	}
	return m.Addrs[to-len(m.Pods)].String()
}

// hasFamily reports whether column to has an address of family f.
func (m *Matrix) hasFamily(to int, f ruleset.Family) bool {
	if to >= len(m.Pods) {
		return m.Addrs[to-len(m.Pods)].Is4() == (f == ruleset.IPv4)
	}
	return slices.ContainsFunc(m.Pods[to].model.IPs, func(a netip.Addr) bool { return a.Is4() == (f == ruleset.IPv4) })
}

// request is the explain request of a cell.
func (m *Matrix) request(fi, pi, from, to int) explain.Request {
	return explain.Request{From: m.Pods[from].Key, To: m.destination(to), Protocol: m.Ports[pi].Protocol, Port: m.Ports[pi].Port, Family: m.Families[fi]}
}

func (m *Matrix) judge(fi, pi, from, to int) (Verdict, error) {
	f := m.Families[fi]
	switch {
	case to == from:
		return Self, nil
	case to >= len(m.Pods) && slices.Contains(m.Pods[from].model.IPs, m.Addrs[to-len(m.Pods)]):
		return Self, nil // --to-addr is the source's own address
	case !m.hasFamily(from, f) || !m.hasFamily(to, f):
		return NA, nil
	}
	// The verdict alone (the explanation of the few cells shown is built on demand).
	allowed, err := m.explainer.Allowed(m.request(fi, pi, from, to))
	if err != nil {
		return "", fmt.Errorf("judging %s -> %s %s %s: %w", m.Pods[from].Key, m.destination(to), m.Ports[pi], familyName(f), err)
	}
	if allowed {
		return Allowed, nil
	}
	return Denied, nil
}

// Verdict returns the verdict of a cell by family, port, source pod key and
// destination (pod key or address); ok is false when the matrix has no such cell.
func (m *Matrix) Verdict(f ruleset.Family, port Port, from, to string) (v Verdict, ok bool) {
	fi, pi, fr, t := m.index(f, port, from, to)
	if fi < 0 || pi < 0 || fr < 0 || t < 0 {
		return "", false
	}
	return m.verdicts[fi][pi][fr][t], true
}

func (m *Matrix) index(f ruleset.Family, port Port, from, to string) (fi, pi, fr, t int) {
	fi = slices.Index(m.Families, f)
	pi = slices.Index(m.Ports, port)
	fr = slices.IndexFunc(m.Pods, func(p *Pod) bool { return p.Key == from })
	t = slices.IndexFunc(m.Pods, func(p *Pod) bool { return p.Key == to })
	if t < 0 {
		if a, err := netip.ParseAddr(to); err == nil {
			if i := slices.Index(m.Addrs, a); i >= 0 {
				t = len(m.Pods) + i
			}
		}
	}
	return fi, pi, fr, t
}

// Explain returns the explanation text of a cell (what `nftpolicy explain` prints).
func (m *Matrix) Explain(f ruleset.Family, port Port, from, to string) (string, error) {
	fi, pi, fr, t := m.index(f, port, from, to)
	if fi < 0 || pi < 0 || fr < 0 || t < 0 {
		return "", fmt.Errorf("no cell %s -> %s %s %s in the matrix", from, to, port, familyName(f))
	}
	return m.explainCell(fi, pi, fr, t), nil
}

// explainCell is the explanation text of a cell; cells no ruleset judges say why.
func (m *Matrix) explainCell(fi, pi, from, to int) string {
	switch m.verdicts[fi][pi][from][to] {
	case Self:
		return fmt.Sprintf("%s -> itself %s: ALLOWED\n  a pod's traffic to its own address stays inside the pod; no node judges it\n", m.Pods[from].Key, m.Ports[pi])
	case NA:
		return fmt.Sprintf("%s -> %s %s: no %s address on both ends\n", m.Pods[from].Key, m.destination(to), m.Ports[pi], familyName(m.Families[fi]))
	}
	ex, err := m.explainer.Explain(m.request(fi, pi, from, to))
	if err != nil {
		// compute judged this very request without error.
		return "error: " + err.Error() + "\n"
	}
	return ex.Format()
}
