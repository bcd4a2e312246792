package filemap

// Fault injection with real processes: a store that fails, is slow past
// the daemon's fault timeout, or hangs for some pages; clients SIGKILLed in
// the middle of faults, a hundred times; a 1 MiB cache under a 256 MiB
// working set. Every wait is bounded, and each test stops by itself.

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/filemap/filemap/internal/child"
	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/internal/testutil"
	"github.com/filemap/filemap/server"
)

// A store that fails some pages, answers others only after the daemon's
// fault timeout, and never answers for one: the faulting accesses of
// exactly those pages get SIGBUS after the retries, every other page of the
// object is served with the right bytes, another client is served all
// along, and the daemon's hung reads and goroutines stay bounded and go
// away once the store answers.
func TestInjectStoreFailTimeoutHang(t *testing.T) {
	const (
		failA, failB = 100, 1500 // reads covering these fail
		slow         = 2500      // reads covering this answer after 4 timeouts
		hang         = 3000      // reads covering this never answer (until the test ends)
		timeout      = time.Second
		npages       = 4096 // 16 MiB
	)
	d := startDaemon(t, server.Config{Retries: 2, FaultTimeout: timeout, GuardAllStores: true})
	release := make(chan struct{})
	t.Cleanup(func() { close(release) }) // before the daemon closes: cleanups run last-in first-out
	failing := failPages(failA, failB)
	var blocked atomic.Int64 // reads waiting for release
	d.spy.set(func(s *spy) {
		s.fail = func(off, n int64) int64 {
			covers := func(p int64) bool { return p*ps >= off && p*ps < off+n }
			switch {
			case covers(hang):
				blocked.Add(1)
				<-release
				return hang * ps
			case covers(slow):
				time.Sleep(4 * timeout)
			}
			return failing(off, n)
		}
	})
	path := patternFile(t, npages*ps)
	small := patternFile(t, 64*ps) // no page of it is a bad offset
	a := startDriver(t, d.sock)
	a.open(path, "")
	b := startDriver(t, d.sock)
	b.open(small, "")
	gs := goroutines()

	a.Send("scan 0 %d", npages)
	var touched, reads int
	fmt.Sscan(b.OK("rand 4 1000"), &touched, &reads) // served while a's faults wait for the store
	if reads == 0 {
		t.Fatal("the other client read nothing")
	}
	r, ok := a.Reply(120 * time.Second)
	if !ok {
		t.Fatalf("the scan did not finish; stderr:\n%s", a.Stderr.String())
	}
	var served int
	var bad string
	if _, err := fmt.Sscanf(r, "ok %d %s", &served, &bad); err != nil {
		t.Fatalf("scan: %q", r)
	}
	want := fmt.Sprintf("%d,%d,%d,%d", failA, failB, slow, hang)
	if bad != want || served != npages-4 {
		t.Fatalf("scan: %d pages served, SIGBUS for pages %s; want %d served and SIGBUS for %s", served, bad, npages-4, want)
	}
	hung := d.s.HungStoreReads()
	st := d.s.Stats()
	t.Logf("SIGBUS for %s; %d store reads, %d errors; %d reads hung; goroutines %d before, %d after",
		bad, st.StoreReads, st.StoreErrors, hung, gs, goroutines())
	if st.SIGBUS != 4 {
		t.Errorf("%d pages poisoned, want 4", st.SIGBUS)
	}
	for _, p := range []int64{failA, failB} {
		if n := d.spy.readsOf(p * ps); n < 3 {
			t.Errorf("failing page %d was read %d times; want at least 3 (the retries)", p, n)
		}
	}
	// Each hung read costs a goroutine; nothing else may grow, once the
	// spare readers the waits started have gone idle and left.
	if hung == 0 || hung > 8 {
		t.Errorf("%d store reads hung, want between 1 and 8", hung)
	}
	testutil.WaitFor(t, "the goroutines to return to their count, plus one per hung read", func() bool {
		return goroutines() <= gs+int(d.s.HungStoreReads())+8
	})
	// The pages are not poisoned for good: once the store answers (and the
	// slow reads have returned), the next access reads them again. The
	// scan left its poison markers in place; the driver clears them first,
	// as Guard and ReadAt do.
	d.spy.set(func(s *spy) { s.fail = nil })
	testutil.WaitFor(t, "the slow reads to return", func() bool { return d.s.HungStoreReads() == blocked.Load() })
	for _, p := range []int64{failA, failB, slow} {
		a.OK("dontneed %d %d", p*ps, ps)
		if r := a.OK("scan %d %d", p, p+1); r != "1 -" {
			t.Errorf("page %d once the store answers: %q, want it served", p, r)
		}
	}
}

