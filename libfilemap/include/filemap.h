/*
 * libfilemap: filemap for C programs. It maps an object -- a local file, an
 * http:// or https:// URL, an s3://BUCKET/KEY object -- into memory whose
 * pages are read in on first touch: the page faults go, through
 * userfaultfd(2), to the filemap handler (`filemap serve`, or a private
 * handler the library starts), which serves them from a page cache shared
 * by every process of the user. The contract is the kernel's mmap of a
 * file: concurrent faults on a page cause one read, an access past the end
 * gets SIGBUS, a page that cannot be read gets SIGBUS for that page alone
 * (filemap_read_at turns it into an error naming the offset), a page
 * already cached costs no I/O and no message. docs/protocol.md in the
 * filemap repository is the protocol this library speaks.
 *
 *	filemap_t *m = filemap_open("s3://models/weights.bin", NULL);
 *	if (m == NULL) {
 *		fprintf(stderr, "%s\n", filemap_errmsg());
 *		return -1;
 *	}
 *	const unsigned char *p = filemap_addr(m); // read-only, filemap_size(m) bytes
 *	ssize_t n = filemap_read_at(m, buf, sizeof buf, off); // -1, errno EIO: filemap_error_offset()
 *	filemap_close(m);
 *
 * The handler. With no socket named (filemap_options.socket, else
 * $FILEMAP_SOCKET), the first open starts a private handler: the `filemap`
 * executable found at $FILEMAP_EXECUTABLE, else next to this library (the
 * directory of libfilemap.so, or of the program it is linked into), else on
 * PATH. It is a child process of the one that opened (in a process group of
 * its own, so a terminal's ^C does not reach it), serves that process and
 * its fork(2) children, and exits when they all have. A program that waits
 * for any child (wait(2), waitpid(-1, ...)) sees it there.
 *
 * Cost. Until its first filemap_open a process has no thread, signal
 * handler, connection or child from this library; after it, a connection
 * per process (and a private handler), and no thread or signal handler
 * ever.
 *
 * Threads. Every function may be called from any thread. An object or a
 * range may be used by several threads at once, but not while, or after,
 * it is closed.
 *
 * fork(2). A child made by fork without exec keeps the parent's mappings,
 * as it keeps a kernel mapping of a file, and its faults are served: the
 * library asks the kernel for UFFD_FEATURE_EVENT_FORK, which tells the
 * handler of the child. The kernel grants it only to processes with
 * CAP_SYS_PTRACE (root, usually); without it the mappings are
 * MADV_DONTFORK and a child has none of them (filemap_stat says so with
 * FILEMAP_DONTFORK; in the child filemap_read_at fails with EBADF). In the
 * child, an inherited object may be read (in memory or with
 * filemap_read_at), advised (only DONTNEED does anything there), mapped
 * again with filemap_map, and closed, which only unmaps it. The handler
 * serves the child's copies for as long as the child maps them, whatever
 * its parent does (closes them, exits) and whatever descriptors the child
 * closes (closefrom(3)); a handler restarted in the meantime serves them
 * too. What the child opens goes on a connection of its own. fork(2)
 * returns once the handler has heard of the child (while no handler runs,
 * it waits), and waits while another thread is inside a call of this
 * library that holds its lock.
 *
 * Errors. A function that fails returns NULL or -1 and sets errno;
 * filemap_errmsg() is a message for people naming the object (its
 * credentials, a URL's password or a presigned URL's signature, shown as
 * ***) and, where there is one, the offset; filemap_errno() and
 * filemap_error_offset() keep the rest. They are this thread's, until its
 * next failing call. errno is EIO for a page that cannot be read (or any
 * other failure of the handler's); ENOENT, EACCES, EISDIR, EINVAL for an
 * object that is missing, forbidden, a directory, not a regular file or a
 * bad URI; ESTALE for a version the object no longer has; EMFILE or ENOMEM
 * for the handler's per-client limits; ENOTCONN when the handler is gone
 * (its faults wait for the next one: they never read zeros); ENOEXEC when
 * no handler can be started.
 */
#ifndef FILEMAP_H
#define FILEMAP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FILEMAP_API __attribute__((visibility("default")))

/* An open object and its mapping, the whole object from offset 0. */
typedef struct filemap filemap_t;

/* A further mapping of part of an open object (filemap_map). */
typedef struct filemap_range filemap_range_t;

/* How a mapping will be read, as madvise(2) says it. */
enum filemap_advice {
	FILEMAP_NORMAL = 0,     /* read-around: the pages around a miss */
	FILEMAP_RANDOM = 1,     /* the faulting page alone */
	FILEMAP_SEQUENTIAL = 2, /* a large window ahead of a miss */
	FILEMAP_WILLNEED = 3,   /* read the range now, in the background */
	FILEMAP_DONTNEED = 4,   /* drop the range from this mapping (not from the shared cache) */
};

/* filemap_options.flags, and filemap_stat.flags */
#define FILEMAP_COPY_ON_WRITE 0x1u /* writable as MAP_PRIVATE is: writes go to private copies */
/* filemap_stat.flags only */
#define FILEMAP_INHERITED 0x100u /* opened by an ancestor process: this one has it through fork(2) */
#define FILEMAP_DONTFORK 0x200u  /* the mapping is MADV_DONTFORK: a fork(2) child does not have it */

