//go:build linux && amd64

package kvmtest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/filemap/filemap/uffd"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	if os.Getenv(envRole) == roleHandler {
		if err := serveFirecracker(os.Getenv(envSocket), os.Getenv(envMem)); err != nil {
			fmt.Fprintln(os.Stderr, "in-test handler:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// The guest of the handler tests: guestRAM bytes of patterned memory, one
// region, the program at codeAddr.
const (
	guestRAM = 32 << 20
	pageSize = 4096
	codeAddr = 0x1000
	sumPort  = 0xe9 // the debug-console port of Bochs and QEMU; any would do

	// runTimeout bounds each Run: a guest whose page is never served
	// would otherwise block the test until go test's own timeout.
	runTimeout = 10 * time.Second
)

// A guest run of testGuest: SumCode over [lo, hi) with a stride.
type sumRun struct {
	lo, hi uint64
	stride uint32
}

// TestGuestOnFilemapFirecracker is the real-guest test: a KVM guest
// whose memory `filemap firecracker` serves over the Firecracker protocol
// sums that memory, and the sums must be the memory file's.
func TestGuestOnFilemapFirecracker(t *testing.T) {
	needKVM(t)
	// filemap may fill pages ahead of the faults (readahead); 4 MiB of
	// them is room for that, and still far from filling all 32.
	testGuest(t, startFilemapFirecracker, 1024)
}

// TestGuestOnInTestHandler runs the same guest on the small handler in this
// test binary, which tests the VMM side (this package, and the handshake)
// independently of filemap's handler, and counts the pages served.
func TestGuestOnInTestHandler(t *testing.T) {
	needKVM(t)
	h := testGuest(t, startInTestHandler, 0)
	var faults, pages int
	out := h.stop(t, 5*time.Second)
	if _, err := fmt.Sscanf(out, "faults %d pages %d", &faults, &pages); err != nil {
		t.Fatalf("in-test handler's stats %q: %v", out, err)
	}
	t.Logf("in-test handler: %d fault messages, %d pages installed", faults, pages)
	if pages != guestRAM/pageSize {
		t.Errorf("handler installed %d pages; the guest touched all %d", pages, guestRAM/pageSize)
	}
	if faults < pages {
		t.Errorf("handler installed %d pages on %d faults", pages, faults)
	}
}

// testGuest plays Firecracker's part in a snapshot restore against the
// handler start starts, then boots the sum program on the restored memory:
//
//  1. the memory file: patterned words, the program at codeAddr;
//  2. guest RAM: anonymous private memory registered with a userfaultfd
//     for MISSING faults, with the features Firecracker asks for;
//  3. the handshake: regions and userfaultfd in one message, the
//     connection kept open;
//  4. a VM on that memory, which runs the sum program three times. Each
//     run's two checksums must be the file's, and after each the resident
//     pages must be those the guest has touched, plus at most slack others
//     that the handler filled ahead.
//
// It returns the handler, whose connection is closed by then.
func testGuest(t *testing.T, start startFunc, slack int) *handlerProc {
	dir := t.TempDir()
	image := makeImage(guestRAM)
	memPath := filepath.Join(dir, "mem")
	if err := os.WriteFile(memPath, image, 0o600); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "uffd.sock")
	h := start(t, socket, memPath)

	mem := mapGuestRAM(t, guestRAM)
	u := registerVMMUffd(t, mem, 0)
	conn := sendHandshake(t, socket, []region{{
		BaseHostVirtAddr: uint64(uintptr(unsafe.Pointer(&mem[0]))),
		Size:             guestRAM,
		Offset:           0,
		PageSize:         pageSize,
		PageSizeKiB:      pageSize,
	}}, u)

	vm, err := NewVM(mem)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()

	// The runs, in order, on one VM. Their strides keep the test to
	// seconds where KVM emulates every guest instruction (see SumCode):
	// 16 words a page, except in the run that reads every word.
	runs := []sumRun{
		// Half the memory, so that the untouched half shows that the
		// handler fills only the pages the guest reads.
		{8 << 20, 24 << 20, 256},
		// Every byte of 64 pages not touched yet.
		{28 << 20, 28<<20 + 64*pageSize, 4},
		// All of it: the rest of the pages, and again those served.
		{0, guestRAM, 256},
	}
	touched := make([]bool, guestRAM/pageSize)
	touched[codeAddr/pageSize] = true
	for _, r := range runs {
		ctx, cancel := context.WithTimeout(t.Context(), runTimeout)
		t0 := time.Now()
		exits, err := vm.Run(ctx, codeAddr, SumRegs(r.lo, r.hi, r.stride, sumPort))
		cancel()
		if err != nil {
			t.Fatalf("guest summing [%#x, %#x) by %d: %v (exits %v)", r.lo, r.hi, r.stride, err, exits)
		}
		got, err := portWords(exits, sumPort)
		if err != nil {
			t.Fatal(err)
		}
		sum, weighted := Checksum(image[r.lo:r.hi], int(r.stride))
		if want := []uint32{sum, weighted}; !slices.Equal(got, want) {
			t.Fatalf("guest summing [%#x, %#x) by %d reported %#x; the memory file's checksums are %#x", r.lo, r.hi, r.stride, got, want)
		}
		for p := r.lo / pageSize; p < (r.hi+pageSize-1)/pageSize; p++ {
			touched[p] = true
		}
		t.Logf("guest summed [%#x, %#x) by %d in %v: sum %#x weighted %#x", r.lo, r.hi, r.stride, time.Since(t0).Round(time.Millisecond), got[0], got[1])
		checkResident(t, mem, touched, slack)
	}
	vm.Close()
	conn.Close() // Firecracker's socket closes when it exits
	return h
}

// needKVM skips the test where KVM cannot run a VM, saying why.
func needKVM(t *testing.T) {
	t.Helper()
	if err := Available(); err != nil {
		t.Skip(err)
	}
}

// makeImage returns size bytes of memory image: every 32-bit word a hash of
// its index, so that no two pages are alike, and SumCode at codeAddr, so
// that the program's own page is served by the handler like any other.
func makeImage(size int) []byte {
	b := make([]byte, size)
	for i := 0; i+4 <= size; i += 4 {
		x := uint32(i/4) * 0x9e3779b1
		x ^= x >> 15
		x *= 0x85ebca6b
		x ^= x >> 13
		binary.LittleEndian.PutUint32(b[i:], x)
	}
	copy(b[codeAddr:], SumCode())
	return b
}

// mapGuestRAM maps size bytes of anonymous private memory, as Firecracker
// maps guest memory for a UFFD restore. Nothing in this process may touch
// it but KVM: a load from a goroutine would block on a page the handler has
// not served, with the Go runtime unaware.
func mapGuestRAM(t *testing.T, size int) []byte {
	t.Helper()
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	return mem
}

// registerVMMUffd creates a userfaultfd as Firecracker does (non-blocking,
// close-on-exec, EVENT_REMOVE required, and not user-mode-only, so that
// KVM's own accesses are reported too) and registers mem for MISSING
// faults. flags adds to the creation flags. The test process keeps its
// descriptor open until the end, as Firecracker does: a handler that dies
// then stalls the guest instead of letting it read zeros.
func registerVMMUffd(t *testing.T, mem []byte, flags int) *uffd.UFFD {
	t.Helper()
	u, err := uffd.New(unix.O_CLOEXEC | unix.O_NONBLOCK | flags)
	if errors.Is(err, unix.EPERM) {
		t.Skipf("needs userfaultfd for kernel-mode faults (root, CAP_SYS_PTRACE, vm.unprivileged_userfaultfd=1 or access to /dev/userfaultfd): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	if _, err := u.API(0, uffd.FeatureEventRemove); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Register(uintptr(unsafe.Pointer(&mem[0])), uintptr(len(mem)), uffd.ModeMissing); err != nil {
		t.Fatal(err)
	}
	return u
}

// portWords returns the 32-bit outputs to port among exits, which must end
// with the HLT.
func portWords(exits []Exit, port uint16) ([]uint32, error) {
	if len(exits) == 0 || exits[len(exits)-1].Reason != ExitHLT {
		return nil, fmt.Errorf("the guest did not end with HLT: %v", exits)
	}
	var words []uint32
	for _, e := range exits[:len(exits)-1] {
		if e.Reason != ExitIO || e.Port != port || len(e.Data) != 4 {
			return nil, fmt.Errorf("unexpected exit %+v; want 32-bit outputs to port %#x", e, port)
		}
		words = append(words, binary.LittleEndian.Uint32(e.Data))
	}
	return words, nil
}

// checkResident checks with mincore(2) that the pages of mem in memory are
// the touched ones, and at most slack others: the guest's accesses made the
// handler fill pages, and only a handler that reads ahead fills others. KVM
// adds none: the guest uses no page tables or descriptor tables, and KVM
// prefetches only pages already present.
func checkResident(t *testing.T, mem []byte, touched []bool, slack int) {
	t.Helper()
	vec := make([]byte, len(touched))
	_, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&mem[0])), uintptr(len(mem)), uintptr(unsafe.Pointer(&vec[0])))
	if errno != 0 {
		t.Fatalf("mincore: %v", errno)
	}
	var missing, extra []int
	want := 0
	for p, tc := range touched {
		in := vec[p]&1 != 0
		switch {
		case tc && !in:
			missing = append(missing, p)
		case !tc && in:
			extra = append(extra, p)
		}
		if tc {
			want++
		}
	}
	t.Logf("resident: %d pages touched by the guest, %d not resident, %d resident untouched", want, len(missing), len(extra))
	if len(missing) > 0 {
		t.Errorf("%d pages the guest read are not resident, first %d", len(missing), missing[0])
	}
	if len(extra) > slack {
		t.Errorf("%d pages the guest did not touch are resident (allowed: %d), first %d", len(extra), slack, extra[0])
	}
}

