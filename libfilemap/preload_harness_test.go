package libfilemap

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/clitest"
)

// The shim's tests run real programs (coreutils, Debian's python3 with
// numpy, sqlite3, and preload/tests/probe.c) under
// LD_PRELOAD=libfilemap-preload.so, against a local file under
// $FILEMAP_PRELOAD_DIRS, an HTTP object (httptest) and an S3 object
// (versitygw), served by a real `filemap serve` or a private handler.

// shimRun is how long one program may take.
const shimRun = 2 * time.Minute

// shimObject is an object a program under the shim reads: the path it
// is given, and the bytes it must see there.
type shimObject struct {
	kind string // file, http, s3
	path string
	data []byte
	d    *clitest.Daemon // the handler the programs use
}

// shimEnv is the environment of a program under the shim: the test's,
// with the shim preloaded and the handler chosen by env.
func shimEnv(t *testing.T, env ...string) []string {
	t.Helper()
	dir, _ := built(t)
	var out []string
	for _, kv := range cleanEnv() {
		if !strings.HasPrefix(kv, "LD_PRELOAD=") && !strings.HasPrefix(kv, "FILEMAP_PRELOAD_DIRS=") {
			out = append(out, kv)
		}
	}
	return append(append(out, "LD_PRELOAD="+filepath.Join(dir, "libfilemap-preload.so")), env...)
}

// onSocket is shimEnv with the programs' handler the daemon d.
func onSocket(t *testing.T, d *clitest.Daemon, env ...string) []string {
	return shimEnv(t, append([]string{"FILEMAP_SOCKET=" + d.Sock}, env...)...)
}

// shimResult is a finished program.
type shimResult struct {
	out, stderr []byte
	err         error
}

// signal is the signal that killed the program, or 0.
func (r shimResult) signal() syscall.Signal {
	var ee *exec.ExitError
	if errors.As(r.err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return ws.Signal()
		}
	}
	return 0
}

// runIn runs prog with args in env (and in dir, if not ""), bounded by shimRun.
func runIn(t *testing.T, env []string, dir, prog string, args ...string) shimResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), shimRun)
	defer cancel()
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Env = env
	cmd.Dir = dir
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s %s: did not finish within %v; stderr:\n%s", prog, strings.Join(args, " "), shimRun, stderr.String())
	}
	return shimResult{out: out.Bytes(), stderr: stderr.Bytes(), err: err}
}

// mustRun runs prog, which must succeed, and returns its output.
func mustRun(t *testing.T, env []string, prog string, args ...string) []byte {
	t.Helper()
	r := runIn(t, env, "", prog, args...)
	if r.err != nil {
		t.Fatalf("%s %s: %v; stderr:\n%s", prog, strings.Join(args, " "), r.err, r.stderr)
	}
	return r.out
}

// needTool finds a program the test runs: skipped without it, except in
// CI (CI=true), where a test that did not run must not pass.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		skipOrFatal(t, "%s is not installed (apt-get install %s): %v", name, name, err)
	}
	return p
}

func skipOrFatal(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf(format, args...)
	}
	t.Skipf("skipping: "+format, args...)
}

// debianPython is the python3 with numpy the tests run: Debian's, whose
// python3-numpy is a package (apt-get install python3-numpy).
func debianPython(t *testing.T) string {
	t.Helper()
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		py = needTool(t, "python3")
	}
	if out, err := exec.Command(py, "-c", "import numpy").CombinedOutput(); err != nil {
		skipOrFatal(t, "%s has no numpy (apt-get install python3-numpy): %v\n%s", py, err, out)
	}
	return py
}

// probe runs preload/tests/probe.c's command under env and returns its
// lines as KEY -> the rest.
func probe(t *testing.T, env []string, args ...string) map[string]string {
	t.Helper()
	dir, _ := built(t)
	out := mustRun(t, env, filepath.Join(dir, "tests", "preload-probe"), args...)
	return probeLines(out)
}

func probeLines(out []byte) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		k, v, _ := strings.Cut(line, " ")
		m[k] = v
	}
	return m
}

// wantLines checks the probe's answers to each key.
func wantLines(t *testing.T, what string, got map[string]string, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s = %q, want %q", what, k, got[k], v)
		}
	}
}

