//go:build linux

package uffd

import (
	"errors"
	"fmt"
	"io"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Copy resolves missing faults in [dst, dst+length) by copying the same
// number of bytes from src, an address in the calling process, into the
// registered memory (UFFDIO_COPY). For shmem it inserts the pages into the
// shared page cache, where every mapper and pread(2) sees them. dst and
// length must be page-aligned. Each page is installed atomically, and the
// faulters in the installed range are woken unless mode has
// CopyModeDontWake.
//
// src is a plain address, so nothing keeps its memory alive: the caller must
// hold a reference to the buffer until Copy returns, e.g.
//
//	n, err := u.Copy(dst, uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), 0)
//	runtime.KeepAlive(buf)
//
// The buffer must also stay in place: heap memory (a slice from make that
// outlives the call) or memory from mmap(2), never the address of a local
// variable, which moves when its goroutine's stack grows.
//
// Copy installs many pages with one call where it can, and otherwise loops:
//   - after partial progress (the kernel stops early and reports how far it
//     got) it resumes where the kernel stopped;
//   - when the page at the cursor is already present (EEXIST), it wakes the
//     faulters of that page, because the kernel does not, and skips it. The
//     skip unit is the base page size; for a hugetlbfs range, use CopyHuge.
//     With CopyModeDontWake it does not wake: the caller's Wake will.
//
// It returns the number of bytes installed or found present, which is
// length when err is nil. An EAGAIN without progress means a non-cooperative
// event (fork, mremap, munmap, madvise) is unread: Copy returns the bytes
// done so far and an error wrapping unix.EAGAIN, and the caller should Drain
// the events and retry from dst+done. Until the thread that raised the event
// has resumed, the retry may see EAGAIN again. Other errors are wrapped as
// they come: ESRCH (the target process is gone), ENOENT (the mapping changed
// or is not registered), EFAULT (dst beyond the end of a memfd, or src not
// readable), EINVAL (misaligned).
func (u *UFFD) Copy(dst, src, length uintptr, mode uint64) (done uintptr, err error) {
	return u.copyPages(dst, src, length, pageSize(), mode)
}

// CopyHuge is Copy for a hugetlbfs range whose pages are hugePageSize bytes:
// dst and length must be multiples of it, and an existing page at the cursor
// is skipped whole.
func (u *UFFD) CopyHuge(dst, src, length, hugePageSize uintptr, mode uint64) (done uintptr, err error) {
	if hugePageSize == 0 || hugePageSize&(hugePageSize-1) != 0 {
		return 0, fmt.Errorf("uffd: UFFDIO_COPY [%#x, %#x): huge page size %#x is not a power of two: %w",
			dst, dst+length, hugePageSize, unix.EINVAL)
	}
	return u.copyPages(dst, src, length, hugePageSize, mode)
}

func (u *UFFD) copyPages(dst, src, length, unit uintptr, mode uint64) (done uintptr, err error) {
	skipped := false // the last step skipped an existing page
	for done < length {
		cur := dst + done
		c := uffdioCopy{dst: uint64(cur), src: uint64(src + done), len: uint64(length - done), mode: mode}
		_, err := ioctl(u.Fd(), ioctlCopy, unsafe.Pointer(&c))
		if c.copy > 0 {
			// Whole range (err == nil) or partial progress (EAGAIN):
			// either way, carry on from where the kernel stopped.
			done += uintptr(c.copy)
			skipped = false
			continue
		}
		switch {
		case err == nil:
			return done, fmt.Errorf("uffd: UFFDIO_COPY [%#x, %#x): kernel reported %d bytes copied: %w",
				cur, dst+length, c.copy, io.ErrNoProgress)
		case errors.Is(err, unix.EEXIST):
			n := min(unit, length-done)
			if mode&CopyModeDontWake == 0 {
				if err := u.Wake(cur, n); err != nil {
					return done, err
				}
			}
			done += n
			skipped = true
		case errors.Is(err, unix.EINVAL) && skipped:
			// The start was aligned when we began, so only a skip can
			// have misaligned the cursor: a hugetlbfs page is larger
			// than the unit.
			return done, fmt.Errorf("uffd: UFFDIO_COPY [%#x, %#x): %w (after skipping an existing page of %#x bytes: hugetlbfs? use CopyHuge)",
				cur, dst+length, err, unit)
		default:
			return done, fmt.Errorf("uffd: UFFDIO_COPY [%#x, %#x): %w", cur, dst+length, err)
		}
	}
	return done, nil
}

// ZeroPage resolves missing faults in [start, start+length) with zeros
// (UFFDIO_ZEROPAGE): anonymous memory maps the shared zero page, shmem
// allocates zeroed pages in its page cache. hugetlbfs has no zero page.
// It resumes after partial progress and returns the bytes done; an existing
// page stops it with an error wrapping unix.EEXIST.
func (u *UFFD) ZeroPage(start, length uintptr, mode uint64) (uintptr, error) {
	return u.fillRange("UFFDIO_ZEROPAGE", ioctlZeropage, start, length, mode)
}

// Continue resolves minor faults in [start, start+length) of a range
// registered with ModeMinor (UFFDIO_CONTINUE): it maps the pages already in
// the page cache of the shmem or hugetlbfs file. A hole fails with EFAULT,
// an already mapped page with EEXIST. It resumes after partial progress and
// returns the bytes done.
func (u *UFFD) Continue(start, length uintptr, mode uint64) (uintptr, error) {
	return u.fillRange("UFFDIO_CONTINUE", ioctlContinue, start, length, mode)
}

// Poison marks [start, start+length) as poisoned (UFFDIO_POISON, Linux 6.6):
// the next access to it raises SIGBUS at the faulting address, which is how
// a handler reports that a page cannot be read. The page cache is left
// alone. A page already poisoned or present fails with EEXIST; a later Copy
// replaces the poison. It resumes after partial progress and returns the
// bytes done.
func (u *UFFD) Poison(start, length uintptr, mode uint64) (uintptr, error) {
	return u.fillRange("UFFDIO_POISON", ioctlPoison, start, length, mode)
}

// fillRange runs one of the ioctls that share struct uffdioFill until the
// range is done or one fails without progress.
func (u *UFFD) fillRange(name string, req, start, length uintptr, mode uint64) (done uintptr, err error) {
	for done < length {
		cur := start + done
		f := uffdioFill{rng: uffdioRange{uint64(cur), uint64(length - done)}, mode: mode}
		_, err := ioctl(u.Fd(), req, unsafe.Pointer(&f))
		if f.result > 0 {
			done += uintptr(f.result)
			continue
		}
		if err == nil {
			return done, fmt.Errorf("uffd: %s [%#x, %#x): kernel reported %d bytes done: %w",
				name, cur, start+length, f.result, io.ErrNoProgress)
		}
		return done, fmt.Errorf("uffd: %s [%#x, %#x): %w", name, cur, start+length, err)
	}
	return done, nil
}