// TestRunCancelsBlockedGuest checks Run's context on the failure Firecracker
// users know as a frozen guest: a handler that does not answer. The test
// process plays the handler here, slowly: the vCPU's first instruction fetch
// must block in KVM_RUN and show up on the userfaultfd as a fault at the
// program's page, and after the cancel Run must return the context's error
// instead of running the guest to its end.
//
// How soon it can return depends on the kernel. KVM proper waits for the
// fault interruptibly, so the watchdog's signal ends KVM_RUN at once. PVM,
// the KVM of machines without VMX or SVM, emulates such a guest, and its
// emulator retries the faulting access in the kernel, spinning while a
// signal is pending, until the page arrives: there Run returns once the
// pages are served. The test serves every fault that comes after the cancel,
// and logs which of the two it saw.
func TestRunCancelsBlockedGuest(t *testing.T) {
	needKVM(t)
	const size = 1 << 20
	image := makeImage(size)
	mem := mapGuestRAM(t, size)
	u := registerVMMUffd(t, mem, 0)
	base := uint64(uintptr(unsafe.Pointer(&mem[0])))
	vm, err := NewVM(mem)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := vm.Run(ctx, codeAddr, SumRegs(0x10000, 0x20000, 4, sumPort))
		done <- err
	}()

	// Reading the message leaves the vCPU blocked: only a fill or a wake
	// releases it.
	if ok, err := u.Poll(5 * time.Second); err != nil || !ok {
		t.Fatalf("no fault on the userfaultfd within 5s of KVM_RUN (%v)", err)
	}
	msgs := make([]uffd.Msg, 8)
	n, err := u.Drain(msgs)
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 || msgs[0].Event != uffd.EventPagefault || msgs[0].Address != base+codeAddr {
		t.Fatalf("uffd messages %v; want one page fault at %#x, the program's page", msgs[:n], base+codeAddr)
	}
	select {
	case err := <-done:
		t.Fatalf("Run returned %v with its page unserved", err)
	case <-time.After(100 * time.Millisecond):
	}

	t0 := time.Now()
	cancel()
	pending := []uint64{msgs[0].Address}
	served := 0
	deadline := time.After(10 * time.Second)
	for {
		select {
		case err = <-done:
		case <-deadline:
			// Closing the last descriptor makes the kernel resolve
			// the fault with a zero page, which frees the vCPU.
			u.Close()
			<-done
			t.Fatal("Run did not return within 10s of the cancel")
		case <-time.After(20 * time.Millisecond):
			// Serve what has come, the program's page first. Serving
			// from this process is safe: nothing here touches guest
			// RAM but KVM, on a thread that is in a system call.
			if n, err := u.Drain(msgs); err == nil {
				for _, m := range msgs[:n] {
					pending = append(pending, m.Address)
				}
			}
			for _, a := range pending {
				off := a - base
				if _, err := u.Copy(uintptr(a), uintptr(unsafe.Pointer(&image[off])), pageSize, 0); err != nil {
					t.Fatal(err)
				}
				served++
			}
			pending = pending[:0]
			continue
		}
		break
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v; want the context's error", err)
	}
	if served == 0 {
		t.Logf("KVM_RUN returned on the signal while blocked on the fault, %v after the cancel", time.Since(t0).Round(time.Microsecond))
	} else {
		t.Logf("KVM_RUN returned %v after the cancel, once %d pages were served: this kernel does not interrupt a vCPU blocked on a user fault", time.Since(t0).Round(time.Microsecond), served)
	}
}

