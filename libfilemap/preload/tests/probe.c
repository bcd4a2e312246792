/*
 * probe: an ordinary program, knowing nothing of filemap, that the Go
 * tests run under LD_PRELOAD=libfilemap-preload.so to check what a
 * program sees of a filemap path through libc. Each command prints lines
 * "KEY VALUE..."; sums are FNV-1a 64 in hex.
 *
 *	readall PATH BUF	read(2) to the end, BUF bytes at a time: bytes N, errno E, sum S
 *	pread PATH OFF LEN	pread(2) once: n N, errno E, sum S
 *	touch PATH OFF		mmap(2) MAP_SHARED the whole file, read the byte at OFF: byte B
 *	nozeros PATH		what the calls the shim does not stand in for do with its descriptor
 *	fds PATH		descriptor calls: dup, lseek, fcntl, ioctl, fstat, readv...
 *	maps PATH		mapping calls: MAP_SHARED, copy-on-write, mprotect, partial munmap, mremap
 *	stdio PATH		fopen, fread, fileno, fseek, fdopen, freopen
 *	threads PATH N		N threads read(2) one descriptor: bytes N, misplaced K, duplicates K
 *	fork PATH		a fork(2) child reads a descriptor and a mapping its parent made
 *	forkread PATH		a fork(2) child reads a descriptor its parent opened and read from
 *	forklock PATH OFF	a thread read(2)s at OFF; on "fork" from stdin, a fork(2) child read(2)s too
 *	exec PATH		a descriptor without O_CLOEXEC, through execve(2) of a program without the shim
 *	execread FD		(what exec runs) read(2), open(2) by /proc/self/fd and fstat(2) of FD
 *	cost [PATH]		threads, SIGBUS handler, children, descriptors; before and after opening PATH
 *
 * The file a command reads is expected to hold the test pattern (every
 * 8-byte word at offset o is pattern_word(o)) where it checks placement.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 0x100000001b3ull;
	return h;
}

static const uint64_t fnv_init = 0xcbf29ce484222325ull;

/* pattern_word is internal/pattern.Word. */
static uint64_t pattern_word(uint64_t off)
{
	uint64_t x = off / 8 * 0x9E3779B97F4A7C15ull;
	return (x ^ x >> 29) | 1;
}

/* word_offset inverts pattern_word: the offset whose word w is, or
 * UINT64_MAX. The xorshift undoes itself applied twice more; the
 * multiplier is odd, so invertible modulo 2^64; the low bit that "| 1"
 * may have set is tried both ways. */
static uint64_t word_offset(uint64_t w, uint64_t size)
{
	uint64_t k = 0x9E3779B97F4A7C15ull, inv = k;
	for (int i = 0; i < 6; i++)
		inv *= 2 - k * inv;
	for (int low = 0; low < 2; low++) {
		uint64_t y = w ^ (uint64_t)low;
		uint64_t x = y ^ y >> 29 ^ y >> 58;
		uint64_t off = x * inv * 8;
		if (off / 8 == x * inv && off < size && pattern_word(off) == w)
			return off;
	}
	return UINT64_MAX;
}

static int open_or_die(const char *path, int flags)
{
	int fd = open(path, flags);
	if (fd < 0) {
		printf("open %s: errno %d %s\n", path, errno, strerror(errno));
		exit(2);
	}
	return fd;
}

/* result prints a call's return value and errno. */
static void result(const char *name, long rc)
{
	printf("%s %ld %d\n", name, rc, rc < 0 ? errno : 0);
}

static int cmd_readall(char **arg)
{
	int fd = open_or_die(arg[0], O_RDONLY);
	size_t bufsz = (size_t)atol(arg[1]);
	char *buf = malloc(bufsz);
	uint64_t h = fnv_init, total = 0;
	ssize_t n;
	while ((n = read(fd, buf, bufsz)) > 0) {
		h = fnv(h, buf, (size_t)n);
		total += (uint64_t)n;
	}
	printf("bytes %" PRIu64 "\nerrno %d\nsum %016" PRIx64 "\n", total, n < 0 ? errno : 0, h);
	return 0;
}

