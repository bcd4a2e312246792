package store

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseURI(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		in, path, err, scheme string
	}{
		{in: "/a/b", path: "/a/b"},
		{in: "file:///a/b", path: "/a/b"},
		{in: "file://localhost/a/b", path: "/a/b"},
		{in: "rel/x", path: filepath.Join(mustGetwd(t), "rel/x")},
		{in: "", err: "empty object name"},
		{in: "file://", err: "no path"},
		{in: "file://host/x", err: `names host "host"`},
		{in: "https://example.com/o", scheme: "https"},
		{in: "http://127.0.0.1:8080/a/b?x=1", scheme: "http"},
		{in: "s3://bucket/key/with/slashes", scheme: "s3"},
		// S3 keys are taken literally: none of these is URL syntax.
		{in: "s3://bucket/dir/100%.bin", scheme: "s3"},
		{in: "s3://bucket/dir/100%25.bin", scheme: "s3"},
		{in: "s3://bucket/a b+c", scheme: "s3"},
		{in: "s3://bucket/what?x=1#frag", scheme: "s3"},
		{in: "s3://bucket/?", scheme: "s3"},
		{in: "s3://bucket/données/ü%zz", scheme: "s3"},
		{in: "http://host/100%25.bin", scheme: "http"},
		{in: "http://host/100%.bin", err: `object "http://host/100%.bin": bad URI: `},
		{in: "https://host/a%zzb", err: `invalid URL escape "%zz"`},
		{in: "http:///nohost", err: "no host"},
		{in: "s3://bucket", err: "want s3://BUCKET/KEY"},
		{in: "s3://bucket/", err: "want s3://BUCKET/KEY"},
		{in: "s3:///key", err: "want s3://BUCKET/KEY"},
		{in: "gopher://x/y", err: `unknown scheme "gopher"`},
		{in: "http://[::1", err: "bad URI"},
	}
	_ = dir
	for _, c := range cases {
		u, err := ParseURI(c.in)
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("ParseURI(%q) = %v, %v; want an error containing %q", c.in, u, err, c.err)
		case c.scheme != "" && (err != nil || u.Scheme != c.scheme || u.Raw != c.in || u.Path != ""):
			t.Errorf("ParseURI(%q) = %+v, %v; want scheme %s", c.in, u, err, c.scheme)
		case c.err == "" && c.scheme == "" && (err != nil || u.Scheme != "file" || u.Path != c.path):
			t.Errorf("ParseURI(%q) = %+v, %v; want file %s", c.in, u, err, c.path)
		}
	}
}

func mustGetwd(t *testing.T) string {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return wd
}

func TestOpenLocalRefusesWhatCannotBeMapped(t *testing.T) {
	dir := t.TempDir()
	for path, want := range map[string]string{
		filepath.Join(dir, "missing"): "no such file",
		dir:                           "is a directory",
		"/dev/null":                   "not a regular file",
	} {
		if f, err := OpenLocal(path); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), path) {
			if f != nil {
				f.Close()
			}
			t.Errorf("OpenLocal(%s) = %v; want an error naming the path and %q", path, err, want)
		}
	}
}

