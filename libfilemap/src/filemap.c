/*
 * The library's interface (filemap.h): an open object is a handle on the
 * handler's cache of it, the cache file, and its mapping, a range of the
 * whole object (map.c). Errors get their context here, once: "filemap:
 * open NAME: " before what went wrong below.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

/* open_local opens a local object with this process's credentials: the
 * handler reads it through this descriptor, and never opens a client's
 * path with its own. */
static int open_local(struct filemap *m)
{
	int fd = open(m->uri.path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fm_fail(errno, -1, "%s", strerror(errno));
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int err = errno;
		close(fd);
		return fm_fail(err, -1, "fstat: %s", strerror(err));
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return S_ISDIR(st.st_mode) ? fm_fail(EISDIR, -1, "is a directory")
					   : fm_fail(EINVAL, -1, "not a regular file (mode %#o)", st.st_mode & S_IFMT);
	}
	m->file = fd;
	return 0;
}

/* open_handle asks m's handler for the object at version (NULL: the
 * current one) and fills in its handle, size, version and cache file. */
static int open_handle(struct filemap *m, const char *version)
{
	struct fm_json req;
	fm_json_begin(&req);
	fm_json_str(&req, "uri", m->uri.wire);
	if (version != NULL && *version != '\0')
		fm_json_str(&req, "version", version);
	int64_t size = -1;
	struct fm_json_field reply[] = {
		{"handle", FM_JSON_UINT, &m->handle},
		{"size", FM_JSON_INT, &size},
		{"version", FM_JSON_STRING, &m->version},
	};
	struct fm_call call = {.type = FM_OPEN, .req = &req, .fds = &m->file, .nfds = m->file >= 0,
			       .reply = reply, .nreply = 3, .rfds = &m->cache, .rnfds = 1};
	int rc = fm_call(m->conn, &call);
	if (rc == 0 && (size < 0 || m->handle == 0 || m->version == NULL))
		return fm_fail(EPROTO, -1, "the handler's open reply lacks a handle, size or version");
	m->size = (uint64_t)size;
	return rc;
}

/* connect_open opens m on this process's connection to its handler. A
 * connection the handler closed just before, as it died or handed over,
 * is only found out by using it: then once more, on a new one. */
static int connect_open(struct filemap *m, const char *version)
{
	for (int try = 0;; try++) {
		if ((m->conn = fm_conn_get(m->socket)) == NULL)
			return -1;
		if (open_handle(m, version) == 0)
			return 0;
		if (try > 0 || errno != ENOTCONN)
			return -1;
		fm_conn_put(m->conn);
		m->conn = NULL;
	}
}

static void close_handle(struct filemap *m)
{
	struct fm_json req;
	fm_json_begin(&req);
	fm_json_uint(&req, "handle", m->handle);
	struct fm_call call = {.type = FM_CLOSE, .req = &req};
	fm_call(m->conn, &call);
}

static int check_options(const struct filemap_options *o)
{
	for (size_t i = 0; i < sizeof o->reserved / sizeof o->reserved[0]; i++)
		if (o->reserved[i] != NULL)
			return fm_fail(EINVAL, -1, "filemap_options.reserved must be zero");
	if (o->advice != FILEMAP_NORMAL && o->advice != FILEMAP_RANDOM && o->advice != FILEMAP_SEQUENTIAL)
		return fm_fail(EINVAL, -1, "advice %d: want FILEMAP_NORMAL, FILEMAP_RANDOM or FILEMAP_SEQUENTIAL",
			       o->advice);
	if (o->flags & ~FILEMAP_COPY_ON_WRITE)
		return fm_fail(EINVAL, -1, "flags %#x: only FILEMAP_COPY_ON_WRITE is known", o->flags);
	return 0;
}

/* release frees what open made of m, in any state; it sends nothing. */
static void release(struct filemap *m)
{
	if (m->cache >= 0)
		close(m->cache);
	if (m->file >= 0)
		close(m->file);
	if (m->conn != NULL)
		fm_conn_put(m->conn);
	fm_uri_free(&m->uri);
	free(m->socket);
	free(m->version);
	free(m);
}

/* map_whole maps the whole object: its size in pages, at least one page,
 * whose bytes past the end get SIGBUS. */
