package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/filemap/filemap"
	"github.com/filemap/filemap/internal/progress"
	"github.com/filemap/filemap/internal/sigbus"
	"github.com/filemap/filemap/pagecache"
	"golang.org/x/sys/unix"
)

// Helpers shared by demo and bench: first touches timed one load per page,
// the generated content, and the page cache's state.

// The cases and mappings that demo and bench both measure.
const (
	caseRandom = "random 4K, cold"
	caseSeq    = "sequential, cold"
	caseWarm   = "sequential, warm"

	mapKernel  = "kernel mmap"
	mapFilemap = "filemap"
)

const (
	pageSize = pagecache.PageSize
	hugeSize = pagecache.HugeSize
)

// residentPages counts f's pages in the page cache, with mincore(2).
func residentPages(f *os.File, size int64) (int64, error) {
	mem, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return 0, fmt.Errorf("mmap %s: %w", f.Name(), err)
	}
	defer unix.Munmap(mem)
	vec := make([]byte, (size+pageSize-1)/pageSize)
	// x/sys/unix has no Mincore wrapper.
	_, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&mem[0])), uintptr(len(mem)), uintptr(unsafe.Pointer(&vec[0])))
	runtime.KeepAlive(vec)
	if e != 0 {
		return 0, fmt.Errorf("mincore %s: %w", f.Name(), e)
	}
	var n int64
	for _, v := range vec {
		n += int64(v & 1)
	}
	return n, nil
}

// faultCounts are a row's faults and store I/O over its timed touches.
type faultCounts struct {
	// MajorFaults and MinorFaults are getrusage(RUSAGE_SELF) deltas on the
	// rows of the kernel's mappings and of reads, and the handler's
	// counters' deltas on filemap rows (faults that reached the handler:
	// pages already in its cache are mapped by the kernel with no message).
	MajorFaults uint64 `json:"major_faults"`
	MinorFaults uint64 `json:"minor_faults"`
	// StoreReads and StoreBytes are the handler's store I/O; filemap rows only.
	StoreReads *uint64 `json:"store_reads,omitempty"`
	StoreBytes *uint64 `json:"store_bytes,omitempty"`
	// RusageMajor and RusageMinor are this process's getrusage deltas, on
	// every row.
	RusageMajor uint64 `json:"rusage_major_faults"`
	RusageMinor uint64 `json:"rusage_minor_faults"`
}

// kernelCounts are the counts of a row of the kernel's, from this
// process's getrusage before and after its touches.
func kernelCounts(ru0, ru1 unix.Rusage) faultCounts {
	major, minor := uint64(ru1.Majflt-ru0.Majflt), uint64(ru1.Minflt-ru0.Minflt)
	return faultCounts{MajorFaults: major, MinorFaults: minor, RusageMajor: major, RusageMinor: minor}
}

// filemapCounts are the counts of a filemap row, from the handler's
// counters and this process's getrusage before and after its touches.
func filemapCounts(st0, st1 filemap.Stats, ru0, ru1 unix.Rusage) faultCounts {
	reads, bytes := st1.StoreReads-st0.StoreReads, st1.StoreBytes-st0.StoreBytes
	return faultCounts{
		MajorFaults: st1.MajorFaults - st0.MajorFaults, MinorFaults: st1.MinorFaults - st0.MinorFaults,
		StoreReads: &reads, StoreBytes: &bytes,
		RusageMajor: uint64(ru1.Majflt - ru0.Majflt), RusageMinor: uint64(ru1.Minflt - ru0.Minflt),
	}
}

// storeSurprise says what is wrong with a filemap row's store I/O, if
// anything: reads with its cache warm, or none with it cold.
func (c faultCounts) storeSurprise(cold bool) string {
	switch {
	case !cold && *c.StoreReads != 0:
		return fmt.Sprintf("filemap read the store %d times (%d bytes) with its cache warm", *c.StoreReads, *c.StoreBytes)
	case cold && *c.StoreReads == 0:
		return "filemap did no store I/O with its cache supposedly cold"
	}
	return ""
}

// handlerName says which handler the options of a command's --socket
// reach: a daemon's socket, else $FILEMAP_SOCKET's, else a private
// handler.
func handlerName(socket string) string {
	if socket == "" {
		socket = os.Getenv("FILEMAP_SOCKET")
	}
	if socket == "" {
		return "private"
	}
	return "daemon at " + socket
}

