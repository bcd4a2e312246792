package filemap

// Conformance with the kernel's filemap_fault, promise by promise: each
// test names one thing the kernel guarantees a program that maps a file
// and checks that filemap keeps it. Faults happen in a driver process; the
// daemon serves them.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/internal/testutil"
	"github.com/filemap/filemap/server"
)

func patternFile(t *testing.T, size int64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "object")
	pattern.WriteFile(t, path, size)
	return path
}

// 1. A cached page fault does no backing read, and its bytes equal pread().
func TestConformanceCachedFaultDoesNoRead(t *testing.T) {
	d := startDaemon(t, server.Config{})
	path := patternFile(t, 1<<20)
	a := startDriver(t, d.sock)
	a.open(path, "")
	a.OK("read %d %d", 100*ps, ps)
	reads := d.spy.count()
	b := startDriver(t, d.sock)
	b.open(path, "")
	b.OK("read %d %d", 100*ps, ps) // compared with pread of the file
	a.OK("read %d %d", 100*ps, ps)
	if got := d.spy.count(); got != reads {
		t.Fatalf("cached page: store reads went from %d to %d", reads, got)
	}
}

// 2. Two threads fault the same uncached page at once: one backing read,
// identical full-page data for both.
func TestConformanceSamePageOneRead(t *testing.T) {
	d := startDaemon(t, server.Config{})
	d.spy.set(func(s *spy) { s.delay = 200 * time.Millisecond }) // both faults arrive during the read
	path := patternFile(t, 1<<20)
	a := startDriver(t, d.sock)
	a.open(path, "")
	a.OK("par %d %d", 77*ps, 77*ps)
	if n := d.spy.readsOf(77 * ps); n != 1 {
		t.Fatalf("page 77 was read %d times by two concurrent faults, want 1", n)
	}
}

// 3. Concurrent faults anywhere in one in-flight window do not read it twice.
func TestConformanceWindowReadOnce(t *testing.T) {
	d := startDaemon(t, server.Config{})
	d.spy.set(func(s *spy) { s.delay = 200 * time.Millisecond })
	path := patternFile(t, 8<<20)
	a := startDriver(t, d.sock)
	a.open(path, "")
	// A miss at 1000 reads [984, 1016); fault eight pages of it at once.
	a.OK("par %d %d %d %d %d %d %d %d", 1000*ps, 984*ps, 990*ps, 995*ps, 1003*ps, 1008*ps, 1012*ps, 1015*ps)
	for p := int64(984); p < 1016; p++ {
		if n := d.spy.readsOf(p * ps); n != 1 {
			t.Errorf("page %d of the window was read %d times, want 1", p, n)
		}
	}
}

// 4. No accessor ever observes a partially filled page.
func TestConformanceNoPartialPage(t *testing.T) {
	d := startDaemon(t, server.Config{ReadaheadPages: 64})
	d.spy.set(func(s *spy) { s.delay = 20 * time.Millisecond })
	path := patternFile(t, 16<<20)
	a := startDriver(t, d.sock)
	a.open(path, "")
	// Many threads copy whole pages of the same windows while they fill;
	// each copy is checked byte for byte against the file.
	for w := int64(0); w < 16; w++ {
		base := w * 256 * ps
		a.OK("par %d %d %d %d %d %d %d %d", base, base+ps, base+31*ps, base+32*ps, base+33*ps, base+63*ps, base+64*ps, base+100*ps)
	}
}

// 5. An access at or past round_up(i_size, 4096) gets SIGBUS BUS_ADRERR at
// the faulting address, with no backing read.
func TestConformanceSIGBUSPastEOF(t *testing.T) {
	d := startDaemon(t, server.Config{})
	const size = 3*ps + 100
	path := patternFile(t, size)
	a := startDriver(t, d.sock)
	base := a.open(path, fmt.Sprintf("extra=%d", 2*ps))
	if r := a.Do("read %d 1", 4*ps+8); r != fmt.Sprintf("sigbus %d", 4*ps+8) {
		t.Fatalf("read past EOF: %s, want sigbus at %d", r, 4*ps+8)
	}
	// Without a handler for the signal, the kernel's report is exact.
	a.Send("touch %d", 4*ps+8)
	a.Cmd.Wait()
	want := fmt.Sprintf("signal SIGBUS: bus error code=0x2 addr=%#x", base+4*ps+8)
	if !strings.Contains(a.Stderr.String(), want) {
		t.Fatalf("driver did not die with %q:\n%s", want, a.Stderr.String())
	}
	if n := d.spy.count(); n != 0 {
		t.Fatalf("%d store reads for accesses past EOF", n)
	}
}

