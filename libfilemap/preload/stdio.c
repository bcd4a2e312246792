/*
 * stdio: fopen, fopen64, fdopen, freopen, freopen64. libc's fopen opens
 * inside libc, and its streams read with libc's internal read, which no
 * interposer sees: a stream over a stand-in descriptor would read EBADF.
 * So a stream of a filemap object is a fopencookie(3) stream whose reads
 * and seeks are the shim's, and whose fileno is the stand-in descriptor,
 * for the programs that fstat or posix_fadvise it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "shim.h"

/* The cookie is the descriptor: every call goes through the table, as the
 * program's own calls on fileno(stream) do. */
static ssize_t cookie_read(void *cookie, char *buf, size_t n)
{
	return read((int)(intptr_t)cookie, buf, n);
}

static int cookie_seek(void *cookie, off64_t *off, int whence)
{
	off64_t at = lseek64((int)(intptr_t)cookie, *off, whence);
	if (at < 0)
		return -1;
	*off = at;
	return 0;
}

static int cookie_close(void *cookie)
{
	return close((int)(intptr_t)cookie);
}

/* mode_flags is open(2)'s flags for an fopen mode; -1 for a bad one. */
static int mode_flags(const char *mode)
{
	int flags;
	switch (mode[0]) {
	case 'r':
		flags = O_RDONLY;
		break;
	case 'w':
		flags = O_WRONLY | O_CREAT | O_TRUNC;
		break;
	case 'a':
		flags = O_WRONLY | O_CREAT | O_APPEND;
		break;
	default:
		return -1;
	}
	for (const char *p = mode + 1; *p != '\0' && *p != ','; p++) {
		if (*p == '+')
			flags = (flags & ~O_ACCMODE) | O_RDWR;
		else if (*p == 'e')
			flags |= O_CLOEXEC;
		else if (*p == 'x')
			flags |= O_EXCL;
	}
	return flags;
}

FILE *shim_fdopen_file(int fd, const char *mode)
{
	int flags = mode_flags(mode);
	if (flags < 0 || (flags & O_ACCMODE) != O_RDONLY) {
		errno = EINVAL; /* fdopen(3) of a read-only descriptor for writing */
		return NULL;
	}
	cookie_io_functions_t io = {.read = cookie_read, .seek = cookie_seek, .close = cookie_close};
	FILE *fp = fopencookie((void *)(intptr_t)fd, "r", io);
	if (fp != NULL)
		fp->_fileno = fd; /* a cookie stream's is -2: fileno(3) would say EBADF */
	return fp;
}

/* fopen_at opens a filemap path for a stream; NULL with errno, or, for a
 * local file filemap cannot serve, a stream of libc's. */
static FILE *fopen_at(enum shim_kind kind, const char *uri, const char *path, const char *mode, int flags)
{
	int fd = shim_openat(kind, uri, AT_FDCWD, path, flags, 0666, shim_real_openat);
	if (fd < 0)
		return NULL;
	struct shim_file *f = shim_get(fd);
	if (f == NULL)
		return REAL(fdopen)(fd, mode);
	shim_put(f);
	FILE *fp = shim_fdopen_file(fd, mode);
	if (fp == NULL) {
		int err = errno;
		close(fd);
		errno = err;
	}
	return fp;
}

/* classify_mode says whether path is filemap's, for fopen's mode: local
 * files opened to write are libc's. */
static enum shim_kind classify_mode(const char *path, const char *mode, char *uri, int *flags)
{
	if (shim_inlib)
		return SHIM_NONE;
	enum shim_kind kind = shim_classify(AT_FDCWD, path, uri);
	if (kind == SHIM_NONE)
		return kind;
	*flags = mode_flags(mode);
	if (*flags < 0 || (kind == SHIM_LOCAL && (*flags & O_ACCMODE) != O_RDONLY))
		return SHIM_NONE;
	return kind;
}

/* do_fopen is fopen and fopen64, realfn the one libc has. */
static FILE *do_fopen(const char *path, const char *mode, FILE *(*realfn)(const char *, const char *))
{
	char uri[SHIM_URI_MAX];
	int flags;
	enum shim_kind kind = classify_mode(path, mode, uri, &flags);
	if (kind == SHIM_NONE)
		return realfn(path, mode);
	return fopen_at(kind, uri, path, mode, flags);
}

FILE *fopen(const char *path, const char *mode)
{
	return do_fopen(path, mode, REAL(fopen));
}

FILE *fopen64(const char *path, const char *mode)
{
	return do_fopen(path, mode, REAL(fopen64));
}

FILE *fdopen(int fd, const char *mode)
{
	struct shim_file *f = shim_ours(fd);
	if (f == NULL)
		return REAL(fdopen)(fd, mode);
	shim_put(f);
	return shim_fdopen_file(fd, mode);
}

/*
 * freopen cannot make an existing stream (stdin, say) a cookie stream: it
 * would read through libc's internal read. So the object is copied, read
 * through filemap, into a sealed memory file, and the stream reopened on
 * that: every byte is the object's (an unreadable page fails freopen with
 * EIO), at the cost of holding the whole object in memory.
 */
static int copy_to_memfd(int fd, uint64_t size)
{
	int mem = memfd_create("filemap-freopen", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (mem < 0)
		return -1;
	char buf[1 << 16];
	for (uint64_t off = 0; off < size;) {
		ssize_t n = pread(fd, buf, sizeof buf, (off_t)off);
		if (n <= 0 || write(mem, buf, (size_t)n) != n) {
			int err = n == 0 ? EIO : errno;
			REAL(close)(mem);
			errno = err;
			return -1;
		}
		off += (uint64_t)n;
	}
	fcntl(mem, F_ADD_SEALS, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE);
	return mem;
}

/* reopen reopens stream on a remote object, by way of a memory file. */
static FILE *reopen(const char *uri, const char *path, const char *mode, int flags, FILE *stream,
		    FILE *(*realfn)(const char *, const char *, FILE *))
{
	int fd = shim_openat(SHIM_REMOTE, uri, AT_FDCWD, path, flags, 0666, shim_real_openat);
	if (fd < 0)
		return NULL;
	struct shim_file *f = shim_get(fd);
	uint64_t size = f != NULL ? f->size : 0;
	shim_put(f);
	int mem = copy_to_memfd(fd, size);
	int err = errno;
	close(fd);
	if (mem < 0) {
		errno = err;
		return NULL;
	}
	char self[64];
	snprintf(self, sizeof self, "/proc/self/fd/%d", mem);
	FILE *fp = realfn(self, mode, stream);
	err = errno;
	REAL(close)(mem);
	errno = err;
	return fp;
}

/* do_freopen is freopen and freopen64, realfn the one libc has. */
static FILE *do_freopen(const char *path, const char *mode, FILE *stream,
			FILE *(*realfn)(const char *, const char *, FILE *))
{
	char uri[SHIM_URI_MAX];
	int flags;
	enum shim_kind kind = path != NULL ? classify_mode(path, mode, uri, &flags) : SHIM_NONE;
	if (kind != SHIM_REMOTE) /* a local file libc reads itself */
		return realfn(path, mode, stream);
	return reopen(uri, path, mode, flags, stream, realfn);
}

FILE *freopen(const char *path, const char *mode, FILE *stream)
{
	return do_freopen(path, mode, stream, REAL(freopen));
}

FILE *freopen64(const char *path, const char *mode, FILE *stream)
{
	return do_freopen(path, mode, stream, REAL(freopen64));
}
