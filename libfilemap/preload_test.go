package libfilemap

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/filemap/filemap/internal/child"
	"github.com/filemap/filemap/internal/clitest"
	"github.com/filemap/filemap/internal/faultyhttp"
	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/internal/testutil"
)

// TestPreloadCoreutils runs coreutils under the shim on a local file, an
// HTTP object and an S3 object, and checks every byte each prints:
// sha256sum (stdio: fopen, fread), cat into a file (it tries
// copy_file_range first, which the stand-in descriptor refuses, and must
// fall back to read) and into a pipe, cp (which tries copy_file_range
// too), dd with bs=1M skip=3 (dup2 onto
// stdin, lseek, read), tail -c (fstat, lseek), and cmp against a copy.
func TestPreloadCoreutils(t *testing.T) {
	for _, tool := range []string{"sha256sum", "cat", "cp", "dd", "tail", "cmp", "sh"} {
		needTool(t, tool)
	}
	_, data := pattern.TempFile(t, objectSize)
	eachObject(t, "object.bin", data, func(t *testing.T, o shimObject, env []string) {
		sum := sha256.Sum256(data)
		if n := cachedNames(t, o.d); len(n) != 0 {
			t.Fatalf("the handler has caches before any program ran: %q", n)
		}
		if got, want := string(mustRun(t, env, "sha256sum", o.path)), hex.EncodeToString(sum[:])+"  "+o.path+"\n"; got != want {
			t.Errorf("sha256sum: %q, want %q", got, want)
		}
		wantCached(t, o.d, "/object.bin")
		out := filepath.Join(t.TempDir(), "cat.out")
		mustRun(t, env, "sh", "-c", `exec cat "$1" > "$2"`, "sh", o.path, out)
		if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, data) {
			t.Errorf("cat into a file: %d bytes (%v), want the object's %d", len(got), err, len(data))
		}
		if got := mustRun(t, env, "cat", o.path); !bytes.Equal(got, data) {
			t.Errorf("cat into a pipe: %d bytes, want the object's %d", len(got), len(data))
		}
		copied := filepath.Join(t.TempDir(), "cp.out")
		mustRun(t, env, "cp", o.path, copied)
		if got, err := os.ReadFile(copied); err != nil || !bytes.Equal(got, data) {
			t.Errorf("cp: %d bytes (%v), want the object's %d", len(got), err, len(data))
		}
		if got := mustRun(t, env, "dd", "if="+o.path, "bs=1M", "skip=3", "status=none"); !bytes.Equal(got, data[3<<20:]) {
			t.Errorf("dd bs=1M skip=3: %d bytes, want the object's last %d", len(got), len(data)-3<<20)
		}
		if got := mustRun(t, env, "tail", "-c", "5000", o.path); !bytes.Equal(got, data[len(data)-5000:]) {
			t.Errorf("tail -c 5000: %d bytes, not the object's last 5000", len(got))
		}
		_, local := preloadFile(t, "copy.bin", data)
		mustRun(t, env, "cmp", o.path, local)
		data2 := bytes.Clone(data)
		data2[len(data2)-1] ^= 1
		_, other := preloadFile(t, "other.bin", data2)
		r := runIn(t, env, "", "cmp", o.path, other)
		if want := fmt.Sprintf("byte %d", len(data)); r.err == nil || !strings.Contains(string(r.out), want) {
			t.Errorf("cmp against a copy that differs in the last byte: %v %q, want a difference at %s", r.err, r.out, want)
		}
	})
}

// remoteObject serves data as an HTTP object, with a `filemap serve` for
// the programs, and returns the path they open it by.
func remoteObject(t *testing.T, data []byte) (path string, env []string, d *clitest.Daemon) {
	t.Helper()
	host := httpServer(t, map[string][]byte{"object.bin": data})
	d = serve(t, nil)
	return "/filemap/http/" + host + "/object.bin", onSocket(t, d), d
}

