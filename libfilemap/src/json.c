/*
 * The JSON of frame payloads: an encoder of flat objects for requests, and
 * a strict, bounds-checked decoder for the flat objects of replies. The
 * handler is trusted no more than it must be: every length is checked
 * against the buffer, nesting is bounded, and a field of the wrong kind is
 * an error, never a guess.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Encoder. */

static void put(struct fm_json *j, const char *s, size_t n)
{
	if (j->failed)
		return;
	if (j->len + n > FM_MAX_PAYLOAD) {
		j->failed = 1;
		return;
	}
	if (j->len + n > j->cap) {
		size_t cap = j->cap ? j->cap : 256;
		while (cap < j->len + n)
			cap *= 2;
		char *b = realloc(j->buf, cap);
		if (b == NULL) {
			j->failed = 1;
			return;
		}
		j->buf = b;
		j->cap = cap;
	}
	memcpy(j->buf + j->len, s, n);
	j->len += n;
}

static void puts_(struct fm_json *j, const char *s)
{
	put(j, s, strlen(s));
}

/* quote writes s as a JSON string. Bytes of 0x80 and up pass as they are:
 * a path is bytes, and the handler decodes it as UTF-8 only to name it. */
static void quote(struct fm_json *j, const char *s)
{
	put(j, "\"", 1);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		char esc[8];
		if (c == '"' || c == '\\') {
			esc[0] = '\\', esc[1] = (char)c;
			put(j, esc, 2);
		} else if (c < 0x20) {
			snprintf(esc, sizeof esc, "\\u%04x", c);
			put(j, esc, 6);
		} else {
			put(j, s, 1);
		}
	}
	put(j, "\"", 1);
}

static void key(struct fm_json *j, const char *k)
{
	if (j->len > 1)
		put(j, ",", 1);
	quote(j, k);
	put(j, ":", 1);
}

void fm_json_begin(struct fm_json *j)
{
	memset(j, 0, sizeof *j);
	put(j, "{", 1);
}

void fm_json_str(struct fm_json *j, const char *k, const char *v)
{
	key(j, k);
	quote(j, v);
}

void fm_json_int(struct fm_json *j, const char *k, int64_t v)
{
	char b[32];
	snprintf(b, sizeof b, "%" PRId64, v);
	key(j, k);
	puts_(j, b);
}

void fm_json_uint(struct fm_json *j, const char *k, uint64_t v)
{
	char b[32];
	snprintf(b, sizeof b, "%" PRIu64, v);
	key(j, k);
	puts_(j, b);
}

void fm_json_bool(struct fm_json *j, const char *k, int v)
{
	key(j, k);
	puts_(j, v ? "true" : "false");
}

int fm_json_end(struct fm_json *j)
{
	put(j, "}", 1);
	if (j->failed)
		return fm_fail(ENOMEM, -1, "encode a request: out of memory or over %d bytes", FM_MAX_PAYLOAD);
	return 0;
}

void fm_json_free(struct fm_json *j)
{
	free(j->buf);
	memset(j, 0, sizeof *j);
}

/* Decoder. */

enum { MAX_DEPTH = 32 };

struct parser {
	const char *p, *end;
	const char *err; /* the first error */
};

static int bad(struct parser *ps, const char *why)
{
	if (ps->err == NULL)
		ps->err = why;
	return -1;
}

static void space(struct parser *ps)
{
	while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
		ps->p++;
}

static int expect(struct parser *ps, char c)
{
	space(ps);
	if (ps->p >= ps->end || *ps->p != c)
		return bad(ps, "unexpected character");
	ps->p++;
	return 0;
}

static int hex4(struct parser *ps, unsigned *out)
{
	if (ps->end - ps->p < 4)
		return bad(ps, "short \\u escape");
	unsigned v = 0;
	for (int i = 0; i < 4; i++) {
		char c = *ps->p++;
		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (unsigned)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v |= (unsigned)(c - 'A' + 10);
		else
			return bad(ps, "bad \\u escape");
	}
	*out = v;
	return 0;
}

