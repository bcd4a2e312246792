/*
 * drive: a libfilemap client that the Go tests drive. It reads one command
 * a line on stdin and answers each with one line on stdout: "ok ..." or
 * "err ERRNO OFFSET MESSAGE" (filemap_errno, filemap_error_offset,
 * filemap_errmsg). Objects and ranges are named by the numbers "open" and
 * "map" answer with. Sums are FNV-1a 64 in hex.
 *
 *	open URI [cow] [socket=PATH] [version=V] [advice=normal|random|sequential]
 *						ok ID SIZE VERSION
 *	read ID OFF LEN				ok N SUM (filemap_read_at)
 *	sum ID					ok SUM (filemap_read_at of everything, 1 MiB at a time)
 *	memsum ID				ok SUM (the mapping's bytes, touched)
 *	write ID OFF BYTE			ok (a byte into a copy-on-write mapping)
 *	advise ID normal|random|sequential|willneed|dontneed OFF LEN	ok
 *	stat ID					ok SIZE FLAGS VERSION NAME
 *	map ID OFF LEN r|rw [fixed=ADDR] [shared]	ok RID ADDR (filemap_map, MAP_PRIVATE or MAP_SHARED)
 *	rsum RID				ok SUM (the range's bytes up to the object's end, touched)
 *	unmap RID				ok
 *	close ID				ok
 *	cost					ok THREADS FDS SOCKETS SIGCGT CHILDREN
 *	drop-ptrace				ok (CAP_SYS_PTRACE dropped, as a process without it runs)
 *	threads ID N [URI [socket=PATH]]	ok (N threads read ID with filemap_read_at, and
 *						open, read and close URI, until stop)
 *	stop					ok READS ERRORS URI_ERRORS
 *	fork ID [URI] [n=K]			ok MEMSUM READSUM FLAGS SOCKETS_BEFORE SOCKETS_AFTER URISUM RANGESUM
 *	forkexit ID				ok MEMSUM (the child's)
 *	leave ID				ok PID (the child's, which answers from then on)
 *	pages ID [OFF LEN]			ok SUM|sigbus ... (each page's, touched)
 *	split ID OFF LEN			ok (madvise(MADV_RANDOM) of the mapping's [OFF, OFF+LEN):
 *						its vma splits there)
 *	quit
 *
 * fork makes a child with fork(2), no exec, that sums ID's mapping by
 * touching it and with filemap_read_at, opens URI (if given) and sums it,
 * maps ID's bytes [4096, 69632) with filemap_map and sums them, closes
 * what it inherited and exits; the answer is the child's (with
 * n=K, K children one after another, and the first failure or the last
 * answer). A child whose mapping was not inherited (MADV_DONTFORK)
 * answers "dontfork mapped|unmapped ERRNO": whether the mapping's address
 * is mapped in it, and filemap_read_at's errno.
 *
 * forkexit makes a child that sums ID's mapping by touching it and exits
 * with _exit(2), unmapping and closing nothing, as the workers of Python's
 * multiprocessing do (os._exit).
 *
 * leave hands the driver over to a fork child, which keeps the parent's
 * mapping of ID and none of its descriptors: it closes all but stdin,
 * stdout and stderr, the parent's connection to the handler among them, as
 * a program that closes what it inherited does. The parent closes ID and
 * exits; once it has, the child answers with its pid (or with the parent's
 * error) and takes the commands that follow.
 *
 * pages sums each page of ID's mapping in [OFF, OFF+LEN) (all of it by
 * default) by touching it, and says "sigbus" for a page whose read raised
 * SIGBUS.
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <linux/capability.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "filemap.h"

enum { MAX_OBJECTS = 64, MAX_RANGES = 64, MAX_THREADS = 16, CHUNK = 1 << 20 };

static filemap_t *objects[MAX_OBJECTS];
static filemap_range_t *ranges[MAX_RANGES];

static void fail(void)
{
	printf("err %d %" PRId64 " %s\n", filemap_errno(), filemap_error_offset(), filemap_errmsg());
}

static uint64_t fnv(uint64_t h, const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

static const uint64_t fnv_init = 0xcbf29ce484222325ull;

static filemap_t *object(const char *arg)
{
	int id = atoi(arg);
	return id >= 0 && id < MAX_OBJECTS ? objects[id] : NULL;
}

static int advice_of(const char *s)
{
	const char *names[] = {"normal", "random", "sequential", "willneed", "dontneed"};
	for (int i = 0; i < 5; i++)
		if (strcmp(s, names[i]) == 0)
			return i;
	return -1;
}

static void cmd_open(char **arg, int n)
{
	struct filemap_options o = {0};
	for (int i = 1; i < n; i++) {
		if (strcmp(arg[i], "cow") == 0)
			o.flags |= FILEMAP_COPY_ON_WRITE;
		else if (strncmp(arg[i], "socket=", 7) == 0)
			o.socket = arg[i] + 7;
		else if (strncmp(arg[i], "version=", 8) == 0)
			o.version = arg[i] + 8;
		else if (strncmp(arg[i], "advice=", 7) == 0)
			o.advice = advice_of(arg[i] + 7);
	}
	int id = 0;
	while (id < MAX_OBJECTS && objects[id] != NULL)
		id++;
	filemap_t *m = filemap_open(arg[0], &o);
	if (m == NULL)
		return fail();
	objects[id] = m;
	printf("ok %d %" PRIu64 " %s\n", id, filemap_size(m), filemap_version(m));
}

static int sum_read(filemap_t *m, uint64_t *sum)
{
	unsigned char *buf = malloc(CHUNK);
	uint64_t h = fnv_init, off = 0;
	ssize_t n;
	while ((n = filemap_read_at(m, buf, CHUNK, off)) > 0) {
		h = fnv(h, buf, (size_t)n);
		off += (uint64_t)n;
	}
	free(buf);
	*sum = h;
	return n < 0 ? -1 : 0;
}

static uint64_t sum_mem(filemap_t *m)
{
	return fnv(fnv_init, filemap_addr(m), filemap_size(m));
}

static void cmd_read(filemap_t *m, uint64_t off, size_t len)
{
	unsigned char *buf = malloc(len ? len : 1);
	ssize_t n = filemap_read_at(m, buf, len, off);
	if (n < 0)
		fail();
	else
		printf("ok %zd %016" PRIx64 "\n", n, fnv(fnv_init, buf, (size_t)n));
	free(buf);
}

static void cmd_map(filemap_t *m, char **arg, int n)
{
	int prot = strcmp(arg[3], "rw") == 0 ? PROT_READ | PROT_WRITE : PROT_READ, flags = MAP_PRIVATE;
	void *addr = NULL;
	for (int i = 4; i < n; i++) {
		if (strncmp(arg[i], "fixed=", 6) == 0) {
			addr = (void *)(uintptr_t)strtoull(arg[i] + 6, NULL, 0);
			flags |= MAP_FIXED;
		} else if (strcmp(arg[i], "shared") == 0) {
			flags = (flags & ~MAP_PRIVATE) | MAP_SHARED;
		}
	}
	int id = 0;
	while (id < MAX_RANGES && ranges[id] != NULL)
		id++;
	filemap_range_t *r = filemap_map(m, addr, strtoull(arg[2], NULL, 0), prot, flags, strtoull(arg[1], NULL, 0));
	if (r == NULL)
		return fail();
	ranges[id] = r;
	printf("ok %d %p\n", id, filemap_range_addr(r));
}

static void cmd_rsum(filemap_range_t *r, uint64_t size)
{
	uint64_t off = filemap_range_offset(r), len = filemap_range_len(r);
	uint64_t n = off >= size ? 0 : size - off < len ? size - off : len;
	printf("ok %016" PRIx64 "\n", fnv(fnv_init, filemap_range_addr(r), n));
}

static int count_dir(const char *path, const char *link_prefix)
{
	DIR *d = opendir(path);
	int n = 0;
	struct dirent *e;
	while (d != NULL && (e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		if (link_prefix != NULL) {
			char p[512], target[256];
			snprintf(p, sizeof p, "%s/%s", path, e->d_name);
			ssize_t k = readlink(p, target, sizeof target - 1);
			if (k < 0 || strncmp(target, link_prefix, strlen(link_prefix)) != 0)
				continue;
		}
		n++;
	}
	if (d != NULL)
		closedir(d);
	return n - (link_prefix == NULL && strcmp(path, "/proc/self/fd") == 0); /* opendir's own */
}