static int map_whole(struct filemap *m)
{
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);
	uint64_t len = m->size ? (m->size + ps - 1) / ps * ps : ps;
	if (len > SIZE_MAX)
		return fm_fail(EFBIG, -1, "%" PRIu64 " bytes do not fit in this address space", m->size);
	struct fm_map_req q = {
		.conn = m->conn, .handle = m->handle, .cache = m->cache, .name = m->uri.name, .size = m->size,
		.len = (size_t)len, .flags = MAP_PRIVATE, .advice = m->advice,
		.prot = PROT_READ | (m->flags & FILEMAP_COPY_ON_WRITE ? PROT_WRITE : 0),
	};
	m->whole = fm_map(&q);
	return m->whole != NULL ? 0 : -1;
}

filemap_t *filemap_open(const char *uri, const struct filemap_options *opts)
{
	struct filemap_options o = {0};
	if (opts != NULL)
		o = *opts;
	struct filemap *m = calloc(1, sizeof *m);
	if (m == NULL) {
		fm_fail(ENOMEM, -1, "filemap: open %s: out of memory", uri ? uri : "");
		return NULL;
	}
	m->file = m->cache = -1;
	m->pid = getpid();
	m->flags = o.flags;
	m->advice = o.advice;
	if (o.socket != NULL && (m->socket = strdup(o.socket)) == NULL) {
		fm_fail(ENOMEM, -1, "filemap: open %s: out of memory", uri ? uri : "");
		release(m);
		return NULL;
	}
	if (fm_uri_parse(uri, &m->uri) < 0) {
		fm_prefix("filemap: ");
		release(m);
		return NULL;
	}
	if (check_options(&o) < 0 || (m->uri.path != NULL && open_local(m) < 0) || connect_open(m, o.version) < 0)
		goto fail;
	if (map_whole(m) < 0) {
		close_handle(m);
		goto fail;
	}
	return m;
fail:
	fm_prefix_open(m->uri.name);
	release(m);
	errno = filemap_errno();
	return NULL;
}

/* reopen opens m again on this process's own connection: m was opened by
 * an ancestor, whose connection this process must not write on. A fork
 * child's mapping of it comes from this handle. */
static struct filemap *reopen(struct filemap *m)
{
	struct filemap *again = calloc(1, sizeof *again);
	if (again == NULL) {
		fm_fail(ENOMEM, -1, "out of memory");
		return NULL;
	}
	again->cache = -1;
	again->file = m->file >= 0 ? fcntl(m->file, F_DUPFD_CLOEXEC, 0) : -1;
	again->pid = getpid();
	again->flags = m->flags;
	again->advice = m->advice;
	if (m->socket != NULL && (again->socket = strdup(m->socket)) == NULL) {
		release(again);
		fm_fail(ENOMEM, -1, "out of memory");
		return NULL;
	}
	/* The name sent, not the one written: a relative path is absolute there. */
	if ((m->file >= 0 && again->file < 0) || fm_uri_parse(m->uri.wire, &again->uri) < 0 ||
	    connect_open(again, m->version) < 0) {
		release(again);
		return NULL;
	}
	return again;
}

/* own returns the object to map m from in this process: m itself, or m
 * opened again by this process, if an ancestor opened it. */
static struct filemap *own(struct filemap *m)
{
	if (m->pid == getpid())
		return m;
	fm_lock();
	struct filemap *a = m->again;
	while (a != NULL && a->pid != getpid())
		a = a->again;
	fm_unlock();
	if (a != NULL)
		return a;
	/* Opened outside the lock, which fm_conn_get takes; another thread may
	 * have done the same meanwhile: then that one is kept. */
	struct filemap *fresh = reopen(m);
	if (fresh == NULL)
		return NULL;
	fm_lock();
	for (a = m->again; a != NULL && a->pid != getpid(); a = a->again)
		;
	if (a == NULL) {
		fresh->again = m->again;
		m->again = fresh;
	}
	fm_unlock();
	if (a != NULL) {
		filemap_close(fresh);
		return a;
	}
	return fresh;
}

