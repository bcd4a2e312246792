package libfilemap

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/child"
	"github.com/filemap/filemap/internal/s3test"
)

// The tests build the C library and its test programs (tests/*.c) with its
// Makefile, and the filemap executable with go build, into one temporary
// directory, once; then they run the programs as real client processes of
// real handlers: `filemap serve` processes, and private handlers the
// library starts.

var gw s3test.Once

func TestMain(m *testing.M) {
	code := m.Run()
	gw.Close()
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
	os.Exit(code)
}

var build struct {
	once sync.Once
	dir  string // make's O: libfilemap.so, libfilemap.a, filemap.pc, tests/
	bin  string // the filemap executable, alone in its directory
	err  error
}

var errNoToolchain = errors.New("no C toolchain")

// built builds everything once, and returns make's output directory and
// the filemap executable. Without gcc or make the test is skipped, except
// in CI (CI=true), where a test that did not run must not pass.
func built(t *testing.T) (dir, bin string) {
	t.Helper()
	build.once.Do(func() { build.dir, build.bin, build.err = buildAll() })
	if errors.Is(build.err, errNoToolchain) && os.Getenv("CI") != "true" {
		t.Skipf("skipping: %v", build.err)
	}
	if build.err != nil {
		t.Fatal(build.err)
	}
	return build.dir, build.bin
}

func buildAll() (dir, bin string, err error) {
	for _, tool := range []string{"gcc", "make"} {
		if _, err := exec.LookPath(tool); err != nil {
			return "", "", fmt.Errorf("%w: %s is not on PATH: %v", errNoToolchain, tool, err)
		}
	}
	dir, err = os.MkdirTemp("", "libfilemap-test-")
	if err != nil {
		return "", "", err
	}
	if err := makeC(dir, "tests"); err != nil {
		return dir, "", err
	}
	bin = filepath.Join(dir, "bin", "filemap")
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if out, err := exec.Command(goTool, "build", "-o", bin, "../cmd/filemap").CombinedOutput(); err != nil {
		return dir, "", fmt.Errorf("go build ../cmd/filemap: %v\n%s", err, out)
	}
	return dir, bin, nil
}

// makeC runs the README's command, make -C libfilemap, with output in dir.
func makeC(dir string, args ...string) error {
	cmd := exec.Command("make", append([]string{"-C", ".", "O=" + dir}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("make %s O=%s: %v\n%s", strings.Join(args, " "), dir, err, out)
	}
	return nil
}

// daemon is a `filemap serve` process.
type daemon struct {
	sock string
	log  *os.File // a file, not a pipe: a keeper the daemon starts inherits it and outlives it
	cmd  *exec.Cmd
	done chan error // its exit status, once it has exited
}

// serve starts `filemap serve` on a socket of its own, with env added to
// the test's environment and args after its own flags, and stops it when
// the test ends.
func serve(t *testing.T, env []string, args ...string) *daemon {
	t.Helper()
	return serveAt(t, filepath.Join(t.TempDir(), "filemap.sock"), env, args...)
}

// serveAt is serve on sock, where a daemon may have run before.
func serveAt(t *testing.T, sock string, env []string, args ...string) *daemon {
	t.Helper()
	_, bin := built(t)
	log, err := os.CreateTemp(t.TempDir(), "serve-*.log")
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{sock: sock, log: log, done: make(chan error, 1)}
	d.cmd = exec.Command(bin, append([]string{"serve", "--socket", d.sock, "--keep=false", "--retry-backoff", "1ms"}, args...)...)
	d.cmd.Env = append(cleanEnv(), env...)
	d.cmd.Stderr = d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(func() {
		d.stop(t)
		if t.Failed() {
			t.Logf("filemap serve log:\n%s", d.logText())
		}
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if c, err := net.Dial("unix", d.sock); err == nil {
			c.Close()
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("filemap serve did not listen on %s within 30s:\n%s", d.sock, d.logText())
		}
	}
}

func (d *daemon) logText() string {
	b, _ := os.ReadFile(d.log.Name())
	return string(b)
}

// stop stops the daemon as an operator does, with SIGTERM, and waits for
// it to exit; it kills it if it has not within 30 seconds.
func (d *daemon) stop(t *testing.T) {
	d.signal(t, syscall.SIGTERM)
}

// kill kills the daemon with SIGKILL, as a crash would, and waits for it.
func (d *daemon) kill(t *testing.T) {
	d.signal(t, syscall.SIGKILL)
}

func (d *daemon) signal(t *testing.T, sig syscall.Signal) {
	if d.done == nil {
		return // stopped already
	}
	d.cmd.Process.Signal(sig)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		t.Errorf("filemap serve did not exit within 30s of %v", sig)
		d.cmd.Process.Kill()
		<-d.done
	}
	d.done = nil
}

// cleanEnv is the test's environment without the variables that choose a
// handler: each test says which one its programs use.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FILEMAP_SOCKET=") && !strings.HasPrefix(kv, "FILEMAP_EXECUTABLE=") &&
			!strings.HasPrefix(kv, "FILEMAP_PRIVATE_HANDLER=") && !strings.HasPrefix(kv, "LD_LIBRARY_PATH=") {
			env = append(env, kv)
		}
	}
	return env
}

// drive starts tests/prog (drive, or static: drive linked statically), a
// client process that takes commands on stdin (tests/drive.c), with env
// added to a clean environment; the shared library is found in libDir.
func drive(t *testing.T, prog, libDir string, env ...string) *child.T {
	t.Helper()
	dir, _ := built(t)
	cmd := exec.Command(filepath.Join(dir, "tests", prog))
	cmd.Env = append(append(cleanEnv(), "LD_LIBRARY_PATH="+libDir), env...)
	return child.StartT(t, cmd, prog)
}

// driveOn is drive of tests/drive with FILEMAP_SOCKET naming d.
func driveOn(t *testing.T, d *daemon) *child.T {
	dir, _ := built(t)
	return drive(t, "drive", dir, "FILEMAP_SOCKET="+d.sock)
}

// fnvSum is drive's sum of b: FNV-1a 64, in hex.
func fnvSum(b []byte) string {
	h := fnv.New64a()
	h.Write(b)
	return fmt.Sprintf("%016x", h.Sum64())
}

// fields splits an answer and checks its length.
func fields(t *testing.T, answer string, n int) []string {
	t.Helper()
	f := strings.Fields(answer)
	if len(f) != n {
		t.Fatalf("answer %q: want %d fields", answer, n)
	}
	return f
}
