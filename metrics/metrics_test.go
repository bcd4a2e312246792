package metrics

import (
	"encoding/json"
	"math"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/filemap/filemap/proto"
	"github.com/filemap/filemap/store/remote"
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

// A daemon with a disk cache exports each of its counts, each from its own
// field; one without exports none of them.
func TestDiskCacheMetrics(t *testing.T) {
	d := &proto.DiskCacheStats{Dir: "/var/cache/filemap", Hits: 1, MemHits: 2, Misses: 3, BytesRead: 4, BytesWritten: 5,
		Corrupt: 6, CorruptIndexes: 7, WriteErrors: 8, Uncached: 9, Evictions: 10, Bytes: 11, MaxBytes: 12, Objects: 13}
	want := map[string]float64{
		"filemap_disk_cache_hits_total": 1, "filemap_disk_cache_memory_hits_total": 2, "filemap_disk_cache_misses_total": 3,
		"filemap_disk_cache_read_bytes_total": 4, "filemap_disk_cache_written_bytes_total": 5,
		"filemap_disk_cache_corrupt_chunks_total": 6, "filemap_disk_cache_corrupt_indexes_total": 7,
		"filemap_disk_cache_write_errors_total": 8, "filemap_disk_cache_uncached_total": 9,
		"filemap_disk_cache_evictions_total": 10, "filemap_disk_cache_bytes": 11,
		"filemap_disk_cache_limit_bytes": 12, "filemap_disk_cache_objects": 13,
	}
	got := gather(t, New(func() proto.Stats { return proto.Stats{DiskCache: d} }))
	for name, v := range want {
		if g, ok := got[name]; !ok || g != v {
			t.Errorf("%s = %v (exported: %v), want %v", name, g, ok, v)
		}
	}
	for name := range gather(t, New(func() proto.Stats { return proto.Stats{} })) {
		if strings.HasPrefix(name, "filemap_disk_cache_") {
			t.Errorf("a daemon without a disk cache exports %s", name)
		}
	}
}

// RemoteTotals sums the remote objects' metrics over their labels.
func TestRemoteTotals(t *testing.T) {
	m := New(func() proto.Stats { return proto.Stats{} })
	m.Request(remote.RequestStats{Bytes: 100, Latency: time.Millisecond})
	m.Request(remote.RequestStats{Bytes: 50, Latency: time.Millisecond, Err: remote.ErrTransient})
	m.Retry(remote.ErrTransient)
	m.Retry(remote.ErrTimeout)
	m.Retry(remote.ErrTimeout)
	m.Hedge()
	m.Changed("s3://bucket/a")
	m.Changed("s3://bucket/b")
	var st proto.Stats
	m.RemoteTotals(&st)
	if st.RemoteRequests != 2 || st.RemoteRequestBytes != 150 || st.RemoteRetries != 3 || st.RemoteHedges != 1 || st.ObjectChanged != 2 {
		t.Errorf("RemoteTotals: requests %d, bytes %d, retries %d, hedges %d, changed %d; want 2, 150, 3, 1, 2",
			st.RemoteRequests, st.RemoteRequestBytes, st.RemoteRetries, st.RemoteHedges, st.ObjectChanged)
	}
}

// gather is the value of each unlabelled metric m exports.
func gather(t *testing.T, m *Metrics) map[string]float64 {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]float64)
	for _, mf := range mfs {
		for _, met := range mf.GetMetric() {
			switch {
			case met.GetCounter() != nil:
				out[mf.GetName()] = met.GetCounter().GetValue()
			case met.GetGauge() != nil:
				out[mf.GetName()] = met.GetGauge().GetValue()
			}
		}
	}
	return out
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
