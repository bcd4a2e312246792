/*
 * The read family: read, pread, pread64, readv, preadv, preadv64,
 * preadv2, preadv64v2, the fortified __read_chk, __pread_chk,
 * __pread64_chk, and lseek, lseek64. They read the object's mapping
 * (object.c), moving the description's offset as the kernel moves
 * f_pos: under a lock, so that threads sharing a descriptor read
 * different bytes.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/uio.h>
#include <unistd.h>

#include "shim.h"

/* read_pos reads at the description's offset and moves it. */
static ssize_t read_pos(struct shim_file *f, void *buf, size_t len)
{
	pthread_mutex_lock(&f->pos_lock);
	ssize_t n = shim_pread(f, buf, len, f->pos);
	if (n > 0)
		f->pos += (uint64_t)n;
	pthread_mutex_unlock(&f->pos_lock);
	return n;
}

static ssize_t pread_checked(struct shim_file *f, void *buf, size_t len, off_t off)
{
	if (off < 0) {
		errno = EINVAL;
		return -1;
	}
	return shim_pread(f, buf, len, (uint64_t)off);
}

ssize_t read(int fd, void *buf, size_t len)
{
	struct shim_file *f = shim_ours(fd);
	if (f == NULL)
		return REAL(read)(fd, buf, len);
	ssize_t n = read_pos(f, buf, len);
	shim_put(f);
	return n;
}

static ssize_t do_pread(int fd, void *buf, size_t len, off_t off, ssize_t (*realfn)(int, void *, size_t, off_t))
{
	struct shim_file *f = shim_ours(fd);
	if (f == NULL)
		return realfn(fd, buf, len, off);
	ssize_t n = pread_checked(f, buf, len, off);
	shim_put(f);
	return n;
}

ssize_t pread(int fd, void *buf, size_t len, off_t off)
{
	return do_pread(fd, buf, len, off, REAL(pread));
}

ssize_t pread64(int fd, void *buf, size_t len, off64_t off)
{
	return do_pread(fd, buf, len, off, REAL(pread64));
}

/* vec_pread reads into iov as one read at off, or at the description's
 * offset if off is -1: what it reads before an error it returns. */
static ssize_t vec_pread(struct shim_file *f, const struct iovec *iov, int iovcnt, off_t off)
{
	if (iovcnt < 0 || iovcnt > IOV_MAX || (off < 0 && off != -1)) {
		errno = EINVAL;
		return -1;
	}
	size_t total = 0;
	for (int i = 0; i < iovcnt; i++) {
		if (iov[i].iov_len > SSIZE_MAX - total) {
			errno = EINVAL;
			return -1;
		}
		total += iov[i].iov_len;
	}
	int at_pos = off == -1;
	if (at_pos) {
		pthread_mutex_lock(&f->pos_lock);
		off = (off_t)f->pos;
	}
	ssize_t done = 0;
	for (int i = 0; i < iovcnt; i++) {
		if (iov[i].iov_len == 0)
			continue;
		ssize_t n = shim_pread(f, iov[i].iov_base, iov[i].iov_len, (uint64_t)off + (uint64_t)done);
		if (n < 0) {
			if (done == 0)
				done = -1;
			break;
		}
		done += n;
		if ((size_t)n < iov[i].iov_len)
			break;
	}
	if (at_pos) {
		if (done > 0)
			f->pos += (uint64_t)done;
		pthread_mutex_unlock(&f->pos_lock);
	}
	return done;
}

/* do_preadv is the vector reads: at off, or, if off is -1, at the
 * description's offset, which it moves. */
static ssize_t do_preadv(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags,
			 ssize_t (*realfn)(int, const struct iovec *, int, off_t, int))
{
	struct shim_file *f = shim_ours(fd);
	if (f == NULL)
		return realfn(fd, iov, iovcnt, off, flags);
	ssize_t n;
	/* RWF_NOWAIT and the rest are hints a read of a mapping may ignore. */
	if (flags & ~(RWF_HIPRI | RWF_DSYNC | RWF_SYNC | RWF_NOWAIT | RWF_APPEND)) {
		errno = EOPNOTSUPP;
		n = -1;
	} else {
		n = vec_pread(f, iov, iovcnt, off);
	}
	shim_put(f);
	return n;
}

/* The real functions in one shape: fd, iov, iovcnt, off, flags. */
static ssize_t real_readv(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags)
{
	(void)off, (void)flags;
	return REAL(readv)(fd, iov, iovcnt);
}