static int cmd_pread(char **arg)
{
	int fd = open_or_die(arg[0], O_RDONLY);
	size_t len = (size_t)atol(arg[2]);
	char *buf = malloc(len);
	ssize_t n = pread(fd, buf, len, atol(arg[1]));
	printf("n %zd\nerrno %d\nsum %016" PRIx64 "\n", n, n < 0 ? errno : 0, fnv(fnv_init, buf, n > 0 ? (size_t)n : 0));
	return 0;
}

static int cmd_touch(char **arg)
{
	int fd = open_or_die(arg[0], O_RDONLY);
	struct stat st;
	fstat(fd, &st);
	const volatile unsigned char *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		printf("mmap errno %d\n", errno);
		return 1;
	}
	fflush(stdout);
	printf("byte %d\n", p[atol(arg[1])]);
	return 0;
}

/* Each call a program may make without libc's wrappers, or through ones
 * the shim does not stand in for: every one must fail, none read. */
static int cmd_nozeros(char **arg)
{
	int fd = open_or_die(arg[0], O_RDONLY);
	char buf[4096];
	int p[2];
	if (pipe(p) < 0)
		return 1;
	char out[] = "/tmp/probe-nozeros-XXXXXX";
	int o = mkstemp(out);
	unlink(out);
	result("sendfile", sendfile(o, fd, NULL, sizeof buf));
	result("copy_file_range", copy_file_range(fd, NULL, o, NULL, sizeof buf, 0));
	result("splice", splice(fd, NULL, p[1], NULL, sizeof buf, 0));
	result("sys_read", syscall(SYS_read, fd, buf, sizeof buf));
	result("sys_pread64", syscall(SYS_pread64, fd, buf, sizeof buf, 0));
	struct iovec iov = {buf, sizeof buf};
	result("sys_readv", syscall(SYS_readv, fd, &iov, 1));
	long m = syscall(SYS_mmap, NULL, sizeof buf, PROT_READ, MAP_PRIVATE, fd, 0);
	result("sys_mmap", m == -1 ? -1 : 0);
	char self[64];
	snprintf(self, sizeof self, "/proc/self/fd/%d", fd);
	int again = open(self, O_RDONLY); /* as /dev/stdin is, and freopen(NULL, ...) */
	result("reopen", again < 0 ? -1 : read(again, buf, sizeof buf));
	result("read", read(fd, buf, sizeof buf)); /* the shim's: this one reads */
	return 0;
}

static void check_offset(int fd, const char *name, off_t want)
{
	off_t at = lseek(fd, 0, SEEK_CUR);
	printf("%s %s\n", name, at == want ? "ok" : "wrong");
}

