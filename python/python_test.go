package python

import (
	"archive/zip"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/clitest"
	"github.com/filemap/filemap/internal/faultyhttp"
	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/internal/s3test"
)

// The tests install the module as its README says, `pip install ./python`,
// offline, into a venv of Debian's python3 that sees Debian's numpy, and
// build the filemap executable with go build, once; then they run the
// unittest scripts in tests/ in that venv, as real client processes of real
// handlers: private handlers the module starts, and `filemap serve`
// processes where a test needs a handler's flags. The objects are a local
// file, an HTTP server here and a real S3 server (versitygw).

// debianPython is the interpreter the module is installed for.
const debianPython = "/usr/bin/python3"

// objectSize ends in a partial page, which must read as the object's bytes
// and end there.
const objectSize = 8<<20 + 123

var gw s3test.Once

func TestMain(m *testing.M) {
	code := m.Run()
	gw.Close()
	if install.dir != "" {
		os.RemoveAll(install.dir)
	}
	os.Exit(code)
}

var install struct {
	once   sync.Once
	dir    string // venv/ and bin/filemap
	python string // the venv's
	bin    string // the filemap executable, alone in its directory
	err    error
}

// errMissing says that the machine lacks something the tests need.
var errMissing = errors.New("missing what the Python tests need")

// installed installs everything once, and returns the venv's python and the
// filemap executable. Without Debian's python3, its venv module, its
// headers, numpy or a C compiler the test is skipped, except in CI
// (CI=true), where a test that did not run must not pass.
func installed(t *testing.T) (python, bin string) {
	t.Helper()
	install.once.Do(func() { install.dir, install.python, install.bin, install.err = installAll() })
	if errors.Is(install.err, errMissing) && os.Getenv("CI") != "true" {
		t.Skipf("skipping: %v", install.err)
	}
	if install.err != nil {
		t.Fatal(install.err)
	}
	return install.python, install.bin
}

func installAll() (dir, python, bin string, err error) {
	if err := probe(); err != nil {
		return "", "", "", err
	}
	dir, err = os.MkdirTemp("", "python-test-")
	if err != nil {
		return "", "", "", err
	}
	venv := filepath.Join(dir, "venv")
	if err := run(exec.Command(debianPython, "-m", "venv", "--system-site-packages", venv)); err != nil {
		return dir, "", "", err
	}
	python = filepath.Join(venv, "bin", "python")
	if err := run(pip(python, "install", "./python")); err != nil {
		return dir, "", "", err
	}
	bin = filepath.Join(dir, "bin", "filemap")
	if err := clitest.Build(bin); err != nil {
		return dir, "", "", err
	}
	return dir, python, bin, nil
}

// pip runs pip in the repository's root, with its build isolation and no
// package index: a build that needed anything downloaded fails here, as it
// would on a machine with no network. pip(python, "install", "./python")
// is the README's install command.
func pip(python string, args ...string) *exec.Cmd {
	cmd := exec.Command(python, append([]string{"-m", "pip"}, args...)...)
	cmd.Dir = ".."
	cmd.Env = append(cleanEnv(), "PIP_NO_INDEX=1", "PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_NO_CACHE_DIR=1")
	return cmd
}

// probe says which of what the tests need is missing, and which Debian
// package brings it.
func probe() error {
	if _, err := os.Stat(debianPython); err != nil {
		return fmt.Errorf("%w: %v (apt-get install python3 python3-venv python3-dev python3-numpy)", errMissing, err)
	}
	if _, err := exec.LookPath("cc"); err != nil {
		return fmt.Errorf("%w: no C compiler to build the extension: %v (apt-get install gcc)", errMissing, err)
	}
	const script = `
import importlib.util, os, sysconfig
missing = [pkg for mod, pkg in (("numpy", "python3-numpy"), ("ensurepip", "python3-venv"))
           if importlib.util.find_spec(mod) is None]
if not os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
    missing.append("python3-dev")
print(" ".join(missing))
`
	cmd := exec.Command(debianPython, "-c", script)
	cmd.Env = cleanEnv()
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("%s -c PROBE: %v", debianPython, err)
	}
	if missing := strings.TrimSpace(string(out)); missing != "" {
		return fmt.Errorf("%w: %s lacks what the tests need: apt-get install %s", errMissing, debianPython, missing)
	}
	return nil
}

// run runs a setup command, bounded: its error carries what it printed.
func run(cmd *exec.Cmd) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	bounded := exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...)
	bounded.Dir, bounded.Env = cmd.Dir, cmd.Env
	if out, err := bounded.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	return nil
}