static ssize_t real_preadv(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags)
{
	(void)flags;
	return REAL(preadv)(fd, iov, iovcnt, off);
}

static ssize_t real_preadv64(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags)
{
	(void)flags;
	return REAL(preadv64)(fd, iov, iovcnt, off);
}

static ssize_t real_preadv2(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags)
{
	return REAL(preadv2)(fd, iov, iovcnt, off, flags);
}

static ssize_t real_preadv64v2(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags)
{
	return REAL(preadv64v2)(fd, iov, iovcnt, off, flags);
}

ssize_t readv(int fd, const struct iovec *iov, int iovcnt)
{
	return do_preadv(fd, iov, iovcnt, -1, 0, real_readv);
}

ssize_t preadv(int fd, const struct iovec *iov, int iovcnt, off_t off)
{
	if (off == -1)
		off = -2; /* preadv's -1 is a bad offset, not "the current one" */
	return do_preadv(fd, iov, iovcnt, off, 0, real_preadv);
}

ssize_t preadv64(int fd, const struct iovec *iov, int iovcnt, off64_t off)
{
	if (off == -1)
		off = -2;
	return do_preadv(fd, iov, iovcnt, off, 0, real_preadv64);
}

ssize_t preadv2(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags)
{
	return do_preadv(fd, iov, iovcnt, off, flags, real_preadv2);
}

ssize_t preadv64v2(int fd, const struct iovec *iov, int iovcnt, off64_t off, int flags)
{
	return do_preadv(fd, iov, iovcnt, off, flags, real_preadv64v2);
}

/* The fortified reads: the buffer's known size is checked as libc would. */
ssize_t __read_chk(int fd, void *buf, size_t len, size_t buflen);
ssize_t __pread_chk(int fd, void *buf, size_t len, off_t off, size_t buflen);
ssize_t __pread64_chk(int fd, void *buf, size_t len, off64_t off, size_t buflen);
void __chk_fail(void) __attribute__((noreturn));

ssize_t __read_chk(int fd, void *buf, size_t len, size_t buflen)
{
	if (len > buflen)
		__chk_fail();
	return read(fd, buf, len);
}

ssize_t __pread_chk(int fd, void *buf, size_t len, off_t off, size_t buflen)
{
	if (len > buflen)
		__chk_fail();
	return pread(fd, buf, len, off);
}

ssize_t __pread64_chk(int fd, void *buf, size_t len, off64_t off, size_t buflen)
{
	if (len > buflen)
		__chk_fail();
	return pread64(fd, buf, len, off);
}

/* seek moves f's offset as lseek(2) moves a regular file's: past the end
 * is allowed; the whole object is data, its end the one hole. */
static off_t seek(struct shim_file *f, off_t off, int whence)
{
	pthread_mutex_lock(&f->pos_lock);
	int64_t base;
	switch (whence) {
	case SEEK_SET:
		base = 0;
		break;
	case SEEK_CUR:
		base = (int64_t)f->pos;
		break;
	case SEEK_END:
		base = (int64_t)f->size;
		break;
	case SEEK_DATA:
	case SEEK_HOLE:
		base = 0;
		if (off < 0 || (uint64_t)off >= f->size) {
			pthread_mutex_unlock(&f->pos_lock);
			errno = ENXIO;
			return -1;
		}
		if (whence == SEEK_HOLE)
			off = (off_t)f->size;
		break;
	default:
		pthread_mutex_unlock(&f->pos_lock);
		errno = EINVAL;
		return -1;
	}
	int64_t at;
	if (__builtin_add_overflow(base, (int64_t)off, &at) || at < 0) {
		pthread_mutex_unlock(&f->pos_lock);
		errno = EINVAL;
		return -1;
	}
	f->pos = (uint64_t)at;
	pthread_mutex_unlock(&f->pos_lock);
	return (off_t)at;
}

static off_t do_lseek(int fd, off_t off, int whence, off_t (*realfn)(int, off_t, int))
{
	struct shim_file *f = shim_ours(fd);
	if (f == NULL)
		return realfn(fd, off, whence);
	off_t at;
	if (f->m == NULL) { /* O_PATH */
		errno = EBADF;
		at = -1;
	} else {
		at = seek(f, off, whence);
	}
	shim_put(f);
	return at;
}

off_t lseek(int fd, off_t off, int whence)
{
	return do_lseek(fd, off, whence, REAL(lseek));
}

off64_t lseek64(int fd, off64_t off, int whence)
{
	return do_lseek(fd, off, whence, REAL(lseek64));
}
