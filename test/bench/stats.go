package bench

import (
	"math"
	"slices"
	"time"
)

// Summary condenses samples: the order statistics a table row needs. Samples are
// kept in the report as well (raw numbers), Summary only saves recomputing them.
type Summary struct {
	N      int     `json:"n"`
	Min    float64 `json:"min"`
	P50    float64 `json:"p50"`
	P90    float64 `json:"p90"`
	P99    float64 `json:"p99"`
	Max    float64 `json:"max"`
	Mean   float64 `json:"mean"`
	Stddev float64 `json:"stddev"`
}

// Summarize computes the summary of xs (all zero when empty). Percentiles use the
// nearest-rank method on the sorted samples: p99 of 100 samples is the 99th
// smallest, of fewer than 100 it is the maximum — never an interpolated value that
// no run produced.
func Summarize(xs []float64) Summary {
	if len(xs) == 0 {
		return Summary{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	var sum float64
	for _, x := range s {
		sum += x
	}
	mean := sum / float64(len(s))
	var sq float64
	for _, x := range s {
		sq += (x - mean) * (x - mean)
	}
	return Summary{
		N: len(s), Min: s[0], Max: s[len(s)-1], Mean: mean,
		Stddev: math.Sqrt(sq / float64(len(s))),
		P50:    rank(s, 0.50), P90: rank(s, 0.90), P99: rank(s, 0.99),
	}
}

// Percentile returns the nearest-rank percentile q (0 < q ≤ 1) of xs (0 if empty).
func Percentile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return rank(s, q)
}

// Median is Percentile(xs, 0.5).
func Median(xs []float64) float64 { return Percentile(xs, 0.5) }

func rank(sorted []float64, q float64) float64 {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

// durationsPercentiles returns p50 and p99 of ds in microseconds.
func durationsPercentiles(ds []time.Duration) (p50, p99 float64) {
	if len(ds) == 0 {
		return 0, 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	pick := func(q float64) float64 {
		i := int(math.Ceil(q*float64(len(s)))) - 1
		i = max(0, min(i, len(s)-1))
		return float64(s[i]) / float64(time.Microsecond)
	}
	return pick(0.5), pick(0.99)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// ratios returns a[i]/b[i] for the pairs where b[i] is not zero: paired ratios of
// the same round cancel the machine's slow drifts, which medians of absolute
// values measured minutes apart do not.
func ratios(a, b []float64) []float64 {
	var out []float64
	for i := range min(len(a), len(b)) {
		if b[i] != 0 {
			out = append(out, a[i]/b[i])
		}
	}
	return out
}

// diffs returns a[i]-b[i] pairwise.
func diffs(a, b []float64) []float64 {
	var out []float64
	for i := range min(len(a), len(b)) {
		out = append(out, a[i]-b[i])
	}
	return out
}
