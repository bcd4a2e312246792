/*
 * Frames on the handler's socket (docs/protocol.md, "Frames"): a 16-byte
 * little-endian header, a JSON payload, and descriptors as SCM_RIGHTS with
 * the frame's first byte. A frame is read exactly, never past its end, so
 * that the next frame's descriptors never arrive with this one.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"

static void put32(unsigned char *b, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		b[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get32(const unsigned char *b)
{
	return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static void encode_header(unsigned char *b, uint8_t type, int nfds, uint32_t id, size_t len)
{
	b[0] = 'F', b[1] = 'M', b[2] = FM_VERSION, b[3] = type;
	b[4] = (unsigned char)nfds, b[5] = 0, b[6] = 0, b[7] = 0;
	put32(b + 8, id);
	put32(b + 12, (uint32_t)len);
}

/* send_all sends b[0:n], its first byte with the descriptors. MSG_NOSIGNAL:
 * a handler gone is an error to return, not a SIGPIPE to kill the program. */
static int send_all(int sock, const unsigned char *b, size_t n, const int *fds, int nfds)
{
	union {
		char buf[CMSG_SPACE(FM_MAX_FDS * sizeof(int))];
		struct cmsghdr align;
	} control;
	struct iovec iov = {.iov_base = (void *)b, .iov_len = n};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
	if (nfds > 0) {
		memset(&control, 0, sizeof control);
		msg.msg_control = control.buf;
		msg.msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int));
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
		memcpy(CMSG_DATA(c), fds, (size_t)nfds * sizeof(int));
	}
	ssize_t sent;
	while ((sent = sendmsg(sock, &msg, MSG_NOSIGNAL)) < 0 && errno == EINTR)
		;
	while (sent >= 0 && (size_t)sent < n) {
		ssize_t more = send(sock, b + sent, n - (size_t)sent, MSG_NOSIGNAL);
		if (more < 0 && errno == EINTR)
			continue;
		if (more < 0)
			sent = -1;
		else
			sent += more;
	}
	return sent < 0 ? -1 : 0;
}

int fm_frame_send(int sock, uint8_t type, uint32_t id, const char *payload, size_t len, const int *fds,
		  int nfds)
{
	if (len > FM_MAX_PAYLOAD || nfds < 0 || nfds > FM_MAX_FDS)
		return fm_fail(EINVAL, -1, "write a frame of type %u: %zu payload bytes, %d descriptors", type,
			       len, nfds);
	unsigned char *b = malloc(FM_HEADER_SIZE + len);
	if (b == NULL)
		return fm_fail(ENOMEM, -1, "write a frame of type %u: out of memory", type);
	encode_header(b, type, nfds, id, len);
	memcpy(b + FM_HEADER_SIZE, payload, len);
	int rc = send_all(sock, b, FM_HEADER_SIZE + len, fds, nfds);
	int err = errno;
	free(b);
	if (rc < 0)
		return fm_fail(err == EPIPE || err == ECONNRESET ? ENOTCONN : err, -1,
			       "write to the handler: %s", strerror(err));
	return 0;
}

/* take_fds adds the descriptors of msg's SCM_RIGHTS to f; -1 if there are
 * more than a frame may carry (all are closed then). */
static int take_fds(struct msghdr *msg, struct fm_frame *f)
{
	int over = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c != NULL; c = CMSG_NXTHDR(msg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < n; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
			if (f->nfds < FM_MAX_FDS)
				f->fds[f->nfds++] = fd;
			else
				close(fd), over = 1;
		}
	}
	return over ? -1 : 0;
}

/* read_exact reads n bytes into b, collecting descriptors into f. */
static int read_exact(int sock, char *b, size_t n, struct fm_frame *f, const char *what)
{
	for (size_t got = 0; got < n;) {
		union {
			char buf[CMSG_SPACE(FM_MAX_FDS * sizeof(int))];
			struct cmsghdr align;
		} control;
		struct iovec iov = {.iov_base = b + got, .iov_len = n - got};
		struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
				     .msg_controllen = sizeof control.buf};
		ssize_t r = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int err = errno;
			return fm_fail(err == ECONNRESET ? ENOTCONN : err, -1, "read %s from the handler: %s", what,
				       strerror(err));
		}
		if (take_fds(&msg, f) < 0 || (msg.msg_flags & MSG_CTRUNC))
			return fm_fail(EPROTO, -1, "read %s from the handler: more descriptors than a frame carries",
				       what);
		if (r == 0) {
			if (got == 0 && f->nfds == 0 && strcmp(what, "a frame header") == 0)
				return fm_fail(ENOTCONN, -1, "the handler closed the connection");
			return fm_fail(EPROTO, -1, "read %s from the handler: connection closed after %zu of %zu bytes",
				       what, got, n);
		}
		got += (size_t)r;
	}
	return 0;
}

static int decode_header(const unsigned char *b, struct fm_frame *f, int *nfds)
{
	if (b[0] != 'F' || b[1] != 'M')
		return fm_fail(EPROTO, -1, "bad frame from the handler: magic %#x %#x", b[0], b[1]);
	if (b[2] != FM_VERSION)
		return fm_fail(EPROTO, -1, "the handler speaks protocol version %u, this library %d", b[2], FM_VERSION);
	if (b[5] != 0 || b[6] != 0 || b[7] != 0)
		return fm_fail(EPROTO, -1, "bad frame from the handler: flags or reserved bytes set");
	f->type = b[3];
	*nfds = b[4];
	f->id = get32(b + 8);
	f->len = get32(b + 12);
	if (*nfds > FM_MAX_FDS || f->len > FM_MAX_PAYLOAD)
		return fm_fail(EPROTO, -1, "bad frame from the handler: %d descriptors, %zu bytes", *nfds, f->len);
	return 0;
}

int fm_frame_recv(int sock, struct fm_frame *f)
{
	memset(f, 0, sizeof *f);
	unsigned char h[FM_HEADER_SIZE];
	int nfds = 0;
	if (read_exact(sock, (char *)h, sizeof h, f, "a frame header") < 0 || decode_header(h, f, &nfds) < 0)
		goto fail;
	if ((f->payload = malloc(f->len + 1)) == NULL) {
		fm_fail(ENOMEM, -1, "read a frame: out of memory");
		goto fail;
	}
	if (read_exact(sock, f->payload, f->len, f, "a frame payload") < 0)
		goto fail;
	f->payload[f->len] = '\0';
	if (f->nfds != nfds) {
		fm_fail(EPROTO, -1, "bad frame from the handler: it announces %d descriptors and carried %d", nfds,
			f->nfds);
		goto fail;
	}
	return 0;
fail:
	fm_frame_release(f);
	return -1;
}

void fm_frame_release(struct fm_frame *f)
{
	for (int i = 0; i < f->nfds; i++)
		close(f->fds[i]);
	f->nfds = 0;
	free(f->payload);
	f->payload = NULL;
}
