package reach

import (
	"fmt"
	"html/template"
	"io"
)

// The HTML page is one self-contained document: inline CSS and JavaScript, no URL of
// any kind (a Content-Security-Policy forbids loading anything), so that it can be
// attached to a CI run or a pull request and opened anywhere. Hovering a cell shows
// its explanation in a tooltip.

// htmlCell is one cell of a table on the page.
type htmlCell struct {
	Class string
	Style template.CSS
	Text  string
	Tip   string
	// Data names the cell for tests and scripts: "from|to".
	Data string
}

type htmlRow struct {
	Label string
	Cells []htmlCell
}

type htmlTable struct {
	Title   string
	Columns []string // labels
	Numbers bool     // columns numbered like the rows
	Rows    []htmlRow
}

type htmlPage struct {
	Title  string
	Notes  []string
	Tables []htmlTable
	Legend bool
}

// blockStyle shades a mixed block by its share of allowed pairs, from the denied
// colour to the allowed one.
func blockStyle(b *Block) template.CSS {
	if b.Verdict != Mixed || b.Allowed+b.Denied == 0 {
		return ""
	}
	r := float64(b.Allowed) / float64(b.Allowed+b.Denied)
	// Denied #d9534f (217,83,79), allowed #5cb85c (92,184,92).
	mix := func(d, a int) int { return int(float64(d) + r*float64(a-d)) }
	return template.CSS(fmt.Sprintf("background-color: rgb(%d,%d,%d)", mix(217, 92), mix(83, 184), mix(79, 92))) //nolint:gosec // G203: three integers computed here, no input
}

func cellText(v Verdict) string {
	switch v {
	case Allowed:
		return "✓"
	case Denied:
		return "✗"
	case Self:
		return "–"
	}
	return ""
}

// WriteHTML writes the matrix as one self-contained page: a heat map per family and
// port (group × group; mixed blocks shaded by their share of allowed pairs and
// expanded per pod below it), each cell's explanation on hover.
func (m *Matrix) WriteHTML(w io.Writer) error {
	blocks := m.Blocks(false)
	byKey := map[string]*Block{}
	for i := range blocks {
		b := &blocks[i]
		byKey[b.Family+" "+b.Port+" "+b.From+" "+b.To] = b
	}
	page := htmlPage{Title: "nftpolicy reach", Notes: m.Notes(), Legend: true}
	for _, s := range m.Skipped {
		page.Notes = append(page.Notes, fmt.Sprintf("skipped %s: %s", s.Pod, s.Reason))
	}
	var cols []string
	for _, g := range m.Groups {
		cols = append(cols, g.Label())
	}
	for _, f := range m.Families {
		for _, port := range m.Ports {
			t := htmlTable{Title: fmt.Sprintf("%s %s", port, familyName(f)), Columns: cols, Numbers: true}
			var mixed []*Block
			for _, gf := range m.Groups {
				if gf.Kind == KindAddress {
					continue
				}
				row := htmlRow{Label: gf.Label()}
				for _, gt := range m.Groups {
					b := byKey[familyName(f)+" "+port.String()+" "+gf.ID+" "+gt.ID]
					text := cellText(b.Verdict)
					if b.Verdict == Mixed {
						text = fmt.Sprintf("%d/%d", b.Allowed, b.Allowed+b.Denied)
						mixed = append(mixed, b)
					}
					row.Cells = append(row.Cells, htmlCell{Class: verdictClass(b.Verdict), Style: blockStyle(b), Text: text,
						Tip:  fmt.Sprintf("%s → %s %s %s\n%s\n\n%s", gf.Label(), gt.Label(), port, familyName(f), b.Summary(), b.Explanation),
						Data: gf.ID + "|" + gt.ID})
				}
				t.Rows = append(t.Rows, row)
			}
			page.Tables = append(page.Tables, t)
			for _, b := range mixed {
				page.Tables = append(page.Tables, m.mixedTable(b))
			}
		}
	}
	return pageTemplate.Execute(w, page)
}

// mixedTable is a mixed block expanded per pod.
func (m *Matrix) mixedTable(b *Block) htmlTable {
	t := htmlTable{Title: fmt.Sprintf("%s %s: %s → %s, %s", b.Port, b.Family, m.groupLabel(b.From), m.groupLabel(b.To), b.Summary())}
	rowIndex := map[string]int{}
	colIndex := map[string]int{}
	for _, c := range b.Cells {
		if _, ok := colIndex[c.To]; !ok {
			colIndex[c.To] = len(t.Columns)
			t.Columns = append(t.Columns, c.To)
		}
	}
	for _, c := range b.Cells {
		i, ok := rowIndex[c.From]
		if !ok {
			i = len(t.Rows)
			rowIndex[c.From] = i
			t.Rows = append(t.Rows, htmlRow{Label: c.From, Cells: make([]htmlCell, len(t.Columns))})
		}
		t.Rows[i].Cells[colIndex[c.To]] = htmlCell{Class: verdictClass(c.Verdict), Text: cellText(c.Verdict), Tip: c.Explanation, Data: c.From + "|" + c.To}
	}
	return t
}

func verdictClass(v Verdict) string {
	switch v {
	case Allowed:
		return "allowed"
	case Denied:
		return "denied"
	case Mixed:
		return "mixed"
	case Self:
		return "self"
	}
	return "na"
}