static int sockets(void)
{
	return count_dir("/proc/self/fd", "socket:");
}

/* drop_ptrace drops CAP_SYS_PTRACE, without which the kernel refuses
 * UFFD_FEATURE_EVENT_FORK. */
static void cmd_drop_ptrace(void)
{
	struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3};
	struct __user_cap_data_struct d[2];
	if (syscall(SYS_capget, &h, d) < 0) {
		printf("err %d -1 capget: %s\n", errno, strerror(errno));
		return;
	}
	unsigned bit = 1u << (CAP_SYS_PTRACE % 32);
	d[CAP_SYS_PTRACE / 32].effective &= ~bit;
	d[CAP_SYS_PTRACE / 32].permitted &= ~bit;
	d[CAP_SYS_PTRACE / 32].inheritable &= ~bit;
	if (syscall(SYS_capset, &h, d) < 0) {
		printf("err %d -1 capset: %s\n", errno, strerror(errno));
		return;
	}
	printf("ok\n");
}

static void cmd_cost(void)
{
	char line[256], sigcgt[32] = "?";
	FILE *f = fopen("/proc/self/status", "r");
	while (f != NULL && fgets(line, sizeof line, f) != NULL)
		if (sscanf(line, "SigCgt: %31s", sigcgt) == 1)
			break;
	if (f != NULL)
		fclose(f);
	char children[4096] = "";
	snprintf(line, sizeof line, "/proc/self/task/%d/children", getpid());
	if ((f = fopen(line, "r")) != NULL) {
		if (fgets(children, sizeof children, f) == NULL)
			children[0] = '\0';
		fclose(f);
	}
	int nchildren = 0;
	for (char *p = strtok(children, " \n"); p != NULL; p = strtok(NULL, " \n"))
		nchildren++;
	printf("ok %d %d %d %s %d\n", count_dir("/proc/self/task", NULL), count_dir("/proc/self/fd", NULL),
	       sockets(), sigcgt, nchildren);
}

