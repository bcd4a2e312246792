package libfilemap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/filemap/filemap"
	"github.com/filemap/filemap/internal/child"
	"github.com/filemap/filemap/internal/clitest"
	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/internal/testutil"
)

// checkChild checks a fork child's answer (tests/drive.c, fork): it read
// every byte of the parent's mapping, by touching it and with
// filemap_read_at; filemap_stat called the object inherited; it opened
// other (if not "") on a connection of its own, one more socket than it
// inherited, and read it; it mapped part of the inherited object anew.
func checkChild(t *testing.T, answer string, data []byte, other []byte) {
	t.Helper()
	f := fields(t, answer, 7)
	want := fnvSum(data)
	if f[0] != want || f[1] != want {
		t.Errorf("the child read the parent's mapping as %s (touched) and %s (filemap_read_at), want %s", f[0], f[1], want)
	}
	if f[2] != "0x100" {
		t.Errorf("the child's filemap_stat flags: %s, want 0x100 (FILEMAP_INHERITED, and not FILEMAP_DONTFORK)", f[2])
	}
	if other != nil {
		if f[4] != fmt.Sprint(atoi(t, f[3])+1) {
			t.Errorf("the child had %s sockets before it opened an object and %s after; want one more, a connection of its own", f[3], f[4])
		}
		if f[5] != fnvSum(other) {
			t.Errorf("the child read its own object as %s, want %s", f[5], fnvSum(other))
		}
	}
	if f[6] != fnvSum(data[4096:4096+65536]) {
		t.Errorf("the child's filemap_map of bytes [4096, 69632): sum %s, want %s", f[6], fnvSum(data[4096:4096+65536]))
	}
}

// TestFork forks a client without exec, as Python's multiprocessing and a
// shell do, while four of its threads read its mapping: the child reads
// every byte of the parent's mapping, most of them faults the handler
// serves through the userfaultfd the kernel gave it for the child (the
// parent touched one page and advised random reads), and opens an object
// of its own on a connection of its own. The threads' calls all work. Then the parent's mapping is still
// served: the child's close of what it inherited only unmapped it.
func TestFork(t *testing.T) {
	needPtrace(t)
	path, data := pattern.TempFile(t, objectSize)
	otherPath, other := pattern.TempFile(t, 3<<20+17)
	d := serve(t, nil)
	c := driveOn(t, d)
	id := fields(t, c.OK("open %s advice=random", path), 3)[0]
	c.OK("read %s 0 4096", id)
	// The threads also open, read and close another object, on the
	// connection the mapping's calls use.
	c.OK("threads %s 4 %s", id, otherPath)
	checkChild(t, c.OK("fork %s %s", id, otherPath), data, other)
	if got := fields(t, c.OK("stop"), 3); got[1] != "0" || got[2] != "0" {
		t.Errorf("the parent's threads during the fork: %s reads, %s errors, %s failed opens; want none", got[0], got[1], got[2])
	}

	// Every page must now come from the handler again: the parent's region
	// must still be attached, and the next child served as the first.
	if err := filemap.DropCaches(context.Background(), filemap.WithSocket(d.Sock)); err != nil {
		t.Fatal(err)
	}
	c.OK("advise %s dontneed 0 0", id)
	if got := c.OK("sum %s", id); got != fnvSum(data) {
		t.Errorf("the parent read its mapping after the child closed its copy: sum %s, want %s", got, fnvSum(data))
	}
	c.OK("advise %s dontneed 0 0", id)
	checkChild(t, c.OK("fork %s", id), data, nil)
}

// TestForkWhileOpening forks, again and again, a client whose threads open
// and close objects meanwhile, on a handler where nothing else keeps their
// connection: the library's lock is often held, and a connection being
// made, at the fork. The children must find the lock free (pthread_atfork)
// and make their own connections. That handler allows one region per
// client, so that most of the threads' attaches fail: a fork between a
// range's registering and its failed attach must not wait forever for the
// handler to read the fork event of a userfaultfd it never got.
func TestForkWhileOpening(t *testing.T) {
	needPtrace(t)
	path, data := pattern.TempFile(t, 1<<20)
	otherPath, other := pattern.TempFile(t, 64<<10)
	d, busy := serve(t, nil), serve(t, nil, "--max-regions-per-client", "1")
	c := driveOn(t, d)
	id := fields(t, c.OK("open %s", path), 3)[0]
	c.OK("threads %s 4 %s socket=%s", id, otherPath, busy.Sock)
	checkChild(t, c.OK("fork %s %s n=30", id, otherPath), data, other)
	if got := fields(t, c.OK("stop"), 3); got[1] != "0" || got[2] == got[0] {
		t.Errorf("the parent's threads during the forks: %s reads, %s errors, %s failed opens; want no errors, and some opens to work",
			got[0], got[1], got[2])
	}
}