static int cmd_fds(char **arg)
{
	const char *path = arg[0];
	result("open_rdwr", open(path, O_RDWR));
	result("open_creat", open(path, O_RDONLY | O_CREAT, 0644));
	result("open_directory", open(path, O_RDONLY | O_DIRECTORY));
	int fd = open_or_die(path, O_RDONLY | O_CLOEXEC);
	struct stat st, pst;
	fstat(fd, &st);
	stat(path, &pst);
	printf("fstat_size %lld\nsame_inode %d\n", (long long)st.st_size, st.st_ino == pst.st_ino && st.st_dev == pst.st_dev);
	printf("fstat_regular %d\nfstat_mode %o\n", S_ISREG(st.st_mode), st.st_mode & 07777);

	char a[100], b[100];
	result("read_first", read(fd, a, sizeof a));
	int d = dup(fd);
	check_offset(d, "dup_shares_offset", 100);
	result("read_dup", read(d, b, sizeof b));
	check_offset(fd, "dup_moves_offset", 200);
	printf("dup_reads_on %d\n", memcmp(b, a, sizeof a) != 0 && pattern_word(104) == *(uint64_t *)(b + 4));
	int d2 = dup2(fd, 100);
	check_offset(d2, "dup2_shares_offset", 200);
	int d3 = fcntl(fd, F_DUPFD_CLOEXEC, 200);
	printf("f_dupfd_cloexec %d %d\n", d3 >= 200, (fcntl(d3, F_GETFD) & FD_CLOEXEC) != 0);
	close(fd);
	check_offset(d, "dup_outlives_close", 200);

	printf("f_getfl_accmode %d\n", fcntl(d, F_GETFL) & O_ACCMODE);
	struct flock rl = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 1 << 30, .l_len = 1};
	result("f_setlk_read", fcntl(d, F_SETLK, &rl));
	struct flock wl = rl;
	wl.l_type = F_WRLCK;
	result("f_setlk_write", fcntl(d, F_SETLK, &wl));
	struct flock gl = wl;
	result("f_getlk", fcntl(d, F_GETLK, &gl));
	printf("f_getlk_type_unlck %d\n", gl.l_type == F_UNLCK);
	result("flock", flock(d, LOCK_SH | LOCK_NB));
	result("fsync", fsync(d));

	int avail = -1;
	lseek(d, st.st_size - 10, SEEK_SET);
	ioctl(d, FIONREAD, &avail);
	printf("fionread %d\n", avail);
	struct termios tio;
	result("tcgets", ioctl(d, TCGETS, &tio));
	result("fionclex", ioctl(d3, FIONCLEX));
	printf("fionclex_cleared %d\n", (fcntl(d3, F_GETFD) & FD_CLOEXEC) == 0);
	printf("isatty %d %d\n", isatty(d), errno);

	printf("seek_end %lld\n", (long long)lseek(d, 0, SEEK_END));
	result("seek_negative", lseek(d, -1, SEEK_SET));
	result("seek_data_past_end", lseek(d, st.st_size, SEEK_DATA));
	printf("seek_hole %lld\n", (long long)lseek(d, 0, SEEK_HOLE));
	result("read_at_end", read(d, a, sizeof a));

	char v1[8], v2[4096];
	struct iovec iov[2] = {{v1, sizeof v1}, {v2, sizeof v2}};
	ssize_t n = preadv(d, iov, 2, 4096);
	printf("preadv %zd %d\n", n, *(uint64_t *)v1 == pattern_word(4096) && *(uint64_t *)v2 == pattern_word(4104));
	lseek(d, 8, SEEK_SET);
	n = readv(d, iov, 2);
	printf("readv %zd %d\n", n, *(uint64_t *)v1 == pattern_word(8) && *(uint64_t *)v2 == pattern_word(16));
	check_offset(d, "readv_moves_offset", 8 + (off_t)n);
	result("fadvise_sequential", posix_fadvise(d, 0, 0, POSIX_FADV_SEQUENTIAL));
	result("fadvise_willneed", posix_fadvise(d, 0, 1 << 20, POSIX_FADV_WILLNEED));
	result("readahead", readahead(d, 0, 1 << 20));
	result("close", close(d));
	result("read_closed", read(d, a, sizeof a));
	result("close_again", close(d));
	char *canon = realpath(path, NULL);
	printf("realpath_same %d\n", canon != NULL && strcmp(canon, path) == 0);
	free(canon);
	result("access_r", access(path, R_OK));
	result("access_w", access(path, W_OK));
	close(d2);
	close(d3);
	return 0;
}

