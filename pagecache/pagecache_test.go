package pagecache

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestBeginClaimsAbsentRunInsideWindow(t *testing.T) {
	o := mustNew(t, 100*PageSize)
	s, f := o.Begin(50, win(40, 60))
	if s != Absent || f.Start != 40 || f.End != 60 || f.Page != 50 {
		t.Fatalf("Begin(50, 40, 60) = %v, [%d, %d) page %d; want absent [40, 60) page 50", s, f.Start, f.End, f.Page)
	}
	// Any page of the window is now locked by that fill.
	for _, p := range []int64{40, 50, 59} {
		s, g := o.Begin(p, win(p-16, p+16))
		if s != InFlight || g != f {
			t.Fatalf("Begin(%d) during the fill = %v, %p; want in flight, %p", p, s, g, f)
		}
	}
	// A neighbouring window stops at the in-flight pages.
	s, g := o.Begin(61, win(50, 70))
	if s != Absent || g.Start != 60 || g.End != 70 {
		t.Fatalf("Begin(61, 50, 70) = %v, [%d, %d); want absent [60, 70)", s, g.Start, g.End)
	}
	o.End(g, 60, 70, nil)
	o.End(f, 40, 60, nil)
	if s, _ := o.Lookup(45); s != Uptodate {
		t.Fatalf("page 45 after End = %v, want uptodate", s)
	}
	if got := o.Resident(); got != 30 {
		t.Fatalf("Resident = %d, want 30", got)
	}
}

func TestWindowClippedToObject(t *testing.T) {
	o := mustNew(t, 10*PageSize+1)
	if o.NPages() != 11 {
		t.Fatalf("NPages = %d, want 11", o.NPages())
	}
	_, f := o.Begin(10, win(2, 26))
	if f.Start != 2 || f.End != 11 {
		t.Fatalf("window [%d, %d), want [2, 11)", f.Start, f.End)
	}
	o.End(f, 0, 0, nil)
}

func TestEndWithErrorMarksOnlyFaultingPage(t *testing.T) {
	o := mustNew(t, 64*PageSize)
	_, f := o.Begin(20, win(10, 30))
	ioErr := errors.New("injected")
	o.End(f, 10, 15, ioErr)
	<-f.Done()
	for p, want := range map[int64]State{10: Uptodate, 14: Uptodate, 15: Absent, 20: Error, 29: Absent} {
		if s, _ := o.Lookup(p); s != want {
			t.Errorf("page %d = %v, want %v", p, s, want)
		}
	}
	if !f.Uptodate(12) || f.Uptodate(20) || f.Err() != ioErr {
		t.Errorf("fill result: Uptodate(12)=%v Uptodate(20)=%v Err=%v", f.Uptodate(12), f.Uptodate(20), f.Err())
	}
	// Errors are not sticky: the next fault claims the page again.
	s, g := o.Begin(20, win(20, 21))
	if s != Absent || g.Start != 20 {
		t.Fatalf("Begin on an errored page = %v; want a new fill", s)
	}
	o.End(g, 20, 21, nil)
}

func TestWritePagesAndPunch(t *testing.T) {
	o := mustNew(t, 8*PageSize)
	data := bytes.Repeat([]byte{0xab}, 2*PageSize)
	_, f := o.Begin(3, win(3, 5))
	if err := o.WritePages(3, data); err != nil {
		t.Fatal(err)
	}
	o.End(f, 3, 5, nil)
	got := make([]byte, 2*PageSize)
	if _, err := unix.Pread(int(o.file.Fd()), got, 3*PageSize); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("pread after WritePages: %v, equal=%v", err, bytes.Equal(got, data))
	}
	if err := o.WritePages(0, data[:100]); err == nil {
		t.Fatal("WritePages of a partial page succeeded")
	}
	n, err := o.Punch(0, 8)
	if err != nil || n != 2 {
		t.Fatalf("Punch = %d, %v; want 2 pages", n, err)
	}
	if _, err := unix.Pread(int(o.file.Fd()), got, 3*PageSize); err != nil || !bytes.Equal(got, make([]byte, len(got))) {
		t.Fatalf("punched pages do not read as a hole")
	}
	if o.Resident() != 0 {
		t.Fatalf("Resident after punch = %d", o.Resident())
	}
}

