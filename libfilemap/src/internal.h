/*
 * What libfilemap's files share. Every name here is hidden from the
 * library's users (-fvisibility=hidden) and starts with fm_.
 */
#ifndef FM_INTERNAL_H
#define FM_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "filemap.h"

/* The frame header and its limits: docs/protocol.md, "Frames". */
enum {
	FM_VERSION = 1,
	FM_HEADER_SIZE = 16,
	FM_MAX_PAYLOAD = 64 << 10,
	FM_MAX_FDS = 4,
};

/* Frame types. */
enum {
	FM_HELLO = 1,
	FM_OPEN = 2,
	FM_ATTACH = 3,
	FM_ADVISE = 4,
	FM_DETACH = 5,
	FM_CLOSE = 6,
	FM_REPLY = 0x80,
	FM_ERROR = 0x81,
};

/* error.c: this thread's last error. */

/* fm_fail records an error and sets errno; it returns -1. off is the object
 * offset the error names, or -1. */
int fm_fail(int errnum, int64_t off, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* fm_prefix puts context before the last error's message: "filemap: open X: ". */
void fm_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* fm_prefix_open prefixes the error of an open of the object called name,
 * naming it unless the message does already: the handler's errors and the
 * stores' name their object themselves, and a name said twice in one line
 * only hides what went wrong (as the Go library's errors do). */
void fm_prefix_open(const char *name);

/* json.c: a tiny encoder, and a strict decoder of flat objects. */

struct fm_json {
	char *buf;
	size_t len, cap;
	int failed; /* out of memory, or over FM_MAX_PAYLOAD */
};

void fm_json_begin(struct fm_json *j);
void fm_json_str(struct fm_json *j, const char *key, const char *val);
void fm_json_int(struct fm_json *j, const char *key, int64_t v);
void fm_json_uint(struct fm_json *j, const char *key, uint64_t v);
void fm_json_bool(struct fm_json *j, const char *key, int v);
int fm_json_end(struct fm_json *j); /* -1 if it failed */
void fm_json_free(struct fm_json *j);

enum fm_json_kind {
	FM_JSON_STRING, /* dst is char **, malloc'd, NUL-free */
	FM_JSON_INT,    /* dst is int64_t * */
	FM_JSON_UINT,   /* dst is uint64_t * */
};

struct fm_json_field {
	const char *name;
	enum fm_json_kind kind;
	void *dst;
};

/* fm_json_decode decodes the object in p[0:n] into the fields named; other
 * fields are skipped, absent ones left alone. -1 (EPROTO) if p is not one
 * JSON object whose named fields have their kinds. */
int fm_json_decode(const char *p, size_t n, const struct fm_json_field *fields, size_t nfields);

/* frame.c: frames and their descriptors on a Unix stream socket. */

struct fm_frame {
	uint8_t type;
	uint32_t id;
	char *payload; /* NUL-terminated, length len */
	size_t len;
	int fds[FM_MAX_FDS];
	int nfds;
};

int fm_frame_send(int sock, uint8_t type, uint32_t id, const char *payload, size_t len, const int *fds,
		  int nfds);
int fm_frame_recv(int sock, struct fm_frame *f);
void fm_frame_release(struct fm_frame *f); /* closes its descriptors and frees its payload */

/* conn.c: the connection of each process to a handler, and its calls. */

struct fm_conn;

/* fm_conn_get returns a reference to this process's connection to the
 * handler at socket, else at $FILEMAP_SOCKET, else its private handler,
 * connecting first if it has none. */
struct fm_conn *fm_conn_get(const char *socket);
void fm_conn_ref(struct fm_conn *c);
void fm_conn_put(struct fm_conn *c);
/* fm_conn_mine says whether this process made c: only it may call on c. */
int fm_conn_mine(const struct fm_conn *c);

struct fm_call {
	uint8_t type;
	struct fm_json *req; /* begun and filled in: fm_call ends and frees it */
	const int *fds; /* sent with the request; the caller keeps them */
	int nfds;
	const struct fm_json_field *reply;
	size_t nreply;
	int *rfds; /* the reply's descriptors, rnfds of them exactly */
	int rnfds;
};

/* fm_call ends call->req, makes that request on c and decodes its reply,
 * and frees call->req, whatever becomes of the call. A daemon's error
 * frame becomes the error "MESSAGE" verbatim. */
int fm_call(struct fm_conn *c, const struct fm_call *call);

/* handler.c: the private handler. The caller holds the process lock. */
int fm_private_socket(char *path, size_t cap);

/* conn.c: the process lock, which handler.c's state also lives under. */
void fm_lock(void);
void fm_unlock(void);

/* uri.c: object names. */

struct fm_uri {
	char *raw;   /* as the user wrote it, for the handler: never shown */
	char *name;  /* for people: credentials redacted */
	char *path;  /* a local file's path, decoded; NULL for a remote object */
	char *wire;  /* what Open sends: raw, or a relative path made absolute */
};

int fm_uri_parse(const char *s, struct fm_uri *u);
void fm_uri_free(struct fm_uri *u);
char *fm_redact(const char *s);

/* uffd.c: userfaultfd for the library's mappings. */

struct fm_uffd {
	int fd;
	uint64_t features; /* what UFFDIO_API granted */
	int fork;          /* UFFD_FEATURE_EVENT_FORK granted: children are served */
};

int fm_uffd_open(struct fm_uffd *u);
int fm_uffd_register(int fd, void *addr, size_t len);
int fm_uffd_unregister(int fd, void *addr, size_t len);

/* map.c: ranges of an object's cache, mapped and attached. */

struct filemap_range {
	struct fm_conn *conn; /* whose session serves it; referenced */
	pid_t pid;            /* the process that attached it */
	char *name;           /* the object, for errors */
	char *addr;
	size_t len;
	uint64_t off;    /* the object's byte at addr */
	uint64_t size;   /* the object's length */
	int uffd;        /* our own copy: faults wait on it if the handler dies */
	uint64_t region; /* the handler's name for it */
	int dontfork;    /* MADV_DONTFORK: a child does not have it */
};

struct fm_map_req {
	struct fm_conn *conn;
	uint64_t handle;
	int cache; /* the cache file */
	const char *name;
	uint64_t size;
	void *addr;
	size_t len;
	int prot, flags;
	uint64_t off;
	int advice;
};

filemap_range_t *fm_map(const struct fm_map_req *req);
int fm_unmap(filemap_range_t *r);
ssize_t fm_read(filemap_range_t *r, void *buf, size_t len, uint64_t off);
int fm_advise(filemap_range_t *r, int advice, uint64_t off, uint64_t len);
const char *fm_advice_name(int advice);

/* filemap.c: an open object. */

struct filemap {
	struct fm_conn *conn; /* the session its handle belongs to; referenced */
	char *socket;         /* filemap_options.socket; NULL for the default */
	pid_t pid;            /* the process that opened it */
	struct fm_uri uri;
	char *version;
	uint64_t size;
	uint64_t handle;
	int cache; /* the cache file, read-only */
	int file;  /* a local object's descriptor, -1 for a remote one */
	unsigned int flags;
	int advice;
	filemap_range_t *whole;

	/* In a fork child, the object opened again on the child's own
	 * connection, for filemap_map: made on first use. */
	struct filemap *again;
};

#endif
