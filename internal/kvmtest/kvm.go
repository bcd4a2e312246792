//go:build linux && amd64

package kvmtest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrUnavailable is wrapped by the errors of Available and NewVM when KVM
// cannot be used on this machine, so that tests can skip rather than fail.
var ErrUnavailable = errors.New("needs /dev/kvm (KVM)")

// devKVM is KVM's device node.
const devKVM = "/dev/kvm"

// The generic _IOC encoding of include/uapi/asm-generic/ioctl.h: direction
// in bits 30-31, size in 16-29, type in 8-15 and number in 0-7.
const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2

	kvmio = 0xAE // KVMIO, the type of every KVM ioctl
)

func ioc(dir, nr, size uintptr) uintptr { return dir<<30 | size<<16 | kvmio<<8 | nr }

// The KVM ioctls this VMM uses (include/uapi/linux/kvm.h). Those that carry
// a structure encode its size, so they are computed from the Go types below,
// whose layout sizes_test.go checks against the C structures.
var (
	ioctlGetAPIVersion    = ioc(iocNone, 0x00, 0)                           // on /dev/kvm
	ioctlCreateVM         = ioc(iocNone, 0x01, 0)                           // on /dev/kvm
	ioctlGetVCPUMmapSize  = ioc(iocNone, 0x04, 0)                           // on /dev/kvm
	ioctlCreateVCPU       = ioc(iocNone, 0x41, 0)                           // on the VM
	ioctlSetUserMemRegion = ioc(iocWrite, 0x46, unsafe.Sizeof(memRegion{})) // on the VM
	ioctlSetTSSAddr       = ioc(iocNone, 0x47, 0)                           // on the VM
	ioctlRun              = ioc(iocNone, 0x80, 0)                           // on the vCPU
	ioctlGetRegs          = ioc(iocRead, 0x81, unsafe.Sizeof(regs{}))       // on the vCPU
	ioctlSetRegs          = ioc(iocWrite, 0x82, unsafe.Sizeof(regs{}))      // on the vCPU
	ioctlGetSregs         = ioc(iocRead, 0x83, unsafe.Sizeof(sregs{}))      // on the vCPU
	ioctlSetSregs         = ioc(iocWrite, 0x84, unsafe.Sizeof(sregs{}))     // on the vCPU
)

// apiVersion is KVM_API_VERSION, stable since Linux 2.6.22.
const apiVersion = 12

// tssAddr is where KVM_SET_TSS_ADDR puts the three pages Intel's VMX needs
// for its real-mode TSS: far above any guest RAM here, in the hole below
// 4 GiB that PCs leave for firmware. AMD's SVM ignores it.
const tssAddr = 0xfffbd000

// Exit reasons (KVM_EXIT_*): kvm_run.exit_reason after KVM_RUN returns.
const (
	ExitUnknown       = 0
	ExitException     = 1
	ExitIO            = 2
	ExitHLT           = 5
	ExitMMIO          = 6
	ExitShutdown      = 8 // triple fault
	ExitFailEntry     = 9
	ExitIntr          = 10 // a signal interrupted KVM_RUN
	ExitInternalError = 17
	ExitMemoryFault   = 39 // KVM could not map guest memory (Linux 6.8)
)

// ExitName spells an exit reason the way the headers do, without KVM_EXIT_.
func ExitName(reason uint32) string {
	switch reason {
	case ExitUnknown:
		return "UNKNOWN"
	case ExitException:
		return "EXCEPTION"
	case ExitIO:
		return "IO"
	case ExitHLT:
		return "HLT"
	case ExitMMIO:
		return "MMIO"
	case ExitShutdown:
		return "SHUTDOWN"
	case ExitFailEntry:
		return "FAIL_ENTRY"
	case ExitIntr:
		return "INTR"
	case ExitInternalError:
		return "INTERNAL_ERROR"
	case ExitMemoryFault:
		return "MEMORY_FAULT"
	}
	return fmt.Sprintf("exit reason %d", reason)
}

