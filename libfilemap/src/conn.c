/*
 * Connections to the handler, and the process lock.
 *
 * A process has one connection per handler socket, made on its first open,
 * shared by its objects, whose calls take turns on it (the handler answers
 * a connection's requests one at a time anyway), and closed when none is
 * left. A connection
 * belongs to the process that made it. A fork(2) child inherits the
 * descriptor but never writes on it (two processes' frames would
 * interleave): it makes connections of its own, and closes the inherited
 * one once it has closed what it inherited. The handler serves the child's
 * copies of the parent's mappings apart from any connection.
 *
 * The process lock guards the list of connections, the private handler
 * (handler.c), and the registering of ranges (map.c, register_attach).
 * pthread_atfork takes it around fork(2), so that a child of a
 * multithreaded process never inherits it locked. Nothing here runs before
 * the first filemap_open: the lock is static, the fork handlers are
 * registered then.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "internal.h"

struct fm_conn {
	struct fm_conn *next;
	pid_t pid;    /* the process that made it */
	char *socket; /* where it connected */
	int fd;
	int refs;          /* objects and ranges using it; under the process lock */
	atomic_int lost;   /* the errno that broke it; 0 while it works */
	pthread_mutex_t call; /* one call at a time */
	uint32_t id;          /* the last request's; under call */
};

static struct {
	pthread_mutex_t mu;
	pthread_once_t once;
	struct fm_conn *conns;
} proc = {.mu = PTHREAD_MUTEX_INITIALIZER, .once = PTHREAD_ONCE_INIT};

void fm_lock(void)
{
	pthread_mutex_lock(&proc.mu);
}

void fm_unlock(void)
{
	pthread_mutex_unlock(&proc.mu);
}

static void register_atfork(void)
{
	/* The child's one thread is the one that forked, which took the lock:
	 * it may unlock it. */
	pthread_atfork(fm_lock, fm_unlock, fm_unlock);
}

int fm_conn_mine(const struct fm_conn *c)
{
	return c->pid == getpid();
}

/* dead says whether the handler has closed c: it sends nothing but
 * answers, so between calls any sign of life on the socket is its end. A
 * call in flight is a sign of life: its answer may be waiting there. */
static int dead(struct fm_conn *c)
{
	if (atomic_load(&c->lost))
		return 1;
	if (pthread_mutex_trylock(&c->call) != 0)
		return 0;
	struct pollfd p = {.fd = c->fd, .events = POLLIN | POLLRDHUP};
	if (poll(&p, 1, 0) > 0 && p.revents)
		atomic_store(&c->lost, ENOTCONN);
	pthread_mutex_unlock(&c->call);
	return atomic_load(&c->lost) != 0;
}

static int dial(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof sa.sun_path)
		return fm_fail(ENAMETOOLONG, -1, "socket path %s is longer than %zu bytes", path,
			       sizeof sa.sun_path - 1);
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return fm_fail(errno, -1, "socket: %s", strerror(errno));
	int rc;
	while ((rc = connect(fd, (struct sockaddr *)&sa, sizeof sa)) < 0 && errno == EINTR) {
		/* The connection goes on in the background: wait for it. */
		struct pollfd p = {.fd = fd, .events = POLLOUT};
		int err = 0;
		socklen_t n = sizeof err;
		if (poll(&p, 1, -1) > 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &n) == 0) {
			errno = err;
			rc = err ? -1 : 0;
			break;
		}
	}
	if (rc < 0) {
		int err = errno;
		close(fd);
		return fm_fail(err, -1, "%s", strerror(err));
	}
	return fd;
}

static int hello(struct fm_conn *c)
{
	char exe[PATH_MAX] = "";
	ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
	exe[n > 0 ? n : 0] = '\0';
	struct fm_json req;
	fm_json_begin(&req);
	fm_json_int(&req, "pid", getpid());
	fm_json_str(&req, "program", exe);
	char *daemon = NULL;
	int64_t page_size = 0;
	struct fm_json_field reply[] = {
		{"daemon", FM_JSON_STRING, &daemon},
		{"page_size", FM_JSON_INT, &page_size},
	};
	struct fm_call call = {.type = FM_HELLO, .req = &req, .reply = reply, .nreply = 2};
	int rc = fm_call(c, &call);
	free(daemon);
	if (rc == 0 && page_size != sysconf(_SC_PAGESIZE))
		return fm_fail(EPROTO, -1, "the handler uses %lld-byte pages, this process %ld", (long long)page_size,
			       sysconf(_SC_PAGESIZE));
	return rc;
}

static void free_conn(struct fm_conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	pthread_mutex_destroy(&c->call);
	free(c->socket);
	free(c);
}

static struct fm_conn *connect_to(const char *path, int private)
{
	struct fm_conn *c = calloc(1, sizeof *c);
	if (c == NULL || (c->socket = strdup(path)) == NULL) {
		free(c);
		fm_fail(ENOMEM, -1, "out of memory");
		return NULL;
	}
	c->pid = getpid();
	pthread_mutex_init(&c->call, NULL);
	if ((c->fd = dial(path)) < 0) {
		/* ENOTCONN, not dial's ENOENT: that would say the object is missing. */
		char why[512];
		snprintf(why, sizeof why, "%s", filemap_errmsg());
		fm_fail(ENOTCONN, -1, "connect to the filemap handler at %s: %s%s", path, why,
			private ? "" : " (is `filemap serve` running?)");
		free_conn(c);
		return NULL;
	}
	if (hello(c) < 0) {
		fm_prefix("hello to the filemap handler at %s: ", path);
		free_conn(c);
		errno = filemap_errno();
		return NULL;
	}
	return c;
}

