/*
 * The private handler: with no socket configured, the `filemap` executable
 * run as a child, serving this process and its fork(2) children, as the Go
 * library runs its own executable (handler.go). docs/protocol.md, "A
 * private handler", is the contract: FILEMAP_PRIVATE_HANDLER names the
 * socket to serve, descriptor 3 is the lifeline, one byte on it says the
 * handler listens, and end of file on it tells the handler to exit.
 *
 * It is what a process truly has one of, so its state is static, guarded
 * by the process lock (conn.c). A fork child inherits it with the lifeline
 * and uses the same handler, which lives until every holder of the lifeline
 * is gone.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

extern char **environ;

enum { LIFELINE_FD = 3, START_TIMEOUT_MS = 30000 };

static const char env_handler[] = "FILEMAP_PRIVATE_HANDLER";
static const char env_executable[] = "FILEMAP_EXECUTABLE";

static struct {
	pid_t pid;    /* the handler */
	pid_t parent; /* the process that started it, and may reap it */
	int lifeline; /* our end; -1: no handler */
	char dir[PATH_MAX];
	char socket[PATH_MAX];
} handler = {.lifeline = -1};

static int executable(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0;
}

/* library_dir writes the directory of the file this code was loaded from:
 * libfilemap.so, or the program libfilemap.a was linked into. */
static void library_dir(char *out, size_t cap)
{
	char path[PATH_MAX] = "";
	Dl_info info;
	struct link_map *lm = NULL;
	if (dladdr1((void *)library_dir, &info, (void **)&lm, RTLD_DL_LINKMAP) != 0 && lm != NULL &&
	    lm->l_name != NULL && lm->l_name[0] != '\0') {
		if (realpath(lm->l_name, path) == NULL)
			snprintf(path, sizeof path, "%s", lm->l_name);
	} else { /* the main program, whose link map has no name */
		ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
		path[n > 0 ? n : 0] = '\0';
	}
	char *slash = strrchr(path, '/');
	if (slash != NULL)
		*slash = '\0';
	snprintf(out, cap, "%s", path[0] ? path : ".");
}

/* on_path looks for name in $PATH's directories. */
static int on_path(const char *name, char *out, size_t cap)
{
	const char *path = getenv("PATH");
	while (path != NULL && *path != '\0') {
		const char *end = strchrnul(path, ':');
		int n = (int)(end - path);
		snprintf(out, cap, "%.*s/%s", n, n ? path : ".", name);
		if (executable(out))
			return 0;
		path = *end ? end + 1 : end;
	}
	return -1;
}

/* find_filemap finds the executable to run: $FILEMAP_EXECUTABLE, else
 * `filemap` next to this library, else on PATH. */
static int find_filemap(char *out, size_t cap)
{
	const char *env = getenv(env_executable);
	if (env != NULL && *env != '\0') {
		if (!executable(env))
			return fm_fail(ENOEXEC, -1, "%s=%s is not an executable file", env_executable, env);
		snprintf(out, cap, "%s", env);
		return 0;
	}
	char dir[PATH_MAX];
	library_dir(dir, sizeof dir);
	if ((size_t)snprintf(out, cap, "%s/filemap", dir) < cap && executable(out))
		return 0;
	char beside[PATH_MAX];
	snprintf(beside, sizeof beside, "%s", out);
	if (on_path("filemap", out, cap) == 0)
		return 0;
	const char *path = getenv("PATH");
	return fm_fail(ENOEXEC, -1,
		       "no socket to a filemap handler (set $FILEMAP_SOCKET) and no filemap executable to run "
		       "as a private one: $%s is not set, there is no %s next to libfilemap, and no filemap "
		       "on PATH (%s)",
		       env_executable, beside, path ? path : "not set");
}

/* child_env is environ with FILEMAP_PRIVATE_HANDLER=socket in place of any
 * it had. */
static char **child_env(const char *socket)
{
	size_t n = 0;
	while (environ != NULL && environ[n] != NULL)
		n++;
	char **env = calloc(n + 2, sizeof *env);
	char *ours = malloc(sizeof env_handler + 1 + strlen(socket));
	if (env == NULL || ours == NULL) {
		free(env);
		free(ours);
		return NULL;
	}
	sprintf(ours, "%s=%s", env_handler, socket);
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		if (strncmp(environ[i], env_handler, sizeof env_handler - 1) != 0 ||
		    environ[i][sizeof env_handler - 1] != '=')
			env[k++] = environ[i];
	env[k++] = ours;
	return env;
}

static void free_env(char **env)
{
	size_t n = 0;
	while (env[n + 1] != NULL)
		n++;
	free(env[n]); /* ours, last */
	free(env);
}

/* spawn runs exe as the handler, with theirs as its descriptor 3.
 * posix_spawn, not fork: the caller may have threads, and a forked copy of
 * a multithreaded process may only call async-signal-safe functions. The
 * handler gets default signal dispositions, no blocked signals, /dev/null
 * for stdin and stdout, this process's stderr for its messages, none of
 * this process's other descriptors, and a process group of its own, so
 * that a terminal's ^C, which a program like a Python shell survives, does
 * not kill it: it exits when its lifeline says so. */
