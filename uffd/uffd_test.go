//go:build linux

package uffd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/internal/syncbuf"
	"golang.org/x/sys/unix"
)

// The tests run against the live kernel. A process must not serve its own
// faults, so every test that faults does it in a child process (this test
// binary re-executed with childEnv set), which creates the userfaultfd,
// registers its memory and sends the descriptor here over a Unix socket.
// Tests that only install pages never touch a missing page in this process:
// they check residency with mincore(2) and unregister before reading.

const (
	childEnv     = "UFFD_TEST_CHILD"
	childTimeout = 10 * time.Second
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(childMain(mode))
	}
	os.Exit(m.Run())
}

// --- helpers for in-process tests ---

// unavailable reports whether err means userfaultfd cannot be used here, as
// opposed to being broken.
func unavailable(err error) bool {
	return errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) ||
		errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.ENOENT)
}

// newUFFD returns a non-blocking userfaultfd after the handshake, or skips
// the test if this process may not have one.
func newUFFD(t *testing.T, want, need uint64) *UFFD {
	t.Helper()
	u, err := New(unix.O_CLOEXEC | unix.O_NONBLOCK)
	if unavailable(err) {
		t.Skipf("userfaultfd unavailable (not root, vm.unprivileged_userfaultfd=0, no access to /dev/userfaultfd?): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	if _, err := u.API(want, need); errors.Is(err, errors.ErrUnsupported) {
		t.Skip(err)
	} else if err != nil {
		t.Fatal(err)
	}
	return u
}

func mmapAnon(t *testing.T, pages int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, pages*os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }

func sum(b []byte) uint64 {
	var s uint64
	for _, v := range b {
		s += uint64(v)
	}
	return s
}

// copyFrom calls u.Copy with buf as the source and keeps buf alive.
func copyFrom(u *UFFD, dst uintptr, buf []byte, mode uint64) (uintptr, error) {
	n, err := u.Copy(dst, addrOf(buf), uintptr(len(buf)), mode)
	runtime.KeepAlive(buf)
	return n, err
}

// resident returns, per page of b, whether mincore(2) finds it mapped.
func resident(t *testing.T, b []byte) []bool {
	t.Helper()
	vec := make([]byte, (len(b)+os.Getpagesize()-1)/os.Getpagesize())
	_, _, errno := unix.Syscall(unix.SYS_MINCORE, addrOf(b), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0])))
	if errno != 0 {
		t.Fatalf("mincore: %v", errno)
	}
	r := make([]bool, len(vec))
	for i, v := range vec {
		r[i] = v&1 != 0
	}
	return r
}

// settle checks that every page of b is present, then unregisters b, so
// that reading it from this process can never block on a fault.
func settle(t *testing.T, u *UFFD, b []byte) {
	t.Helper()
	for i, ok := range resident(t, b) {
		if !ok {
			t.Errorf("page %d not present after filling", i)
		}
	}
	if err := u.Unregister(addrOf(b), uintptr(len(b))); err != nil {
		t.Fatal(err)
	}
}

// --- pure tests ---

func TestIoctlNumbers(t *testing.T) {
	for _, tc := range []struct {
		name      string
		got, want uintptr
	}{
		{"UFFDIO_API", ioctlAPI, 0xc018aa3f},
		{"UFFDIO_REGISTER", ioctlRegister, 0xc020aa00},
		{"UFFDIO_UNREGISTER", ioctlUnregister, 0x8010aa01},
		{"UFFDIO_WAKE", ioctlWake, 0x8010aa02},
		{"UFFDIO_COPY", ioctlCopy, 0xc028aa03},
		{"UFFDIO_ZEROPAGE", ioctlZeropage, 0xc020aa04},
		{"UFFDIO_WRITEPROTECT", ioctlWriteProtect, 0xc018aa06},
		{"UFFDIO_CONTINUE", ioctlContinue, 0xc020aa07},
		{"UFFDIO_POISON", ioctlPoison, 0xc020aa08},
		{"USERFAULTFD_IOC_NEW", ioctlNew, 0xaa00},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %#x, want %#x", tc.name, tc.got, tc.want)
		}
	}
}

func TestStructSizes(t *testing.T) {
	for _, tc := range []struct {
		name      string
		got, want uintptr
	}{
		{"uffdio_api", unsafe.Sizeof(uffdioAPI{}), 24},
		{"uffdio_range", unsafe.Sizeof(uffdioRange{}), 16},
		{"uffdio_register", unsafe.Sizeof(uffdioRegister{}), 32},
		{"uffdio_copy", unsafe.Sizeof(uffdioCopy{}), 40},
		{"uffdio_zeropage/continue/poison", unsafe.Sizeof(uffdioFill{}), 32},
		{"uffdio_writeprotect", unsafe.Sizeof(uffdioWriteprotect{}), 24},
	} {
		if tc.got != tc.want {
			t.Errorf("sizeof(%s) = %d, want %d", tc.name, tc.got, tc.want)
		}
	}
}

func TestFeatureNames(t *testing.T) {
	for _, tc := range []struct {
		f    uint64
		want string
	}{
		{0, "0"},
		{FeatureEventFork | FeaturePoison, "EVENT_FORK|POISON"},
		{FeaturePagefaultFlagWP, "PAGEFAULT_FLAG_WP"},
		{FeatureMove | 1<<20 | 1<<40, "MOVE|0x10000100000"},
		{1 << 17, "0x20000"},
	} {
		if got := FeatureNames(tc.f); got != tc.want {
			t.Errorf("FeatureNames(%#x) = %q, want %q", tc.f, got, tc.want)
		}
	}
	all := strings.Split(FeatureNames(1<<17-1), "|")
	if len(all) != 17 || all[16] != "MOVE" || all[11] != "EXACT_ADDRESS" {
		t.Errorf("FeatureNames(all) = %q", all)
	}
}

// rawMsg builds a struct uffd_msg by hand.
func rawMsg(event byte, words ...uint64) []byte {
	b := make([]byte, MsgSize)
	b[0] = event
	for i, w := range words {
		binary.NativeEndian.PutUint64(b[8+8*i:], w)
	}
	return b
}

