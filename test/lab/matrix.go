package lab

import (
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
)

// Matrix is a reachability table: rows are sources ("from"), columns are
// destinations ("to"); a cell is allowed (".") or denied ("X"). Expected
// matrices are built by starting from all-allowed (or all-denied) and marking
// cells, rows or columns:
//
//	want := lab.NewMatrix(names, names, true).
//		DenyTo("b").   // ingress policy isolates b ...
//		Allow("a", "b"). // ... except from a
//		AllowSelf()    // a pod reaching itself never crosses the node
//
// Setters panic on names that are not rows/columns of the matrix, which is
// always a bug in the test.
type Matrix struct {
	// Title is rendered in the top-left corner, e.g. "tcp/80 IPv4".
	Title string

	froms, tos []string
	cells      map[[2]string]cell
}

type cell struct {
	allowed bool
	note    string // why (observed matrices): e.g. "i/o timeout"
}

// NewMatrix returns a matrix with the given rows and columns and every cell
// set to allowed (true: ".", false: "X").
func NewMatrix(froms, tos []string, allowed bool) *Matrix {
	m := &Matrix{cells: make(map[[2]string]cell)}
	for _, f := range froms {
		m.addRow(f)
	}
	for _, t := range tos {
		m.addCol(t)
	}
	for _, f := range m.froms {
		for _, t := range m.tos {
			m.cells[[2]string{f, t}] = cell{allowed: allowed}
		}
	}
	return m
}

// PodNames returns the names of pods, for NewMatrix.
func PodNames(pods []*Pod) []string {
	names := make([]string, len(pods))
	for i, p := range pods {
		names[i] = p.Name
	}
	return names
}

// MatrixFromResults builds an observed matrix from ProbeCases results; rows
// and columns appear in first-seen order and failure reasons become cell
// notes. If several cases map to one cell, the cell is allowed only if all
// of them succeeded.
func MatrixFromResults(title string, cases []Case, results []ProbeResult) *Matrix {
	m := &Matrix{Title: title, cells: make(map[[2]string]cell)}
	for i, c := range cases {
		m.addRow(c.FromName)
		m.addCol(c.ToName)
		r := results[i]
		k := [2]string{c.FromName, c.ToName}
		old, seen := m.cells[k]
		if seen && !old.allowed {
			continue
		}
		nc := cell{allowed: r.OK}
		if r.Err != nil {
			nc.note = r.Err.Error()
		}
		m.cells[k] = nc
	}
	return m
}

func (m *Matrix) addRow(f string) {
	if !slices.Contains(m.froms, f) {
		m.froms = append(m.froms, f)
	}
}

func (m *Matrix) addCol(t string) {
	if !slices.Contains(m.tos, t) {
		m.tos = append(m.tos, t)
	}
}

// Froms returns the row names.
func (m *Matrix) Froms() []string { return slices.Clone(m.froms) }

// Tos returns the column names.
func (m *Matrix) Tos() []string { return slices.Clone(m.tos) }

// Get reports whether from→to is allowed; ok is false for a cell the matrix
// does not have.
func (m *Matrix) Get(from, to string) (allowed, ok bool) {
	c, ok := m.cells[[2]string{from, to}]
	return c.allowed, ok
}

// Note returns the note of a cell (the failure reason in observed matrices).
func (m *Matrix) Note(from, to string) string {
	return m.cells[[2]string{from, to}].note
}

func (m *Matrix) mustRow(f string) {
	if !slices.Contains(m.froms, f) {
		panic(fmt.Sprintf("lab.Matrix: unknown row (from) %q; rows are %v", f, m.froms))
	}
}

func (m *Matrix) mustCol(t string) {
	if !slices.Contains(m.tos, t) {
		panic(fmt.Sprintf("lab.Matrix: unknown column (to) %q; columns are %v", t, m.tos))
	}
}

// Set sets one cell.
func (m *Matrix) Set(from, to string, allowed bool) *Matrix {
	m.mustRow(from)
	m.mustCol(to)
	m.cells[[2]string{from, to}] = cell{allowed: allowed}
	return m
}

// Allow marks from→to allowed.
func (m *Matrix) Allow(from, to string) *Matrix { return m.Set(from, to, true) }

// Deny marks from→to denied.
func (m *Matrix) Deny(from, to string) *Matrix { return m.Set(from, to, false) }

// SetFrom sets the whole row of from (all egress of from).
func (m *Matrix) SetFrom(from string, allowed bool) *Matrix {
	m.mustRow(from)
	for _, t := range m.tos {
		m.cells[[2]string{from, t}] = cell{allowed: allowed}
	}
	return m
}

