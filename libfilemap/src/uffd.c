/*
 * userfaultfd(2) for the library's mappings. The library never reads its
 * userfaultfds: the handler does, from a copy. It only makes them, asks
 * for the events the handler follows, and registers and unregisters
 * ranges.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

#ifndef USERFAULTFD_IOC_NEW /* headers older than Linux 6.1 */
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

/* Not UFFD_USER_MODE_ONLY: the kernel's own accesses to a mapping, such as
 * filemap_read_at's process_vm_readv, must fault to the handler too. */
static const int uffd_flags = O_CLOEXEC | O_NONBLOCK;

/* new_uffd makes a userfaultfd with the system call, or, where the caller
 * may not (no CAP_SYS_PTRACE and vm.unprivileged_userfaultfd 0), through
 * /dev/userfaultfd, whose permissions then decide. */
static int new_uffd(void)
{
	int fd = (int)syscall(SYS_userfaultfd, uffd_flags);
	if (fd >= 0 || errno != EPERM)
		return fd;
	int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev < 0) {
		errno = EPERM;
		return -1;
	}
	fd = ioctl(dev, USERFAULTFD_IOC_NEW, uffd_flags);
	int err = errno;
	close(dev);
	errno = err;
	return fd;
}

/* The events the handler follows besides FORK. REMAP, because without it
 * the kernel unregisters a mapping mremap(2) moves, whose pages would
 * then read the cache's holes as zeros. UNMAP, so that it forgets what the
 * program unmaps. Not REMOVE, which it ignores: each event holds up the
 * process that raised it (a MADV_DONTNEED here) until the handler reads
 * it. */
static const uint64_t events = UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_UNMAP;

int fm_uffd_open(struct fm_uffd *u)
{
	/* FORK first: the kernel grants it only with CAP_SYS_PTRACE. A
	 * refused UFFDIO_API leaves a userfaultfd unusable: take a new one. */
	for (int fork = 1; fork >= 0; fork--) {
		int fd = new_uffd();
		if (fd < 0)
			return fm_fail(errno, -1,
				       "userfaultfd: %s (it needs root, CAP_SYS_PTRACE, read-write access to "
				       "/dev/userfaultfd, or sysctl vm.unprivileged_userfaultfd=1)",
				       strerror(errno));
		uint64_t want = events | (fork ? UFFD_FEATURE_EVENT_FORK : 0);
		struct uffdio_api api = {.api = UFFD_API, .features = want};
		if (ioctl(fd, UFFDIO_API, &api) == 0) {
			/* The grant is the request; the kernel answers with all it has. */
			u->fd = fd;
			u->features = want;
			u->fork = fork;
			return 0;
		}
		int err = errno;
		close(fd);
		if (!fork || err != EPERM)
			return fm_fail(err, -1, "UFFDIO_API: %s", strerror(err));
	}
	return -1; /* not reached */
}

int fm_uffd_register(int fd, void *addr, size_t len)
{
	struct uffdio_register reg = {
		.range = {.start = (uintptr_t)addr, .len = len},
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};
	if (ioctl(fd, UFFDIO_REGISTER, &reg) < 0)
		return fm_fail(errno, -1, "UFFDIO_REGISTER [%p, +%zu): %s", addr, len, strerror(errno));
	return 0;
}

int fm_uffd_unregister(int fd, void *addr, size_t len)
{
	struct uffdio_range r = {.start = (uintptr_t)addr, .len = len};
	if (ioctl(fd, UFFDIO_UNREGISTER, &r) < 0)
		return fm_fail(errno, -1, "UFFDIO_UNREGISTER [%p, +%zu): %s", addr, len, strerror(errno));
	return 0;
}