/* Readers: threads that read an object while the main thread forks. */
static struct {
	pthread_t t[MAX_THREADS];
	int n;
	filemap_t *m;
	const char *uri; /* opened, read and closed in turn, if not NULL */
	struct filemap_options o;
	atomic_int stop;
	atomic_long reads, errors, uri_errors;
} readers;

/* read_other opens, reads and closes readers.uri: the library's lock is
 * taken and its connections made and closed while the main thread forks. */
static int read_other(unsigned char *buf, size_t n)
{
	filemap_t *o = filemap_open(readers.uri, &readers.o);
	if (o == NULL)
		return -1;
	int rc = filemap_read_at(o, buf, n, 0) < 0 ? -1 : 0;
	filemap_close(o);
	return rc;
}

static void *reader(void *arg)
{
	unsigned seed = (unsigned)(uintptr_t)arg;
	unsigned char buf[4096];
	uint64_t size = filemap_size(readers.m);
	while (!atomic_load(&readers.stop) && size > 0) {
		uint64_t off = (uint64_t)rand_r(&seed) * 4096 % size;
		if (filemap_read_at(readers.m, buf, sizeof buf, off) < 0)
			atomic_fetch_add(&readers.errors, 1);
		if (readers.uri != NULL && read_other(buf, sizeof buf) < 0)
			atomic_fetch_add(&readers.uri_errors, 1);
		atomic_fetch_add(&readers.reads, 1);
	}
	return NULL;
}

