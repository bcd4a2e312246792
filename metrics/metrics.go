// Package metrics is filemap's /proc/vmstat: the daemon's counters and
// latency histograms, served to Prometheus and summarised for `filemap stat`.
package metrics

import (
	"math"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/filemap/filemap/proto"
	"github.com/filemap/filemap/store/remote"
)

// Metrics are one daemon's metrics, in a registry of their own.
type Metrics struct {
	reg         *prometheus.Registry
	faults      *prometheus.HistogramVec
	storeRead   prometheus.Histogram
	storeErrors prometheus.Counter
	storeBytes  prometheus.Counter
	raWindows   prometheus.Counter
	raPages     prometheus.Counter
	changed     *prometheus.CounterVec
	remoteReq   *prometheus.HistogramVec
	remoteBytes prometheus.Counter
	retries     *prometheus.CounterVec
	hedges      prometheus.Counter
	prefetch    *prometheus.CounterVec
	latencies   *prometheus.Registry // the latency histograms alone, for Latencies
	remote      *prometheus.Registry // the remote objects' counters alone, for RemoteTotals
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
	m.changed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "filemap_object_changed_total",
		Help: "Fills that failed because the object changed since it was opened: its uncached pages read as SIGBUS. By object.",
	}, []string{"object"})
	m.remoteReq = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "filemap_remote_request_seconds",
		Help:    "Latency of one ranged request to a remote store (HTTP, S3), by outcome: ok, timeout, canceled, changed, permanent, transient.",
		Buckets: latencyBuckets,
	}, []string{"outcome"})
	m.remoteBytes = prometheus.NewCounter(prometheus.CounterOpts{Name: "filemap_remote_request_bytes_total", Help: "Bytes asked of remote stores in ranged requests."})
	m.retries = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "filemap_remote_retries_total", Help: "Remote fetches tried again, by the kind of error."}, []string{"kind"})
	m.hedges = prometheus.NewCounter(prometheus.CounterOpts{Name: "filemap_remote_hedges_total", Help: "Second requests started for stragglers."})
	m.prefetch = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "filemap_prefetch_pages_total",
		Help: "Pages of a recorded working set replayed into a restored VM, by outcome: installed (copied in ahead of the guest), late (the guest faulted on it first), wasted (installed but, by the record, most likely never touched; an estimate made when the VM exits).",
	}, []string{"outcome"})
	m.reg.MustRegister(m.faults, m.storeRead, m.storeErrors, m.storeBytes, m.raWindows, m.raPages,
		m.changed, m.remoteReq, m.remoteBytes, m.retries, m.hedges, m.prefetch, &statsCollector{stats})
	m.latencies = prometheus.NewRegistry()
	m.latencies.MustRegister(m.faults, m.storeRead)
	m.remote = prometheus.NewRegistry()
	m.remote.MustRegister(m.remoteReq, m.remoteBytes, m.retries, m.hedges, m.changed)
	return m
}

// statsCollector exports the daemon's counters and gauges from one snapshot
// of them per scrape.
type statsCollector struct {
	stats func() proto.Stats
}

type statMetric struct {
	desc  *prometheus.Desc
	kind  prometheus.ValueType
	value func(proto.Stats) float64
}

func stat(name, help string, kind prometheus.ValueType, value func(proto.Stats) float64) statMetric {
	return statMetric{prometheus.NewDesc(name, help, nil, nil), kind, value}
}

