package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/filemap/filemap"
)

// randomFile writes size bytes of seeded random content to a new file.
func randomFile(t *testing.T, dir string, size int64, seed uint64) (string, []byte) {
	t.Helper()
	data := make([]byte, size)
	var s [32]byte
	s[0] = byte(seed)
	rand.NewChaCha8(s).Read(data)
	path := filepath.Join(dir, fmt.Sprintf("random-%d.bin", size))
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path, data
}

// TestCatCmp runs `filemap cat F | cmp - F` through the shell, so that the
// real cmp compares what the mapping showed with the file.
func TestCatCmp(t *testing.T) {
	dir := t.TempDir()
	for i, size := range []int64{0, 1, 4095, 4096, 4097, 100<<20 + 123} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			path, _ := randomFile(t, dir, size, uint64(i))
			rc := filepath.Join(dir, fmt.Sprintf("rc-%d", size))
			ctx, cancel := context.WithTimeout(context.Background(), childTimeout)
			defer cancel()
			// cat's own exit status goes to $RC: cmp alone would not notice
			// a cat of an empty file that failed.
			sh := exec.CommandContext(ctx, "sh", "-c", `{ "$BIN" cat "$F"; echo $? >"$RC"; } | cmp - "$F"`)
			sh.Env = cliEnv("BIN="+cliBinary(t), "F="+path, "RC="+rc)
			sh.WaitDelay = 10 * time.Second
			var stdout, stderr bytes.Buffer
			sh.Stdout, sh.Stderr = &stdout, &stderr
			err := sh.Run()
			if ctx.Err() != nil {
				t.Fatalf("cat | cmp did not finish within %v; stderr:\n%s", childTimeout, stderr.Bytes())
			}
			if err != nil {
				t.Fatalf("filemap cat %s | cmp - %s: %v\nstdout:\n%s\nstderr:\n%s", path, path, err, stdout.Bytes(), stderr.Bytes())
			}
			status, err := os.ReadFile(rc)
			if err != nil {
				t.Fatal(err)
			}
			if s := strings.TrimSpace(string(status)); s != "0" {
				t.Fatalf("filemap cat %s exited %s; stderr:\n%s", path, s, stderr.Bytes())
			}
		})
	}
}

func TestCatOffsetLength(t *testing.T) {
	path, data := randomFile(t, t.TempDir(), 3*4096+5, 7)
	size := int64(len(data))
	for _, c := range []struct {
		offset, length string
		want           []byte
	}{
		{"4095", "2", data[4095:4097]},
		{"0", "0", data},
		{"4K", "", data[4096:]},
		{"4097", "1", data[4097:4098]},
		{"8190", "100000", data[8190:]},
		{fmt.Sprint(size - 1), "", data[size-1:]},
		{fmt.Sprint(size), "", nil}, // at the end: nothing, and no error
	} {
		args := []string{"cat", "--offset", c.offset}
		if c.length != "" {
			args = append(args, "--length", c.length)
		}
		r := filemapCLI(t, append(args, path)...)
		r.wantCode(t, 0)
		if !bytes.Equal(r.stdout, c.want) {
			t.Errorf("filemap %q: wrote %d bytes, want %d bytes of the file from the offset", r.args, len(r.stdout), len(c.want))
		}
	}
	for _, off := range []int64{size + 1, size + 4096, 1 << 40} {
		r := filemapCLI(t, "cat", "--offset", fmt.Sprint(off), path)
		r.wantCode(t, 1)
		r.wantStderr(t, fmt.Sprintf("offset %d", off), path)
		if len(r.stdout) != 0 {
			t.Errorf("filemap %q wrote %d bytes to stdout, want none", r.args, len(r.stdout))
		}
	}
	r := filemapCLI(t, "cat", "--offset", "lots", path)
	r.wantCode(t, 1)
	r.wantStderr(t, `invalid value "lots" for flag -offset`)
}

func TestCatErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "no-such-file")
	for _, c := range []struct {
		uri  string
		want []string
	}{
		{missing, []string{missing, "no such file or directory"}},
		{"file://" + missing, []string{missing}},
		{dir, []string{dir, "is a directory"}},
		{"/dev/null", []string{"/dev/null", "not a regular file"}},
		{"http://127.0.0.1:1/x", []string{"http://127.0.0.1:1/x", "connection refused"}},
		{"s3://bucket-only", []string{"s3://bucket-only", "want s3://BUCKET/KEY"}},
		{"ftp://x", []string{"ftp://x", `unknown scheme "ftp"`}},
		{"file://otherhost/etc/passwd", []string{"otherhost", "only local files"}},
	} {
		r := filemapCLI(t, "cat", c.uri)
		r.wantCode(t, 1)
		r.wantStderr(t, append(c.want, "filemap cat:")...)
		if len(r.stdout) != 0 {
			t.Errorf("filemap cat %s wrote %d bytes to stdout, want none", c.uri, len(r.stdout))
		}
	}
	r := filemapCLI(t, "cat")
	r.wantCode(t, 1)
	r.wantStderr(t, "want exactly one URI", "Usage: filemap cat")
}

func TestCatUnreadable(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("running as root: root bypasses file permission checks (DAC), so no file is unreadable to it")
	}
	path, _ := randomFile(t, t.TempDir(), 4096, 1)
	if err := os.Chmod(path, 0); err != nil {
		t.Fatal(err)
	}
	r := filemapCLI(t, "cat", path)
	r.wantCode(t, 1)
	r.wantStderr(t, path, "permission denied")
	if len(r.stdout) != 0 {
		t.Errorf("filemap cat %s wrote %d bytes to stdout, want none", path, len(r.stdout))
	}
}

// A file that reports size 0 but has bytes (/proc/self/status) is refused
// with an error saying why, through a private handler and through the
// daemon, never printed as nothing with exit status 0; a truly empty file
// prints nothing and succeeds.
func TestCatSizeZero(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t)
	for _, handler := range [][]string{nil, {"--socket", d.socket}} {
		args := append(append([]string{"cat"}, handler...), "/proc/self/status")
		r := filemapCLI(t, args...)
		r.wantCode(t, 1)
		r.wantStderr(t, "/proc/self/status", "procfs", "cannot be mapped")
		if len(r.stdout) != 0 {
			t.Errorf("filemap %q wrote %d bytes to stdout, want none", args, len(r.stdout))
		}

		args = append(append([]string{"cat"}, handler...), empty)
		r = filemapCLI(t, args...)
		r.wantCode(t, 0)
		if len(r.stdout) != 0 {
			t.Errorf("filemap %q wrote %d bytes of an empty file", args, len(r.stdout))
		}
	}
	d.stop(t)
}

// efaultOnce is a writer whose first write takes n bytes and then fails
// with EFAULT, as a write from a mapping does when a page cannot be read
// in the kernel's copy; later writes take everything.
type efaultOnce struct {
	bytes.Buffer
	n      int
	failed bool
}

func (w *efaultOnce) Write(p []byte) (int, error) {
	if w.failed {
		return w.Buffer.Write(p)
	}
	w.failed = true
	k, _ := w.Buffer.Write(p[:min(w.n, len(p))])
	return k, syscall.EFAULT
}

// A write straight from the mapping that fails with EFAULT part way is
// finished through a buffer: every byte arrives once, in order.
func TestCatWriteEFAULTFallsBack(t *testing.T) {
	path, data := randomFile(t, t.TempDir(), 3*catStep+5000, 9)
	m, err := filemap.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, n := range []int{0, 4096, 12345} {
		w := &efaultOnce{n: n}
		var copied atomic.Int64
		if err := copyThrough(m, w, 100, int64(len(data)), &copied); err != nil {
			t.Fatalf("EFAULT after %d bytes: %v", n, err)
		}
		if !bytes.Equal(w.Bytes(), data[100:]) || copied.Load() != int64(len(data)-100) {
			t.Fatalf("EFAULT after %d bytes: wrote %d bytes (counted %d), want the %d from offset 100", n, w.Len(), copied.Load(), len(data)-100)
		}
	}
}
