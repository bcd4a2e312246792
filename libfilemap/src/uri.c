/*
 * Object names: which objects are local files (this process opens them),
 * and how a name is shown. A name is shown with its credentials redacted,
 * by the rules of the Go side (store.Redact): a URL's password, a user
 * name that stands alone (often a token), and the values of query
 * parameters that authenticate (a presigned URL's signature...) become
 * "***". The raw name goes to the handler only.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "internal.h"

/* A growing string; data is NULL once an allocation failed. */
struct buf {
	char *data;
	size_t len, cap;
	int failed;
};

static void add(struct buf *b, const char *s, size_t n)
{
	if (b->failed)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = (b->len + n + 1) * 2;
		char *d = realloc(b->data, cap);
		if (d == NULL) {
			free(b->data);
			b->data = NULL;
			b->failed = 1;
			return;
		}
		b->data = d;
		b->cap = cap;
	}
	memcpy(b->data + b->len, s, n);
	b->len += n;
	b->data[b->len] = '\0';
}

static void adds(struct buf *b, const char *s)
{
	add(b, s, strlen(s));
}

static int unhex(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = (char)tolower((unsigned char)c);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* unescape decodes %XX (and, in a query, '+') in s[0:n]. *bad says it was
 * malformed; NULL is returned then, and when out of memory. */
static char *unescape(const char *s, size_t n, int query, int *bad)
{
	char *out = malloc(n + 1), *o = out;
	*bad = 0;
	if (out == NULL)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		if (s[i] != '%') {
			*o++ = query && s[i] == '+' ? ' ' : s[i];
			continue;
		}
		int hi = i + 2 < n ? unhex(s[i + 1]) : -1, lo = i + 2 < n ? unhex(s[i + 2]) : -1;
		if (hi < 0 || lo < 0) {
			free(out);
			*bad = 1;
			return NULL;
		}
		*o++ = (char)(hi << 4 | lo);
		i += 2;
	}
	*o = '\0';
	return out;
}

/* credential says whether a query parameter authenticates the request
 * rather than selects the object (store.credentialParam). */
static int credential(const char *name)
{
	static const char *const names[] = {
		"x-amz-signature", "x-amz-credential", "x-amz-security-token", "awsaccesskeyid",
		"x-goog-signature", "x-goog-credential", "googleaccessid", "signature", "sig", "token",
		"access_token", "password",
	};
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		if (strcasecmp(name, names[i]) == 0)
			return 1;
	return 0;
}

static void redact_query(struct buf *b, const char *q, size_t n)
{
	const char *end = q + n;
	for (const char *p = q; p <= end;) {
		const char *amp = memchr(p, '&', (size_t)(end - p));
		if (amp == NULL)
			amp = end;
		const char *eq = memchr(p, '=', (size_t)(amp - p));
		int bad;
		char *name = eq != NULL ? unescape(p, (size_t)(eq - p), 1, &bad) : NULL;
		int hide = eq != NULL && credential(name != NULL ? name : "");
		if (eq != NULL && name == NULL && bad) { /* as Go: an undecodable name is taken as written */
			char *raw = strndup(p, (size_t)(eq - p));
			hide = raw != NULL && credential(raw);
			free(raw);
		}
		free(name);
		if (p != q)
			adds(b, "&");
		if (hide) {
			add(b, p, (size_t)(eq - p));
			adds(b, "=***");
		} else {
			add(b, p, (size_t)(amp - p));
		}
		p = amp + 1;
	}
}

char *fm_redact(const char *s)
{
	const char *sep = strstr(s, "://");
	if (sep == NULL)
		return strdup(s);
	const char *rest = sep + 3;
	size_t end = strcspn(rest, "/?#");
	struct buf b = {0};
	add(&b, s, (size_t)(rest - s));
	const char *at = NULL;
	for (const char *p = rest; p < rest + end; p++)
		if (*p == '@')
			at = p;
	if (at != NULL) {
		const char *colon = memchr(rest, ':', (size_t)(at - rest));
		if (colon != NULL) {
			add(&b, rest, (size_t)(colon - rest));
			adds(&b, ":***");
		} else {
			adds(&b, "***");
		}
		add(&b, at, (size_t)(rest + end - at));
	} else {
		add(&b, rest, end);
	}
	const char *tail = rest + end, *hash = strchr(tail, '#');
	size_t pathlen = hash != NULL ? (size_t)(hash - tail) : strlen(tail);
	const char *q = memchr(tail, '?', pathlen);
	if (q != NULL) {
		add(&b, tail, (size_t)(q - tail) + 1);
		redact_query(&b, q + 1, pathlen - (size_t)(q - tail) - 1);
	} else {
		add(&b, tail, pathlen);
	}
	if (hash != NULL)
		adds(&b, hash);
	if (b.data == NULL && !b.failed)
		return strdup("");
	return b.data;
}