// needPtrace skips a test of fork children's mappings where this process
// lacks CAP_SYS_PTRACE, without which the kernel refuses
// UFFD_FEATURE_EVENT_FORK (TestForkWithoutEventFork tests that case).
func needPtrace(t *testing.T) {
	t.Helper()
	if !canPtrace(t) {
		t.Skip("skipping: a fork child's mappings need UFFD_FEATURE_EVENT_FORK, which the kernel grants only with CAP_SYS_PTRACE: run as root")
	}
}

// TestForkWithoutEventFork runs a client without CAP_SYS_PTRACE, which the
// kernel refuses UFFD_FEATURE_EVENT_FORK: its mappings are MADV_DONTFORK,
// so a fork child has no copy that would read the cache's holes as zeros
// (and put them into the cache), and filemap_read_at of it says so.
func TestForkWithoutEventFork(t *testing.T) {
	path, data := pattern.TempFile(t, 1<<20)
	d := serve(t, nil)
	c := driveOn(t, d)
	c.OK("drop-ptrace")
	id := fields(t, c.OK("open %s", path), 3)[0]
	if got := fields(t, c.OK("stat %s", id), 4)[1]; got != "0x200" {
		t.Errorf("stat flags %s, want 0x200 (FILEMAP_DONTFORK)", got)
	}
	if got, want := c.Do("fork %s", id), fmt.Sprintf("dontfork unmapped %d", syscall.EBADF); got != want {
		t.Errorf("the child: %q, want %q", got, want)
	}
	if got := c.OK("sum %s", id); got != fnvSum(data) {
		t.Errorf("the parent read sum %s, want %s", got, fnvSum(data))
	}
}

// pageSums is what drive's pages answers for data from byte off on: each
// page's sum.
func pageSums(data []byte, off int) []string {
	var sums []string
	for p := off; p < len(data); p += 4096 {
		sums = append(sums, fnvSum(data[p:min(p+4096, len(data))]))
	}
	return sums
}

// checkPages checks drive's pages answer for all of data: every page reads
// as data's bytes, or raised SIGBUS where sigbus says a page must (and
// nowhere else). A page of zeros is a wrong sum.
func checkPages(t *testing.T, answer string, data []byte, sigbus func(page int) bool) {
	t.Helper()
	want := pageSums(data, 0)
	got := strings.Fields(answer)
	if len(got) != len(want) {
		t.Fatalf("pages answered %d pages, want %d", len(got), len(want))
	}
	bad := 0
	for i := range want {
		w := want[i]
		if sigbus != nil && sigbus(i) {
			w = "sigbus"
		}
		if got[i] != w {
			if bad++; bad <= 5 {
				t.Errorf("page %d (offset %d) read %s, want %s", i, i*4096, got[i], w)
			}
		}
	}
	if bad > 5 {
		t.Errorf("... %d pages wrong in all, of %d", bad, len(want))
	}
}

// stats asks the daemon at sock for its counters.
func stats(t *testing.T, sock string) filemap.Stats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := filemap.Stat(ctx, filemap.WithSocket(sock))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// leave hands c over to a fork child of it (drive's leave: the parent closes
// id and exits, the child keeps the mapping and none of the parent's
// descriptors), which is killed when the test ends, and waits for the
// daemon to see the parent's connection end. It returns the child's pid.
func leave(t *testing.T, c *child.T, d *clitest.Daemon, id string) int {
	t.Helper()
	pid, err := strconv.Atoi(c.OK("leave %s", id))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	testutil.WaitForState(t, func() string { return fmt.Sprintf("the parent's session to end: stats %+v", stats(t, d.Sock)) },
		func() bool { return stats(t, d.Sock).Clients == 0 })
	return pid
}

// readAll opens path in a new client of d and checks that it reads as data.
func readAll(t *testing.T, d *clitest.Daemon, path string, data []byte) {
	t.Helper()
	c := driveOn(t, d)
	id := fields(t, c.OK("open %s", path), 3)[0]
	if got := c.OK("memsum %s", id); got != fnvSum(data) {
		t.Errorf("a client that opened the object after the child read it as %s, want %s: the child planted pages in the shared cache", got, fnvSum(data))
	}
}

// TestForkChildOutlivesParent: a fork child keeps its copy of the parent's
// mapping after the parent closes it and exits, as it keeps a kernel
// mapping of a file, even though it closed every descriptor it inherited
// (the parent's connection among them): it reads every byte, most of them
// faults the handler serves, and a client that opens the object afterwards
// reads every byte too, so the child put no zero page into the shared
// cache.
func TestForkChildOutlivesParent(t *testing.T) {
	needPtrace(t)
	path, data := pattern.TempFile(t, objectSize)
	d := serve(t, nil)
	c := driveOn(t, d)
	id := fields(t, c.OK("open %s", path), 3)[0]
	c.OK("read %s 0 4096", id)
	leave(t, c, d, id)
	if st := stats(t, d.Sock); st.Regions != 1 {
		t.Errorf("the daemon serves %d regions after the parent left; want 1, the child's", st.Regions)
	}
	checkPages(t, c.OK("pages %s", id), data, nil)
	readAll(t, d, path, data)
}

