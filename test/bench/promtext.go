package bench

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Sample is one line of the Prometheus text exposition format.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Metrics is a parsed scrape.
type Metrics []Sample

// ParseMetrics parses the Prometheus text format (version 0.0.4): enough of it for
// the agent's and the API server's /metrics (no exemplars, no timestamps needed).
func ParseMetrics(r io.Reader) (Metrics, error) {
	var out Metrics
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		s, err := parseSampleLine(line)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, sc.Err()
}

func parseSampleLine(line string) (Sample, error) {
	s := Sample{Labels: map[string]string{}}
	rest := line
	if i := strings.IndexAny(line, "{ "); i >= 0 && line[i] == '{' {
		s.Name = line[:i]
		rest = line[i+1:]
		for {
			rest = strings.TrimLeft(rest, " ,")
			if strings.HasPrefix(rest, "}") {
				rest = rest[1:]
				break
			}
			eq := strings.IndexByte(rest, '=')
			if eq < 0 || len(rest) < eq+2 || rest[eq+1] != '"' {
				return s, fmt.Errorf("metrics: malformed labels in %q", line)
			}
			key := strings.TrimSpace(rest[:eq])
			rest = rest[eq+2:]
			var val strings.Builder
			closed := false
			for j := 0; j < len(rest); j++ {
				c := rest[j]
				if c == '\\' && j+1 < len(rest) {
					j++
					switch rest[j] {
					case 'n':
						val.WriteByte('\n')
					default:
						val.WriteByte(rest[j])
					}
					continue
				}
				if c == '"' {
					rest = rest[j+1:]
					closed = true
					break
				}
				val.WriteByte(c)
			}
			if !closed {
				return s, fmt.Errorf("metrics: unterminated label value in %q", line)
			}
			s.Labels[key] = val.String()
		}
	} else if i >= 0 {
		s.Name = line[:i]
		rest = line[i:]
	}
	f := strings.Fields(rest)
	if s.Name == "" || len(f) < 1 {
		return s, fmt.Errorf("metrics: malformed line %q", line)
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return s, fmt.Errorf("metrics: value in %q: %w", line, err)
	}
	s.Value = v
	return s, nil
}

// Sum adds the values of the samples named name whose labels include every
// key=value of match.
func (m Metrics) Sum(name string, match map[string]string) float64 {
	var v float64
	for _, s := range m {
		if s.Name == name && labelsMatch(s.Labels, match) {
			v += s.Value
		}
	}
	return v
}

// Has reports whether a sample named name exists.
func (m Metrics) Has(name string) bool {
	for _, s := range m {
		if s.Name == name {
			return true
		}
	}
	return false
}

// By returns the sum per value of label key over the samples named name that match.
func (m Metrics) By(name, key string, match map[string]string) map[string]float64 {
	out := map[string]float64{}
	for _, s := range m {
		if s.Name == name && labelsMatch(s.Labels, match) {
			out[s.Labels[key]] += s.Value
		}
	}
	return out
}

func labelsMatch(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// syncStats is the agent's nftpolicy_sync_duration_seconds histogram, by phase.
type syncStats struct {
	ComputeCount, ComputeSum         float64
	FullCount, FullSum               float64
	IncrementalCount, IncrementalSum float64
}

func syncStatsOf(m Metrics) syncStats {
	h := "nftpolicy_sync_duration_seconds"
	ph := func(p string) map[string]string { return map[string]string{"phase": p} }
	return syncStats{
		ComputeCount: m.Sum(h+"_count", ph("compute")), ComputeSum: m.Sum(h+"_sum", ph("compute")),
		FullCount: m.Sum(h+"_count", ph("full")), FullSum: m.Sum(h+"_sum", ph("full")),
		IncrementalCount: m.Sum(h+"_count", ph("incremental")), IncrementalSum: m.Sum(h+"_sum", ph("incremental")),
	}
}

// sub returns s - o.
func (s syncStats) sub(o syncStats) syncStats {
	return syncStats{
		ComputeCount: s.ComputeCount - o.ComputeCount, ComputeSum: s.ComputeSum - o.ComputeSum,
		FullCount: s.FullCount - o.FullCount, FullSum: s.FullSum - o.FullSum,
		IncrementalCount: s.IncrementalCount - o.IncrementalCount, IncrementalSum: s.IncrementalSum - o.IncrementalSum,
	}
}

// commits is the number of applies (full and incremental).
func (s syncStats) commits() float64 { return s.FullCount + s.IncrementalCount }

// requestCounts sums the API server's apiserver_request_total of the reading verbs
// (LIST, WATCH, GET) for the resources the agent watches. A WATCH is counted when
// it ends: a count after the initial sync means a watch was restarted.
func requestCounts(m Metrics, resources ...string) map[string]float64 {
	out := map[string]float64{}
	for _, r := range resources {
		for verb, v := range m.By("apiserver_request_total", "verb", map[string]string{"resource": r}) {
			if verb == "LIST" || verb == "WATCH" || verb == "GET" {
				out[verb] += v
			}
		}
	}
	return out
}
