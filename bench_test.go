package filemap

// Benchmarks: filemap beside the kernel's own mmap of the same file, in the
// same run, reported as ratios (this machine is shared and noisy; absolute
// times are hints). The object is a 1 GiB file unless FILEMAP_BENCH_SIZE
// says otherwise (e.g. 256M); FILEMAP_BENCH_FILE names an existing file to
// use instead.

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

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
		writePattern(b, benchFile.path, size)
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
// root (drop_caches, as the cold case asks), else just the file's.
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

// sink keeps the compiler from dropping the loads of touch.
var sink byte

// touch reads one byte of every page: a first touch.
func touch(mem []byte) {
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
	touch(mem)
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
	touch(m.Bytes())
	return time.Since(start)
}

func report(b *testing.B, size int64, kernel, fm time.Duration) {
	mbps := func(d time.Duration) float64 { return float64(size) * float64(b.N) / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(kernel), "kernel-MB/s")
	b.ReportMetric(mbps(fm), "filemap-MB/s")
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
