package libfilemap

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/filemap/filemap"
	"github.com/filemap/filemap/internal/pattern"
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
	path, data := testFile(t, objectSize)
	otherPath := filepath.Join(t.TempDir(), "other.bin")
	pattern.WriteFile(t, otherPath, 3<<20+17)
	other, err := os.ReadFile(otherPath)
	if err != nil {
		t.Fatal(err)
	}
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
	if err := filemap.DropCaches(context.Background(), filemap.WithSocket(d.sock)); err != nil {
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
	path, data := testFile(t, 1<<20)
	otherPath := filepath.Join(t.TempDir(), "other.bin")
	pattern.WriteFile(t, otherPath, 64<<10)
	other, err := os.ReadFile(otherPath)
	if err != nil {
		t.Fatal(err)
	}
	d, busy := serve(t, nil), serve(t, nil, "--max-regions-per-client", "1")
	c := driveOn(t, d)
	id := fields(t, c.OK("open %s", path), 3)[0]
	c.OK("threads %s 4 %s socket=%s", id, otherPath, busy.sock)
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
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if hex, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			if caps&(1<<19) == 0 { // CAP_SYS_PTRACE
				t.Skip("skipping: a fork child's mappings need UFFD_FEATURE_EVENT_FORK, which the kernel grants only with CAP_SYS_PTRACE: run as root")
			}
			return
		}
	}
	t.Fatal("no CapEff in /proc/self/status")
}

// TestForkWithoutEventFork runs a client without CAP_SYS_PTRACE, which the
// kernel refuses UFFD_FEATURE_EVENT_FORK: its mappings are MADV_DONTFORK,
// so a fork child has no copy that would read the cache's holes as zeros
// (and put them into the cache), and filemap_read_at of it says so.
func TestForkWithoutEventFork(t *testing.T) {
	path, data := testFile(t, 1<<20)
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
