/*
 * Calls on descriptors: close, close_range, closefrom, dup, dup2, dup3,
 * fcntl, fcntl64, ioctl, flock, fsync, fdatasync, posix_fadvise,
 * posix_fadvise64, readahead. On a stand-in descriptor they answer as the
 * kernel does for a file opened read-only; on any other they are libc's.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "shim.h"

/* done drops the call's reference, keeping errno, and returns rc. */
static int done(struct shim_file *f, int rc)
{
	shim_put(f);
	return rc;
}

int close(int fd)
{
	if (shim_inlib || !shim_any())
		return REAL(close)(fd);
	return shim_close(fd);
}

/* put_all drops the files of descriptors the kernel has closed. */
static void put_all(struct shim_file **files, size_t n)
{
	for (size_t i = 0; i < n; i++)
		shim_put(files[i]);
	free(files);
}

int close_range(unsigned first, unsigned last, int flags)
{
	if (shim_inlib || !shim_any() || (flags & CLOSE_RANGE_CLOEXEC))
		return REAL(close_range)(first, last, flags);
	struct shim_file **files;
	size_t n;
	shim_forget_range(first, last, &files, &n);
	int rc = REAL(close_range)(first, last, flags);
	int saved = errno;
	put_all(files, n);
	errno = saved;
	return rc;
}

void closefrom(int lowfd)
{
	if (!shim_inlib && shim_any() && lowfd >= 0) {
		struct shim_file **files;
		size_t n;
		shim_forget_range((unsigned)lowfd, UINT_MAX, &files, &n);
		REAL(closefrom)(lowfd);
		put_all(files, n);
		return;
	}
	REAL(closefrom)(lowfd);
}

/* dup_involves says whether a dup must go through the table: its source
 * is filemap's, or its target, which it closes. */
static int dup_involves(int oldfd, int newfd)
{
	if (shim_inlib || !shim_any())
		return 0;
	struct shim_file *a = shim_get(oldfd), *b = newfd >= 0 ? shim_get(newfd) : NULL;
	int any = a != NULL || b != NULL;
	shim_put(a);
	shim_put(b);
	return any;
}

int dup(int fd)
{
	if (!dup_involves(fd, -1))
		return REAL(dup)(fd);
	return shim_dup_call(fd, -1, 0, SHIM_DUP);
}

int dup2(int oldfd, int newfd)
{
	if (!dup_involves(oldfd, newfd))
		return REAL(dup2)(oldfd, newfd);
	return shim_dup_call(oldfd, newfd, 0, SHIM_DUP2);
}

int dup3(int oldfd, int newfd, int flags)
{
	if (!dup_involves(oldfd, newfd))
		return REAL(dup3)(oldfd, newfd, flags);
	return shim_dup_call(oldfd, newfd, flags, SHIM_DUP3);
}

/*
 * lock answers record locks. The object cannot change under a reader, so
 * read locks (SQLite's SHARED lock) are granted and held by nobody else:
 * no-ops, and F_GETLK finds no conflict. A write lock, as on a descriptor
 * opened read-only, is EBADF.
 */
static int lock(int cmd, struct flock *fl)
{
	if (fl == NULL) {
		errno = EFAULT;
		return -1;
	}
	if (cmd == F_GETLK || cmd == F_OFD_GETLK) {
		fl->l_type = F_UNLCK;
		return 0;
	}
	if (fl->l_type == F_WRLCK) {
		errno = EBADF;
		return -1;
	}
	if (fl->l_type != F_RDLCK && fl->l_type != F_UNLCK) {
		errno = EINVAL;
		return -1;
	}
	return 0;
}

/* The F_SETFL bits the kernel lets a program change; O_APPEND has no
 * meaning for a file that is never written. */
static const int setfl_bits = O_NONBLOCK | O_NOATIME | O_DIRECT | O_ASYNC;

static int file_fcntl(struct shim_file *f, int fd, int cmd, void *arg, int (*realfn)(int, int, ...))
{
	switch (cmd) {
	case F_DUPFD:
		return shim_dup_call(fd, (int)(intptr_t)arg, 0, SHIM_FDUPFD);
	case F_DUPFD_CLOEXEC:
		return shim_dup_call(fd, (int)(intptr_t)arg, 0, SHIM_FDUPFD_CLOEXEC);
	case F_GETFL:
		/* O_LARGEFILE: the kernel adds it to every open of a 64-bit process. */
		return (f->m == NULL ? O_PATH : O_RDONLY) | O_LARGEFILE | f->status;
	case F_SETFL:
		f->status = (int)(intptr_t)arg & setfl_bits;
		return 0;
	case F_GETLK:
	case F_SETLK:
	case F_SETLKW:
	case F_OFD_GETLK:
	case F_OFD_SETLK:
	case F_OFD_SETLKW:
		if (f->m == NULL) {
			errno = EBADF;
			return -1;
		}
		return lock(cmd, arg);
	}
	/* F_GETFD, F_SETFD are the stand-in's; the rest fail on it (EBADF)
	 * as on the O_PATH descriptor it is. */
	return realfn(fd, cmd, arg);
}

