package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The tests here check what a person reads when something is wrong: each
// message says what happened and what to do, and says each thing once.

// nobody is the uid and gid of the tests that run the CLI as a user
// without privileges.
const nobody = 65534

// asNobody is a place where the CLI runs as nobody: a copy of this test
// binary (the one go test made lives in a directory only root may enter)
// in a directory nobody may enter, and a directory nobody owns for its
// home and temporary files.
type asNobody struct {
	bin  string
	dir  string // 0755, root's: for the binary and the files it reads
	home string // nobody's
}

// newAsNobody skips the test unless it runs as root, which it needs to run
// a child as another uid.
func newAsNobody(t *testing.T) *asNobody {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs the CLI as uid 65534")
	}
	dir, err := os.MkdirTemp("", "fm-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	n := &asNobody{bin: filepath.Join(dir, "filemap"), dir: dir, home: filepath.Join(dir, "home")}
	if err := copyFile(cliBinary(t), n.bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(n.home, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(n.home, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	return n
}

func copyFile(from, to string, mode os.FileMode) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}

// run runs `filemap args...` as nobody, with env added to its environment
// (minus variables of the same names) and without XDG_RUNTIME_DIR, whose
// directory would be root's.
func (n *asNobody) run(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), childTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, n.bin, args...)
	cmd.Dir = n.home
	cmd.Env = withoutVars(cliEnv(append([]string{"HOME=" + n.home, "TMPDIR=" + n.home}, env...)...), "XDG_RUNTIME_DIR")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	cmd.WaitDelay = 10 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{args: args, stdout: stdout.Bytes(), stderr: stderr.Bytes()}
	if ctx.Err() != nil {
		t.Fatalf("filemap %q as uid %d did not finish within %v; stderr:\n%s", args, nobody, childTimeout, r.stderr)
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.code = ee.ExitCode()
	default:
		t.Fatalf("filemap %q as uid %d: %v; stderr:\n%s", args, nobody, err, r.stderr)
	}
	return r
}

// withoutVars is env without the variables named.
func withoutVars(env []string, names ...string) []string {
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(names, k) {
			out = append(out, kv)
		}
	}
	return out
}

// wantOnce fails the test unless stderr holds s exactly once.
func (r result) wantOnce(t *testing.T, s string) {
	t.Helper()
	if n := bytes.Count(r.stderr, []byte(s)); n != 1 {
		t.Errorf("filemap %q: stderr says %q %d times, want once:\n%s", r.args, s, n, r.stderr)
	}
}

// wantNot fails the test if stderr holds any of subs.
func (r result) wantNot(t *testing.T, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if bytes.Contains(r.stderr, []byte(s)) {
			t.Errorf("filemap %q: stderr says %q:\n%s", r.args, s, r.stderr)
		}
	}
}

// A user who may not use userfaultfd (vm.unprivileged_userfaultfd is 0,
// /dev/userfaultfd is root's) is told the ways to be allowed, by the real
// refusal of the real kernel.
func TestCatWithoutUserfaultfdRights(t *testing.T) {
	n := newAsNobody(t)
	if b, err := os.ReadFile("/proc/sys/vm/unprivileged_userfaultfd"); err != nil || strings.TrimSpace(string(b)) != "0" {
		t.Skipf("vm.unprivileged_userfaultfd is %q (%v): every user may use userfaultfd here", bytes.TrimSpace(b), err)
	}
	if st, err := os.Stat("/dev/userfaultfd"); err == nil && st.Mode().Perm()&0o006 != 0 {
		t.Skipf("/dev/userfaultfd is %v: every user may use userfaultfd here", st.Mode())
	}
	path := filepath.Join(n.dir, "obj")
	if err := os.WriteFile(path, bytes.Repeat([]byte("x"), 8192), 0o644); err != nil {
		t.Fatal(err)
	}
	r := n.run(t, nil, "cat", path)
	r.wantCode(t, 1)
	r.wantStderr(t, "filemap cat: open "+path, "operation not permitted", "may not use userfaultfd",
		"read-write access to /dev/userfaultfd", "sysctl vm.unprivileged_userfaultfd=1", "CAP_SYS_PTRACE", "descriptors of other processes")
	r.wantOnce(t, "filemap cat:")
	r.wantNot(t, "filemap: ")
}

// serve as a user who may not make the default socket's directory (no
// XDG_RUNTIME_DIR, so /run/filemap) says to choose a socket, and how
// clients then find it.
func TestServeDefaultSocketNotPermitted(t *testing.T) {
	n := newAsNobody(t)
	if _, err := os.Stat("/run/filemap/filemap.sock"); err == nil {
		t.Skip("/run/filemap/filemap.sock exists: a daemon may be running there")
	}
	r := n.run(t, nil, "serve")
	r.wantCode(t, 1)
	r.wantStderr(t, "/run/filemap", "permission denied", "no $XDG_RUNTIME_DIR", "--socket PATH", "FILEMAP_SOCKET")
	r.wantOnce(t, "filemap serve:")
}