func TestDecodeMsg(t *testing.T) {
	pf := rawMsg(EventPagefault, PagefaultFlagWrite|PagefaultFlagMinor, 0x7f0000001234)
	binary.NativeEndian.PutUint32(pf[24:], 4242)
	fork := rawMsg(EventFork)
	binary.NativeEndian.PutUint32(fork[8:], 7)
	for _, tc := range []struct {
		b    []byte
		want Msg
		str  string
	}{
		{pf, Msg{Event: EventPagefault, Flags: PagefaultFlagWrite | PagefaultFlagMinor, Address: 0x7f0000001234, PTID: 4242},
			"pagefault addr=0x7f0000001234 flags=write|minor ptid=4242"},
		{rawMsg(EventPagefault, 0, 0x1000), Msg{Event: EventPagefault, Address: 0x1000},
			"pagefault addr=0x1000 flags=read"},
		{fork, Msg{Event: EventFork, UFD: 7}, "fork ufd=7"},
		{rawMsg(EventRemap, 0x1000, 0x9000, 0x2000), Msg{Event: EventRemap, From: 0x1000, To: 0x9000, Len: 0x2000},
			"remap from=0x1000 to=0x9000 len=0x2000"},
		{rawMsg(EventRemove, 0x1000, 0x3000), Msg{Event: EventRemove, Start: 0x1000, End: 0x3000},
			"remove [0x1000, 0x3000)"},
		{rawMsg(EventUnmap, 0x4000, 0x6000), Msg{Event: EventUnmap, Start: 0x4000, End: 0x6000},
			"unmap [0x4000, 0x6000)"},
	} {
		got, err := DecodeMsg(tc.b)
		if err != nil {
			t.Errorf("DecodeMsg(%x): %v", tc.b, err)
			continue
		}
		if got != tc.want {
			t.Errorf("DecodeMsg(%x) = %+v, want %+v", tc.b, got, tc.want)
		}
		if s := got.String(); s != tc.str {
			t.Errorf("String() = %q, want %q", s, tc.str)
		}
	}

	for _, n := range []int{0, MsgSize - 1, MsgSize + 1, 2 * MsgSize} {
		if _, err := DecodeMsg(make([]byte, n)); err == nil {
			t.Errorf("DecodeMsg(%d bytes) succeeded", n)
		}
	}
	_, err := DecodeMsg(rawMsg(0x42))
	if err == nil || !strings.Contains(err.Error(), "0x42") {
		t.Errorf("DecodeMsg(event 0x42) error = %v, want one naming 0x42", err)
	}
}

// --- live tests in this process (no faults) ---

// kernelAtLeast reports whether the running kernel is major.minor or later.
func kernelAtLeast(t *testing.T, major, minor int) bool {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		t.Fatal(err)
	}
	var gotMajor, gotMinor int
	fmt.Sscanf(unix.ByteSliceToString(uts.Release[:]), "%d.%d", &gotMajor, &gotMinor)
	return gotMajor > major || gotMajor == major && gotMinor >= minor
}

func TestSupported(t *testing.T) {
	newUFFD(t, 0, 0) // skips if unavailable
	features, ioctls, err := Supported()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("features %#x = %s, ioctls %#x", features, FeatureNames(features), ioctls)
	if kernelAtLeast(t, 6, 6) && features&FeaturePoison == 0 {
		t.Errorf("features %s lack POISON on a 6.6+ kernel", FeatureNames(features))
	}
	if kernelAtLeast(t, 6, 8) && features&FeatureMove == 0 {
		t.Errorf("features %s lack MOVE on a 6.8+ kernel", FeatureNames(features))
	}
	if want := IoctlAPI | IoctlRegister | IoctlUnregister; ioctls&want != want {
		t.Errorf("ioctls %#x lack API|REGISTER|UNREGISTER", ioctls)
	}
}