// A fault waiting for a slow store read does not hold up the faults of the
// client's other threads: the reader that serves it starts another
// (server/reader.go). Two threads of one client fault on pages 10 and 200
// at once, and the store answers each only once it has been asked for the
// other: if one fault were queued behind the other, the first read would
// give up after 10 s and the test fail.
func TestInjectSlowFaultDoesNotBlockOthers(t *testing.T) {
	d := startDaemon(t, server.Config{})
	pages := []int64{10, 200}
	asked := []chan struct{}{make(chan struct{}), make(chan struct{})}
	var once [2]sync.Once
	d.spy.set(func(s *spy) {
		s.fail = func(off, n int64) int64 {
			for i, p := range pages {
				if p*ps < off || p*ps >= off+n {
					continue
				}
				once[i].Do(func() { close(asked[i]) })
				select {
				case <-asked[1-i]:
				case <-time.After(10 * time.Second):
					t.Errorf("page %d was not read while page %d's read waited", pages[1-i], p)
				}
			}
			return -1
		}
	})
	path := patternFile(t, 1<<20)
	a := startDriver(t, d.sock)
	a.open(path, "advice=random")
	a.OK("par %d %d", pages[0]*ps, pages[1]*ps)
}

// The goroutines and descriptors of reads left hung by a test go away once
// the store answers: the test above's release, checked here on its own.
func TestInjectHungReadsReturn(t *testing.T) {
	d := startDaemon(t, server.Config{Retries: 1, FaultTimeout: time.Second, GuardAllStores: true})
	release := make(chan struct{})
	d.spy.set(func(s *spy) {
		s.fail = func(off, n int64) int64 {
			if 10*ps >= off && 10*ps < off+n {
				<-release
			}
			return -1
		}
	})
	path := patternFile(t, 1<<20)
	a := startDriver(t, d.sock)
	a.open(path, "")
	a.OK("read 0 %d", ps)
	gs := goroutines()
	if r := a.Do("read %d %d", 10*ps, ps); sigbusPage(r) != 10 {
		t.Fatalf("read of a hung page: %q, want SIGBUS in page 10", r)
	}
	if d.s.HungStoreReads() == 0 {
		t.Fatal("no read is hung")
	}
	close(release)
	testutil.WaitFor(t, "the hung reads to return and their goroutines to end", func() bool {
		return d.s.HungStoreReads() == 0 && goroutines() <= gs
	})
	a.OK("dontneed %d %d", 10*ps, ps) // drop the poison marker, as Guard does
	a.OK("read %d %d", 10*ps, ps)     // and the page is read again
}

// cacheFds counts the daemon's cache files among this process's
// descriptors: memfds, and the files of the private tmpfs (O_TMPFILE on a
// detached mount: "/#INODE (deleted)").
func cacheFds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	tmpfs := regexp.MustCompile(`^/#\d+ \(deleted\)$`)
	n := 0
	for _, e := range ents {
		l, _ := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if strings.HasPrefix(l, "/memfd:filemap:") || tmpfs.MatchString(l) {
			n++
		}
	}
	return n
}

// victim is a client process started to be killed: the driver, driven
// from a goroutine that is not the test's, so every failure is an error.
type victim struct{ *child.Proc }

func startVictim(sock string) (*victim, error) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envRole+"=driver", "FILEMAP_SOCKET="+sock)
	p, err := child.Start(cmd)
	if err != nil {
		return nil, err
	}
	return &victim{p}, nil
}

