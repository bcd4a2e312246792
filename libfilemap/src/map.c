/*
 * Ranges: the cache file mapped, registered with a userfaultfd of its own
 * and attached to the handler, which from then on serves its faults
 * (docs/protocol.md, "Mapping an object"). What the kernel's mmap(2),
 * munmap(2) and madvise(2) do for a file mapping, and a read of it that
 * cannot raise SIGBUS.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include "internal.h"

static size_t page_size(void)
{
	return (size_t)sysconf(_SC_PAGESIZE);
}

static const char *const advice_names[] = {"normal", "random", "sequential", "willneed", "dontneed"};

const char *fm_advice_name(int advice)
{
	return advice >= 0 && advice <= FILEMAP_DONTNEED ? advice_names[advice] : NULL;
}

/* check_map refuses what mmap(2) of a read-only file would, and what a
 * mapping the handler serves cannot be. */
static int check_map(const struct fm_map_req *q)
{
	size_t ps = page_size();
	int type = q->flags & (MAP_SHARED | MAP_PRIVATE | MAP_SHARED_VALIDATE);
	int known = MAP_SHARED | MAP_PRIVATE | MAP_SHARED_VALIDATE | MAP_FIXED | MAP_FIXED_NOREPLACE |
		    MAP_NORESERVE | MAP_POPULATE;
	if (q->len == 0 || q->off % ps != 0 || q->off + q->len < q->off)
		return fm_fail(EINVAL, (int64_t)q->off, "map %zu bytes at offset %" PRIu64 ": want a length and a page-aligned offset",
			       q->len, q->off);
	if (type != MAP_SHARED && type != MAP_PRIVATE && type != MAP_SHARED_VALIDATE)
		return fm_fail(EINVAL, -1, "map: flags %#x are neither MAP_PRIVATE nor MAP_SHARED", q->flags);
	if (q->flags & ~known)
		return fm_fail(EINVAL, -1, "map: flags %#x not supported (MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_NORESERVE and MAP_POPULATE are)",
			       q->flags & ~known);
	if (q->prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC))
		return fm_fail(EINVAL, -1, "map: protection %#x not supported", q->prot);
	/* The cache is read-only: a shared mapping may not write, as for a
	 * file opened read-only. A private one writes to its own copies. */
	if (type != MAP_PRIVATE && (q->prot & PROT_WRITE))
		return fm_fail(EACCES, -1, "map: a shared mapping of a read-only object cannot be writable (use MAP_PRIVATE)");
	return 0;
}

/* attach hands the handler a copy of the range's userfaultfd. Ours stays
 * open: if the handler dies, the range's faults wait for the next one
 * rather than read zeros. */
static int attach(filemap_range_t *r, const struct fm_map_req *q, const struct fm_uffd *u)
{
	int dup = fcntl(u->fd, F_DUPFD_CLOEXEC, 0);
	if (dup < 0)
		return fm_fail(errno, -1, "dup the userfaultfd: %s", strerror(errno));
	struct fm_json req;
	fm_json_begin(&req);
	fm_json_uint(&req, "handle", q->handle);
	fm_json_uint(&req, "addr", (uintptr_t)r->addr);
	fm_json_uint(&req, "len", r->len);
	fm_json_uint(&req, "offset", r->off);
	fm_json_uint(&req, "features", u->features);
	fm_json_str(&req, "advice", fm_advice_name(q->advice));
	struct fm_json_field reply[] = {{"region", FM_JSON_UINT, &r->region}};
	struct fm_call call = {.type = FM_ATTACH, .req = &req, .fds = &dup, .nfds = 1, .reply = reply, .nreply = 1};
	int rc = fm_call(q->conn, &call);
	close(dup);
	return rc;
}

/* release undoes a mapping that was never attached, or whose handler has
 * let go of it: unregistered first, so that the munmap raises no UNMAP
 * event that nobody would read. */
static void release(char *addr, size_t len, int uffd)
{
	fm_uffd_unregister(uffd, addr, len);
	close(uffd);
	munmap(addr, len);
}

/*
 * register_attach registers the range and attaches it, under the process
 * lock, which pthread_atfork takes: a fork(2) of this process waits until
 * the handler has read the fork event of every registered userfaultfd
 * with EVENT_FORK, and the child's copy of the descriptor keeps it open
 * meanwhile. A fork between registering and a failed Attach would raise an
 * event nobody ever reads: the fork would never return. fm_unmap
 * unregisters under the lock for the same reason.
 */
static int register_attach(filemap_range_t *r, const struct fm_map_req *q, const struct fm_uffd *u)
{
	fm_lock();
	int rc = fm_uffd_register(u->fd, r->addr, r->len);
	if (rc == 0 && (rc = attach(r, q, u)) < 0)
		fm_uffd_unregister(u->fd, r->addr, r->len);
	fm_unlock();
	return rc;
}

/* populate does MAP_POPULATE's work once the range is served: populating
 * it before would read the cache's holes as zeros. Best effort, as the
 * kernel's is. */
