package filemap

// Copy-on-write mappings: the driver's commands that write, and the tests.
// The driver keeps the pages it wrote (driverState.written), and check
// compares what it reads with the file patched by them.

import (
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/internal/sigbus"
	"github.com/filemap/filemap/server"
)

// page is the bytes of page p as the mapping must show them: as written,
// else the file's, zero past its end.
func (st *driverState) page(written map[int64][]byte, p int64) []byte {
	if b, ok := written[p]; ok {
		return b
	}
	b := make([]byte, ps)
	n, _ := st.file.ReadAt(b, p*ps)
	clear(b[max(n, 0):])
	return b
}

// wrote records b written at off into written.
func (st *driverState) wrote(written map[int64][]byte, b []byte, off int64) {
	for len(b) > 0 {
		p := off / ps
		pg := st.page(written, p)
		k := copy(pg[off-p*ps:], b)
		written[p] = pg
		b, off = b[k:], off+int64(k)
	}
}

// overlay patches want, the file's bytes at off, with the pages written.
func (st *driverState) overlay(want []byte, off int64) {
	for p, b := range st.written {
		lo, hi := max(p*ps, off), min((p+1)*ps, off+int64(len(want)))
		if lo < hi {
			copy(want[lo-off:hi-off], b[lo-p*ps:])
		}
	}
}

// forget drops the pages written in [off, off+n), n 0 meaning to the end,
// as MADV_DONTNEED drops them from the mapping.
func (st *driverState) forget(off, n int64) {
	if n == 0 {
		n = int64(len(st.m.mem)) - off
	}
	for p := range st.written {
		if off <= p*ps && (p+1)*ps <= (off+n+ps-1)&^(ps-1) {
			delete(st.written, p)
		}
	}
}

func (st *driverState) ensureWritten() {
	if st.written == nil {
		st.written = map[int64][]byte{}
	}
}

// write stores n bytes made from seed at off, with plain stores.
func (st *driverState) write(off, n int64, seed uint64) string {
	b := pattern.Random(int(n), seed)
	if at, faulted := sigbus.Catch(st.m.mem, func() { copy(st.m.mem[off:off+n], b) }); faulted {
		return fmt.Sprintf("sigbus %d", at)
	}
	st.ensureWritten()
	st.wrote(st.written, b, off)
	return "ok"
}

// writeAt writes n bytes made from seed at off with WriteAt.
func (st *driverState) writeAt(off, n int64, seed uint64) string {
	b := pattern.Random(int(n), seed)
	got, err := st.m.WriteAt(b, off)
	st.ensureWritten()
	st.wrote(st.written, b[:got], off)
	if err != nil {
		return fmt.Sprintf("err %d %v", got, err)
	}
	return fmt.Sprintf("ok %d", got)
}

// randomWrites has threads write and read random pages for d, each thread
// its own pages (page % threads), every byte read checked; then checks
// every page written once more. It answers "ok WRITES READS".
func (st *driverState) randomWrites(threads int, d time.Duration) string {
	npages := (st.m.Size() + ps - 1) / ps
	res := make([]string, threads)
	mine := make([]map[int64][]byte, threads)
	counts := make([][2]int, threads)
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	for i := range threads {
		wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			r := rand.New(rand.NewPCG(uint64(i), 99))
			mine[i] = map[int64][]byte{}
			for time.Now().Before(stop) {
				p := r.Int64N(npages/int64(threads))*int64(threads) + int64(i)
				if p >= npages {
					continue
				}
				if r.IntN(3) == 0 {
					lo := r.Int64N(ps)
					hi := min(lo+1+r.Int64N(ps-lo), st.m.Size()-p*ps)
					if lo >= hi {
						continue
					}
					b := pattern.Random(int(hi-lo), r.Uint64())
					if at, faulted := sigbus.Catch(st.m.mem, func() { copy(st.m.mem[p*ps+lo:], b) }); faulted {
						res[i] = fmt.Sprintf("sigbus %d writing", at)
						return
					}
					st.wrote(mine[i], b, p*ps+lo)
					counts[i][0]++
					continue
				}
				if msg := st.checkPage(mine[i], p); msg != "" {
					res[i] = msg
					return
				}
				counts[i][1]++
			}
		})
	}
	wg.Wait()
	var writes, reads int
	for i := range threads {
		if res[i] != "" {
			return res[i]
		}
		for p := range mine[i] {
			if msg := st.checkPage(mine[i], p); msg != "" {
				return "at the end: " + msg
			}
		}
		writes, reads = writes+counts[i][0], reads+counts[i][1]
		st.ensureWritten()
		for p, b := range mine[i] {
			st.written[p] = b
		}
	}
	return fmt.Sprintf("ok %d %d", writes, reads)
}

