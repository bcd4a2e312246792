/*
 * The stat family: stat, lstat, fstat, fstatat and their *64 forms (real
 * symbols since glibc 2.33), the __xstat, __lxstat, __fxstat, __fxstatat
 * (and *64) that binaries built against older glibc call, statx, access,
 * faccessat, euidaccess and eaccess.
 *
 * A remote object is a read-only regular file (object.c says how its
 * fields are made); a path under /filemap that names none is missing, as
 * are the -journal and -wal files SQLite probes for. A local file under
 * $FILEMAP_PRELOAD_DIRS is the kernel's to describe, by its path or its
 * stand-in descriptor, which is an O_PATH descriptor of the file itself.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "shim.h"

/* The x86_64 kernel's struct stat is glibc's stat and stat64 alike. */
_Static_assert(sizeof(struct stat) == sizeof(struct stat64), "struct stat64 differs from struct stat");

/* fd_stat is fstat(2) for the shim: 1 if it answered (*rc set), 0 if the
 * call is libc's. */
static int fd_stat(int fd, struct stat *st, int *rc)
{
	struct shim_file *f = shim_ours(fd);
	if (f == NULL)
		return 0;
	*rc = shim_fstat(f, fd, st);
	shim_put(f);
	return 1;
}

/*
 * stat_at is fstatat(2) for the shim, as fd_stat is fstat(2). An empty
 * path (or, as Linux 6.11 takes it, NULL) with AT_EMPTY_PATH is the
 * descriptor itself, which is how glibc's fstat asks.
 */
static int stat_at(int dirfd, const char *path, struct stat *st, int flags, int *rc)
{
	if ((path == NULL || path[0] == '\0') && (flags & AT_EMPTY_PATH))
		return fd_stat(dirfd, st, rc);
	char uri[SHIM_URI_MAX];
	if (!shim_remote(dirfd, path, uri))
		return 0;
	*rc = shim_stat_uri(uri, st);
	return 1;
}

int stat(const char *path, struct stat *st)
{
	int rc;
	return stat_at(AT_FDCWD, path, st, 0, &rc) ? rc : REAL(stat)(path, st);
}

int stat64(const char *path, struct stat64 *st)
{
	int rc;
	return stat_at(AT_FDCWD, path, (struct stat *)st, 0, &rc) ? rc : REAL(stat64)(path, st);
}

int lstat(const char *path, struct stat *st)
{
	int rc;
	return stat_at(AT_FDCWD, path, st, AT_SYMLINK_NOFOLLOW, &rc) ? rc : REAL(lstat)(path, st);
}

int lstat64(const char *path, struct stat64 *st)
{
	int rc;
	return stat_at(AT_FDCWD, path, (struct stat *)st, AT_SYMLINK_NOFOLLOW, &rc) ? rc : REAL(lstat64)(path, st);
}

int fstat(int fd, struct stat *st)
{
	int rc;
	return fd_stat(fd, st, &rc) ? rc : REAL(fstat)(fd, st);
}

int fstat64(int fd, struct stat64 *st)
{
	int rc;
	return fd_stat(fd, (struct stat *)st, &rc) ? rc : REAL(fstat64)(fd, st);
}

int fstatat(int dirfd, const char *path, struct stat *st, int flags)
{
	int rc;
	return stat_at(dirfd, path, st, flags, &rc) ? rc : REAL(fstatat)(dirfd, path, st, flags);
}

int fstatat64(int dirfd, const char *path, struct stat64 *st, int flags)
{
	int rc;
	return stat_at(dirfd, path, (struct stat *)st, flags, &rc) ? rc : REAL(fstatat64)(dirfd, path, st, flags);
}

/* The old entry points, with the version of struct stat they fill: on
 * x86_64 every version is the one struct stat. */
int __xstat(int ver, const char *path, struct stat *st);
int __xstat64(int ver, const char *path, struct stat64 *st);
int __lxstat(int ver, const char *path, struct stat *st);
int __lxstat64(int ver, const char *path, struct stat64 *st);
int __fxstat(int ver, int fd, struct stat *st);
int __fxstat64(int ver, int fd, struct stat64 *st);
int __fxstatat(int ver, int dirfd, const char *path, struct stat *st, int flags);
int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *st, int flags);

int __xstat(int ver, const char *path, struct stat *st)
{
	int rc;
	return stat_at(AT_FDCWD, path, st, 0, &rc) ? rc : REAL(__xstat)(ver, path, st);
}

int __xstat64(int ver, const char *path, struct stat64 *st)
{
	int rc;
	return stat_at(AT_FDCWD, path, (struct stat *)st, 0, &rc) ? rc : REAL(__xstat64)(ver, path, st);
}