static int cmd_maps(char **arg)
{
	int fd = open_or_die(arg[0], O_RDONLY);
	long ps = sysconf(_SC_PAGESIZE);
	size_t len = 8 * (size_t)ps;
	result("shared_write", mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED ? -1 : 0);
	uint64_t *s = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, (off_t)ps);
	printf("shared_reads %d\n", s != MAP_FAILED && s[0] == pattern_word((uint64_t)ps));
	result("mprotect_shared_write", mprotect(s, len, PROT_READ | PROT_WRITE));
	result("unaligned_offset", mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 100) == MAP_FAILED ? -1 : 0);

	uint64_t *w = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	w[1] = 42;
	uint64_t fromfile;
	printf("cow_private %d %d\n", w[1] == 42, pread(fd, &fromfile, 8, 8) == 8 && fromfile == pattern_word(8));
	result("madvise_dontneed", madvise(w, (size_t)ps, MADV_DONTNEED));
	printf("dontneed_drops_write %d\n", w[1] == pattern_word(8));
	result("madvise_sequential", madvise(w, len, MADV_SEQUENTIAL));
	result("madvise_dofork", madvise(w, len, MADV_DOFORK));

	/* A hole in the middle: the pages either side stay, the hole is gone. */
	char *c = (char *)w;
	result("munmap_middle", munmap(c + 2 * ps, (size_t)ps));
	printf("around_hole %d %d\n", *(uint64_t *)(c + ps) == pattern_word((uint64_t)ps),
	       *(uint64_t *)(c + 3 * ps) == pattern_word(3 * (uint64_t)ps));
	/* Memory asked for at the hole's address (a hint, not MAP_FIXED) is put
	 * elsewhere, or it would go with the rest of the mapping. */
	char *hinted = mmap(c + 2 * ps, (size_t)ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	memset(hinted, 5, (size_t)ps);
	void *r = mremap(c, 4 * (size_t)ps, 2 * (size_t)ps, 0);
	printf("mremap_shrink %d\n", r == c);
	result("mremap_grow", mremap(s, len, 2 * len, MREMAP_MAYMOVE) == MAP_FAILED ? -1 : 0);
	result("munmap_rest", munmap(c, len));
	printf("hinted_survives %d\n", hinted[0] == 5 && hinted[ps - 1] == 5);
	result("munmap_shared", munmap(s, len));
	/* Anonymous memory the kernel may place where the ranges were. */
	char *anon = mmap(NULL, 64 * (size_t)ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	memset(anon, 7, 64 * (size_t)ps);
	printf("anon_after %d\n", anon[0] == 7 && anon[64 * ps - 1] == 7);
	result("munmap_anon", munmap(anon, 64 * (size_t)ps));

	/* Memory of the program's put with MAP_FIXED inside a filemap mapping
	 * outlives the unmapping of the rest of it. */
	char *q = mmap(NULL, 4 * (size_t)ps, PROT_READ, MAP_PRIVATE, fd, 0);
	char *mine = mmap(q + ps, (size_t)ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	memset(mine, 9, (size_t)ps);
	munmap(q, (size_t)ps);
	munmap(q + 2 * ps, 2 * (size_t)ps);
	printf("fixed_survives %d\n", mine == q + ps && mine[0] == 9 && mine[ps - 1] == 9);

	/* Past the end of the object, as for a file: the mapping is made. */
	struct stat st;
	fstat(fd, &st);
	off_t last = st.st_size / ps * ps;
	uint64_t *tail = mmap(NULL, 4 * (size_t)ps, PROT_READ, MAP_PRIVATE, fd, last);
	printf("map_tail %d\n", tail != MAP_FAILED);
	return 0;
}

static int cmd_stdio(char **arg)
{
	const char *path = arg[0];
	FILE *w = fopen(path, "w");
	printf("fopen_w %d %d\n", w == NULL, errno);
	FILE *f = fopen(path, "re");
	if (f == NULL) {
		printf("fopen errno %d\n", errno);
		return 1;
	}
	char buf[1 << 16];
	uint64_t h = fnv_init;
	size_t n, total = 0;
	while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
		h = fnv(h, buf, n);
		total += n;
	}
	printf("fread %zu %016" PRIx64 " %d\n", total, h, ferror(f));
	struct stat st;
	int rc = fstat(fileno(f), &st);
	printf("fileno_fstat %d %lld\n", rc, (long long)st.st_size);
	fseeko(f, 4096, SEEK_SET);
	uint64_t word;
	int ok = fread(&word, 8, 1, f) == 1 && word == pattern_word(4096);
	printf("fseek_fread %d %lld\n", ok, (long long)ftello(f));
	printf("fclose %d\n", fclose(f));

	int fd = open(path, O_RDONLY);
	FILE *g = fdopen(fd, "r");
	printf("fdopen_fread %d\n", g != NULL && fread(&word, 8, 1, g) == 1 && word == pattern_word(0));
	if (g != NULL)
		fclose(g);

	FILE *in = freopen(path, "r", stdin);
	h = fnv_init;
	total = 0;
	while (in != NULL && (n = fread(buf, 1, sizeof buf, stdin)) > 0) {
		h = fnv(h, buf, n);
		total += n;
	}
	printf("freopen %zu %016" PRIx64 "\n", total, h);
	return 0;
}

struct reader {
	int fd;
	uint64_t size;
	unsigned char *seen; /* a byte per 8-byte word */
	uint64_t bytes, misplaced, dups;
};

static pthread_mutex_t seen_mu = PTHREAD_MUTEX_INITIALIZER;

/* read_words reads whole words (a multiple of 8 bytes, so that each
 * read's first word says where it was read) until the end. */
static void *read_words(void *arg)
{
	struct reader *r = arg;
	uint64_t buf[4096];
	size_t sizes[] = {8, 4096, 8192, 32768};
	for (unsigned i = 0;; i++) {
		ssize_t n = read(r->fd, buf, sizes[i % 4]);
		if (n <= 0)
			break;
		pthread_mutex_lock(&seen_mu);
		r->bytes += (uint64_t)n;
		if (n < 8) { /* the object's tail, less than a word: nothing to place it by */
			pthread_mutex_unlock(&seen_mu);
			continue;
		}
		uint64_t first = word_offset(buf[0], r->size);
		if (first == UINT64_MAX) {
			r->misplaced++;
		} else {
			for (size_t k = 0; k < (size_t)n / 8; k++) {
				if (buf[k] != pattern_word(first + 8 * k))
					r->misplaced++;
				if (r->seen[first / 8 + k]++)
					r->dups++;
			}
		}
		pthread_mutex_unlock(&seen_mu);
	}
	return NULL;
}

static int cmd_threads(char **arg)
{
	int fd = open_or_die(arg[0], O_RDONLY);
	int nthreads = atoi(arg[1]);
	struct stat st;
	fstat(fd, &st);
	struct reader r = {.fd = fd, .size = (uint64_t)st.st_size, .seen = calloc((size_t)st.st_size / 8 + 1, 1)};
	pthread_t t[64];
	for (int i = 0; i < nthreads && i < 64; i++)
		pthread_create(&t[i], NULL, read_words, &r);
	for (int i = 0; i < nthreads && i < 64; i++)
		pthread_join(t[i], NULL);
	printf("bytes %" PRIu64 "\nmisplaced %" PRIu64 "\ndups %" PRIu64 "\n", r.bytes, r.misplaced, r.dups);
	return 0;
}

static int cmd_fork(char **arg)
{
	int fd = open_or_die(arg[0], O_RDONLY);
	struct stat st;
	fstat(fd, &st);
	size_t size = (size_t)st.st_size;
	const unsigned char *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (m == MAP_FAILED)
		return 1;
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		char *buf = malloc(size);
		ssize_t n = pread(fd, buf, size, 0);
		printf("child_pread %zd %016" PRIx64 "\n", n, fnv(fnv_init, buf, n > 0 ? (size_t)n : 0));
		printf("child_mapping %016" PRIx64 "\n", fnv(fnv_init, m, size));
		fflush(stdout);
		_exit(0);
	}
	int status;
	waitpid(pid, &status, 0);
	printf("child_status %d\n", status);
	printf("parent_mapping %016" PRIx64 "\n", fnv(fnv_init, m, size));
	return 0;
}