// cleanEnv is the test's environment without the variables that choose a
// handler, an interpreter's path or pip's settings: each test says which it
// uses. Python writes no bytecode into the source tree.
func cleanEnv() []string {
	env := []string{"PYTHONDONTWRITEBYTECODE=1"}
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case name == "FILEMAP_SOCKET", name == "FILEMAP_EXECUTABLE", name == "FILEMAP_PRIVATE_HANDLER",
			name == "VIRTUAL_ENV", strings.HasPrefix(name, "FILEMAP_TEST_"),
			strings.HasPrefix(name, "PYTHON"), strings.HasPrefix(name, "PIP_"):
		default:
			env = append(env, kv)
		}
	}
	return env
}

var (
	ranLine = regexp.MustCompile(`(?m)^Ran (\d+) tests? in `)
	okLine  = regexp.MustCompile(`(?m)^OK$`)
)

// unittest runs tests (module, module.Class or module.Class.test_name of
// tests/) in the venv's python, with env added to a clean environment. It
// fails t unless at least one test ran and every one passed: unittest's
// last line must be a bare OK, which a skip would turn into "OK (skipped=1)".
func unittest(t *testing.T, env []string, tests ...string) {
	t.Helper()
	unittestUnder(t, nil, env, tests...)
}

// unittestUnder is unittest with python run by a wrapper command.
func unittestUnder(t *testing.T, wrapper, env []string, tests ...string) {
	t.Helper()
	python, _ := installed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	argv := append(append(wrapper, python, "-m", "unittest", "-v"), tests...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = "tests"
	cmd.Env = append(cleanEnv(), env...)
	out, err := cmd.CombinedOutput()
	text := string(out)
	t.Logf("python -m unittest %s:\n%s", strings.Join(tests, " "), text)
	if err != nil {
		t.Fatalf("python -m unittest %s: %v", strings.Join(tests, " "), err)
	}
	ran := ranLine.FindStringSubmatch(text)
	if ran == nil || ran[1] == "0" || !okLine.MatchString(text) {
		t.Fatalf("python -m unittest %s: want at least one test run and a bare OK (no skips)", strings.Join(tests, " "))
	}
}

// privateHandler is the environment in which the module starts the filemap
// executable built for the tests as its private handler.
func privateHandler(t *testing.T) []string {
	_, bin := installed(t)
	return []string{"FILEMAP_EXECUTABLE=" + bin}
}

// httpObject serves data at /object.bin with ranges and an ETag, as a real
// server does, with failures and waits the Python tests control over HTTP:
// once the test has called srv.Fail, a request for a range that holds the
// failing byte gets 500 until /heal is fetched, and once it has called
// srv.Hold, one for a range that holds the held byte waits until /open is
// fetched (/waiting answers how many do).
type httpObject struct {
	srv     *faultyhttp.Server
	control string // the URL of the server of /heal, /open and /waiting, which has no object
}

func serveHTTP(t *testing.T, data []byte) *httpObject {
	t.Helper()
	o := &httpObject{srv: faultyhttp.Start(t, data)}
	mux := http.NewServeMux()
	mux.HandleFunc("/heal", func(w http.ResponseWriter, r *http.Request) { o.srv.Fail(-1, faultyhttp.Status500) })
	mux.HandleFunc("/open", func(w http.ResponseWriter, r *http.Request) { o.srv.Release() })
	mux.HandleFunc("/waiting", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, o.srv.Held()) })
	control := httptest.NewServer(mux)
	t.Cleanup(control.Close)
	o.control = control.URL
	return o
}

// serve starts `filemap serve` on a socket of its own, with args after its
// own flags, and stops it when the test ends. It returns the socket.
func serve(t *testing.T, args ...string) string {
	t.Helper()
	_, bin := installed(t)
	return clitest.Serve(t, bin, filepath.Join(t.TempDir(), "filemap.sock"), cleanEnv(), args...).Sock
}

// TestBytes maps a local file (as a path and as a file:// URI), an HTTP
// object and an S3 object of a real S3 server in Python, and checks every
// byte it reads against the object: through memoryview(m), through
// numpy.frombuffer(m), which must be the mapping and no copy, with read_at
// and readinto_at, after advise, and through a copy-on-write mapping, whose
// writes no other mapping sees (tests/test_bytes.py); and an empty file
// maps as no bytes.
func TestBytes(t *testing.T) {
	path, data := pattern.TempFile(t, objectSize)
	t.Run("file", func(t *testing.T) {
		unittest(t, append(privateHandler(t), "FILEMAP_TEST_URI="+path, "FILEMAP_TEST_DATA="+path), "test_bytes")
	})
	t.Run("file-uri", func(t *testing.T) {
		unittest(t, append(privateHandler(t), "FILEMAP_TEST_URI=file://"+path, "FILEMAP_TEST_DATA="+path), "test_bytes.Bytes")
	})
	t.Run("http", func(t *testing.T) {
		o := serveHTTP(t, data)
		unittest(t, append(privateHandler(t), "FILEMAP_TEST_URI="+o.srv.URL, "FILEMAP_TEST_DATA="+path), "test_bytes.Bytes")
	})
	t.Run("s3", func(t *testing.T) {
		srv := gw.Server(t)
		bucket := srv.NewBucket(t, false)
		srv.Put(t, bucket, "dir/object.bin", data)
		env := append(privateHandler(t), srv.Env()...) // the private handler inherits the credentials
		unittest(t, append(env, "FILEMAP_TEST_URI=s3://"+bucket+"/dir/object.bin", "FILEMAP_TEST_DATA="+path), "test_bytes.Bytes")
	})
}

