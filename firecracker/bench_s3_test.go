package firecracker

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/internal/s3test"
	"github.com/filemap/filemap/store"
	"github.com/filemap/filemap/store/remote"
	"github.com/filemap/filemap/store/s3store"
)

// BenchmarkRestoreS3 is BenchmarkRestore's on-demand and replayed restores
// with the memory image in the local versitygw (512 MiB, or
// $FILEMAP_BENCH_FC_SIZE bytes): every page the guest needs comes over
// S3 ranged GETs, through store/remote's chunks. Each run also says what
// went over the wire: requests, bytes, hedges. $FILEMAP_BENCH_HOLD_GAP
// sets remote.Config.HoldGap (bytes, K, M; -1 for none), which only the
// replay uses:
//
//	FILEMAP_VERSITYGW=$(scripts/versitygw.sh install) \
//	    go test -run '^$' -bench RestoreS3 -benchtime 1x ./firecracker
func BenchmarkRestoreS3(b *testing.B) {
	size := int64(512 << 20)
	if s := os.Getenv("FILEMAP_BENCH_FC_SIZE"); s != "" {
		n, err := parseBytes(s)
		if err != nil {
			b.Fatalf("FILEMAP_BENCH_FC_SIZE: %v", err)
		}
		size = n &^ (PageSize - 1)
	}
	var holdGap int
	if s := os.Getenv("FILEMAP_BENCH_HOLD_GAP"); s == "-1" {
		holdGap = -1
	} else if s != "" {
		n, err := parseBytes(s)
		if err != nil {
			b.Fatalf("FILEMAP_BENCH_HOLD_GAP: %v", err)
		}
		holdGap = int(n)
	}
	gw := s3test.Start(b)
	bucket := gw.NewBucket(b, false)
	dir := b.TempDir()
	mem := filepath.Join(dir, "mem")
	pattern.WriteFile(b, mem, size)
	data, err := os.ReadFile(mem)
	if err != nil {
		b.Fatal(err)
	}
	gw.Put(b, bucket, "vm/mem", data)
	data = nil
	uri := "s3://" + bucket + "/vm/mem"
	wire := &wireObserver{}
	open := func(ctx context.Context) (store.Store, error) {
		o, err := s3store.Open(ctx, uri, s3store.Options{
			Endpoint:    gw.Endpoint,
			Region:      gw.Region,
			Credentials: credentials.NewStaticCredentialsProvider(gw.AccessKey, gw.SecretKey, ""),
		})
		if err != nil {
			return nil, err
		}
		return remote.New(o, remote.Config{Observer: wire, HoldGap: holdGap}), nil
	}
	ws := workingSet(42, size/PageSize, 0.10)
	touch := filepath.Join(dir, "touch")
	writePages(b, touch, ws)
	rec := filepath.Join(dir, "ws")
	spans := []span{{0, size}}
	run := func(cfg Config) (runResult, string) {
		wire.reset()
		cfg.Open = open
		r := restoreRun(b, mem, spans, touch, cfg)
		return r, wire.String()
	}
	for range b.N {
		record, recordWire := run(Config{Record: rec})
		demand, demandWire := run(Config{})
		replay, replayWire := run(Config{Prefetch: rec})
		b.Logf("working set: %d pages of %d MiB, from %s", len(ws), size>>20, uri)
		b.Logf("record run: %v; %s", record, recordWire)
		b.Logf("on demand:  %v; %s", demand, demandWire)
		b.Logf("replayed:   %v; %s", replay, replayWire)
		speedup := float64(demand.elapsed) / float64(replay.elapsed)
		b.ReportMetric(demand.elapsed.Seconds(), "on-demand-s")
		b.ReportMetric(replay.elapsed.Seconds(), "replayed-s")
		b.ReportMetric(speedup, "restore-speedup")
	}
	b.ReportMetric(0, "ns/op")
}

// wireObserver counts the ranged requests a remote store sends: the
// store's own reads count the bytes the cache asked for, this the bytes
// fetched for them.
type wireObserver struct {
	requests, bytes, hedges atomic.Int64
	latency                 atomic.Int64 // ns, summed
}

func (o *wireObserver) Request(r remote.RequestStats) {
	o.requests.Add(1)
	o.bytes.Add(int64(r.Bytes))
	o.latency.Add(int64(r.Latency))
}
func (o *wireObserver) Retry(remote.ErrorKind) {}
func (o *wireObserver) Hedge()                 { o.hedges.Add(1) }

func (o *wireObserver) reset() {
	o.requests.Store(0)
	o.bytes.Store(0)
	o.hedges.Store(0)
	o.latency.Store(0)
}

func (o *wireObserver) String() string {
	n := o.requests.Load()
	var mean time.Duration
	if n > 0 {
		mean = time.Duration(o.latency.Load() / n)
	}
	return fmt.Sprintf("on the wire %d requests (%.0f MiB, %d hedges, mean %v)",
		n, float64(o.bytes.Load())/(1<<20), o.hedges.Load(), mean.Round(10*time.Microsecond))
}