// TestPreloadDescriptors checks, in a C program under the shim, what the
// descriptor of a remote object answers to as a file opened read-only
// does: writes and creation EROFS (SQLite falls back on it); fstat a
// read-only regular file of the object's size, the same inode as stat's;
// dup, dup2 and F_DUPFD_CLOEXEC share the offset, and outlive a close;
// F_GETFL O_RDONLY; read locks granted, write locks EBADF; flock and
// fsync succeed; FIONREAD;
// FIONCLEX; TCGETS ENOTTY (isatty); lseek's SEEK_END, SEEK_DATA, SEEK_HOLE;
// preadv and readv; fadvise and readahead; read after close EBADF;
// realpath(3) is the path itself. The
// program is built plain and with _FORTIFY_SOURCE (__open_2, __read_chk).
func TestPreloadDescriptors(t *testing.T) {
	_, data := pattern.TempFile(t, objectSize)
	path, env, _ := remoteObject(t, data)
	size := fmt.Sprint(len(data))
	want := map[string]string{
		"open_rdwr": errnoLine(syscall.EROFS), "open_creat": errnoLine(syscall.EROFS),
		"open_directory": errnoLine(syscall.ENOTDIR),
		"fstat_size":     size, "same_inode": "1", "fstat_regular": "1", "fstat_mode": "444",
		"read_first": "100 0", "read_dup": "100 0",
		"dup_shares_offset": "ok", "dup_moves_offset": "ok", "dup_reads_on": "1", "dup2_shares_offset": "ok",
		"f_dupfd_cloexec": "1 1", "dup_outlives_close": "ok",
		"f_getfl_accmode": "0", "f_setlk_read": "0 0", "f_setlk_write": errnoLine(syscall.EBADF),
		"f_getlk": "0 0", "f_getlk_type_unlck": "1", "flock": "0 0", "fsync": "0 0",
		"fionread": "10", "tcgets": errnoLine(syscall.ENOTTY), "fionclex": "0 0", "fionclex_cleared": "1", "isatty": fmt.Sprintf("0 %d", syscall.ENOTTY),
		"seek_end": size, "seek_negative": errnoLine(syscall.EINVAL), "seek_data_past_end": errnoLine(syscall.ENXIO),
		"seek_hole": size, "read_at_end": "0 0",
		"preadv": "4104 1", "readv": "4104 1", "readv_moves_offset": "ok",
		"fadvise_sequential": "0 0", "fadvise_willneed": "0 0", "readahead": "0 0",
		"close": "0 0", "read_closed": errnoLine(syscall.EBADF), "close_again": errnoLine(syscall.EBADF),
		"access_r": "0 0", "access_w": errnoLine(syscall.EROFS), "realpath_same": "1",
	}
	for _, prog := range []string{"preload-probe", "preload-probe-fortified"} {
		dir, _ := built(t)
		got := probeLines(mustRun(t, env, filepath.Join(dir, "tests", prog), "fds", path))
		wantLines(t, prog+" fds", got, want)
	}
}

// TestPreloadMappings checks mmap(2) of a remote object's descriptor: a
// shared writable mapping is EACCES, and so is mprotect(PROT_WRITE) of a
// shared one; a shared read-only one reads the object; a private writable
// one is copy-on-write (the object reads unchanged) and MADV_DONTNEED
// drops its write; MADV_DOFORK is taken where fork children have the
// mapping (with CAP_SYS_PTRACE); an unaligned offset is EINVAL;
// munmap of a page in the middle leaves the pages around it, and memory
// mapped later with the hole's address as a hint survives the unmapping
// of the rest; mremap
// shrinks in place, and refuses to grow (ENOMEM); memory mapped after it
// all is the program's; memory the program maps with MAP_FIXED inside a
// mapping survives the unmapping of the rest; a mapping past the end is
// made.
func TestPreloadMappings(t *testing.T) {
	_, data := pattern.TempFile(t, objectSize)
	path, env, _ := remoteObject(t, data)
	dofork := "0 0"
	if !canPtrace(t) {
		dofork = errnoLine(syscall.EINVAL) // the mapping is MADV_DONTFORK
	}
	wantLines(t, "maps", probe(t, env, "maps", path), map[string]string{
		"shared_write": errnoLine(syscall.EACCES), "shared_reads": "1",
		"mprotect_shared_write": errnoLine(syscall.EACCES), "unaligned_offset": errnoLine(syscall.EINVAL),
		"cow_private": "1 1", "madvise_dontneed": "0 0", "dontneed_drops_write": "1",
		"madvise_sequential": "0 0", "madvise_dofork": dofork,
		"munmap_middle": "0 0", "around_hole": "1 1", "mremap_shrink": "1", "mremap_grow": errnoLine(syscall.ENOMEM),
		"munmap_rest": "0 0", "munmap_shared": "0 0", "anon_after": "1", "munmap_anon": "0 0", "map_tail": "1",
		"fixed_survives": "1", "hinted_survives": "1",
	})
}