var statMetrics = []statMetric{
	stat("filemap_major_faults_total", "Faults that needed store I/O.", prometheus.CounterValue, func(s proto.Stats) float64 { return float64(s.MajorFaults) }),
	stat("filemap_minor_faults_total", "Faults served without store I/O of their own.", prometheus.CounterValue, func(s proto.Stats) float64 { return float64(s.MinorFaults) }),
	stat("filemap_sigbus_total", "Pages poisoned after a failed read.", prometheus.CounterValue, func(s proto.Stats) float64 { return float64(s.SIGBUS) }),
	stat("filemap_evictions_total", "Extents evicted to stay within the cache budget.", prometheus.CounterValue, func(s proto.Stats) float64 { return float64(s.Evictions) }),
	stat("filemap_evicted_bytes_total", "Bytes evicted.", prometheus.CounterValue, func(s proto.Stats) float64 { return float64(s.EvictedBytes) }),
	stat("filemap_refaults_total", "Misses on pages evicted recently.", prometheus.CounterValue, func(s proto.Stats) float64 { return float64(s.Refaults) }),
	stat("filemap_protocol_errors_total", "Connections closed for bad input.", prometheus.CounterValue, func(s proto.Stats) float64 { return float64(s.ProtocolErrors) }),
	stat("filemap_cache_bytes", "Bytes resident in all caches.", prometheus.GaugeValue, func(s proto.Stats) float64 { return float64(s.CacheBytes) }),
	stat("filemap_huge_extents_total", "2 MiB extents collapsed into huge folios in the background.", prometheus.CounterValue, func(s proto.Stats) float64 { return float64(s.HugeExtents) }),
	stat("filemap_collapses_pending", "Extents waiting for or in a collapse.", prometheus.GaugeValue, func(s proto.Stats) float64 { return float64(s.CollapsesPending) }),
	stat("filemap_collapses_failed_total", "Extents a collapse left in 4 KiB pages.", prometheus.CounterValue, func(s proto.Stats) float64 { return float64(s.CollapsesFailed) }),
	stat("filemap_cache_budget_bytes", "The bound on filemap_cache_bytes (0: none).", prometheus.GaugeValue, func(s proto.Stats) float64 { return float64(s.CacheBudget) }),
	stat("filemap_metadata_bytes", "Memory of the page-state tables.", prometheus.GaugeValue, func(s proto.Stats) float64 { return float64(s.MetadataBytes) }),
	stat("filemap_objects", "Objects with a cache.", prometheus.GaugeValue, func(s proto.Stats) float64 { return float64(s.Objects) }),
	stat("filemap_idle_objects", "Objects with a cache that no client has open.", prometheus.GaugeValue, func(s proto.Stats) float64 { return float64(s.IdleObjects) }),
	stat("filemap_clients", "Connected clients.", prometheus.GaugeValue, func(s proto.Stats) float64 { return float64(s.Clients) }),
	stat("filemap_mappings", "Attached regions (mappings) being served.", prometheus.GaugeValue, func(s proto.Stats) float64 { return float64(s.Regions) }),
	stat("filemap_fills_in_flight", "Fills claimed and not ended: reading, or waiting for a read buffer.", prometheus.GaugeValue, func(s proto.Stats) float64 { return float64(s.FillsInFlight) }),
	stat("filemap_fill_buffer_bytes", "Read buffers lent to fills or kept for reuse.", prometheus.GaugeValue, func(s proto.Stats) float64 { return float64(s.FillBufferBytes) }),
	stat("filemap_fill_buffer_limit_bytes", "The bound on filemap_fill_buffer_bytes.", prometheus.GaugeValue, func(s proto.Stats) float64 { return float64(s.FillBufferLimit) }),
	stat("filemap_fill_buffer_waits_total", "Fills that waited for a read buffer.", prometheus.CounterValue, func(s proto.Stats) float64 { return float64(s.FillBufferWaits) }),
	stat("filemap_disk_read_bytes", "Bytes of reads of local files in flight, faults' own included.", prometheus.GaugeValue, func(s proto.Stats) float64 { return float64(s.DiskReadBytes) }),
	stat("filemap_disk_readahead_limit_bytes", "The bound on readahead reads of local files in flight (0: none).", prometheus.GaugeValue, func(s proto.Stats) float64 { return float64(s.DiskReadaheadLimit) }),
	stat("filemap_disk_readahead_queue_waits_total", "Readahead reads of local files that waited for room under the bound.", prometheus.CounterValue, func(s proto.Stats) float64 { return float64(s.DiskReadaheadQueueWaits) }),
}

// diskStat is a metric of the disk cache, exported by a daemon that has
// one.
func diskStat(name, help string, kind prometheus.ValueType, value func(*proto.DiskCacheStats) float64) statMetric {
	return stat("filemap_disk_cache_"+name, help, kind, func(s proto.Stats) float64 { return value(s.DiskCache) })
}

var diskStatMetrics = []statMetric{
	diskStat("hits_total", "Chunk loads and scattered reads served from the disk cache, checksums verified.", prometheus.CounterValue, func(d *proto.DiskCacheStats) float64 { return float64(d.Hits) }),
	diskStat("memory_hits_total", "Chunk loads served from the verified chunks the disk cache keeps in memory.", prometheus.CounterValue, func(d *proto.DiskCacheStats) float64 { return float64(d.MemHits) }),
	diskStat("misses_total", "Chunk loads the disk cache fetched from the remote store.", prometheus.CounterValue, func(d *proto.DiskCacheStats) float64 { return float64(d.Misses) }),
	diskStat("read_bytes_total", "Bytes read from the disk cache by hits.", prometheus.CounterValue, func(d *proto.DiskCacheStats) float64 { return float64(d.BytesRead) }),
	diskStat("written_bytes_total", "Chunk bytes written to the disk cache.", prometheus.CounterValue, func(d *proto.DiskCacheStats) float64 { return float64(d.BytesWritten) }),
	diskStat("corrupt_chunks_total", "Chunks that failed their checks on disk: dropped and fetched again, never served.", prometheus.CounterValue, func(d *proto.DiskCacheStats) float64 { return float64(d.Corrupt) }),
	diskStat("corrupt_indexes_total", "Index files found damaged at start: their objects' chunks dropped.", prometheus.CounterValue, func(d *proto.DiskCacheStats) float64 { return float64(d.CorruptIndexes) }),
	diskStat("write_errors_total", "Chunks, or objects' files, that could not be written to disk (a full or failing disk): served, not cached.", prometheus.CounterValue, func(d *proto.DiskCacheStats) float64 { return float64(d.WriteErrors) }),
	diskStat("uncached_total", "Chunks not written because the budget was all in use at that moment.", prometheus.CounterValue, func(d *proto.DiskCacheStats) float64 { return float64(d.Uncached) }),
	diskStat("evictions_total", "Chunks dropped from disk to stay within the budget, or superseded by a newer version.", prometheus.CounterValue, func(d *proto.DiskCacheStats) float64 { return float64(d.Evictions) }),
	diskStat("bytes", "Chunk bytes on disk, each rounded up to 4 KiB.", prometheus.GaugeValue, func(d *proto.DiskCacheStats) float64 { return float64(d.Bytes) }),
	diskStat("limit_bytes", "The bound on filemap_disk_cache_bytes.", prometheus.GaugeValue, func(d *proto.DiskCacheStats) float64 { return float64(d.MaxBytes) }),
	diskStat("objects", "Object versions with files in the disk cache.", prometheus.GaugeValue, func(d *proto.DiskCacheStats) float64 { return float64(d.Objects) }),
}

