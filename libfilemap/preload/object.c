/*
 * Objects: opened with filemap_open for a descriptor, described as
 * stat(2) describes a file, and read as read(2) reads one.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "shim.h"

/* The device every remote object is on: major 0 holds the kernel's
 * anonymous devices (tmpfs, overlay...), numbered up from 0; one this far
 * up is none of them, so that a tool comparing (st_dev, st_ino) never
 * takes an object for a file of its own. */
#define SHIM_DEV makedev(0, 0xff11e)

enum {
	BLKSIZE = 128 << 10,        /* filemap's read-around: coreutils and stdio size their reads by it */
	MAX_RW = INT32_MAX & ~4095, /* the most one read(2) returns, as the kernel's MAX_RW_COUNT */
	RA_MIN = 128 << 10,         /* follow's first window, the kernel's VM_READAHEAD_PAGES */
	RA_MAX = 8 << 20,           /* and its largest, the handler's --readahead-max default */
};

static uint64_t fnv(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (; *s != '\0'; s++)
		h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
	return h;
}

/*
 * version_time is the mtime of a version: a local file's own (its
 * version is SIZE@MTIME_NS); for a remote object, whose ETag or VersionId
 * the library gives but not its Last-Modified, a time made from the
 * version, in 2001-2033: the same version has the same mtime in every
 * process, and a new version another.
 */
static struct timespec version_time(const char *version)
{
	const char *at = strchr(version, '@');
	char *end;
	if (at != NULL) {
		unsigned long long ns = strtoull(at + 1, &end, 10);
		if (*end == '\0')
			return (struct timespec){.tv_sec = (time_t)(ns / 1000000000u), .tv_nsec = (long)(ns % 1000000000u)};
	}
	uint64_t h = fnv(version);
	return (struct timespec){.tv_sec = 1000000000 + (time_t)(h % 1000000000u), .tv_nsec = (long)(h >> 32) % 1000000000};
}

/* describe fills *st for an open object: a read-only regular file whose
 * inode number is its name's, stable across processes and versions. */
static void describe(filemap_t *m, struct stat *st)
{
	struct filemap_stat fs;
	filemap_stat(m, &fs);
	uint64_t ino = fnv(fs.name);
	*st = (struct stat){
		.st_dev = SHIM_DEV,
		.st_ino = ino ? ino : 1,
		.st_mode = S_IFREG | 0444,
		.st_nlink = 1,
		.st_uid = getuid(),
		.st_gid = getgid(),
		.st_size = (off_t)fs.size,
		.st_blksize = BLKSIZE,
		.st_blocks = (blkcnt_t)((fs.size + 511) / 512),
	};
	st->st_mtim = st->st_ctim = st->st_atim = version_time(fs.version);
}

/* open_errno is open(2)'s errno for the library's: a path under /filemap
 * that is no URI is simply missing, and a handler that cannot be started
 * is an I/O error, not "exec format error". */
static int open_errno(int err)
{
	switch (err) {
	case EINVAL:
		return ENOENT;
	case ENOEXEC:
	case EPROTO:
	case ETIMEDOUT:
		return EIO;
	}
	return err;
}

static filemap_t *open_map(const char *uri, const char *version)
{
	struct filemap_options o = {.version = version};
	shim_enter();
	filemap_t *m = filemap_open(uri, &o);
	shim_leave();
	if (m == NULL)
		errno = filemap_errno();
	return m;
}

struct shim_file *shim_open_object(enum shim_kind kind, const char *uri, int flags)
{
	if (uri[0] == '\0') {
		errno = ENOENT;
		return NULL;
	}
	struct shim_file *f = calloc(1, sizeof *f);
	if (f == NULL || (f->uri = strdup(uri)) == NULL) {
		free(f);
		errno = ENOMEM;
		return NULL;
	}
	shim_started();
	if ((f->m = open_map(uri, NULL)) == NULL) {
		int err = errno;
		shim_report(err);
		free(f->uri);
		free(f);
		errno = kind == SHIM_REMOTE ? open_errno(err) : err;
		return NULL;
	}
	struct filemap_stat fs;
	filemap_stat(f->m, &fs);
	f->size = fs.size;
	f->dontfork = (fs.flags & FILEMAP_DONTFORK) != 0;
	f->pid = shim_pid;
	f->local = kind == SHIM_LOCAL;
	describe(f->m, &f->st);
	f->status = flags & (O_NONBLOCK | O_NOATIME | O_DIRECT | O_NDELAY);
	pthread_mutex_init(&f->pos_lock, NULL);
	pthread_mutex_init(&f->ra_lock, NULL);
	pthread_mutex_init(&f->own_lock, NULL);
	f->ra_size = RA_MIN;
	atomic_init(&f->refs, 1);
	shim_track(f);
	return f;
}

/*
 * stand_in makes the descriptor a program holds for a remote object: an
 * O_PATH descriptor of a socket (of a socket pair closed at once). The
 * kernel refuses it everything a program could try without the shim (a
 * static program, a raw system call, io_uring, a program exec'd with it):
 * read, mmap, sendfile, splice, copy_file_range fail with EBADF, openat
 * and fchdir with ENOTDIR, and opening it again by /proc/self/fd (as
 * /dev/stdin, freopen(NULL, ...)) with ENXIO. Nothing reads as the
 * object's bytes that is not; an O_PATH descriptor of a memory file of
 * the object's size would be opened again there, and read as zeros.
 * Without /proc, where no one can open it again, /dev/null's serves.
 */