// memRegion is struct kvm_userspace_memory_region.
type memRegion struct {
	slot          uint32
	flags         uint32
	guestPhysAddr uint64
	memorySize    uint64
	userspaceAddr uint64
}

// regs is struct kvm_regs (x86).
type regs struct {
	rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp uint64
	r8, r9, r10, r11, r12, r13, r14, r15   uint64
	rip, rflags                            uint64
}

// segment is struct kvm_segment: a segment register with its hidden part,
// which KVM loads as is. With it the guest never reads a descriptor table.
type segment struct {
	base                           uint64
	limit                          uint32
	selector                       uint16
	typ                            uint8
	present, dpl, db, s, l, g, avl uint8
	unusable                       uint8
	_                              uint8
}

// dtable is struct kvm_dtable (GDTR, IDTR).
type dtable struct {
	base  uint64
	limit uint16
	_     [3]uint16
}

// sregs is struct kvm_sregs (x86).
type sregs struct {
	cs, ds, es, fs, gs, ss segment
	tr, ldt                segment
	gdt, idt               dtable
	cr0, cr2, cr3, cr4     uint64
	cr8                    uint64
	efer                   uint64
	apicBase               uint64
	interruptBitmap        [4]uint64 // (KVM_NR_INTERRUPTS+63)/64
}

// Offsets in struct kvm_run, the page shared with the kernel per vCPU.
const (
	runExitReason = 8  // u32 exit_reason
	runUnion      = 32 // the union of exit details
	// KVM_EXIT_IO: u8 direction, u8 size, u16 port, u32 count, u64 data_offset.
	runIODirection  = runUnion
	runIOSize       = runUnion + 1
	runIOPort       = runUnion + 2
	runIOCount      = runUnion + 4
	runIODataOffset = runUnion + 8

	ioDirectionOut = 1 // KVM_EXIT_IO_OUT
)

// Regs are the general registers a guest program starts with.
type Regs struct {
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
}

// Exit is one exit of the vCPU that Run reports: a port output, or the HLT
// that ended the run.
type Exit struct {
	Reason uint32 // ExitIO or ExitHLT
	Port   uint16 // ExitIO: the port written
	Data   []byte // ExitIO: the bytes written, size×count of them
}

// maxExits bounds the exits of one Run, so that a guest stuck in an output
// loop fails the run instead of filling memory.
const maxExits = 1 << 16

// VM is a virtual machine with one memory slot and one vCPU.
//
// Its methods must not be called concurrently.
type VM struct {
	kvm, vm, vcpu int    // file descriptors
	run           []byte // the vCPU's struct kvm_run, mapped
	mem           []byte // guest RAM, guest physical 0 onwards
}

// Available reports whether KVM can run a VM here: nil, or an error that
// wraps ErrUnavailable and says why not.
func Available() error {
	vm, err := open()
	if err != nil {
		return err
	}
	return vm.Close()
}

// open opens /dev/kvm and creates an empty VM, wrapping ErrUnavailable in
// the errors that mean KVM cannot be used here.
func open() (*VM, error) {
	kvm, err := unix.Open(devKVM, unix.O_RDWR|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil, fmt.Errorf("kvmtest: %w: %s does not exist (no KVM on this machine, or its module is not loaded)", ErrUnavailable, devKVM)
	case errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM):
		return nil, fmt.Errorf("kvmtest: %w: uid %d may not open %s (not root: add the user to the kvm group): %w",
			ErrUnavailable, os.Getuid(), devKVM, err)
	case err != nil:
		return nil, fmt.Errorf("kvmtest: %w: open %s: %w", ErrUnavailable, devKVM, err)
	}
	v, err := ioctl(kvm, ioctlGetAPIVersion, 0)
	if err != nil || v != apiVersion {
		unix.Close(kvm)
		return nil, fmt.Errorf("kvmtest: %w: KVM_GET_API_VERSION = %d, %v; want %d", ErrUnavailable, v, err, apiVersion)
	}
	// Machine type 0: the default. This fails where KVM cannot run a
	// guest after all, e.g. when another hypervisor holds VMX.
	vm, err := ioctl(kvm, ioctlCreateVM, 0)
	if err != nil {
		unix.Close(kvm)
		return nil, fmt.Errorf("kvmtest: %w: KVM_CREATE_VM: %w", ErrUnavailable, err)
	}
	return &VM{kvm: kvm, vm: int(vm), vcpu: -1}, nil
}

