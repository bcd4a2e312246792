/*
 * The map family: mmap, mmap64, munmap, mremap, madvise, posix_madvise,
 * mprotect. A mapping of a stand-in descriptor is a filemap range
 * (maptable.c): MAP_PRIVATE, copy-on-write with PROT_WRITE; MAP_SHARED
 * read-only (EACCES with PROT_WRITE, as for a file opened read-only).
 * Calls on any other memory are libc's, after one check.
 */
#include <errno.h>
#include <stdarg.h>
#include <sys/mman.h>

#include "shim.h"

static void *do_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off,
		     void *(*realfn)(void *, size_t, int, int, int, off_t))
{
	struct shim_file *f = NULL;
	if (!shim_inlib && !(flags & MAP_ANONYMOUS) && fd >= 0)
		f = shim_get(fd);
	if (f == NULL) {
		void *p = realfn(addr, len, prot, flags, fd, off);
		if (p != MAP_FAILED && (flags & MAP_FIXED))
			shim_maps_replaced(p, len);
		return p;
	}
	void *p;
	if (off < 0) {
		errno = EINVAL;
		p = MAP_FAILED;
	} else {
		p = shim_mmap(f, addr, len, prot, flags, (uint64_t)off);
	}
	shim_put(f);
	return p;
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return do_mmap(addr, len, prot, flags, fd, off, REAL(mmap));
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off64_t off)
{
	return do_mmap(addr, len, prot, flags, fd, off, REAL(mmap64));
}

int munmap(void *addr, size_t len)
{
	int rc;
	if (shim_munmap(addr, len, &rc))
		return rc;
	return REAL(munmap)(addr, len);
}

void *mremap(void *old, size_t old_len, size_t new_len, int flags, ...)
{
	void *new_addr = NULL;
	if (flags & MREMAP_FIXED) {
		va_list ap;
		va_start(ap, flags);
		new_addr = va_arg(ap, void *);
		va_end(ap);
	}
	void *rc;
	if (shim_mremap(old, old_len, new_len, flags, new_addr, &rc))
		return rc;
	rc = REAL(mremap)(old, old_len, new_len, flags, new_addr);
	if (rc != MAP_FAILED && (flags & MREMAP_FIXED))
		shim_maps_replaced(rc, new_len);
	return rc;
}

int madvise(void *addr, size_t len, int advice)
{
	int rc;
	if (shim_madvise(addr, len, advice, &rc))
		return rc;
	return REAL(madvise)(addr, len, advice);
}

/* posix_madvise returns its error. POSIX_MADV_DONTNEED is a hint that
 * libc's takes as nothing (the kernel's MADV_DONTNEED would drop a private
 * mapping's writes): so is it here. */
int posix_madvise(void *addr, size_t len, int advice)
{
	if (advice == POSIX_MADV_DONTNEED)
		return REAL(posix_madvise)(addr, len, advice);
	int rc;
	if (shim_madvise(addr, len, advice, &rc))
		return rc < 0 ? errno : 0;
	return REAL(posix_madvise)(addr, len, advice);
}

int mprotect(void *addr, size_t len, int prot)
{
	int rc;
	if (shim_mprotect(addr, len, prot, &rc))
		return rc;
	return REAL(mprotect)(addr, len, prot);
}