// 6. The bytes of the last page past i_size read as zero.
func TestConformanceTailZeroed(t *testing.T) {
	d := startDaemon(t, server.Config{})
	const size = 5*ps + 123
	path := patternFile(t, size)
	a := startDriver(t, d.sock)
	a.open(path, "")
	a.OK("read %d %d", 5*ps, ps) // the driver expects zeros past the file's end
	a.OK("readat %d %d", 5*ps, 123)
}

// 7. An empty object: every access gets SIGBUS.
func TestConformanceEmptyObjectSIGBUS(t *testing.T) {
	d := startDaemon(t, server.Config{})
	path := patternFile(t, 0)
	a := startDriver(t, d.sock)
	a.open(path, fmt.Sprintf("extra=%d", ps))
	for _, off := range []int64{0, 100, ps - 1, ps, 2*ps - 1} {
		if r := a.Do("read %d 1", off); r != fmt.Sprintf("sigbus %d", off) {
			t.Errorf("read of an empty object at %d: %s", off, r)
		}
	}
	if r := a.Do("readat 0 10"); r != "ok" {
		t.Errorf("ReadAt of an empty object: %s, want EOF and no bytes", r)
	}
}

// 11. Punching a hole in the cache: the next access in every process refaults.
func TestConformanceHolePunchRefaults(t *testing.T) {
	d := startDaemon(t, server.Config{})
	path := patternFile(t, 1<<20)
	a, b := startDriver(t, d.sock), startDriver(t, d.sock)
	a.open(path, "")
	b.open(path, "")
	a.OK("read 0 %d", 1<<20)
	b.OK("read 0 %d", 1<<20)
	before := d.spy.readsOf(50 * ps)
	if _, err := d.s.DropCaches(0); err != nil {
		t.Fatal(err)
	}
	a.OK("read %d %d", 50*ps, ps)
	b.OK("read %d %d", 50*ps, ps)
	if got := d.spy.readsOf(50 * ps); got != before+1 {
		t.Fatalf("page 50 after a hole punch: %d reads, want %d (one refault, shared)", got, before+1)
	}
}

// 12. An I/O error on the faulting page: SIGBUS for that page only.
func TestConformanceIOErrorSIGBUSThatPageOnly(t *testing.T) {
	d := startDaemon(t, server.Config{Retries: 2})
	d.spy.set(func(s *spy) { s.fail = failPages(40) })
	path := patternFile(t, 1<<20)
	a := startDriver(t, d.sock)
	a.open(path, "")
	if r := a.Do("read %d 1", 40*ps+17); r != fmt.Sprintf("sigbus %d", 40*ps+17) {
		t.Fatalf("read of failing page 40: %s, want SIGBUS at its exact address", r)
	}
	for _, p := range []int64{39, 41, 0, 255} {
		a.OK("read %d %d", p*ps, ps)
	}
	if !strings.Contains(d.log.String(), "offset=163840") {
		t.Errorf("the daemon's log does not name the failing offset:\n%s", d.log.String())
	}
	st := d.s.Stats()
	if st.SIGBUS != 1 {
		t.Errorf("SIGBUS counter = %d, want 1", st.SIGBUS)
	}
}

// 13. The error is not cached: the next access reads the page again.
func TestConformanceErrorNotSticky(t *testing.T) {
	d := startDaemon(t, server.Config{Retries: 1})
	d.spy.set(func(s *spy) { s.fail = failPages(40) })
	path := patternFile(t, 1<<20)
	a := startDriver(t, d.sock)
	a.open(path, "")
	if r := a.Do("read %d %d", 40*ps, ps); !strings.HasPrefix(r, "sigbus") {
		t.Fatalf("read of failing page 40: %s", r)
	}
	reads := d.spy.readsOf(40 * ps)
	d.spy.set(func(s *spy) { s.fail = nil }) // the store recovers
	a.OK("clear %d %d", 40*ps, ps)           // drop this mapping's poison marker
	a.OK("read %d %d", 40*ps, ps)
	if got := d.spy.readsOf(40 * ps); got <= reads {
		t.Fatalf("page 40 was not read again after its error")
	}
	// Guard clears the marker itself.
	d.spy.set(func(s *spy) { s.fail = failPages(200) })
	if r := a.Do("guard %d 8", 200*ps+9); !strings.HasPrefix(r, fmt.Sprintf("fault %d filemap: ", 200*ps+9)) ||
		!strings.Contains(r, fmt.Sprintf("page at offset %d", 200*ps)) {
		t.Fatalf("Guard of a failing page: %q", r)
	}
	d.spy.set(func(s *spy) { s.fail = nil })
	a.OK("guard %d 8", 200*ps+9)
	// ReadAt clears the marker itself.
	d.spy.set(func(s *spy) { s.fail = failPages(60) })
	if r := a.Do("readat %d %d", 60*ps, ps); !strings.Contains(r, fmt.Sprintf("offset %d", 60*ps)) {
		t.Fatalf("ReadAt of a failing page: %q, want an error naming offset %d", r, 60*ps)
	}
	d.spy.set(func(s *spy) { s.fail = nil })
	a.OK("readat %d %d", 60*ps, ps)
}

