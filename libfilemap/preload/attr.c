/*
 * What programs ask of a path besides stat: realpath and
 * canonicalize_file_name (whose own lstat and readlink are inside libc),
 * readlink and readlinkat (which coreutils' realpath walks a path with),
 * and the extended attributes (getxattr, lgetxattr, fgetxattr,
 * listxattr, llistxattr, flistxattr), which ls -l reads for SELinux
 * labels and ACLs. A remote object, and every path under /filemap, is
 * no symbolic link (EINVAL, as for a file or a directory), its own
 * canonical name, and has no extended attributes (an empty list; a get
 * is ENOTSUP, which tools take as "none"). The kernel would say ENOENT
 * of all of them, which programs report as a missing file.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "shim.h"

void __chk_fail(void) __attribute__((noreturn));

static int fail(int err)
{
	errno = err;
	return -1;
}

/* remote says whether path (relative to dirfd) is under the shim's
 * remote names. */
static int remote(int dirfd, const char *path)
{
	char uri[SHIM_URI_MAX];
	return shim_remote(dirfd, path, uri);
}

/* link_at is readlink(2) of a remote name: EINVAL for an object, and for
 * the names above objects (/filemap, a host, a bucket), which realpath
 * walks through as directories; ENOENT for an object that is missing. */
static int link_at(int dirfd, const char *path, ssize_t *rc)
{
	char uri[SHIM_URI_MAX];
	if (!shim_remote(dirfd, path, uri))
		return 0;
	struct stat st;
	*rc = uri[0] == '\0' || shim_stat_uri(uri, &st) == 0 ? fail(EINVAL) : -1;
	return 1;
}

/* remote_fd says whether fd is a remote object's stand-in. */
static int remote_fd(int fd)
{
	struct shim_file *f = shim_ours(fd);
	int r = f != NULL && !f->local;
	shim_put(f);
	return r;
}

ssize_t readlink(const char *path, char *buf, size_t len)
{
	ssize_t rc;
	return link_at(AT_FDCWD, path, &rc) ? rc : REAL(readlink)(path, buf, len);
}

ssize_t readlinkat(int dirfd, const char *path, char *buf, size_t len)
{
	ssize_t rc;
	return link_at(dirfd, path, &rc) ? rc : REAL(readlinkat)(dirfd, path, buf, len);
}

ssize_t getxattr(const char *path, const char *name, void *value, size_t size)
{
	return remote(AT_FDCWD, path) ? fail(ENOTSUP) : REAL(getxattr)(path, name, value, size);
}

ssize_t lgetxattr(const char *path, const char *name, void *value, size_t size)
{
	return remote(AT_FDCWD, path) ? fail(ENOTSUP) : REAL(lgetxattr)(path, name, value, size);
}

ssize_t fgetxattr(int fd, const char *name, void *value, size_t size)
{
	return remote_fd(fd) ? fail(ENOTSUP) : REAL(fgetxattr)(fd, name, value, size);
}

ssize_t listxattr(const char *path, char *list, size_t size)
{
	return remote(AT_FDCWD, path) ? 0 : REAL(listxattr)(path, list, size);
}

ssize_t llistxattr(const char *path, char *list, size_t size)
{
	return remote(AT_FDCWD, path) ? 0 : REAL(llistxattr)(path, list, size);
}

ssize_t flistxattr(int fd, char *list, size_t size)
{
	return remote_fd(fd) ? 0 : REAL(flistxattr)(fd, list, size);
}

/* canonical is realpath(3) of a remote object's path: the path itself,
 * once the object is found, into resolved or, if NULL, a malloc'd copy. */
static int canonical(const char *path, char *resolved, char **rc)
{
	char uri[SHIM_URI_MAX];
	if (path == NULL || !shim_remote(AT_FDCWD, path, uri))
		return 0;
	struct stat st;
	*rc = NULL;
	if (shim_stat_uri(uri, &st) < 0)
		return 1;
	if (strlen(path) >= PATH_MAX) {
		errno = ENAMETOOLONG;
		return 1;
	}
	*rc = resolved != NULL ? strcpy(resolved, path) : strdup(path);
	return 1;
}

char *realpath(const char *path, char *resolved)
{
	char *rc;
	return canonical(path, resolved, &rc) ? rc : REAL(realpath)(path, resolved);
}

char *canonicalize_file_name(const char *path)
{
	char *rc;
	return canonical(path, NULL, &rc) ? rc : REAL(canonicalize_file_name)(path);
}

char *__realpath_chk(const char *path, char *resolved, size_t resolvedlen);

char *__realpath_chk(const char *path, char *resolved, size_t resolvedlen)
{
	if (resolvedlen < PATH_MAX)
		__chk_fail();
	return realpath(path, resolved);
}