// TestErrors checks the exceptions (tests/test_errors.py): a missing file
// is FileNotFoundError with errno ENOENT naming the path, a directory
// IsADirectoryError, a bad URI OSError EINVAL, bad arguments ValueError or
// TypeError; a page whose HTTP range fails is FaultError, an OSError with
// errno EIO and offset that page's, readinto_at keeps the bytes before it,
// its neighbours read, and once the server serves it again it reads; and a
// URL's password shows in no error.
func TestErrors(t *testing.T) {
	path, data := pattern.TempFile(t, objectSize)
	t.Run("open", func(t *testing.T) {
		unittest(t, append(privateHandler(t), "FILEMAP_TEST_DATA="+path), "test_errors.Open")
	})
	t.Run("failing-page", func(t *testing.T) {
		o := serveHTTP(t, data)
		// The handler fetches 64 KiB chunks, and fails the whole chunk that
		// holds bad, whose first page it is; with no retries, at once.
		const bad = 3<<20 + 64<<10
		o.srv.Fail(bad, faultyhttp.Status500)
		sock := serve(t, "--retries", "0", "--remote-retries", "0", "--remote-chunk", "64K", "--remote-max-request", "64K")
		const password = "hunter2-python-secret"
		secret := strings.Replace(o.control, "http://", "http://user:"+password+"@", 1) + "/missing.bin"
		unittest(t, []string{
			"FILEMAP_TEST_URI=" + o.srv.URL, "FILEMAP_TEST_DATA=" + path, "FILEMAP_TEST_SOCKET=" + sock,
			"FILEMAP_TEST_BAD_OFFSET=" + strconv.Itoa(bad), "FILEMAP_TEST_HEAL=" + o.control + "/heal",
			"FILEMAP_TEST_SECRET_URI=" + secret, "FILEMAP_TEST_PASSWORD=" + password,
		}, "test_errors.FailingPage")
	})
}

// TestClose checks close() (tests/test_close.py): the with-statement
// closes, also on an exception; a closed mapping refuses every use with
// ValueError; close raises BufferError while a memoryview, a slice of one or
// a numpy array of the mapping is alive, and the buffer still reads; and a
// close while another thread's read waits for the store leaves the mapping
// to that read, which returns the object's bytes.
func TestClose(t *testing.T) {
	path, data := pattern.TempFile(t, objectSize)
	t.Run("close", func(t *testing.T) {
		unittest(t, append(privateHandler(t), "FILEMAP_TEST_URI="+path, "FILEMAP_TEST_DATA="+path), "test_close.Close")
	})
	t.Run("during-read", func(t *testing.T) {
		o := serveHTTP(t, data)
		const gate = 5<<20 + 8192
		o.srv.Hold(gate)
		unittest(t, append(privateHandler(t),
			"FILEMAP_TEST_URI="+o.srv.URL, "FILEMAP_TEST_DATA="+path,
			"FILEMAP_TEST_GATE_OFFSET="+strconv.Itoa(gate), "FILEMAP_TEST_GATE_OPEN="+o.control+"/open",
			"FILEMAP_TEST_GATE_WAITING="+o.control+"/waiting",
		), "test_close.CloseDuringRead")
	})
}

// TestFork checks fork children (tests/test_fork.py): an os.fork() child
// reads every byte of its parent's mapping, through the buffer and with
// read_at, and its close only unmaps, after which the parent's mapping,
// its pages dropped, is still served; a multiprocessing pool of 4 forked
// workers reads 16 parts of an inherited mapping, every byte checked. And
// run without CAP_SYS_PTRACE, where the kernel does not tell the handler
// of children and the mapping is MADV_DONTFORK, a child's memoryview(m)
// raises BufferError and read_at OSError EBADF, where touching it would
// crash, and its close leaves the parent's mapping served.
func TestFork(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root: the kernel serves a fork child's faults only with CAP_SYS_PTRACE, and the test drops it with setpriv")
	}
	path, _ := pattern.TempFile(t, objectSize)
	env := append(privateHandler(t), "FILEMAP_TEST_URI="+path, "FILEMAP_TEST_DATA="+path)
	t.Run("inherited", func(t *testing.T) {
		unittest(t, env, "test_fork.Fork")
	})
	t.Run("dontfork", func(t *testing.T) {
		setpriv, err := exec.LookPath("setpriv")
		if err != nil {
			t.Fatalf("setpriv (util-linux), to drop CAP_SYS_PTRACE: %v", err)
		}
		unittestUnder(t, []string{setpriv, "--inh-caps=-sys_ptrace", "--bounding-set=-sys_ptrace"}, env, "test_fork.DontFork")
	})
}

