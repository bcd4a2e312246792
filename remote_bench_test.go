package filemap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/internal/s3test"
	"golang.org/x/sys/unix"
)

// startServeProcess runs a daemon in a child process, with this process's
// environment plus env, and returns its socket. Benchmarks fault in their
// own process, so their handler must live in another: a fault blocks its
// thread, and the Go runtime stopping the world for a collection would wait
// for it while the handler's goroutines are stopped too.
func startServeProcess(tb testing.TB, env ...string) (socket string, cmd *exec.Cmd) {
	tb.Helper()
	socket = filepath.Join(tb.TempDir(), "filemap.sock")
	cmd = exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), env...), envRole+"=serve", envSocket+"="+socket)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ready := make([]byte, 6)
	if _, err := io.ReadFull(out, ready); err != nil {
		tb.Fatalf("daemon did not start: %v", err)
	}
	return socket, cmd
}

// BenchmarkS3 maps an object of the local versitygw (512 MiB, or
// FILEMAP_BENCH_S3_SIZE) and compares, in one run: a sequential first touch
// of every page through filemap with a single-stream GET of the object and
// with a parallel ranged download (8 × 8 MiB ranges in flight), all with
// the same SDK; and the p50 of random 4 KiB first touches from 8 threads
// with the p50 of one 4 KiB ranged GET. The fill floor is the parallel
// download written into a new memfd (see timeGetInto).
func BenchmarkS3(b *testing.B) {
	gw, bucket, key, size := s3BenchObject(b)
	uri := "s3://" + bucket + "/" + key
	socket, _ := startServeProcess(b)
	ctx := context.Background()

	var single, parallel, parallelMem, floor, scan time.Duration
	var faultLat, getLat, getLat8 []time.Duration
	for b.Loop() {
		single += timeGet(b, gw.Client, bucket, key, size, 1)
		parallel += timeGet(b, gw.Client, bucket, key, size, 8)
		parallelMem += timeGetInto(b, gw.Client, bucket, key, size, 8, false)
		floor += timeGetInto(b, gw.Client, bucket, key, size, 8, true)
		if err := DropCaches(ctx, WithSocket(socket)); err != nil {
			b.Fatal(err)
		}
		m, err := Open(ctx, uri, WithSocket(socket))
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		touchAll(m.Bytes())
		scan += time.Since(start)
		m.Close()
		if testing.Verbose() {
			st, _ := Stat(ctx, WithSocket(socket))
			b.Logf("scan: %+v", st)
		}

		if err := DropCaches(ctx, WithSocket(socket)); err != nil {
			b.Fatal(err)
		}
		m, err = Open(ctx, uri, WithSocket(socket), WithAdvice(Random))
		if err != nil {
			b.Fatal(err)
		}
		pages := benchPages(size)[:min(2048, len(benchPages(size)))]
		lat := make([]time.Duration, len(pages))
		touchPages(b, m.Bytes(), pages, 8, lat)
		faultLat = append(faultLat, lat...)
		m.Close()
		getLat = append(getLat, smallGets(b, gw.Client, bucket, key, size, 200)...)
		getLat8 = append(getLat8, parallelSmallGets(b, gw.Client, bucket, key, size, 8, 100)...)
	}
	rate := func(d time.Duration) float64 { return float64(size) * float64(b.N) / 1e6 / d.Seconds() }
	b.ReportMetric(rate(single), "single-GET-MB/s")
	b.ReportMetric(rate(parallel), "parallel-GET-MB/s")
	b.ReportMetric(rate(scan), "filemap-MB/s")
	b.ReportMetric(single.Seconds()/scan.Seconds(), "filemap/single-GET")
	b.ReportMetric(parallel.Seconds()/scan.Seconds(), "filemap/parallel-GET")
	b.ReportMetric(rate(parallelMem), "parallel-GET-to-memory-MB/s")
	b.ReportMetric(parallelMem.Seconds()/scan.Seconds(), "filemap/parallel-GET-to-memory")
	// The floor beside the targets' baselines: how far any page cache in
	// memfds could get on this machine, before faults.
	b.ReportMetric(rate(floor), "fill-floor-MB/s")
	b.ReportMetric(parallel.Seconds()/floor.Seconds(), "fill-floor/parallel-GET")
	b.ReportMetric(single.Seconds()/floor.Seconds(), "fill-floor/single-GET")
	b.ReportMetric(floor.Seconds()/scan.Seconds(), "filemap/fill-floor")
	f50, g50 := median(faultLat), median(getLat)
	b.ReportMetric(float64(f50.Microseconds()), "fault-p50-µs")
	b.ReportMetric(float64(g50.Microseconds()), "GET-4K-p50-µs")
	b.ReportMetric(f50.Seconds()/g50.Seconds(), "fault-p50/GET-p50")
	// The faults come 8 at a time; so do these GETs: what the store's
	// latency is under the same load.
	g8 := median(getLat8)
	b.ReportMetric(float64(g8.Microseconds()), "GET-4K-8-threads-p50-µs")
	b.ReportMetric(f50.Seconds()/g8.Seconds(), "fault-p50/GET-8-threads-p50")
	b.ReportMetric(0, "ns/op")
}