// checkPage reads page p and compares it with what written says it holds.
func (st *driverState) checkPage(written map[int64][]byte, p int64) string {
	n := min(ps, st.m.Size()-p*ps)
	b, sig := st.load(p*ps, n)
	if sig >= 0 {
		return fmt.Sprintf("sigbus at %d", sig)
	}
	if j := firstDiff(b, st.page(written, p)[:n]); j >= 0 {
		return fmt.Sprintf("mismatch at %d", p*ps+int64(j))
	}
	return ""
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// A copy-on-write mapping: writes reach this mapping alone, never the
// file, the shared cache or another client's mapping; they survive the
// cache's eviction of the pages they copied; DontNeed drops them.
func TestCopyOnWrite(t *testing.T) {
	d := startDaemon(t, server.Config{})
	const size = 8<<20 + 1000 // a partial last page
	path := patternFile(t, size)
	sum := fileSum(t, path)
	a := startDriver(t, d.sock)
	a.open(path, "cow")
	b := startDriver(t, d.sock)
	b.open(path, "")

	// A write to a page nobody has read: a write fault on a missing page,
	// served by the handler; the rest of the page is the file's.
	before := d.spy.count()
	a.OK("write %d 100 1", 5*ps+10)
	if d.spy.count() == before {
		t.Fatal("a write to an uncached page did not read the store: the page is not the file's")
	}
	a.OK("read %d %d", 4*ps, 3*ps)
	// A whole page written after being read; the last page's tail.
	a.OK("read 0 %d", ps)
	a.OK("write 0 %d 2", ps)
	a.OK("write %d 10 3", size-10)
	// WriteAt across three pages, one of them never touched.
	if got := a.OK("writeat %d %d 4", 200*ps-50, 2*ps); got != fmt.Sprint(2*ps) {
		t.Fatalf("WriteAt wrote %s bytes, want %d", got, 2*ps)
	}
	a.OK("read 0 %d", size)
	a.OK("readat 0 %d", size)

	// Past the end: the bytes that fit are written, the rest is an error.
	if got := a.Do("writeat %d 10 5", size-4); !strings.HasPrefix(got, "err 4 ") || !strings.Contains(got, "past the object's end") {
		t.Fatalf("WriteAt across the end: %q, want 4 bytes written and an error naming the end", got)
	}
	if got := a.Do("writeat %d 1 5", size+1); !strings.HasPrefix(got, "err 0 ") || !strings.Contains(got, "outside the object") {
		t.Fatalf("WriteAt past the end: %q", got)
	}
	a.OK("read %d %d", size-ps, ps)

	// Nothing reached the shared cache or the file.
	b.OK("read 0 %d", size)
	if got := b.Do("writeat 0 10 6"); !strings.Contains(got, "read-only") {
		t.Fatalf("WriteAt on a read-only mapping: %q, want an error saying it is read-only", got)
	}
	if fileSum(t, path) != sum {
		t.Fatal("the file changed")
	}

	// The cache emptied: the written pages stay, the others are read again.
	if _, err := d.s.DropCaches(0); err != nil {
		t.Fatal(err)
	}
	before = d.spy.count()
	a.OK("read 0 %d", size)
	if d.spy.count() == before {
		t.Fatal("no store read after the cache was dropped: nothing was evicted")
	}
	b.OK("read 0 %d", size)

	// DontNeed drops the pages written: the file's bytes again.
	a.OK("clear %d %d", 4*ps, 3*ps)
	a.OK("read 0 %d", size)
	if fileSum(t, path) != sum {
		t.Fatal("the file changed")
	}
}

// Writes and reads at random in four threads of a copy-on-write mapping of
// a 64 MiB object through a 4 MiB cache: the cache evicts all the time,
// and every byte read is the one written there, else the file's.
func TestCopyOnWriteUnderBudget(t *testing.T) {
	d := startDaemon(t, server.Config{CacheBytes: 4 << 20})
	const size = 64 << 20
	path := patternFile(t, size)
	a := startDriver(t, d.sock)
	a.open(path, "cow")
	var writes, reads int
	if _, err := fmt.Sscan(a.OK("randw 4 2000"), &writes, &reads); err != nil {
		t.Fatal(err)
	}
	settle(t, d)
	st := d.s.Stats()
	t.Logf("%d writes, %d reads checked; %d evictions, %d refaults", writes, reads, st.Evictions, st.Refaults)
	if writes == 0 || reads == 0 || st.Evictions == 0 {
		t.Fatalf("%d writes, %d reads, %d evictions: the test pressed on nothing", writes, reads, st.Evictions)
	}
	// Every page once more, after the threads: the written ones as written.
	a.OK("read 0 %d", size)
	b := startDriver(t, d.sock)
	b.open(path, "")
	b.OK("read 0 %d", size)
}

// Writes to a copy-on-write mapping of a cache collapsed into huge folios,
// then mapped again by reads: the kernel splits the huge mapping and copies
// the 4 KiB page written. The written pages outlive the cache.
func TestCopyOnWriteHuge(t *testing.T) {
	d := startDaemon(t, server.Config{})
	b := d.s.Backing()
	if !b.Huge() {
		if os.Geteuid() != 0 {
			t.Skipf("huge caches need CAP_SYS_ADMIN for a private tmpfs; run as root (%s)", b.Reason())
		}
		t.Fatalf("root, and the daemon has no huge backing: %s", b.Reason())
	}
	const size = 16 << 20
	path := patternFile(t, size)
	a := startDriver(t, d.sock)
	a.open(path, "cow")
	a.OK("read 0 %d", size)
	b.WaitCollapses()
	if st := b.CollapseStats(); st.Collapsed == 0 {
		t.Fatalf("no extent collapsed: %+v", st)
	}
	a.OK("clear 0 0") // unmapped, so the next reads may map whole extents
	a.OK("read 0 %d", size)
	for i, off := range []int64{0, 2<<20 + 5*ps + 1, 9<<20 - 3, size - ps} {
		a.OK("write %d %d %d", off, 7, i)
	}
	a.OK("read 0 %d", size)
	if _, err := d.s.DropCaches(0); err != nil {
		t.Fatal(err)
	}
	a.OK("read 0 %d", size)
}

// A daemon killed and started again under a copy-on-write mapping: the
// written pages are the client's own memory and stay; the rest are served
// by the new daemon.
func TestCopyOnWriteAcrossRestart(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "filemap.sock")
	d := startDaemonProc(t, sock)
	const size = 4 << 20
	path := patternFile(t, size)
	a := startDriver(t, sock)
	a.open(path, "cow advice=random")
	a.OK("write %d 100 1", 10)
	a.OK("write %d %d 2", 3<<20, ps)
	d.kill()
	d2 := startDaemonProc(t, sock)
	a.OK("read 0 %d", size)
	if st := d2.stats(); st.StoreBytes == 0 {
		t.Fatal("the restarted daemon read nothing: the pages not written were not its to serve")
	}
}