// NewVM creates a VM whose guest physical memory [0, len(mem)) is mem, and
// its vCPU, in flat 32-bit protected mode. mem must be page-aligned host
// memory, typically from mmap(2), that stays mapped until Close: KVM keeps
// only its address.
//
// mem may be registered with a userfaultfd; then the vCPU's first access
// to each page blocks in KVM_RUN until a handler fills it. The handler is
// best another process, as for a VMM, but may be a goroutine of this one:
// KVM_RUN is a system call, which the Go runtime does not wait for. No
// goroutine may load from mem, though: it would block on the fault in user
// mode, where the runtime cannot stop it for a garbage collection.
func NewVM(mem []byte) (vm *VM, err error) {
	page := uintptr(os.Getpagesize())
	if len(mem) == 0 || uintptr(unsafe.Pointer(unsafe.SliceData(mem)))%page != 0 || uintptr(len(mem))%page != 0 {
		return nil, fmt.Errorf("kvmtest: guest memory of %d bytes at %p: want a non-empty, page-aligned range", len(mem), unsafe.SliceData(mem))
	}
	vm, err = open()
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			vm.Close()
			vm = nil
		}
	}()
	vm.mem = mem
	// Required on Intel (VMX keeps a TSS there to emulate real mode) and a
	// no-op on AMD: calling it always keeps the VMM free of CPU detection.
	if _, err := ioctl(vm.vm, ioctlSetTSSAddr, tssAddr); err != nil {
		return vm, fmt.Errorf("kvmtest: KVM_SET_TSS_ADDR: %w", err)
	}
	region := memRegion{
		slot:          0,
		guestPhysAddr: 0,
		memorySize:    uint64(len(mem)),
		userspaceAddr: uint64(uintptr(unsafe.Pointer(unsafe.SliceData(mem)))),
	}
	if _, err := ioctlPtr(vm.vm, ioctlSetUserMemRegion, unsafe.Pointer(&region)); err != nil {
		return vm, fmt.Errorf("kvmtest: KVM_SET_USER_MEMORY_REGION of %d bytes: %w", len(mem), err)
	}
	vcpu, err := ioctl(vm.vm, ioctlCreateVCPU, 0)
	if err != nil {
		return vm, fmt.Errorf("kvmtest: KVM_CREATE_VCPU: %w", err)
	}
	vm.vcpu = int(vcpu)
	size, err := ioctl(vm.kvm, ioctlGetVCPUMmapSize, 0)
	if err != nil {
		return vm, fmt.Errorf("kvmtest: KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	if vm.run, err = unix.Mmap(vm.vcpu, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		return vm, fmt.Errorf("kvmtest: mmap kvm_run of %d bytes: %w", size, err)
	}
	if err := vm.setFlat32(); err != nil {
		return vm, err
	}
	return vm, nil
}

// setFlat32 puts the vCPU in 32-bit protected mode with flat 4 GiB code and
// data segments and no paging, so guest virtual = guest physical across the
// whole memory slot. The segments' hidden parts are set directly, which is
// what a GDT load would produce, so no GDT needs to exist in guest memory
// and the guest touches no page but its code and its data.
func (vm *VM) setFlat32() error {
	var s sregs
	if _, err := ioctlPtr(vm.vcpu, ioctlGetSregs, unsafe.Pointer(&s)); err != nil {
		return fmt.Errorf("kvmtest: KVM_GET_SREGS: %w", err)
	}
	flat := segment{
		base:    0,
		limit:   0xffffffff, // with g=1, the whole 4 GiB
		present: 1,
		s:       1, // code or data, not a system segment
		db:      1, // 32-bit
		g:       1, // limit in pages (KVM takes the byte limit)
	}
	code, data := flat, flat
	code.selector, code.typ = 1<<3, 0xb // GDT entry 1: execute/read, accessed
	data.selector, data.typ = 2<<3, 0x3 // GDT entry 2: read/write, accessed
	s.cs = code
	s.ds, s.es, s.fs, s.gs, s.ss = data, data, data, data, data
	s.cr0 |= 1 // CR0.PE; CR0.PG stays clear: no paging
	if _, err := ioctlPtr(vm.vcpu, ioctlSetSregs, unsafe.Pointer(&s)); err != nil {
		return fmt.Errorf("kvmtest: KVM_SET_SREGS: %w", err)
	}
	return nil
}