// workDir is where a command writes its generated files: dir, made if
// need be, else a new temporary directory, which cleanup removes unless
// keep. A dir the user named is never removed.
func workDir(dir, prefix string, keep bool) (string, func(), error) {
	if dir != "" {
		return dir, func() {}, os.MkdirAll(dir, 0o755)
	}
	tmp, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", nil, err
	}
	if keep {
		return tmp, func() {}, nil
	}
	return tmp, func() { os.RemoveAll(tmp) }, nil
}

// kernelMap maps f with the kernel's mmap (MAP_SHARED, PROT_READ) and advice.
func kernelMap(f *os.File, size int64, advice int) ([]byte, error) {
	mem, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap %s: %w", f.Name(), err)
	}
	if err := unix.Madvise(mem, advice); err != nil {
		unix.Munmap(mem)
		return nil, fmt.Errorf("madvise %s: %w", f.Name(), err)
	}
	return mem, nil
}

func rusage() unix.Rusage {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return ru
}

// sink keeps the touches' loads from being optimised away.
var sink byte

// timeTouches loads one byte of each page of mem — the pages in order, or
// all of them in sequence if order is nil — and returns the time it took.
// A page that cannot be read is an error naming its offset.
func timeTouches(mem []byte, order []int64) (elapsed time.Duration, err error) {
	runtime.GC() // no collection of earlier garbage during the scan
	err = guardFaults(mem, func() {
		var x byte
		start := time.Now()
		if order == nil {
			for off := 0; off < len(mem); off += pageSize {
				x ^= mem[off]
			}
		} else {
			for _, p := range order {
				x ^= mem[p*pageSize]
			}
		}
		elapsed = time.Since(start)
		sink = x
	})
	return elapsed, err
}

// guardFaults runs f, turning a memory fault (SIGBUS from a page that could
// not be read) in mem into an error naming its offset.
func guardFaults(mem []byte, f func()) error { return sigbus.Check(mem, f) }

// genWord is the generated content's little-endian 8-byte word at off (a
// multiple of 8): a hash of the offset and the file's seed (splitmix64), so
// that a page shown at the wrong offset, a page of zeros or a page of the
// other file is caught.
func genWord(seed uint64, off int64) uint64 {
	z := uint64(off) + seed*0x9e3779b97f4a7c15
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// genByte is the generated content's byte at off.
func genByte(seed uint64, off int64) byte {
	return byte(genWord(seed, off&^7) >> (8 * (off & 7)))
}

// fillGenerated fills b with the generated content at offset off.
func fillGenerated(b []byte, off int64, seed uint64) {
	i := 0
	for ; i < len(b) && (off+int64(i))&7 != 0; i++ {
		b[i] = genByte(seed, off+int64(i))
	}
	for ; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], genWord(seed, off+int64(i)))
	}
	for ; i < len(b); i++ {
		b[i] = genByte(seed, off+int64(i))
	}
}

// writeGenerated writes size bytes of generated content to f and syncs it,
// so that its pages are clean and POSIX_FADV_DONTNEED can drop them. A
// gigabyte takes seconds: p shows how far it has got.
func writeGenerated(f *os.File, size int64, seed uint64, p *progress.Reporter) error {
	var written atomic.Int64
	name := filepath.Base(f.Name()) // the directory is in the report
	p.Live("writing %s (%s)", name, fmtBytes(size))
	stop := p.Every(200*time.Millisecond, func() string {
		return fmt.Sprintf("writing %s: %s of %s", name, fmtBytes(written.Load()), fmtBytes(size))
	})
	defer stop()
	buf := make([]byte, 4<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		b := buf[:min(int64(len(buf)), size-off)]
		fillGenerated(b, off, seed)
		if _, err := f.WriteAt(b, off); err != nil {
			return err
		}
		written.Store(off + int64(len(b)))
	}
	return f.Sync()
}

func fmtDuration(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	}
}

// fmtBytes is n bytes for a person to read: 412.3 MiB, 1 GiB.
func fmtBytes(n int64) string {
	const units = "KMGTPE"
	if n < 1<<10 {
		return fmt.Sprintf("%d bytes", n)
	}
	i, v := 0, float64(n)/(1<<10)
	for ; v >= 1<<10 && i < len(units)-1; i++ {
		v /= 1 << 10
	}
	return strings.Replace(fmt.Sprintf("%.1f %ciB", v, units[i]), ".0 ", " ", 1)
}

func fmtSize(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}