/*
 * Options of filemap_open; NULL is all defaults. Zero it before setting
 * fields (struct filemap_options o = {0};): later versions add fields in
 * reserved, which must be zero.
 */
struct filemap_options {
	const char *socket;  /* the handler's socket; NULL: $FILEMAP_SOCKET, else a private handler */
	const char *version; /* the version to map, as filemap_version names it; NULL: the current one */
	int advice;          /* FILEMAP_NORMAL, FILEMAP_RANDOM or FILEMAP_SEQUENTIAL */
	unsigned int flags;  /* FILEMAP_COPY_ON_WRITE */
	void *reserved[4];
};

/* What filemap_stat says of an open object. */
struct filemap_stat {
	uint64_t size;       /* bytes */
	const char *version; /* the version mapped (a file: "SIZE@MTIME_NS"; S3: VersionId or ETag; HTTP: ETag) */
	const char *name;    /* the object, credentials redacted */
	size_t page_size;
	unsigned int flags;  /* FILEMAP_COPY_ON_WRITE, FILEMAP_INHERITED, FILEMAP_DONTFORK */
};

/*
 * filemap_open maps the object uri names: a path, file:///path,
 * http://..., https://... or s3://BUCKET/KEY. A local file is opened here,
 * with this process's credentials; a remote object is fetched by the
 * handler, and its version (ETag, VersionId) is pinned now. A missing,
 * unreadable or changed object is an error here, never SIGBUS later.
 * Returns NULL and sets errno on failure.
 */
FILEMAP_API filemap_t *filemap_open(const char *uri, const struct filemap_options *opts);

/* The mapping's first byte. Bytes past filemap_size() get SIGBUS. */
FILEMAP_API void *filemap_addr(const filemap_t *m);

/* The object's length in bytes. */
FILEMAP_API uint64_t filemap_size(const filemap_t *m);

/* The version mapped: pass it as filemap_options.version to map the same bytes. */
FILEMAP_API const char *filemap_version(const filemap_t *m);

/* Fills *st. The strings live as long as m. */
FILEMAP_API int filemap_stat(const filemap_t *m, struct filemap_stat *st);

/*
 * filemap_read_at copies up to len bytes at offset off of the object into
 * buf, as pread(2) does: it returns the bytes copied, fewer at the end of
 * the object, 0 at or past it. A page that cannot be read is not SIGBUS:
 * it returns -1 with errno EIO, filemap_error_offset() is the offset of the
 * first byte not copied (buf holds the bytes before it), and the next
 * access to that page reads it again (errors are not sticky).
 */
FILEMAP_API ssize_t filemap_read_at(filemap_t *m, void *buf, size_t len, uint64_t off);

/*
 * filemap_advise says how [off, off+len) of the object will be read; len 0
 * is to the end. NORMAL, RANDOM and SEQUENTIAL apply to the mapping's
 * future misses, WILLNEED reads the range in the background, DONTNEED drops
 * the range's pages from this mapping (and, copy-on-write, the pages
 * written): its next access maps the cache's pages again, as MADV_DONTNEED
 * does to a private mapping of a file.
 */
FILEMAP_API int filemap_advise(filemap_t *m, int advice, uint64_t off, uint64_t len);

/*
 * filemap_close unmaps the object's mapping and closes it. Ranges made by
 * filemap_map stay mapped until filemap_unmap, as mmap(2) outlives
 * close(2).
 */
FILEMAP_API int filemap_close(filemap_t *m);

/*
 * filemap_map maps len bytes of m from offset off (page-aligned) as mmap(2)
 * does: at addr, or near it, or exactly there with MAP_FIXED or
 * MAP_FIXED_NOREPLACE. prot is PROT_READ, with PROT_WRITE for a
 * copy-on-write mapping (MAP_PRIVATE), PROT_EXEC, or PROT_NONE. flags is
 * MAP_PRIVATE or MAP_SHARED (then read-only: EACCES with PROT_WRITE, as
 * for a file opened read-only), with MAP_FIXED, MAP_FIXED_NOREPLACE,
 * MAP_NORESERVE or MAP_POPULATE (which reads the range in now). Pages past
 * the object's end get SIGBUS, as a file's do. The range is served
 * through a userfaultfd of its own. Returns NULL and sets errno on failure.
 */
FILEMAP_API filemap_range_t *filemap_map(filemap_t *m, void *addr, size_t len, int prot, int flags,
					 uint64_t off);

/* The range's first byte, length, and offset in the object. */
FILEMAP_API void *filemap_range_addr(const filemap_range_t *r);
FILEMAP_API size_t filemap_range_len(const filemap_range_t *r);
FILEMAP_API uint64_t filemap_range_offset(const filemap_range_t *r);

/* filemap_advise for [off, off+len) of the range, off counted from its first byte; len 0 is to its end. */
FILEMAP_API int filemap_range_advise(filemap_range_t *r, int advice, size_t off, size_t len);

/* filemap_unmap unmaps the range and frees r. */
FILEMAP_API int filemap_unmap(filemap_range_t *r);

/* This thread's last error: a message ("" if none), its errno, and the object offset it names (-1 if none). */
FILEMAP_API const char *filemap_errmsg(void);
FILEMAP_API int filemap_errno(void);
FILEMAP_API int64_t filemap_error_offset(void);

#ifdef __cplusplus
}
#endif

#endif /* FILEMAP_H */