static void populate(filemap_range_t *r, int prot)
{
	if (prot & PROT_WRITE)
		madvise(r->addr, r->len, MADV_POPULATE_WRITE);
	else if (prot & PROT_READ)
		madvise(r->addr, r->len, MADV_POPULATE_READ);
}

/*
 * fm_map maps, registers and attaches a range. It is mapped PROT_NONE
 * until the handler serves it: a touch of the cache file's holes through
 * a mapping that no userfaultfd traps would read zeros, and put zero pages
 * into the cache every client shares. Private, whatever the caller asked:
 * userfaultfd registers only mappings that may be written, which a shared
 * mapping of the read-only cache is not; a private one's reads map the
 * cache's own pages.
 */
filemap_range_t *fm_map(const struct fm_map_req *q)
{
	if (check_map(q) < 0)
		return NULL;
	size_t ps = page_size(), len = (q->len + ps - 1) / ps * ps;
	int flags = MAP_PRIVATE | (q->flags & (MAP_FIXED | MAP_FIXED_NOREPLACE | MAP_NORESERVE));
	char *addr = mmap(q->addr, len, PROT_NONE, flags, q->cache, (off_t)q->off);
	if (addr == MAP_FAILED) {
		fm_fail(errno, -1, "mmap %zu bytes at offset %" PRIu64 ": %s", len, q->off, strerror(errno));
		return NULL;
	}
	filemap_range_t *r = malloc(sizeof *r);
	char *name = strdup(q->name);
	struct fm_uffd u = {.fd = -1};
	if (r == NULL || name == NULL) {
		free(name);
		free(r);
		r = NULL;
		fm_fail(ENOMEM, -1, "out of memory");
		goto fail;
	}
	*r = (filemap_range_t){.conn = q->conn, .pid = getpid(), .name = name, .addr = addr, .len = len,
			       .off = q->off, .size = q->size, .uffd = -1};
	if (fm_uffd_open(&u) < 0)
		goto fail;
	/* Without EVENT_FORK a child's copy would be unregistered: keep it out. */
	if (!u.fork && madvise(addr, len, MADV_DONTFORK) < 0) {
		fm_fail(errno, -1, "madvise(MADV_DONTFORK): %s", strerror(errno));
		goto fail;
	}
	r->dontfork = !u.fork;
	if (register_attach(r, q, &u) < 0)
		goto fail;
	r->uffd = u.fd;
	fm_conn_ref(q->conn);
	if (mprotect(addr, len, q->prot) < 0) {
		fm_fail(errno, -1, "mprotect: %s", strerror(errno));
		fm_unmap(r);
		return NULL;
	}
	if (q->flags & MAP_POPULATE)
		populate(r, q->prot);
	return r;
fail:
	if (u.fd >= 0)
		release(addr, len, u.fd);
	else
		munmap(addr, len);
	if (r != NULL)
		free(r->name);
	free(r);
	return NULL;
}

static int detach(filemap_range_t *r)
{
	struct fm_json req;
	fm_json_begin(&req);
	fm_json_uint(&req, "region", r->region);
	struct fm_call call = {.type = FM_DETACH, .req = &req};
	int rc = fm_call(r->conn, &call);
	/* A handler gone has let go of the region already. */
	return rc < 0 && errno != ENOTCONN ? -1 : 0;
}

/*
 * fm_unmap ends a range. Its own process detaches it: PROT_NONE first, so
 * that a stray access cannot read the cache's holes once unregistered. A
 * fork child's copy the handler serves through a userfaultfd of its own:
 * the child only unmaps it (the handler hears of that by the UNMAP event)
 * and closes its copy of the parent's userfaultfd.
 */
int fm_unmap(filemap_range_t *r)
{
	int rc = 0;
	if (r->pid == getpid()) {
		fm_lock(); /* no fork in between: register_attach */
		mprotect(r->addr, r->len, PROT_NONE);
		fm_uffd_unregister(r->uffd, r->addr, r->len);
		fm_unlock();
		rc = detach(r);
		close(r->uffd);
		munmap(r->addr, r->len);
	} else {
		if (!r->dontfork)
			munmap(r->addr, r->len);
		close(r->uffd);
	}
	fm_conn_put(r->conn);
	free(r->name);
	free(r);
	return rc;
}

/*
 * Reading without SIGBUS. A user-mode access to a page the handler could
 * not read raises SIGBUS; a kernel-mode one fails with EFAULT. So the copy
 * is process_vm_readv(2) from this process to itself: the kernel faults
 * the pages in through the handler (the userfaultfd is not user-mode-only),
 * and a poisoned page ends the copy there with EFAULT. The alternative,
 * MADV_POPULATE_READ then memcpy under a SIGBUS handler, needs a signal
 * handler in every program that links this library, fighting theirs. The
 * cost: on this machine's warm pages, 3.4 GB/s against memcpy's 7-14 GB/s;
 * a program that wants memcpy's speed reads filemap_addr() itself.
 *
 * Where process_vm_readv is refused (a seccomp filter: ENOSYS, EPERM), the
 * copy is MADV_POPULATE_READ, which reports a poisoned page as an error,
 * then memcpy. A page evicted between the two and then failing its read
 * again would raise SIGBUS there: a narrow window, only in such sandboxes.
 */
