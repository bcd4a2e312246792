/*
 * The descriptor table: which of the program's descriptors are filemap
 * objects, as the kernel's file table says which are files. The program
 * holds a stand-in descriptor (an O_PATH one, which fails read(2) and
 * mmap(2) with EBADF), so the kernel numbers, dups, inherits and closes
 * them as any other; the table maps the number to the open file
 * description, struct shim_file, which dups share, offset included.
 *
 * Lookups take no lock while the slot is empty, which is every call on a
 * descriptor that is not filemap's; a full slot is read again under the
 * lock and referenced, so that a close in another thread cannot free the
 * file under a read. Slots live in chunks that are never freed.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "shim.h"

enum { CHUNK = 1024, CHUNKS = 1024 }; /* descriptors up to 2^20, the kernel's default nr_open */

static struct {
	pthread_mutex_t mu;
	atomic_int used; /* a file was ever installed */
	struct shim_file *_Atomic *_Atomic chunk[CHUNKS];
	struct shim_file *files; /* every file: in the table, mapped, or in a call */
} table = {.mu = PTHREAD_MUTEX_INITIALIZER};

void shim_fdtable_lock(void)
{
	pthread_mutex_lock(&table.mu);
}

void shim_fdtable_unlock(void)
{
	pthread_mutex_unlock(&table.mu);
}

int shim_any(void)
{
	return atomic_load_explicit(&table.used, memory_order_relaxed);
}

static struct shim_file *_Atomic *slot(int fd, int make)
{
	if (fd < 0 || fd >= CHUNK * CHUNKS)
		return NULL;
	struct shim_file *_Atomic *c = atomic_load_explicit(&table.chunk[fd / CHUNK], memory_order_acquire);
	if (c == NULL && make) {
		c = calloc(CHUNK, sizeof *c);
		if (c == NULL)
			return NULL;
		atomic_store_explicit(&table.chunk[fd / CHUNK], c, memory_order_release);
	}
	return c != NULL ? &c[fd % CHUNK] : NULL;
}

void shim_ref(struct shim_file *f)
{
	atomic_fetch_add(&f->refs, 1);
}

void shim_track(struct shim_file *f)
{
	pthread_mutex_lock(&table.mu);
	f->all_next = table.files;
	if (f->all_next != NULL)
		f->all_next->all_prev = f;
	table.files = f;
	pthread_mutex_unlock(&table.mu);
}

static void untrack(struct shim_file *f)
{
	pthread_mutex_lock(&table.mu);
	if (f->all_prev != NULL)
		f->all_prev->all_next = f->all_next;
	else if (table.files == f)
		table.files = f->all_next;
	if (f->all_next != NULL)
		f->all_next->all_prev = f->all_prev;
	pthread_mutex_unlock(&table.mu);
}

void shim_files_forked(void)
{
	for (struct shim_file *f = table.files; f != NULL; f = f->all_next) {
		pthread_mutex_init(&f->pos_lock, NULL);
		pthread_mutex_init(&f->ra_lock, NULL);
		pthread_mutex_init(&f->own_lock, NULL);
	}
}

void shim_put(struct shim_file *f)
{
	if (f == NULL || atomic_fetch_sub(&f->refs, 1) != 1)
		return;
	int saved = errno;
	untrack(f);
	shim_enter();
	if (f->own != NULL && f->own_pid == shim_pid)
		filemap_close(f->own);
	if (f->m != NULL)
		filemap_close(f->m);
	shim_leave();
	pthread_mutex_destroy(&f->pos_lock);
	pthread_mutex_destroy(&f->ra_lock);
	pthread_mutex_destroy(&f->own_lock);
	free(f->uri);
	free(f);
	errno = saved;
}

struct shim_file *shim_get(int fd)
{
	if (!shim_any())
		return NULL;
	struct shim_file *_Atomic *s = slot(fd, 0);
	if (s == NULL || atomic_load_explicit(s, memory_order_relaxed) == NULL)
		return NULL;
	pthread_mutex_lock(&table.mu);
	struct shim_file *f = atomic_load(s);
	if (f != NULL)
		shim_ref(f);
	pthread_mutex_unlock(&table.mu);
	return f;
}