// TestForkChildOutlivesDaemon: a fork child whose parent has left keeps its
// mapping served across a kill -9 of the daemon: the keeper holds the
// child's userfaultfd, and the next daemon on the socket serves it. The
// child reads every byte, and so does a client of the new daemon.
func TestForkChildOutlivesDaemon(t *testing.T) {
	needPtrace(t)
	path, data := pattern.TempFile(t, objectSize)
	d := serve(t, nil, "--keep")
	c := driveOn(t, d)
	id := fields(t, c.OK("open %s", path), 3)[0]
	leave(t, c, d, id)
	c.OK("pages %s 0 65536", id)
	d.Kill(t)
	d2 := serveAt(t, d.Sock, nil, "--keep")
	checkPages(t, c.OK("pages %s", id), data, nil)
	readAll(t, d2, path, data)
}

// TestForkChildSIGBUSWhenNotKept: a daemon without a keeper stops while a
// fork child, whose parent has left, maps an object, in three vmas (the
// child advised a part of it): the child's pages that it had not read
// raise SIGBUS, as a page that cannot be read does, never read as zeros,
// and those it had read still read right. A client of a daemon started
// afterwards reads every byte.
func TestForkChildSIGBUSWhenNotKept(t *testing.T) {
	needPtrace(t)
	path, data := pattern.TempFile(t, objectSize)
	d := serve(t, nil)
	c := driveOn(t, d)
	// Random advice: the cache holds no page but those read, so the child
	// maps no other.
	id := fields(t, c.OK("open %s advice=random", path), 3)[0]
	leave(t, c, d, id)
	const read = 16
	c.OK("pages %s 0 %d", id, read*4096)
	c.OK("split %s %d %d", id, 1<<20, 1<<20)
	d.Stop(t)
	checkPages(t, c.OK("pages %s", id), data, func(page int) bool { return page >= read })
	readAll(t, serveAt(t, d.Sock, nil), path, data)
}

// TestForkChildReaped: a fork child that exits without unmapping anything,
// as multiprocessing's workers do, is forgotten while its parent goes on:
// the daemon's regions are the parent's alone again.
func TestForkChildReaped(t *testing.T) {
	needPtrace(t)
	path, data := pattern.TempFile(t, 1<<20)
	d := serve(t, nil)
	c := driveOn(t, d)
	id := fields(t, c.OK("open %s", path), 3)[0]
	base := stats(t, d.Sock).Regions
	if got := c.OK("forkexit %s", id); got != fnvSum(data) {
		t.Errorf("the child read sum %s, want %s", got, fnvSum(data))
	}
	testutil.WaitForState(t, func() string { return fmt.Sprintf("%d regions, want %d", stats(t, d.Sock).Regions, base) },
		func() bool { return stats(t, d.Sock).Regions == base })
	if got := c.OK("memsum %s", id); got != fnvSum(data) {
		t.Errorf("the parent read sum %s, want %s", got, fnvSum(data))
	}
}

// TestKeeperForgetsExitedForkChild: the keeper of a killed daemon forgets
// a fork child's region once the child has exited, as it forgets a
// client's once its process has: left with nothing to keep, it exits
// (and unlinks its socket) instead of holding the uffd of a process that
// is gone until a daemon comes.
func TestKeeperForgetsExitedForkChild(t *testing.T) {
	needPtrace(t)
	path, _ := pattern.TempFile(t, 1<<20)
	d := serve(t, nil, "--keep")
	c := driveOn(t, d)
	id := fields(t, c.OK("open %s", path), 3)[0]
	pid := leave(t, c, d, id)
	d.Kill(t)
	keeper := d.Sock + ".keeper"
	if _, err := os.Stat(keeper); err != nil {
		t.Fatalf("no keeper after the daemon was killed: %v", err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the keeper to forget the exited child and exit", func() bool {
		_, err := os.Stat(keeper)
		return errors.Is(err, os.ErrNotExist)
	})
}

// TestForkChildOutlivesParentPrivateHandler: a fork child that closed every
// descriptor it inherited, its parent's lifeline to the private handler
// among them, keeps its mapping served after the parent has exited: the
// handler serves it until the child no longer maps it, then exits.
func TestForkChildOutlivesParentPrivateHandler(t *testing.T) {
	needPtrace(t)
	path, data := pattern.TempFile(t, objectSize)
	_, bin := built(t)
	dir, _ := built(t)
	c := drive(t, "drive", dir, "FILEMAP_EXECUTABLE="+bin)
	id := fields(t, c.OK("open %s", path), 3)[0]
	handler := children(t, c.Cmd.Process.Pid)
	if len(handler) != 1 {
		t.Fatalf("children %v, want the private handler alone", handler)
	}
	pid, err := strconv.Atoi(c.OK("leave %s", id))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	checkPages(t, c.OK("pages %s", id), data, nil)
	c.Send("quit")
	waitGone(t, handler[0])
}