// 14. An error in the readahead part alone never raises SIGBUS: the
// faulting page is read once more, alone, and that decides.
func TestConformanceReadaheadErrorNoSIGBUS(t *testing.T) {
	d := startDaemon(t, server.Config{Retries: 3})
	// Reads that cover page 1010 fail.
	d.spy.set(func(s *spy) { s.fail = failPages(1010) })
	path := patternFile(t, 8<<20)
	a := startDriver(t, d.sock)
	a.open(path, "")
	// A fault at 1020 reads [1004, 1036), which fails at 1010, before the
	// faulting page: one re-read of 1020 alone serves it.
	a.OK("read %d %d", 1020*ps, ps)
	if n := d.spy.readsOf(1020 * ps); n != 2 {
		t.Errorf("page 1020 read %d times: want the window and one re-read", n)
	}
	// A fault at 1000 reads [984, 1016), which fails at 1010, after the
	// faulting page: the pages read before the failure serve it.
	a.OK("read %d %d", 1000*ps, ps)
	if n := d.spy.readsOf(1000 * ps); n != 1 {
		t.Errorf("page 1000 read %d times: want once, in the window", n)
	}
	if st := d.s.Stats(); st.SIGBUS != 0 {
		t.Errorf("%d pages poisoned for readahead errors", st.SIGBUS)
	}
}

// 34. A non-fatal signal during a blocked fault: the access runs again, the
// duplicate message is handled, and the data is right.
func TestConformanceSignalDuringFault(t *testing.T) {
	d := startDaemon(t, server.Config{})
	d.spy.set(func(s *spy) { s.delay = 300 * time.Millisecond })
	path := patternFile(t, 1<<20)
	a := startDriver(t, d.sock)
	a.open(path, "")
	r := a.OK("sigread %d 20", 10*ps)
	t.Logf("sigread: %s", r)
	st := d.s.Stats()
	if st.MajorFaults != 1 || d.spy.readsOf(10*ps) != 1 {
		t.Fatalf("signals during one fault: %d major faults, %d reads; want 1 and 1", st.MajorFaults, d.spy.readsOf(10*ps))
	}
	// The duplicates' waits end with the fill; they are counted just after.
	testutil.WaitFor(t, "the duplicate fault messages to be counted", func() bool { return d.s.Stats().MinorFaults > 0 })
}

// 35. Duplicate messages for a page already poisoned (EEXIST from
// UFFDIO_POISON) are woken onto the marker; none stalls. The binding's
// own EEXIST/EAGAIN handling for UFFDIO_COPY is tested in package uffd.
func TestConformancePoisonEEXISTWakes(t *testing.T) {
	d := startDaemon(t, server.Config{Retries: 1})
	d.spy.set(func(s *spy) { s.fail, s.delay = failPages(10), 100*time.Millisecond })
	path := patternFile(t, 1<<20)
	a := startDriver(t, d.sock)
	a.open(path, "")
	if r := a.Do("sigread %d 30", 10*ps); sigbusPage(r) != 10 {
		t.Fatalf("failing page under signals: %s", r)
	}
	if r := a.Do("par %d %d %d", 10*ps, 10*ps, 10*ps); !strings.Contains(r, "sigbus") {
		t.Fatalf("three threads on a poisoned page: %s", r)
	}
}

// 36. mremap, munmap and MADV_DONTNEED by the client (REMAP, UNMAP, REMOVE
// events) are handled without deadlock, and later faults use the new
// addresses.
func TestConformanceRemapUnmapRemove(t *testing.T) {
	d := startDaemon(t, server.Config{})
	path := patternFile(t, 4<<20)
	a := startDriver(t, d.sock)
	a.open(path, "events=remap,remove,unmap")
	a.OK("read 0 %d", ps)
	a.OK("mremap")
	a.OK("read %d %d", 512*ps, ps) // cold, at the new address
	a.OK("read %d %d", 0, ps)
	a.OK("dontneed 0 %d", 64*ps) // REMOVE: the cache stays, the pages come back without I/O
	reads := d.spy.count()
	a.OK("read 0 %d", 16*ps)
	if got := d.spy.count(); got != reads {
		t.Errorf("MADV_DONTNEED then read: %d store reads, want none", got-reads)
	}
	a.OK("munmap %d %d", 768*ps, 256*ps) // UNMAP of the tail
	a.OK("read %d %d", 700*ps, ps)
	testutil.WaitFor(t, "the daemon to apply the unmap", func() bool { return d.s.Stats().Regions == 1 })
}

