package reach

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"

	"github.com/nftpolicy/nftpolicy/pkg/manifest"
)

// Change is a cell whose verdict differs between before and after.
type Change struct {
	Family string `json:"family"`
	Port   string `json:"port"`
	// From is a pod key; To a pod key or an address.
	From string `json:"from"`
	To   string `json:"to"`
	// FromGroup and ToGroup are the after side's group IDs.
	FromGroup string  `json:"fromGroup"`
	ToGroup   string  `json:"toGroup"`
	Before    Verdict `json:"before"`
	After     Verdict `json:"after"`
	// Explanation is the after side's explanation of the cell.
	Explanation string `json:"explanation"`
}

// Revoked reports whether the change takes away a flow that was allowed.
func (c Change) Revoked() bool { return c.Before == Allowed && c.After == Denied }

// DiffReport is the JSON document of `nftpolicy reach --before A --after B -o json`.
type DiffReport struct {
	Families []string `json:"families"`
	Ports    []string `json:"ports"`
	// OnlyBefore and OnlyAfter are the pods (or workload stand-ins) of one side only:
	// added or removed workloads; their cells are not compared.
	OnlyBefore []string `json:"onlyBefore,omitempty"`
	OnlyAfter  []string `json:"onlyAfter,omitempty"`
	Notes      []string `json:"notes,omitempty"`
	// Compared counts the cells compared.
	Compared int      `json:"compared"`
	Changes  []Change `json:"changes"`
	// Revoked counts the changes from allowed to denied (exit status 1 when any).
	Revoked int `json:"revoked"`

	// groups are the after side's groups and their sizes, for collapsing.
	groups []*Group
	after  *Matrix
}

// Diff judges the pods both before and after have, over the same ports and addresses,
// and returns the cells whose verdict changes. Ports default to the container ports
// either side's pods declare. A pod without an address gets the same synthetic one on
// both sides.
func Diff(before, after *manifest.Objects, opts Options) (*DiffReport, error) {
	popB, popA := collect(before, opts.Namespaces), collect(after, opts.Namespaces)
	if err := synthesize(popB, popA); err != nil {
		return nil, err
	}
	d := &DiffReport{}
	common := map[string]bool{}
	for _, p := range popA.pods {
		if popB.byKey[p.Key] != nil {
			common[p.Key] = true
		} else {
			d.OnlyAfter = append(d.OnlyAfter, p.Key)
		}
	}
	for _, p := range popB.pods {
		if !common[p.Key] {
			d.OnlyBefore = append(d.OnlyBefore, p.Key)
		}
	}
	popB.restrict(common)
	popA.restrict(common)
	ports := opts.Ports
	if len(ports) == 0 {
		ports = defaultPorts(append(slices.Clone(popB.pods), popA.pods...))
	}
	mB, err := compute(popB, opts, ports)
	if err != nil {
		return nil, fmt.Errorf("before: %w", err)
	}
	mA, err := compute(popA, opts, ports)
	if err != nil {
		return nil, fmt.Errorf("after: %w", err)
	}
	d.groups, d.after = mA.Groups, mA
	d.Notes = notes(mA.Pods)
	for _, f := range mA.Families {
		d.Families = append(d.Families, familyName(f))
	}
	for _, p := range mA.Ports {
		d.Ports = append(d.Ports, p.String())
	}
	// Before's indexes of the after side's rows and columns.
	rowB := make([]int, len(mA.Pods))
	for i, p := range mA.Pods {
		rowB[i] = slices.IndexFunc(mB.Pods, func(q *Pod) bool { return q.Key == p.Key })
	}
	colB := func(to int) int {
		if to < len(mA.Pods) {
			return rowB[to]
		}
		return to - len(mA.Pods) + len(mB.Pods)
	}
	for fi := range mA.Families {
		for pi, port := range mA.Ports {
			for from := range mA.Pods {
				for to := range len(mA.Pods) + len(mA.Addrs) {
					d.Compared++
					vb, va := mB.verdicts[fi][pi][rowB[from]][colB(to)], mA.verdicts[fi][pi][from][to]
					if vb == va {
						continue
					}
					c := Change{Family: familyName(mA.Families[fi]), Port: port.String(), From: mA.Pods[from].Key, To: mA.destination(to),
						FromGroup: mA.Pods[from].Group, ToGroup: mA.groupOfColumn(to), Before: vb, After: va, Explanation: mA.explainCell(fi, pi, from, to)}
					if c.Revoked() {
						d.Revoked++
					}
					d.Changes = append(d.Changes, c)
				}
			}
		}
	}
	if d.Changes == nil {
		d.Changes = []Change{}
	}
	return d, nil
}