/* host is the authority of a URI's rest, after any userinfo. */
static void host(const char *rest, char *out, size_t cap)
{
	size_t end = strcspn(rest, "/?#");
	const char *start = rest;
	for (const char *p = rest; p < rest + end; p++)
		if (*p == '@')
			start = p + 1;
	snprintf(out, cap, "%.*s", (int)(rest + end - start), start);
}

static int parse_file(const char *rest, struct fm_uri *u)
{
	char h[256];
	host(rest, h, sizeof h);
	if (h[0] != '\0' && strcmp(h, "localhost") != 0)
		return fm_fail(EINVAL, -1, "object %s: file URI names host %s; only local files are supported",
			       u->name, h);
	const char *path = rest + strcspn(rest, "/?#");
	size_t n = strcspn(path, "?#");
	if (n == 0)
		return fm_fail(EINVAL, -1, "object %s: file URI has no path", u->name);
	int bad;
	if ((u->path = unescape(path, n, 0, &bad)) == NULL)
		return bad ? fm_fail(EINVAL, -1, "object %s: bad URI: bad %% escape in its path", u->name)
			   : fm_fail(ENOMEM, -1, "out of memory");
	return 0;
}

/* local_path takes a bare path: this process opens it, relative to its
 * own directory, and the handler, whose directory is another, is sent it
 * absolute, to name the object by. */
static int local_path(const char *s, struct fm_uri *u)
{
	if ((u->path = strdup(s)) == NULL)
		return fm_fail(ENOMEM, -1, "out of memory");
	if (s[0] == '/')
		return 0;
	char cwd[PATH_MAX];
	if (getcwd(cwd, sizeof cwd) == NULL)
		return 0; /* the raw path, then: it still opens, and only names the cache */
	size_t n = strlen(cwd) + strlen(s) + 2;
	if ((u->wire = malloc(n)) == NULL)
		return fm_fail(ENOMEM, -1, "out of memory");
	snprintf(u->wire, n, "%s/%s", cwd, s);
	return 0;
}

static int parse(const char *s, struct fm_uri *u)
{
	const char *sep = strstr(s, "://");
	if (sep == NULL)
		return local_path(s, u);
	size_t n = (size_t)(sep - s);
	const char *rest = sep + 3;
	char h[256];
	host(rest, h, sizeof h);
	if (n == 4 && strncasecmp(s, "file", 4) == 0)
		return parse_file(rest, u);
	if ((n == 4 && strncasecmp(s, "http", 4) == 0) || (n == 5 && strncasecmp(s, "https", 5) == 0)) {
		if (h[0] == '\0')
			return fm_fail(EINVAL, -1, "object %s: %.*s URI has no host", u->name, (int)n, s);
		return 0;
	}
	if (n == 2 && strncasecmp(s, "s3", 2) == 0) {
		const char *key = rest + strcspn(rest, "/?#");
		if (h[0] == '\0' || key[strspn(key, "/")] == '\0')
			return fm_fail(EINVAL, -1, "object %s: want s3://BUCKET/KEY", u->name);
		return 0;
	}
	return fm_fail(EINVAL, -1,
		       "object %s: unknown scheme %.*s (want a path, file://, http://, https:// or s3://)",
		       u->name, (int)n, s);
}

int fm_uri_parse(const char *s, struct fm_uri *u)
{
	memset(u, 0, sizeof *u);
	if (s == NULL || *s == '\0')
		return fm_fail(EINVAL, -1, "empty object name");
	if ((u->raw = strdup(s)) == NULL || (u->name = fm_redact(s)) == NULL) {
		fm_uri_free(u);
		return fm_fail(ENOMEM, -1, "out of memory");
	}
	if (parse(s, u) < 0) {
		int err = errno;
		fm_uri_free(u);
		errno = err;
		return -1;
	}
	if (u->wire == NULL && (u->wire = strdup(s)) == NULL) {
		fm_uri_free(u);
		return fm_fail(ENOMEM, -1, "out of memory");
	}
	return 0;
}

void fm_uri_free(struct fm_uri *u)
{
	free(u->raw);
	free(u->name);
	free(u->path);
	free(u->wire);
	memset(u, 0, sizeof *u);
}