// s3BenchObject starts a versitygw and puts the benchmarks' object in a
// bucket of it: 512 MiB of the test pattern, or FILEMAP_BENCH_S3_SIZE.
func s3BenchObject(b *testing.B) (gw *s3test.Server, bucket, key string, size int64) {
	gw = s3test.Start(b)
	gw.SetEnv(b)
	size = int64(512 << 20)
	if s := os.Getenv("FILEMAP_BENCH_S3_SIZE"); s != "" {
		size = parseBenchSize(s)
	}
	bucket, key = gw.NewBucket(b, false), "bench/object.bin"
	ref := filepath.Join(b.TempDir(), "object")
	pattern.WriteFile(b, ref, size)
	data, err := os.ReadFile(ref)
	if err != nil {
		b.Fatal(err)
	}
	gw.Put(b, bucket, key, data)
	return gw, bucket, key, size
}

// Faults of one thread at random pages of the second half of an S3 object
// while another thread scans it from its start, through a daemon: the
// loads' p50 and p99 beside one 4 KiB GET's p50. A fault's fetch has a
// request slot kept for it and goes before the scan's readahead, so it
// should cost about one request, not wait for the scan's transfers.
func BenchmarkS3FaultDuringScan(b *testing.B) {
	gw, bucket, key, size := s3BenchObject(b)
	uri := "s3://" + bucket + "/" + key
	socket, _ := startServeProcess(b)
	ctx := context.Background()
	var lat, getLat []time.Duration
	for b.Loop() {
		if err := DropCaches(ctx, WithSocket(socket)); err != nil {
			b.Fatal(err)
		}
		m, err := Open(ctx, uri, WithSocket(socket))
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, faultsDuringScan(m.Bytes())...)
		m.Close()
		getLat = append(getLat, smallGets(b, gw.Client, bucket, key, size, 100)...)
	}
	slices.Sort(lat)
	g50 := median(getLat)
	b.ReportMetric(float64(median(lat).Microseconds()), "fault-p50-µs")
	b.ReportMetric(float64(lat[min(len(lat)*99/100, len(lat)-1)].Microseconds()), "fault-p99-µs")
	b.ReportMetric(float64(len(lat))/float64(b.N), "faults")
	b.ReportMetric(float64(g50.Microseconds()), "GET-4K-p50-µs")
	b.ReportMetric(lat[min(len(lat)*99/100, len(lat)-1)].Seconds()/g50.Seconds(), "fault-p99/GET-p50")
	b.ReportMetric(0, "ns/op")
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// timeGet downloads the object with streams ranged GETs of 8 MiB in flight
// (one plain GET when streams is 1) and returns the time it took.
func timeGet(b *testing.B, c *s3.Client, bucket, key string, size int64, streams int) time.Duration {
	const part = 8 << 20
	start := time.Now()
	if streams == 1 {
		out, err := c.GetObject(context.Background(), &s3.GetObjectInput{Bucket: &bucket, Key: &key})
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, out.Body)
		out.Body.Close()
		if err != nil || n != size {
			b.Fatalf("GET s3://%s/%s: %d bytes, %v", bucket, key, n, err)
		}
		return time.Since(start)
	}
	next := make(chan int64)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range streams {
		wg.Go(func() {
			for off := range next {
				rng := fmt.Sprintf("bytes=%d-%d", off, min(off+part, size)-1)
				out, err := c.GetObject(context.Background(), &s3.GetObjectInput{Bucket: &bucket, Key: &key, Range: aws.String(rng)})
				if err == nil {
					_, err = io.Copy(io.Discard, out.Body)
					out.Body.Close()
				}
				if err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
				}
			}
		})
	}
	for off := int64(0); off < size; off += part {
		next <- off
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	return time.Since(start)
}