func TestAPI(t *testing.T) {
	u := newUFFD(t, 0, 0)
	u.Close()

	u, err := New(unix.O_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()

	const unknown = 1 << 40
	_, err = u.API(0, FeatureMissingShmem|unknown)
	if !errors.Is(err, errors.ErrUnsupported) || !strings.Contains(err.Error(), FeatureNames(unknown)) {
		t.Fatalf("API(need unknown) error = %v, want ErrUnsupported naming %s", err, FeatureNames(unknown))
	}
	if u.Features() != 0 {
		t.Errorf("Features() = %#x after a failed handshake", u.Features())
	}

	// An unknown wanted feature is dropped, not an error.
	got, err := u.API(FeatureThreadID|unknown, FeatureMissingShmem)
	if err != nil {
		t.Fatal(err)
	}
	if want := FeatureThreadID | FeatureMissingShmem; got != want || u.Features() != want {
		t.Errorf("API = %s, Features = %s, want %s", FeatureNames(got), FeatureNames(u.Features()), FeatureNames(want))
	}
	if _, err := u.API(0, 0); !errors.Is(err, unix.EINVAL) {
		t.Errorf("second API: %v, want EINVAL", err)
	}
}

func TestNewFlags(t *testing.T) {
	newUFFD(t, 0, 0)
	u, err := New(unix.O_CLOEXEC | UserModeOnly)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if _, err := u.API(0, 0); err != nil {
		t.Fatal(err)
	}
}

func TestNewFromDevice(t *testing.T) {
	if _, err := os.Stat(devicePath); err != nil {
		t.Skipf("no %s (Linux 6.1+): %v", devicePath, err)
	}
	u, err := newFromDevice(unix.O_CLOEXEC | unix.O_NONBLOCK)
	if unavailable(err) {
		t.Skipf("cannot use %s: %v", devicePath, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", u.Fd()))
	if err != nil || !strings.Contains(link, "userfaultfd") {
		t.Errorf("fd %d is %q (%v), want a userfaultfd", u.Fd(), link, err)
	}
	if _, err := u.API(0, 0); err != nil {
		t.Fatal(err)
	}
	// The flags reached the new descriptor: it is non-blocking.
	if _, err := u.Read(make([]Msg, 1)); !errors.Is(err, unix.EAGAIN) {
		t.Errorf("Read: %v, want EAGAIN", err)
	}
}

func TestClose(t *testing.T) {
	u := newUFFD(t, 0, 0)
	if err := u.Close(); err != nil {
		t.Fatal(err)
	}
	if err := u.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if u.Fd() != -1 {
		t.Errorf("Fd() = %d after Close", u.Fd())
	}
	if _, err := u.Poll(-1); !errors.Is(err, unix.EBADF) {
		t.Errorf("Poll after Close: %v, want EBADF", err)
	}
	if _, err := u.Register(0x10000, 0x1000, ModeMissing); !errors.Is(err, unix.EBADF) {
		t.Errorf("Register after Close: %v, want EBADF", err)
	}
}

func TestReadEmpty(t *testing.T) {
	u := newUFFD(t, 0, 0)
	msgs := make([]Msg, 4)
	if n, err := u.Read(msgs); n != 0 || !errors.Is(err, unix.EAGAIN) {
		t.Errorf("Read = %d, %v, want 0, EAGAIN", n, err)
	}
	if n, err := u.Drain(msgs); n != 0 || err != nil {
		t.Errorf("Drain = %d, %v, want 0, nil", n, err)
	}
	if n, err := u.Read(nil); n != 0 || err != nil {
		t.Errorf("Read(nil) = %d, %v, want 0, nil", n, err)
	}
	for _, d := range []time.Duration{0, time.Millisecond} {
		if ok, err := u.Poll(d); ok || err != nil {
			t.Errorf("Poll(%v) = %v, %v, want false, nil", d, ok, err)
		}
	}
}

func TestBeforeHandshake(t *testing.T) {
	newUFFD(t, 0, 0)
	u, err := New(unix.O_CLOEXEC | unix.O_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if _, err := u.Poll(0); err == nil {
		t.Error("Poll before UFFDIO_API succeeded")
	}
	if _, err := u.Read(make([]Msg, 1)); !errors.Is(err, unix.EINVAL) {
		t.Errorf("Read before UFFDIO_API: %v, want EINVAL", err)
	}
}

func TestRegister(t *testing.T) {
	u := newUFFD(t, 0, 0)
	b := mmapAnon(t, 4)
	ioctls, err := u.Register(addrOf(b), uintptr(len(b)), ModeMissing)
	if err != nil {
		t.Fatal(err)
	}
	if want := IoctlWake | IoctlCopy | IoctlZeropage; ioctls&want != want {
		t.Errorf("anon MISSING ioctls %#x lack WAKE|COPY|ZEROPAGE", ioctls)
	}
	if ioctls&IoctlContinue != 0 {
		t.Errorf("anon MISSING ioctls %#x have CONTINUE", ioctls)
	}
	if err := u.Unregister(addrOf(b), uintptr(len(b))); err != nil {
		t.Fatal(err)
	}

	// A regular-file mapping cannot be registered (unless the file is on
	// tmpfs, which is shmem).
	dir := t.TempDir()
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil || fs.Type == unix.TMPFS_MAGIC {
		t.Skipf("%s is on tmpfs (%v): no regular-file mapping to refuse", dir, err)
	}
	f, err := os.CreateTemp(dir, "reg")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Truncate(int64(os.Getpagesize()))
	m, err := unix.Mmap(int(f.Fd()), 0, os.Getpagesize(), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	_, err = u.Register(addrOf(m), uintptr(len(m)), ModeMissing)
	if !errors.Is(err, unix.EINVAL) {
		t.Errorf("Register(file mapping): %v, want EINVAL", err)
	}
	if err != nil && !strings.Contains(err.Error(), fmt.Sprintf("UFFDIO_REGISTER [%#x, %#x)", addrOf(m), addrOf(m)+uintptr(len(m)))) {
		t.Errorf("error %q does not name the ioctl and the range", err)
	}
}

func TestCopyManyPages(t *testing.T) {
	u := newUFFD(t, 0, 0)
	const pages = 256
	b := mmapAnon(t, pages)
	if _, err := u.Register(addrOf(b), uintptr(len(b)), ModeMissing); err != nil {
		t.Fatal(err)
	}
	src := pattern.Random(len(b), 0)
	n, err := copyFrom(u, addrOf(b), src, 0)
	if err != nil || n != uintptr(len(b)) {
		t.Fatalf("Copy = %#x, %v, want %#x, nil", n, err, len(b))
	}
	settle(t, u, b)
	if !bytes.Equal(b, src) {
		t.Error("copied pages differ from the source")
	}
}

func TestCopyOverPresentPages(t *testing.T) {
	u := newUFFD(t, 0, 0)
	pg := os.Getpagesize()
	const pages = 16
	b := mmapAnon(t, pages)
	present := []int{0, 5, 6, 15} // first, a run in the middle, last
	for _, i := range present {
		b[i*pg] = 0xEE // populate before registering
	}
	if _, err := u.Register(addrOf(b), uintptr(len(b)), ModeMissing); err != nil {
		t.Fatal(err)
	}
	src := pattern.Random(len(b), 0x55)
	n, err := copyFrom(u, addrOf(b), src, 0)
	if err != nil || n != uintptr(len(b)) {
		t.Fatalf("Copy = %#x, %v, want %#x, nil", n, err, len(b))
	}
	settle(t, u, b)
	for i := range pages {
		page := b[i*pg : (i+1)*pg]
		isPresent := false
		for _, p := range present {
			isPresent = isPresent || p == i
		}
		switch {
		case isPresent && (page[0] != 0xEE || sum(page) != 0xEE):
			t.Errorf("page %d was present but was overwritten", i)
		case !isPresent && !bytes.Equal(page, src[i*pg:(i+1)*pg]):
			t.Errorf("page %d after a present page was not copied", i)
		}
	}
}

func TestCopyErrors(t *testing.T) {
	u := newUFFD(t, 0, 0)
	b := mmapAnon(t, 4)
	src := pattern.Random(len(b), 0)
	if _, err := copyFrom(u, addrOf(b), src, 0); !errors.Is(err, unix.ENOENT) {
		t.Errorf("Copy to an unregistered range: %v, want ENOENT", err)
	}
	if _, err := u.Register(addrOf(b), uintptr(len(b)), ModeMissing); err != nil {
		t.Fatal(err)
	}
	_, err := u.Copy(addrOf(b)+1, addrOf(src), 4096, 0)
	runtime.KeepAlive(src)
	if !errors.Is(err, unix.EINVAL) {
		t.Errorf("misaligned Copy: %v, want EINVAL", err)
	}
	if want := fmt.Sprintf("uffd: UFFDIO_COPY [%#x, %#x)", addrOf(b)+1, addrOf(b)+1+4096); err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error %q, want prefix %q", err, want)
	}
	if n, err := u.Copy(addrOf(b), addrOf(src), 0, 0); n != 0 || err != nil {
		t.Errorf("empty Copy = %d, %v", n, err)
	}
	if _, err := u.CopyHuge(addrOf(b), addrOf(src), 4096, 3000, 0); !errors.Is(err, unix.EINVAL) {
		t.Errorf("CopyHuge with page size 3000: %v, want EINVAL", err)
	}
}

// TestCopyHuge needs free 2 MiB huge pages (vm.nr_hugepages); it skips
// without them rather than reserve any.
func TestCopyHuge(t *testing.T) {
	u := newUFFD(t, 0, 0)
	const huge = 2 << 20
	mapHuge := func() []byte {
		b, err := unix.Mmap(-1, 0, 2*huge, unix.PROT_READ|unix.PROT_WRITE,
			unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_HUGETLB)
		if err != nil {
			t.Skipf("no 2 MiB huge pages (vm.nr_hugepages): %v", err)
		}
		t.Cleanup(func() { unix.Munmap(b) })
		b[0] = 0xEE // populate the first huge page before registering
		ioctls, err := u.Register(addrOf(b), uintptr(len(b)), ModeMissing)
		if err != nil {
			t.Fatal(err)
		}
		if ioctls&IoctlZeropage != 0 {
			t.Errorf("hugetlbfs ioctls %#x have ZEROPAGE", ioctls)
		}
		return b
	}
	a, b := mapHuge(), mapHuge()
	src := pattern.Random(2*huge, 0x77)

	n, err := u.CopyHuge(addrOf(a), addrOf(src), uintptr(len(src)), huge, 0)
	runtime.KeepAlive(src)
	if err != nil || n != uintptr(len(a)) {
		t.Fatalf("CopyHuge = %#x, %v, want %#x, nil", n, err, len(a))
	}
	settle(t, u, a)
	if a[0] != 0xEE || !bytes.Equal(a[huge:], src[huge:]) {
		t.Error("CopyHuge overwrote the present page or missed the next")
	}

	// Copy skips base pages, which lands inside the present huge page.
	_, err = copyFrom(u, addrOf(b), src, 0)
	if !errors.Is(err, unix.EINVAL) || !strings.Contains(err.Error(), "CopyHuge") {
		t.Errorf("Copy over a present huge page: %v, want EINVAL suggesting CopyHuge", err)
	}
}

func TestZeroPage(t *testing.T) {
	u := newUFFD(t, 0, 0)
	pg := uintptr(os.Getpagesize())
	b := mmapAnon(t, 8)
	if _, err := u.Register(addrOf(b), uintptr(len(b)), ModeMissing); err != nil {
		t.Fatal(err)
	}
	n, err := u.ZeroPage(addrOf(b), uintptr(len(b)), 0)
	if err != nil || n != uintptr(len(b)) {
		t.Fatalf("ZeroPage = %#x, %v, want %#x, nil", n, err, len(b))
	}
	n, err = u.ZeroPage(addrOf(b)+2*pg, pg, 0)
	if n != 0 || !errors.Is(err, unix.EEXIST) {
		t.Errorf("ZeroPage over a present page = %#x, %v, want 0, EEXIST", n, err)
	}
	settle(t, u, b)
	if sum(b) != 0 {
		t.Error("zero pages are not zero")
	}
}

func TestWakeNobody(t *testing.T) {
	u := newUFFD(t, 0, 0)
	b := mmapAnon(t, 2)
	if _, err := u.Register(addrOf(b), uintptr(len(b)), ModeMissing); err != nil {
		t.Fatal(err)
	}
	if err := u.Wake(addrOf(b), uintptr(len(b))); err != nil {
		t.Errorf("Wake with no waiters: %v", err)
	}
	if err := u.Wake(addrOf(b)+1, 4096); !errors.Is(err, unix.EINVAL) {
		t.Errorf("misaligned Wake: %v, want EINVAL", err)
	}
}

func TestUnregister(t *testing.T) {
	u := newUFFD(t, 0, 0)
	b := mmapAnon(t, 4)
	start, length := addrOf(b), uintptr(len(b))
	if _, err := u.Register(start, length, ModeMissing); err != nil {
		t.Fatal(err)
	}
	if err := u.Unregister(start, length); err != nil {
		t.Fatal(err)
	}
	src := pattern.Random(len(b), 0)
	if _, err := copyFrom(u, start, src, 0); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("Copy after Unregister: %v, want ENOENT", err)
	}
	// No longer registered, so touching it is an ordinary fault.
	if sum(b) != 0 {
		t.Error("unregistered anonymous memory is not zero")
	}
}

func TestWriteProtect(t *testing.T) {
	u := newUFFD(t, 0, FeaturePagefaultFlagWP)
	b := mmapAnon(t, 2)
	start, length := addrOf(b), uintptr(len(b))
	ioctls, err := u.Register(start, length, ModeMissing|ModeWP)
	if err != nil {
		t.Fatal(err)
	}
	if ioctls&IoctlWriteProtect == 0 {
		t.Fatalf("ioctls %#x lack WRITEPROTECT", ioctls)
	}
	if _, err := copyFrom(u, start, pattern.Random(len(b), 0), CopyModeWP); err != nil {
		t.Fatal(err)
	}
	if err := u.WriteProtect(start, length, WriteProtectModeWP); err != nil {
		t.Fatal(err)
	}
	if err := u.WriteProtect(start, length, 0); err != nil {
		t.Fatal(err)
	}
}

// --- cross-process tests: the child faults, this process serves ---

type lockedBuffer = syncbuf.Buffer

// child is a running child process and the userfaultfd it sent.
type child struct {
	t       *testing.T
	cmd     *exec.Cmd
	conn    *net.UnixConn
	records chan string // records the child sent after its hello
	stderr  lockedBuffer
	waited  chan error

	u        *UFFD
	memfd    int // -1 unless the child sent one
	addr     uintptr
	length   uintptr
	features uint64
	ioctls   uint64
	deadline time.Time
}

// startChild runs this test binary as a child in the given mode and
// receives its hello: the userfaultfd, the registered range, and for shmem
// modes the memfd.
func startChild(t *testing.T, mode string) *child {
	t.Helper()
	newUFFD(t, 0, 0) // skip early where userfaultfd is unavailable
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	theirs := os.NewFile(uintptr(fds[1]), "child socket")
	ours := os.NewFile(uintptr(fds[0]), "parent socket")
	fc, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		theirs.Close()
		t.Fatal(err)
	}
	c := &child{
		t:        t,
		conn:     fc.(*net.UnixConn),
		records:  make(chan string, 16),
		waited:   make(chan error, 1),
		memfd:    -1,
		deadline: time.Now().Add(childTimeout),
	}
	c.cmd = exec.Command(os.Args[0], "-test.run=^$")
	// The race detector sleeps a second at exit unless told not to.
	c.cmd.Env = append(os.Environ(), childEnv+"="+mode, "GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0")
	c.cmd.ExtraFiles = []*os.File{theirs} // fd 3
	c.cmd.Stdout = &c.stderr
	c.cmd.Stderr = &c.stderr
	if err := c.cmd.Start(); err != nil {
		theirs.Close()
		c.conn.Close()
		t.Fatal(err)
	}
	theirs.Close()
	go func() { c.waited <- c.cmd.Wait() }()
	// The watchdog: a child that outlives its time is killed, which
	// unblocks anything waiting on it.
	watchdog := time.AfterFunc(childTimeout, func() { c.cmd.Process.Kill() })
	t.Cleanup(func() {
		watchdog.Stop()
		c.conn.Close() // the child exits when its socket hangs up
		select {
		case err := <-c.waited:
			if err != nil && !t.Failed() && !t.Skipped() {
				t.Errorf("child %s: %v\n%s", mode, err, c.stderr.String())
			}
		case <-time.After(3 * time.Second):
			c.cmd.Process.Kill()
			<-c.waited
			t.Errorf("child %s did not exit; killed\n%s", mode, c.stderr.String())
		}
		if c.u != nil {
			c.u.Close()
		}
		if c.memfd >= 0 {
			unix.Close(c.memfd)
		}
	})

	buf := make([]byte, 256)
	oob := make([]byte, unix.CmsgSpace(2*4))
	c.conn.SetReadDeadline(c.deadline)
	n, oobn, _, _, err := c.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		c.fatalf("reading the child's hello: %v", err)
	}
	hello := string(buf[:n])
	c.check(hello)
	cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(cmsgs) != 1 {
		c.fatalf("hello %q: control messages %d, %v", hello, len(cmsgs), err)
	}
	rights, err := unix.ParseUnixRights(&cmsgs[0])
	if err != nil || len(rights) == 0 {
		c.fatalf("hello %q: no descriptors: %v", hello, err)
	}
	c.u = FromFd(rights[0])
	if len(rights) > 1 {
		c.memfd = rights[1]
	}
	if _, err := fmt.Sscanf(hello, "%d %d %d %d", &c.addr, &c.length, &c.features, &c.ioctls); err != nil {
		c.fatalf("hello %q: %v", hello, err)
	}
	c.u.SetFeatures(c.features)

	c.conn.SetReadDeadline(time.Time{})
	go func() {
		defer close(c.records)
		for {
			n, err := c.conn.Read(buf)
			if err != nil {
				return
			}
			c.records <- string(buf[:n])
		}
	}()
	return c
}

func (c *child) fatalf(format string, args ...any) {
	c.t.Helper()
	c.cmd.Process.Kill()
	<-c.waited
	c.waited <- nil
	c.t.Fatalf("%s\nchild output:\n%s", fmt.Sprintf(format, args...), c.stderr.String())
}

// check handles the records every mode may send instead of a result.
func (c *child) check(rec string) {
	c.t.Helper()
	switch {
	case strings.HasPrefix(rec, "skip: "):
		c.t.Skip("child: " + strings.TrimPrefix(rec, "skip: "))
	case strings.HasPrefix(rec, "error: "):
		c.fatalf("child: %s", rec)
	}
}

func (c *child) send(s string) {
	c.t.Helper()
	if _, err := c.conn.Write([]byte(s)); err != nil {
		c.fatalf("sending %q to the child: %v", s, err)
	}
}

// serve reads the userfaultfd, hands every message to handle, and returns
// the next record the child sends.
func (c *child) serve(handle func(Msg)) string {
	c.t.Helper()
	msgs := make([]Msg, 16)
	for {
		select {
		case rec, ok := <-c.records:
			if !ok {
				c.fatalf("child hung up")
			}
			c.check(rec)
			return rec
		default:
		}
		if time.Now().After(c.deadline) {
			c.fatalf("timed out waiting for the child")
		}
		readable, err := c.u.Poll(10 * time.Millisecond)
		if err != nil {
			c.fatalf("%v", err)
		}
		if !readable {
			continue
		}
		n, err := c.u.Drain(msgs)
		if err != nil {
			c.fatalf("%v", err)
		}
		for _, m := range msgs[:n] {
			handle(m)
		}
	}
}

func TestCopyCrossProcess(t *testing.T) {
	c := startChild(t, "copy")
	if c.features&FeatureExactAddress == 0 || c.features&FeatureThreadID == 0 {
		t.Fatalf("child features %s lack EXACT_ADDRESS|THREAD_ID", FeatureNames(c.features))
	}
	src := pattern.Random(int(c.length), 0x3C)
	var first *Msg
	c.send("go")
	rec := c.serve(func(m Msg) {
		if m.Event != EventPagefault {
			t.Errorf("unexpected %v", m)
			return
		}
		if first != nil {
			// A signal made the child fault again (Go's preemption
			// does); the page is there: Copy wakes it on EEXIST.
			if _, err := copyFrom(c.u, c.addr, src, 0); err != nil {
				t.Error(err)
			}
			return
		}
		first = &m
		n, err := copyFrom(c.u, c.addr, src, 0)
		if err != nil || n != c.length {
			t.Errorf("Copy of %d pages = %#x, %v, want %#x, nil", c.length/pageSize(), n, err, c.length)
		}
	})
	var gotSum uint64
	var tid uint32
	if _, err := fmt.Sscanf(rec, "sum=%d tid=%d", &gotSum, &tid); err != nil {
		t.Fatalf("child said %q: %v", rec, err)
	}
	if first == nil {
		t.Fatal("the child read its memory without a fault")
	}
	if want := uint64(c.addr + 100); first.Address != want || first.Flags != 0 || first.PTID != tid {
		t.Errorf("first message %v, want addr=%#x flags=read ptid=%d", *first, want, tid)
	}
	if want := sum(src); gotSum != want {
		t.Errorf("child read sum %d, want %d", gotSum, want)
	}
}

// skipIfShmemTHP skips tests that pwrite single pages into a memfd where
// that would allocate a huge folio whose other pages read as zeros.
func skipIfShmemTHP(t *testing.T) {
	b, _ := os.ReadFile("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
	if bytes.Contains(b, []byte("[always]")) || bytes.Contains(b, []byte("[force]")) {
		t.Skipf("shmem THP is on (%s): a 4 KiB pwrite would populate a 2 MiB folio", bytes.TrimSpace(b))
	}
}

// TestCopyWakesOnEEXIST has a page filled behind UFFDIO_COPY's back while
// the child waits on it: Copy must wake the child, which the kernel does not
// do on EEXIST, and still copy the pages after it.
func TestCopyWakesOnEEXIST(t *testing.T) {
	skipIfShmemTHP(t)
	c := startChild(t, "memfd")
	pg := int(pageSize())
	src := pattern.Random(int(c.length), 0x11)
	page0 := bytes.Repeat([]byte{0x5A}, pg)
	filled := false
	c.send("go")
	rec := c.serve(func(m Msg) {
		if m.Event != EventPagefault || uintptr(m.Address)&^(pageSize()-1) != c.addr {
			t.Errorf("unexpected %v, want a fault on page 0 at %#x", m, c.addr)
		}
		if filled {
			c.u.Wake(c.addr, pageSize())
			return
		}
		filled = true
		if _, err := unix.Pwrite(c.memfd, page0, 0); err != nil {
			t.Fatal(err)
		}
		n, err := copyFrom(c.u, c.addr, src, 0)
		if err != nil || n != c.length {
			t.Errorf("Copy over a present first page = %#x, %v, want %#x, nil", n, err, c.length)
		}
	})
	var gotSum uint64
	if _, err := fmt.Sscanf(rec, "sum=%d", &gotSum); err != nil {
		t.Fatalf("child said %q: %v", rec, err)
	}
	if want := sum(page0) + sum(src[pg:]); gotSum != want {
		t.Errorf("child read sum %d, want %d", gotSum, want)
	}
	// UFFDIO_COPY into shmem fills the shared page cache.
	got := make([]byte, pg)
	if _, err := unix.Pread(c.memfd, got, int64(pg)); err != nil || !bytes.Equal(got, src[pg:2*pg]) {
		t.Errorf("pread of page 1 after Copy: %v, content matches: %v", err, bytes.Equal(got, src[pg:2*pg]))
	}
}

// TestWake resolves a fault the memfd way: write the pages into the file,
// then UFFDIO_WAKE.
func TestWake(t *testing.T) {
	skipIfShmemTHP(t)
	c := startChild(t, "memfd")
	src := pattern.Random(int(c.length), 0x22)
	faults := 0
	c.send("go")
	rec := c.serve(func(m Msg) {
		faults++
		if faults == 1 {
			if _, err := unix.Pwrite(c.memfd, src, 0); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.u.Wake(c.addr, c.length); err != nil {
			t.Error(err)
		}
	})
	var gotSum uint64
	if _, err := fmt.Sscanf(rec, "sum=%d", &gotSum); err != nil {
		t.Fatalf("child said %q: %v", rec, err)
	}
	if faults == 0 {
		t.Error("no fault message")
	}
	if want := sum(src); gotSum != want {
		t.Errorf("child read sum %d, want %d", gotSum, want)
	}
}

// TestPoison answers a fault with UFFDIO_POISON: the child gets SIGBUS at the
// exact address it touched.
func TestPoison(t *testing.T) {
	c := startChild(t, "poison")
	pg := pageSize()
	target := c.addr + pg + 123
	poisoned := false
	c.send("go")
	rec := c.serve(func(m Msg) {
		if m.Event != EventPagefault || m.Address != uint64(target) {
			t.Errorf("unexpected %v, want a fault at %#x", m, target)
		}
		if poisoned {
			return // a stale duplicate: the poison already woke it
		}
		poisoned = true
		n, err := c.u.Poison(c.addr+pg, pg, 0)
		if err != nil || n != pg {
			t.Fatalf("Poison = %#x, %v, want %#x, nil", n, err, pg)
		}
		if n, err := c.u.Poison(c.addr+pg, pg, 0); n != 0 || !errors.Is(err, unix.EEXIST) {
			t.Errorf("second Poison = %#x, %v, want 0, EEXIST", n, err)
		}
	})
	var addr uintptr
	if _, err := fmt.Sscanf(rec, "sigbus addr=%v", &addr); err != nil {
		t.Fatalf("child said %q, want a SIGBUS report", rec)
	}
	if addr != target {
		t.Errorf("SIGBUS at %#x, want %#x", addr, target)
	}
}

// TestContinue resolves a minor fault: the page is in the memfd's page
// cache, only the child's page table lacks it.
func TestContinue(t *testing.T) {
	c := startChild(t, "minor")
	if c.ioctls&IoctlContinue == 0 {
		t.Fatalf("MINOR registration ioctls %#x lack CONTINUE", c.ioctls)
	}
	pg := pageSize()
	page2 := c.addr + 2*pg
	continued := false
	c.send("go")
	rec := c.serve(func(m Msg) {
		if m.Event != EventPagefault || m.Flags&PagefaultFlagMinor == 0 || uintptr(m.Address)&^(pg-1) != page2 {
			t.Errorf("unexpected %v, want a minor fault on %#x", m, page2)
		}
		if continued {
			c.u.Wake(page2, pg)
			return
		}
		continued = true
		n, err := c.u.Continue(page2, pg, 0)
		if err != nil || n != pg {
			t.Fatalf("Continue = %#x, %v, want %#x, nil", n, err, pg)
		}
		if n, err := c.u.Continue(page2, pg, 0); n != 0 || !errors.Is(err, unix.EEXIST) {
			t.Errorf("second Continue = %#x, %v, want 0, EEXIST", n, err)
		}
	})
	var gotSum uint64
	if _, err := fmt.Sscanf(rec, "sum=%d", &gotSum); err != nil {
		t.Fatalf("child said %q: %v", rec, err)
	}
	if want := uint64(0x33) * uint64(pg); gotSum != want {
		t.Errorf("child read sum %d, want %d", gotSum, want)
	}
}

// TestEvents has the child raise each non-cooperative event in turn. Each
// blocks the child until this process reads it.
func TestEvents(t *testing.T) {
	c := startChild(t, "events")
	pg := pageSize()
	msgs := make([]Msg, 16)

	// collect sends cmd and gathers the events until the child reports
	// that its system call returned.
	collect := func(cmd string) (events []Msg, rec string) {
		c.send(cmd)
		rec = c.serve(func(m Msg) { events = append(events, m) })
		n, err := c.u.Drain(msgs)
		if err != nil {
			t.Fatal(err)
		}
		events = append(events, msgs[:n]...)
		t.Logf("%s: %v", cmd, events)
		return events, rec
	}
	find := func(events []Msg, want Msg) {
		t.Helper()
		for _, m := range events {
			if m == want {
				return
			}
		}
		t.Errorf("events %v lack %v", events, want)
	}

	// REMOVE, and the EAGAIN of a fill while it is unread.
	c.send("remove")
	readable, err := c.u.Poll(childTimeout)
	if err != nil || !readable {
		t.Fatalf("Poll = %v, %v, want the REMOVE event", readable, err)
	}
	src := pattern.Random(int(pg), 0)
	n, err := copyFrom(c.u, c.addr+6*pg, src, 0)
	if n != 0 || !errors.Is(err, unix.EAGAIN) {
		t.Errorf("Copy with an unread event = %#x, %v, want 0, EAGAIN", n, err)
	}
	n2, err := c.u.Drain(msgs)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("remove: %v", msgs[:n2])
	find(msgs[:n2], Msg{Event: EventRemove, Start: uint64(c.addr), End: uint64(c.addr + 2*pg)})
	if rec := c.serve(func(m Msg) { t.Errorf("unexpected %v", m) }); rec != "ok" {
		t.Fatalf("child said %q", rec)
	}
	// The event is read and the child's madvise returned: fills work again.
	if n, err := copyFrom(c.u, c.addr+6*pg, src, 0); err != nil || n != pg {
		t.Errorf("Copy after draining = %#x, %v", n, err)
	}

	events, rec := collect("remap")
	var to uint64
	if _, err := fmt.Sscanf(rec, "ok to=%d", &to); err != nil {
		t.Fatalf("child said %q", rec)
	}
	find(events, Msg{Event: EventRemap, From: uint64(c.addr + 2*pg), To: to, Len: uint64(2 * pg)})

	events, _ = collect("unmap")
	find(events, Msg{Event: EventUnmap, Start: uint64(c.addr + 4*pg), End: uint64(c.addr + 6*pg)})

	events, rec = collect("fork")
	if !strings.HasPrefix(rec, "ok pid=") {
		t.Fatalf("child said %q", rec)
	}
	forks := 0
	for _, m := range events {
		if m.Event != EventFork {
			continue
		}
		forks++
		link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", m.UFD))
		if err != nil || !strings.Contains(link, "userfaultfd") {
			t.Errorf("%v: fd is %q (%v), want a userfaultfd", m, link, err)
		}
		FromFd(m.UFD).Close()
	}
	if forks != 1 {
		t.Errorf("events %v: %d forks, want 1", events, forks)
	}
}

// TestAlive: Alive tells a process's memory from one that is gone, and
// fills nothing: the child's probed page is still a hole that a Copy
// fills. The descriptor of its fork child, which exits at once (and is
// waited for), is gone.
func TestAlive(t *testing.T) {
	c := startChild(t, "events")
	pg := pageSize()
	if !c.u.Alive(c.addr) {
		t.Fatal("Alive of a running child's userfaultfd: false")
	}
	if n, err := copyFrom(c.u, c.addr, pattern.Random(int(pg), 0), CopyModeDontWake); err != nil || n != pg {
		t.Errorf("Copy into the probed page = %#x, %v, want %#x, nil: the probe filled it", n, err, pg)
	}
	var forked []*UFFD
	c.send("fork")
	if rec := c.serve(func(m Msg) {
		if m.Event == EventFork {
			forked = append(forked, FromFd(m.UFD))
		}
	}); !strings.HasPrefix(rec, "ok pid=") {
		t.Fatalf("child said %q", rec)
	}
	if len(forked) != 1 {
		t.Fatalf("%d fork events, want 1", len(forked))
	}
	defer forked[0].Close()
	if forked[0].Alive(c.addr) {
		t.Error("Alive of an exited fork child's userfaultfd: true")
	}
	if !c.u.Alive(c.addr) {
		t.Error("Alive of the running child's userfaultfd after its fork: false")
	}
}

// --- the child side ---

// childConn is the child's end of the socket, fd 3.
type childConn struct {
	*net.UnixConn
	buf [256]byte
}

func (c *childConn) send(format string, args ...any) error {
	_, err := c.Write([]byte(fmt.Sprintf(format, args...)))
	return err
}

// hello sends the registered range, the features and the ioctls, with the
// userfaultfd and any other descriptors attached.
func (c *childConn) hello(u *UFFD, b []byte, ioctls uint64, fds ...int) error {
	msg := fmt.Sprintf("%d %d %d %d", addrOf(b), len(b), u.Features(), ioctls)
	_, _, err := c.WriteMsgUnix([]byte(msg), unix.UnixRights(append([]int{u.Fd()}, fds...)...), nil)
	return err
}

func (c *childConn) recv() (string, error) {
	n, err := c.Read(c.buf[:])
	if err != nil {
		return "", err
	}
	return string(c.buf[:n]), nil
}

// expect waits for the parent's next record, which must be want.
func (c *childConn) expect(want string) error {
	got, err := c.recv()
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("parent said %q, want %q", got, want)
	}
	return nil
}

// waitHangup blocks until the parent closes the socket, so that the child's
// memory outlives every ioctl the parent still issues on it.
func (c *childConn) waitHangup() error {
	for {
		if _, err := c.recv(); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
	}
}

// errSkip carries a reason to skip from the child to the parent.
type errSkip struct{ error }

func childMain(mode string) int {
	// The faulting goroutine holds its P while it waits: leave room for
	// the rest of the runtime.
	runtime.GOMAXPROCS(max(4, runtime.GOMAXPROCS(0)))
	f := os.NewFile(3, "parent socket")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	c := &childConn{UnixConn: fc.(*net.UnixConn)}
	defer c.Close()
	run := map[string]func(*childConn) error{
		"copy":   childCopy,
		"memfd":  childMemfd,
		"poison": childPoison,
		"minor":  childMinor,
		"events": childEvents,
	}[mode]
	if run == nil {
		err = fmt.Errorf("unknown mode %q", mode)
	} else {
		err = run(c)
	}
	var skip errSkip
	switch {
	case errors.As(err, &skip):
		c.send("skip: %v", skip.error)
		return 0
	case err != nil:
		fmt.Fprintf(os.Stderr, "child %s: %v\n", mode, err)
		c.send("error: %v", err)
		return 1
	}
	return 0
}

// childUFFD creates the child's userfaultfd: non-blocking, because the
// parent reads it with Drain, and without UserModeOnly.
func childUFFD(want, need uint64) (*UFFD, error) {
	u, err := New(unix.O_CLOEXEC | unix.O_NONBLOCK)
	if err != nil {
		if unavailable(err) {
			return nil, errSkip{err}
		}
		return nil, err
	}
	if _, err := u.API(want, need); err != nil {
		u.Close()
		if unavailable(err) || errors.Is(err, errors.ErrUnsupported) {
			return nil, errSkip{err}
		}
		return nil, err
	}
	return u, nil
}

// onLockedThread runs f on a goroutine locked to its own OS thread and waits
// for it, so the thread that faults is one the parent can identify.
//
// The thread blocks asynchronous signals while f runs. A signal makes a
// blocked fault return and retry the access (Go's preemption signal arrives
// after 10 ms), which would resolve it behind the handler's back and hide a
// missing wake-up; with the signals held, only the handler can release it.
// The synchronous signals stay open: the kernel kills a thread that faults
// with SIGBUS blocked instead of delivering it.
func onLockedThread(f func()) {
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer close(done)
		sync := uint64(1)<<(unix.SIGBUS-1) | 1<<(unix.SIGSEGV-1) | 1<<(unix.SIGFPE-1) | 1<<(unix.SIGILL-1) | 1<<(unix.SIGTRAP-1)
		restore := sigsetmask(^sync)
		defer sigsetmask(restore)
		f()
	}()
	<-done
}

// sigsetmask sets the calling thread's signal mask and returns the old one.
func sigsetmask(mask uint64) (old uint64) {
	_, _, errno := syscall.RawSyscall6(unix.SYS_RT_SIGPROCMASK, unix.SIG_SETMASK,
		uintptr(unsafe.Pointer(&mask)), uintptr(unsafe.Pointer(&old)), 8, 0, 0)
	if errno != 0 {
		panic("rt_sigprocmask: " + errno.Error())
	}
	return old
}

func childAnon(pages int) ([]byte, error) {
	return unix.Mmap(-1, 0, pages*os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
}

func mapMemfd(pages int) (int, []byte, error) {
	fd, err := unix.MemfdCreate("uffd-test", unix.MFD_CLOEXEC)
	if err != nil {
		return -1, nil, err
	}
	if err := unix.Ftruncate(fd, int64(pages*os.Getpagesize())); err != nil {
		return -1, nil, err
	}
	b, err := unix.Mmap(fd, 0, pages*os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	return fd, b, err
}

// childCopy: 64 anonymous pages; touches byte 100 first, then sums all.
func childCopy(c *childConn) error {
	u, err := childUFFD(FeatureExactAddress|FeatureThreadID, 0)
	if err != nil {
		return err
	}
	b, err := childAnon(64)
	if err != nil {
		return err
	}
	ioctls, err := u.Register(addrOf(b), uintptr(len(b)), ModeMissing)
	if err != nil {
		return err
	}
	if err := c.hello(u, b, ioctls); err != nil {
		return err
	}
	if err := c.expect("go"); err != nil {
		return err
	}
	var s uint64
	var tid int
	onLockedThread(func() {
		tid = unix.Gettid()
		s = uint64(b[100])
		s += sum(b[:100]) + sum(b[101:])
	})
	if err := c.send("sum=%d tid=%d", s, tid); err != nil {
		return err
	}
	return c.waitHangup()
}

// childMemfd: 8 pages of a memfd mapped shared; sums them all.
func childMemfd(c *childConn) error {
	u, err := childUFFD(0, FeatureMissingShmem)
	if err != nil {
		return err
	}
	fd, b, err := mapMemfd(8)
	if err != nil {
		return err
	}
	ioctls, err := u.Register(addrOf(b), uintptr(len(b)), ModeMissing)
	if err != nil {
		return err
	}
	if err := c.hello(u, b, ioctls, fd); err != nil {
		return err
	}
	if err := c.expect("go"); err != nil {
		return err
	}
	var s uint64
	onLockedThread(func() { s = sum(b) })
	if err := c.send("sum=%d", s); err != nil {
		return err
	}
	return c.waitHangup()
}

var sink byte

// touchCatch loads the byte at p and returns the fault address if the load
// raised SIGBUS or SIGSEGV.
func touchCatch(p *byte) (addr uintptr, faulted bool) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			e, ok := r.(interface{ Addr() uintptr })
			if !ok {
				panic(r)
			}
			addr, faulted = e.Addr(), true
		}
	}()
	sink = *p
	return 0, false
}