// TestPreloadStdio checks stdio on a remote object: fopen for writing is
// EROFS; fopen "r" and fread read every byte; fileno names a descriptor
// fstat answers for; fseeko and ftello move; fdopen of the shim's
// descriptor reads; freopen onto stdin reads every byte.
func TestPreloadStdio(t *testing.T) {
	_, data := pattern.TempFile(t, objectSize)
	path, env, _ := remoteObject(t, data)
	size, sum := fmt.Sprint(len(data)), fnvSum(data)
	wantLines(t, "stdio", probe(t, env, "stdio", path), map[string]string{
		"fopen_w": fmt.Sprintf("1 %d", syscall.EROFS), "fread": size + " " + sum + " 0",
		"fileno_fstat": "0 " + size, "fseek_fread": "1 4104", "fclose": "0", "fdopen_fread": "1",
		"freopen": size + " " + sum,
	})
}

// TestPreloadNeverZeros gives the stand-in descriptor of a remote object
// to the calls the shim does not stand in for, as a static program or a
// raw system call would: sendfile, copy_file_range, splice, and raw read,
// pread64, readv and mmap. Each fails with EBADF, none reads a byte (of
// the cache's holes, zeros); so does opening it again by /proc/self/fd
// (ENXIO), as /dev/stdin and freopen(NULL, ...) do; the shim's own read
// reads.
func TestPreloadNeverZeros(t *testing.T) {
	_, data := pattern.TempFile(t, objectSize)
	path, env, _ := remoteObject(t, data)
	ebadf := errnoLine(syscall.EBADF)
	wantLines(t, "nozeros", probe(t, env, "nozeros", path), map[string]string{
		"sendfile": ebadf, "copy_file_range": ebadf, "splice": ebadf, "sys_read": ebadf,
		"sys_pread64": ebadf, "sys_readv": ebadf, "sys_mmap": ebadf, "read": "4096 0",
		"reopen": errnoLine(syscall.ENXIO),
	})
}

// statScript prints, as JSON, what Python's os.stat, os.lstat, os.fstat of
// an open descriptor, os.access and os.open say of each path argument:
// the fields, or the errno's name.
const statScript = `
import errno, json, os, stat, sys

def fields(s):
    return {"size": s.st_size, "regular": stat.S_ISREG(s.st_mode), "mode": oct(s.st_mode & 0o7777),
            "ino": s.st_ino, "dev": s.st_dev, "mtime_ns": s.st_mtime_ns, "blocks": s.st_blocks}

def attempt(f):
    try:
        return f()
    except OSError as e:
        return errno.errorcode[e.errno]

def fstat(p):
    fd = os.open(p, os.O_RDONLY)
    try:
        return fields(os.fstat(fd))
    finally:
        os.close(fd)

out = {}
for p in sys.argv[1:]:
    out[p] = {
        "stat": attempt(lambda: fields(os.stat(p))),
        "lstat": attempt(lambda: fields(os.lstat(p))),
        "fstat": attempt(lambda: fstat(p)),
        "access_r": os.access(p, os.R_OK), "access_w": os.access(p, os.W_OK), "access_x": os.access(p, os.X_OK),
        "open_rdwr_creat": attempt(lambda: os.close(os.open(p, os.O_RDWR | os.O_CREAT, 0o644))),
        "readlink": attempt(lambda: os.readlink(p)),
        "xattrs": attempt(lambda: os.listxattr(p)),
    }
print(json.dumps(out))
`