static void cmd_threads(filemap_t *m, int n, char **arg, int nargs)
{
	static char uri[4096], socket[4096];
	readers.m = m;
	readers.uri = NULL;
	readers.o = (struct filemap_options){0};
	if (nargs > 0) {
		snprintf(uri, sizeof uri, "%s", arg[0]);
		readers.uri = uri;
	}
	if (nargs > 1 && strncmp(arg[1], "socket=", 7) == 0) {
		snprintf(socket, sizeof socket, "%s", arg[1] + 7);
		readers.o.socket = socket;
	}
	atomic_store(&readers.stop, 0);
	for (readers.n = 0; readers.n < n && readers.n < MAX_THREADS; readers.n++)
		pthread_create(&readers.t[readers.n], NULL, reader, (void *)(uintptr_t)(readers.n + 1));
	while (atomic_load(&readers.reads) < n) /* all of them running */
		usleep(1000);
	printf("ok\n");
}

static void cmd_stop(void)
{
	atomic_store(&readers.stop, 1);
	for (int i = 0; i < readers.n; i++)
		pthread_join(readers.t[i], NULL);
	readers.n = 0;
	printf("ok %ld %ld %ld\n", atomic_load(&readers.reads), atomic_load(&readers.errors),
	       atomic_load(&readers.uri_errors));
}

/* child is the fork's child: it answers on fd out and exits. */
static void child(filemap_t *m, const char *uri, FILE *out)
{
	uint64_t mem = 0, read = 0, other = 0;
	struct filemap_stat st;
	filemap_stat(m, &st);
	if (st.flags & FILEMAP_DONTFORK) {
		int mapped = msync(filemap_addr(m), 4096, MS_ASYNC) == 0;
		unsigned char b;
		int err = filemap_read_at(m, &b, 1, 0) < 0 ? filemap_errno() : 0;
		fprintf(out, "dontfork %s %d\n", mapped ? "mapped" : "unmapped", err);
		filemap_close(m);
		return;
	}
	mem = sum_mem(m);
	if (sum_read(m, &read) < 0) {
		fprintf(out, "err %d %" PRId64 " child: %s\n", filemap_errno(), filemap_error_offset(), filemap_errmsg());
		return;
	}
	int before = sockets(), after = before;
	if (uri != NULL) {
		filemap_t *o = filemap_open(uri, NULL);
		if (o == NULL) {
			fprintf(out, "err %d %" PRId64 " child: %s\n", filemap_errno(), filemap_error_offset(), filemap_errmsg());
			return;
		}
		after = sockets();
		if (sum_read(o, &other) < 0 || sum_mem(o) != other) {
			fprintf(out, "err %d %" PRId64 " child: %s\n", filemap_errno(), filemap_error_offset(), filemap_errmsg());
			return;
		}
		filemap_close(o);
	}
	filemap_range_t *r = filemap_map(m, NULL, 65536, PROT_READ, MAP_PRIVATE, 4096);
	if (r == NULL) {
		fprintf(out, "err %d %" PRId64 " child: map: %s\n", filemap_errno(), filemap_error_offset(), filemap_errmsg());
		return;
	}
	uint64_t size = filemap_size(m), end = size < 4096 + 65536 ? size : 4096 + 65536;
	uint64_t range = fnv(fnv_init, filemap_range_addr(r), end > 4096 ? end - 4096 : 0);
	if (filemap_unmap(r) < 0 || filemap_close(m) < 0) {
		fprintf(out, "err %d %" PRId64 " child: close: %s\n", filemap_errno(), filemap_error_offset(), filemap_errmsg());
		return;
	}
	fprintf(out, "ok %016" PRIx64 " %016" PRIx64 " %#x %d %d %016" PRIx64 " %016" PRIx64 "\n", mem, read, st.flags,
		before, after, other, range);
}

