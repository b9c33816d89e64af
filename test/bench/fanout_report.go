package bench

import (
	"fmt"
	"slices"
	"strings"
)

// FanoutSlope is one figure fitted over the fan-out points of an implementation (and
// a cluster size, for the per-watcher figures).
type FanoutSlope struct {
	Impl string `json:"impl"`
	// Pods is the cluster size of the points fitted; 0 when the figure is fitted across
	// sizes (memory per pod).
	Pods  int     `json:"pods,omitempty"`
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
	// How says what was fitted over which points.
	How string `json:"how"`
}

// Names of the fitted figures.
const (
	slopeAPICPU     = "API server CPU per (pod update × watcher)"
	slopeAPICPUBase = "API server CPU per pod update, no watcher (intercept)"
	// A pod update is one watch event (see FanoutPoint.APICPUPerUpdate).
	slopeAPIRSS       = "API server RSS per watcher"
	slopeAPIHeap      = "API server live heap per watcher"
	slopeEventBytes   = "pod watch bytes per update per agent"
	slopeEventWire    = "connection bytes per update per agent"
	slopeStartBytes   = "start: connection bytes per pod per agent"
	slopeAgentHeap    = "agent heap per pod"
	slopeAgentCPU     = "agent CPU per pod event"
	slopeAgentHeapFix = "agent heap at 0 pods (intercept)"
	slopeStartCPU     = "API server CPU per agent start per pod"
)

// linearFit returns the least-squares slope and intercept of y over x (0, mean(y) when
// x does not vary).
func linearFit(x, y []float64) (slope, intercept float64) {
	n := float64(len(x))
	if len(x) == 0 || len(x) != len(y) {
		return 0, 0
	}
	var sx, sy, sxx, sxy float64
	for i := range x {
		sx += x[i]
		sy += y[i]
		sxx += x[i] * x[i]
		sxy += x[i] * y[i]
	}
	d := n*sxx - sx*sx
	if d == 0 {
		return 0, sy / n
	}
	slope = (n*sxy - sx*sy) / d
	return slope, (sy - slope*sx) / n
}

func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := 0.0
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

// fitSlopes derives the per-watcher, per-update and per-pod figures from the points.
func fitSlopes(points []FanoutPoint) []FanoutSlope {
	var out []FanoutSlope
	for _, impl := range fanoutImpls {
		var sizes []int
		for _, p := range points {
			if p.Impl == impl && !slices.Contains(sizes, p.Pods) {
				sizes = append(sizes, p.Pods)
			}
		}
		slices.Sort(sizes)
		for _, pods := range sizes {
			var n, cpu, rss, heap, ev, wire, start, agent, startCPU []float64
			for _, p := range points {
				if p.Impl != impl || p.Pods != pods {
					continue
				}
				n = append(n, float64(p.Clients))
				cpu = append(cpu, p.APICPUPerUpdate())
				rss = append(rss, float64(p.APIRSSAfter-p.APIRSSBefore))
				startCPU = append(startCPU, p.StartAPICPUms)
				heap = append(heap, float64(p.APIHeapAfter-p.APIHeapBefore))
				ev = append(ev, p.BytesPerUpdate())
				wire = append(wire, p.WireBytesPerUpdate())
				start = append(start, p.StartConnBytes/float64(p.Pods))
				if p.PodEvents > 0 {
					agent = append(agent, p.ChurnAgentCPUms*1000/(p.PodEvents*float64(p.Clients)))
				}
			}
			counts := strings.Trim(strings.Join(strings.Fields(fmt.Sprint(n)), ", "), "[]")
			add := func(name string, v float64, unit, how string) {
				out = append(out, FanoutSlope{Impl: impl, Pods: pods, Name: name, Value: v, Unit: unit, How: how})
			}
			if len(n) >= 2 {
				s, b := linearFit(n, cpu)
				add(slopeAPICPU, s*1000, "µs", "least squares of the API server's CPU per pod event of the churn over "+counts+" agents")
				add(slopeAPICPUBase, b, "ms", "the same fit's intercept: the writes themselves (etcd round trip, watch cache) per event")
				s, _ = linearFit(n, startCPU)
				add(slopeStartCPU, s*1000/float64(pods), "µs", "least squares of the API server's CPU over the agents' start (streaming list of every watched kind) over "+counts+" agents, / pods")
				s, _ = linearFit(n, rss)
				add(slopeAPIRSS, s, "B", "least squares of the API server's RSS growth from before the agents to after their start, over "+counts+" agents")
				s, _ = linearFit(n, heap)
				add(slopeAPIHeap, s, "B", "least squares of the API server's live heap (after a forced GC) growth from before the agents to after their start, over "+counts+" agents")
			}
			add(slopeEventBytes, mean(ev), "B", "pod watch response bytes (decoded from HTTP/2, before the client's decoder) / pod events, mean over "+counts+" agents")
			add(slopeEventWire, mean(wire), "B", "bytes read from each agent's TCP connection during the churn (TLS, HTTP/2, every watch) / pod events")
			add(slopeStartBytes, mean(start), "B", "bytes read from each agent's connection until its caches synced / pods")
			add(slopeAgentCPU, mean(agent), "µs", "this process's CPU during the churn / (agents × pod events): decode, transform, handlers, engine")
		}
		// Memory per pod: the heap each agent adds, fitted over the sizes at every
		// agent count run at more than one size.
		byN := map[int][][2]float64{}
		for _, p := range points {
			if p.Impl == impl && p.HeapPerClient() > 0 {
				byN[p.Clients] = append(byN[p.Clients], [2]float64{float64(p.Pods), p.HeapPerClient()})
			}
		}
		var per, fixed []float64
		for _, xy := range byN {
			if len(xy) < 2 {
				continue
			}
			var x, y []float64
			for _, v := range xy {
				x, y = append(x, v[0]), append(y, v[1])
			}
			s, b := linearFit(x, y)
			per, fixed = append(per, s), append(fixed, b)
		}
		if len(per) > 0 {
			out = append(out, FanoutSlope{Impl: impl, Name: slopeAgentHeap, Value: Median(per), Unit: "B",
				How: fmt.Sprintf("live Go heap added per agent (after a GC, all agents in one process) fitted over the cluster sizes; median over %d agent counts", len(per))},
				FanoutSlope{Impl: impl, Name: slopeAgentHeapFix, Value: Median(fixed), Unit: "B", How: "the same fit's intercept"})
		}
	}
	return out
}

