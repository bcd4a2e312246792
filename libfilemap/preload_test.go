package libfilemap

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestPreloadCoreutils runs coreutils under the shim on a local file, an
// HTTP object and an S3 object, and checks every byte each prints:
// sha256sum (stdio: fopen, fread), cat into a file (it tries
// copy_file_range first, which the stand-in descriptor refuses, and must
// fall back to read) and into a pipe, dd with bs=1M skip=3 (dup2 onto
// stdin, lseek, read), tail -c (fstat, lseek), and cmp against a copy.
func TestPreloadCoreutils(t *testing.T) {
	for _, tool := range []string{"sha256sum", "cat", "dd", "tail", "cmp", "sh"} {
		needTool(t, tool)
	}
	_, data := testFile(t, objectSize)
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
func remoteObject(t *testing.T, data []byte) (path string, env []string, d *daemon) {
	t.Helper()
	host := httpServer(t, map[string][]byte{"object.bin": data}, nil)
	d = serve(t, nil)
	return "/filemap/http/" + host + "/object.bin", onSocket(t, d), d
}

// TestPreloadDescriptors checks, in a C program under the shim, what the
// descriptor of a remote object answers to as a file opened read-only
// does: writes and creation EROFS (SQLite falls back on it); fstat a
// read-only regular file of the object's size, the same inode as stat's;
// dup, dup2 and F_DUPFD_CLOEXEC share the offset, and outlive a close;
// F_GETFL O_RDONLY; read locks granted, write locks EBADF; FIONREAD;
// TCGETS ENOTTY (isatty); lseek's SEEK_END, SEEK_DATA, SEEK_HOLE;
// preadv and readv; fadvise and readahead; read after close EBADF. The
// program is built plain and with _FORTIFY_SOURCE (__open_2, __read_chk).
func TestPreloadDescriptors(t *testing.T) {
	_, data := testFile(t, objectSize)
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
		"f_getlk": "0 0", "f_getlk_type_unlck": "1",
		"fionread": "10", "tcgets": errnoLine(syscall.ENOTTY), "isatty": fmt.Sprintf("0 %d", syscall.ENOTTY),
		"seek_end": size, "seek_negative": errnoLine(syscall.EINVAL), "seek_data_past_end": errnoLine(syscall.ENXIO),
		"seek_hole": size, "read_at_end": "0 0",
		"preadv": "4104 1", "readv": "4104 1", "readv_moves_offset": "ok",
		"fadvise_sequential": "0 0", "fadvise_willneed": "0 0", "readahead": "0 0",
		"close": "0 0", "read_closed": errnoLine(syscall.EBADF), "close_again": errnoLine(syscall.EBADF),
		"access_r": "0 0", "access_w": errnoLine(syscall.EROFS),
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
// drops its write; MADV_DOFORK is refused; an unaligned offset is EINVAL;
// munmap of a page in the middle leaves the pages around it; mremap
// shrinks in place, and refuses to grow (ENOMEM); memory mapped after it
// all is the program's; a mapping past the end is made.
func TestPreloadMappings(t *testing.T) {
	_, data := testFile(t, objectSize)
	path, env, _ := remoteObject(t, data)
	wantLines(t, "maps", probe(t, env, "maps", path), map[string]string{
		"shared_write": errnoLine(syscall.EACCES), "shared_reads": "1",
		"mprotect_shared_write": errnoLine(syscall.EACCES), "unaligned_offset": errnoLine(syscall.EINVAL),
		"cow_private": "1 1", "madvise_dontneed": "0 0", "dontneed_drops_write": "1",
		"madvise_sequential": "0 0", "madvise_dofork": errnoLine(syscall.EINVAL),
		"munmap_middle": "0 0", "around_hole": "1 1", "mremap_shrink": "1", "mremap_grow": errnoLine(syscall.ENOMEM),
		"munmap_rest": "0 0", "munmap_shared": "0 0", "anon_after": "1", "munmap_anon": "0 0", "map_tail": "1",
	})
}

// TestPreloadStdio checks stdio on a remote object: fopen for writing is
// EROFS; fopen "r" and fread read every byte; fileno names a descriptor
// fstat answers for; fseeko and ftello move; fdopen of the shim's
// descriptor reads; freopen onto stdin reads every byte.
func TestPreloadStdio(t *testing.T) {
	_, data := testFile(t, objectSize)
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
// the cache's holes, zeros); the shim's own read reads.
func TestPreloadNeverZeros(t *testing.T) {
	_, data := testFile(t, objectSize)
	path, env, _ := remoteObject(t, data)
	ebadf := errnoLine(syscall.EBADF)
	wantLines(t, "nozeros", probe(t, env, "nozeros", path), map[string]string{
		"sendfile": ebadf, "copy_file_range": ebadf, "splice": ebadf, "sys_read": ebadf,
		"sys_pread64": ebadf, "sys_readv": ebadf, "sys_mmap": ebadf, "read": "4096 0",
	})
}
