package metrics

import (
	"encoding/json"
	"math"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/filemap/filemap/proto"
)

func TestQuantile(t *testing.T) {
	bounds := []float64{1, 2, 4, 8}
	cum := []uint64{10, 10, 60, 100} // 10 in (0,1], none in (1,2], 50 in (2,4], 40 in (4,8]
	for _, c := range []struct{ q, want float64 }{
		{0.05, 0.5}, // halfway through the first bucket
		{0.1, 1},
		{0.35, 3}, // halfway through (2,4]
		{0.99, 7.9},
	} {
		if got := quantile(c.q, bounds, cum, 100); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("quantile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
	if got := quantile(0.5, bounds, cum, 0); got != 0 {
		t.Errorf("quantile of nothing = %v", got)
	}
}

func TestLatencies(t *testing.T) {
	m := New(func() proto.Stats { return proto.Stats{} })
	for range 99 {
		m.Fault("major", 100*time.Microsecond)
	}
	m.Fault("major", 50*time.Millisecond)
	m.StoreRead(80*time.Microsecond, 4096, nil)
	l := m.Latencies()
	maj := l["major"]
	if maj.Count != 100 || maj.P50Us < 64 || maj.P50Us > 128 || maj.P99Us > 128 || maj.MeanUs < 500 {
		t.Errorf("major latency %+v: want p50 and p99 in the 100 µs bucket and a mean pulled up by the outlier", maj)
	}
	if s := l["store"]; s.Count != 1 {
		t.Errorf("store latency %+v", s)
	}
}

// The latencies a stat reply carries are rounded to 0.01 µs: a mean of
// thirds, and a p50 interpolated inside a bucket, encode with at most two
// decimals, not as float noise.
func TestLatenciesRounded(t *testing.T) {
	m := New(func() proto.Stats { return proto.Stats{} })
	for _, d := range []time.Duration{1000, 1000, 2001, 2027520, 3} {
		m.Fault("minor", d)
	}
	l := m.Latencies()["minor"]
	b, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	for _, num := range regexp.MustCompile(`[0-9]+\.[0-9]+`).FindAllString(string(b), -1) {
		if _, frac, _ := strings.Cut(num, "."); len(frac) > 2 {
			t.Errorf("latency %s in %s: more than two decimals", num, b)
		}
	}
	if l.MeanUs != 406.3 { // (1+1+2.001+2027.52+0.003)/5 = 406.3048 µs
		t.Errorf("mean %v µs, want 406.3", l.MeanUs)
	}
}