// slope returns the named figure of impl at pods (0: the largest size it was fitted at,
// or the across-sizes figure).
func (r *FanoutReport) slope(impl, name string, pods int) (FanoutSlope, bool) {
	var best FanoutSlope
	found := false
	for _, s := range r.Slopes {
		if s.Impl != impl || s.Name != name || (pods != 0 && s.Pods != pods) {
			continue
		}
		if !found || s.Pods > best.Pods {
			best, found = s, true
		}
	}
	return best, found
}

// builtinProtobuf counts the built-in kinds the agent watches whose every list and
// watch response was protobuf, and describes what each kind received.
func (r *FanoutReport) builtinProtobuf() (int, string) {
	n := 0
	var parts []string
	for _, res := range []string{"pods", "namespaces", "nodes", "networkpolicies"} {
		var cts []string
		for _, verb := range []string{"list", "watch"} {
			if s, ok := r.Wire[res+" "+verb]; ok {
				for ct := range s.ContentTypes {
					if !slices.Contains(cts, ct) {
						cts = append(cts, ct)
					}
				}
			}
		}
		slices.Sort(cts)
		ok := len(cts) > 0
		for _, ct := range cts {
			ok = ok && strings.HasPrefix(ct, "application/vnd.kubernetes.protobuf")
		}
		if ok {
			n++
		}
		parts = append(parts, res+": "+strings.Join(cts, ", "))
	}
	return n, strings.Join(parts, "; ")
}

