// Package uffd is a binding of userfaultfd(2) (fs/userfaultfd.c,
// include/uapi/linux/userfaultfd.h), the kernel's channel for handing page
// faults to user space.
//
// A userfaultfd is created by the process whose memory will fault (New), or
// adopted from another process over a Unix socket (FromFd). After the API
// handshake (UFFD.API) a range of the creator's address space is registered
// (UFFD.Register); from then on a fault there puts the faulting thread to
// sleep and queues a message (Msg) on the descriptor. The handler reads the
// messages (UFFD.Read, UFFD.Drain, UFFD.Poll) and resolves each fault with
// one of the filling ioctls: UFFD.Copy, UFFD.ZeroPage, UFFD.Continue,
// UFFD.Poison, or UFFD.Wake after populating a shared memory file itself.
// Every ioctl acts on the memory of the process that created the
// descriptor, whoever calls it.
//
// A process must not serve its own faults: a goroutine blocked in a page
// fault keeps its thread and its P, and cannot be preempted inside the
// runtime, so an in-process handler can hang. Serve from another process.
//
// The package is Linux-only. Errors name the ioctl and the address range and
// wrap the errno, so errors.Is(err, unix.EEXIST) and friends work.
package uffd
