package firecracker

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/filemap/filemap/internal/s3test"
	"github.com/filemap/filemap/store"
	"github.com/filemap/filemap/store/remote"
	"github.com/filemap/filemap/store/s3store"
)

// BenchmarkRestoreS3 is BenchmarkRestore's on-demand and replayed restores
// with the memory image in the local versitygw (512 MiB, or
// $FILEMAP_BENCH_FC_SIZE bytes): every page the guest needs comes over
// S3 ranged GETs, through store/remote's chunks.
func BenchmarkRestoreS3(b *testing.B) {
	size := int64(512 << 20)
	if s := os.Getenv("FILEMAP_BENCH_FC_SIZE"); s != "" {
		n, err := parseBytes(s)
		if err != nil {
			b.Fatalf("FILEMAP_BENCH_FC_SIZE: %v", err)
		}
		size = n &^ (PageSize - 1)
	}
	gw := s3test.Start(b)
	bucket := gw.NewBucket(b, false)
	dir := b.TempDir()
	mem := filepath.Join(dir, "mem")
	writePattern(b, mem, size)
	data, err := os.ReadFile(mem)
	if err != nil {
		b.Fatal(err)
	}
	gw.Put(b, bucket, "vm/mem", data)
	data = nil
	uri := "s3://" + bucket + "/vm/mem"
	open := func(ctx context.Context) (store.Store, error) {
		o, err := s3store.Open(ctx, uri, s3store.Options{
			Endpoint:    gw.Endpoint,
			Region:      gw.Region,
			Credentials: credentials.NewStaticCredentialsProvider(gw.AccessKey, gw.SecretKey, ""),
		})
		if err != nil {
			return nil, err
		}
		return remote.New(o, remote.Config{}), nil
	}
	ws := workingSet(42, size/PageSize, 0.10)
	touch := filepath.Join(dir, "touch")
	writePages(b, touch, ws)
	rec := filepath.Join(dir, "ws")
	spans := []span{{0, size}}
	for range b.N {
		record := restoreRun(b, mem, spans, touch, Config{Record: rec, Open: open})
		demand := restoreRun(b, mem, spans, touch, Config{Open: open})
		replay := restoreRun(b, mem, spans, touch, Config{Prefetch: rec, Open: open})
		b.Logf("working set: %d pages of %d MiB, from %s", len(ws), size>>20, uri)
		b.Logf("record run: %v", record)
		b.Logf("on demand:  %v", demand)
		b.Logf("replayed:   %v", replay)
		speedup := float64(demand.elapsed) / float64(replay.elapsed)
		b.ReportMetric(demand.elapsed.Seconds(), "on-demand-s")
		b.ReportMetric(replay.elapsed.Seconds(), "replayed-s")
		b.ReportMetric(speedup, "restore-speedup")
	}
	b.ReportMetric(0, "ns/op")
}
