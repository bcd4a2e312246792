//go:build linux

package uffd

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// UFFD is one userfaultfd file descriptor.
//
// Its methods may be called from several goroutines at once, except Close,
// which must not race with the others: like any raw descriptor, a closed fd
// number can be reused by the next open.
type UFFD struct {
	fd       atomic.Int64 // -1 once closed
	features atomic.Uint64
}

// New creates a userfaultfd for the calling process's memory with
// userfaultfd(2). flags is a combination of unix.O_CLOEXEC, unix.O_NONBLOCK
// and UserModeOnly; a handler that uses Read and Drain wants O_NONBLOCK.
//
// Where the system call is refused (EPERM: vm.unprivileged_userfaultfd is 0
// and the caller lacks CAP_SYS_PTRACE; ENOSYS: filtered by seccomp), New
// falls back to /dev/userfaultfd (Linux 6.1), whose access is governed by
// file permissions instead. The error of a double failure names both and,
// where rights are what is missing, the ways to grant them.
//
// The descriptor still needs its API handshake (UFFD.API) before use.
func New(flags int) (*UFFD, error) {
	fd, err := newSyscall(flags)
	if err == nil {
		return FromFd(fd), nil
	}
	if !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.ENOSYS) {
		return nil, fmt.Errorf("uffd: userfaultfd(%#x): %w", flags, err)
	}
	u, devErr := newFromDevice(flags)
	if devErr != nil {
		return nil, creationError(flags, err, devErr)
	}
	return u, nil
}

// creationError is the error of a userfaultfd that neither the system call
// nor the device would make. Where both refusals are a matter of rights it
// names the ways to grant them, since the one who reads it is the one who
// must choose.
func creationError(flags int, sysErr, devErr error) error {
	err := fmt.Errorf("uffd: userfaultfd(%#x): %w; fallback: %w", flags, sysErr, devErr)
	if hint := grantHint(sysErr, devErr); hint != "" {
		return fmt.Errorf("%w: %s", err, hint)
	}
	return err
}

// ptraceCaveat warns that CAP_SYS_PTRACE grants far more than userfaultfd:
// pidfd_getfd(2) on any process, a filemap daemon with every user's cache
// files among them.
const ptraceCaveat = "CAP_SYS_PTRACE, which also lets it take the descriptors of other processes (a filemap daemon's, every user's cached data)"

// grantHint says how this process could be allowed a userfaultfd, given why
// the system call (sysErr) and /dev/userfaultfd (devErr) refused it; "" if
// the refusals are not about rights.
func grantHint(sysErr, devErr error) string {
	switch {
	case errors.Is(sysErr, unix.ENOSYS) && errors.Is(devErr, fs.ErrPermission):
		// A seccomp filter refuses the system call whatever the rights.
		return "this process may not use userfaultfd (the system call is filtered): give its user read-write access to " + devicePath
	case errors.Is(sysErr, unix.EPERM) && errors.Is(devErr, fs.ErrPermission):
		return "this process may not use userfaultfd: give its user read-write access to " + devicePath +
			" (the way to prefer), or set sysctl vm.unprivileged_userfaultfd=1, or give it " + ptraceCaveat
	case errors.Is(sysErr, unix.EPERM) && errors.Is(devErr, fs.ErrNotExist):
		return "this process may not use userfaultfd and this system has no " + devicePath +
			" (Linux 6.1): set sysctl vm.unprivileged_userfaultfd=1, or give it " + ptraceCaveat
	}
	return ""
}

func newSyscall(flags int) (int, error) {
	fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, uintptr(flags), 0, 0)
	if errno != 0 {
		return -1, errno
	}
	return int(fd), nil
}

// devicePath is the misc device of Linux 6.1 that hands out userfaultfds to
// whoever may open it.
const devicePath = "/dev/userfaultfd"

