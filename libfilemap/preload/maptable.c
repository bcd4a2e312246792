/*
 * The mapping table: which address ranges of the program are filemap
 * ranges (filemap_map), as the kernel's VMAs of a file mapping are.
 *
 * The library maps and unmaps a range whole; a program may unmap part of
 * one, as munmap(2) allows. So each entry keeps the parts the program
 * still has ("live"), and what it unmaps is covered by an anonymous
 * PROT_NONE reservation: the pages are gone (an access is SIGSEGV, as
 * for an unmapped address), and no other mapping can be placed there
 * without MAP_FIXED, where filemap_unmap, once every part is gone, would
 * unmap it too. If a mapping is placed there with MAP_FIXED all the same,
 * the entry is "foreign": it is never handed to filemap_unmap, whose
 * munmap of the whole range would take the newcomer with it; its
 * userfaultfd and its record in the handler stay until the process exits.
 *
 * The library is never called under the table's lock (the library's
 * fork handler takes its own lock first, a thread holding ours might be
 * waiting for it): an entry is referenced while it is used outside.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "shim.h"

struct span {
	char *lo, *hi;
};

struct map {
	atomic_int refs; /* the table's, and calls in progress */
	filemap_range_t *r;
	struct shim_file *f; /* referenced, as a VMA references its file */
	char *addr;          /* the range as the library mapped it */
	size_t len;
	int shared;  /* MAP_SHARED: it may never be made writable */
	int foreign; /* a mapping not filemap's lies inside */
	struct span *live;
	size_t nlive;
};

static struct {
	pthread_mutex_t mu;
	atomic_int n;
	struct map **v;
	size_t len, cap;
} maps = {.mu = PTHREAD_MUTEX_INITIALIZER};

void shim_maptable_lock(void)
{
	pthread_mutex_lock(&maps.mu);
}

void shim_maptable_unlock(void)
{
	pthread_mutex_unlock(&maps.mu);
}

int shim_maps_any(void)
{
	return atomic_load_explicit(&maps.n, memory_order_relaxed) > 0;
}

static size_t page_size(void)
{
	return (size_t)sysconf(_SC_PAGESIZE);
}

static void unref(struct map *m)
{
	if (m == NULL || atomic_fetch_sub(&m->refs, 1) != 1)
		return;
	int saved = errno;
	if (!m->foreign) {
		shim_enter();
		filemap_unmap(m->r);
		shim_leave();
	}
	shim_put(m->f);
	free(m->live);
	free(m);
	errno = saved;
}

/* remove takes entry i out of the table, under the lock; the caller drops
 * the table's reference once unlocked. */
static struct map *remove_at(size_t i)
{
	struct map *m = maps.v[i];
	maps.v[i] = maps.v[--maps.len];
	atomic_fetch_sub(&maps.n, 1);
	return m;
}

static int add(struct map *m)
{
	pthread_mutex_lock(&maps.mu);
	if (maps.len == maps.cap) {
		size_t cap = maps.cap ? maps.cap * 2 : 16;
		struct map **v = realloc(maps.v, cap * sizeof *v);
		if (v == NULL) {
			pthread_mutex_unlock(&maps.mu);
			errno = ENOMEM;
			return -1;
		}
		maps.v = v;
		maps.cap = cap;
	}
	maps.v[maps.len++] = m;
	atomic_fetch_add(&maps.n, 1);
	pthread_mutex_unlock(&maps.mu);
	return 0;
}

static int overlaps(const struct map *m, const char *lo, const char *hi)
{
	return m->addr < hi && lo < m->addr + m->len;
}

/*
 * cut takes [lo, hi) out of m's live parts. reserve: cover what was live
 * there with a PROT_NONE reservation (an munmap); else a mapping of
 * libc's has replaced it (MAP_FIXED) and m is foreign. 1 if nothing of
 * m is left.
 */
