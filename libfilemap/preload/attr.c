/*
 * What tools ask of a path besides stat: readlink, readlinkat, and the
 * extended attributes (getxattr, lgetxattr, fgetxattr, listxattr,
 * llistxattr, flistxattr), which ls -l reads for SELinux labels and
 * ACLs, and realpath walks with readlink. A remote object, and every
 * path under /filemap, is no symbolic link (EINVAL, as for a file or a
 * directory) and has no extended attributes (an empty list; a get is
 * ENOTSUP, which tools take as "none"). The kernel would say ENOENT of
 * all of them, which tools report as a missing file.
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "shim.h"

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
	return !shim_inlib && shim_classify(dirfd, path, uri) == SHIM_REMOTE;
}

/* link_at is readlink(2) of a remote name: EINVAL for an object, and for
 * the names above objects (/filemap, a host, a bucket), which realpath
 * walks through as directories; ENOENT for an object that is missing. */
static int link_at(int dirfd, const char *path, ssize_t *rc)
{
	char uri[SHIM_URI_MAX];
	if (shim_inlib || shim_classify(dirfd, path, uri) != SHIM_REMOTE)
		return 0;
	struct stat st;
	*rc = uri[0] == '\0' || shim_stat_uri(uri, &st) == 0 ? fail(EINVAL) : -1;
	return 1;
}

/* remote_fd says whether fd is a remote object's stand-in. */
static int remote_fd(int fd)
{
	if (shim_inlib)
		return 0;
	struct shim_file *f = shim_get(fd);
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