static int stand_in(int flags)
{
	int cloexec = flags & O_CLOEXEC, sp[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) < 0)
		return -1;
	char self[64];
	snprintf(self, sizeof self, "/proc/self/fd/%d", sp[0]);
	int fd = REAL(open)(self, O_PATH | cloexec);
	int saved = errno;
	REAL(close)(sp[0]);
	REAL(close)(sp[1]);
	errno = saved;
	if (fd < 0 && errno == ENOENT)
		fd = REAL(open)("/dev/null", O_PATH | cloexec);
	return fd;
}

/* write_access says whether open(2) flags ask to write or create. */
static int write_access(int flags)
{
	return (flags & O_ACCMODE) != O_RDONLY || SHIM_CREATES(flags) || (flags & (O_TRUNC | O_APPEND));
}

/* local_stand_in opens a local file O_PATH, as the program named it; it
 * is filemap's only if it is a regular file. */
static int local_stand_in(int dirfd, const char *path, int flags)
{
	int fd = REAL(openat)(dirfd, path, O_PATH | (flags & (O_CLOEXEC | O_NOFOLLOW)));
	if (fd < 0)
		return -1;
	struct stat st;
	if (REAL(fstat)(fd, &st) == 0 && S_ISREG(st.st_mode))
		return fd;
	REAL(close)(fd);
	return -1;
}

int shim_openat(enum shim_kind kind, const char *uri, int dirfd, const char *path, int flags, mode_t mode,
		int (*realfn)(int, const char *, int, ...))
{
	int fd = -1;
	if (kind == SHIM_LOCAL) {
		/* Writes, directories and devices are the kernel's, and so is a
		 * file filemap cannot serve (no handler): the file still opens. */
		if (write_access(flags) || (flags & (O_DIRECTORY | O_PATH)) ||
		    (fd = local_stand_in(dirfd, path, flags)) < 0)
			return realfn(dirfd, path, flags, mode);
	} else if (write_access(flags)) {
		errno = EROFS; /* SQLite, refused O_RDWR|O_CREAT, opens O_RDONLY */
		return -1;
	}
	struct shim_file *f = shim_open_object(kind, uri, flags);
	if (f == NULL) {
		int err = errno;
		if (fd >= 0) {
			REAL(close)(fd);
			if (err != EACCES && err != ENOENT)
				return realfn(dirfd, path, flags, mode);
		}
		errno = err;
		return -1;
	}
	if (flags & O_DIRECTORY) {
		shim_put(f);
		errno = ENOTDIR;
		return -1;
	}
	if (fd < 0 && (fd = stand_in(flags)) < 0) {
		shim_put(f);
		return -1;
	}
	if (flags & O_PATH) { /* a descriptor for fstat and *at(2): it reads nothing, as the kernel's */
		shim_enter();
		filemap_close(f->m);
		shim_leave();
		f->m = NULL;
	}
	if (shim_install(fd, f) < 0) {
		int err = errno;
		REAL(close)(fd);
		shim_put(f);
		errno = err;
		return -1;
	}
	shim_put(f); /* the table's reference is the descriptor's */
	return fd;
}

int shim_stat_uri(const char *uri, struct stat *st)
{
	if (uri[0] == '\0') {
		errno = ENOENT;
		return -1;
	}
	shim_started();
	filemap_t *m = open_map(uri, NULL);
	if (m == NULL) {
		int err = errno;
		shim_report(err);
		errno = open_errno(err);
		return -1;
	}
	describe(m, st);
	shim_enter();
	filemap_close(m);
	shim_leave();
	return 0;
}

int shim_fstat(struct shim_file *f, int fd, struct stat *st)
{
	if (f->local)
		return REAL(fstat)(fd, st);
	*st = f->st;
	return 0;
}

/* slow_read is filemap_read_at, with read(2)'s answer for a bad page: the
 * bytes before it, else EIO. */
static ssize_t slow_read(filemap_t *m, void *buf, size_t n, uint64_t off)
{
	shim_enter();
	ssize_t got = filemap_read_at(m, buf, n, off);
	shim_leave();
	if (got >= 0)
		return got;
	int err = filemap_errno();
	int64_t at = filemap_error_offset();
	shim_report(err);
	if (err == EIO && at > (int64_t)off)
		return (ssize_t)((uint64_t)at - off);
	errno = err;
	return -1;
}

/*
 * mine returns the object as this process may read it: f's own, or, in a
 * fork child that has no copy of its mapping (MADV_DONTFORK: the kernel
 * grants UFFD_FEATURE_EVENT_FORK only with CAP_SYS_PTRACE), the object
 * opened again, at the same version, on first use: the child reads the
 * descriptor it inherited as the kernel's child reads an inherited file.
 * NULL, and errno, if that open fails.
 */