static int spawn(const char *exe, const char *socket, int theirs, pid_t *pid)
{
	char **env = child_env(socket);
	if (env == NULL)
		return fm_fail(ENOMEM, -1, "out of memory");
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t none, all;
	sigemptyset(&none);
	sigfillset(&all);
	posix_spawn_file_actions_init(&fa);
	posix_spawnattr_init(&attr);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, theirs, LIFELINE_FD);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
	posix_spawn_file_actions_addclosefrom_np(&fa, LIFELINE_FD + 1);
#endif
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setsigdefault(&attr, &all);
	posix_spawnattr_setpgroup(&attr, 0);
	char *argv[] = {(char *)exe, NULL};
	int rc = posix_spawn(pid, exe, &fa, &attr, argv, env);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	free_env(env);
	if (rc != 0)
		return fm_fail(rc, -1, "start a private handler (%s): %s", exe, strerror(rc));
	return 0;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* await_ready waits for the handler's one byte on the lifeline. */
static int await_ready(int ours, pid_t pid, const char *exe)
{
	int64_t deadline = now_ms() + START_TIMEOUT_MS;
	for (;;) {
		struct pollfd p = {.fd = ours, .events = POLLIN};
		int64_t left = deadline - now_ms();
		int rc = left > 0 ? poll(&p, 1, (int)left) : 0;
		if (rc < 0 && errno == EINTR)
			continue;
		if (rc == 0) {
			kill(pid, SIGKILL);
			waitpid(pid, NULL, 0);
			return fm_fail(ETIMEDOUT, -1, "private handler %s did not start within %d s", exe,
				       START_TIMEOUT_MS / 1000);
		}
		char b;
		ssize_t n = read(ours, &b, 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n == 1)
			return 0;
		int status = 0;
		waitpid(pid, &status, 0);
		char how[64];
		if (WIFSIGNALED(status))
			snprintf(how, sizeof how, "was killed by signal %d", WTERMSIG(status));
		else
			snprintf(how, sizeof how, "exited with status %d", WEXITSTATUS(status));
		return fm_fail(ENOEXEC, -1, "private handler %s %s before it was ready (see its message above)", exe,
			       how);
	}
}

static void remove_socket(void)
{
	unlink(handler.socket);
	rmdir(handler.dir);
}

static int start(void)
{
	char exe[PATH_MAX];
	if (find_filemap(exe, sizeof exe) < 0)
		return -1;
	const char *tmp = getenv("TMPDIR");
	snprintf(handler.dir, sizeof handler.dir, "%s/filemap-handler-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (mkdtemp(handler.dir) == NULL)
		return fm_fail(errno, -1, "start a private handler: mkdtemp %s: %s", handler.dir, strerror(errno));
	int sp[2];
	if ((size_t)snprintf(handler.socket, sizeof handler.socket, "%s/handler.sock", handler.dir) >=
	    sizeof handler.socket) {
		rmdir(handler.dir);
		return fm_fail(ENAMETOOLONG, -1, "start a private handler: %s is too long", handler.dir);
	}
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) < 0) {
		rmdir(handler.dir);
		return fm_fail(errno, -1, "start a private handler: socketpair: %s", strerror(errno));
	}
	if (sp[1] == LIFELINE_FD) { /* dup2 of a descriptor onto itself would keep it close-on-exec */
		int moved = fcntl(sp[1], F_DUPFD_CLOEXEC, LIFELINE_FD + 1);
		close(sp[1]);
		sp[1] = moved;
	}
	pid_t pid;
	int rc = sp[1] < 0 ? fm_fail(errno, -1, "start a private handler: %s", strerror(errno))
			   : spawn(exe, handler.socket, sp[1], &pid);
	if (sp[1] >= 0)
		close(sp[1]);
	if (rc == 0)
		rc = await_ready(sp[0], pid, exe);
	if (rc < 0) {
		close(sp[0]);
		remove_socket();
		return -1;
	}
	handler.pid = pid;
	handler.parent = getpid();
	handler.lifeline = sp[0];
	return 0;
}

/* gone says whether the handler, and the keeper that would start it again,
 * have both exited: the lifeline, on which nothing more is ever written,
 * then reads end of file. */
static int gone(void)
{
	struct pollfd p = {.fd = handler.lifeline, .events = POLLIN | POLLRDHUP};
	if (poll(&p, 1, 0) <= 0)
		return 0;
	char b;
	return recv(handler.lifeline, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

/* bury forgets a handler that is gone. It removes its socket, which a
 * handler killed could not, and reaps it if this process started it: a
 * zombie until then. */
static void bury(void)
{
	close(handler.lifeline);
	handler.lifeline = -1;
	remove_socket();
	if (handler.pid > 0 && handler.parent == getpid())
		waitpid(handler.pid, NULL, WNOHANG);
	handler.pid = 0;
}

int fm_private_socket(char *path, size_t cap)
{
	/* A handler that died while its keeper lives is replaced by the
	 * keeper, on the same socket; the dead one is still this process's
	 * child, a zombie until reaped. */
	if (handler.pid > 0 && handler.parent == getpid() && waitpid(handler.pid, NULL, WNOHANG) == handler.pid)
		handler.pid = 0;
	if (handler.lifeline >= 0 && gone())
		bury();
	if (handler.lifeline < 0 && start() < 0)
		return -1;
	if ((size_t)snprintf(path, cap, "%s", handler.socket) >= cap)
		return fm_fail(ENAMETOOLONG, -1, "private handler socket %s is too long", handler.socket);
	return 0;
}