static int cmd_forkread(char **arg)
{
	int fd = open_or_die(arg[0], O_RDONLY);
	struct stat st;
	fstat(fd, &st);
	size_t size = (size_t)st.st_size;
	char first[64];
	ssize_t n = read(fd, first, sizeof first);
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		uint64_t word;
		ssize_t w = read(fd, &word, 8); /* at the offset the parent left */
		printf("child_read %zd %d\n", w, w == 8 && word == pattern_word(64));
		char *buf = malloc(size);
		ssize_t got = pread(fd, buf, size, 0);
		printf("child_pread %zd %016" PRIx64 "\n", got, fnv(fnv_init, buf, got > 0 ? (size_t)got : 0));
		fflush(stdout);
		_exit(0);
	}
	int status;
	waitpid(pid, &status, 0);
	printf("child_status %d\nparent_read %zd\n", status, n);
	return 0;
}

struct blocked {
	int fd;
	ssize_t n;
};

static void *read_page(void *arg)
{
	struct blocked *b = arg;
	char buf[4096];
	b->n = read(b->fd, buf, sizeof buf);
	return NULL;
}

/* forklock forks while another thread is inside read(2) of the same
 * descriptor (its page held back by the test's server): the child's own
 * read(2) must not wait for that thread, which it does not have. */
