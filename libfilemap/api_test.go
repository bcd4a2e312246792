package libfilemap

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/filemap/filemap"
	"github.com/filemap/filemap/internal/child"
	"github.com/filemap/filemap/internal/faultyhttp"
	"github.com/filemap/filemap/internal/pattern"
)

// TestGoAndCShareCache opens one file in a C client and in the Go library,
// through the same `filemap serve`: both read the same bytes, at the same
// version, from one cache. Once the C client has read every page, the Go
// client's reads cost the handler no store I/O, and the handler lists the
// object once.
func TestGoAndCShareCache(t *testing.T) {
	path, data := pattern.TempFile(t, objectSize)
	d := serve(t, nil)
	ctx := context.Background()
	c := driveOn(t, d)
	f := fields(t, c.OK("open %s", path), 3)
	if got := c.OK("sum %s", f[0]); got != fnvSum(data) {
		t.Fatalf("the C client read sum %s, want %s", got, fnvSum(data))
	}
	before, err := filemap.Stat(ctx, filemap.WithSocket(d.Sock))
	if err != nil {
		t.Fatal(err)
	}
	m, err := filemap.Open(ctx, path, filemap.WithSocket(d.Sock))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Version() != f[2] {
		t.Errorf("the Go client maps version %s, the C client %s", m.Version(), f[2])
	}
	buf := make([]byte, len(data))
	if n, err := m.ReadAt(buf, 0); n != len(data) || fnvSum(buf) != fnvSum(data) {
		t.Errorf("the Go client read %d bytes (%v), sum %s; want %d, sum %s", n, err, fnvSum(buf[:n]), len(data), fnvSum(data))
	}
	after, err := filemap.Stat(ctx, filemap.WithSocket(d.Sock))
	if err != nil {
		t.Fatal(err)
	}
	if after.StoreBytes != before.StoreBytes || after.MajorFaults != before.MajorFaults {
		t.Errorf("the Go client's reads of what the C client read cost %d store bytes and %d major faults; want none: one cache",
			after.StoreBytes-before.StoreBytes, after.MajorFaults-before.MajorFaults)
	}
	objs, err := filemap.CachedObjects(ctx, filemap.WithSocket(d.Sock))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 1 || objs[0].URI != path || objs[0].Users != 4 {
		t.Errorf("the handler holds %+v; want one cache, of %s, with 4 users (a handle and a region of each client)", objs, path)
	}
}

// TestHandlerErrors checks that a handler's error reaches a C program as
// its message, verbatim, after "filemap: open NAME: ", with the errno a
// program acts on: a missing S3 key is ENOENT, a version the object no
// longer has ESTALE, and the handler's per-client limits EMFILE (objects)
// and ENOMEM (regions).
func TestHandlerErrors(t *testing.T) {
	built(t) // before starting an S3 server for nothing
	path, _ := pattern.TempFile(t, 1<<20)
	t.Run("missing", func(t *testing.T) {
		srv := gw.Server(t)
		bucket := srv.NewBucket(t, false)
		d := serve(t, srv.Env())
		uri := "s3://" + bucket + "/no/such/key"
		_, goErr := filemap.Open(context.Background(), uri, filemap.WithSocket(d.Sock))
		if goErr == nil {
			t.Fatalf("the Go library opened %s", uri)
		}
		// The two libraries show the handler's error alike. The message
		// ends with the S3 request's id, another for each request.
		want := fmt.Sprintf("err %d -1 %s", syscall.ENOENT, goErr)
		got := driveOn(t, d).Do("open %s", uri)
		got, _, _ = strings.Cut(got, "RequestID:")
		if want, _, _ = strings.Cut(want, "RequestID:"); got != want || !strings.Contains(got, "no such key") {
			t.Errorf("open of a missing key:\n%s\nwant\n%s", got, want)
		}
	})
	t.Run("version", func(t *testing.T) {
		c := driveOn(t, serve(t, nil))
		version := fields(t, c.OK("open %s", path), 3)[2]
		c.OK("open %s version=%s", path, version)
		got := c.Do("open %s version=1@2", path)
		want := fmt.Sprintf("err %d -1 filemap: %s: object changed since it was opened: pinned version 1@2, now %s",
			syscall.ESTALE, path, version)
		if got != want {
			t.Errorf("open at a version the file no longer has:\n%s\nwant\n%s", got, want)
		}
	})
	t.Run("objects", func(t *testing.T) {
		d := serve(t, nil, "--max-objects-per-client", "1")
		c := driveOn(t, d)
		c.OK("open %s", path)
		got := c.Do("open %s", path)
		want := fmt.Sprintf("err %d -1 filemap: open %s: client pid %d (uid %d) has 1 objects open, the daemon's limit per client (filemap serve --max-objects-per-client): per-client limit reached",
			syscall.EMFILE, path, c.Cmd.Process.Pid, os.Getuid())
		if got != want {
			t.Errorf("open over the limit of objects:\n%s\nwant\n%s", got, want)
		}
	})
	t.Run("regions", func(t *testing.T) {
		d := serve(t, nil, "--max-regions-per-client", "1")
		c := driveOn(t, d)
		id := fields(t, c.OK("open %s", path), 3)[0]
		got := c.Do("map %s 0 4096 r", id)
		if !strings.HasPrefix(got, fmt.Sprintf("err %d -1 filemap: %s: attach %s: ", syscall.ENOMEM, path, path)) ||
			!strings.Contains(got, "--max-regions-per-client") {
			t.Errorf("a range over the limit of regions: %q; want ENOMEM and the handler's message naming the limit", got)
		}
	})
}