func fanoutTargets(rep *Report, add func(Target, bool)) {
	f := rep.Fanout
	ok := f != nil && len(f.Points) > 0
	if f == nil {
		f = &FanoutReport{}
	}
	n, detail := f.builtinProtobuf()
	add(Target{Name: "fan-out: built-in kinds the agent receives as protobuf (of 4)", Value: float64(n), Op: ">=", Limit: 4, Detail: detail}, ok && f.Wire != nil)
	get := func(impl, name string) (FanoutSlope, bool) { return f.slope(impl, name, 0) }
	pb, ok1 := get(FanoutNFTProtobuf, slopeEventBytes)
	js, ok2 := get(FanoutNFTJSON, slopeEventBytes)
	pbw, _ := get(FanoutNFTProtobuf, slopeEventWire)
	jsw, _ := get(FanoutNFTJSON, slopeEventWire)
	add(Target{Name: "fan-out: bytes per pod update per agent, protobuf / JSON", Value: val(ok1 && ok2 && js.Value > 0, func() float64 { return pb.Value / js.Value }),
		Detail: fmt.Sprintf("at %d pods: %.0f B protobuf vs %.0f B JSON per event (on the connection: %.0f vs %.0f B)", pb.Pods, pb.Value, js.Value, pbw.Value, jsw.Value)}, ok1 && ok2)
	for _, impl := range []string{FanoutNFTProtobuf, FanoutNFTJSON} {
		s, ok := get(impl, slopeAPICPU)
		add(Target{Name: "fan-out: API server CPU per (pod update × watcher), " + impl, Value: s.Value, Unit: "µs",
			Detail: fmt.Sprintf("at %d pods; %s", s.Pods, s.How)}, ok)
	}
	{
		gz, ok1 := get(FanoutNFTProtobuf, slopeEventWire)
		plain, ok2 := get(FanoutNFTNoGzip, slopeEventWire)
		add(Target{Name: "fan-out: connection bytes per pod update per agent, gzip / no gzip (protobuf)", Value: val(ok1 && ok2 && plain.Value > 0, func() float64 { return gz.Value / plain.Value }),
			Detail: fmt.Sprintf("at %d pods: %.0f B with the watch streams gzipped (WatchListCompression) vs %.0f B without", gz.Pods, gz.Value, plain.Value)}, ok1 && ok2)
		s, ok := get(FanoutNFTNoGzip, slopeAPICPU)
		add(Target{Name: "fan-out: API server CPU per (pod update × watcher), " + FanoutNFTNoGzip, Value: s.Value, Unit: "µs",
			Detail: fmt.Sprintf("at %d pods; %s", s.Pods, s.How)}, ok)
	}
	s, ok := get(FanoutNFTProtobuf, slopeAPIHeap)
	rss, _ := get(FanoutNFTProtobuf, slopeAPIRSS)
	add(Target{Name: "fan-out: API server memory per watching agent (live heap)", Value: s.Value / 1e3, Unit: "KB",
		Detail: fmt.Sprintf("%s, at %d pods; RSS grew %.0f KB per agent", s.How, s.Pods, rss.Value/1e3)}, ok)
	for _, impl := range []string{FanoutNFTProtobuf, FanoutKNP} {
		s, ok := get(impl, slopeEventBytes)
		add(Target{Name: "fan-out: bytes per pod update per agent, " + impl, Value: s.Value, Unit: "B", Detail: fmt.Sprintf("at %d pods; pod watch bodies", s.Pods)}, ok)
		h, ok := get(impl, slopeAgentHeap)
		add(Target{Name: "fan-out: agent memory per pod, " + impl, Value: h.Value, Unit: "B", Detail: h.How}, ok)
	}
}

func (f *FanoutReport) printTable(row func(...any)) {
	row()
	row(fmt.Sprintf("FAN-OUT: emulated agents watching one API server, %d pod writes at %.0f/s; pod object %d B JSON, %d B protobuf",
		f.Profile.ChurnWrites, f.Profile.ChurnRate, f.PodBytes["json"], f.PodBytes["protobuf"]))
	row("agents", "pods", "start s", "API CPU ms start", "start MB/agent", "API RSS MB +", "API heap MB +", "heap MB/agent", "API CPU ms/event", "B/event body", "B/event wire", "agents CPU ms", "streaming list")
	for _, p := range f.Points {
		row(fmt.Sprintf("%s × %d", p.Impl, p.Clients), p.Pods, fmt.Sprintf("%.1f", p.StartSeconds), f0(p.StartAPICPUms), fmt.Sprintf("%.2f", p.StartConnBytes/1e6),
			fmt.Sprintf("%.1f", float64(p.APIRSSAfter-p.APIRSSBefore)/1e6), fmt.Sprintf("%.1f", float64(p.APIHeapAfter-p.APIHeapBefore)/1e6),
			fmt.Sprintf("%.2f", p.HeapPerClient()/1e6), fmt.Sprintf("%.2f", p.APICPUPerUpdate()),
			f0(p.BytesPerUpdate()), f0(p.WireBytesPerUpdate()), f0(p.ChurnAgentCPUms), p.StreamingList)
	}
	row()
	row("fitted", "impl", "pods", "value", "how")
	for _, s := range f.Slopes {
		pods := "all"
		if s.Pods > 0 {
			pods = fmt.Sprint(s.Pods)
		}
		row(s.Name, s.Impl, pods, fmtVal(s.Value, s.Unit), s.How)
	}
}