// SetTo sets the whole column of to (all ingress of to).
func (m *Matrix) SetTo(to string, allowed bool) *Matrix {
	m.mustCol(to)
	for _, f := range m.froms {
		m.cells[[2]string{f, to}] = cell{allowed: allowed}
	}
	return m
}

// DenyFrom denies all egress of from (its row).
func (m *Matrix) DenyFrom(from string) *Matrix { return m.SetFrom(from, false) }

// DenyTo denies all ingress of to (its column).
func (m *Matrix) DenyTo(to string) *Matrix { return m.SetTo(to, false) }

// AllowFrom allows all egress of from (its row).
func (m *Matrix) AllowFrom(from string) *Matrix { return m.SetFrom(from, true) }

// AllowTo allows all ingress of to (its column).
func (m *Matrix) AllowTo(to string) *Matrix { return m.SetTo(to, true) }

// AllowSelf allows every cell whose row and column are the same name. In the
// routed topology a pod reaching its own address never leaves its namespace,
// so no node policy can deny it.
func (m *Matrix) AllowSelf() *Matrix {
	for _, f := range m.froms {
		if slices.Contains(m.tos, f) {
			m.cells[[2]string{f, f}] = cell{allowed: true}
		}
	}
	return m
}

// Clone returns a deep copy.
func (m *Matrix) Clone() *Matrix {
	c := &Matrix{Title: m.Title, froms: m.Froms(), tos: m.Tos(), cells: make(map[[2]string]cell, len(m.cells))}
	for k, v := range m.cells {
		c.cells[k] = v
	}
	return c
}

// Equal reports whether both matrices have the same rows, columns and
// allowed/denied cells (titles and notes are ignored).
func (m *Matrix) Equal(o *Matrix) bool { return Diff(m, o) == "" }

func (m *Matrix) symbol(from, to string) string {
	c, ok := m.cells[[2]string{from, to}]
	switch {
	case !ok:
		return "?"
	case c.allowed:
		return "."
	default:
		return "X"
	}
}

// String renders the matrix like the upstream Kubernetes netpol tests:
//
//	tcp/80 IPv4  a  b  c
//	a            .  X  .
//	b            .  .  .
//	c            .  X  .
func (m *Matrix) String() string {
	var sb strings.Builder
	tw := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', 0)
	corner := m.Title
	if corner == "" {
		corner = "from\\to"
	}
	fmt.Fprint(tw, corner)
	for _, t := range m.tos {
		fmt.Fprint(tw, "\t", t)
	}
	fmt.Fprintln(tw)
	for _, f := range m.froms {
		fmt.Fprint(tw, f)
		for _, t := range m.tos {
			fmt.Fprint(tw, "\t", m.symbol(f, t))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	return sb.String()
}

// Diff compares an expected and an actual (observed) matrix and returns ""
// if they agree, otherwise a description listing each mismatching cell
// (with the actual cell's note, i.e. the probe failure reason), followed by
// both tables.
func Diff(expected, actual *Matrix) string {
	froms := slices.Clone(expected.froms)
	for _, f := range actual.froms {
		if !slices.Contains(froms, f) {
			froms = append(froms, f)
		}
	}
	tos := slices.Clone(expected.tos)
	for _, t := range actual.tos {
		if !slices.Contains(tos, t) {
			tos = append(tos, t)
		}
	}
	var lines []string
	for _, f := range froms {
		for _, t := range tos {
			e, a := expected.symbol(f, t), actual.symbol(f, t)
			if e == a {
				continue
			}
			line := fmt.Sprintf("  %s -> %s: expected %s, got %s", f, t, describe(e), describe(a))
			if n := actual.Note(f, t); n != "" {
				line += " (" + n + ")"
			}
			lines = append(lines, line)
		}
	}
	if len(lines) == 0 {
		return ""
	}
	title := actual.Title
	if title == "" {
		title = expected.Title
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "reachability %s: %d of %d cells differ:\n", title, len(lines), len(froms)*len(tos))
	sb.WriteString(strings.Join(lines, "\n"))
	sb.WriteString("\nexpected:\n")
	exp := expected
	if exp.Title == "" {
		exp = exp.Clone()
		exp.Title = title
	}
	sb.WriteString(exp.String())
	sb.WriteString("actual:\n")
	sb.WriteString(actual.String())
	return sb.String()
}

func describe(sym string) string {
	switch sym {
	case ".":
		return "allowed (.)"
	case "X":
		return "denied (X)"
	}
	return "missing (?)"
}