static ssize_t vm_read(void *dst, const void *src, size_t n)
{
	struct iovec local = {.iov_base = dst, .iov_len = n}, remote = {.iov_base = (void *)src, .iov_len = n};
	ssize_t got;
	while ((got = process_vm_readv(getpid(), &local, 1, &remote, 1, 0)) < 0 && errno == EINTR)
		;
	return got;
}

static int populate_read(const char *src, size_t n)
{
	size_t ps = page_size();
	const char *start = (const char *)((uintptr_t)src / ps * ps);
	int rc;
	while ((rc = madvise((void *)start, (size_t)(src + n - start), MADV_POPULATE_READ)) < 0 &&
	       (errno == EINTR || errno == EAGAIN))
		;
	return rc;
}

/* copy copies n bytes, returning how many it could: fewer if a page, of
 * the mapping or of dst, failed. */
static size_t copy(char *dst, const char *src, size_t n, int *fallback)
{
	if (!*fallback) {
		ssize_t got = vm_read(dst, src, n);
		if (got >= 0 || (errno != ENOSYS && errno != EPERM))
			return got > 0 ? (size_t)got : 0;
		*fallback = 1;
	}
	size_t ps = page_size(), done = 0;
	while (done < n) {
		size_t chunk = ps - (uintptr_t)(src + done) % ps;
		chunk = chunk < n - done ? chunk : n - done;
		if (populate_read(src + done, chunk) < 0)
			break;
		memcpy(dst + done, src + done, chunk);
		done += chunk;
	}
	return done;
}

/* readable says whether the mapping's byte at src can be read now. */
static int readable(const char *src, int fallback)
{
	char b;
	return fallback ? populate_read(src, 1) == 0 : vm_read(&b, src, 1) == 1;
}

ssize_t fm_read(filemap_range_t *r, void *buf, size_t len, uint64_t off)
{
	if (r->pid != getpid() && r->dontfork)
		return fm_fail(EBADF, -1, "the mapping was not inherited by this process: it is MADV_DONTFORK (the kernel "
				      "grants UFFD_FEATURE_EVENT_FORK only with CAP_SYS_PTRACE)");
	if (off >= r->size || len == 0)
		return 0;
	size_t n = r->size - off < len ? (size_t)(r->size - off) : len, done = 0, ps = page_size();
	n = n < SSIZE_MAX ? n : SSIZE_MAX;
	const char *src = r->addr + (off - r->off);
	int fallback = 0, retried = 0;
	while (done < n) {
		size_t got = copy((char *)buf + done, src + done, n - done, &fallback);
		done += got;
		if (done == n)
			break;
		if (got > 0)
			retried = 0;
		if (!readable(src + done, fallback)) {
			uint64_t page = (off + done) / ps * ps;
			/* Drop the poison from this mapping: the next access reads again. */
			madvise(r->addr + (page - r->off), ps, MADV_DONTNEED);
			return fm_fail(EIO, (int64_t)(off + done),
				       "cannot read the page at offset %" PRIu64 " (the %zu bytes before it were read)", page,
				       done);
		}
		if (retried) /* the mapping reads, the copy does not: the buffer is at fault */
			return fm_fail(EFAULT, -1, "read_at: the buffer at %p is not writable", (char *)buf + done);
		retried = 1;
	}
	return (ssize_t)n;
}

int fm_advise(filemap_range_t *r, int advice, uint64_t off, uint64_t len)
{
	if (advice == FILEMAP_DONTNEED && len > 0) {
		size_t ps = page_size();
		uint64_t start = (off - r->off) / ps * ps, end = (off - r->off + len + ps - 1) / ps * ps;
		end = end < r->len ? end : r->len;
		if (!(r->pid != getpid() && r->dontfork) && madvise(r->addr + start, end - start, MADV_DONTNEED) < 0)
			return fm_fail(errno, (int64_t)off, "madvise(MADV_DONTNEED) of [%" PRIu64 ", %" PRIu64 "): %s",
				       r->off + start, r->off + end, strerror(errno));
	}
	if (r->pid != getpid())
		return 0; /* a fork child's copy: the handler knows it by another region, not this process's */
	struct fm_json req;
	fm_json_begin(&req);
	fm_json_uint(&req, "region", r->region);
	fm_json_str(&req, "advice", fm_advice_name(advice));
	fm_json_uint(&req, "offset", off);
	fm_json_uint(&req, "length", len);
	struct fm_call call = {.type = FM_ADVISE, .req = &req};
	int rc = fm_call(r->conn, &call);
	/* Advice is a hint: with the handler gone there is nobody to take it. */
	return rc < 0 && errno != ENOTCONN ? -1 : 0;
}