// A hundred clients SIGKILLed while their faults are in flight, several at
// a time: afterwards the daemon holds exactly the descriptors, goroutines
// and cache files it held before, no client account, session or region is
// left, no fill is in flight, and no cache page is stranded.
//
// "No cache page leaked" means: the cache, which stays after its last
// client as the warm cache by design (one per object opened: here one),
// holds no more than the budget and a window, and every page it holds can
// be dropped (DropCaches leaves nothing allocated; a fill that never ended
// would keep its pages).
func TestKill100ClientsMidFault(t *testing.T) {
	const (
		kills    = 100
		parallel = 5
		budget   = 4 << 20 // much less than the object: faults keep coming
	)
	d := startDaemon(t, server.Config{CacheBytes: budget})
	d.spy.set(func(s *spy) { s.delay = 2 * time.Millisecond }) // a fault is in flight most of the time
	path := bigPatternFile(t, 64<<20)

	// killOne starts a client that faults continuously in four threads and
	// kills it once the daemon has a fault of it in flight.
	killOne := func() error {
		v, err := startVictim(d.sock)
		if err != nil {
			return err
		}
		defer v.Kill()
		if _, err := v.AskOK("open " + path + " advice=random"); err != nil {
			return err
		}
		if _, err := v.AskOK("spin 4"); err != nil {
			return err
		}
		pid := int32(v.Cmd.Process.Pid)
		// Let it fault for a while, then kill it at the next moment the
		// daemon has one of its faults in flight.
		time.Sleep(time.Duration(rand.N(20)) * time.Millisecond)
		deadline := time.Now().Add(20 * time.Second)
		for {
			i := slices.IndexFunc(d.s.Clients(), func(c server.ClientUsage) bool { return c.PID == pid && c.FaultsInFlight > 0 })
			if i >= 0 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("client %d had no fault in flight within 20s; stderr:\n%s", pid, v.Stderr.String())
			}
			time.Sleep(time.Millisecond)
		}
		return nil
	}

	// One round first, so that what the daemon starts once (its pools, the
	// collapser, the one cache of the object) is in the baseline.
	if err := killOne(); err != nil {
		t.Fatal(err)
	}
	idle := func() bool {
		st := d.s.Stats()
		return st.Clients == 0 && st.Regions == 0 && st.FillsInFlight == 0 && len(d.s.Clients()) == 0
	}
	testutil.WaitFor(t, "the first client's session to end", idle)
	time.Sleep(100 * time.Millisecond) // let the goroutines of the first kill finish exiting
	fds, gs, caches, objects := openFds(t), goroutines(), cacheFds(t), d.s.Stats().Objects

	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, kills)
	for w := range parallel {
		wg.Go(func() {
			for i := w; i < kills; i += parallel {
				if err := killOne(); err != nil {
					errs <- fmt.Errorf("kill %d: %w", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	took := time.Since(start)
	testutil.WaitFor(t, "every session, region, client account and fill to end", idle)
	var nowFds map[string]string
	var nowGs int
	testutil.WaitFor(t, "descriptors and goroutines to return to their count", func() bool {
		nowFds, nowGs = openFds(t), goroutines()
		return newFds(fds, nowFds) == 0 && nowGs <= gs
	})
	st := d.s.Stats()
	alloc, err := d.s.AllocatedBytes()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d clients killed mid-fault in %v; descriptors %d → %d, goroutines %d → %d, cache files %d → %d, objects %d → %d; "+
		"%d major faults; cache %d KiB accounted, %d KiB allocated (budget %d KiB)",
		kills, took.Round(time.Millisecond), len(fds), len(nowFds), gs, nowGs, caches, cacheFds(t), objects, st.Objects,
		st.MajorFaults, st.CacheBytes>>10, alloc>>10, budget>>10)
	if n := cacheFds(t); n != caches {
		t.Errorf("%d cache files open, %d before", n, caches)
	}
	if st.Objects != objects {
		t.Errorf("%d caches, %d before: one object was opened", st.Objects, objects)
	}
	window := int64(budget / 8) // the largest read a budget this size lets through
	if alloc > budget+window {
		t.Errorf("the cache holds %d bytes, more than the budget %d and a window %d", alloc, budget, window)
	}
	if _, err := d.s.DropCaches(0); err != nil {
		t.Fatal(err)
	}
	if alloc, err := d.s.AllocatedBytes(); err != nil || alloc != 0 {
		t.Errorf("after DropCaches the cache still holds %d bytes (%v): pages no one can drop", alloc, err)
	}
	// And the daemon still serves.
	a := startDriver(t, d.sock)
	a.open(path, "")
	a.OK("read 0 %d", 1<<20)
	settle(t, d)
}

// settle waits for the daemon's background readahead to end. Server.Close
// frees the caches without waiting for it (the fills are the fault path's
// goroutines, which nothing in the server tracks), and a fill that writes
// into a closed cache is a data race; a test that ends on a read waits.
func settle(t *testing.T, d *daemon) {
	t.Helper()
	testutil.WaitFor(t, "the readahead in flight to end", func() bool { return d.s.Stats().FillsInFlight == 0 })
}

// A 1 MiB cache under a 256 MiB working set: eight threads reading at
// random for a few seconds get every byte right (slowly: nearly every
// access misses), and the caches never hold more than the budget and one
// readahead window.
func TestTinyBudgetLargeWorkingSet(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a 256 MiB object")
	}
	const budget = 1 << 20
	// The daemon caps readahead at an eighth of a budget this small.
	randomUnderBudget(t, budget, bigPatternFile(t, 256<<20), budget/8)
}

// bigPatternFile is patternFile for large objects: the same bytes, written
// a megabyte at a time from words computed in place. writePattern's eight
// bytes a call cost 8 s per 256 MiB under the race detector; this, under 1.
func bigPatternFile(t *testing.T, size int64) string {
	t.Helper()
	return seededPatternFile(t, size, 0)
}

// seededPatternFile is bigPatternFile with every word mixed with seed, so
// that objects of different seeds differ at every offset: a page of one
// served in another is caught.
func seededPatternFile(t *testing.T, size int64, seed uint64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "object")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	words := make([]uint64, 1<<17) // 1 MiB
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), len(words)*8)
	for off := int64(0); off < size; off += int64(len(buf)) {
		for i := range words {
			words[i] = pattern.Word(off+int64(i)*8) ^ seed*0xD6E8FEB86659FD93
		}
		n := min(int64(len(buf)), size-off)
		if _, err := f.Write(buf[:n]); err != nil {
			t.Fatal(err)
		}
	}
	return path
}