// newFromDevice creates a userfaultfd with USERFAULTFD_IOC_NEW on
// /dev/userfaultfd. flags mean the same as for New.
func newFromDevice(flags int) (*UFFD, error) {
	dev, err := unix.Open(devicePath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", devicePath, err)
	}
	defer unix.Close(dev)
	fd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(dev), ioctlNew, uintptr(flags))
	if errno != 0 {
		return nil, fmt.Errorf("%s: USERFAULTFD_IOC_NEW(%#x): %w", devicePath, flags, errno)
	}
	return FromFd(int(fd)), nil
}

// FromFd adopts fd, typically a userfaultfd received from the process it
// serves over a Unix socket (SCM_RIGHTS). It issues no system call. Features
// reports 0 until SetFeatures is called, because the handshake happened
// elsewhere; the file status flags (O_NONBLOCK) are those the creator chose.
func FromFd(fd int) *UFFD {
	u := new(UFFD)
	u.fd.Store(int64(fd))
	return u
}

// Fd returns the file descriptor, or -1 after Close.
func (u *UFFD) Fd() int { return int(u.fd.Load()) }

// Features returns the features granted by the API handshake.
func (u *UFFD) Features() uint64 { return u.features.Load() }

// SetFeatures records the features of an adopted descriptor whose handshake
// happened in another process, for code that consults Features.
func (u *UFFD) SetFeatures(f uint64) { u.features.Store(f) }

// Close closes the descriptor. Closing it again is a no-op.
//
// When the last reference to a userfaultfd goes away, the kernel wakes every
// blocked faulter and lets it fault in a zero page: the process that
// created the descriptor should keep its own copy so that a dead handler
// means a stall, not silent zeros.
func (u *UFFD) Close() error {
	fd := u.fd.Swap(-1)
	if fd < 0 {
		return nil
	}
	if err := unix.Close(int(fd)); err != nil {
		return fmt.Errorf("uffd: close: %w", err)
	}
	return nil
}

// Supported reports the features and the ioctls the running kernel offers.
// It asks on a throwaway descriptor, because the handshake can be done only
// once per descriptor, and caches nothing.
func Supported() (features, ioctls uint64, err error) {
	// UserModeOnly lets the probe succeed even for unprivileged callers;
	// kernels before 5.11 reject the flag, so retry without it.
	u, err := New(unix.O_CLOEXEC | UserModeOnly)
	if err != nil {
		if u, err = New(unix.O_CLOEXEC); err != nil {
			return 0, 0, err
		}
	}
	defer u.Close()
	api := uffdioAPI{api: uffdAPI}
	if _, err := ioctl(u.Fd(), ioctlAPI, unsafe.Pointer(&api)); err != nil {
		return 0, 0, fmt.Errorf("uffd: UFFDIO_API probe: %w", err)
	}
	return api.features, api.ioctls, nil
}

// API performs the handshake (UFFDIO_API) and negotiates features: it asks
// for every feature in need, and for those in want that this kernel has. It
// fails, naming them, if some of need are unavailable. It returns the
// features granted, which Features reports from then on. Missing features
// make an error that wraps errors.ErrUnsupported.
//
// The handshake can be done only once per descriptor; the kernel refuses a
// second one with EINVAL.
func (u *UFFD) API(want, need uint64) (got uint64, err error) {
	supported, _, err := Supported()
	if err != nil {
		return 0, err
	}
	if missing := need &^ supported; missing != 0 {
		return 0, fmt.Errorf("uffd: UFFDIO_API: kernel lacks features %s: %w", FeatureNames(missing), errors.ErrUnsupported)
	}
	got = want&supported | need
	// The kernel answers with everything it supports, not with what it
	// granted: the grant is exactly the request, or an error.
	api := uffdioAPI{api: uffdAPI, features: got}
	if _, err := ioctl(u.Fd(), ioctlAPI, unsafe.Pointer(&api)); err != nil {
		return 0, fmt.Errorf("uffd: UFFDIO_API %s: %w", FeatureNames(got), err)
	}
	u.features.Store(got)
	return got, nil
}

