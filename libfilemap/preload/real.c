/*
 * libc's functions behind the shim's, and the little state every file of
 * the shim shares. Nothing runs when the shim is loaded: a program that
 * never names a filemap path pays for one dlsym(3) per libc function it
 * calls that the shim stands in for, on its first call, and for the
 * check that sends the call on.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shim.h"

SHIM_TLS __thread int shim_inlib;
pid_t shim_pid;

/*
 * dlsym may allocate (for an error), which is why this is done on first
 * use and never from a signal handler; two threads resolving the same
 * name at once store the same pointer. A libc without the function (the
 * program's call came from somewhere that expected one) is a message and
 * an abort, not a call through NULL.
 */
void *shim_real(void *_Atomic *slot, const char *name)
{
	void *fn = atomic_load_explicit(slot, memory_order_acquire);
	if (fn == NULL) {
		if ((fn = dlsym(RTLD_NEXT, name)) == NULL) {
			shim_warn("the C library has no %s, which the program called", name);
			abort();
		}
		atomic_store_explicit(slot, fn, memory_order_release);
	}
	return fn;
}

void shim_warn(const char *fmt, ...)
{
	char msg[1024];
	int n = snprintf(msg, sizeof msg, "filemap-preload: ");
	va_list ap;
	va_start(ap, fmt);
	n += vsnprintf(msg + n, sizeof msg - (size_t)n, fmt, ap);
	va_end(ap);
	if (n >= (int)sizeof msg - 1)
		n = (int)sizeof msg - 2;
	msg[n++] = '\n';
	int saved = errno;
	ssize_t rc = write(STDERR_FILENO, msg, (size_t)n);
	(void)rc;
	errno = saved;
}

void shim_report(int err)
{
	switch (err) {
	case ENOENT: /* the program says these itself, as for a file */
	case EACCES:
	case EROFS:
	case ENOTDIR:
	case EISDIR:
	case EINVAL:
	case EBADF:
	case EFAULT:
	case EINTR:
		return;
	}
	shim_warn("%s", filemap_errmsg());
}

static void forked(void)
{
	shim_pid = getpid();
	shim_files_forked();
	shim_maptable_unlock();
	shim_fdtable_unlock();
}

static void prepare(void)
{
	shim_fdtable_lock();
	shim_maptable_lock();
}

static void parent(void)
{
	shim_maptable_unlock();
	shim_fdtable_unlock();
}

static void start(void)
{
	shim_pid = getpid();
	/* The tables' locks are held across fork(2), so that a child of a
	 * multithreaded program never inherits one held by a thread it does
	 * not have; its copy of each table is the parent's, as its
	 * descriptors and mappings are. */
	pthread_atfork(prepare, parent, forked);
	shim_guard_install();
}

void shim_started(void)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	pthread_once(&once, start);
}
