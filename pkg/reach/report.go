package reach

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// Cell is one (source pod, destination) verdict.
type Cell struct {
	From    string  `json:"from"`
	To      string  `json:"to"`
	Verdict Verdict `json:"verdict"`
	// Explanation is what `nftpolicy explain` prints for the cell.
	Explanation string `json:"explanation,omitempty"`
}

// Block is the cells between the pods of two groups for one family and port.
type Block struct {
	Family string `json:"family"`
	Port   string `json:"port"`
	// From and To are group IDs.
	From, To string
	// Verdict is the cells' common verdict (a pod to itself counts as any), or Mixed.
	Verdict Verdict `json:"verdict"`
	// Pairs counts the cells but a pod's to itself; Allowed and Denied those with
	// that verdict (the rest have no address of the family).
	Pairs   int `json:"pairs"`
	Allowed int `json:"allowed"`
	Denied  int `json:"denied"`
	// Explanation is the explanation of a representative cell: the first cell of a
	// uniform block (it holds for all of its pairs), the first denied cell of a mixed one.
	Explanation string `json:"explanation"`
	// Cells lists every cell of a mixed block (of every block with expand).
	Cells []Cell `json:"cells,omitempty"`
	// Rows and Cols are the block's size, for "all N×M pairs".
	Rows, Cols int `json:"-"`
	// fromLabel and toLabel name the groups for people.
	fromLabel, toLabel string
}

// blockJSON fixes the JSON names of From and To.
type blockJSON struct {
	Family      string  `json:"family"`
	Port        string  `json:"port"`
	From        string  `json:"from"`
	To          string  `json:"to"`
	Verdict     Verdict `json:"verdict"`
	Pairs       int     `json:"pairs"`
	Allowed     int     `json:"allowed"`
	Denied      int     `json:"denied"`
	Summary     string  `json:"summary"`
	Explanation string  `json:"explanation"`
	Cells       []Cell  `json:"cells,omitempty"`
}

// MarshalJSON implements json.Marshaler.
func (b Block) MarshalJSON() ([]byte, error) {
	return json.Marshal(blockJSON{b.Family, b.Port, b.From, b.To, b.Verdict, b.Pairs, b.Allowed, b.Denied, b.Summary(), b.Explanation, b.Cells})
}

// Summary is the block's verdict for people: "allowed: all 2×3 pairs", "mixed: 1 of 4
// allowed".
func (b *Block) Summary() string {
	switch b.Verdict {
	case Mixed:
		return fmt.Sprintf("mixed: %d of %d pairs allowed, %d denied", b.Allowed, b.Pairs, b.Denied)
	case Self:
		return "a pod to itself: always allowed"
	}
	if b.Pairs > 1 {
		return fmt.Sprintf("%s: holds for all %d pairs (%d×%d pods), all pods of %s → all of %s", b.Verdict, b.Pairs, b.Rows, b.Cols, b.fromLabel, b.toLabel)
	}
	return string(b.Verdict)
}

// groupSpan is where a group's pods (or address) sit among the matrix's rows/columns.
func (m *Matrix) groupSpans() map[string][2]int {
	spans := map[string][2]int{}
	i := 0
	for _, g := range m.Groups {
		n := len(g.Pods)
		if g.Kind == KindAddress {
			n = 1
		}
		spans[g.ID] = [2]int{i, i + n}
		i += n
	}
	return spans
}