// TestUserModeOnlyUffdFailsKVM shows why Firecracker creates its
// userfaultfd without UFFD_USER_MODE_ONLY: KVM reaches guest memory from
// the kernel, where such a descriptor reports nothing and the access just
// fails. KVM_RUN then fails (with EFAULT where the hardware maps guest
// memory; with KVM_EXIT_INTERNAL_ERROR, an emulation failure, where KVM
// emulates the guest, as PVM does) instead of waiting for a handler.
func TestUserModeOnlyUffdFailsKVM(t *testing.T) {
	needKVM(t)
	mem := mapGuestRAM(t, 1<<20)
	u := registerVMMUffd(t, mem, uffd.UserModeOnly)
	vm, err := NewVM(mem)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	ctx, cancel := context.WithTimeout(t.Context(), runTimeout)
	defer cancel()
	exits, err := vm.Run(ctx, codeAddr, SumRegs(0, 4096, 4, sumPort))
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run on a user-mode-only userfaultfd = %v, %v; want a failure", exits, err)
	}
	t.Logf("Run: %v", err)
	msgs := make([]uffd.Msg, 8)
	if n, err := u.Drain(msgs); err != nil || n != 0 {
		t.Errorf("user-mode-only userfaultfd has %d messages (%v); want none", n, err)
	}
}

