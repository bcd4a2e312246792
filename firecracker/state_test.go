package firecracker

import (
	"os"
	"slices"
	"testing"
	"time"
	"unsafe"

	"github.com/filemap/filemap/uffd"
	"golang.org/x/sys/unix"
)

// A handler that dies between reading a REMOVE event and applying it: the
// kernel let the balloon's madvise go on once the event was read, so the
// event is nowhere but in what the dead handler read. The next handler
// finds it in the kept state's read buffer and applies it.
func TestRemoveReadButNotAppliedSurvives(t *testing.T) {
	const npages = 64
	guest, err := unix.Mmap(-1, 0, npages*PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(guest)
	base := uintptr(unsafe.Pointer(&guest[0]))
	u, err := uffd.New(unix.O_CLOEXEC | unix.O_NONBLOCK)
	if err != nil {
		t.Skipf("no userfaultfd (needs root or vm.unprivileged_userfaultfd): %v", err)
	}
	defer u.Close()
	if _, err := u.API(0, uffd.FeatureEventRemove); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Register(base, npages*PageSize, uffd.ModeMissing); err != nil {
		t.Fatal(err)
	}
	st, err := newVMState(PageSize, npages, "v1")
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()

	// The balloon: madvise returns once the handler has read the event.
	const lo, hi = 8, 24
	done := make(chan error, 1)
	go func() { done <- unix.Madvise(guest[lo*PageSize:hi*PageSize], unix.MADV_DONTNEED) }()
	n := 0
	for deadline := time.Now().Add(20 * time.Second); n == 0; {
		if time.Now().After(deadline) {
			t.Fatal("no REMOVE event to read")
		}
		if _, err := u.Poll(time.Second); err != nil {
			t.Fatal(err)
		}
		if n, err = st.read(u.Fd()); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("madvise: %v", err)
	}
	// The handler dies here, the event read and not applied. The next
	// one maps the state it kept.
	next, err := openVMState(st.f)
	if err != nil {
		t.Fatal(err)
	}
	defer next.close()
	v := &vm{st: next, removed: next.removed, installed: next.installed, unit: PageSize,
		regions: []*vmRegion{{GuestRegion: GuestRegion{Base: base, Size: npages * PageSize, PageSize: PageSize}, first: 0, end: npages}}}
	v.replayRemoves()
	for i := int64(0); i < npages; i++ {
		if got, want := v.removed.get(i), lo <= i && i < hi; got != want {
			t.Errorf("page %d: removed %v after the restart, want %v", i, got, want)
		}
	}
}

// A kept state is mapped as it was left, and a memfd that is not one (a
// corrupt keeper entry) is refused rather than mapped: the VM is then
// served as one whose removed pages are unknown.
func TestOpenVMState(t *testing.T) {
	st, err := newVMState(HugePageSize, 100, "etag-1")
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	st.removed.set(7)
	st.installed.set(99)
	kept, err := openVMState(st.f)
	if err != nil {
		t.Fatal(err)
	}
	if !kept.removed.get(7) || kept.removed.get(8) || !kept.installed.get(99) ||
		kept.unit != HugePageSize || kept.nunits != 100 || kept.version != "etag-1" {
		t.Errorf("kept state: removed 7 %v, 8 %v, installed 99 %v, %d units of %d, version %q",
			kept.removed.get(7), kept.removed.get(8), kept.installed.get(99), kept.nunits, kept.unit, kept.version)
	}
	kept.close()

	good := slices.Clone(st.mem)
	for name, b := range map[string][]byte{
		"another magic": append([]byte("not a VM state"), good[14:]...),
		"short":         good[:len(good)-8],
		"long":          append(slices.Clone(good), 0),
		"empty":         nil,
	} {
		f := memfdOf(t, b)
		if kept, err := openVMState(f); err == nil {
			kept.close()
			t.Errorf("%s: opened", name)
		}
		f.Close()
	}
}

// memfdOf is a memfd holding b.
func memfdOf(t *testing.T, b []byte) *os.File {
	t.Helper()
	fd, err := unix.MemfdCreate("test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "test")
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	return f
}