// errnoLine is a probe's "RC ERRNO" for a call that failed with err.
func errnoLine(err syscall.Errno) string {
	return fmt.Sprintf("-1 %d", int(err))
}

// preloadFile writes data into a directory of its own, which the
// programs' $FILEMAP_PRELOAD_DIRS lists.
func preloadFile(t *testing.T, name string, data []byte) (dir, path string) {
	t.Helper()
	dir = t.TempDir()
	path = filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, path
}

// httpServer serves each name's bytes with ranges and an ETag, and says
// 404 to any other name. It returns its host:port.
func httpServer(t *testing.T, objects map[string][]byte) string {
	t.Helper()
	mod := time.Now()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		data, ok := objects[strings.TrimPrefix(r.URL.Path, "/")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("ETag", fmt.Sprintf(`"v%d"`, len(data)))
		http.ServeContent(w, r, r.URL.Path, mod, bytes.NewReader(data))
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// eachObject runs f in a subtest for each kind of object, holding data as
// name, with a `filemap serve` of its own and the environment of programs
// that use it. A program opens it by path: a file under
// $FILEMAP_PRELOAD_DIRS, an HTTP object by the /filemap/http/ prefix, an
// S3 object by /filemap/s3/.
func eachObject(t *testing.T, name string, data []byte, f func(t *testing.T, o shimObject, env []string)) {
	t.Run("file", func(t *testing.T) {
		dir, path := preloadFile(t, name, data)
		d := serve(t, nil)
		f(t, shimObject{kind: "file", path: path, data: data, d: d}, onSocket(t, d, "FILEMAP_PRELOAD_DIRS="+dir))
	})
	eachRemoteObject(t, name, data, f)
}

// eachRemoteObject is eachObject of the HTTP and the S3 object.
func eachRemoteObject(t *testing.T, name string, data []byte, f func(t *testing.T, o shimObject, env []string)) {
	t.Run("http", func(t *testing.T) {
		host := httpServer(t, map[string][]byte{name: data})
		d := serve(t, nil)
		f(t, shimObject{kind: "http", path: "/filemap/http/" + host + "/" + name, data: data, d: d}, onSocket(t, d))
	})
	t.Run("s3", func(t *testing.T) {
		srv := gw.Server(t)
		bucket := srv.NewBucket(t, false)
		srv.Put(t, bucket, "dir/"+name, data)
		d := serve(t, srv.Env())
		f(t, shimObject{kind: "s3", path: "/filemap/s3/" + bucket + "/dir/" + name, data: data, d: d}, onSocket(t, d))
	})
}

// cachedNames is what `filemap stat --objects` says d holds caches of:
// the proof that a program's reads went through filemap.
func cachedNames(t *testing.T, d *clitest.Daemon) []string {
	t.Helper()
	_, bin := built(t)
	out, err := exec.Command(bin, "stat", "--objects", "--json", "--socket", d.Sock).Output()
	if err != nil {
		t.Fatalf("filemap stat --objects: %v", err)
	}
	var list struct {
		Objects []struct {
			URI string `json:"uri"`
		} `json:"objects"`
	}
	if err := json.Unmarshal(out, &list); err != nil {
		t.Fatalf("filemap stat --objects --json: %v\n%s", err, out)
	}
	var names []string
	for _, o := range list.Objects {
		names = append(names, o.URI)
	}
	return names
}

// wantCached checks that d holds a cache of the object whose name ends in suffix.
func wantCached(t *testing.T, d *clitest.Daemon, suffix string) {
	t.Helper()
	names := cachedNames(t, d)
	for _, n := range names {
		if strings.HasSuffix(n, suffix) {
			return
		}
	}
	t.Errorf("the handler holds no cache of an object ending in %s (it has %q): the program did not read through filemap", suffix, names)
}

// canPtrace says whether this process has CAP_SYS_PTRACE, without which
// the kernel refuses UFFD_FEATURE_EVENT_FORK: then a fork child has no
// copy of a filemap mapping (MADV_DONTFORK).
func canPtrace(t *testing.T) bool {
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
			return caps&(1<<19) != 0
		}
	}
	t.Fatal("no CapEff in /proc/self/status")
	return false
}
