/*
 * The open family: open, open64, openat, openat64, creat, creat64, and
 * the fortified __open_2, __open64_2, __openat_2, __openat64_2 that
 * programs built with _FORTIFY_SOURCE call. A path filemap serves gets a
 * stand-in descriptor (object.c); any other goes to libc as it came.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>

#include "shim.h"

/* mode_of reads open(2)'s third argument, there only with O_CREAT or
 * O_TMPFILE. */
#define MODE_OF(flags)                                                                                     \
	({                                                                                                 \
		mode_t m_ = 0;                                                                             \
		if (SHIM_CREATES(flags)) {                                                   \
			va_list ap_;                                                                       \
			va_start(ap_, flags);                                                              \
			m_ = (mode_t)va_arg(ap_, int);                                                     \
			va_end(ap_);                                                                       \
		}                                                                                          \
		m_;                                                                                        \
	})

/* Each real function as openat's signature, for shim_openat's fallback. */
static int real_open(int dirfd, const char *path, int flags, ...)
{
	(void)dirfd;
	return REAL(open)(path, flags, MODE_OF(flags));
}

static int real_open64(int dirfd, const char *path, int flags, ...)
{
	(void)dirfd;
	return REAL(open64)(path, flags, MODE_OF(flags));
}

int shim_real_openat(int dirfd, const char *path, int flags, ...)
{
	return REAL(openat)(dirfd, path, flags, MODE_OF(flags));
}

static int real_openat64(int dirfd, const char *path, int flags, ...)
{
	return REAL(openat64)(dirfd, path, flags, MODE_OF(flags));
}

/* intercept opens path if it is filemap's: 1 and *fd, else 0. */
static int intercept(int dirfd, const char *path, int flags, mode_t mode, int (*realfn)(int, const char *, int, ...),
		     int *fd)
{
	if (shim_inlib)
		return 0;
	char uri[SHIM_URI_MAX];
	enum shim_kind kind = shim_classify(dirfd, path, uri);
	if (kind == SHIM_NONE)
		return 0;
	*fd = shim_openat(kind, uri, dirfd, path, flags, mode, realfn);
	return 1;
}

int open(const char *path, int flags, ...)
{
	mode_t mode = MODE_OF(flags);
	int fd;
	if (intercept(AT_FDCWD, path, flags, mode, real_open, &fd))
		return fd;
	return REAL(open)(path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
	mode_t mode = MODE_OF(flags);
	int fd;
	if (intercept(AT_FDCWD, path, flags, mode, real_open64, &fd))
		return fd;
	return REAL(open64)(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
	mode_t mode = MODE_OF(flags);
	int fd;
	if (intercept(dirfd, path, flags, mode, shim_real_openat, &fd))
		return fd;
	return REAL(openat)(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
	mode_t mode = MODE_OF(flags);
	int fd;
	if (intercept(dirfd, path, flags, mode, real_openat64, &fd))
		return fd;
	return REAL(openat64)(dirfd, path, flags, mode);
}

int creat(const char *path, mode_t mode)
{
	int fd;
	if (intercept(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode, real_open, &fd))
		return fd;
	return REAL(creat)(path, mode);
}

int creat64(const char *path, mode_t mode)
{
	int fd;
	if (intercept(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode, real_open64, &fd))
		return fd;
	return REAL(creat64)(path, mode);
}

/* The fortified opens take no mode: libc's abort if O_CREAT asks for one. */
int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags);

int __open_2(const char *path, int flags)
{
	int fd;
	if (!SHIM_CREATES(flags) && intercept(AT_FDCWD, path, flags, 0, real_open, &fd))
		return fd;
	return REAL(__open_2)(path, flags);
}

int __open64_2(const char *path, int flags)
{
	int fd;
	if (!SHIM_CREATES(flags) && intercept(AT_FDCWD, path, flags, 0, real_open64, &fd))
		return fd;
	return REAL(__open64_2)(path, flags);
}

int __openat_2(int dirfd, const char *path, int flags)
{
	int fd;
	if (!SHIM_CREATES(flags) && intercept(dirfd, path, flags, 0, shim_real_openat, &fd))
		return fd;
	return REAL(__openat_2)(dirfd, path, flags);
}

int __openat64_2(int dirfd, const char *path, int flags)
{
	int fd;
	if (!SHIM_CREATES(flags) && intercept(dirfd, path, flags, 0, real_openat64, &fd))
		return fd;
	return REAL(__openat64_2)(dirfd, path, flags);
}