// Each way of failing to reach a daemon says what is at the path and what
// to do, and no way says "is filemap serve running?" when it is or when
// that is not the question. The path is named by the message, not again
// by net.Dial's error (only the command to run repeats it).
func TestConnectFailuresSayWhatIsThere(t *testing.T) {
	dir := shortTempDir(t)
	path := filepath.Join(dir, "obj")
	if err := os.WriteFile(path, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false) // as a daemon killed with SIGKILL leaves it
	l.Close()
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, socket string
		want         []string
	}{
		{"no such file", filepath.Join(dir, "none.sock"),
			[]string{"no filemap daemon is listening at " + filepath.Join(dir, "none.sock"), "no such file or directory", "start `filemap serve --socket"}},
		{"no such directory", filepath.Join(dir, "nodir", "s.sock"),
			[]string{"no filemap daemon is listening at " + filepath.Join(dir, "nodir", "s.sock"), "no such file or directory"}},
		{"stale socket", stale,
			[]string{"no filemap daemon is running on " + stale, "connection refused", "stale", "which replaces it"}},
		{"regular file", path,
			[]string{path + " is a regular file, not a filemap daemon's socket", "is the socket's path right?"}},
		{"directory", filepath.Join(dir, "adir"),
			[]string{filepath.Join(dir, "adir") + " is a directory, not a filemap daemon's socket"}},
	} {
		r := filemapCLI(t, "stat", "--socket", c.socket)
		r.wantCode(t, 1)
		r.wantStderr(t, c.want...)
		r.wantOnce(t, "filemap stat:")
		r.wantNot(t, "filemap: ", "stat: stat", "dial unix", "running?")
	}

	// Through $FILEMAP_SOCKET, the way back is to unset it.
	none := filepath.Join(dir, "none.sock")
	r := filemapCLIEnv(t, []string{"FILEMAP_SOCKET=" + none}, "cat", path)
	r.wantCode(t, 1)
	r.wantStderr(t, "filemap cat: open "+path, "no filemap daemon is listening at "+none, "unset FILEMAP_SOCKET to use a private handler")
	r.wantOnce(t, none)
	r.wantNot(t, "filemap: ")
}

// A socket the daemon keeps to its own uid refuses another user's client,
// which is told so, not that no daemon runs; so is a client that may not
// even reach the socket's directory.
func TestConnectToAnotherUsersSocket(t *testing.T) {
	n := newAsNobody(t)
	d := startDaemon(t) // root's, socket 0600, in a directory of mode 0700
	r := n.run(t, nil, "stat", "--socket", d.socket)
	r.wantCode(t, 1)
	r.wantStderr(t, "may not connect to the filemap daemon at "+d.socket, "permission denied", "may not search a directory")
	if err := os.Chmod(filepath.Dir(d.socket), 0o755); err != nil {
		t.Fatal(err)
	}
	r = n.run(t, nil, "stat", "--socket", d.socket)
	r.wantCode(t, 1)
	r.wantStderr(t, "may not connect to the filemap daemon at "+d.socket, "permission denied",
		"belongs to uid 0, mode 0600", "runs as uid 65534", "--socket-mode", "--socket-owner")
	r.wantOnce(t, d.socket)
	r.wantNot(t, "running?")
	d.stop(t)
}

// The URL of an object the server does not answer for appears once in the
// error, and "filemap" once: no prefix of the library, the daemon's reply
// or net/http is said twice.
func TestHTTPErrorSaysURLOnce(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL + "/obj"
	srv.Close() // its port now refuses connections
	r := filemapCLI(t, "cat", url)
	r.wantCode(t, 1)
	r.wantStderr(t, "connection refused")
	r.wantOnce(t, url)
	r.wantOnce(t, "filemap")
	r.wantOnce(t, "open")
	r.wantOnce(t, "HEAD")
}

// A bad flag's error is printed once, after the usage.
func TestBadFlagSaidOnce(t *testing.T) {
	r := filemapCLI(t, "cat", "--bogus", "x")
	r.wantCode(t, 1)
	r.wantStderr(t, "Usage: filemap cat")
	r.wantOnce(t, "-bogus")
	if i, j := bytes.Index(r.stderr, []byte("Usage:")), bytes.Index(r.stderr, []byte("-bogus")); i > j {
		t.Errorf("the error comes before the usage:\n%s", r.stderr)
	}
}

// Flags after the URI, where the flag package no longer reads flags, get
// the command line they meant.
func TestFlagsAfterURIHint(t *testing.T) {
	r := filemapCLI(t, "cat", "/some/file", "--offset", "5")
	r.wantCode(t, 1)
	r.wantStderr(t, "flags go before the URI: filemap cat --offset 5 /some/file")
	r.wantOnce(t, "want exactly one URI")
	r = filemapCLI(t, "cat", "/some/file", "/other/file")
	r.wantCode(t, 1)
	r.wantStderr(t, "want exactly one URI, got 2 arguments")
	if bytes.Contains(r.stderr, []byte("flags go before")) {
		t.Errorf("a hint about flags where there are none:\n%s", r.stderr)
	}
}

// shortTempDir is a temporary directory with a short path: socket paths
// are limited to 107 bytes.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "fm-msg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