type statFields struct {
	Size    int64  `json:"size"`
	Regular bool   `json:"regular"`
	Mode    string `json:"mode"`
	Ino     uint64 `json:"ino"`
	Dev     uint64 `json:"dev"`
	MtimeNs int64  `json:"mtime_ns"`
	Blocks  int64  `json:"blocks"`
}

type statAnswer struct {
	Stat, Lstat, Fstat json.RawMessage
	AccessR            bool            `json:"access_r"`
	AccessW            bool            `json:"access_w"`
	AccessX            bool            `json:"access_x"`
	OpenRdwrCreat      json.RawMessage `json:"open_rdwr_creat"`
	Readlink           json.RawMessage `json:"readlink"`
	Xattrs             json.RawMessage `json:"xattrs"`
}

// statPaths runs statScript on paths, in dir.
func statPaths(t *testing.T, env []string, dir string, paths ...string) map[string]statAnswer {
	t.Helper()
	py := debianPython(t)
	r := runIn(t, env, dir, py, append([]string{"-c", statScript}, paths...)...)
	if r.err != nil {
		t.Fatalf("stat script: %v\n%s", r.err, r.stderr)
	}
	var m map[string]statAnswer
	if err := json.Unmarshal(r.out, &m); err != nil {
		t.Fatalf("stat script's answer %q: %v", r.out, err)
	}
	return m
}

func statOf(t *testing.T, what string, raw json.RawMessage) statFields {
	t.Helper()
	var f statFields
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatalf("%s: %s, want the fields of a file", what, raw)
	}
	return f
}