static int cut(struct map *m, char *lo, char *hi, int reserve)
{
	struct span *out = malloc((m->nlive + 1) * sizeof *out);
	if (out == NULL)
		return 0; /* the part stays counted live: it is unmapped with the rest */
	size_t n = 0;
	for (size_t i = 0; i < m->nlive; i++) {
		struct span s = m->live[i];
		if (s.hi <= lo || hi <= s.lo) {
			out[n++] = s;
			continue;
		}
		char *a = s.lo > lo ? s.lo : lo, *b = s.hi < hi ? s.hi : hi;
		if (reserve)
			REAL(mmap)(a, (size_t)(b - a), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1,
				   0);
		if (s.lo < a)
			out[n++] = (struct span){s.lo, a};
		if (b < s.hi)
			out[n++] = (struct span){b, s.hi};
	}
	free(m->live);
	m->live = out;
	m->nlive = n;
	if (!reserve)
		m->foreign = 1;
	return n == 0;
}

/* cut_all cuts [lo, hi) out of every entry, under the lock, and returns
 * (malloc'd, *n of them) the entries left empty, removed from the table,
 * for unref. Out of memory, an empty entry stays in the table, unmapped
 * only by exit: never one unmapped that the program still has. */
static struct map **cut_all(char *lo, char *hi, int reserve, size_t *n)
{
	struct map **gone = malloc(maps.len * sizeof *gone + 1);
	*n = 0;
	for (size_t i = 0; i < maps.len;) {
		struct map *m = maps.v[i];
		if (overlaps(m, lo, hi) && cut(m, lo, hi, reserve) && gone != NULL) {
			gone[(*n)++] = remove_at(i);
			continue;
		}
		i++;
	}
	return gone;
}

static void unref_all(struct map **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		unref(v[i]);
	free(v);
}

void shim_maps_replaced(void *addr, size_t len)
{
	if (shim_inlib || !shim_maps_any())
		return;
	size_t n;
	pthread_mutex_lock(&maps.mu);
	struct map **gone = cut_all(addr, (char *)addr + len, 0, &n);
	pthread_mutex_unlock(&maps.mu);
	unref_all(gone, n);
}

void *shim_mmap(struct shim_file *f, void *addr, size_t len, int prot, int flags, uint64_t off)
{
	if (f->m == NULL) {
		errno = EBADF; /* an O_PATH descriptor */
		return MAP_FAILED;
	}
	struct map *m = calloc(1, sizeof *m);
	struct span *live = malloc(sizeof *live);
	if (m == NULL || live == NULL) {
		free(m);
		free(live);
		errno = ENOMEM;
		return MAP_FAILED;
	}
	/* Flags the kernel ignores for a file mapping; the library refuses what
	 * it cannot do (MAP_LOCKED, MAP_HUGETLB...) with EINVAL. */
	flags &= ~(MAP_DENYWRITE | MAP_EXECUTABLE | MAP_STACK);
	shim_enter();
	filemap_range_t *r = filemap_map(f->m, addr, len, prot, flags, off);
	shim_leave();
	if (r == NULL) {
		int err = filemap_errno();
		shim_report(err);
		free(m);
		free(live);
		errno = err;
		return MAP_FAILED;
	}
	shim_ref(f);
	*m = (struct map){.r = r, .f = f, .addr = filemap_range_addr(r), .len = filemap_range_len(r),
			  .shared = (flags & (MAP_SHARED | MAP_SHARED_VALIDATE)) != 0, .live = live, .nlive = 1};
	*live = (struct span){m->addr, m->addr + m->len};
	atomic_init(&m->refs, 1);
	if (flags & MAP_FIXED) /* it replaced whatever was there, filemap's too */
		shim_maps_replaced(m->addr, m->len);
	if (add(m) < 0) {
		int err = errno;
		unref(m);
		errno = err;
		return MAP_FAILED;
	}
	return m->addr;
}

/* unmap_gaps unmaps with libc what of [lo, hi) no entry's range holds;
 * the ranges' own pages are the library's to unmap. */
