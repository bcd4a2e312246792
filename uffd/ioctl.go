//go:build linux

package uffd

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// uffdAPI is UFFD_API, the only version of the protocol.
const uffdAPI = 0xAA

// The structures of include/uapi/linux/userfaultfd.h. Every field is 64 bits,
// so Go lays them out exactly as C does on every 64-bit architecture.
type (
	uffdioAPI struct {
		api      uint64
		features uint64
		ioctls   uint64
	}
	uffdioRange struct {
		start uint64
		len   uint64
	}
	uffdioRegister struct {
		rng    uffdioRange
		mode   uint64
		ioctls uint64
	}
	uffdioCopy struct {
		dst  uint64
		src  uint64
		len  uint64
		mode uint64
		copy int64 // bytes copied, or -errno
	}
	// uffdioFill is struct uffdio_zeropage, uffdio_continue and
	// uffdio_poison, which differ only in the name of their last field
	// (zeropage, mapped, updated).
	uffdioFill struct {
		rng    uffdioRange
		mode   uint64
		result int64 // bytes done, or -errno
	}
	uffdioWriteprotect struct {
		rng  uffdioRange
		mode uint64
	}
)

// Ioctl numbers within the 0xAA type (_UFFDIO_*).
const (
	nrRegister     = 0x00
	nrUnregister   = 0x01
	nrWake         = 0x02
	nrCopy         = 0x03
	nrZeropage     = 0x04
	nrMove         = 0x05
	nrWriteProtect = 0x06
	nrContinue     = 0x07
	nrPoison       = 0x08
	nrAPI          = 0x3F
)

// The generic _IOC encoding of include/uapi/asm-generic/ioctl.h, used by
// x86 and arm64 alike: direction in bits 30-31, size in 16-29, type in 8-15
// and number in 0-7.
const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2
)

func ioc(dir, typ, nr, size uintptr) uintptr {
	return dir<<30 | size<<16 | typ<<8 | nr
}

func ior(nr, size uintptr) uintptr  { return ioc(iocRead, uffdAPI, nr, size) }
func iowr(nr, size uintptr) uintptr { return ioc(iocRead|iocWrite, uffdAPI, nr, size) }

var (
	ioctlAPI          = iowr(nrAPI, unsafe.Sizeof(uffdioAPI{}))
	ioctlRegister     = iowr(nrRegister, unsafe.Sizeof(uffdioRegister{}))
	ioctlUnregister   = ior(nrUnregister, unsafe.Sizeof(uffdioRange{}))
	ioctlWake         = ior(nrWake, unsafe.Sizeof(uffdioRange{}))
	ioctlCopy         = iowr(nrCopy, unsafe.Sizeof(uffdioCopy{}))
	ioctlZeropage     = iowr(nrZeropage, unsafe.Sizeof(uffdioFill{}))
	ioctlWriteProtect = iowr(nrWriteProtect, unsafe.Sizeof(uffdioWriteprotect{}))
	ioctlContinue     = iowr(nrContinue, unsafe.Sizeof(uffdioFill{}))
	ioctlPoison       = iowr(nrPoison, unsafe.Sizeof(uffdioFill{}))

	// ioctlNew is USERFAULTFD_IOC_NEW, _IO(0xAA, 0x00) on /dev/userfaultfd.
	ioctlNew = ioc(iocNone, uffdAPI, 0x00, 0)
)

// ioctl issues one ioctl(2). The pointer is converted to uintptr inside the
// call expression of unix.Syscall, which is what keeps the structure it
// points to alive and in place until the system call returns.
func ioctl(fd int, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if errno != 0 {
		return r, errno
	}
	return r, nil
}
