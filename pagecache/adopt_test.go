package pagecache

import (
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// handBack is what a client holds when its daemon dies: a read-only
// descriptor of the cache file. The daemon's own object is closed.
func handBack(t *testing.T, o *Cache) *os.File {
	t.Helper()
	ro, err := o.ReadOnlyFile()
	if err != nil {
		t.Fatal(err)
	}
	o.Close()
	return ro
}

type run struct{ lo, hi int64 }

func adopt(t *testing.T, b *Backing, size int64, f *os.File) (*Cache, []run) {
	t.Helper()
	var runs []run
	o, err := b.Adopt(t.Name(), size, f, func(lo, hi int64) { runs = append(runs, run{lo, hi}) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	return o, runs
}

// A restarted daemon adopts a memfd a client hands back: the pages it holds
// are uptodate with their bytes, the holes are absent and get filled into
// the same file the client maps.
func TestAdoptMemfd(t *testing.T) {
	const n = 100
	old := mustNew(t, n*PageSize-10)
	fill(t, old, 10, 20, nil)
	fill(t, old, 50, 51, nil)
	fill(t, old, 90, n, nil)
	ro := handBack(t, old)
	client := dup(t, ro) // the client keeps mapping the same file
	defer client.Close()

	o, runs := adopt(t, NewBacking(false), n*PageSize-10, ro)
	want := []run{{10, 20}, {50, 51}, {90, n}}
	if len(runs) != len(want) {
		t.Fatalf("resident runs %v, want %v", runs, want)
	}
	for i := range want {
		if runs[i] != want[i] {
			t.Fatalf("resident runs %v, want %v", runs, want)
		}
	}
	if o.Resident() != 21 || o.HugePages() != 1 {
		t.Fatalf("Resident %d HugePages %d, want 21 and 1", o.Resident(), o.HugePages())
	}
	for p := int64(0); p < n; p++ {
		s, _ := o.Lookup(p)
		held := (10 <= p && p < 20) || p == 50 || p >= 90
		if (s == Uptodate) != held {
			t.Fatalf("page %d adopted as %v", p, s)
		}
	}
	checkBytes(t, o, 10, 20, "adopted")
	fill(t, o, 0, 10, nil) // the new daemon writes into the very file
	if !o.Same(client) {
		t.Fatal("the adopted cache is not the file the client maps")
	}
	got := make([]byte, PageSize)
	if _, err := unix.Pread(int(client.Fd()), got, 3*PageSize); err != nil || string(got) != string(pageBytes(3)) {
		t.Fatalf("the client's descriptor does not see the page the new daemon wrote (err %v)", err)
	}
	if _, err := o.Punch(0, n); err != nil {
		t.Fatal(err)
	}
	if o.Resident() != 0 || !isHole(t, o, 95) {
		t.Fatalf("after a punch: Resident %d, page 95 a hole %v", o.Resident(), isHole(t, o, 95))
	}
}

func dup(t *testing.T, f *os.File) *os.File {
	t.Helper()
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(fd), f.Name())
}

// A tmpfs cache file from a huge backing keeps its huge folios whole when
// adopted, by a huge backing or by one of memfds: a punch of one page of a
// full extent drops the extent.
func TestAdoptHugeFile(t *testing.T) {
	for _, huge := range []bool{true, false} {
		name := map[bool]string{true: "into-huge", false: "into-memfd"}[huge]
		t.Run(name, func(t *testing.T) {
			hb := hugeBacking(t)
			old := mustNewIn(t, hb, 3*HugeSize)
			fill(t, old, 0, HugePages, nil)
			fill(t, old, HugePages, HugePages+7, nil)
			hb.WaitCollapses()
			if !old.IsHuge(0) {
				t.Fatal("the old cache's full extent did not collapse")
			}
			ro := handBack(t, old)
			o, _ := adopt(t, NewBacking(huge), 3*HugeSize, ro)
			if o.HugePages() != HugePages || o.Resident() != HugePages+7 {
				t.Fatalf("HugePages %d Resident %d, want %d and %d", o.HugePages(), o.Resident(), HugePages, HugePages+7)
			}
			if !o.IsHuge(0) || o.IsHuge(1) {
				t.Fatalf("extent 0 huge %v, extent 1 huge %v; want true, false", o.IsHuge(0), o.IsHuge(1))
			}
			lo, hi, _, err := o.PunchRange(5, 6)
			if err != nil {
				t.Fatal(err)
			}
			if lo != 0 || hi != HugePages || dataIn(t, o, 0, HugePages) {
				t.Fatalf("punch of page 5 covered [%d, %d), data left %v; want the whole extent gone", lo, hi, dataIn(t, o, 0, HugePages))
			}
			checkBytes(t, o, HugePages, HugePages+7, "adopted, after the punch")
		})
	}
}

// Adopt takes only what a daemon of this uid makes.
func TestAdoptRefusesForeignFiles(t *testing.T) {
	b := NewBacking(false)
	cases := map[string]func(t *testing.T) (*os.File, int64){
		"wrong size": func(t *testing.T) (*os.File, int64) {
			return handBack(t, mustNew(t, 10*PageSize)), 11 * PageSize
		},
		"not tmpfs": func(t *testing.T) (*os.File, int64) {
			f, err := os.Open("/proc/self/status")
			if err != nil {
				t.Fatal(err)
			}
			return f, 0
		},
		"mode 0600": func(t *testing.T) (*os.File, int64) {
			fd, err := unix.MemfdCreate("foreign", unix.MFD_CLOEXEC)
			if err != nil {
				t.Fatal(err)
			}
			unix.Ftruncate(fd, PageSize)
			unix.Fchmod(fd, 0o600)
			return os.NewFile(uintptr(fd), "foreign"), PageSize
		},
	}
	for name, mk := range cases {
		t.Run(name, func(t *testing.T) {
			f, size := mk(t)
			_, err := b.Adopt("obj", size, f, nil)
			if err == nil || !strings.Contains(err.Error(), "adopt") {
				t.Fatalf("Adopt = %v, want a refusal", err)
			}
			t.Log(err)
		})
	}
}