func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range statMetrics {
		ch <- m.desc
	}
	for _, m := range diskStatMetrics {
		ch <- m.desc
	}
}

func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.stats()
	for _, m := range statMetrics {
		ch <- prometheus.MustNewConstMetric(m.desc, m.kind, m.value(st))
	}
	if st.DiskCache == nil {
		return
	}
	for _, m := range diskStatMetrics {
		ch <- prometheus.MustNewConstMetric(m.desc, m.kind, m.value(st))
	}
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

// Changed counts a fill that failed because object changed.
func (m *Metrics) Changed(object string) { m.changed.WithLabelValues(object).Inc() }

// ChangedCount is the counter Changed increments for object.
func (m *Metrics) ChangedCount(object string) prometheus.Counter {
	return m.changed.WithLabelValues(object)
}

// Request observes one ranged request of a remote store (remote.Observer).
func (m *Metrics) Request(r remote.RequestStats) {
	outcome := string(r.Err)
	if outcome == "" {
		outcome = "ok"
	}
	m.remoteReq.WithLabelValues(outcome).Observe(r.Latency.Seconds())
	m.remoteBytes.Add(float64(r.Bytes))
}

// Retry counts a remote fetch tried again (remote.Observer).
func (m *Metrics) Retry(kind remote.ErrorKind) { m.retries.WithLabelValues(string(kind)).Inc() }

// Hedge counts a hedged request (remote.Observer).
func (m *Metrics) Hedge() { m.hedges.Inc() }

// Prefetch counts n pages of a working-set replay with outcome "installed",
// "late" or "wasted".
func (m *Metrics) Prefetch(outcome string, n uint64) {
	m.prefetch.WithLabelValues(outcome).Add(float64(n))
}

// RemoteTotals sets st's counts of remote objects from the metrics that
// count them by outcome, kind or object: `filemap stat` shows their sums.
func (m *Metrics) RemoteTotals(st *proto.Stats) {
	mfs, err := m.remote.Gather()
	if err != nil {
		return
	}
	sums := make(map[string]uint64)
	for _, mf := range mfs {
		for _, met := range mf.GetMetric() {
			if h := met.GetHistogram(); h != nil {
				sums[mf.GetName()] += h.GetSampleCount()
			} else {
				sums[mf.GetName()] += uint64(met.GetCounter().GetValue())
			}
		}
	}
	st.RemoteRequests = sums["filemap_remote_request_seconds"]
	st.RemoteRequestBytes = sums["filemap_remote_request_bytes_total"]
	st.RemoteRetries = sums["filemap_remote_retries_total"]
	st.RemoteHedges = sums["filemap_remote_hedges_total"]
	st.ObjectChanged = sums["filemap_object_changed_total"]
}

// Registry is where the metrics live.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Latencies summarises the latency histograms as quantiles, for people:
// fault service time by kind ("major", "minor", "marker") and store reads
// ("store"), with p50 and p99 in microseconds.
func (m *Metrics) Latencies() map[string]proto.Latency {
	out := make(map[string]proto.Latency)
	mfs, err := m.latencies.Gather()
	if err != nil {
		return out
	}
	for _, mf := range mfs {
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
				P50Us:  microseconds(quantile(0.5, bounds, counts, h.GetSampleCount())),
				P99Us:  microseconds(quantile(0.99, bounds, counts, h.GetSampleCount())),
				MeanUs: microseconds(h.GetSampleSum() / float64(max(h.GetSampleCount(), 1))),
			}
		}
	}
	return out
}

// quantile interpolates q within cumulative histogram buckets.
// microseconds is s seconds in µs, rounded to 0.01 µs: the buckets are far
// coarser than that, and further digits are float noise (2027.5199999999998).
func microseconds(s float64) float64 { return math.Round(s*1e8) / 100 }

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