int __lxstat(int ver, const char *path, struct stat *st)
{
	int rc;
	return stat_at(AT_FDCWD, path, st, AT_SYMLINK_NOFOLLOW, &rc) ? rc : REAL(__lxstat)(ver, path, st);
}

int __lxstat64(int ver, const char *path, struct stat64 *st)
{
	int rc;
	return stat_at(AT_FDCWD, path, (struct stat *)st, AT_SYMLINK_NOFOLLOW, &rc) ? rc
										      : REAL(__lxstat64)(ver, path, st);
}

int __fxstat(int ver, int fd, struct stat *st)
{
	int rc;
	return fd_stat(fd, st, &rc) ? rc : REAL(__fxstat)(ver, fd, st);
}

int __fxstat64(int ver, int fd, struct stat64 *st)
{
	int rc;
	return fd_stat(fd, (struct stat *)st, &rc) ? rc : REAL(__fxstat64)(ver, fd, st);
}

int __fxstatat(int ver, int dirfd, const char *path, struct stat *st, int flags)
{
	int rc;
	return stat_at(dirfd, path, st, flags, &rc) ? rc : REAL(__fxstatat)(ver, dirfd, path, st, flags);
}

int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *st, int flags)
{
	int rc;
	return stat_at(dirfd, path, (struct stat *)st, flags, &rc) ? rc
								     : REAL(__fxstatat64)(ver, dirfd, path, st, flags);
}

static struct statx_timestamp stx_time(struct timespec ts)
{
	return (struct statx_timestamp){.tv_sec = ts.tv_sec, .tv_nsec = (uint32_t)ts.tv_nsec};
}

/* to_statx fills a struct statx from a struct stat: the basic fields. */
static void to_statx(const struct stat *st, struct statx *sx)
{
	*sx = (struct statx){
		.stx_mask = STATX_BASIC_STATS,
		.stx_blksize = (uint32_t)st->st_blksize,
		.stx_nlink = (uint32_t)st->st_nlink,
		.stx_uid = st->st_uid,
		.stx_gid = st->st_gid,
		.stx_mode = (uint16_t)st->st_mode,
		.stx_ino = st->st_ino,
		.stx_size = (uint64_t)st->st_size,
		.stx_blocks = (uint64_t)st->st_blocks,
		.stx_atime = stx_time(st->st_atim),
		.stx_ctime = stx_time(st->st_ctim),
		.stx_mtime = stx_time(st->st_mtim),
		.stx_dev_major = major(st->st_dev),
		.stx_dev_minor = minor(st->st_dev),
	};
}

int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *sx)
{
	if ((path == NULL || path[0] == '\0') && (flags & AT_EMPTY_PATH)) {
		struct shim_file *f = shim_ours(dirfd);
		if (f != NULL) {
			int local = f->local;
			struct stat st = f->st;
			shim_put(f);
			if (!local) {
				to_statx(&st, sx);
				return 0;
			}
		}
		return REAL(statx)(dirfd, path, flags, mask, sx);
	}
	char uri[SHIM_URI_MAX];
	if (!shim_remote(dirfd, path, uri))
		return REAL(statx)(dirfd, path, flags, mask, sx);
	struct stat st;
	if (shim_stat_uri(uri, &st) < 0)
		return -1;
	to_statx(&st, sx);
	return 0;
}

/* access_at is faccessat(2) for a remote object: it exists and is
 * readable; writing is EROFS and executing EACCES, as for a read-only file
 * of mode 0444 on a read-only file system. */
static int access_at(int dirfd, const char *path, int mode, int *rc)
{
	char uri[SHIM_URI_MAX];
	if (!shim_remote(dirfd, path, uri))
		return 0;
	struct stat st;
	*rc = shim_stat_uri(uri, &st);
	if (*rc == 0 && (mode & W_OK)) {
		errno = EROFS;
		*rc = -1;
	} else if (*rc == 0 && (mode & X_OK)) {
		errno = EACCES;
		*rc = -1;
	}
	return 1;
}

int access(const char *path, int mode)
{
	int rc;
	return access_at(AT_FDCWD, path, mode, &rc) ? rc : REAL(access)(path, mode);
}

int faccessat(int dirfd, const char *path, int mode, int flags)
{
	int rc;
	return access_at(dirfd, path, mode, &rc) ? rc : REAL(faccessat)(dirfd, path, mode, flags);
}

int euidaccess(const char *path, int mode)
{
	int rc;
	return access_at(AT_FDCWD, path, mode, &rc) ? rc : REAL(euidaccess)(path, mode);
}

int eaccess(const char *path, int mode)
{
	int rc;
	return access_at(AT_FDCWD, path, mode, &rc) ? rc : REAL(eaccess)(path, mode);
}