func TestMemfdIsSealedAndReadOnlyCopyCannotWrite(t *testing.T) {
	o := mustNew(t, 3*PageSize)
	if err := unix.Ftruncate(int(o.file.Fd()), 0); err == nil {
		t.Fatal("a client could shrink the shared cache")
	}
	ro, err := o.ReadOnlyFile()
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if _, err := unix.Mmap(int(ro.Fd()), 0, PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err == nil {
		t.Fatal("the read-only copy of the memfd maps writable and shared")
	}
	m, err := unix.Mmap(int(ro.Fd()), 0, PageSize, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatalf("read-only shared map: %v", err)
	}
	unix.Munmap(m)
}

// A 1 TiB sparse object must cost kilobytes to megabytes of metadata.
func TestSparseTiBMetadata(t *testing.T) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	o := mustNew(t, 1<<40)
	for p := int64(0); p < o.NPages(); p += o.NPages() / 64 {
		_, f := o.Begin(p, win(p-16, p+16))
		o.End(f, f.Start, f.End, nil)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	if md := o.MetadataBytes(); md > 2<<20 {
		t.Fatalf("1 TiB object with 64 touched windows holds %d bytes of page state", md)
	}
	if grown > 4<<20 {
		t.Fatalf("heap grew by %d bytes for a 1 TiB sparse object", grown)
	}
	t.Logf("1 TiB object: %d bytes of page state, heap +%d bytes", o.MetadataBytes(), grown)
}

func TestCheckTHP(t *testing.T) {
	cases := []struct {
		top   string
		sizes map[string]string
		bad   string // file named in the error, "" for no error
	}{
		{"always within_size advise [never] deny force", nil, ""},
		{"always within_size [advise] never deny force", nil, ""},
		{"[always] within_size advise never deny force", nil, "shmem_enabled"},
		{"always [within_size] advise never deny force", nil, "shmem_enabled"},
		{"always within_size advise never deny [force]", nil, "shmem_enabled"},
		{"always within_size advise [never] deny force", map[string]string{"hugepages-64kB": "[always] inherit within_size advise never"}, "hugepages-64kB"},
		{"always within_size [advise] never deny force", map[string]string{"hugepages-2048kB": "always [inherit] within_size advise never"}, ""},
	}
	for i, c := range cases {
		dir := t.TempDir()
		write(t, filepath.Join(dir, "shmem_enabled"), c.top)
		for d, v := range c.sizes {
			os.Mkdir(filepath.Join(dir, d), 0o755)
			write(t, filepath.Join(dir, d, "shmem_enabled"), v)
		}
		err := CheckTHP(dir)
		switch {
		case c.bad == "" && err != nil:
			t.Errorf("case %d: unexpected error %v", i, err)
		case c.bad != "" && (err == nil || !errors.Is(err, ErrTHP) || !strings.Contains(err.Error(), c.bad) || !strings.Contains(err.Error(), "echo never")):
			t.Errorf("case %d: error %v; want ErrTHP naming %s and the fix", i, err, c.bad)
		}
	}
	if err := CheckTHP(filepath.Join(t.TempDir(), "absent")); err != nil {
		t.Errorf("kernel without THP: %v", err)
	}
	if err := CheckTHP(THPSysfs); err != nil {
		t.Logf("this machine would be refused: %v", err)
	}
}

// win is a fixed readahead window.
func win(lo, hi int64) func() (int64, int64) { return func() (int64, int64) { return lo, hi } }

// A marker page is held back from the memfd: a hole a fault will find,
// whose bytes are served without a store read.
func TestMarkerHeldBack(t *testing.T) {
	o := mustNew(t, 64*PageSize)
	_, f := o.Begin(10, win(0, 32))
	page := bytes.Repeat([]byte{7}, PageSize)
	if !o.Hold(f, 24, page) {
		t.Fatal("Hold refused the first marker")
	}
	o.End(f, 0, 32, nil)
	if f.Uptodate(24) || !f.Uptodate(23) {
		t.Fatalf("after End: Uptodate(24)=%v Uptodate(23)=%v", f.Uptodate(24), f.Uptodate(23))
	}
	if s, _ := o.Lookup(24); s != Marker {
		t.Fatalf("page 24 = %v, want marker", s)
	}
	if o.Resident() != 31 {
		t.Fatalf("Resident = %d, want 31 (the marker is not in the memfd)", o.Resident())
	}
	// Readahead does not read a marker again.
	if fs := o.Claim(20, 40); len(fs) != 1 || fs[0].Start != 32 || fs[0].Page != -1 {
		t.Fatalf("Claim(20, 40) = %v", fs)
	} else {
		o.End(fs[0], 0, 0, errors.New("readahead failed"))
		if s, _ := o.Lookup(32); s != Absent {
			t.Fatalf("a failed readahead page is %v, want absent", s)
		}
	}
	s, g := o.Begin(24, win(0, 64))
	if s != Marker || !bytes.Equal(g.Held(), page) || g.Start != 24 || g.End != 25 {
		t.Fatalf("Begin on the marker = %v %v", s, g)
	}
	if err := o.WritePages(24, g.Held()); err != nil {
		t.Fatal(err)
	}
	o.End(g, 24, 25, nil)
	if s, _ := o.Lookup(24); s != Uptodate {
		t.Fatalf("served marker = %v", s)
	}
}

func TestMarkersBounded(t *testing.T) {
	o := mustNew(t, (MaxMarkers+1)*PageSize)
	page := make([]byte, PageSize)
	for p := int64(0); p <= MaxMarkers; p++ {
		_, f := o.Begin(p, win(p, p+1))
		held := o.Hold(f, p, page)
		if held != (p < MaxMarkers) {
			t.Fatalf("Hold of marker %d = %v", p, held)
		}
		o.End(f, p, p+1, nil)
	}
	if md := o.MetadataBytes(); md < MaxMarkers*PageSize {
		t.Fatalf("MetadataBytes %d does not count the held markers", md)
	}
	if n, _ := o.Punch(0, MaxMarkers+1); n != 1 {
		t.Fatalf("Punch dropped %d pages, want 1", n)
	}
	if s, _ := o.Lookup(0); s != Absent {
		t.Fatalf("a punched marker is %v", s)
	}
}

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustNew(t *testing.T, size int64) *Cache {
	t.Helper()
	o, err := New(t.Name(), size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

// NextMiss passes over uptodate pages, pages being read and held markers,
// and stops at the first page that is none of these, or at the end.
func TestNextMiss(t *testing.T) {
	o := mustNew(t, 64*PageSize)
	_, f := o.Begin(0, win(0, 16))
	if !o.Hold(f, 8, bytes.Repeat([]byte{7}, PageSize)) {
		t.Fatal("Hold refused the marker")
	}
	o.End(f, 0, 16, nil)       // 0-15 uptodate, but the marker at 8
	reading := o.Claim(16, 24) // 16-23 being read
	for _, c := range []struct{ lo, hi, want int64 }{
		{1, 64, 24},  // over the marker and the fill
		{0, 20, 20},  // nothing missing before hi
		{24, 64, 24}, // a miss at once
		{60, 99, 60}, // hi past the end
		{64, 99, 64}, // nothing left
	} {
		if got := o.NextMiss(c.lo, c.hi); got != c.want {
			t.Errorf("NextMiss(%d, %d) = %d; want %d", c.lo, c.hi, got, c.want)
		}
	}
	o.End(reading[0], 16, 20, errors.New("pages 20-23 failed"))
	if got := o.NextMiss(1, 64); got != 20 {
		t.Errorf("NextMiss(1, 64) after pages 20-23 failed = %d; want 20", got)
	}
}
