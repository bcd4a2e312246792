/*
 * This thread's last error: what filemap_errmsg, filemap_errno and
 * filemap_error_offset return. Thread-local, as errno is, so that a
 * failing call in one thread never changes another's message.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

enum { FM_ERRMSG_MAX = 1024 };

static __thread struct {
	char msg[FM_ERRMSG_MAX];
	int errnum;
	int64_t off;
} last = {.off = -1};

int fm_fail(int errnum, int64_t off, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(last.msg, sizeof last.msg, fmt, ap);
	va_end(ap);
	last.errnum = errnum;
	last.off = off;
	errno = errnum;
	return -1;
}

void fm_prefix(const char *fmt, ...)
{
	char old[FM_ERRMSG_MAX];
	memcpy(old, last.msg, sizeof old);
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(last.msg, sizeof last.msg, fmt, ap);
	va_end(ap);
	if (n >= 0 && (size_t)n < sizeof last.msg)
		snprintf(last.msg + n, sizeof last.msg - (size_t)n, "%s", old);
	errno = last.errnum; /* what the caller returns with */
}

void fm_prefix_open(const char *name)
{
	if (strstr(last.msg, name) != NULL)
		fm_prefix("filemap: ");
	else
		fm_prefix("filemap: open %s: ", name);
}

const char *filemap_errmsg(void)
{
	return last.msg;
}

int filemap_errno(void)
{
	return last.errnum;
}

int64_t filemap_error_offset(void)
{
	return last.off;
}