// Close releases the vCPU and the VM. The guest memory stays the caller's.
func (vm *VM) Close() error {
	var errs []error
	if vm.run != nil {
		errs = append(errs, unix.Munmap(vm.run))
		vm.run = nil
	}
	for _, fd := range []*int{&vm.vcpu, &vm.vm, &vm.kvm} {
		if *fd >= 0 {
			errs = append(errs, unix.Close(*fd))
			*fd = -1
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("kvmtest: close: %w", err)
	}
	return nil
}

// Run starts the guest at entry (a guest physical address) with the given
// registers, interrupts disabled, and runs it until it executes HLT. It
// returns the port outputs in order, then the HLT. An input from a port, an
// MMIO access, a triple fault or a failed entry stop the run with an error
// that says where the guest was.
//
// A vCPU blocked on a page that is never filled would block Run forever, as
// it does a VMM whose page-fault handler died. When ctx ends, Run signals
// the vCPU's thread and returns ctx's error at the next return from
// KVM_RUN. Hardware-virtualised KVM waits for the page interruptibly and
// returns EINTR at once; PVM's emulator retries the access in the kernel
// until the page arrives (see TestRunCancelsBlockedGuest). Run may be
// called again after HLT.
func (vm *VM) Run(ctx context.Context, entry uint64, r Regs) ([]Exit, error) {
	// KVM_RUN is cheapest from one thread (KVM tracks the vCPU's task), and
	// the watchdog below needs to know which thread to signal.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	kr := regs{
		rax: r.RAX, rbx: r.RBX, rcx: r.RCX, rdx: r.RDX,
		rsi: r.RSI, rdi: r.RDI, rsp: r.RSP, rbp: r.RBP,
		rip:    entry,
		rflags: 1 << 1, // bit 1 is reserved and always set; IF is clear
	}
	if _, err := ioctlPtr(vm.vcpu, ioctlSetRegs, unsafe.Pointer(&kr)); err != nil {
		return nil, fmt.Errorf("kvmtest: KVM_SET_REGS: %w", err)
	}

	stop := make(chan struct{})
	var watchdog sync.WaitGroup
	defer watchdog.Wait()
	defer close(stop)
	tid := unix.Gettid()
	watchdog.Go(func() { interruptWhenDone(ctx, stop, tid) })

	var exits []Exit
	for {
		if err := ctx.Err(); err != nil {
			return exits, fmt.Errorf("kvmtest: vCPU stopped%s: %w", vm.where(), err)
		}
		_, err := ioctl(vm.vcpu, ioctlRun, 0)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			// A signal (the Go runtime's, or the watchdog's): the guest
			// resumes where it was unless ctx is done.
			continue
		}
		reason := binary.NativeEndian.Uint32(vm.run[runExitReason:])
		if err != nil {
			return exits, fmt.Errorf("kvmtest: KVM_RUN: %w (exit %s%s)", err, ExitName(reason), vm.memoryFault(reason))
		}
		switch reason {
		case ExitIO:
			e, err := vm.ioExit()
			if err != nil {
				return exits, err
			}
			exits = append(exits, e)
		case ExitHLT:
			return append(exits, Exit{Reason: ExitHLT}), nil
		case ExitIntr:
			continue
		case ExitFailEntry:
			return exits, fmt.Errorf("kvmtest: KVM_EXIT_FAIL_ENTRY: hardware reason %#x%s",
				binary.NativeEndian.Uint64(vm.run[runUnion:]), vm.where())
		case ExitInternalError:
			return exits, fmt.Errorf("kvmtest: KVM_EXIT_INTERNAL_ERROR: suberror %d%s",
				binary.NativeEndian.Uint32(vm.run[runUnion:]), vm.where())
		case ExitShutdown:
			return exits, fmt.Errorf("kvmtest: KVM_EXIT_SHUTDOWN (triple fault)%s", vm.where())
		default:
			return exits, fmt.Errorf("kvmtest: unexpected KVM_EXIT_%s%s", ExitName(reason), vm.where())
		}
		if len(exits) >= maxExits {
			return exits, fmt.Errorf("kvmtest: %d exits without HLT%s", len(exits), vm.where())
		}
	}
}

