package libfilemap

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/filemap/filemap/internal/pattern"
)

// npyFile is a .npy file of n little-endian uint64 words of the test
// pattern (format version 1.0: magic, header length, a header dict padded
// with spaces to a 64-byte boundary), the sum of its words (as numpy sums
// uint64: modulo 2^64) and the SHA-256 of its data.
func npyFile(t *testing.T, n int) (file []byte, sum uint64, sha string) {
	t.Helper()
	_, words := pattern.TempFile(t, int64(8*n))
	header := fmt.Sprintf("{'descr': '<u8', 'fortran_order': False, 'shape': (%d,), }", n)
	pad := 64 - (10+len(header)+1)%64
	header += strings.Repeat(" ", pad%64) + "\n"
	var b bytes.Buffer
	b.WriteString("\x93NUMPY\x01\x00")
	binary.Write(&b, binary.LittleEndian, uint16(len(header)))
	b.WriteString(header)
	b.Write(words)
	for i := 0; i < n; i++ {
		sum += binary.LittleEndian.Uint64(words[8*i:])
	}
	h := sha256.Sum256(words)
	return b.Bytes(), sum, hex.EncodeToString(h[:])
}

const numpyScript = `
import hashlib, sys
import numpy as np
a = np.load(sys.argv[1], mmap_mode="r")
print(type(a).__name__, a.dtype, a.shape[0], int(a.sum(dtype=np.uint64)), hashlib.sha256(a.tobytes()).hexdigest())
`

// TestPreloadNumpy loads a .npy object with numpy.load(path,
// mmap_mode="r") in Debian's python3 under the shim (Python's open to read
// the header, then mmap.mmap of a second descriptor, MAP_SHARED,
// PROT_READ), sums it and hashes every byte of the memmap, from a local
// file, an HTTP object and an S3 object.
func TestPreloadNumpy(t *testing.T) {
	py := debianPython(t)
	const n = 1<<20 + 3
	file, sum, sha := npyFile(t, n)
	eachObject(t, "array.npy", file, func(t *testing.T, o shimObject, env []string) {
		got := strings.TrimSpace(string(mustRun(t, env, py, "-c", numpyScript, o.path)))
		if want := fmt.Sprintf("memmap uint64 %d %d %s", n, sum, sha); got != want {
			t.Errorf("numpy.load(%s, mmap_mode=\"r\"): %q, want %q", o.path, got, want)
		}
		wantCached(t, o.d, "/array.npy")
	})
}

const forkScript = `
import hashlib, multiprocessing as mp, os, sys
import numpy as np
m = np.memmap(sys.argv[1], dtype=np.uint8, mode="r")

def part(i, q):
    lo, hi = len(m) * i // 4, len(m) * (i + 1) // 4
    q.put((i, os.getpid(), hashlib.sha256(m[lo:hi].tobytes()).hexdigest()))

if __name__ == "__main__":
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    ps = [ctx.Process(target=part, args=(i, q)) for i in range(4)]
    for p in ps:
        p.start()
    got = sorted(q.get(timeout=100) for _ in ps)
    for p in ps:
        p.join()
    pids = {pid for _, pid, _ in got}
    print(len(pids - {os.getpid()}), " ".join(h for _, _, h in got), " ".join(str(p.exitcode) for p in ps))
`

// TestPreloadForkMemmap maps an object with numpy.memmap in Python under
// the shim, then forks four children with multiprocessing's fork start
// method (no exec): each reads a quarter of the parent's mapping, and
// every byte of each quarter is checked, from a local file, an HTTP
// object and an S3 object.
func TestPreloadForkMemmap(t *testing.T) {
	needPtrace(t)
	py := debianPython(t)
	_, data := pattern.TempFile(t, objectSize)
	var want []string
	for i := 0; i < 4; i++ {
		h := sha256.Sum256(data[len(data)*i/4 : len(data)*(i+1)/4])
		want = append(want, hex.EncodeToString(h[:]))
	}
	eachObject(t, "object.bin", data, func(t *testing.T, o shimObject, env []string) {
		got := strings.TrimSpace(string(mustRun(t, env, py, "-c", forkScript, o.path)))
		if w := "4 " + strings.Join(want, " ") + " 0 0 0 0"; got != w {
			t.Errorf("four fork children reading quarters of a memmap: %q, want %q (children, hashes, exit codes)", got, w)
		}
	})
}

