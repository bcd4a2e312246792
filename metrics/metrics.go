// Package metrics is filemap's /proc/vmstat: the daemon's counters and
// latency histograms, served to Prometheus and summarised for `filemap stat`.
package metrics

import (
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/filemap/filemap/proto"
)

// Metrics are one daemon's metrics, in a registry of their own.
type Metrics struct {
	reg          *prometheus.Registry
	faults       *prometheus.HistogramVec
	storeRead    prometheus.Histogram
	storeErrors  prometheus.Counter
	storeBytes   prometheus.Counter
	raWindows    prometheus.Counter
	raPages      prometheus.Counter
	faultSummary map[string]prometheus.Histogram
}

// latencyBuckets run from 1 µs to about 4 s, doubling.
var latencyBuckets = prometheus.ExponentialBuckets(1e-6, 2, 23)

// New makes the metrics of a daemon whose counters stats returns.
func New(stats func() proto.Stats) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		faults: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "filemap_fault_service_seconds",
			Help:    "Time from a fault message to the wake of its faulter, by kind: major (store I/O), minor (cache or another fault's read), marker (readahead trigger).",
			Buckets: latencyBuckets,
		}, []string{"kind"}),
		storeRead: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "filemap_store_read_seconds", Help: "Latency of one store read.", Buckets: latencyBuckets,
		}),
		storeErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "filemap_store_read_errors_total", Help: "Store reads that failed."}),
		storeBytes:  prometheus.NewCounter(prometheus.CounterOpts{Name: "filemap_store_read_bytes_total", Help: "Bytes read from stores."}),
		raWindows:   prometheus.NewCounter(prometheus.CounterOpts{Name: "filemap_readahead_windows_total", Help: "Asynchronous readahead windows issued."}),
		raPages:     prometheus.NewCounter(prometheus.CounterOpts{Name: "filemap_readahead_pages_total", Help: "Pages in the readahead windows issued."}),
	}
	m.reg.MustRegister(m.faults, m.storeRead, m.storeErrors, m.storeBytes, m.raWindows, m.raPages)
	gauge := func(name, help string, f func(proto.Stats) float64) {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return f(stats()) }))
	}
	counter := func(name, help string, f func(proto.Stats) float64) {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return f(stats()) }))
	}
	counter("filemap_major_faults_total", "Faults that needed store I/O.", func(s proto.Stats) float64 { return float64(s.MajorFaults) })
	counter("filemap_minor_faults_total", "Faults served without store I/O of their own.", func(s proto.Stats) float64 { return float64(s.MinorFaults) })
	counter("filemap_sigbus_total", "Pages poisoned after a failed read.", func(s proto.Stats) float64 { return float64(s.SIGBUS) })
	counter("filemap_evictions_total", "Extents evicted to stay within the cache budget.", func(s proto.Stats) float64 { return float64(s.Evictions) })
	counter("filemap_evicted_bytes_total", "Bytes evicted.", func(s proto.Stats) float64 { return float64(s.EvictedBytes) })
	counter("filemap_refaults_total", "Misses on pages evicted recently.", func(s proto.Stats) float64 { return float64(s.Refaults) })
	counter("filemap_protocol_errors_total", "Connections closed for bad input.", func(s proto.Stats) float64 { return float64(s.ProtocolErrors) })
	gauge("filemap_cache_bytes", "Bytes resident in all caches.", func(s proto.Stats) float64 { return float64(s.CacheBytes) })
	gauge("filemap_cache_budget_bytes", "The bound on filemap_cache_bytes (0: none).", func(s proto.Stats) float64 { return float64(s.CacheBudget) })
	gauge("filemap_metadata_bytes", "Memory of the page-state tables.", func(s proto.Stats) float64 { return float64(s.MetadataBytes) })
	gauge("filemap_objects", "Objects with a cache.", func(s proto.Stats) float64 { return float64(s.Objects) })
	gauge("filemap_clients", "Connected clients.", func(s proto.Stats) float64 { return float64(s.Clients) })
	gauge("filemap_mappings", "Attached regions (mappings) being served.", func(s proto.Stats) float64 { return float64(s.Regions) })
	gauge("filemap_fills_in_flight", "Store reads running now.", func(s proto.Stats) float64 { return float64(s.FillsInFlight) })
	return m
}

// Fault observes one fault's service time.
func (m *Metrics) Fault(kind string, d time.Duration) {
	m.faults.WithLabelValues(kind).Observe(d.Seconds())
}

// StoreRead observes one store read.
func (m *Metrics) StoreRead(d time.Duration, n int, err error) {
	m.storeRead.Observe(d.Seconds())
	m.storeBytes.Add(float64(n))
	if err != nil {
		m.storeErrors.Inc()
	}
}

// Readahead counts an asynchronous window.
func (m *Metrics) Readahead(pages int64) {
	m.raWindows.Inc()
	m.raPages.Add(float64(pages))
}

// Registry is where the metrics live.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Latencies summarises the latency histograms as quantiles, for people:
// fault service time by kind ("major", "minor", "marker") and store reads
// ("store"), with p50 and p99 in microseconds.
func (m *Metrics) Latencies() map[string]proto.Latency {
	out := make(map[string]proto.Latency)
	mfs, err := m.reg.Gather()
	if err != nil {
		return out
	}
	for _, mf := range mfs {
		if mf.GetName() != "filemap_fault_service_seconds" && mf.GetName() != "filemap_store_read_seconds" {
			continue
		}
		for _, met := range mf.GetMetric() {
			h := met.GetHistogram()
			kind := "store"
			for _, l := range met.GetLabel() {
				if l.GetName() == "kind" {
					kind = l.GetValue()
				}
			}
			var bounds []float64
			var counts []uint64
			for _, b := range h.GetBucket() {
				bounds = append(bounds, b.GetUpperBound())
				counts = append(counts, b.GetCumulativeCount())
			}
			out[kind] = proto.Latency{
				Count:  h.GetSampleCount(),
				P50Us:  quantile(0.5, bounds, counts, h.GetSampleCount()) * 1e6,
				P99Us:  quantile(0.99, bounds, counts, h.GetSampleCount()) * 1e6,
				MeanUs: h.GetSampleSum() / float64(max(h.GetSampleCount(), 1)) * 1e6,
			}
		}
	}
	return out
}

// quantile interpolates q within cumulative histogram buckets.
func quantile(q float64, bounds []float64, cum []uint64, total uint64) float64 {
	if total == 0 {
		return 0
	}
	rank := q * float64(total)
	lower, below := 0.0, uint64(0)
	for i, b := range bounds {
		if float64(cum[i]) >= rank {
			in := cum[i] - below
			if in == 0 {
				return b
			}
			return lower + (b-lower)*(rank-float64(below))/float64(in)
		}
		lower, below = b, cum[i]
	}
	return lower // past the last bucket: its bound is the best we know
}

// Serve serves the metrics on addr (host:port) until the listener fails.
func (m *Metrics) Serve(addr string) (net.Addr, func() error, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l) // ends with http.ErrServerClosed when closed
	return l.Addr(), srv.Close, nil
}