static int cmd_forklock(char **arg)
{
	struct blocked b = {.fd = open_or_die(arg[0], O_RDONLY)};
	lseek(b.fd, atol(arg[1]), SEEK_SET);
	pthread_t t;
	pthread_create(&t, NULL, read_page, &b);
	char line[64];
	if (fgets(line, sizeof line, stdin) == NULL)
		return 1;
	pid_t pid = fork();
	if (pid == 0) {
		char buf[4096];
		ssize_t n = read(b.fd, buf, sizeof buf);
		printf("child_read %zd\n", n);
		fflush(stdout);
		_exit(0);
	}
	printf("forked\n");
	int status;
	waitpid(pid, &status, 0);
	pthread_join(t, NULL);
	printf("child_status %d\nthread_read %zd\n", status, b.n);
	return 0;
}

static int cmd_exec(char **arg, char *self)
{
	int fd = open_or_die(arg[0], O_RDONLY);
	char fdarg[16];
	snprintf(fdarg, sizeof fdarg, "%d", fd);
	char *argv[] = {self, "execread", fdarg, NULL};
	char *envp[] = {NULL}; /* no LD_PRELOAD: a program that does not know the shim */
	fflush(stdout);
	execve(self, argv, envp);
	printf("execve errno %d\n", errno);
	return 1;
}

static int cmd_execread(char **arg)
{
	int fd = atoi(arg[0]);
	char buf[4096];
	result("read", read(fd, buf, sizeof buf));
	char self[64];
	snprintf(self, sizeof self, "/proc/self/fd/%d", fd);
	result("reopen", open(self, O_RDONLY));
	struct stat st;
	result("fstat", fstat(fd, &st));
	return 0;
}

static int count_dir(const char *path)
{
	DIR *d = opendir(path);
	int n = 0;
	for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL;)
		n += e->d_name[0] != '.';
	if (d != NULL)
		closedir(d);
	return n;
}

/* children counts this process's children, from /proc. */
static int children(void)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/self/task/%d/children", getpid());
	FILE *f = fopen(path, "r");
	int n = 0, c;
	for (int in = 0; f != NULL && (c = fgetc(f)) != EOF;) {
		n += !in && c != ' ';
		in = c != ' ';
	}
	if (f != NULL)
		fclose(f);
	return n;
}

static void cost(const char *when)
{
	struct sigaction sa;
	sigaction(SIGBUS, NULL, &sa);
	int fds = count_dir("/proc/self/fd") - 1; /* the one opendir holds */
	printf("%s threads %d sigbus_default %d children %d fds %d\n", when, count_dir("/proc/self/task"),
	       !(sa.sa_flags & SA_SIGINFO) && sa.sa_handler == SIG_DFL, children(), fds);
}

static int cmd_cost(char **arg, int n)
{
	cost("before");
	struct stat st;
	stat("/etc/passwd", &st);
	int fd = open("/etc/passwd", O_RDONLY);
	close(fd);
	cost("libc");
	if (n > 0) {
		fd = open_or_die(arg[0], O_RDONLY);
		cost("after");
	}
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 2)
		return 2;
	const char *cmd = argv[1];
	char **arg = argv + 2;
	int n = argc - 2;
	struct {
		const char *name;
		int nargs;
		int (*fn)(char **);
	} cmds[] = {
		{"readall", 2, cmd_readall}, {"pread", 3, cmd_pread}, {"touch", 2, cmd_touch},
		{"nozeros", 1, cmd_nozeros}, {"fds", 1, cmd_fds},     {"maps", 1, cmd_maps},
		{"stdio", 1, cmd_stdio},     {"threads", 2, cmd_threads}, {"fork", 1, cmd_fork},
		{"forkread", 1, cmd_forkread}, {"forklock", 2, cmd_forklock},
		{"execread", 1, cmd_execread},
	};
	for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
		if (strcmp(cmd, cmds[i].name) == 0 && n == cmds[i].nargs)
			return cmds[i].fn(arg);
	if (strcmp(cmd, "exec") == 0 && n == 1)
		return cmd_exec(arg, argv[0]);
	if (strcmp(cmd, "cost") == 0)
		return cmd_cost(arg, n);
	fprintf(stderr, "probe: unknown command or wrong arguments: %s\n", cmd);
	return 2;
}