// 37. The client forks: the child sees correct data, served through the
// uffd of the FORK event, and no zero page leaks into the shared cache.
func TestConformanceForkServed(t *testing.T) {
	d := startDaemon(t, server.Config{})
	path := patternFile(t, 4<<20)
	a := startDriver(t, d.sock)
	a.open(path, "events=fork")
	a.OK("read 0 %d", ps)
	// Cold pages, touched first by the child.
	a.OK("fork %d %d %d", 100*ps, 500*ps, 900*ps)
	a.OK("read 0 %d", 4<<20)
	b := startDriver(t, d.sock)
	b.open(path, "")
	b.OK("read 0 %d", 4<<20)
}

// 37 (default). Mappings are MADV_DONTFORK: a forked child does not inherit
// them, so it can never plant zero pages in the shared cache.
func TestConformanceDefaultNotInherited(t *testing.T) {
	d := startDaemon(t, server.Config{})
	path := patternFile(t, 1<<20)
	a := startDriver(t, d.sock)
	a.open(path, "")
	if r := a.Do("fork %d", 100*ps); !strings.Contains(r, "child wrote no sums") {
		t.Fatalf("a forked child read a MADV_DONTFORK mapping: %s", r)
	}
	a.OK("read 0 %d", 1<<20)
}

// 38. The handler dies: the client's faults stall, never read zeros.
func TestConformanceDeadHandlerStalls(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "filemap.sock")
	srv := exec.Command(os.Args[0], "-test.run=^$")
	srv.Env = append(os.Environ(), envRole+"=serve", envSocket+"="+sock)
	out, _ := srv.StdoutPipe()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	ready := make([]byte, 6)
	if _, err := out.Read(ready); err != nil {
		t.Fatalf("daemon did not start: %v", err)
	}
	path := patternFile(t, 1<<20)
	a := startDriver(t, sock)
	a.open(path, "")
	a.OK("read 0 %d", ps)
	srv.Process.Signal(syscall.SIGKILL)
	srv.Wait()
	a.Send("read %d %d", 128*ps, ps)
	if r, ok := a.Reply(2 * time.Second); ok {
		t.Fatalf("a fault with its handler dead returned %q; it must stall", r)
	}
	a.Cmd.Process.Kill()
}

// 39. A poisoned page: every later access gets SIGBUS at the exact address
// until it is cleared; the cache (what pread of it, or another client,
// sees) is unaffected.
func TestConformancePoisonUntilCleared(t *testing.T) {
	d := startDaemon(t, server.Config{Retries: 1})
	d.spy.set(func(s *spy) { s.fail = failPages(7) })
	path := patternFile(t, 1<<20)
	a := startDriver(t, d.sock)
	a.open(path, "")
	for range 3 {
		if r := a.Do("read %d 8", 7*ps+100); r != fmt.Sprintf("sigbus %d", 7*ps+100) {
			t.Fatalf("access to poisoned page: %s, want SIGBUS at its exact address", r)
		}
	}
	reads := d.spy.readsOf(7 * ps)
	d.spy.set(func(s *spy) { s.fail = nil })
	b := startDriver(t, d.sock)
	b.open(path, "")
	b.OK("read %d %d", 7*ps, ps) // another client reads it: the cache is fine
	if r := a.Do("read %d 8", 7*ps+100); !strings.HasPrefix(r, "sigbus") {
		t.Fatalf("the poisoned mapping read %q before the marker was cleared", r)
	}
	if d.spy.readsOf(7*ps) != reads+1 {
		t.Errorf("accesses to a poisoned page reached the store")
	}
	a.OK("clear %d %d", 7*ps, ps)
	a.OK("read %d %d", 7*ps, ps)
}

// sigbusPage is the page of a driver's "sigbus OFFSET" answer, or -1.
func sigbusPage(r string) int64 {
	var off int64
	if _, err := fmt.Sscanf(r, "sigbus %d", &off); err != nil {
		return -1
	}
	return off / ps
}