/* fork_one forks one child and writes its answer into line. */
static void fork_one(int id, const char *uri, char *line, size_t cap)
{
	int p[2];
	if (pipe(p) < 0) {
		snprintf(line, cap, "err %d -1 pipe: %s\n", errno, strerror(errno));
		return;
	}
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		/* A child stuck (a test failing) must not hold the test's pipes
		 * open, nor outlive the driver. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		close(0);
		close(1);
		close(p[0]);
		FILE *out = fdopen(p[1], "w");
		child(objects[id], uri, out);
		fclose(out);
		_exit(0);
	}
	close(p[1]);
	FILE *in = fdopen(p[0], "r");
	if (fgets(line, (int)cap, in) == NULL)
		line[0] = '\0';
	fclose(in);
	int status;
	waitpid(pid, &status, 0);
	if (line[0] == '\0')
		snprintf(line, cap, "err %d -1 child ended (status %#x) without an answer\n", EIO, status);
}

static void cmd_fork(int id, char **arg, int n)
{
	const char *uri = NULL;
	int times = 1;
	for (int i = 0; i < n; i++) {
		if (strncmp(arg[i], "n=", 2) == 0)
			times = atoi(arg[i] + 2);
		else
			uri = arg[i];
	}
	char line[4096] = "";
	for (int i = 0; i < times; i++) {
		fork_one(id, uri, line, sizeof line);
		if (strncmp(line, "ok", 2) != 0)
			break;
	}
	fputs(line, stdout);
}

/* forkexit: see the top of the file. */
static void cmd_forkexit(filemap_t *m)
{
	int p[2];
	if (pipe(p) < 0) {
		printf("err %d -1 pipe: %s\n", errno, strerror(errno));
		return;
	}
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		uint64_t sum = sum_mem(m);
		if (write(p[1], &sum, sizeof sum) != sizeof sum)
			_exit(1);
		_exit(0);
	}
	close(p[1]);
	uint64_t sum;
	ssize_t n = pid < 0 ? -1 : read(p[0], &sum, sizeof sum);
	close(p[0]);
	int status = 0;
	if (pid > 0)
		waitpid(pid, &status, 0);
	if (n != sizeof sum)
		printf("err %d -1 the child ended (status %#x) without an answer\n", EIO, status);
	else
		printf("ok %016" PRIx64 "\n", sum);
}

/* leave: see the top of the file. */
static void cmd_leave(int id)
{
	int p[2];
	if (pipe(p) < 0) {
		printf("err %d -1 pipe: %s\n", errno, strerror(errno));
		return;
	}
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0) {
		printf("err %d -1 fork: %s\n", errno, strerror(errno));
		return;
	}
	if (pid > 0) {
		if (filemap_close(objects[id]) < 0)
			dprintf(p[1], "err %d %" PRId64 " the parent's close: %s\n", filemap_errno(), filemap_error_offset(),
				filemap_errmsg());
		_exit(0);
	}
	close(p[1]);
	char why[4096];
	size_t got = 0;
	ssize_t n;
	while ((n = read(p[0], why + got, sizeof why - 1 - got)) > 0) /* to end of file: the parent has exited */
		got += (size_t)n;
	why[got] = '\0';
	close_range(3, ~0U, 0);
	if (got > 0)
		fputs(why, stdout);
	else
		printf("ok %d\n", getpid());
}

static sigjmp_buf bus_jump;

static void on_sigbus(int sig)
{
	(void)sig;
	siglongjmp(bus_jump, 1);
}

/* touch_sum sums the k bytes at p by reading them: -1 if that raised SIGBUS. */
static int touch_sum(const unsigned char *p, size_t k, uint64_t *sum)
{
	if (sigsetjmp(bus_jump, 1) != 0)
		return -1;
	*sum = fnv(fnv_init, p, k);
	return 0;
}

/* pages: see the top of the file. */
static void cmd_pages(filemap_t *m, char **arg, int n)
{
	uint64_t size = filemap_size(m), off = n > 2 ? strtoull(arg[2], NULL, 0) : 0;
	uint64_t end = n > 3 ? off + strtoull(arg[3], NULL, 0) : size;
	const unsigned char *base = filemap_addr(m);
	struct sigaction bus = {.sa_handler = on_sigbus}, old;
	sigemptyset(&bus.sa_mask);
	sigaction(SIGBUS, &bus, &old);
	printf("ok");
	for (uint64_t p = off; p < end && p < size; p += 4096) {
		uint64_t sum;
		if (touch_sum(base + p, size - p < 4096 ? (size_t)(size - p) : 4096, &sum) < 0)
			printf(" sigbus");
		else
			printf(" %016" PRIx64, sum);
	}
	printf("\n");
	sigaction(SIGBUS, &old, NULL);
}

