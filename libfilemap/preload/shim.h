/*
 * libfilemap-preload: what its files share. Every name here is hidden
 * (-fvisibility=hidden, and the version script exports only the libc
 * names the shim stands in for) and starts with shim_.
 *
 * The shim is three tables and the functions that consult them: which
 * paths are filemap's (path.c), which descriptors are (fdtable.c), which
 * address ranges are (maptable.c). A program's call on anything else goes
 * to libc as it came, after one check.
 */
#ifndef SHIM_H
#define SHIM_H

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "filemap.h"

#define SHIM_HIDDEN __attribute__((visibility("hidden")))
#define SHIM_TLS __attribute__((tls_model("initial-exec")))

/*
 * real.c: libc's own functions, found with dlsym(RTLD_NEXT) on first use.
 *
 * shim_real returns the function named, resolving it into *slot once.
 */
void *shim_real(void *_Atomic *slot, const char *name) SHIM_HIDDEN;

/* REAL(open) is libc's open, typed as the prototype in its header. */
#define REAL(fn)                                                                                           \
	({                                                                                                 \
		static void *_Atomic shim_slot_##fn;                                                      \
		(__typeof__(&fn))shim_real(&shim_slot_##fn, #fn);                                         \
	})

/*
 * The library's own calls to open, mmap, close... land in this shared
 * object's interposers too: they are the first definitions the dynamic
 * linker finds. While a thread is inside libfilemap, shim_inlib is set
 * and every interposer passes straight to libc.
 */
extern SHIM_TLS __thread int shim_inlib SHIM_HIDDEN;

static inline void shim_enter(void)
{
	shim_inlib++;
}

static inline void shim_leave(void)
{
	shim_inlib--;
}

/* shim_pid is this process's pid, kept by a fork handler: getpid(2) is a
 * system call, and reads ask it. */
extern pid_t shim_pid SHIM_HIDDEN;

/* shim_warn writes "filemap-preload: MESSAGE" to standard error with
 * write(2): no stdio, whose locks the program may hold. */
void shim_warn(const char *fmt, ...) SHIM_HIDDEN __attribute__((format(printf, 1, 2)));

/* shim_report warns with the library's message for an error a program's
 * errno cannot tell (EIO, a handler that cannot start...). */
void shim_report(int err) SHIM_HIDDEN;

/* shim_started does what the first object needs, once: fork handlers,
 * the SIGBUS guard. */
void shim_started(void) SHIM_HIDDEN;

/* open(2) reads a mode argument, and creates a file, with O_CREAT or
 * O_TMPFILE (whose bits include O_DIRECTORY's), as glibc's
 * __OPEN_NEEDS_MODE says. */
#define SHIM_CREATES(flags) (((flags) & O_CREAT) != 0 || ((flags) & __O_TMPFILE) == __O_TMPFILE)

/* path.c: which paths are filemap's. */

enum shim_kind {
	SHIM_NONE,   /* libc's */
	SHIM_REMOTE, /* an object of the handler's: read-only, always */
	SHIM_LOCAL,  /* a file under $FILEMAP_PRELOAD_DIRS: read-only opens are filemap's */
};

enum { SHIM_URI_MAX = PATH_MAX + 64 };

/* shim_classify says whose path (relative to dirfd, as openat takes it)
 * is; for SHIM_REMOTE and SHIM_LOCAL it writes into uri the name to give
 * filemap_open. A remote path that names no object (the prefix alone, a
 * bucket, an unknown scheme) is SHIM_REMOTE with uri "". */
enum shim_kind shim_classify(int dirfd, const char *path, char uri[SHIM_URI_MAX]) SHIM_HIDDEN;

/* shim_remote says whether a call on path (relative to dirfd) is the
 * shim's to answer as a remote name, and writes its uri as shim_classify
 * does. */
static inline int shim_remote(int dirfd, const char *path, char uri[SHIM_URI_MAX])
{
	return !shim_inlib && shim_classify(dirfd, path, uri) == SHIM_REMOTE;
}

/* fdtable.c: the program's descriptors that are filemap objects. */

/* An open file description: what open(2) made, shared by its dups. */
struct shim_file {
	atomic_int refs;  /* descriptors, mappings and calls in progress */
	filemap_t *m;     /* NULL for an O_PATH open */
	uint64_t size;
	int local;        /* a local file: the kernel answers fstat of its descriptor */
	int dontfork;     /* the mapping is MADV_DONTFORK: a fork child has none */
	pid_t pid;        /* the process that opened it */
	char *uri;        /* what filemap_open was given, to open it again in such a child */
	struct stat st;   /* what fstat says of a remote object */
	int status;       /* the F_GETFL bits a program may set: O_NONBLOCK, O_NOATIME... */
	pthread_mutex_t pos_lock; /* read(2) and lseek(2) move pos one at a time, as the kernel's f_pos_lock */
	uint64_t pos;

	/* The kernel's readahead for read(2) (object.c, follow): a window
	 * asked ahead of a reader seen to go on where it left off. */
	pthread_mutex_t ra_lock;
	int advised;      /* the program said SEQUENTIAL or RANDOM: its word stands */
	uint64_t next;    /* where the last read ended */
	uint64_t ra_end;  /* what is asked for, [?, ra_end) */
	uint64_t ra_size; /* the next window's size */

	/* In a fork child that has no copy of the mapping, the object opened
	 * again (object.c, mine). */
	pthread_mutex_t own_lock;
	filemap_t *own;
	pid_t own_pid;

	struct shim_file *all_prev, *all_next; /* every file, for a fork child's locks (fdtable.c) */
};

/* shim_any says whether any descriptor is, or was, filemap's: one load,
 * false until the first object is opened. */
int shim_any(void) SHIM_HIDDEN;

/* shim_get returns fd's file, referenced, or NULL if fd is not filemap's. */
struct shim_file *shim_get(int fd) SHIM_HIDDEN;
void shim_ref(struct shim_file *f) SHIM_HIDDEN;
/* shim_put drops a reference; the last closes the object. It keeps errno,
 * so that a call can return its own errno after dropping its reference. */
void shim_put(struct shim_file *f) SHIM_HIDDEN;

/* shim_ours returns fd's file, referenced, if a call on fd is the shim's to
 * answer; NULL sends the call to libc. */
static inline struct shim_file *shim_ours(int fd)
{
	return shim_inlib ? NULL : shim_get(fd);
}

/* shim_track adds a new file to the list of every file. */
void shim_track(struct shim_file *f) SHIM_HIDDEN;
/* shim_files_forked makes every file's locks new in a fork child, with
 * the table locked: a thread the child does not have may have held one. */
void shim_files_forked(void) SHIM_HIDDEN;

/* shim_install makes fd (a stand-in descriptor the program gets) f's;
 * -1 (EMFILE) if the table cannot hold fd. It takes a reference. */
int shim_install(int fd, struct shim_file *f) SHIM_HIDDEN;

/* shim_close closes fd: the descriptor, and its reference. */
int shim_close(int fd) SHIM_HIDDEN;
/* shim_dup_call dups oldfd as how says (dup, dup2, dup3, fcntl's
 * F_DUPFD and F_DUPFD_CLOEXEC), the new descriptor sharing its file. */
int shim_dup_call(int oldfd, int newfd, int flags, int how) SHIM_HIDDEN;
enum { SHIM_DUP, SHIM_DUP2, SHIM_DUP3, SHIM_FDUPFD, SHIM_FDUPFD_CLOEXEC };
/* shim_forget_range empties the slots of [first, last], which the kernel
 * is about to close, and hands back their files for shim_put. */
void shim_forget_range(unsigned first, unsigned last, struct shim_file ***out, size_t *n) SHIM_HIDDEN;

void shim_fdtable_lock(void) SHIM_HIDDEN;
void shim_fdtable_unlock(void) SHIM_HIDDEN;

/* object.c: objects opened, read and described. */

/* shim_open_object opens the object kind/uri names for a descriptor: the file,
 * with one reference, or NULL and errno. flags are open(2)'s, checked. */
struct shim_file *shim_open_object(enum shim_kind kind, const char *uri, int flags) SHIM_HIDDEN;

/* shim_openat is open(2) of a path shim_classify says is filemap's: a new
 * stand-in descriptor, -1 and errno, or, for a local file filemap cannot
 * serve, realfn's descriptor. */
int shim_openat(enum shim_kind kind, const char *uri, int dirfd, const char *path, int flags, mode_t mode,
		int (*realfn)(int, const char *, int, ...)) SHIM_HIDDEN;

/* shim_real_openat is libc's openat, as shim_openat's realfn. */
int shim_real_openat(int dirfd, const char *path, int flags, ...) SHIM_HIDDEN;

/* shim_stat_uri fills *st for the object uri names, as stat(2) would. */
int shim_stat_uri(const char *uri, struct stat *st) SHIM_HIDDEN;
/* shim_fstat fills *st for f; for a local file it asks the kernel, of fd. */
int shim_fstat(struct shim_file *f, int fd, struct stat *st) SHIM_HIDDEN;

/* shim_pread copies up to len bytes at off as pread(2) does: EIO (after
 * the bytes before the bad page, as a short read) and never SIGBUS. */
ssize_t shim_pread(struct shim_file *f, void *buf, size_t len, uint64_t off) SHIM_HIDDEN;
/* shim_advise applies posix_fadvise's advice to [off, off+len). */
int shim_advise(struct shim_file *f, int advice, uint64_t off, uint64_t len) SHIM_HIDDEN;

/* guard.c: a copy out of a mapping that turns SIGBUS into an error. */

/* shim_guard_install installs the SIGBUS handler, chained to the
 * program's, once. */
void shim_guard_install(void) SHIM_HIDDEN;
/* shim_guarded_copy copies n bytes from a filemap mapping: 0, or -1 if a
 * page of src raised SIGBUS (some bytes may have been copied), or -2 if
 * the guard cannot run now (the program replaced the handler, or this
 * thread blocks SIGBUS): then the caller copies another way. */
int shim_guarded_copy(void *dst, const void *src, size_t n) SHIM_HIDDEN;

/* maptable.c: the program's mappings of filemap objects. */

int shim_maps_any(void) SHIM_HIDDEN;
/* shim_mmap maps f as mmap(2) does. */
void *shim_mmap(struct shim_file *f, void *addr, size_t len, int prot, int flags, uint64_t off) SHIM_HIDDEN;
/* shim_munmap unmaps what of [addr, addr+len) is filemap's, and the rest
 * with libc; 1 if any was filemap's (rc set), 0 if none (nothing done). */
int shim_munmap(void *addr, size_t len, int *rc) SHIM_HIDDEN;
/* shim_madvise, shim_mprotect, shim_mremap: 1 if they handled the call. */
int shim_madvise(void *addr, size_t len, int advice, int *rc) SHIM_HIDDEN;
int shim_mprotect(void *addr, size_t len, int prot, int *rc) SHIM_HIDDEN;
int shim_mremap(void *old, size_t old_len, size_t new_len, int flags, void *new_addr, void **rc) SHIM_HIDDEN;
/* shim_maps_replaced says a mapping libc made at [addr, addr+len) with
 * MAP_FIXED has replaced what of filemap's was there. */
void shim_maps_replaced(void *addr, size_t len) SHIM_HIDDEN;

void shim_maptable_lock(void) SHIM_HIDDEN;
void shim_maptable_unlock(void) SHIM_HIDDEN;

/* stdio.c: FILE streams over stand-in descriptors. */
FILE *shim_fdopen_file(int fd, const char *mode) SHIM_HIDDEN;

#endif
