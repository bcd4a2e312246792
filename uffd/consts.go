//go:build linux

package uffd

import (
	"math/bits"
	"strconv"
	"strings"
)

// Feature bits negotiated by UFFDIO_API (UFFD_FEATURE_*).
const (
	FeaturePagefaultFlagWP  uint64 = 1 << 0  // write-protect faults on anon memory
	FeatureEventFork        uint64 = 1 << 1  // EventFork; needs CAP_SYS_PTRACE
	FeatureEventRemap       uint64 = 1 << 2  // EventRemap on mremap
	FeatureEventRemove      uint64 = 1 << 3  // EventRemove on MADV_DONTNEED/MADV_REMOVE
	FeatureMissingHugetlbfs uint64 = 1 << 4  // MISSING on hugetlbfs
	FeatureMissingShmem     uint64 = 1 << 5  // MISSING on shmem/memfd
	FeatureEventUnmap       uint64 = 1 << 6  // EventUnmap on munmap
	FeatureSigbus           uint64 = 1 << 7  // SIGBUS instead of a message
	FeatureThreadID         uint64 = 1 << 8  // Msg.PTID is filled in
	FeatureMinorHugetlbfs   uint64 = 1 << 9  // MINOR on hugetlbfs
	FeatureMinorShmem       uint64 = 1 << 10 // MINOR on shmem
	FeatureExactAddress     uint64 = 1 << 11 // Msg.Address is not page-masked
	FeatureWPHugetlbfsShmem uint64 = 1 << 12 // write-protect on hugetlbfs and shmem
	FeatureWPUnpopulated    uint64 = 1 << 13 // write-protect unpopulated anon PTEs
	FeaturePoison           uint64 = 1 << 14 // UFFDIO_POISON (6.6)
	FeatureWPAsync          uint64 = 1 << 15 // write-protect faults resolved by the kernel
	FeatureMove             uint64 = 1 << 16 // UFFDIO_MOVE (6.8)
)

// featureNames is indexed by bit number; the names are the kernel's, without
// the UFFD_FEATURE_ prefix, so they can be grepped for in the headers.
var featureNames = [...]string{
	"PAGEFAULT_FLAG_WP",
	"EVENT_FORK",
	"EVENT_REMAP",
	"EVENT_REMOVE",
	"MISSING_HUGETLBFS",
	"MISSING_SHMEM",
	"EVENT_UNMAP",
	"SIGBUS",
	"THREAD_ID",
	"MINOR_HUGETLBFS",
	"MINOR_SHMEM",
	"EXACT_ADDRESS",
	"WP_HUGETLBFS_SHMEM",
	"WP_UNPOPULATED",
	"POISON",
	"WP_ASYNC",
	"MOVE",
}

// FeatureNames spells a feature mask the way the kernel headers do, lowest
// bit first, e.g. "EVENT_FORK|POISON". Bits this package has no name for are
// printed together as one hex number at the end. A zero mask is "0".
func FeatureNames(f uint64) string {
	if f == 0 {
		return "0"
	}
	var parts []string
	for rest := f; rest != 0; rest &= rest - 1 {
		bit := bits.TrailingZeros64(rest)
		if bit < len(featureNames) {
			parts = append(parts, featureNames[bit])
		}
	}
	if unknown := f &^ (1<<len(featureNames) - 1); unknown != 0 {
		parts = append(parts, "0x"+strconv.FormatUint(unknown, 16))
	}
	return strings.Join(parts, "|")
}

// Registration modes (UFFDIO_REGISTER_MODE_*). They can be combined:
// ModeMissing|ModeMinor traps both holes and unmapped page-cache pages.
const (
	ModeMissing uint64 = 1 << 0 // fault on pages that are not there
	ModeWP      uint64 = 1 << 1 // fault on writes to write-protected pages
	ModeMinor   uint64 = 1 << 2 // fault on pages in the page cache but not mapped
)

// Modes of the filling ioctls.
const (
	CopyModeDontWake     uint64 = 1 << 0 // UFFDIO_COPY_MODE_DONTWAKE: install only, Wake later
	CopyModeWP           uint64 = 1 << 1 // UFFDIO_COPY_MODE_WP: install write-protected
	ZeropageModeDontWake uint64 = 1 << 0 // UFFDIO_ZEROPAGE_MODE_DONTWAKE
	ContinueModeDontWake uint64 = 1 << 0 // UFFDIO_CONTINUE_MODE_DONTWAKE
	ContinueModeWP       uint64 = 1 << 1 // UFFDIO_CONTINUE_MODE_WP
	PoisonModeDontWake   uint64 = 1 << 0 // UFFDIO_POISON_MODE_DONTWAKE

	WriteProtectModeWP       uint64 = 1 << 0 // UFFDIO_WRITEPROTECT_MODE_WP: protect; clear to unprotect
	WriteProtectModeDontWake uint64 = 1 << 1 // UFFDIO_WRITEPROTECT_MODE_DONTWAKE
)

// Ioctl bits, as reported by UFFD.Register and Supported: bit n set means
// the ioctl with number n is available (1 << _UFFDIO_*).
const (
	IoctlRegister     uint64 = 1 << nrRegister
	IoctlUnregister   uint64 = 1 << nrUnregister
	IoctlWake         uint64 = 1 << nrWake
	IoctlCopy         uint64 = 1 << nrCopy
	IoctlZeropage     uint64 = 1 << nrZeropage
	IoctlMove         uint64 = 1 << nrMove
	IoctlWriteProtect uint64 = 1 << nrWriteProtect
	IoctlContinue     uint64 = 1 << nrContinue
	IoctlPoison       uint64 = 1 << nrPoison
	IoctlAPI          uint64 = 1 << nrAPI
)

// Event types (UFFD_EVENT_*), the first byte of every message.
const (
	EventPagefault = 0x12
	EventFork      = 0x13
	EventRemap     = 0x14
	EventRemove    = 0x15
	EventUnmap     = 0x16
)

// Flags of a pagefault message (UFFD_PAGEFAULT_FLAG_*).
const (
	PagefaultFlagWrite uint64 = 1 << 0 // the access was a write
	PagefaultFlagWP    uint64 = 1 << 1 // a write-protect fault
	PagefaultFlagMinor uint64 = 1 << 2 // a minor fault (page is in the page cache)
)

// UserModeOnly is a flag for New (UFFD_USER_MODE_ONLY): only faults from
// user mode are reported; the kernel's own accesses to the range, such as a
// write(2) from it, fail with EFAULT instead. It lets unprivileged processes
// use userfaultfd(2) when vm.unprivileged_userfaultfd is 0.
const UserModeOnly = 1

// MsgSize is sizeof(struct uffd_msg): the unit of every read(2).
const MsgSize = 32