// TestPreloadSQLite queries a database object with sqlite3 under the
// shim, from an HTTP object and an S3 object, with its reads (pread) and
// with PRAGMA mmap_size (mmap): the answers are those of the same file on
// disk without the shim. sqlite3 opens O_RDWR|O_CREAT first and, refused
// with EROFS, opens read-only; it takes read locks, and finds no -journal
// or -wal.
func TestPreloadSQLite(t *testing.T) {
	sqlite := needTool(t, "sqlite3")
	db := filepath.Join(t.TempDir(), "test.db")
	mustRun(t, cleanEnv(), sqlite, db, `create table t(id integer primary key, v text, b blob);
		with recursive c(x) as (select 1 union all select x+1 from c where x < 20000)
		insert into t select x, printf('row %d', x), randomblob(200) from c;
		create index tv on t(v);`)
	file, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	const query = `select count(*), sum(id), sum(length(b)) from t; select hex(sha3_query('select * from t'));
		select id, v from t where v = 'row 12345'; pragma integrity_check;`
	want := mustRun(t, cleanEnv(), sqlite, db, query)
	// Not a local file: sqlite3 opens one O_RDWR, which the shim leaves to the kernel.
	eachRemoteObject(t, "test.db", file, func(t *testing.T, o shimObject, env []string) {
		for _, pragma := range []string{"", "pragma mmap_size=268435456;"} {
			got := mustRun(t, env, sqlite, o.path, pragma+query)
			got = bytes.TrimPrefix(got, []byte("268435456\n"))
			if !bytes.Equal(got, want) {
				t.Errorf("sqlite3 %s %q:\n%s\nwant, as of the file on disk:\n%s", o.path, pragma, got, want)
			}
		}
		wantCached(t, o.d, "/test.db")
	})
}

// TestPreloadPrivateHandler runs a program under the shim with no socket
// named: the shim's first open starts a private handler (the filemap
// executable $FILEMAP_EXECUTABLE names), which serves the program's reads.
func TestPreloadPrivateHandler(t *testing.T) {
	_, bin := built(t)
	_, data := pattern.TempFile(t, objectSize)
	host := httpServer(t, map[string][]byte{"object.bin": data})
	env := shimEnv(t, "FILEMAP_EXECUTABLE="+bin)
	sum := sha256.Sum256(data)
	path := "http://" + host + "/object.bin"
	if got, want := string(mustRun(t, env, "sha256sum", path)), hex.EncodeToString(sum[:])+"  "+path+"\n"; got != want {
		t.Errorf("sha256sum with a private handler: %q, want %q", got, want)
	}
}

