package pagecache

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/filemap/filemap/uffd"
	"golang.org/x/sys/unix"
)

// The tests of huge extents run on the real kernel: a private tmpfs,
// MADV_COLLAPSE, and the kernel's own accounts of what it mapped
// (/proc/self/smaps) and of what the file holds (SEEK_DATA, st_blocks).

// hugeBacking is a daemon's huge backing, or a skip when this process may
// not mount one. As root, a backing that cannot collapse is a failure.
func hugeBacking(t *testing.T) *Backing {
	t.Helper()
	b := NewBacking(true)
	t.Cleanup(func() { b.Close() })
	if !b.Huge() {
		if os.Geteuid() != 0 {
			t.Skipf("huge caches need CAP_SYS_ADMIN (a private tmpfs mount); run as root: %s", b.Reason())
		}
		t.Fatalf("root, and no huge backing: %s", b.Reason())
	}
	return b
}

func mustNewIn(t *testing.T, b *Backing, size int64) *Cache {
	t.Helper()
	o, err := b.New(t.Name(), size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

// pageBytes is what page p of a test object holds: every 8-byte word names
// its page and offset, so a page in the wrong place, or zeros, show.
func pageBytes(p int64) []byte {
	b := make([]byte, PageSize)
	for i := 0; i < PageSize; i += 8 {
		v := uint64(p)<<20 | uint64(i) | 1<<63
		for k := range 8 {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	return b
}

// fill reads pages [lo, hi) into o as the fault path does, except those
// skip names, which stay holes.
func fill(t *testing.T, o *Cache, lo, hi int64, skip func(int64) bool) {
	t.Helper()
	for p := lo; p < hi; p++ {
		if skip != nil && skip(p) {
			continue
		}
		q := p
		for q < hi && (skip == nil || !skip(q)) {
			q++
		}
		for _, f := range o.Claim(p, q) {
			var data []byte
			for i := f.Start; i < f.End; i++ {
				data = append(data, pageBytes(i)...)
			}
			if err := o.WritePages(f.Start, data); err != nil {
				t.Fatal(err)
			}
			o.End(f, f.Start, f.End, nil)
		}
		p = q
	}
}

// checkBytes preads pages [lo, hi) of the cache file and compares them
// with what fill wrote.
func checkBytes(t *testing.T, o *Cache, lo, hi int64, when string) {
	t.Helper()
	got := make([]byte, (hi-lo)*PageSize)
	if _, err := unix.Pread(int(o.file.Fd()), got, lo*PageSize); err != nil {
		t.Fatal(err)
	}
	for p := lo; p < hi; p++ {
		if !bytes.Equal(got[(p-lo)*PageSize:][:PageSize], pageBytes(p)) {
			t.Fatalf("%s: page %d of the cache file does not hold its bytes", when, p)
		}
	}
}

// pmdMapped maps the cache file as a client of the kernel would, aligned,
// loads one byte of each page of extent x that touch allows (a load of a
// hole through a shared mapping would allocate a page of zeros), and
// returns how many bytes of the extent the kernel mapped with a PMD,
// according to /proc/self/smaps.
func pmdMapped(t *testing.T, o *Cache, x int64, touch func(int64) bool) int64 {
	t.Helper()
	length := uintptr(o.npages * PageSize)
	ro, err := o.ReadOnlyFile()
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	view, err := mapAligned(int(ro.Fd()), length)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.MunmapPtr(view, length)
	mem := unsafe.Slice((*byte)(view), length)
	for p := x * HugePages; p < (x+1)*HugePages; p++ {
		if touch == nil || touch(p) {
			sink ^= mem[p*PageSize]
		}
	}
	return smapsPmd(t, uintptr(view))
}

// sink keeps the compiler from dropping the tests' loads.
var sink byte

// smapsPmd is ShmemPmdMapped + FilePmdMapped of the VMA starting at addr.
func smapsPmd(t *testing.T, addr uintptr) int64 {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	in, found := false, false
	var kb int64
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) > 0 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			start, _ := strconv.ParseUint(strings.SplitN(fields[0], "-", 2)[0], 16, 64)
			in = uintptr(start) == addr
			found = found || in
			continue
		}
		if in && len(fields) >= 2 && (fields[0] == "ShmemPmdMapped:" || fields[0] == "FilePmdMapped:") {
			n, _ := strconv.ParseInt(fields[1], 10, 64)
			kb += n
		}
	}
	if !found {
		t.Fatalf("no VMA at %#x in /proc/self/smaps", addr)
	}
	return kb << 10
}

// isHole reports whether page p of the cache file is a hole, as the kernel
// sees it (SEEK_HOLE lands on it).
func isHole(t *testing.T, o *Cache, p int64) bool {
	t.Helper()
	off, err := unix.Seek(int(o.file.Fd()), p*PageSize, unix.SEEK_HOLE)
	if err != nil {
		t.Fatal(err)
	}
	return off == p*PageSize
}

// dataIn reports whether any page of [lo, hi) of the cache file holds data
// (SEEK_DATA finds one).
func dataIn(t *testing.T, o *Cache, lo, hi int64) bool {
	t.Helper()
	off, err := unix.Seek(int(o.file.Fd()), lo*PageSize, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return off < hi*PageSize
}

func TestHugeBackingIsPrivateTmpfs(t *testing.T) {
	b := hugeBacking(t)
	o := mustNewIn(t, b, 3*HugeSize+5)
	var st unix.Stat_t
	if err := unix.Fstat(int(o.file.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if st.Nlink != 0 || st.Mode&0o777 != 0o400 {
		t.Fatalf("cache file: %d links, mode %#o; want an unlinked file of mode 0400", st.Nlink, st.Mode&0o777)
	}
	if st.Size != 3*HugeSize+PageSize || o.nhuge != 3 || o.HugePages() != HugePages {
		t.Fatalf("size %d, %d huge extents, HugePages %d", st.Size, o.nhuge, o.HugePages())
	}
	var fs unix.Statfs_t
	if err := unix.Fstatfs(int(o.file.Fd()), &fs); err != nil {
		t.Fatal(err)
	}
	if fs.Type != unix.TMPFS_MAGIC || fs.Blocks != 0 {
		t.Fatalf("statfs: type %#x, %d blocks; want tmpfs with no size limit", fs.Type, fs.Blocks)
	}
	if uintptr(o.view)%HugeSize != 0 {
		t.Fatalf("the cache's own view is at %p, not %d-aligned", o.view, HugeSize)
	}
	// What clients get cannot change the file's size or bytes.
	ro, err := o.ReadOnlyFile()
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if err := unix.Ftruncate(int(ro.Fd()), 0); err == nil {
		t.Fatal("a client's read-only fd truncated the shared cache")
	}
	if _, err := unix.Mmap(int(ro.Fd()), 0, PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err == nil {
		t.Fatal("the read-only copy maps writable and shared")
	}
	// A 4 KiB write stays 4 KiB: the rest of its extent is a hole.
	fill(t, o, 10, 11, nil)
	if n, _ := o.AllocatedBytes(); n != PageSize {
		t.Fatalf("one page written: %d bytes allocated", n)
	}
	if !isHole(t, o, 11) || !isHole(t, o, 9) {
		t.Fatal("the pages around a written one are not holes")
	}
	b.WaitCollapses()
	if st := b.CollapseStats(); st.Collapsed != 0 {
		t.Fatalf("an extent with one page was collapsed: %+v", st)
	}
}

func TestMemfdBackingWhenHugeOff(t *testing.T) {
	b := NewBacking(false)
	defer b.Close()
	if b.Huge() || !strings.Contains(b.Reason(), "memfd") {
		t.Fatalf("NewBacking(false): huge %v, %q", b.Huge(), b.Reason())
	}
	o := mustNewIn(t, b, 4*HugeSize)
	if o.HugePages() != 1 {
		t.Fatalf("a memfd cache has HugePages %d", o.HugePages())
	}
	if _, err := unix.FcntlInt(o.file.Fd(), unix.F_GET_SEALS, 0); err != nil {
		t.Fatalf("not a sealed memfd: %v", err)
	}
	fill(t, o, 0, 4*HugePages, nil)
	b.WaitCollapses()
	if got := pmdMapped(t, o, 1, nil); got != 0 {
		t.Fatalf("a memfd extent is PMD-mapped (%d bytes)", got)
	}
}

// A wholly uptodate extent becomes one huge folio, which a new mapping maps
// with a PMD; its bytes are the same before and after.
func TestWholeExtentCollapses(t *testing.T) {
	b := hugeBacking(t)
	o := mustNewIn(t, b, 4*HugeSize)
	fill(t, o, 2*HugePages, 3*HugePages, nil)
	checkBytes(t, o, 2*HugePages, 3*HugePages, "after the fill")
	b.WaitCollapses()
	if !o.IsHuge(2) {
		t.Fatalf("extent 2 is not huge after its fill: %+v", b.CollapseStats())
	}
	if got := pmdMapped(t, o, 2, nil); got != HugeSize {
		t.Fatalf("a new mapping maps %d bytes of the collapsed extent with a PMD, want %d", got, HugeSize)
	}
	checkBytes(t, o, 2*HugePages, 3*HugePages, "after the collapse")
	if o.IsHuge(1) || o.IsHuge(3) {
		t.Fatal("extents never read are huge")
	}
	if n, _ := o.AllocatedBytes(); n != HugeSize {
		t.Fatalf("%d bytes allocated, want one extent's %d", n, HugeSize)
	}
}

// An extent with one absent page, or a marker held back, is not collapsed:
// MADV_COLLAPSE would fill the hole with zeros. The absent page stays a
// hole that faults MISSING; once it is read, the extent collapses.
func TestExtentWithHoleNotCollapsed(t *testing.T) {
	b := hugeBacking(t)
	o := mustNewIn(t, b, 2*HugeSize)
	const hole = HugePages + 77
	notHole := func(p int64) bool { return p != hole }
	fill(t, o, HugePages, 2*HugePages, func(p int64) bool { return p == hole })
	b.WaitCollapses()
	if o.IsHuge(1) {
		t.Fatal("an extent with a hole was collapsed")
	}
	if got := pmdMapped(t, o, 1, notHole); got != 0 {
		t.Fatalf("an extent with a hole is PMD-mapped (%d bytes)", got)
	}
	if !isHole(t, o, hole) {
		t.Fatal("the absent page is not a hole in the cache file")
	}

	// A client's mapping faults MISSING on it. MADV_POPULATE_READ faults
	// from inside a system call, so this goroutine's P is free meanwhile.
	ro, err := o.ReadOnlyFile()
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	mem, err := unix.Mmap(int(ro.Fd()), 0, int(o.npages*PageSize), unix.PROT_READ, unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	u, err := uffd.New(unix.O_CLOEXEC | unix.O_NONBLOCK)
	if err != nil {
		t.Skipf("no userfaultfd: %v", err)
	}
	defer u.Close()
	if _, err := u.API(0, 0); err != nil {
		t.Fatal(err)
	}
	base := uintptr(unsafe.Pointer(&mem[0]))
	if _, err := u.Register(base, uintptr(len(mem)), uffd.ModeMissing); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		for {
			err := unix.Madvise(mem[hole*PageSize:][:PageSize], unix.MADV_POPULATE_READ)
			if err != unix.EINTR && err != unix.EAGAIN {
				done <- err
				return
			}
		}
	}()
	if ok, err := u.Poll(30 * time.Second); err != nil || !ok {
		t.Fatalf("no fault message for the hole: %v", err)
	}
	msgs := make([]uffd.Msg, 4)
	n, err := u.Read(msgs)
	if err != nil || n == 0 {
		t.Fatalf("read uffd: %d, %v", n, err)
	}
	if m := msgs[0]; m.Event != uffd.EventPagefault || uintptr(m.Address)&^(PageSize-1) != base+hole*PageSize {
		t.Fatalf("message %v; want a MISSING fault at %#x", m, base+hole*PageSize)
	}
	// The fault path reads it; the extent is whole now and collapses.
	s, f := o.Begin(hole, win(hole, hole+1))
	if s != Absent || f.Start != hole || f.End != hole+1 {
		t.Fatalf("Begin on the hole = %v [%d, %d)", s, f.Start, f.End)
	}
	if err := o.WritePages(hole, pageBytes(hole)); err != nil {
		t.Fatal(err)
	}
	o.End(f, hole, hole+1, nil)
	if err := u.Wake(base+hole*PageSize, PageSize); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("populate after the wake: %v", err)
	}
	if !bytes.Equal(mem[hole*PageSize:][:PageSize], pageBytes(hole)) {
		t.Fatal("the client reads the wrong bytes for the page filled after its fault")
	}
	b.WaitCollapses()
	if !o.IsHuge(1) {
		t.Fatalf("the extent, whole at last, is not huge: %+v", b.CollapseStats())
	}
	checkBytes(t, o, HugePages, 2*HugePages, "after the late collapse")
}

func TestExtentWithMarkerNotCollapsed(t *testing.T) {
	b := hugeBacking(t)
	o := mustNewIn(t, b, HugeSize)
	const marker = 300
	s, f := o.Begin(0, win(0, HugePages))
	if s != Absent || f.Start != 0 || f.End != HugePages {
		t.Fatalf("Begin = %v [%d, %d)", s, f.Start, f.End)
	}
	if !o.Hold(f, marker, pageBytes(marker)) {
		t.Fatal("Hold refused")
	}
	var data []byte
	for p := int64(0); p < HugePages; p++ {
		data = append(data, pageBytes(p)...)
	}
	if err := o.WritePages(0, data[:marker*PageSize]); err != nil {
		t.Fatal(err)
	}
	if err := o.WritePages(marker+1, data[(marker+1)*PageSize:]); err != nil {
		t.Fatal(err)
	}
	o.End(f, 0, HugePages, nil)
	b.WaitCollapses()
	if o.IsHuge(0) {
		t.Fatal("an extent holding a marker back was collapsed")
	}
	if got := pmdMapped(t, o, 0, func(p int64) bool { return p != marker }); got != 0 {
		t.Fatalf("an extent with a marker is PMD-mapped (%d bytes)", got)
	}
	if !isHole(t, o, marker) {
		t.Fatal("the marker is not a hole in the cache file")
	}
	// Served, the marker completes the extent.
	s, g := o.Begin(marker, win(0, 0))
	if s != Marker {
		t.Fatalf("Begin on the marker = %v", s)
	}
	if err := o.WritePages(marker, g.Held()); err != nil {
		t.Fatal(err)
	}
	o.End(g, marker, marker+1, nil)
	b.WaitCollapses()
	if !o.IsHuge(0) {
		t.Fatalf("the extent is not huge once its marker was served: %+v", b.CollapseStats())
	}
	checkBytes(t, o, 0, HugePages, "after the collapse")
}

// A punch of part of a huge extent drops all of it: every page is a hole
// again, none present as zeros, and the count says 512.
func TestPartialPunchDropsWholeExtent(t *testing.T) {
	b := hugeBacking(t)
	o := mustNewIn(t, b, 3*HugeSize)
	fill(t, o, 0, 3*HugePages, nil)
	b.WaitCollapses()
	for x := range int64(3) {
		if !o.IsHuge(x) {
			t.Fatalf("extent %d not huge: %+v", x, b.CollapseStats())
		}
	}
	// Pages [600, 700) of extent 1, and the last page of extent 0 with the
	// first of extent 2: each cut extent goes whole.
	n, err := o.Punch(HugePages+88, HugePages+188)
	if err != nil || n != HugePages {
		t.Fatalf("Punch of 100 pages inside a huge extent = %d, %v; want %d", n, err, HugePages)
	}
	if dataIn(t, o, HugePages, 2*HugePages) {
		t.Fatal("pages of the punched extent are still in the cache file (zeros served as data)")
	}
	for p := int64(HugePages); p < 2*HugePages; p++ {
		if s, _ := o.Lookup(p); s != Absent {
			t.Fatalf("page %d is %v after the punch", p, s)
		}
	}
	if o.IsHuge(1) || !o.IsHuge(0) || !o.IsHuge(2) {
		t.Fatal("huge bits wrong after the punch of extent 1")
	}
	lo, hi, n, err := o.PunchRange(HugePages-1, 2*HugePages+1)
	if err != nil || lo != 0 || hi != 3*HugePages || n != 2*HugePages {
		t.Fatalf("PunchRange across extents = [%d, %d) %d, %v; want [0, %d) %d", lo, hi, n, err, 3*HugePages, 2*HugePages)
	}
	if dataIn(t, o, 0, 3*HugePages) || o.Resident() != 0 {
		t.Fatalf("after punching everything: data left, resident %d", o.Resident())
	}
	if got, _ := o.AllocatedBytes(); got != 0 {
		t.Fatalf("%d bytes still allocated", got)
	}
	// A read of the extent again, and it collapses again.
	fill(t, o, HugePages, 2*HugePages, nil)
	b.WaitCollapses()
	if !o.IsHuge(1) {
		t.Fatal("the extent read again is not huge")
	}
	checkBytes(t, o, HugePages, 2*HugePages, "after the second collapse")
}

// A punch that overlaps an extent in MADV_COLLAPSE waits for it, and then
// drops it whole. Punching a page first would let collapse_file fill its
// hole with zeros. The test plays the collapser, so it knows when the
// collapse runs, and looks for the punch waiting in the goroutine stacks.
func TestPunchWaitsForCollapse(t *testing.T) {
	b := hugeBacking(t)
	o := mustNewIn(t, b, HugeSize)
	fill(t, o, 0, HugePages, func(p int64) bool { return p == 5 })
	o.mu.Lock()
	o.states.setQueued(0, true) // keep the collapser away: this test is it
	o.mu.Unlock()
	fill(t, o, 5, 6, nil)
	o.mu.Lock()
	o.collapsing = append(o.collapsing, 0)
	o.mu.Unlock()
	type result struct {
		n   int64
		err error
	}
	punched := make(chan result, 1)
	go func() {
		n, err := o.Punch(5, 6)
		punched <- result{n, err}
	}()
	for deadline := time.Now().Add(30 * time.Second); !waitingInPunch(); {
		select {
		case r := <-punched:
			t.Fatalf("Punch returned (%d, %v) while the extent was being collapsed", r.n, r.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("Punch neither returned nor waited")
		}
		runtime.Gosched()
	}
	err := madviseCollapse(o.view)
	o.mu.Lock()
	o.collapsing = nil
	o.states.setHuge(0, err == nil)
	o.states.setQueued(0, false)
	o.collapsed.Broadcast()
	o.mu.Unlock()
	if err != nil {
		t.Fatalf("MADV_COLLAPSE: %v", err)
	}
	r := <-punched
	if r.err != nil || r.n != HugePages {
		t.Fatalf("Punch after the collapse = %d, %v; want the whole extent, %d", r.n, r.err, HugePages)
	}
	if dataIn(t, o, 0, HugePages) || o.IsHuge(0) {
		t.Fatal("the extent is still in the cache file after the punch")
	}
}

// waitingInPunch reports whether some goroutine waits in PunchRange for a
// collapse to end.
func waitingInPunch() bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte("sync.(*Cond).Wait")) && bytes.Contains(g, []byte("PunchRange")) {
			return true
		}
	}
	return false
}

// The tail of an object that ends inside an extent is never collapsed:
// MADV_COLLAPSE is only asked for extents wholly inside the object.
func TestTailExtentNotCollapsed(t *testing.T) {
	b := hugeBacking(t)
	o := mustNewIn(t, b, HugeSize+HugeSize/2)
	fill(t, o, 0, o.NPages(), nil)
	b.WaitCollapses()
	if !o.IsHuge(0) || o.IsHuge(1) {
		t.Fatalf("huge: extent 0 %v, tail %v", o.IsHuge(0), o.IsHuge(1))
	}
	if st := b.CollapseStats(); st.Failed != 0 {
		t.Fatalf("collapses failed: %+v", st)
	}
}

// Closing a cache frees its file once the last client mapping goes, and
// with it the memory: nothing leaks through the daemon's view.
func TestCloseFreesHugeFile(t *testing.T) {
	b := hugeBacking(t)
	o, err := b.New(t.Name(), 2*HugeSize)
	if err != nil {
		t.Fatal(err)
	}
	fill(t, o, 0, 2*HugePages, nil)
	b.WaitCollapses()
	ro, err := o.ReadOnlyFile()
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	unix.Fstat(int(ro.Fd()), &st)
	view := o.view
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	if mapsHas(t, uintptr(view)) {
		t.Fatal("the daemon's view of a closed cache is still mapped")
	}
	// The client's fd keeps the bytes alive, and is the last reference.
	var after unix.Stat_t
	unix.Fstat(int(ro.Fd()), &after)
	if after.Blocks != st.Blocks || after.Blocks*512 != 2*HugeSize {
		t.Fatalf("blocks %d → %d after Close with a client fd open", st.Blocks, after.Blocks)
	}
	ro.Close()
}

func mapsHas(t *testing.T, addr uintptr) bool {
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Contains(b, []byte(fmt.Sprintf("%x-", addr)))
}

// A 1 TiB sparse object on a huge backing costs KiB–MiB of metadata: the
// extent bits live in the chunks, and the view is address space only.
func TestSparseTiBHugeMetadata(t *testing.T) {
	b := hugeBacking(t)
	o := mustNewIn(t, b, 1<<40)
	if o.nhuge != 1<<40/HugeSize {
		t.Fatalf("%d extents", o.nhuge)
	}
	for p := int64(0); p < o.NPages(); p += o.NPages() / 64 {
		fill(t, o, p, p+16, nil)
	}
	if md := o.MetadataBytes(); md > 2<<20 {
		t.Fatalf("1 TiB huge object holds %d bytes of page state", md)
	}
	if n, _ := o.AllocatedBytes(); n != 64*16*PageSize {
		t.Fatalf("%d bytes allocated for 64 fills of 16 pages", n)
	}
}