// Blocks collapses the matrix into group × group blocks, in family, port, source
// group, destination group order. expand lists the cells of uniform blocks too.
func (m *Matrix) Blocks(expand bool) []Block {
	spans := m.groupSpans()
	var out []Block
	for fi, f := range m.Families {
		for pi, port := range m.Ports {
			for _, gf := range m.Groups {
				if gf.Kind == KindAddress {
					continue
				}
				rs := spans[gf.ID]
				for _, gt := range m.Groups {
					cs := spans[gt.ID]
					b := Block{Family: familyName(f), Port: port.String(), From: gf.ID, To: gt.ID, Rows: rs[1] - rs[0], Cols: cs[1] - cs[0],
						fromLabel: gf.Label(), toLabel: gt.Label()}
					rep := [2]int{-1, -1}
					firstDenied := [2]int{-1, -1}
					var common Verdict
					for r := rs[0]; r < rs[1]; r++ {
						for c := cs[0]; c < cs[1]; c++ {
							v := m.verdicts[fi][pi][r][c]
							if v != Self {
								b.Pairs++
							}
							switch v {
							case Allowed:
								b.Allowed++
							case Denied:
								b.Denied++
								if firstDenied[0] < 0 {
									firstDenied = [2]int{r, c}
								}
							}
							if v == Self {
								continue
							}
							if rep[0] < 0 {
								rep = [2]int{r, c}
							}
							switch common {
							case "":
								common = v
							case v:
							default:
								common = Mixed
							}
						}
					}
					if common == "" { // only a pod to itself
						common, rep = Self, [2]int{rs[0], cs[0]}
					}
					b.Verdict = common
					if common == Mixed && firstDenied[0] >= 0 {
						rep = firstDenied
					}
					b.Explanation = m.explainCell(fi, pi, rep[0], rep[1])
					if common == Mixed || expand {
						for r := rs[0]; r < rs[1]; r++ {
							for c := cs[0]; c < cs[1]; c++ {
								b.Cells = append(b.Cells, Cell{From: m.Pods[r].Key, To: m.destination(c), Verdict: m.verdicts[fi][pi][r][c],
									Explanation: m.explainCell(fi, pi, r, c)})
							}
						}
					}
					out = append(out, b)
				}
			}
		}
	}
	return out
}

// Report is the JSON document of `nftpolicy reach -o json`.
type Report struct {
	Families []string `json:"families"`
	Ports    []string `json:"ports"`
	Groups   []*Group `json:"groups"`
	Pods     []*Pod   `json:"pods"`
	// Addresses are the extra destinations.
	Addresses []string  `json:"addresses,omitempty"`
	Skipped   []Skipped `json:"skipped,omitempty"`
	Notes     []string  `json:"notes,omitempty"`
	Blocks    []Block   `json:"blocks"`
}

// Report builds the report of m.
func (m *Matrix) Report(expand bool) *Report {
	r := &Report{Groups: m.Groups, Pods: m.Pods, Skipped: m.Skipped, Notes: m.Notes(), Blocks: m.Blocks(expand)}
	for _, f := range m.Families {
		r.Families = append(r.Families, familyName(f))
	}
	for _, p := range m.Ports {
		r.Ports = append(r.Ports, p.String())
	}
	for _, a := range m.Addrs {
		r.Addresses = append(r.Addresses, a.String())
	}
	if r.Pods == nil {
		r.Pods = []*Pod{}
	}
	if r.Groups == nil {
		r.Groups = []*Group{}
	}
	return r
}

// Notes say which pods are stand-ins or have synthetic addresses or nodes.
func (m *Matrix) Notes() []string {
	return notes(m.Pods)
}

func notes(pods []*Pod) []string {
	var ips, nodes, workloads []string
	for _, p := range pods {
		if p.Workload != "" {
			workloads = append(workloads, p.Workload)
		}
		if p.SyntheticIPs {
			ips = append(ips, p.Key)
		}
		if p.SyntheticNode {
			nodes = append(nodes, p.Key)
		}
	}
	var out []string
	if len(workloads) > 0 {
		out = append(out, fmt.Sprintf("one pod stands in for each workload that has no pod in the input: %s", names(workloads)))
	}
	if len(ips) > 0 {
		out = append(out, fmt.Sprintf("pods without an IP got synthetic addresses from %s and %s: %s", SyntheticV4, SyntheticV6, names(ips)))
	}
	if len(nodes) > 0 {
		out = append(out, fmt.Sprintf("pods without a node are on the synthetic node %s: %s", SyntheticNode, names(nodes)))
	}
	return out
}