// Register starts trapping faults of the given modes (ModeMissing, ModeWP,
// ModeMinor) in [start, start+length), which must be page-aligned and made
// of anonymous, shmem or hugetlbfs mappings. It returns the ioctls usable on
// the range (Ioctl* bits): a range without IoctlZeropage is hugetlbfs, one
// without IoctlContinue was not registered for MINOR faults.
func (u *UFFD) Register(start, length uintptr, mode uint64) (ioctls uint64, err error) {
	reg := uffdioRegister{rng: uffdioRange{uint64(start), uint64(length)}, mode: mode}
	if _, err := ioctl(u.Fd(), ioctlRegister, unsafe.Pointer(&reg)); err != nil {
		return 0, fmt.Errorf("uffd: UFFDIO_REGISTER [%#x, %#x) mode %#x: %w", start, start+length, mode, err)
	}
	return reg.ioctls, nil
}

// Unregister stops trapping faults in [start, start+length) and wakes the
// threads blocked there, which then fault like in any other mapping.
func (u *UFFD) Unregister(start, length uintptr) error {
	rng := uffdioRange{uint64(start), uint64(length)}
	if _, err := ioctl(u.Fd(), ioctlUnregister, unsafe.Pointer(&rng)); err != nil {
		return fmt.Errorf("uffd: UFFDIO_UNREGISTER [%#x, %#x): %w", start, start+length, err)
	}
	return nil
}

// Wake wakes the threads blocked on faults in [start, start+length) without
// installing anything: they retry the access, and fault again if the page is
// still absent. It is how a fault is resolved after the handler wrote the
// page into a shared memory file itself, and it also withdraws the unread
// messages of that range, so one message may stand for several faulters.
func (u *UFFD) Wake(start, length uintptr) error {
	rng := uffdioRange{uint64(start), uint64(length)}
	if _, err := ioctl(u.Fd(), ioctlWake, unsafe.Pointer(&rng)); err != nil {
		return fmt.Errorf("uffd: UFFDIO_WAKE [%#x, %#x): %w", start, start+length, err)
	}
	return nil
}

// WriteProtect sets (mode has WriteProtectModeWP) or clears the write
// protection of [start, start+length), registered with ModeWP. Clearing it
// wakes the blocked writers unless mode has WriteProtectModeDontWake.
func (u *UFFD) WriteProtect(start, length uintptr, mode uint64) error {
	wp := uffdioWriteprotect{rng: uffdioRange{uint64(start), uint64(length)}, mode: mode}
	if _, err := ioctl(u.Fd(), ioctlWriteProtect, unsafe.Pointer(&wp)); err != nil {
		return fmt.Errorf("uffd: UFFDIO_WRITEPROTECT [%#x, %#x) mode %#x: %w", start, start+length, mode, err)
	}
	return nil
}

// Alive reports whether the address space the descriptor serves still
// exists: the process that made it (or, for the descriptor of a FORK
// event, the child) has not exited or exec'd. The kernel sends no event
// when it goes; the ioctls that act on it fail with ESRCH from then on
// (mmget_not_zero), whatever their range. Alive asks with UFFDIO_CONTINUE
// of the page at addr, mode DONTWAKE, the one such ioctl that changes no
// byte of any memory: for a page in the page cache of a shmem or
// hugetlbfs mapping registered with some userfaultfd it maps that page, as
// the process's own next access to it would; in any other case it fails
// (a hole, anonymous memory, an unregistered range, no mapping at all).
// Only ESRCH means gone.
func (u *UFFD) Alive(addr uintptr) bool {
	pg := pageSize()
	_, err := u.Continue(addr&^(pg-1), pg, ContinueModeDontWake)
	return !errors.Is(err, unix.ESRCH)
}

// pageSize is the base page size, the unit of every range.
func pageSize() uintptr { return uintptr(os.Getpagesize()) }