// groupOfColumn is the group ID of column to.
func (m *Matrix) groupOfColumn(to int) string {
	if to < len(m.Pods) {
		return m.Pods[to].Group
	}
	return "address/" + m.Addrs[to-len(m.Pods)].String()
}

// restrict keeps only the pods in keep (the snapshot keeps every pod: they still
// match selectors and claim addresses).
func (pop *population) restrict(keep map[string]bool) {
	pop.pods = slices.DeleteFunc(pop.pods, func(p *Pod) bool { return !keep[p.Key] })
	for id, g := range pop.groups {
		g.Pods = slices.DeleteFunc(g.Pods, func(k string) bool { return !keep[k] })
		if len(g.Pods) == 0 {
			delete(pop.groups, id)
		}
	}
	for k := range pop.byKey {
		if !keep[k] {
			delete(pop.byKey, k)
		}
	}
}

// WriteJSON writes the diff as indented JSON.
func (d *DiffReport) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(d)
}

// changeBlock is the changes between two groups for one family and port.
type changeBlock struct {
	family, port, from, to string
	changes                []Change
}

// blocks groups the changes by family, port and group pair, in order.
func (d *DiffReport) blocks() []changeBlock {
	// Changes come row by row, so the cells of one group pair are not contiguous when
	// a group has several pods: gather them by key, in order of first appearance.
	var out []changeBlock
	index := map[string]int{}
	for _, c := range d.Changes {
		k := c.Family + " " + c.Port + " " + c.FromGroup + " " + c.ToGroup
		i, ok := index[k]
		if !ok {
			i = len(out)
			index[k] = i
			out = append(out, changeBlock{family: c.Family, port: c.Port, from: c.FromGroup, to: c.ToGroup})
		}
		out[i].changes = append(out[i].changes, c)
	}
	return out
}

// collapsed reports whether a block's changes cover every pair of the two groups
// (a pod to itself aside) with one before and one after verdict: "all pods of X → all
// pods of Y".
func (d *DiffReport) collapsed(b changeBlock) bool {
	rows, cols := d.size(b.from), d.size(b.to)
	pairs := rows * cols
	if b.from == b.to {
		pairs -= rows
	}
	if pairs <= 1 || len(b.changes) != pairs {
		return false
	}
	for _, c := range b.changes {
		if c.Before != b.changes[0].Before || c.After != b.changes[0].After {
			return false
		}
	}
	return true
}

func (d *DiffReport) size(group string) int {
	for _, g := range d.groups {
		if g.ID == group {
			if g.Kind == KindAddress {
				return 1
			}
			return len(g.Pods)
		}
	}
	return 0
}

func (d *DiffReport) label(group string) string {
	for _, g := range d.groups {
		if g.ID == group {
			return g.Label()
		}
	}
	return group
}

// WriteText prints the changes, "all pods of X → all pods of Y" where a whole block
// changed alike.
func (d *DiffReport) WriteText(w io.Writer) error {
	ew := &errWriter{w: w}
	for _, n := range d.Notes {
		ew.printf("note: %s\n", n)
	}
	for _, p := range d.OnlyBefore {
		ew.printf("only before (removed, not compared): %s\n", p)
	}
	for _, p := range d.OnlyAfter {
		ew.printf("only after (added, not compared): %s\n", p)
	}
	last := ""
	for _, b := range d.blocks() {
		if h := b.port + " " + b.family; h != last {
			ew.printf("\n%s\n", h)
			last = h
		}
		if d.collapsed(b) {
			c := b.changes[0]
			ew.printf("  %s all pods of %s -> all pods of %s (%d pairs): %s -> %s\n", changeMark(c), d.label(b.from), d.label(b.to), len(b.changes), c.Before, verdictText(c.After))
			continue
		}
		for _, c := range b.changes {
			ew.printf("  %s %s -> %s: %s -> %s\n", changeMark(c), c.From, c.To, c.Before, verdictText(c.After))
		}
	}
	newly := 0
	for _, c := range d.Changes {
		if c.Before == Denied && c.After == Allowed {
			newly++
		}
	}
	ew.printf("\n%d of %d cells changed: %d newly denied (allowed before), %d newly allowed\n", len(d.Changes), d.Compared, d.Revoked, newly)
	return ew.err
}

// changeMark is "-" for a flow taken away, "+" for one granted, "~" otherwise.
func changeMark(c Change) string {
	switch {
	case c.Revoked():
		return "-"
	case c.Before == Denied && c.After == Allowed:
		return "+"
	}
	return "~"
}

func verdictText(v Verdict) string {
	if v == Denied {
		return "DENIED"
	}
	return string(v)
}