// childPoison: touches byte 123 of page 1 and reports the SIGBUS.
func childPoison(c *childConn) error {
	u, err := childUFFD(FeatureExactAddress, FeaturePoison)
	if err != nil {
		return err
	}
	b, err := childAnon(4)
	if err != nil {
		return err
	}
	ioctls, err := u.Register(addrOf(b), uintptr(len(b)), ModeMissing)
	if err != nil {
		return err
	}
	if ioctls&IoctlPoison == 0 {
		return fmt.Errorf("ioctls %#x lack POISON", ioctls)
	}
	if err := c.hello(u, b, ioctls); err != nil {
		return err
	}
	if err := c.expect("go"); err != nil {
		return err
	}
	var addr uintptr
	var faulted bool
	onLockedThread(func() { addr, faulted = touchCatch(&b[os.Getpagesize()+123]) })
	if !faulted {
		return c.send("no fault")
	}
	if err := c.send("sigbus addr=%#x", addr); err != nil {
		return err
	}
	return c.waitHangup()
}

// childMinor: 4 memfd pages written before mapping, registered MINOR;
// sums page 2, whose bytes are all 0x33.
func childMinor(c *childConn) error {
	u, err := childUFFD(0, FeatureMinorShmem)
	if err != nil {
		return err
	}
	fd, b, err := mapMemfd(4)
	if err != nil {
		return err
	}
	pg := os.Getpagesize()
	for i := range 4 {
		if _, err := unix.Pwrite(fd, bytes.Repeat([]byte{byte(0x11 * (i + 1))}, pg), int64(i*pg)); err != nil {
			return err
		}
	}
	ioctls, err := u.Register(addrOf(b), uintptr(len(b)), ModeMinor)
	if err != nil {
		return err
	}
	if err := c.hello(u, b, ioctls, fd); err != nil {
		return err
	}
	if err := c.expect("go"); err != nil {
		return err
	}
	var s uint64
	onLockedThread(func() { s = sum(b[2*pg : 3*pg]) })
	if err := c.send("sum=%d", s); err != nil {
		return err
	}
	return c.waitHangup()
}

