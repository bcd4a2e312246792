package filemap

// Benchmarks: filemap beside the kernel's own mmap of the same file, in the
// same run, reported as ratios (this machine is shared and noisy; absolute
// times are hints). The object is a 1 GiB file unless FILEMAP_BENCH_SIZE
// says otherwise (e.g. 256M); FILEMAP_BENCH_FILE names an existing file to
// use instead.

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/floor"
	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/internal/touch"
	"golang.org/x/sys/unix"
)

var benchFile struct {
	once sync.Once
	path string
	size int64
	err  error
}

func benchObject(b *testing.B) (string, int64) {
	benchFile.once.Do(func() {
		if p := os.Getenv("FILEMAP_BENCH_FILE"); p != "" {
			st, err := os.Stat(p)
			benchFile.path, benchFile.err = p, err
			if err == nil {
				benchFile.size = st.Size()
			}
			return
		}
		size := int64(1 << 30)
		if s := os.Getenv("FILEMAP_BENCH_SIZE"); s != "" {
			size = parseBenchSize(s)
		}
		dir, err := os.MkdirTemp("", "filemap-bench-")
		if err != nil {
			benchFile.err = err
			return
		}
		benchFile.path, benchFile.size = filepath.Join(dir, "object"), size
		pattern.WriteFile(b, benchFile.path, size)
	})
	if benchFile.err != nil {
		b.Fatal(benchFile.err)
	}
	return benchFile.path, benchFile.size
}

func parseBenchSize(s string) int64 {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	}
	n, _ := strconv.ParseInt(s, 10, 64)
	return n * mult
}

// dropFileCache empties the kernel's page cache of path: all of it as
// root (drop_caches: nothing of the file cached, its inode included), else
// just the file's.
func dropFileCache(b *testing.B, path string) {
	unix.Sync()
	if os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0) == nil {
		return
	}
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		b.Fatal(err)
	}
}

// sink keeps the compiler from dropping the loads of touchAll.
var sink byte

// touchAll reads one byte of every page: a first touch.
func touchAll(mem []byte) {
	var sum byte
	for i := 0; i < len(mem); i += ps {
		sum += mem[i]
	}
	sink += sum
}

// kernelScan maps path with the kernel's mmap and touches every page.
func kernelScan(b *testing.B, path string, size int64) time.Duration {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	mem, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Munmap(mem)
	start := time.Now()
	touchAll(mem)
	return time.Since(start)
}

// filemapScan maps path through filemap and touches every page.
func filemapScan(b *testing.B, path string) time.Duration {
	m, err := Open(context.Background(), path)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	start := time.Now()
	touchAll(m.Bytes())
	return time.Since(start)
}

func report(b *testing.B, size int64, kernel, fm time.Duration) {
	reportRate(b, "MB/s", float64(size)/1e6, kernel, fm)
}

// reportRate reports per units of work per iteration, done in kernel and
// fm in all, as kernel-unit and filemap-unit rates and their ratio.
func reportRate(b *testing.B, unit string, per float64, kernel, fm time.Duration) {
	rate := func(d time.Duration) float64 { return per * float64(b.N) / d.Seconds() }
	b.ReportMetric(rate(kernel), "kernel-"+unit)
	b.ReportMetric(rate(fm), "filemap-"+unit)
	b.ReportMetric(kernel.Seconds()/fm.Seconds(), "filemap/kernel")
	b.ReportMetric(0, "ns/op")
}

// Sequential first touch of a cold file: the kernel's page cache dropped
// before each scan, and filemap's cache emptied too.
func BenchmarkSequentialCold(b *testing.B) {
	path, size := benchObject(b)
	var kernel, fm time.Duration
	for b.Loop() {
		dropFileCache(b, path)
		kernel += kernelScan(b, path, size)
		if err := DropCaches(context.Background()); err != nil {
			b.Fatal(err)
		}
		dropFileCache(b, path)
		fm += filemapScan(b, path)
	}
	report(b, size, kernel, fm)
}