int filemap_close(filemap_t *m)
{
	if (m == NULL)
		return 0;
	int rc = 0;
	if (m->whole != NULL && fm_unmap(m->whole) < 0) {
		fm_prefix("filemap: close %s: ", m->uri.name);
		rc = -1;
	}
	if (m->again != NULL)
		filemap_close(m->again);
	if (m->pid == getpid())
		close_handle(m);
	release(m);
	if (rc < 0)
		errno = filemap_errno();
	return rc;
}

void *filemap_addr(const filemap_t *m)
{
	return m->whole->addr;
}

uint64_t filemap_size(const filemap_t *m)
{
	return m->size;
}

const char *filemap_version(const filemap_t *m)
{
	return m->version;
}

int filemap_stat(const filemap_t *m, struct filemap_stat *st)
{
	*st = (struct filemap_stat){
		.size = m->size,
		.version = m->version,
		.name = m->uri.name,
		.page_size = (size_t)sysconf(_SC_PAGESIZE),
		.flags = (m->flags & FILEMAP_COPY_ON_WRITE) | (m->pid != getpid() ? FILEMAP_INHERITED : 0) |
			 (m->whole->dontfork ? FILEMAP_DONTFORK : 0),
	};
	return 0;
}

ssize_t filemap_read_at(filemap_t *m, void *buf, size_t len, uint64_t off)
{
	ssize_t n = fm_read(m->whole, buf, len, off);
	if (n < 0) {
		fm_prefix("filemap: %s: ", m->uri.name);
		errno = filemap_errno();
	}
	return n;
}

static int advise(filemap_range_t *r, int advice, uint64_t off, uint64_t len)
{
	if (fm_advice_name(advice) == NULL)
		return fm_fail(EINVAL, -1, "advise: unknown advice %d", advice);
	if (fm_advise(r, advice, off, len) < 0) {
		fm_prefix("advise %s: ", fm_advice_name(advice));
		return -1;
	}
	return 0;
}

int filemap_advise(filemap_t *m, int advice, uint64_t off, uint64_t len)
{
	int rc;
	if (off > m->size)
		rc = fm_fail(EINVAL, (int64_t)off, "advise: offset %" PRIu64 " is past the end (size %" PRIu64 ")",
			     off, m->size);
	else
		rc = advise(m->whole, advice, off, len == 0 || len > m->size - off ? m->size - off : len);
	if (rc < 0) {
		fm_prefix("filemap: %s: ", m->uri.name);
		errno = filemap_errno();
	}
	return rc;
}

filemap_range_t *filemap_map(filemap_t *m, void *addr, size_t len, int prot, int flags, uint64_t off)
{
	struct filemap *o = own(m);
	filemap_range_t *r = NULL;
	if (o != NULL) {
		struct fm_map_req q = {.conn = o->conn, .handle = o->handle, .cache = o->cache, .name = o->uri.name,
				       .size = o->size, .addr = addr, .len = len, .prot = prot, .flags = flags,
				       .off = off, .advice = o->advice};
		r = fm_map(&q);
	}
	if (r == NULL) {
		fm_prefix("filemap: %s: ", m->uri.name);
		errno = filemap_errno();
	}
	return r;
}

void *filemap_range_addr(const filemap_range_t *r)
{
	return r->addr;
}

size_t filemap_range_len(const filemap_range_t *r)
{
	return r->len;
}

uint64_t filemap_range_offset(const filemap_range_t *r)
{
	return r->off;
}

int filemap_range_advise(filemap_range_t *r, int advice, size_t off, size_t len)
{
	int rc;
	if (off > r->len)
		rc = fm_fail(EINVAL, -1, "advise: offset %zu is past the range's end (%zu bytes)", off, r->len);
	else
		rc = advise(r, advice, r->off + off, len == 0 || len > r->len - off ? r->len - off : len);
	if (rc < 0) {
		fm_prefix("filemap: %s: ", r->name);
		errno = filemap_errno();
	}
	return rc;
}

int filemap_unmap(filemap_range_t *r)
{
	if (r == NULL)
		return 0;
	char *name = strdup(r->name);
	int rc = fm_unmap(r);
	if (rc < 0) {
		fm_prefix("filemap: unmap %s: ", name ? name : "");
		errno = filemap_errno();
	}
	free(name);
	return rc;
}