// childEvents: 8 anonymous pages; on command, madvise(DONTNEED) pages 0-1,
// mremap pages 2-3 elsewhere, munmap pages 4-5, fork.
func childEvents(c *childConn) error {
	feats := FeatureEventRemove | FeatureEventRemap | FeatureEventUnmap | FeatureEventFork
	u, err := childUFFD(0, feats)
	if err != nil {
		return err
	}
	b, err := childAnon(8)
	if err != nil {
		return err
	}
	ioctls, err := u.Register(addrOf(b), uintptr(len(b)), ModeMissing)
	if err != nil {
		return err
	}
	if err := c.hello(u, b, ioctls); err != nil {
		return err
	}
	pg := os.Getpagesize()
	for {
		cmd, err := c.recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		switch cmd {
		case "remove":
			if err := unix.Madvise(b[:2*pg], unix.MADV_DONTNEED); err != nil {
				return err
			}
			err = c.send("ok")
		case "remap":
			to, err := unix.Mmap(-1, 0, 2*pg, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
			if err != nil {
				return err
			}
			_, _, errno := unix.Syscall6(unix.SYS_MREMAP, addrOf(b)+uintptr(2*pg), uintptr(2*pg), uintptr(2*pg),
				unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, addrOf(to), 0)
			if errno != 0 {
				return fmt.Errorf("mremap: %w", errno)
			}
			err = c.send("ok to=%d", addrOf(to))
		case "unmap":
			if _, _, errno := unix.Syscall(unix.SYS_MUNMAP, addrOf(b)+uintptr(4*pg), uintptr(2*pg), 0); errno != 0 {
				return fmt.Errorf("munmap: %w", errno)
			}
			err = c.send("ok")
		case "fork":
			pid, err := rawFork()
			if err != nil {
				return err
			}
			var ws unix.WaitStatus
			if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil {
				return err
			}
			err = c.send("ok pid=%d", pid)
		default:
			return fmt.Errorf("unknown command %q", cmd)
		}
		if err != nil {
			return err
		}
	}
}

// rawFork forks a grandchild that exits at once. It is fork(2) proper, not
// the runtime's vfork-and-exec, because only a copy of the address space
// raises a FORK event. The grandchild runs no Go code, with every signal
// blocked.
func rawFork() (int, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	old := sigsetmask(^uint64(0))
	pid, _, errno := syscall.RawSyscall6(unix.SYS_CLONE, uintptr(unix.SIGCHLD), 0, 0, 0, 0, 0)
	if pid == 0 && errno == 0 {
		syscall.RawSyscall(unix.SYS_EXIT_GROUP, 0, 0, 0)
	}
	sigsetmask(old)
	if errno != 0 {
		return 0, fmt.Errorf("clone: %w", errno)
	}
	return int(pid), nil
}

// When neither userfaultfd(2) nor /dev/userfaultfd will make a descriptor
// for lack of rights, the error says how to grant them, warns about what
// CAP_SYS_PTRACE gives besides, and still wraps both errnos. (The real
// refusal, from a process of another uid: TestCatWithoutUserfaultfdRights
// in cmd/filemap.)
func TestCreationErrorSaysHowToGrant(t *testing.T) {
	open := func(errno unix.Errno) error { return fmt.Errorf("open %s: %w", devicePath, errno) }
	const flags = unix.O_CLOEXEC | unix.O_NONBLOCK
	for _, c := range []struct {
		name           string
		sysErr, devErr error
		want, notWant  []string
	}{
		{"no rights", unix.EPERM, open(unix.EACCES),
			[]string{"userfaultfd(0x80800): operation not permitted", "permission denied", "may not use userfaultfd",
				"read-write access to /dev/userfaultfd", "sysctl vm.unprivileged_userfaultfd=1", "CAP_SYS_PTRACE", "descriptors of other processes"}, nil},
		{"no device", unix.EPERM, open(unix.ENOENT),
			[]string{"no /dev/userfaultfd", "sysctl vm.unprivileged_userfaultfd=1", "CAP_SYS_PTRACE"}, []string{"access to /dev/userfaultfd"}},
		{"seccomp", unix.ENOSYS, open(unix.EPERM),
			[]string{"filtered", "read-write access to /dev/userfaultfd"}, []string{"sysctl", "CAP_SYS_PTRACE"}},
		{"not about rights", unix.EPERM, fmt.Errorf("%s: USERFAULTFD_IOC_NEW(%#x): %w", devicePath, flags, unix.EINVAL),
			[]string{"USERFAULTFD_IOC_NEW"}, []string{"may not use", "sysctl", "CAP_SYS_PTRACE"}},
	} {
		err := creationError(flags, c.sysErr, c.devErr)
		msg := err.Error()
		for _, w := range c.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: %q does not say %q", c.name, msg, w)
			}
		}
		for _, w := range c.notWant {
			if strings.Contains(msg, w) {
				t.Errorf("%s: %q says %q, which does not apply", c.name, msg, w)
			}
		}
		if !errors.Is(err, c.sysErr) || !errors.Is(err, errors.Unwrap(c.devErr)) {
			t.Errorf("%s: %v does not wrap both causes", c.name, err)
		}
	}
}