// interruptWhenDone signals thread tid while ctx is done and stop is not
// closed, which makes a KVM_RUN in progress return EINTR. It repeats the
// signal because one that arrives just before the thread enters KVM_RUN is
// consumed in user space. SIGURG is the signal the Go runtime itself uses
// to preempt threads, so its handler ignores an unexpected one.
func interruptWhenDone(ctx context.Context, stop <-chan struct{}, tid int) {
	select {
	case <-stop:
		return
	case <-ctx.Done():
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		// The thread cannot have exited: Run is still running on it.
		unix.Tgkill(unix.Getpid(), tid, unix.SIGURG)
		select {
		case <-stop:
			return
		case <-tick.C:
		}
	}
}

// ioExit decodes a KVM_EXIT_IO. Only output is expected: this VMM has no
// device to answer an input.
func (vm *VM) ioExit() (Exit, error) {
	run := vm.run
	ne := binary.NativeEndian
	size, count := int(run[runIOSize]), int(ne.Uint32(run[runIOCount:]))
	port := ne.Uint16(run[runIOPort:])
	if run[runIODirection] != ioDirectionOut {
		return Exit{}, fmt.Errorf("kvmtest: input from port %#x: no device here%s", port, vm.where())
	}
	off := int(ne.Uint64(run[runIODataOffset:]))
	n := size * count
	if off < 0 || n < 0 || off+n > len(run) {
		return Exit{}, fmt.Errorf("kvmtest: output of %d×%d bytes at offset %d: outside kvm_run", size, count, off)
	}
	return Exit{Reason: ExitIO, Port: port, Data: append([]byte(nil), run[off:off+n]...)}, nil
}

// where describes the vCPU's position for an error message, as best it can.
func (vm *VM) where() string {
	var r regs
	if _, err := ioctlPtr(vm.vcpu, ioctlGetRegs, unsafe.Pointer(&r)); err != nil {
		return ""
	}
	return fmt.Sprintf(" at rip %#x (rax %#x rsi %#x rdi %#x)", r.rip, r.rax, r.rsi, r.rdi)
}

// memoryFault describes a KVM_EXIT_MEMORY_FAULT, which recent kernels
// report with some EFAULTs from KVM_RUN: the guest physical range KVM
// could not map.
func (vm *VM) memoryFault(reason uint32) string {
	if reason != ExitMemoryFault {
		return ""
	}
	ne := binary.NativeEndian
	// struct { u64 flags; u64 gpa; u64 size; } memory_fault.
	return fmt.Sprintf(": gpa %#x size %#x flags %#x",
		ne.Uint64(vm.run[runUnion+8:]), ne.Uint64(vm.run[runUnion+16:]), ne.Uint64(vm.run[runUnion:]))
}

// ioctl issues an ioctl whose argument is a number.
func ioctl(fd int, req, arg uintptr) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if errno != 0 {
		return r, errno
	}
	return r, nil
}

// ioctlPtr issues an ioctl whose argument points to a structure. The
// conversion to uintptr inside the call expression keeps the structure
// alive and in place for the system call's duration.
func ioctlPtr(fd int, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if errno != 0 {
		return r, errno
	}
	return r, nil
}