// WriteHTML writes the changes as one self-contained page: one row per changed cell,
// the after side's explanation on hover.
func (d *DiffReport) WriteHTML(w io.Writer) error {
	page := htmlPage{Title: "nftpolicy reach: changes", Notes: d.Notes}
	for _, p := range d.OnlyBefore {
		page.Notes = append(page.Notes, "only before (removed, not compared): "+p)
	}
	for _, p := range d.OnlyAfter {
		page.Notes = append(page.Notes, "only after (added, not compared): "+p)
	}
	page.Notes = append(page.Notes, fmt.Sprintf("%d of %d cells changed, %d newly denied", len(d.Changes), d.Compared, d.Revoked))
	t := htmlTable{Title: "changed cells", Columns: []string{"port", "family", "to", "before", "after"}}
	for _, c := range d.Changes {
		t.Rows = append(t.Rows, htmlRow{Label: c.From, Cells: []htmlCell{
			{Text: c.Port}, {Text: c.Family}, {Text: c.To},
			{Class: verdictClass(c.Before), Text: string(c.Before)},
			{Class: verdictClass(c.After), Text: string(c.After), Tip: c.Explanation, Data: c.From + "|" + c.To},
		}})
	}
	page.Tables = append(page.Tables, t)
	return pageTemplate.Execute(w, page)
}

var pageTemplate = template.Must(template.New("page").Funcs(template.FuncMap{"inc": func(i int) int { return i + 1 }}).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>{{.Title}}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h2 { font-size: 1.05em; margin-top: 2em; }
table.matrix { border-collapse: collapse; font-size: 0.85em; }
table.matrix th, table.matrix td { border: 1px solid #ccc; padding: 0.2em 0.45em; }
table.matrix th.row { text-align: left; font-weight: normal; white-space: nowrap; }
table.matrix thead th { font-weight: normal; }
td.allowed { background-color: #5cb85c; color: #fff; text-align: center; }
td.denied { background-color: #d9534f; color: #fff; text-align: center; }
td.mixed { color: #fff; text-align: center; }
td.self { background-color: #e6e6e6; color: #888; text-align: center; }
td.na { background-color: #fff; }
td[data-tip] { cursor: help; }
td[data-tip]:hover { outline: 2px solid #222; }
#tip { display: none; position: fixed; z-index: 10; max-width: 60em; max-height: 80vh; overflow: auto; margin: 0;
  padding: 0.6em 0.8em; background: #fffff0; border: 1px solid #888; box-shadow: 2px 2px 6px rgba(0,0,0,0.3);
  font-size: 0.8em; white-space: pre-wrap; pointer-events: none; }
.legend span { display: inline-block; padding: 0 0.5em; margin-right: 0.5em; }
.notes { color: #555; font-size: 0.9em; }
</style>
</head>
<body>
<h1>{{.Title}}</h1>
{{if .Legend}}<p class="legend">rows: from, columns: to &nbsp;
<span class="allowed" style="background:#5cb85c;color:#fff">✓ allowed</span>
<span style="background:#d9534f;color:#fff">✗ denied</span>
<span style="background:linear-gradient(90deg,#d9534f,#5cb85c);color:#fff">a/n mixed: a of n pairs allowed</span>
<span style="background:#e6e6e6">– a pod to itself</span> hover a cell for its explanation</p>{{end}}
{{with .Notes}}<ul class="notes">{{range .}}<li>{{.}}</li>{{end}}</ul>{{end}}
{{range .Tables}}
<h2>{{.Title}}</h2>
<table class="matrix">
<thead><tr><th></th>{{$n := .Numbers}}{{range $i, $c := .Columns}}<th title="{{$c}}">{{if $n}}{{$i | inc}}{{else}}{{$c}}{{end}}</th>{{end}}</tr></thead>
<tbody>
{{range $i, $r := .Rows}}<tr><th class="row">{{if $n}}{{$i | inc}} {{end}}{{$r.Label}}</th>{{range $r.Cells}}<td{{with .Class}} class="{{.}}"{{end}}{{with .Style}} style="{{.}}"{{end}}{{with .Tip}} data-tip="{{.}}"{{end}}{{with .Data}} data-cell="{{.}}"{{end}}>{{.Text}}</td>{{end}}</tr>
{{end}}</tbody>
</table>
{{if .Numbers}}<p class="notes">{{range $i, $c := .Columns}}{{$i | inc}} {{$c}} &nbsp; {{end}}</p>{{end}}
{{end}}
<pre id="tip" role="tooltip"></pre>
<script>
(function () {
  var tip = document.getElementById('tip');
  function place(e) {
    var x = e.clientX + 14, y = e.clientY + 14;
    var w = tip.offsetWidth, h = tip.offsetHeight;
    if (x + w > window.innerWidth) { x = Math.max(0, e.clientX - w - 14); }
    if (y + h > window.innerHeight) { y = Math.max(0, window.innerHeight - h); }
    tip.style.left = x + 'px';
    tip.style.top = y + 'px';
  }
  document.addEventListener('mouseover', function (e) {
    var td = e.target.closest ? e.target.closest('td[data-tip]') : null;
    if (!td) { tip.style.display = 'none'; return; }
    tip.textContent = td.getAttribute('data-tip');
    tip.style.display = 'block';
    place(e);
  });
  document.addEventListener('mousemove', function (e) {
    if (tip.style.display === 'block') { place(e); }
  });
  document.addEventListener('mouseout', function (e) {
    if (!e.relatedTarget || !e.relatedTarget.closest || !e.relatedTarget.closest('td[data-tip]')) { tip.style.display = 'none'; }
  });
})();
</script>
</body>
</html>
`))