// TestCopyOnWrite writes into a copy-on-write mapping: the writer reads
// its byte, another client of the same cache reads the object's, and
// DONTNEED drops the written page, which reads the object's byte again.
func TestCopyOnWrite(t *testing.T) {
	path, data := pattern.TempFile(t, 1<<20)
	d := serve(t, nil)
	w, r := driveOn(t, d), driveOn(t, d)
	wid := fields(t, w.OK("open %s cow", path), 3)[0]
	rid := fields(t, r.OK("open %s", path), 3)[0]
	const off = 300000
	patched := append([]byte(nil), data[off-10:off+10]...)
	patched[10] = data[off] ^ 0xff
	w.OK("write %s %d %d", wid, off, patched[10])
	if got, want := w.OK("read %s %d 20", wid, off-10), "20 "+fnvSum(patched); got != want {
		t.Errorf("the writer reads %q around its write, want %q", got, want)
	}
	if got, want := r.OK("read %s %d 20", rid, off-10), "20 "+fnvSum(data[off-10:off+10]); got != want {
		t.Errorf("another client reads %q there, want the object's bytes %q", got, want)
	}
	if got := fields(t, w.OK("stat %s", wid), 4)[1]; got != "0x1" {
		t.Errorf("stat flags %s, want 0x1 (FILEMAP_COPY_ON_WRITE)", got)
	}
	w.OK("advise %s dontneed %d 1", wid, off)
	if got, want := w.OK("read %s %d 20", wid, off-10), "20 "+fnvSum(data[off-10:off+10]); got != want {
		t.Errorf("the writer reads %q after DONTNEED, want the object's bytes %q", got, want)
	}
}

// TestMapRanges maps parts of an object as a program's mmap(2) would
// through the LD_PRELOAD shim: at an offset, at a fixed address, shared
// read-only; a range outlives its object's close, as a mapping outlives
// close(2); and what mmap refuses for a read-only file is refused.
func TestMapRanges(t *testing.T) {
	path, data := pattern.TempFile(t, objectSize)
	d := serve(t, nil)
	c := driveOn(t, d)
	id := fields(t, c.OK("open %s advice=random", path), 3)[0]
	size := len(data)
	// [1 MiB, 4 MiB+5) of the object: mapped in whole pages, to 4 MiB+4 KiB.
	r1 := fields(t, c.OK("map %s %d %d r", id, 1<<20, 3<<20+5), 2)
	if got, want := c.OK("rsum %s %d", r1[0], size), fnvSum(data[1<<20:4<<20+4096]); got != want {
		t.Errorf("range at 1 MiB: sum %s, want %s", got, want)
	}
	// The object's last pages, past its end: the bytes up to the end.
	last := (size - 10000) &^ 4095
	r2 := fields(t, c.OK("map %s %d %d r shared", id, last, 1<<20), 2)
	if got, want := c.OK("rsum %s %d", r2[0], size), fnvSum(data[last:]); got != want {
		t.Errorf("shared range over the end: sum %s, want %s", got, want)
	}
	// MAP_FIXED at the address a range had.
	c.OK("unmap %s", r1[0])
	r3 := fields(t, c.OK("map %s %d %d r fixed=%s", id, 2<<20, 1<<20, r1[1]), 2)
	if r3[1] != r1[1] {
		t.Errorf("MAP_FIXED at %s mapped at %s", r1[1], r3[1])
	}
	if got, want := c.OK("rsum %s %d", r3[0], size), fnvSum(data[2<<20:3<<20]); got != want {
		t.Errorf("fixed range: sum %s, want %s", got, want)
	}
	for _, bad := range []struct {
		args  string
		errno syscall.Errno
	}{
		{"100 4096 r", syscall.EINVAL},       // an offset not page-aligned
		{"0 0 r", syscall.EINVAL},            // nothing
		{"0 4096 rw shared", syscall.EACCES}, // writing a read-only object through a shared mapping
	} {
		if got := c.Do("map %s %s", id, bad.args); !strings.HasPrefix(got, fmt.Sprintf("err %d ", bad.errno)) {
			t.Errorf("map %s: %q, want errno %d", bad.args, got, bad.errno)
		}
	}
	c.OK("close %s", id)
	if got, want := c.OK("rsum %s %d", r3[0], size), fnvSum(data[2<<20:3<<20]); got != want {
		t.Errorf("fixed range after its object's close: sum %s, want %s", got, want)
	}
	c.OK("unmap %s", r3[0])
	c.OK("unmap %s", r2[0])
}