// TestExecutable checks where the module finds its private handler
// (tests/test_executable.py): with no $FILEMAP_EXECUTABLE and no filemap on
// PATH, open raises OSError ENOEXEC naming what to set; a filemap
// executable in the installed package's directory is found and serves.
func TestExecutable(t *testing.T) {
	python, bin := installed(t)
	path, _ := pattern.TempFile(t, 1<<20+1)
	env := []string{"PATH=" + t.TempDir(), "FILEMAP_TEST_DATA=" + path} // a PATH with no filemap
	t.Run("missing", func(t *testing.T) {
		unittest(t, env, "test_executable.Executable.test_missing")
	})
	t.Run("beside-module", func(t *testing.T) {
		beside := filepath.Join(packageDir(t, python), "filemap")
		copyFile(t, bin, beside)
		t.Cleanup(func() { os.Remove(beside) })
		unittest(t, env, "test_executable.Executable.test_beside_module")
	})
}

// TestExtension checks the installed extension: libfilemap is linked into
// it, so it needs no libfilemap.so, and it exports nothing but its init
// function, so that another libfilemap in the process cannot take the
// place of its own.
func TestExtension(t *testing.T) {
	python, _ := installed(t)
	matches, err := filepath.Glob(filepath.Join(packageDir(t, python), "_filemap*.so"))
	if err != nil || len(matches) != 1 {
		t.Fatalf("the installed package has %d extensions (%v), want 1", len(matches), err)
	}
	f, err := elf.Open(matches[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	libs, err := f.ImportedLibraries()
	if err != nil {
		t.Fatal(err)
	}
	for _, lib := range libs {
		if strings.Contains(lib, "filemap") {
			t.Errorf("%s needs %s: libfilemap should be linked in", matches[0], lib)
		}
	}
	syms, err := f.DynamicSymbols()
	if err != nil {
		t.Fatal(err)
	}
	var exported []string
	for _, s := range syms {
		if s.Section != elf.SHN_UNDEF && elf.ST_BIND(s.Info) != elf.STB_LOCAL && s.Name != "" {
			exported = append(exported, s.Name)
		}
	}
	if len(exported) != 1 || exported[0] != "PyInit__filemap" {
		t.Errorf("%s exports %v, want only PyInit__filemap", matches[0], exported)
	}
}

// TestSdist builds the module's sdist with its backend, and a wheel from
// it with pip, offline: the sdist carries libfilemap's sources, which a
// build outside the repository needs, and the wheel has the extension.
func TestSdist(t *testing.T) {
	python, _ := installed(t)
	dir := t.TempDir()
	build := exec.Command(python, "-c",
		"import sys; sys.path.insert(0, 'backend'); import filemap_backend as b; print(b.build_sdist(sys.argv[1]))", dir)
	build.Env = cleanEnv()
	out, err := build.CombinedOutput()
	if err != nil {
		t.Fatalf("build_sdist: %v\n%s", err, out)
	}
	sdist := filepath.Join(dir, strings.TrimSpace(string(out)))
	wheels := filepath.Join(dir, "wheels")
	if err := run(pip(python, "wheel", "--no-deps", "-w", wheels, sdist)); err != nil {
		t.Fatal(err)
	}
	matches, _ := filepath.Glob(filepath.Join(wheels, "filemap-*.whl"))
	if len(matches) != 1 {
		t.Fatalf("pip wheel %s made %v, want one filemap wheel", sdist, matches)
	}
	z, err := zip.OpenReader(matches[0])
	if err != nil {
		t.Fatal(err)
	}
	defer z.Close()
	var names []string
	for _, f := range z.File {
		names = append(names, f.Name)
	}
	for _, want := range []string{"filemap/__init__.py", "filemap/_filemap", ".dist-info/RECORD"} {
		if !slices.ContainsFunc(names, func(n string) bool { return strings.Contains(n, want) }) {
			t.Errorf("the wheel built from the sdist lacks %s: it has %v", want, names)
		}
	}
}

// packageDir is the directory of the installed filemap package.
func packageDir(t *testing.T, python string) string {
	t.Helper()
	cmd := exec.Command(python, "-c", "import filemap, os; print(os.path.dirname(filemap.__file__))")
	cmd.Dir = os.TempDir() // not python/, whose filemap/ is the source
	cmd.Env = cleanEnv()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("find the installed package: %v", err)
	}
	return strings.TrimSpace(string(out))
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}