func newFileStore(t *testing.T, data []byte) *File {
	t.Helper()
	path := filepath.Join(t.TempDir(), "obj")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := OpenLocal(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewFile(f, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Aligned and unaligned reads, direct and buffered, return the file's bytes.
func TestFileReadAt(t *testing.T) {
	data := make([]byte, 3*4096+100)
	for i := range data {
		data[i] = byte(i * 7)
	}
	s := newFileStore(t, data)
	if s.Size() != int64(len(data)) || !strings.HasPrefix(s.Key(), "file:") || s.Version() == "" {
		t.Fatalf("Size %d Key %q Version %q", s.Size(), s.Key(), s.Version())
	}
	aligned := alignedBuf(2 * 4096)
	for _, c := range []struct {
		buf []byte
		off int64
	}{
		{aligned, 0},
		{aligned, 4096},
		{make([]byte, 10), 5},
		{aligned[1 : 1+4096], 4096},
	} {
		n, err := ReadFull(s, c.buf, c.off)
		want := data[c.off:min(c.off+int64(len(c.buf)), int64(len(data)))]
		if err != nil || n != len(want) || !bytes.Equal(c.buf[:n], want) {
			t.Errorf("ReadFull(%d bytes at %d) = %d, %v", len(c.buf), c.off, n, err)
		}
	}
	// The tail: a whole-page read past the end returns the bytes up to it.
	n, err := ReadFull(s, aligned[:4096], 3*4096)
	if err != nil || n != 100 || !bytes.Equal(aligned[:100], data[3*4096:]) {
		t.Fatalf("tail read = %d, %v", n, err)
	}
}

// A file that shrinks under its store is an error, never a short page of zeros.
func TestFileShrunkIsAnError(t *testing.T) {
	s := newFileStore(t, make([]byte, 8192))
	if err := os.Truncate(s.Name(), 4096); err != nil {
		t.Fatal(err)
	}
	buf := alignedBuf(8192)
	n, err := ReadFull(s, buf, 0)
	if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) || !strings.Contains(err.Error(), "offset 0") {
		t.Fatalf("ReadFull of a shrunk file = %d, %v; want an unexpected-EOF error naming the offset", n, err)
	}
}

func TestNewFileRefusesDirectory(t *testing.T) {
	d, err := os.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewFile(d, "somedir"); err == nil || !strings.Contains(err.Error(), "somedir") {
		t.Fatalf("NewFile of a directory = %v", err)
	}
	d.Close()
}

// alignedBuf returns a page-aligned buffer, as O_DIRECT needs.
func alignedBuf(n int) []byte {
	b := make([]byte, n+4096)
	off := 0
	for uintptr(unsafePointer(b[off:]))%4096 != 0 {
		off++
	}
	return b[off : off+n]
}

// A file that reports size 0 but has bytes is refused, naming the file and
// saying why; a truly empty file is an object of size 0.
func TestNewFileSizeZero(t *testing.T) {
	const status = "/proc/self/status" // size 0, and hundreds of bytes
	f, err := OpenLocal(status)
	if err != nil {
		t.Fatal(err)
	}
	if s, err := NewFile(f, status); err == nil {
		s.Close()
		t.Errorf("NewFile(%s) succeeded: a mapping of it would be empty", status)
	} else if !strings.Contains(err.Error(), status) || !strings.Contains(err.Error(), "procfs") ||
		!strings.Contains(err.Error(), "cannot be mapped") {
		t.Errorf("NewFile(%s) = %v; want an error naming it, procfs, and that it cannot be mapped", status, err)
		f.Close()
	} else {
		f.Close()
	}

	if s := newFileStore(t, nil); s.Size() != 0 {
		t.Errorf("an empty file: size %d", s.Size())
	}

	// A size-0 file of a file system that is not a pseudo one (a FUSE
	// file made as it is read) is read to tell; here, a file with bytes
	// stands for it.
	withBytes := newFileStore(t, []byte("x"))
	err = checkEmpty("fuse-file", unix.FUSE_SUPER_MAGIC, withBytes.f)
	if err == nil || !strings.Contains(err.Error(), "fuse-file") || !strings.Contains(err.Error(), "reports size 0 but has bytes") {
		t.Errorf("checkEmpty of a file with bytes = %v; want an error naming it and saying it has bytes", err)
	}
	if err := checkEmpty("empty", unix.FUSE_SUPER_MAGIC, newFileStore(t, nil).f); err != nil {
		t.Errorf("checkEmpty of an empty file = %v", err)
	}
	// A pseudo file system's files are never read: a read may block or
	// consume (/proc/kmsg).
	if err := checkEmpty("/proc/kmsg", unix.PROC_SUPER_MAGIC, failReader{t}); err == nil {
		t.Error("checkEmpty of a procfs file succeeded")
	}
}

// failReader fails the test if it is read.
type failReader struct{ t *testing.T }

func (r failReader) ReadAt([]byte, int64) (int, error) {
	r.t.Error("a file of a pseudo file system was read")
	return 0, io.EOF
}