// TestLayout checks the Go mirrors of the KVM structures and the ioctl
// numbers against the values of <linux/kvm.h> on x86-64.
func TestLayout(t *testing.T) {
	sizes := []struct {
		name      string
		got, want uintptr
	}{
		{"kvm_userspace_memory_region", unsafe.Sizeof(memRegion{}), 32},
		{"kvm_regs", unsafe.Sizeof(regs{}), 144},
		{"kvm_segment", unsafe.Sizeof(segment{}), 24},
		{"kvm_dtable", unsafe.Sizeof(dtable{}), 16},
		{"kvm_sregs", unsafe.Sizeof(sregs{}), 312},
		{"kvm_sregs.cr0", unsafe.Offsetof(sregs{}.cr0), 224},
		{"kvm_sregs.interrupt_bitmap", unsafe.Offsetof(sregs{}.interruptBitmap), 280},
	}
	for _, s := range sizes {
		if s.got != s.want {
			t.Errorf("%s: %d bytes; C has %d", s.name, s.got, s.want)
		}
	}
	ioctls := []struct {
		name      string
		got, want uintptr
	}{
		{"KVM_GET_API_VERSION", ioctlGetAPIVersion, 0xae00},
		{"KVM_CREATE_VM", ioctlCreateVM, 0xae01},
		{"KVM_GET_VCPU_MMAP_SIZE", ioctlGetVCPUMmapSize, 0xae04},
		{"KVM_CREATE_VCPU", ioctlCreateVCPU, 0xae41},
		{"KVM_SET_USER_MEMORY_REGION", ioctlSetUserMemRegion, 0x4020ae46},
		{"KVM_SET_TSS_ADDR", ioctlSetTSSAddr, 0xae47},
		{"KVM_RUN", ioctlRun, 0xae80},
		{"KVM_GET_REGS", ioctlGetRegs, 0x8090ae81},
		{"KVM_SET_REGS", ioctlSetRegs, 0x4090ae82},
		{"KVM_GET_SREGS", ioctlGetSregs, 0x8138ae83},
		{"KVM_SET_SREGS", ioctlSetSregs, 0x4138ae84},
	}
	for _, c := range ioctls {
		if c.got != c.want {
			t.Errorf("%s = %#x; want %#x", c.name, c.got, c.want)
		}
	}
}

// TestChecksum pins Checksum on a small input worked out by hand.
func TestChecksum(t *testing.T) {
	b := []byte{1, 0, 0, 0, 2, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 9}
	// sums 1, 3, 2 (mod 2^32); weighted 1+3+2; the partial word is ignored
	if s, w := Checksum(b, 4); s != 2 || w != 6 {
		t.Errorf("Checksum(b, 4) = %d, %d; want 2, 6", s, w)
	}
	// words 1 and 0xffffffff: sums 1, 0; weighted 1+0
	if s, w := Checksum(b, 8); s != 0 || w != 1 {
		t.Errorf("Checksum(b, 8) = %d, %d; want 0, 1", s, w)
	}
}

// TestSumCodeMatchesAssembler assembles testdata/sum.S with GNU as, where it
// is installed, and compares with the hand-assembled SumCode.
func TestSumCodeMatchesAssembler(t *testing.T) {
	as, err1 := exec.LookPath("as")
	objcopy, err2 := exec.LookPath("objcopy")
	if err := errors.Join(err1, err2); err != nil {
		t.Skipf("needs GNU as and objcopy to check the hand assembly: %v", err)
	}
	dir := t.TempDir()
	obj, bin := filepath.Join(dir, "sum.o"), filepath.Join(dir, "sum.bin")
	for _, args := range [][]string{
		{as, "--32", "-o", obj, filepath.Join("testdata", "sum.S")},
		{objcopy, "-O", "binary", "-j", ".text", obj, bin},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	got, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if want := SumCode(); !bytes.Equal(got, want) {
		t.Errorf("as assembles testdata/sum.S to\n% x\nSumCode is\n% x", got, want)
	}
}