static filemap_t *mine(struct shim_file *f)
{
	if (!f->dontfork || f->pid == shim_pid)
		return f->m;
	pthread_mutex_lock(&f->own_lock);
	if (f->own_pid != shim_pid) {
		filemap_t *m = open_map(f->uri, filemap_version(f->m));
		if (m != NULL) {
			f->own = m;
			f->own_pid = shim_pid;
		} else {
			shim_report(errno);
		}
	}
	filemap_t *m = f->own_pid == shim_pid ? f->own : NULL;
	int err = errno;
	pthread_mutex_unlock(&f->own_lock);
	errno = err;
	return m;
}

static int advise(struct shim_file *f, int advice, uint64_t off, uint64_t len)
{
	filemap_t *m = mine(f);
	if (m == NULL)
		return errno;
	shim_enter();
	int rc = filemap_advise(m, advice, off, len);
	shim_leave();
	if (rc == 0)
		return 0;
	int err = filemap_errno();
	shim_report(err);
	return err;
}

/* resident says whether the cache holds the pages of [off, off+len) of
 * m's mapping: its first and last, as mincore(2) sees the cache file. */
static int resident(filemap_t *m, uint64_t off, uint64_t len)
{
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);
	const char *base = filemap_addr(m);
	uint64_t pages[2] = {off / ps * ps, (off + len - 1) / ps * ps};
	for (int i = 0; i < 2; i++) {
		unsigned char in = 0;
		if (mincore((void *)(base + pages[i]), ps, &in) < 0 || !(in & 1))
			return 0;
	}
	return 1;
}

/*
 * follow is the kernel's readahead for read(2) and pread(2)
 * (ondemand_readahead): a reader that goes on where it left off gets a
 * window read ahead of it, in the background, whatever the advice,
 * doubling from 128 KiB to 8 MiB, asked for again when the reader is
 * half way through the last. The handler's own readahead is made for a
 * mapping's faults, whose read-around, under NORMAL advice, reads a
 * stream several times slower. A window whose pages the cache holds is
 * not asked for: a warm reader sends no message.
 */
static void follow(struct shim_file *f, filemap_t *m, uint64_t off, size_t n)
{
	uint64_t ask = 0, len = 0;
	pthread_mutex_lock(&f->ra_lock);
	if (!f->advised) {
		if (off != f->next) { /* not a stream (yet): the handler's read-around */
			f->ra_end = 0;
			f->ra_size = RA_MIN;
		} else if (off + n > f->ra_end || f->ra_end - (off + n) < f->ra_size / 2) {
			ask = off > f->ra_end ? off : f->ra_end;
			len = f->ra_size;
			f->ra_end = ask + len;
			f->ra_size = f->ra_size * 2 > RA_MAX ? RA_MAX : f->ra_size * 2;
		}
		f->next = off + n;
	}
	pthread_mutex_unlock(&f->ra_lock);
	if (len > 0 && ask < f->size) {
		len = len < f->size - ask ? len : f->size - ask;
		if (!resident(m, ask, len))
			advise(f, FILEMAP_WILLNEED, ask, len);
	}
}

ssize_t shim_pread(struct shim_file *f, void *buf, size_t len, uint64_t off)
{
	if (f->m == NULL) {
		errno = EBADF;
		return -1;
	}
	if (off >= f->size || len == 0)
		return 0;
	size_t n = len < MAX_RW ? len : MAX_RW;
	if (n > f->size - off)
		n = (size_t)(f->size - off);
	filemap_t *m = mine(f);
	if (m == NULL)
		return -1;
	follow(f, m, off, n);
	if (shim_guarded_copy(buf, (const char *)filemap_addr(m) + off, n) == 0)
		return (ssize_t)n;
	return slow_read(m, buf, n, off);
}

int shim_advise(struct shim_file *f, int advice, uint64_t off, uint64_t len)
{
	if (f->m == NULL)
		return EBADF;
	int a;
	switch (advice) {
	case POSIX_FADV_NORMAL:
		a = FILEMAP_NORMAL;
		break;
	case POSIX_FADV_RANDOM:
		a = FILEMAP_RANDOM;
		break;
	case POSIX_FADV_SEQUENTIAL:
		a = FILEMAP_SEQUENTIAL;
		break;
	case POSIX_FADV_WILLNEED:
		a = FILEMAP_WILLNEED;
		break;
	case POSIX_FADV_DONTNEED:
		a = FILEMAP_DONTNEED;
		break;
	case POSIX_FADV_NOREUSE:
		return 0;
	default:
		return EINVAL;
	}
	if (a == FILEMAP_NORMAL || a == FILEMAP_RANDOM || a == FILEMAP_SEQUENTIAL) {
		/* The mapping's advice is the program's now; under NORMAL, follow
		 * reads ahead of a stream, as the kernel's read(2) does. */
		pthread_mutex_lock(&f->ra_lock);
		f->advised = a != FILEMAP_NORMAL;
		pthread_mutex_unlock(&f->ra_lock);
		return advise(f, a, 0, 0);
	}
	if (off >= f->size)
		return 0; /* the kernel takes advice past the end, and does nothing */
	return advise(f, a, off, len);
}
