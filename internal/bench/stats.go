package bench

import (
	"math"
	"slices"
	"time"
)

// LatencyStats summarises per-message latencies, from writing MAIL to
// reading the last per-recipient reply. Percentiles are exact (nearest rank
// over the full sorted sample), not bucketed.
type LatencyStats struct {
	Count  int     `json:"count"`
	MeanMs float64 `json:"mean_ms"`
	P50Ms  float64 `json:"p50_ms"`
	P90Ms  float64 `json:"p90_ms"`
	P99Ms  float64 `json:"p99_ms"`
	MaxMs  float64 `json:"max_ms"`
}

// Summarize sorts d in place and computes its statistics.
func Summarize(d []time.Duration) LatencyStats {
	if len(d) == 0 {
		return LatencyStats{}
	}
	slices.Sort(d)
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	return LatencyStats{
		Count:  len(d),
		MeanMs: ms(sum / time.Duration(len(d))),
		P50Ms:  ms(Percentile(d, 50)),
		P90Ms:  ms(Percentile(d, 90)),
		P99Ms:  ms(Percentile(d, 99)),
		MaxMs:  ms(d[len(d)-1]),
	}
}

// Percentile returns the nearest-rank p-th percentile of sorted: the
// smallest value with at least p% of the sample at or below it.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

func ms(d time.Duration) float64 {
	return math.Round(float64(d)/float64(time.Microsecond)) / 1000
}