static void unmap_gaps(char *lo, char *hi, struct map **hit, size_t nhit)
{
	char *at = lo;
	while (at < hi) {
		char *next = hi; /* the start of the nearest range at or after at */
		char *skip = NULL;
		for (size_t i = 0; i < nhit; i++) {
			struct map *m = hit[i];
			if (m->addr <= at && at < m->addr + m->len) {
				skip = m->addr + m->len;
				break;
			}
			if (m->addr > at && m->addr < next)
				next = m->addr;
		}
		if (skip != NULL) {
			at = skip;
			continue;
		}
		REAL(munmap)(at, (size_t)(next - at));
		at = next;
	}
}

int shim_munmap(void *addr, size_t len, int *rc)
{
	if (shim_inlib || !shim_maps_any())
		return 0;
	size_t ps = page_size();
	char *lo = addr, *hi = lo + (len + ps - 1) / ps * ps;
	if ((uintptr_t)addr % ps != 0 || len == 0 || hi < lo)
		return 0; /* libc's EINVAL */
	size_t nhit = 0, ngone;
	pthread_mutex_lock(&maps.mu);
	struct map **hit = malloc(maps.len * sizeof *hit + 1);
	for (size_t i = 0; hit != NULL && i < maps.len; i++)
		if (overlaps(maps.v[i], lo, hi)) {
			hit[nhit] = maps.v[i];
			atomic_fetch_add(&hit[nhit++]->refs, 1);
		}
	if (nhit == 0) {
		pthread_mutex_unlock(&maps.mu);
		free(hit);
		if (hit != NULL)
			return 0;
		*rc = -1; /* not knowing which ranges are filemap's, unmapping none */
		errno = ENOMEM;
		return 1;
	}
	struct map **gone = cut_all(lo, hi, 1, &ngone);
	unmap_gaps(lo, hi, hit, nhit);
	pthread_mutex_unlock(&maps.mu);
	unref_all(hit, nhit);
	unref_all(gone, ngone);
	*rc = 0;
	return 1;
}

/* live_parts collects, referenced, the live parts of entries within
 * [lo, hi): what madvise and mprotect act on. */
struct part {
	struct map *m;
	char *lo, *hi;
};

static size_t live_parts(char *lo, char *hi, struct part *out, size_t cap)
{
	size_t n = 0;
	pthread_mutex_lock(&maps.mu);
	for (size_t i = 0; i < maps.len; i++) {
		struct map *m = maps.v[i];
		if (!overlaps(m, lo, hi))
			continue;
		for (size_t k = 0; k < m->nlive && n < cap; k++) {
			char *a = m->live[k].lo > lo ? m->live[k].lo : lo, *b = m->live[k].hi < hi ? m->live[k].hi : hi;
			if (a >= b)
				continue;
			atomic_fetch_add(&m->refs, 1);
			out[n++] = (struct part){m, a, b};
		}
	}
	pthread_mutex_unlock(&maps.mu);
	return n;
}

static int filemap_advice(int advice)
{
	switch (advice) {
	case MADV_NORMAL:
		return FILEMAP_NORMAL;
	case MADV_RANDOM:
		return FILEMAP_RANDOM;
	case MADV_SEQUENTIAL:
		return FILEMAP_SEQUENTIAL;
	case MADV_WILLNEED:
		return FILEMAP_WILLNEED;
	case MADV_DONTNEED:
		return FILEMAP_DONTNEED;
	}
	return -1;
}

/* advise_part gives one part its advice: filemap's five to the library,
 * which tells the handler; the rest to the kernel, except MADV_DOFORK of
 * a MADV_DONTFORK range, which would give a fork child a copy no handler
 * serves, and those the kernel refuses for a private file mapping
 * anyway. */
