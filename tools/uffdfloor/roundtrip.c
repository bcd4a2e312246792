// roundtrip: the floor of a page fault served from user space. One thread
// touches the pages of an anonymous mapping registered with userfaultfd, one
// load each, timing each load; a second thread, blocked in read(2) on the
// userfaultfd, gets each fault's message and resolves it with UFFDIO_COPY
// of one page from memory. No store, no cache, no Go runtime: what is left
// is the kernel's part of a round trip and the two wake-ups, the handler's
// and then the faulting thread's. filemap's /dev/shm rows and fault
// service times are read against it.
//
//   cc -O2 -pthread -o roundtrip roundtrip.c && ./roundtrip [PAGES]
//
// (scripts/uffdfloor.sh builds and runs it.) Its loads are user-mode
// faults, which any user may handle (UFFD_USER_MODE_ONLY): it needs no
// privilege.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096L

static int uffd;
static char *src; // the page every fault is filled from

static void die(const char *what) {
	fprintf(stderr, "roundtrip: %s: %s\n", what, strerror(errno));
	exit(1);
}

// serve resolves every fault until the mapping is done with: each message
// read is one fault, filled with one UFFDIO_COPY that wakes its thread.
static void *serve(void *arg) {
	long pages = *(long *)arg;
	for (long n = 0; n < pages;) {
		struct uffd_msg msg;
		ssize_t r = read(uffd, &msg, sizeof msg);
		if (r < 0 && errno == EINTR)
			continue;
		if (r != sizeof msg)
			die("read the userfaultfd");
		if (msg.event != UFFD_EVENT_PAGEFAULT)
			continue;
		struct uffdio_copy copy = {
			.dst = msg.arg.pagefault.address & ~(PAGE - 1),
			.src = (uintptr_t)src,
			.len = PAGE,
		};
		if (ioctl(uffd, UFFDIO_COPY, &copy) < 0 && errno != EEXIST)
			die("UFFDIO_COPY");
		n++;
	}
	return NULL;
}

static int cmp_long(const void *a, const void *b) {
	long x = *(const long *)a, y = *(const long *)b;
	return (x > y) - (x < y);
}

static long nanos(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

int main(int argc, char **argv) {
	long pages = argc > 1 ? atol(argv[1]) : 4096;
	if (pages < 1) {
		fprintf(stderr, "usage: roundtrip [PAGES]   (PAGES at least 1, default 4096)\n");
		return 2;
	}
	if ((uffd = syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY)) < 0)
		die("userfaultfd");
	struct uffdio_api api = {.api = UFFD_API};
	if (ioctl(uffd, UFFDIO_API, &api) < 0)
		die("UFFDIO_API");

	src = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *mem = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	long *lat = malloc(pages * sizeof *lat);
	if (src == MAP_FAILED || mem == MAP_FAILED || lat == NULL)
		die("allocate");
	memset(src, 0x5a, PAGE);
	memset(lat, 0, pages * sizeof *lat); // faulted in now, not among the timed loads
	struct uffdio_register reg = {
		.range = {.start = (uintptr_t)mem, .len = pages * PAGE},
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};
	if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0)
		die("UFFDIO_REGISTER");

	pthread_t handler;
	if ((errno = pthread_create(&handler, NULL, serve, &pages)) != 0)
		die("start the handler thread");
	for (long i = 0; i < pages; i++) {
		long t0 = nanos();
		char v = *(volatile char *)(mem + i * PAGE);
		lat[i] = nanos() - t0;
		if (v != 0x5a) {
			fprintf(stderr, "roundtrip: page %ld reads %#x, want 0x5a\n", i, v);
			return 1;
		}
	}
	pthread_join(handler, NULL);

	qsort(lat, pages, sizeof *lat, cmp_long);
	long p50 = lat[(pages * 50 + 99) / 100 - 1], p99 = lat[(pages * 99 + 99) / 100 - 1];
	printf("%ld faults, each a round trip through a handler thread: p50 %.1f µs, p99 %.1f µs, max %.1f µs\n",
	       pages, p50 / 1e3, p99 / 1e3, lat[pages - 1] / 1e3);
	return 0;
}
