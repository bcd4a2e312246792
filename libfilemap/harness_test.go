package libfilemap

import (
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/filemap/filemap/internal/child"
	"github.com/filemap/filemap/internal/clitest"
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
	return dir, bin, clitest.Build(bin)
}

// makeC runs the README's command, make -C libfilemap, with output in dir.
func makeC(dir string, args ...string) error {
	cmd := exec.Command("make", append([]string{"-C", ".", "O=" + dir}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("make %s O=%s: %v\n%s", strings.Join(args, " "), dir, err, out)
	}
	return nil
}

// serve starts `filemap serve` on a socket of its own, with env added to
// the test's environment and args after its own flags, and stops it when
// the test ends.
func serve(t *testing.T, env []string, args ...string) *clitest.Daemon {
	t.Helper()
	return serveAt(t, filepath.Join(t.TempDir(), "filemap.sock"), env, args...)
}

// serveAt is serve on sock, where a daemon may have run before.
func serveAt(t *testing.T, sock string, env []string, args ...string) *clitest.Daemon {
	t.Helper()
	_, bin := built(t)
	return clitest.Serve(t, bin, sock, append(cleanEnv(), env...), args...)
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
func driveOn(t *testing.T, d *clitest.Daemon) *child.T {
	dir, _ := built(t)
	return drive(t, "drive", dir, "FILEMAP_SOCKET="+d.Sock)
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