static int advise_part(struct part *p, int advice)
{
	int a = filemap_advice(advice);
	if (a >= 0) {
		shim_enter();
		int rc = filemap_range_advise(p->m->r, a, (size_t)(p->lo - p->m->addr), (size_t)(p->hi - p->lo));
		shim_leave();
		if (rc < 0) {
			int err = filemap_errno();
			shim_report(err);
			errno = err;
		}
		return rc;
	}
	if ((advice == MADV_DOFORK && p->m->f->dontfork) || advice == MADV_FREE || advice == MADV_REMOVE ||
	    advice == MADV_WIPEONFORK) {
		errno = EINVAL;
		return -1;
	}
	return REAL(madvise)(p->lo, (size_t)(p->hi - p->lo), advice);
}

enum { MAX_PARTS = 64 };

int shim_madvise(void *addr, size_t len, int advice, int *rc)
{
	if (shim_inlib || !shim_maps_any())
		return 0;
	struct part parts[MAX_PARTS];
	char *lo = addr, *hi = lo + len;
	size_t n = live_parts(lo, hi, parts, MAX_PARTS);
	if (n == 0)
		return 0;
	*rc = 0;
	int err = 0;
	/* The parts that are not filemap's get libc's madvise, piece by piece. */
	char *at = lo;
	while (at < hi) {
		char *next = hi;
		struct part *in = NULL;
		for (size_t i = 0; i < n; i++) {
			if (parts[i].lo <= at && at < parts[i].hi)
				in = &parts[i];
			else if (parts[i].lo > at && parts[i].lo < next)
				next = parts[i].lo;
		}
		int r = in != NULL ? advise_part(in, advice) : REAL(madvise)(at, (size_t)(next - at), advice);
		if (r < 0 && *rc == 0) {
			*rc = -1;
			err = errno;
		}
		at = in != NULL ? in->hi : next;
	}
	for (size_t i = 0; i < n; i++)
		unref(parts[i].m);
	if (*rc < 0)
		errno = err;
	return 1;
}

/* A shared mapping of a read-only object may not become writable, as for
 * a file opened read-only; a private one may (copy-on-write). */
int shim_mprotect(void *addr, size_t len, int prot, int *rc)
{
	if (shim_inlib || !shim_maps_any() || !(prot & PROT_WRITE))
		return 0;
	struct part parts[MAX_PARTS];
	size_t n = live_parts(addr, (char *)addr + len, parts, MAX_PARTS);
	int shared = 0;
	for (size_t i = 0; i < n; i++) {
		shared |= parts[i].m->shared;
		unref(parts[i].m);
	}
	if (!shared)
		return 0;
	errno = EACCES;
	*rc = -1;
	return 1;
}

/*
 * mremap of a filemap range: shrinking in place is an munmap of the
 * tail; growing or moving would need the library to map the range again
 * and carry over its written pages, so it fails as the kernel's does
 * when it cannot grow in place, ENOMEM, and programs that grow a mapping
 * (SQLite) fall back to mapping it again.
 */
int shim_mremap(void *old, size_t old_len, size_t new_len, int flags, void *new_addr, void **rc)
{
	(void)new_addr;
	if (shim_inlib || !shim_maps_any())
		return 0;
	struct part parts[1];
	size_t n = live_parts(old, (char *)old + (old_len ? old_len : 1), parts, 1);
	if (n == 0)
		return 0;
	unref(parts[0].m);
	size_t ps = page_size();
	old_len = (old_len + ps - 1) / ps * ps;
	new_len = (new_len + ps - 1) / ps * ps;
	if (new_len == 0 || (flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP)) || (uintptr_t)old % ps) {
		errno = EINVAL;
		*rc = MAP_FAILED;
		return 1;
	}
	if (new_len <= old_len && !(flags & (MREMAP_FIXED | MREMAP_DONTUNMAP))) {
		int r;
		if (new_len < old_len)
			shim_munmap((char *)old + new_len, old_len - new_len, &r);
		*rc = old;
		return 1;
	}
	errno = ENOMEM;
	*rc = MAP_FAILED;
	return 1;
}