// TestPreloadStat stats an HTTP object, from Python, by each path form:
// the URI, the /filemap/http/ prefix, and the URI as path normalisation
// leaves it (http:/HOST/...), relative to a directory without an "http:"
// entry. Each is a read-only regular file (0444) of the object's size,
// with the same inode and device whether stat'ed, lstat'ed or fstat'ed
// and in every process, an mtime stable across processes and another for
// another version; access says readable, not writable or executable; an
// open to write or create is EROFS. What names no object is ENOENT: the
// prefix alone, a host, an unknown scheme, a missing object, and the
// -journal and -wal files SQLite probes. coreutils' stat (statx) agrees;
// ls -l (which reads extended attributes) lists the object without a
// complaint; realpath -e (which walks the path with readlink) finds it,
// and not a missing one.
// With a local "http:" directory, the normalised form is a local path.
func TestPreloadStat(t *testing.T) {
	_, data := pattern.TempFile(t, objectSize)
	other := bytes.Repeat([]byte("x"), 5000)
	host := httpServer(t, map[string][]byte{"object.bin": data, "other.bin": other})
	d := serve(t, nil)
	env := onSocket(t, d)
	forms := []string{"/filemap/http/" + host + "/object.bin", "http://" + host + "/object.bin", "http:/" + host + "/object.bin"}
	missing := []string{"/filemap", "/filemap/", "/filemap/http", "/filemap/http/" + host, "/filemap/gs/bucket/key",
		"/filemap/http/" + host + "/missing.bin", forms[0] + "-journal", forms[0] + "-wal", "/filemap/http/" + host + "/"}
	cwd := t.TempDir()
	first := statPaths(t, env, cwd, append(append([]string{"/filemap/http/" + host + "/other.bin"}, forms...), missing...)...)
	again := statPaths(t, env, cwd, forms[0])

	want := statOf(t, "stat", first[forms[0]].Stat)
	if want.Size != int64(len(data)) || !want.Regular || want.Mode != "0o444" || want.Blocks != (int64(len(data))+511)/512 {
		t.Errorf("stat %s: %+v, want a regular file of %d bytes, mode 0444", forms[0], want, len(data))
	}
	for _, p := range forms {
		a := first[p]
		for what, raw := range map[string]json.RawMessage{"stat": a.Stat, "lstat": a.Lstat, "fstat": a.Fstat} {
			if got := statOf(t, what+" "+p, raw); got != want {
				t.Errorf("%s %s: %+v, want %+v, as stat of %s", what, p, got, want, forms[0])
			}
		}
		if !a.AccessR || a.AccessW || a.AccessX {
			t.Errorf("access %s: read %v, write %v, execute %v; want read only", p, a.AccessR, a.AccessW, a.AccessX)
		}
		if string(a.OpenRdwrCreat) != `"EROFS"` {
			t.Errorf("open %s O_RDWR|O_CREAT: %s, want EROFS", p, a.OpenRdwrCreat)
		}
		if string(a.Readlink) != `"EINVAL"` || string(a.Xattrs) != `[]` {
			t.Errorf("%s: readlink %s, listxattr %s; want EINVAL (no symbolic link) and no attributes", p, a.Readlink, a.Xattrs)
		}
	}
	if got := statOf(t, "stat in another process", again[forms[0]].Stat); got != want {
		t.Errorf("stat %s in another process: %+v, want %+v", forms[0], got, want)
	}
	if o := statOf(t, "other", first["/filemap/http/"+host+"/other.bin"].Stat); o.Ino == want.Ino || o.MtimeNs == want.MtimeNs {
		t.Errorf("another object (another name, another version): inode %d, mtime %d; want both other than %d, %d",
			o.Ino, o.MtimeNs, want.Ino, want.MtimeNs)
	}
	for _, p := range missing {
		if a := first[p]; string(a.Stat) != `"ENOENT"` || string(a.Fstat) != `"ENOENT"` || a.AccessR {
			t.Errorf("%s: stat %s, open %s, access %v; want ENOENT", p, a.Stat, a.Fstat, a.AccessR)
		}
	}

	for _, tool := range []string{"stat", "ls", "realpath"} {
		needTool(t, tool)
	}
	got := strings.TrimSpace(string(mustRun(t, env, "stat", "-c", "%s %F %a %i", forms[0])))
	if w := fmt.Sprintf("%d regular file 444 %d", len(data), want.Ino); got != w {
		t.Errorf("coreutils stat %s: %q, want %q", forms[0], got, w)
	}
	// ls -l reads extended attributes, realpath walks the path with readlink.
	if r := runIn(t, env, "", "ls", "-l", forms[0]); r.err != nil || len(r.stderr) > 0 || !strings.HasPrefix(string(r.out), "-r--r--r-- ") {
		t.Errorf("ls -l %s: %q, stderr %q (%v); want a read-only file and no complaint", forms[0], r.out, r.stderr, r.err)
	}
	if got := string(mustRun(t, env, "realpath", "-e", forms[0])); got != forms[0]+"\n" {
		t.Errorf("realpath -e %s: %q, want the path itself", forms[0], got)
	}
	if r := runIn(t, env, "", "realpath", "-e", missing[5]); r.err == nil {
		t.Errorf("realpath -e %s, a missing object: %q, want a failure", missing[5], r.out)
	}

	// A local "http:" directory makes http:/HOST/object.bin its file.
	local := t.TempDir()
	if err := os.MkdirAll(filepath.Join(local, "http:", host), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(local, "http:", host, "object.bin"), []byte("local"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := runIn(t, env, local, "cat", forms[2]); r.err != nil || string(r.out) != "local" {
		t.Errorf("cat %s beside a local http: directory: %q (%v), want the local file's bytes", forms[2], r.out, r.err)
	}
}

// faultScript opens an object, then installs Python's SIGBUS handler, and
// reads to the end: the bytes read, and how it ended.
const faultScript = `
import errno, faulthandler, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
faulthandler.enable()
n = 0
try:
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            print(n, "EOF")
            break
        n += len(b)
except OSError as e:
    print(n, errno.errorcode[e.errno])
`

// TestPreloadFailingPage reads an HTTP object one page of which the
// server fails, under the shim: read(2) returns the bytes before the page
// (a short read) and then EIO, and says on stderr which offset failed;
// pread(2) of the page is EIO, also in a program that installed a SIGBUS
// handler of its own after opening; a program touching the page through its
// mmap(2) gets SIGBUS, as for a file's page that cannot be read, while a
// page 128 KiB away reads; once the server serves it again, the whole
// object reads: the failure is not sticky.
func TestPreloadFailingPage(t *testing.T) {
	data, srv, d := failingPageObject(t)
	env := onSocket(t, d)
	path := "/filemap/http/" + srv.Host + "/object.bin"

	// 100000-byte reads: the one across the page comes back short.
	dir, _ := built(t)
	r := runIn(t, env, "", filepath.Join(dir, "tests", "preload-probe"), "readall", path, "100000")
	wantLines(t, "readall", probeLines(r.out), map[string]string{
		"bytes": fmt.Sprint(badOff), "errno": fmt.Sprint(int(syscall.EIO)), "sum": fnvSum(data[:badOff]),
	})
	if want := fmt.Sprintf("cannot read the page at offset %d", badOff); !strings.Contains(string(r.stderr), want) {
		t.Errorf("the reader's stderr: %q, want it to say %q", r.stderr, want)
	}
	wantLines(t, "pread across the page", probe(t, env, "pread", path, fmt.Sprint(badOff-100), "8192"), map[string]string{
		"n": "100", "errno": "0", "sum": fnvSum(data[badOff-100 : badOff]),
	})
	wantLines(t, "pread of the page", probe(t, env, "pread", path, fmt.Sprint(badOff), "4096"), map[string]string{
		"n": "-1", "errno": fmt.Sprint(int(syscall.EIO)),
	})

	touch := runIn(t, env, "", filepath.Join(dir, "tests", "preload-probe"), "touch", path, fmt.Sprint(badOff+10))
	if touch.signal() != syscall.SIGBUS {
		t.Errorf("touching the page through mmap: %v, output %q; want death by SIGBUS", touch.err, touch.out)
	}
	neighbour := badOff + 128<<10
	wantLines(t, "touching a page 128 KiB away", probe(t, env, "touch", path, fmt.Sprint(neighbour)), map[string]string{
		"byte": fmt.Sprint(data[neighbour]),
	})

	// A program that puts in a SIGBUS handler of its own after opening (Python's
	// faulthandler) gets EIO too: the shim's copy then does without its handler.
	if py, err := exec.LookPath("python3"); err == nil {
		r := runIn(t, env, "", py, "-c", faultScript, path)
		if got, want := strings.TrimSpace(string(r.out)), fmt.Sprintf("%d EIO", badOff); r.err != nil || got != want {
			t.Errorf("reading after faulthandler.enable(): %q (%v), want %q; stderr:\n%s", got, r.err, want, r.stderr)
		}
	}

	srv.Fail(-1, faultyhttp.Status500)
	wantLines(t, "readall once the server serves the page", probe(t, env, "readall", path, "100000"), map[string]string{
		"bytes": fmt.Sprint(len(data)), "errno": "0", "sum": fnvSum(data),
	})
}

// TestPreloadThreadsForkExec checks a remote object's descriptor shared
// by threads, inherited by fork(2), and carried through execve(2): four
// threads reading one descriptor read every byte once, each where it
// belongs, as they would a file's; a fork child without exec reads the
// descriptor and the mapping its parent made; a program exec'd without the
// shim gets EBADF from read(2) of the inherited descriptor, and ENXIO
// from opening it again by /proc/self/fd, never bytes; fstat(2) answers.
func TestPreloadThreadsForkExec(t *testing.T) {
	_, data := pattern.TempFile(t, objectSize)
	path, env, _ := remoteObject(t, data)
	size, sum := fmt.Sprint(len(data)), fnvSum(data)
	wantLines(t, "threads", probe(t, env, "threads", path, "4"), map[string]string{
		"bytes": size, "misplaced": "0", "dups": "0",
	})
	t.Run("fork", func(t *testing.T) {
		needPtrace(t) // else the child has no copy of the mapping: TestPreloadForkWithoutPtrace
		wantLines(t, "fork", probe(t, env, "fork", path), map[string]string{
			"child_pread": size + " " + sum, "child_mapping": sum, "child_status": "0", "parent_mapping": sum,
		})
	})
	wantLines(t, "exec", probe(t, env, "exec", path), map[string]string{
		"read": errnoLine(syscall.EBADF), "reopen": errnoLine(syscall.ENXIO), "fstat": "0 0",
	})
}

// TestPreloadCost checks that the shim costs a program that opens no
// filemap path nothing it can see: with no handler to be had (a socket
// that does not exist), a program that stats and opens an ordinary file
// has one thread, the default SIGBUS action, no child and no more
// descriptors than before. Opening an object gives it a SIGBUS handler
// and descriptors, but still no thread; with a private handler, one
// child.
func TestPreloadCost(t *testing.T) {
	_, bin := built(t)
	nowhere := shimEnv(t, "FILEMAP_SOCKET="+filepath.Join(t.TempDir(), "none.sock"), "FILEMAP_EXECUTABLE=/nonexistent")
	got := probe(t, nowhere, "cost")
	if got["before"] != got["libc"] || !strings.HasPrefix(got["libc"], "threads 1 sigbus_default 1 children 0 ") {
		t.Errorf("a program under the shim, before and after an ordinary open: %q, %q; want one thread, SIGBUS default, no child, nothing more",
			got["before"], got["libc"])
	}
	if got := mustRun(t, nowhere, "cat", "/proc/self/status"); !bytes.Contains(got, []byte("Threads:\t1\n")) {
		t.Errorf("cat of an ordinary file under the shim, with no handler to be had: %q", got)
	}

	_, data := pattern.TempFile(t, 1<<20)
	path, env, _ := remoteObject(t, data)
	if got := probe(t, env, "cost", path)["after"]; !strings.HasPrefix(got, "threads 1 sigbus_default 0 children 0 ") {
		t.Errorf("after opening %s: %q; want one thread, the shim's SIGBUS handler, no child", path, got)
	}
	private := shimEnv(t, "FILEMAP_EXECUTABLE="+bin)
	if got := probe(t, private, "cost", path)["after"]; !strings.HasPrefix(got, "threads 1 sigbus_default 0 children 1 ") {
		t.Errorf("after opening %s with a private handler: %q; want one thread and one child, the handler", path, got)
	}
}

// faultCounts is what d has served: major, minor and marker faults, and
// store reads.
type faultCounts struct{ major, minor, marker, storeReads int64 }

func faultsOf(t *testing.T, d *clitest.Daemon) faultCounts {
	t.Helper()
	_, bin := built(t)
	out, err := exec.Command(bin, "stat", "--json", "--socket", d.Sock).Output()
	if err != nil {
		t.Fatalf("filemap stat: %v", err)
	}
	var s struct {
		Major      int64 `json:"major_faults"`
		Minor      int64 `json:"minor_faults"`
		StoreReads int64 `json:"store_reads"`
		Latency    struct {
			Marker struct {
				Count int64 `json:"count"`
			} `json:"marker"`
		} `json:"fault_latency"`
	}
	if err := json.Unmarshal(out, &s); err != nil {
		t.Fatalf("filemap stat --json: %v\n%s", err, out)
	}
	return faultCounts{s.Major, s.Minor, s.Latency.Marker.Count, s.StoreReads}
}

func (a faultCounts) minus(b faultCounts) faultCounts {
	return faultCounts{a.major - b.major, a.minor - b.minor, a.marker - b.marker, a.storeReads - b.storeReads}
}

// TestPreloadReadahead reads a 64 MiB file from start to end with dd
// bs=1M under the shim, which gives no advice: the shim reads ahead of
// the stream as the kernel's read(2) does, so that few of its faults wait
// for store I/O of their own (the handler's read-around alone, made for
// random faults, takes about a thousand); read again, with the cache
// warm, it takes no fault and no store read.
func TestPreloadReadahead(t *testing.T) {
	_, data := pattern.TempFile(t, 64<<20)
	dir, path := preloadFile(t, "stream.bin", data)
	d := serve(t, nil)
	env := onSocket(t, d, "FILEMAP_PRELOAD_DIRS="+dir)
	before := faultsOf(t, d)
	if got := mustRun(t, env, "dd", "if="+path, "bs=1M", "status=none"); !bytes.Equal(got, data) {
		t.Fatalf("dd: %d bytes, not the file's %d", len(got), len(data))
	}
	cold := faultsOf(t, d)
	if n := cold.minus(before); n.major >= 128 {
		t.Errorf("a cold sequential read of 64 MiB took %d major faults (%+v), want fewer than 128: no readahead", n.major, n)
	}
	mustRun(t, env, "dd", "if="+path, "of=/dev/null", "bs=1M", "status=none")
	if n := faultsOf(t, d).minus(cold); n != (faultCounts{}) {
		t.Errorf("a warm sequential read: %+v, want no fault and no store read", n)
	}
}

// TestPreloadForkWithoutPtrace forks a child of a program without
// CAP_SYS_PTRACE, whose mappings the kernel does not let a child inherit
// served (no UFFD_FEATURE_EVENT_FORK: they are MADV_DONTFORK): the child
// still reads the descriptor it inherited, from the offset its parent
// left, every byte, as a child reads an inherited file; the shim opens
// the object again for it. MADV_DOFORK of such a mapping is refused.
func TestPreloadForkWithoutPtrace(t *testing.T) {
	setpriv := needTool(t, "setpriv")
	_, data := pattern.TempFile(t, objectSize)
	path, env, _ := remoteObject(t, data)
	dir, _ := built(t)
	out := mustRun(t, env, setpriv, "--bounding-set", "-sys_ptrace", filepath.Join(dir, "tests", "preload-probe"), "forkread", path)
	wantLines(t, "forkread without CAP_SYS_PTRACE", probeLines(out), map[string]string{
		"child_read": "8 1", "child_pread": fmt.Sprint(len(data)) + " " + fnvSum(data), "child_status": "0",
		"parent_read": "64",
	})
	// MADV_DOFORK would give a child a copy of the mapping that no handler serves.
	out = mustRun(t, env, setpriv, "--bounding-set", "-sys_ptrace", filepath.Join(dir, "tests", "preload-probe"), "maps", path)
	wantLines(t, "maps without CAP_SYS_PTRACE", probeLines(out), map[string]string{"madvise_dofork": errnoLine(syscall.EINVAL)})
}

// TestPreloadForkDuringRead forks while another thread of the program is
// inside read(2) of an object's descriptor, waiting for a page the server
// holds back: the child's own read(2) of the descriptor does not wait for
// that thread, which the child does not have, and reads once the page
// comes, as the parent's thread does.
func TestPreloadForkDuringRead(t *testing.T) {
	_, data := pattern.TempFile(t, objectSize)
	const held = 5 << 20
	srv := faultyhttp.Start(t, data)
	srv.Hold(held)
	d := serve(t, nil, "--remote-chunk", "64K", "--remote-max-request", "64K")
	dir, _ := built(t)
	cmd := exec.Command(filepath.Join(dir, "tests", "preload-probe"), "forklock",
		"/filemap/http/"+srv.Host+"/object.bin", fmt.Sprint(held))
	cmd.Env = onSocket(t, d)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c := child.StartT(t, cmd, "probe forklock")
	// A child stuck on a lock holds the output pipe open: kill the group.
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	// Then the thread is in read(2), waiting for the page.
	testutil.WaitFor(t, "the reading thread's page to be asked for", func() bool { return srv.Held() > 0 })
	c.Send("fork")
	if l, ok := c.Reply(child.Timeout); !ok || l != "forked" {
		t.Fatalf("fork: %q", l)
	}
	srv.Release()
	got := map[string]string{}
	for len(got) < 3 {
		l, ok := c.Reply(child.Timeout)
		if !ok {
			t.Fatalf("the child or the thread did not finish reading (a lock held by a thread the child does not have?); so far %q", got)
		}
		k, v, _ := strings.Cut(l, " ")
		got[k] = v
	}
	wantLines(t, "forklock", got, map[string]string{"child_read": "4096", "child_status": "0", "thread_read": "4096"})
}