static int do_fcntl(int fd, int cmd, void *arg, int (*realfn)(int, int, ...))
{
	struct shim_file *f = shim_ours(fd);
	if (f == NULL)
		return realfn(fd, cmd, arg);
	return done(f, file_fcntl(f, fd, cmd, arg, realfn));
}

/* fcntl's third argument is an int or a pointer: read as a pointer-sized
 * word, as libc's own fcntl does. */
int fcntl(int fd, int cmd, ...)
{
	va_list ap;
	va_start(ap, cmd);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	return do_fcntl(fd, cmd, arg, REAL(fcntl));
}

int fcntl64(int fd, int cmd, ...)
{
	va_list ap;
	va_start(ap, cmd);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	return do_fcntl(fd, cmd, arg, REAL(fcntl64));
}

/* ioctl: FIONREAD says what is left to read; FIOCLEX, FIONCLEX and
 * FIONBIO, which the kernel answers for any descriptor, set what fcntl
 * sets; a terminal's TCGETS, as every other request of a regular file
 * that is not the file system's, is ENOTTY, which is what isatty(3)
 * expects of a file. */
int ioctl(int fd, unsigned long request, ...)
{
	va_list ap;
	va_start(ap, request);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	struct shim_file *f = shim_ours(fd);
	if (f == NULL)
		return REAL(ioctl)(fd, request, arg);
	int rc = -1;
	if (f->m == NULL) {
		errno = EBADF;
	} else if (request == FIONREAD) {
		pthread_mutex_lock(&f->pos_lock);
		uint64_t left = f->pos < f->size ? f->size - f->pos : 0;
		pthread_mutex_unlock(&f->pos_lock);
		*(int *)arg = left > INT_MAX ? INT_MAX : (int)left;
		rc = 0;
	} else if (request == FIOCLEX || request == FIONCLEX) {
		rc = REAL(fcntl)(fd, F_SETFD, request == FIOCLEX ? FD_CLOEXEC : 0);
	} else if (request == FIONBIO) {
		f->status = *(int *)arg ? f->status | O_NONBLOCK : f->status & ~O_NONBLOCK;
		rc = 0;
	} else {
		errno = ENOTTY;
	}
	return done(f, rc);
}

/* posix_fadvise returns its error, as libc's does, not -1. */
static int fadvise(int fd, off_t off, off_t len, int advice, int (*realfn)(int, off_t, off_t, int))
{
	struct shim_file *f = shim_ours(fd);
	if (f == NULL)
		return realfn(fd, off, len, advice);
	int err = off < 0 || len < 0 ? EINVAL : shim_advise(f, advice, (uint64_t)off, (uint64_t)len);
	shim_put(f);
	return err;
}

int posix_fadvise(int fd, off_t off, off_t len, int advice)
{
	return fadvise(fd, off, len, advice, REAL(posix_fadvise));
}

int posix_fadvise64(int fd, off64_t off, off64_t len, int advice)
{
	return fadvise(fd, off, len, advice, REAL(posix_fadvise64));
}

/* readahead(2) is WILLNEED: filemap reads the range in the background. */
ssize_t readahead(int fd, off64_t off, size_t count)
{
	struct shim_file *f = shim_ours(fd);
	if (f == NULL)
		return REAL(readahead)(fd, off, count);
	int err = off < 0 ? EINVAL : shim_advise(f, POSIX_FADV_WILLNEED, (uint64_t)off, count);
	shim_put(f);
	if (err != 0) {
		errno = err;
		return -1;
	}
	return 0;
}

/* flock: as fcntl's read locks, a lock on a read-only object holds
 * nothing back, and the kernel grants one, shared or exclusive, on a file
 * opened read-only. */
int flock(int fd, int op)
{
	struct shim_file *f = shim_ours(fd);
	if (f == NULL)
		return REAL(flock)(fd, op);
	int rc = 0;
	if (f->m == NULL) {
		errno = EBADF;
		rc = -1;
	} else if ((op & ~LOCK_NB) != LOCK_SH && (op & ~LOCK_NB) != LOCK_EX && (op & ~LOCK_NB) != LOCK_UN) {
		errno = EINVAL;
		rc = -1;
	}
	return done(f, rc);
}

/* fsync and fdatasync of a read-only object have nothing to write. */
static int sync_fd(int fd, int (*realfn)(int))
{
	struct shim_file *f = shim_ours(fd);
	if (f == NULL)
		return realfn(fd);
	int rc = 0;
	if (f->m == NULL) {
		errno = EBADF;
		rc = -1;
	}
	return done(f, rc);
}

int fsync(int fd)
{
	return sync_fd(fd, REAL(fsync));
}

int fdatasync(int fd)
{
	return sync_fd(fd, REAL(fdatasync));
}