// timeGetInto downloads the object as timeGet does with streams ranged
// GETs, but keeps the bytes, and returns the time it took. Into memory
// (cache false): into one new anonymous mapping of the object's size, as a
// program that keeps what it downloads must; every page of it is new
// memory, which a page cache filling pays for too (on a VM whose host takes
// back freed memory, a write to a new page is a fault in the host). Into a
// cache (cache true): each range read into a buffer of its stream and
// written with pwrite into one new memfd, as filemap's fills write its page
// cache: the floor of a scan through a mapping, with no fault, no handler
// and no client.
func timeGetInto(b *testing.B, c *s3.Client, bucket, key string, size int64, streams int, cache bool) time.Duration {
	const part = 8 << 20
	var mem []byte
	fd := -1
	var err error
	if cache {
		fd, err = unix.MemfdCreate("filemap-bench-floor", unix.MFD_CLOEXEC)
		if err == nil {
			defer unix.Close(fd)
			err = unix.Ftruncate(fd, size)
		}
	} else {
		mem, err = unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		defer unix.Munmap(mem)
	}
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	next := make(chan int64)
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for range streams {
		wg.Go(func() {
			buf := make([]byte, part)
			for off := range next {
				end := min(off+part, size)
				rng := fmt.Sprintf("bytes=%d-%d", off, end-1)
				out, err := c.GetObject(context.Background(), &s3.GetObjectInput{Bucket: &bucket, Key: &key, Range: aws.String(rng)})
				if err == nil {
					if cache {
						_, err = io.ReadFull(out.Body, buf[:end-off])
						if err == nil {
							_, err = unix.Pwrite(fd, buf[:end-off], off)
						}
					} else {
						_, err = io.ReadFull(out.Body, mem[off:end])
					}
					out.Body.Close()
				}
				if err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		})
	}
	for off := int64(0); off < size; off += part {
		next <- off
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	return time.Since(start)
}

// parallelSmallGets times n ranged GETs of 4 KiB at spread offsets in each
// of threads goroutines at once, as the faults of touchPages come.
func parallelSmallGets(b *testing.B, c *s3.Client, bucket, key string, size int64, threads, n int) []time.Duration {
	lat := make([][]time.Duration, threads)
	errs := make([]error, threads)
	var wg sync.WaitGroup
	for t := range threads {
		wg.Go(func() { lat[t], errs[t] = smallGetsFrom(c, bucket, key, size, n, t*n) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		b.Fatal(err)
	}
	return slices.Concat(lat...)
}

// smallGets times n ranged GETs of 4 KiB at spread offsets, one at a time.
func smallGets(b *testing.B, c *s3.Client, bucket, key string, size int64, n int) []time.Duration {
	lat, err := smallGetsFrom(c, bucket, key, size, n, 0)
	if err != nil {
		b.Fatal(err)
	}
	return lat
}

// smallGetsFrom is smallGets from the first'th of the spread offsets on.
func smallGetsFrom(c *s3.Client, bucket, key string, size int64, n, first int) ([]time.Duration, error) {
	lat := make([]time.Duration, n)
	for i := range lat {
		off := (int64(first+i) * 7919 * ps) % (size - ps)
		rng := fmt.Sprintf("bytes=%d-%d", off, off+ps-1)
		start := time.Now()
		out, err := c.GetObject(context.Background(), &s3.GetObjectInput{Bucket: &bucket, Key: &key, Range: aws.String(rng)})
		if err != nil {
			return nil, fmt.Errorf("GET s3://%s/%s %s: %w", bucket, key, rng, err)
		}
		io.Copy(io.Discard, out.Body)
		out.Body.Close()
		lat[i] = time.Since(start)
	}
	return lat, nil
}