// A cold sequential first touch through filemap beside, in one run, the
// pread loop (1 MiB reads into one buffer: the I/O limit) and the floor of
// filemap's fill path (internal/floor): floor/pread is what writing into
// new cache pages costs, filemap/floor what the rest of filemap costs.
func BenchmarkSequentialFloor(b *testing.B) {
	path, size := benchObject(b)
	var pread, fill, fm time.Duration
	for b.Loop() {
		dropFileCache(b, path)
		pread += preadLoop(b, path, size)
		dropFileCache(b, path)
		d, err := floor.Copy(path, size)
		if err != nil {
			b.Fatal(err)
		}
		fill += d
		if err := DropCaches(context.Background()); err != nil {
			b.Fatal(err)
		}
		dropFileCache(b, path)
		fm += filemapScan(b, path)
	}
	rate := func(d time.Duration) float64 { return float64(size) * float64(b.N) / 1e6 / d.Seconds() }
	b.ReportMetric(rate(pread), "pread-MB/s")
	b.ReportMetric(rate(fill), "floor-MB/s")
	b.ReportMetric(rate(fm), "filemap-MB/s")
	b.ReportMetric(pread.Seconds()/fill.Seconds(), "floor/pread")
	b.ReportMetric(fill.Seconds()/fm.Seconds(), "filemap/floor")
	b.ReportMetric(pread.Seconds()/fm.Seconds(), "filemap/pread")
	b.ReportMetric(0, "ns/op")
}

// preadLoop reads path 1 MiB at a time into one buffer.
func preadLoop(b *testing.B, path string, size int64) time.Duration {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, floor.PieceSize)
	start := time.Now()
	if err := floor.Pread(f, buf, size); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// Sequential first touch of a warm file: in the kernel's page cache for
// mmap; in filemap's cache (a new mapping of an object already read) for
// filemap, so no store I/O at all.
func BenchmarkSequentialWarm(b *testing.B) {
	path, size := benchObject(b)
	kernelScan(b, path, size)
	filemapScan(b, path)
	var kernel, fm time.Duration
	for b.Loop() {
		kernel += kernelScan(b, path, size)
		fm += filemapScan(b, path)
	}
	report(b, size, kernel, fm)
}

// benchPages is a fixed-seed choice of distinct pages of an object of size
// bytes: 1/16 of them, at most 4096, in random order.
func benchPages(size int64) []int64 {
	npages := (size + ps - 1) / ps
	n := min(max(npages/16, 1), 4096)
	r := rand.New(rand.NewPCG(0x66696c656d6170, 3))
	seen := make(map[int64]bool, n)
	pages := make([]int64, 0, n)
	for int64(len(pages)) < n {
		if p := r.Int64N(npages); !seen[p] {
			seen[p] = true
			pages = append(pages, p)
		}
	}
	return pages
}

// touchPages loads one byte of each of pages, split among threads
// goroutines each locked to an OS thread of its own, and returns the time
// from the start until all are done. If lat is not nil, it gets the time of
// each load, in pages' order.
func touchPages(b testing.TB, mem []byte, pages []int64, threads int, lat []time.Duration) time.Duration {
	runtime.GC()
	elapsed, err := touch.Pages(mem, pages, ps, threads, lat)
	if err != nil {
		b.Fatal(err)
	}
	return elapsed
}

// Random 4 KiB first touches of a cold file, split among 1 and 2 threads:
// the kernel's mmap with MADV_RANDOM beside filemap with Random advice.
func BenchmarkRandomCold(b *testing.B) {
	path, size := benchObject(b)
	pages := benchPages(size)
	for _, threads := range []int{1, 2} {
		b.Run(fmt.Sprintf("threads=%d", threads), func(b *testing.B) {
			f, err := os.Open(path)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			var kernel, fm time.Duration
			for b.Loop() {
				dropFileCache(b, path)
				mem, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
				if err != nil {
					b.Fatal(err)
				}
				if err := unix.Madvise(mem, unix.MADV_RANDOM); err != nil {
					b.Fatal(err)
				}
				kernel += touchPages(b, mem, pages, threads, nil)
				unix.Munmap(mem)

				if err := DropCaches(context.Background()); err != nil {
					b.Fatal(err)
				}
				dropFileCache(b, path)
				m, err := Open(context.Background(), path, WithAdvice(Random))
				if err != nil {
					b.Fatal(err)
				}
				fm += touchPages(b, m.Bytes(), pages, threads, nil)
				m.Close()
			}
			reportRate(b, "faults/s", float64(len(pages)), kernel, fm)
		})
	}
}