// names lists the first few names (the JSON pods carry the flags of every pod).
func names(ns []string) string {
	const most = 8
	if len(ns) <= most {
		return strings.Join(ns, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(ns[:most], ", "), len(ns)-most)
}

// WriteJSON writes the report as indented JSON.
func (m *Matrix) WriteJSON(w io.Writer, expand bool) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(m.Report(expand))
}

// symbol is a block's mark in the terminal table.
func symbol(b *Block) string {
	switch b.Verdict {
	case Allowed:
		return "."
	case Denied:
		return "X"
	case Self:
		return "-"
	case NA:
		return " "
	}
	return strconv.Itoa(b.Allowed) + "/" + strconv.Itoa(b.Allowed+b.Denied)
}

// WriteText writes one table per family and port: rows are source groups, columns
// destination groups (numbered; the numbers are the rows'), then with expand the pod
// cells of every mixed block.
func (m *Matrix) WriteText(w io.Writer, expand bool) error {
	ew := &errWriter{w: w}
	blocks := m.Blocks(false)
	byKey := map[string]*Block{}
	for i := range blocks {
		b := &blocks[i]
		byKey[b.Family+" "+b.Port+" "+b.From+" "+b.To] = b
	}
	for _, n := range m.Notes() {
		ew.printf("note: %s\n", n)
	}
	for _, s := range m.Skipped {
		ew.printf("skipped %s: %s\n", s.Pod, s.Reason)
	}
	labelWidth := 0
	for _, g := range m.Groups {
		labelWidth = max(labelWidth, len(g.Label()))
	}
	var mixed []*Block
	for _, f := range m.Families {
		for _, port := range m.Ports {
			ew.printf("\n%s %s (rows from, columns to)\n", port, familyName(f))
			width := 3
			for _, b := range blocks {
				if b.Family == familyName(f) && b.Port == port.String() {
					width = max(width, len(symbol(&b))+1)
				}
			}
			ew.printf("%*s", labelWidth+5, "")
			for i := range m.Groups {
				ew.printf("%*d", width, i+1)
			}
			ew.printf("\n")
			for i, gf := range m.Groups {
				if gf.Kind == KindAddress {
					continue
				}
				ew.printf("%3d  %-*s", i+1, labelWidth, gf.Label())
				for _, gt := range m.Groups {
					b := byKey[familyName(f)+" "+port.String()+" "+gf.ID+" "+gt.ID]
					ew.printf("%*s", width, symbol(b))
					if b.Verdict == Mixed {
						mixed = append(mixed, b)
					}
				}
				ew.printf("\n")
			}
			for i, g := range m.Groups {
				if g.Kind == KindAddress {
					ew.printf("%3d  %s (address)\n", i+1, g.Label())
				}
			}
		}
	}
	ew.printf("\n. allowed  X denied  - a pod to itself  a/n mixed: a of n pairs allowed  (blank: no address of the family)\n")
	if len(mixed) > 0 && !expand {
		ew.printf("%d mixed block(s); --expand lists their pods\n", len(mixed))
	}
	if expand {
		for _, b := range mixed {
			ew.printf("\n%s %s %s -> %s: %s\n", b.Port, b.Family, m.groupLabel(b.From), m.groupLabel(b.To), b.Summary())
			for _, c := range b.Cells {
				ew.printf("  %s %s -> %s\n", verdictMark(c.Verdict), c.From, c.To)
			}
		}
	}
	return ew.err
}

// groupLabel is the label of the group with that ID.
func (m *Matrix) groupLabel(id string) string {
	for _, g := range m.Groups {
		if g.ID == id {
			return g.Label()
		}
	}
	return id
}

func verdictMark(v Verdict) string {
	return symbol(&Block{Verdict: v})
}

// errWriter keeps the first write error.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) printf(format string, args ...any) {
	if e.err == nil {
		_, e.err = fmt.Fprintf(e.w, format, args...)
	}
}

// ParseAddrs parses destination addresses (--to-addr).
func ParseAddrs(ss []string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, s := range ss {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("address %q: %w", s, err)
		}
		out = append(out, a.Unmap())
	}
	return out, nil
}