static void cmd(char **arg, int n)
{
	const char *c = arg[0];
	filemap_t *m = n > 1 ? object(arg[1]) : NULL;
	uint64_t sum;
	if (strcmp(c, "open") == 0 && n >= 2)
		cmd_open(arg + 1, n - 1);
	else if (strcmp(c, "cost") == 0)
		cmd_cost();
	else if (strcmp(c, "drop-ptrace") == 0)
		cmd_drop_ptrace();
	else if (strcmp(c, "stop") == 0)
		cmd_stop();
	else if (strcmp(c, "unmap") == 0 && n == 2) {
		int id = atoi(arg[1]);
		if (filemap_unmap(ranges[id]) < 0)
			return fail();
		ranges[id] = NULL;
		printf("ok\n");
	} else if (strcmp(c, "rsum") == 0 && n == 3)
		cmd_rsum(ranges[atoi(arg[1])], strtoull(arg[2], NULL, 0));
	else if (m == NULL)
		printf("err %d -1 no such object or command: %s\n", EINVAL, c);
	else if (strcmp(c, "read") == 0 && n == 4)
		cmd_read(m, strtoull(arg[2], NULL, 0), strtoull(arg[3], NULL, 0));
	else if (strcmp(c, "sum") == 0)
		sum_read(m, &sum) < 0 ? fail() : (void)printf("ok %016" PRIx64 "\n", sum);
	else if (strcmp(c, "memsum") == 0)
		printf("ok %016" PRIx64 "\n", sum_mem(m));
	else if (strcmp(c, "write") == 0 && n == 4) {
		((unsigned char *)filemap_addr(m))[strtoull(arg[2], NULL, 0)] = (unsigned char)atoi(arg[3]);
		printf("ok\n");
	} else if (strcmp(c, "advise") == 0 && n == 5)
		filemap_advise(m, advice_of(arg[2]), strtoull(arg[3], NULL, 0), strtoull(arg[4], NULL, 0)) < 0
			? fail()
			: (void)printf("ok\n");
	else if (strcmp(c, "stat") == 0) {
		struct filemap_stat st;
		filemap_stat(m, &st);
		printf("ok %" PRIu64 " %#x %s %s\n", st.size, st.flags, st.version, st.name);
	} else if (strcmp(c, "map") == 0 && n >= 5)
		cmd_map(m, arg + 1, n - 1);
	else if (strcmp(c, "close") == 0) {
		objects[atoi(arg[1])] = NULL;
		filemap_close(m) < 0 ? fail() : (void)printf("ok\n");
	} else if (strcmp(c, "threads") == 0 && n >= 3)
		cmd_threads(m, atoi(arg[2]), arg + 3, n - 3);
	else if (strcmp(c, "fork") == 0)
		cmd_fork(atoi(arg[1]), arg + 2, n - 2);
	else if (strcmp(c, "forkexit") == 0)
		cmd_forkexit(m);
	else if (strcmp(c, "leave") == 0)
		cmd_leave(atoi(arg[1]));
	else if (strcmp(c, "pages") == 0)
		cmd_pages(m, arg, n);
	else if (strcmp(c, "split") == 0 && n == 4)
		madvise((char *)filemap_addr(m) + strtoull(arg[2], NULL, 0), strtoull(arg[3], NULL, 0), MADV_RANDOM) < 0
			? (void)printf("err %d -1 madvise: %s\n", errno, strerror(errno))
			: (void)printf("ok\n");
	else
		printf("err %d -1 bad command: %s\n", EINVAL, c);
}

int main(void)
{
	char line[8192];
	while (fgets(line, sizeof line, stdin) != NULL) {
		char *arg[16];
		int n = 0;
		for (char *p = strtok(line, " \n"); p != NULL && n < 16; p = strtok(NULL, " \n"))
			arg[n++] = p;
		if (n == 0)
			continue;
		if (strcmp(arg[0], "quit") == 0)
			break;
		cmd(arg, n);
		fflush(stdout);
	}
	return 0;
}