// TestSanitizers builds the library and its test programs with
// AddressSanitizer and UndefinedBehaviorSanitizer, and runs a client
// through opening, reading, a page that fails, ranges, bad names, fork and
// closing, and the JSON decoder through TestJSONDecoder's payloads: any
// report ends them with an error.
func TestSanitizers(t *testing.T) {
	built(t)
	dir := t.TempDir()
	if err := makeC(dir, "SANITIZE=address,undefined", "tests"); err != nil {
		t.Fatal(err)
	}
	path, data := pattern.TempFile(t, 2<<20+77)
	srv := faultyhttp.Start(t, data)
	srv.Fail(1<<20, faultyhttp.Status500)
	uri := srv.URL
	d := serve(t, nil, "--retries", "0", "--remote-retries", "0", "--remote-chunk", "64K", "--remote-max-request", "64K")
	cmd := exec.Command(filepath.Join(dir, "tests", "drive"))
	cmd.Env = append(cleanEnv(), "LD_LIBRARY_PATH="+dir, "FILEMAP_SOCKET="+d.Sock,
		"ASAN_OPTIONS=detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1")
	c := child.StartT(t, cmd, "drive (sanitized)")
	checkSums(t, c, path, data)
	id := fields(t, c.OK("open %s", path), 3)[0]
	r := fields(t, c.OK("map %s 4096 65536 r", id), 2)[0]
	c.OK("rsum %s %d", r, len(data))
	c.OK("unmap %s", r)
	hid := fields(t, c.OK("open %s", uri), 3)[0]
	if got := c.Do("read %s %d 8192", hid, 1<<20-100); !strings.HasPrefix(got, fmt.Sprintf("err %d %d ", syscall.EIO, 1<<20)) {
		t.Errorf("read of a failing page: %q, want EIO", got)
	}
	c.OK("close %s", hid)
	c.Do("open /nonexistent")
	c.Do("open http://user:secret@[::1/x?sig=1")
	checkChild(t, c.OK("fork %s %s", id, path), data, data)
	c.OK("close %s", id)
	c.Send("quit")
	if err := c.Cmd.Wait(); err != nil {
		t.Errorf("the sanitized client: %v\n%s", err, c.Stderr.String())
	}
	t.Setenv("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
	checkJSONDecoder(t, filepath.Join(dir, "tests", "json"))
}

// TestPkgConfig installs the library and compiles and runs a program with
// the flags its filemap.pc gives, as a user's build would.
func TestPkgConfig(t *testing.T) {
	built(t)
	dir, prefix := t.TempDir(), filepath.Join(t.TempDir(), "usr")
	if err := makeC(dir, "PREFIX="+prefix, "install"); err != nil {
		t.Fatal(err)
	}
	pc, err := os.ReadFile(filepath.Join(prefix, "lib", "pkgconfig", "filemap.pc"))
	if err != nil {
		t.Fatal(err)
	}
	cflags, libs := pkgConfig(t, string(pc))
	src := filepath.Join(dir, "user.c")
	prog := `#include <filemap.h>
#include <stdio.h>
int main(void) {
	filemap_t *m = filemap_open("", NULL);
	printf("%s %d\n", m == NULL ? "failed" : "opened", filemap_errno());
	return 0;
}
`
	if err := os.WriteFile(src, []byte(prog), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "user")
	args := append(append([]string{"-Wall", "-Werror", "-o", bin, src}, cflags...), libs...)
	if out, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
		t.Fatalf("gcc %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(cleanEnv(), "LD_LIBRARY_PATH="+filepath.Join(prefix, "lib"))
	out, err := cmd.CombinedOutput()
	if want := fmt.Sprintf("failed %d\n", syscall.EINVAL); err != nil || string(out) != want {
		t.Errorf("the program built with filemap.pc: %q (%v), want %q", out, err, want)
	}
}

// pkgConfig returns a .pc file's Cflags and Libs, its variables expanded.
func pkgConfig(t *testing.T, pc string) (cflags, libs []string) {
	vars := map[string]string{}
	expand := func(s string) string {
		return os.Expand(s, func(k string) string { return vars[k] })
	}
	for _, line := range strings.Split(pc, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.Contains(k, ":") {
			vars[strings.TrimSpace(k)] = expand(strings.TrimSpace(v))
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			switch strings.TrimSpace(k) {
			case "Cflags":
				cflags = strings.Fields(expand(v))
			case "Libs":
				libs = strings.Fields(expand(v))
			}
		}
	}
	if cflags == nil || libs == nil {
		t.Fatalf("filemap.pc has no Cflags or Libs:\n%s", pc)
	}
	return cflags, libs
}