// Fault service latency with no disk I/O: random 4 KiB first touches, one
// at a time, of a mapping of a file in /dev/shm (a copy of the first 64 MiB
// of the benchmark's object), with filemap's cache emptied before each
// pass: the handler's round trip and a memory copy. Reports the 50th and
// 99th percentiles of all the touches' times.
func BenchmarkFaultLatencyShm(b *testing.B) {
	path, size := benchObject(b)
	if fi, err := os.Stat("/dev/shm"); err != nil || !fi.IsDir() {
		b.Skip("no /dev/shm")
	}
	size = min(size, 64<<20)
	src, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	dst, err := os.CreateTemp("/dev/shm", "filemap-bench-*.bin")
	if err != nil {
		b.Skip("cannot write to /dev/shm: ", err)
	}
	defer os.Remove(dst.Name())
	defer dst.Close()
	if _, err := io.Copy(dst, io.NewSectionReader(src, 0, size)); err != nil {
		b.Fatal(err)
	}
	pages := benchPages(size)
	var all []time.Duration
	for b.Loop() {
		if err := DropCaches(context.Background()); err != nil {
			b.Fatal(err)
		}
		m, err := Open(context.Background(), dst.Name(), WithAdvice(Random))
		if err != nil {
			b.Fatal(err)
		}
		lat := make([]time.Duration, len(pages))
		touchPages(b, m.Bytes(), pages, 1, lat)
		m.Close()
		all = append(all, lat...)
	}
	slices.Sort(all)
	at := func(q int) float64 {
		i := min(max((len(all)*q+99)/100, 1), len(all)) - 1
		return float64(all[i]) / float64(time.Microsecond)
	}
	b.ReportMetric(at(50), "p50-µs")
	b.ReportMetric(at(99), "p99-µs")
	b.ReportMetric(0, "ns/op")
}

// Faults of one thread at random pages of the second half of the object
// while another thread scans the object from its start, cold: what a
// fault costs when its page is not what the readahead in flight brings.
// The same for the kernel's mmap in the same run. A fault must not wait
// behind the scan's transfers (the cache's writes let a faulter's pages
// go first). Reports the faults' 50th and 99th percentiles, and how many
// the faulting thread made during the scan (one every 200 µs of its own
// time, at most).
func BenchmarkFaultDuringScan(b *testing.B) {
	path, size := benchObject(b)
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var kernel, fm []time.Duration
	for b.Loop() {
		dropFileCache(b, path)
		mem, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			b.Fatal(err)
		}
		kernel = append(kernel, faultsDuringScan(mem)...)
		unix.Munmap(mem)

		if err := DropCaches(context.Background()); err != nil {
			b.Fatal(err)
		}
		dropFileCache(b, path)
		m, err := Open(context.Background(), path)
		if err != nil {
			b.Fatal(err)
		}
		fm = append(fm, faultsDuringScan(m.Bytes())...)
		m.Close()
	}
	for name, lat := range map[string][]time.Duration{"kernel": kernel, "filemap": fm} {
		slices.Sort(lat)
		at := func(q int) float64 {
			if len(lat) == 0 {
				return 0
			}
			i := min(max((len(lat)*q+99)/100, 1), len(lat)) - 1
			return float64(lat[i]) / float64(time.Microsecond)
		}
		b.ReportMetric(at(50), name+"-p50-µs")
		b.ReportMetric(at(99), name+"-p99-µs")
		b.ReportMetric(float64(len(lat))/float64(b.N), name+"-faults")
	}
	b.ReportMetric(0, "ns/op")
}

// faultsDuringScan scans mem on one locked thread and, on another, loads a
// random page of its second half every 200 µs until the scan ends, and
// returns the time of each of those loads.
func faultsDuringScan(mem []byte) []time.Duration {
	done := make(chan struct{})
	var lat []time.Duration
	var wg sync.WaitGroup
	wg.Go(func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		touchAll(mem)
		close(done)
	})
	wg.Go(func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		half := len(mem) / ps / 2
		var sum byte
		for {
			select {
			case <-done:
				sink += sum
				return
			default:
			}
			p := half + rand.IntN(half)
			start := time.Now()
			sum += mem[p*ps]
			lat = append(lat, time.Since(start))
			time.Sleep(200 * time.Microsecond)
		}
	})
	wg.Wait()
	return lat
}
