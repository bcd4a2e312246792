/*
 * Copies out of a filemap mapping at memcpy's speed, without SIGBUS.
 *
 * read(2) of a file never raises SIGBUS: a page that cannot be read is
 * EIO. The shim's reads copy from the object's mapping, where such a page
 * raises SIGBUS instead. filemap_read_at turns that into EIO without a
 * signal handler, by process_vm_readv(2), at a third of memcpy's speed; so
 * the shim copies with memcpy under a SIGBUS handler of its own, and lets
 * filemap_read_at redo a copy that faulted, to find the page and return
 * the bytes before it.
 *
 * The handler is installed with the first object opened, and chains to
 * the handler the program had: a SIGBUS that is not a guarded copy's (the
 * program's own access to a mapping, a kill(2)) gets exactly what it
 * would have got without the shim. A program may install a handler of
 * its own later, or block SIGBUS in a thread; the copy checks both first
 * and, if the guard cannot catch the signal, copies with filemap_read_at.
 */
#include <setjmp.h>
#include <signal.h>
#include <string.h>

#include "shim.h"

/* A thread's copy in progress: the source range it guards. */
struct guard {
	sigjmp_buf jump;
	const char *volatile lo, *volatile hi;
	volatile sig_atomic_t active;
};

static SHIM_TLS __thread struct guard guard;

static struct sigaction chained; /* the program's handler when the shim installed its own */

static void on_sigbus(int sig, siginfo_t *info, void *ctx);

/* reset_default gives SIGBUS its default action and lets it act: a fault
 * raises it again when the instruction is retried; a sent one is raised. */
static void reset_default(int sig, const siginfo_t *info)
{
	struct sigaction dfl = {.sa_handler = SIG_DFL};
	sigemptyset(&dfl.sa_mask);
	sigaction(sig, &dfl, NULL);
	if (info == NULL || info->si_code <= 0)
		raise(sig);
}

static void chain(int sig, siginfo_t *info, void *ctx)
{
	struct sigaction h = chained;
	if (!(h.sa_flags & SA_SIGINFO) && (h.sa_handler == SIG_DFL || h.sa_handler == SIG_IGN)) {
		/* SIG_IGN too: the kernel does not let a fault's SIGBUS be ignored. */
		reset_default(sig, info);
		return;
	}
	sigset_t old;
	pthread_sigmask(SIG_BLOCK, &h.sa_mask, &old);
	if (h.sa_flags & SA_RESETHAND)
		chained.sa_handler = SIG_DFL, chained.sa_flags &= ~SA_SIGINFO;
	if (h.sa_flags & SA_SIGINFO)
		h.sa_sigaction(sig, info, ctx);
	else
		h.sa_handler(sig);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static void on_sigbus(int sig, siginfo_t *info, void *ctx)
{
	struct guard *g = &guard;
	const char *addr = info != NULL ? info->si_addr : NULL;
	if (g->active && info != NULL && info->si_code > 0 && addr >= g->lo && addr < g->hi) {
		g->active = 0;
		siglongjmp(g->jump, 1);
	}
	chain(sig, info, ctx);
}

void shim_guard_install(void)
{
	/* SA_NODEFER: the handler leaves by siglongjmp, which (with savemask 0,
	 * to spare a system call a copy) does not restore the signal mask;
	 * SIGBUS must not stay blocked in a thread after one bad page. */
	struct sigaction sa = {.sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK | SA_RESTART};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, &chained);
}

/* armed says whether a SIGBUS in this thread now reaches on_sigbus. */
static int armed(void)
{
	struct sigaction cur;
	sigset_t mask;
	return sigaction(SIGBUS, NULL, &cur) == 0 && (cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sigbus &&
	       pthread_sigmask(SIG_BLOCK, NULL, &mask) == 0 && !sigismember(&mask, SIGBUS);
}

int shim_guarded_copy(void *dst, const void *src, size_t n)
{
	struct guard *g = &guard;
	/* A copy in a signal handler that interrupted a copy would reuse the
	 * jump buffer: it takes the slow way. */
	if (g->active || !armed())
		return -2;
	if (sigsetjmp(g->jump, 0) != 0)
		return -1;
	g->lo = src;
	g->hi = (const char *)src + n;
	atomic_signal_fence(memory_order_seq_cst);
	g->active = 1;
	atomic_signal_fence(memory_order_seq_cst);
	memcpy(dst, src, n);
	atomic_signal_fence(memory_order_seq_cst);
	g->active = 0;
	return 0;
}
