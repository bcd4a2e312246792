package libfilemap

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/child"
	"github.com/filemap/filemap/internal/pattern"
)

// fakeFilemap writes an executable named filemap into dir that exits at
// once, as a handler that cannot start does: a client that runs it fails.
func fakeFilemap(t *testing.T, dir string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "filemap"), []byte("#!/bin/sh\necho fake filemap >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

// libBeside makes a directory holding a copy of the shared library and, as
// filemap, the executable at exe.
func libBeside(t *testing.T, exe string) string {
	t.Helper()
	dir, _ := built(t)
	lib := t.TempDir()
	b, err := os.ReadFile(filepath.Join(dir, "libfilemap.so.0"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(lib, "libfilemap.so.0"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(exe, filepath.Join(lib, "filemap")); err != nil {
		t.Fatal(err)
	}
	return lib
}

// children are the pids of pid's children.
func children(t *testing.T, pid int) []int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		n, _ := strconv.Atoi(f)
		out = append(out, n)
	}
	return out
}

// checkPrivate opens path in c, which has no socket, and checks that a
// private handler, a child of c, serves it.
func checkPrivate(t *testing.T, c *child.T, path string, data []byte) {
	t.Helper()
	id := fields(t, c.OK("open %s", path), 3)[0]
	if got := c.OK("sum %s", id); got != fnvSum(data) {
		t.Errorf("sum %s, want %s", got, fnvSum(data))
	}
	if kids := children(t, c.Cmd.Process.Pid); len(kids) != 1 {
		t.Errorf("the client has children %v, want one: its private handler", kids)
	}
}

// TestPrivateHandlerDiscovery runs clients with no socket, which start a
// private handler, the filemap executable found at $FILEMAP_EXECUTABLE,
// else next to the library (or the program libfilemap.a is linked into),
// else on PATH. Each case puts, in every place the library looks before
// the one it must use, a filemap that fails, and in the places after, one
// too: only the right one works. With none, the error names all three.
func TestPrivateHandlerDiscovery(t *testing.T) {
	path, data := pattern.TempFile(t, 1<<20+5)
	dir, bin := built(t)
	fake := t.TempDir()
	fakeFilemap(t, fake)

	t.Run("FILEMAP_EXECUTABLE", func(t *testing.T) {
		c := drive(t, "drive", libBeside(t, filepath.Join(fake, "filemap")), "FILEMAP_EXECUTABLE="+bin, "PATH="+fake)
		checkPrivate(t, c, path, data)
	})
	t.Run("next to the library", func(t *testing.T) {
		c := drive(t, "drive", libBeside(t, bin), "PATH="+fake)
		checkPrivate(t, c, path, data)
	})
	t.Run("next to the program", func(t *testing.T) {
		// libfilemap.a linked into a program: next to that program.
		prog := t.TempDir()
		b, err := os.ReadFile(filepath.Join(dir, "tests", "static"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(prog, "static"), b, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(bin, filepath.Join(prog, "filemap")); err != nil {
			t.Fatal(err)
		}
		cmd := command(filepath.Join(prog, "static"), "PATH="+fake)
		checkPrivate(t, child.StartT(t, cmd, "static"), path, data)
	})
	t.Run("PATH", func(t *testing.T) {
		// The first filemap on PATH, as execvp(3) takes it.
		c := drive(t, "drive", dir, "PATH=/nonexistent:"+filepath.Dir(bin)+":"+fake)
		checkPrivate(t, c, path, data)
		c = drive(t, "drive", dir, "PATH="+fake+":"+filepath.Dir(bin))
		if got := c.Do("open %s", path); !strings.HasPrefix(got, "err ") {
			t.Errorf("with a failing filemap first on PATH: %q, want an error", got)
		}
	})
	t.Run("none", func(t *testing.T) {
		c := drive(t, "drive", dir, "PATH=/nonexistent:"+t.TempDir())
		got := c.Do("open %s", path)
		for _, want := range []string{
			fmt.Sprintf("err %d -1 filemap: open %s: ", syscall.ENOEXEC, path),
			"$FILEMAP_SOCKET", "$FILEMAP_EXECUTABLE is not set", filepath.Join(dir, "filemap"), "PATH (/nonexistent:",
		} {
			if !strings.Contains(got, want) {
				t.Errorf("open with no filemap anywhere: %q; want it to say %q", got, want)
			}
		}
		if kids := children(t, c.Cmd.Process.Pid); len(kids) != 0 {
			t.Errorf("the client has children %v after a failed start, want none", kids)
		}
	})
	t.Run("FILEMAP_EXECUTABLE not executable", func(t *testing.T) {
		c := drive(t, "drive", libBeside(t, bin), "FILEMAP_EXECUTABLE=/nonexistent/filemap")
		got := c.Do("open %s", path)
		if want := fmt.Sprintf("err %d -1 filemap: open %s: FILEMAP_EXECUTABLE=/nonexistent/filemap is not an executable file", syscall.ENOEXEC, path); got != want {
			t.Errorf("open: %q, want %q", got, want)
		}
	})
}

// command runs prog with env added to a clean environment.
func command(prog string, env ...string) *exec.Cmd {
	cmd := exec.Command(prog)
	cmd.Env = append(cleanEnv(), env...)
	return cmd
}

// TestNoCostBeforeFirstOpen checks that a process that links the library
// has no thread, signal handler, connection or child from it until it
// first opens an object, and afterwards no thread or signal handler: a
// connection and a lifeline (two sockets) and a child, its private
// handler. The handler serves the process's fork children too, and exits
// with the last holder of its lifeline.
func TestNoCostBeforeFirstOpen(t *testing.T) {
	path, data := pattern.TempFile(t, 1<<20)
	_, bin := built(t)
	for _, prog := range []string{"drive", "static"} {
		t.Run(prog, func(t *testing.T) {
			dir, _ := built(t)
			c := drive(t, prog, dir, "FILEMAP_EXECUTABLE="+bin)
			before := fields(t, c.OK("cost"), 5)
			if before[0] != "1" || before[2] != "0" || before[4] != "0" {
				t.Fatalf("before any open: %v threads, fds, sockets, signals caught, children; want 1 thread, no socket, no child", before)
			}
			id := fields(t, c.OK("open %s", path), 3)[0]
			after := fields(t, c.OK("cost"), 5)
			if after[0] != "1" || after[2] != "2" || after[3] != before[3] || after[4] != "1" {
				t.Errorf("after an open: %v threads, fds, sockets, signals caught, children; want 1 thread, 2 sockets, the same signals caught as before (%s), 1 child",
					after, before[3])
			}
			checkChild(t, c.OK("fork %s %s", id, path), data, data)
			c.OK("close %s", id)
			handler := children(t, c.Cmd.Process.Pid)
			if len(handler) != 1 {
				t.Fatalf("children %v, want the private handler alone", handler)
			}
			c.Send("quit")
			waitGone(t, handler[0])
		})
	}
}

// waitGone waits for process pid to exit.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || strings.Contains(string(b), ") Z ") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the private handler %d did not exit within 30s of its client", pid)
		}
	}
}

// TestPrivateHandlerKilled kills a client's private handler: its keeper
// starts another on the same socket, which serves the mapping's faults; the
// client's next open finds its connection closed, makes a new one to the
// new handler, and reaps the dead one; the old mapping closes without an
// error.
func TestPrivateHandlerKilled(t *testing.T) {
	path, data := pattern.TempFile(t, objectSize)
	_, bin := built(t)
	dir, _ := built(t)
	c := drive(t, "drive", dir, "FILEMAP_EXECUTABLE="+bin)
	id := fields(t, c.OK("open %s", path), 3)[0]
	c.OK("read %s 0 65536", id)
	handler := children(t, c.Cmd.Process.Pid)
	if len(handler) != 1 {
		t.Fatalf("children %v, want the private handler alone", handler)
	}
	if err := syscall.Kill(handler[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, handler[0])
	if got := c.OK("sum %s", id); got != fnvSum(data) {
		t.Errorf("the mapping read after its handler was killed: sum %s, want %s", got, fnvSum(data))
	}
	checkSums(t, c, path, data)
	if kids := children(t, c.Cmd.Process.Pid); len(kids) != 0 {
		t.Errorf("children %v after the next open; want none: the killed handler reaped, its successor the keeper's", kids)
	}
	c.OK("advise %s random 0 0", id)
	c.OK("close %s", id)
}