/* utf8 writes code point cp into out (room for 4), returning its length. */
static size_t utf8(unsigned cp, char *out)
{
	if (cp < 0x80) {
		out[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (char)(0xc0 | cp >> 6);
		out[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (char)(0xe0 | cp >> 12);
		out[1] = (char)(0x80 | (cp >> 6 & 0x3f));
		out[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	out[0] = (char)(0xf0 | cp >> 18);
	out[1] = (char)(0x80 | (cp >> 12 & 0x3f));
	out[2] = (char)(0x80 | (cp >> 6 & 0x3f));
	out[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

/* escape decodes the escape after a backslash into out (room for 4). */
static int escape(struct parser *ps, char *out, size_t *n)
{
	if (ps->p >= ps->end)
		return bad(ps, "unterminated string");
	char c = *ps->p++;
	const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t";
	const char *at = c ? strchr(from, c) : NULL;
	if (at != NULL) {
		out[0] = to[at - from];
		*n = 1;
		return 0;
	}
	if (c != 'u')
		return bad(ps, "bad escape");
	unsigned cp;
	if (hex4(ps, &cp) < 0)
		return -1;
	if (cp >= 0xd800 && cp < 0xdc00) { /* a surrogate pair */
		unsigned lo;
		if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u')
			return bad(ps, "lone surrogate");
		ps->p += 2;
		if (hex4(ps, &lo) < 0)
			return -1;
		if (lo < 0xdc00 || lo >= 0xe000)
			return bad(ps, "lone surrogate");
		cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
	} else if (cp >= 0xdc00 && cp < 0xe000) {
		return bad(ps, "lone surrogate");
	}
	if (cp == 0)
		return bad(ps, "NUL in a string"); /* a C string cannot hold it */
	*n = utf8(cp, out);
	return 0;
}

/* string parses a string; with out, it is decoded into a new buffer. */
static int string(struct parser *ps, char **out)
{
	if (expect(ps, '"') < 0)
		return -1;
	const char *start = ps->p;
	/* The decoded string is never longer than its encoding. */
	char *s = NULL;
	if (out != NULL && (s = malloc((size_t)(ps->end - start) + 1)) == NULL)
		return bad(ps, "out of memory");
	size_t n = 0;
	for (;;) {
		if (ps->p >= ps->end) {
			free(s);
			return bad(ps, "unterminated string");
		}
		char c = *ps->p++;
		if (c == '"')
			break;
		if ((unsigned char)c < 0x20) {
			free(s);
			return bad(ps, "control character in a string");
		}
		char buf[4];
		size_t k = 1;
		buf[0] = c;
		if (c == '\\' && escape(ps, buf, &k) < 0) {
			free(s);
			return -1;
		}
		if (s != NULL)
			memcpy(s + n, buf, k);
		n += k;
	}
	if (s != NULL) {
		s[n] = '\0';
		free(*out);
		*out = s;
	}
	return 0;
}

/* number parses a JSON number; integer() below, when it must be one. */
static int number(struct parser *ps)
{
	space(ps);
	const char *p = ps->p;
	if (p < ps->end && *p == '-')
		p++;
	const char *digits = p;
	while (p < ps->end && *p >= '0' && *p <= '9')
		p++;
	if (p == digits || (*digits == '0' && p - digits > 1))
		return bad(ps, "bad number");
	if (p < ps->end && *p == '.') {
		const char *frac = ++p;
		while (p < ps->end && *p >= '0' && *p <= '9')
			p++;
		if (p == frac)
			return bad(ps, "bad number");
	}
	if (p < ps->end && (*p == 'e' || *p == 'E')) {
		p++;
		if (p < ps->end && (*p == '+' || *p == '-'))
			p++;
		const char *exp = p;
		while (p < ps->end && *p >= '0' && *p <= '9')
			p++;
		if (p == exp)
			return bad(ps, "bad number");
	}
	ps->p = p;
	return 0;
}

/* integer parses an integer into a magnitude and a sign, checking that it
 * is written as one and fits in 64 bits. */
static int integer(struct parser *ps, uint64_t *mag, int *neg)
{
	space(ps);
	const char *start = ps->p;
	if (number(ps) < 0)
		return -1;
	const char *p = start;
	*neg = 0;
	if (*p == '-')
		*neg = 1, p++;
	uint64_t v = 0;
	for (; p < ps->p; p++) {
		if (*p < '0' || *p > '9')
			return bad(ps, "not an integer");
		unsigned d = (unsigned)(*p - '0');
		if (v > (UINT64_MAX - d) / 10)
			return bad(ps, "integer out of range");
		v = v * 10 + d;
	}
	*mag = v;
	return 0;
}

static int literal(struct parser *ps, const char *word)
{
	size_t n = strlen(word);
	if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0)
		return bad(ps, "bad literal");
	ps->p += n;
	return 0;
}

static int skip_value(struct parser *ps, int depth);

/* skip_container skips the rest of an object or array after its opener. */
static int skip_container(struct parser *ps, char close, int depth)
{
	if (depth > MAX_DEPTH)
		return bad(ps, "nested too deep");
	space(ps);
	if (ps->p < ps->end && *ps->p == close) {
		ps->p++;
		return 0;
	}
	for (;;) {
		if (close == '}' && (string(ps, NULL) < 0 || expect(ps, ':') < 0))
			return -1;
		if (skip_value(ps, depth + 1) < 0)
			return -1;
		space(ps);
		if (ps->p >= ps->end)
			return bad(ps, "unterminated object or array");
		char c = *ps->p++;
		if (c == close)
			return 0;
		if (c != ',')
			return bad(ps, "expected , or the end");
	}
}

static int skip_value(struct parser *ps, int depth)
{
	space(ps);
	if (ps->p >= ps->end)
		return bad(ps, "missing value");
	switch (*ps->p) {
	case '"':
		return string(ps, NULL);
	case '{':
		ps->p++;
		return skip_container(ps, '}', depth);
	case '[':
		ps->p++;
		return skip_container(ps, ']', depth);
	case 't':
		return literal(ps, "true");
	case 'f':
		return literal(ps, "false");
	case 'n':
		return literal(ps, "null");
	default:
		return number(ps);
	}
}

static int field(struct parser *ps, const struct fm_json_field *f)
{
	space(ps);
	if (ps->p < ps->end && *ps->p == 'n') /* null leaves a field alone, as Go's decoder does */
		return literal(ps, "null");
	uint64_t mag;
	int neg;
	switch (f->kind) {
	case FM_JSON_STRING:
		return string(ps, (char **)f->dst);
	case FM_JSON_UINT:
		if (integer(ps, &mag, &neg) < 0)
			return -1;
		if (neg) /* even -0, which Go's decoder refuses too */
			return bad(ps, "negative value for an unsigned field");
		*(uint64_t *)f->dst = mag;
		return 0;
	case FM_JSON_INT:
		if (integer(ps, &mag, &neg) < 0)
			return -1;
		if (mag > (uint64_t)INT64_MAX + (uint64_t)neg)
			return bad(ps, "integer out of range");
		*(int64_t *)f->dst = neg ? (int64_t)(0 - mag) : (int64_t)mag;
		return 0;
	}
	return bad(ps, "unknown field kind");
}

static int members(struct parser *ps, const struct fm_json_field *fields, size_t nfields)
{
	if (expect(ps, '{') < 0)
		return -1;
	space(ps);
	if (ps->p < ps->end && *ps->p == '}') {
		ps->p++;
		return 0;
	}
	for (;;) {
		char *name = NULL;
		if (string(ps, &name) < 0 || expect(ps, ':') < 0) {
			free(name);
			return -1;
		}
		const struct fm_json_field *f = NULL;
		for (size_t i = 0; i < nfields; i++)
			if (strcmp(fields[i].name, name) == 0)
				f = &fields[i];
		free(name);
		if ((f != NULL ? field(ps, f) : skip_value(ps, 1)) < 0)
			return -1;
		space(ps);
		if (ps->p >= ps->end)
			return bad(ps, "unterminated object");
		char c = *ps->p++;
		if (c == '}')
			return 0;
		if (c != ',')
			return bad(ps, "expected , or }");
	}
}

int fm_json_decode(const char *p, size_t n, const struct fm_json_field *fields, size_t nfields)
{
	struct parser ps = {.p = p, .end = p + n};
	if (members(&ps, fields, nfields) == 0) {
		space(&ps);
		if (ps.p != ps.end)
			bad(&ps, "data after the object");
	}
	if (ps.err != NULL)
		return fm_fail(EPROTO, -1, "bad JSON payload (%s at byte %td of %zu)", ps.err, ps.p - p, n);
	return 0;
}