struct fm_conn *fm_conn_get(const char *socket)
{
	pthread_once(&proc.once, register_atfork);
	char path[PATH_MAX];
	if (socket == NULL || *socket == '\0')
		socket = getenv("FILEMAP_SOCKET");
	int private = socket == NULL || *socket == '\0';
	fm_lock();
	if (private) {
		if (fm_private_socket(path, sizeof path) < 0) {
			fm_unlock();
			return NULL;
		}
		socket = path;
	}
	struct fm_conn *c;
	for (c = proc.conns; c != NULL; c = c->next)
		if (fm_conn_mine(c) && strcmp(c->socket, socket) == 0 && !dead(c))
			break;
	if (c == NULL && (c = connect_to(socket, private)) != NULL) {
		c->next = proc.conns;
		proc.conns = c;
	}
	if (c != NULL)
		c->refs++;
	fm_unlock();
	return c;
}

void fm_conn_ref(struct fm_conn *c)
{
	fm_lock();
	c->refs++;
	fm_unlock();
}

/* fm_conn_put drops a reference; the last closes the connection. A
 * connection inherited from the parent is closed, never used: its memory
 * is the child's copy, and its lock may have been held by a thread the
 * child does not have. */
void fm_conn_put(struct fm_conn *c)
{
	fm_lock();
	int last = --c->refs == 0;
	if (last) {
		struct fm_conn **p = &proc.conns;
		while (*p != c)
			p = &(*p)->next;
		*p = c->next;
	}
	fm_unlock();
	if (!last)
		return;
	if (fm_conn_mine(c)) {
		free_conn(c);
		return;
	}
	close(c->fd);
	free(c->socket);
	free(c);
}

/* errno_of is the errno of a handler's error message, for callers that
 * act on errno as they would for the kernel's open(2) or mmap(2). */
static int errno_of(uint8_t type, const char *msg)
{
	if (strstr(msg, "file does not exist"))
		return ENOENT;
	if (strstr(msg, "permission denied"))
		return EACCES;
	if (strstr(msg, "object changed since it was opened"))
		return ESTALE;
	if (strstr(msg, "per-client limit reached"))
		return type == FM_OPEN ? EMFILE : ENOMEM;
	return EIO;
}

static int reply(const struct fm_call *call, struct fm_frame *f)
{
	if (f->type == FM_ERROR) {
		char *op = NULL, *msg = NULL;
		struct fm_json_field fields[] = {{"op", FM_JSON_STRING, &op}, {"message", FM_JSON_STRING, &msg}};
		int rc = fm_json_decode(f->payload, f->len, fields, 2);
		if (rc == 0)
			fm_fail(errno_of(call->type, msg ? msg : ""), -1, "%s", msg ? msg : "an error with no message");
		free(op);
		free(msg);
		return -1;
	}
	if (f->type != FM_REPLY)
		return fm_fail(EPROTO, -1, "the handler answered with a frame of type %#x", f->type);
	if (f->nfds != call->rnfds)
		return fm_fail(EPROTO, -1, "the handler sent %d descriptors, want %d", f->nfds, call->rnfds);
	if (fm_json_decode(f->payload, f->len, call->reply, call->nreply) < 0)
		return -1;
	if (f->nfds > 0)
		memcpy(call->rfds, f->fds, (size_t)f->nfds * sizeof(int));
	f->nfds = 0; /* the caller's now */
	return 0;
}

/* exchange sends a request and reads its answer. A failure here breaks the
 * connection for good: the frames' boundaries are lost. */
static int exchange(struct fm_conn *c, const struct fm_call *call, struct fm_frame *f)
{
	uint32_t id = ++c->id;
	if (fm_frame_send(c->fd, call->type, id, call->req->buf, call->req->len, call->fds, call->nfds) < 0 ||
	    fm_frame_recv(c->fd, f) < 0)
		return -1;
	if (f->id != id) {
		fm_frame_release(f);
		return fm_fail(EPROTO, -1, "the handler answered request %u with the id %u", id, f->id);
	}
	return 0;
}

/* request is fm_call of an ended request. */
static int request(struct fm_conn *c, const struct fm_call *call)
{
	if (!fm_conn_mine(c))
		return fm_fail(EBADF, -1, "the connection to the handler belongs to process %d, not this one",
			       (int)c->pid);
	pthread_mutex_lock(&c->call);
	int lost = atomic_load(&c->lost), rc = -1;
	struct fm_frame f;
	if (lost) {
		fm_fail(lost, -1, "the connection to the handler at %s was lost", c->socket);
	} else if (exchange(c, call, &f) < 0) {
		atomic_store(&c->lost, errno == ENOTCONN ? ENOTCONN : EPROTO);
		fm_prefix("the connection to the handler at %s is lost: ", c->socket);
	} else {
		rc = reply(call, &f);
		fm_frame_release(&f);
	}
	pthread_mutex_unlock(&c->call);
	if (rc < 0)
		errno = filemap_errno();
	return rc;
}

int fm_call(struct fm_conn *c, const struct fm_call *call)
{
	int rc = fm_json_end(call->req) < 0 ? -1 : request(c, call);
	fm_json_free(call->req);
	return rc;
}