// TestPreloadLocalDirs reads local files under the shim with
// $FILEMAP_PRELOAD_DIRS naming their directory: a file there, by an
// absolute path or relative to the working directory, is read through
// filemap (the handler holds its cache); a file elsewhere, and every
// write, are the kernel's: a program can still create and write a file in
// the directory and read it back, and list the directory. With no handler
// to be had, a file there still reads, from the kernel.
func TestPreloadLocalDirs(t *testing.T) {
	_, data := pattern.TempFile(t, objectSize)
	dir, abs := preloadFile(t, "abs.bin", data)
	if err := os.WriteFile(filepath.Join(dir, "rel.bin"), data[:5000], 0o644); err != nil {
		t.Fatal(err)
	}
	_, outside := preloadFile(t, "outside.bin", data)
	d := serve(t, nil)
	env := onSocket(t, d, "FILEMAP_PRELOAD_DIRS=/nonexistent:"+dir+"/")
	if got := mustRun(t, env, "cat", abs); !bytes.Equal(got, data) {
		t.Errorf("cat %s: %d bytes, want the file's %d", abs, len(got), len(data))
	}
	if r := runIn(t, env, dir, "cat", "rel.bin"); r.err != nil || !bytes.Equal(r.out, data[:5000]) {
		t.Errorf("cat rel.bin in %s: %d bytes (%v), want the file's 5000", dir, len(r.out), r.err)
	}
	if got := mustRun(t, env, "cat", outside); !bytes.Equal(got, data) {
		t.Errorf("cat %s: %d bytes, want the file's %d", outside, len(got), len(data))
	}
	wantCached(t, d, "/abs.bin")
	wantCached(t, d, "/rel.bin")
	for _, n := range cachedNames(t, d) {
		if strings.HasSuffix(n, "/outside.bin") {
			t.Errorf("the handler holds a cache of %s, outside $FILEMAP_PRELOAD_DIRS", n)
		}
	}
	written := filepath.Join(dir, "written.txt")
	if got := mustRun(t, env, "sh", "-c", `echo hello > "$1" && cat "$1" && ls "$2"`, "sh", written, dir); !bytes.Contains(got, []byte("hello\n")) ||
		!bytes.Contains(got, []byte("written.txt")) {
		t.Errorf("writing, reading back and listing in the directory: %q", got)
	}

	nowhere := shimEnv(t, "FILEMAP_SOCKET="+filepath.Join(t.TempDir(), "none.sock"), "FILEMAP_PRELOAD_DIRS="+dir)
	r := runIn(t, nowhere, "", "cat", abs)
	if r.err != nil || !bytes.Equal(r.out, data) {
		t.Errorf("cat %s with no handler: %d bytes (%v), want the file's %d from the kernel", abs, len(r.out), r.err, len(data))
	}
	if !bytes.Contains(r.stderr, []byte("filemap-preload: ")) {
		t.Errorf("cat %s with no handler says nothing of it on stderr: %q", abs, r.stderr)
	}
}

const subprocessScript = `
import os, subprocess, sys
f = open(sys.argv[1], "rb")
head = f.read(8)
subprocess.run(["true"], stdin=f, close_fds=True)  # vfork; the child dup2s f onto 0 and closes the rest
print(os.read(0, 5).decode(), head == f.read(0) + head, len(f.read()))
`

// TestPreloadSubprocess runs a child with Python's subprocess, whose
// _posixsubprocess vforks and, in the child, dup2s an object's descriptor
// onto descriptor 0 and closes the others: the parent's own descriptor 0
// still reads what it did (its stdin), and its object descriptor still
// reads the object.
func TestPreloadSubprocess(t *testing.T) {
	py := debianPython(t)
	_, data := pattern.TempFile(t, objectSize)
	path, env, _ := remoteObject(t, data)
	cmd := exec.Command(py, "-c", subprocessScript, path)
	cmd.Env = env
	cmd.Stdin = strings.NewReader("hello")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if got, want := strings.TrimSpace(string(out)), fmt.Sprintf("hello True %d", len(data)-8); got != want {
		t.Errorf("after a subprocess given the object as its stdin: %q, want %q (the parent's stdin, and the rest of the object)", got, want)
	}
}

const copyScript = `
import shutil, sys
shutil.copyfile(sys.argv[1], sys.argv[2])  # sendfile(2) first, then read(2) and write(2)
`

// TestPreloadCopyfile copies an object with Python's shutil.copyfile under
// the shim, which tries sendfile(2), which the stand-in descriptor refuses
// (EBADF), and falls back to reading: the copy is the object's bytes.
func TestPreloadCopyfile(t *testing.T) {
	py := needTool(t, "python3")
	_, data := pattern.TempFile(t, objectSize)
	path, env, _ := remoteObject(t, data)
	out := filepath.Join(t.TempDir(), "copy.bin")
	mustRun(t, env, py, "-c", copyScript, path, out)
	if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, data) {
		t.Errorf("shutil.copyfile: %d bytes (%v), want the object's %d", len(got), err, len(data))
	}
}