/* set puts f in fd's slot, under the lock, and returns what was there. */
static struct shim_file *set(struct shim_file *_Atomic *s, struct shim_file *f)
{
	if (f != NULL)
		shim_ref(f);
	return atomic_exchange(s, f);
}

int shim_install(int fd, struct shim_file *f)
{
	pthread_mutex_lock(&table.mu);
	struct shim_file *_Atomic *s = slot(fd, 1);
	struct shim_file *old = NULL;
	if (s != NULL) {
		atomic_store(&table.used, 1);
		old = set(s, f);
	}
	pthread_mutex_unlock(&table.mu);
	shim_put(old); /* a descriptor closed behind the shim's back (a raw close(2)) */
	if (s == NULL) {
		errno = EMFILE;
		return -1;
	}
	return 0;
}

/*
 * The slot is emptied before the descriptor is closed: until close(2)
 * returns, no other thread can be given the number, and once it can, the
 * slot no longer claims it.
 */
int shim_close(int fd)
{
	/* An empty slot stays empty while fd is open: only a new descriptor's
	 * slot is filled. So most closes take no lock. */
	struct shim_file *_Atomic *s = slot(fd, 0);
	if (s == NULL || atomic_load_explicit(s, memory_order_relaxed) == NULL)
		return REAL(close)(fd);
	struct shim_file *f = set(s, NULL);
	pthread_mutex_unlock(&table.mu);
	int rc = REAL(close)(fd);
	shim_put(f);
	return rc;
}

/*
 * shim_dup_call dups as the kernel does, under the table's lock, so that
 * the new number is the old one's file from the moment it exists, and a
 * descriptor dup2 closes implicitly loses its file at once. One of oldfd,
 * newfd is filemap's.
 */
int shim_dup_call(int oldfd, int newfd, int flags, int how)
{
	pthread_mutex_lock(&table.mu);
	struct shim_file *_Atomic *from = slot(oldfd, 0);
	struct shim_file *f = from != NULL ? atomic_load(from) : NULL;
	int fd;
	switch (how) {
	case SHIM_DUP:
		fd = REAL(dup)(oldfd);
		break;
	case SHIM_DUP2:
		fd = REAL(dup2)(oldfd, newfd);
		break;
	case SHIM_DUP3:
		fd = REAL(dup3)(oldfd, newfd, flags);
		break;
	default:
		fd = REAL(fcntl)(oldfd, how == SHIM_FDUPFD ? F_DUPFD : F_DUPFD_CLOEXEC, newfd);
		break;
	}
	struct shim_file *old = NULL;
	if (fd >= 0 && fd != oldfd) {
		struct shim_file *_Atomic *to = slot(fd, f != NULL);
		if (to != NULL)
			old = set(to, f);
		else if (f != NULL) { /* beyond the table: the program must not get it */
			REAL(close)(fd);
			fd = -1;
			errno = EMFILE;
		}
	}
	pthread_mutex_unlock(&table.mu);
	shim_put(old);
	return fd;
}

void shim_forget_range(unsigned first, unsigned last, struct shim_file ***out, size_t *n)
{
	*out = NULL;
	*n = 0;
	if (!shim_any())
		return;
	size_t cap = 0;
	pthread_mutex_lock(&table.mu);
	for (unsigned c = first / CHUNK; c < CHUNKS && c <= last / CHUNK; c++) {
		struct shim_file *_Atomic *chunk = atomic_load(&table.chunk[c]);
		if (chunk == NULL)
			continue;
		for (unsigned i = 0; i < CHUNK; i++) {
			unsigned fd = c * CHUNK + i;
			if (fd < first || fd > last || atomic_load(&chunk[i]) == NULL)
				continue;
			struct shim_file *f = set(&chunk[i], NULL);
			if (*n == cap) {
				size_t ncap = cap ? cap * 2 : 16;
				struct shim_file **grown = realloc(*out, ncap * sizeof **out);
				if (grown == NULL)
					continue; /* f is leaked: better than a slot that outlives its descriptor */
				*out = grown;
				cap = ncap;
			}
			(*out)[(*n)++] = f;
		}
	}
	pthread_mutex_unlock(&table.mu);
}
