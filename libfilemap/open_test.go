package libfilemap

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/filemap/filemap/internal/clitest"
	"github.com/filemap/filemap/internal/faultyhttp"
	"github.com/filemap/filemap/internal/pattern"
)

// objectSize ends in a partial page, which must read as the object's bytes
// and end there.
const objectSize = 8<<20 + 123

// checkSums opens uri in a C client and checks that what it reads, through
// filemap_read_at and by touching the mapping, is data.
func checkSums(t *testing.T, c interface {
	OK(string, ...any) string
}, uri string, data []byte) {
	t.Helper()
	f := fields(t, c.OK("open %s", uri), 3)
	if f[1] != strconv.Itoa(len(data)) {
		t.Errorf("open %s: size %s, want %d", uri, f[1], len(data))
	}
	want := fnvSum(data)
	if got := c.OK("sum %s", f[0]); got != want {
		t.Errorf("%s read with filemap_read_at: sum %s, want %s", uri, got, want)
	}
	if got := c.OK("memsum %s", f[0]); got != want {
		t.Errorf("%s read through the mapping: sum %s, want %s", uri, got, want)
	}
	off := int64(len(data)) - 5000
	if got := c.OK("read %s %d %d", f[0], off, 1<<20); got != fmt.Sprintf("5000 %s", fnvSum(data[off:])) {
		t.Errorf("%s: read of 1 MiB at %d, 5000 bytes before the end: %q, want those 5000 bytes", uri, off, got)
	}
	if got := c.OK("read %s %d 10", f[0], len(data)); got != "0 "+fnvSum(nil) {
		t.Errorf("%s: read at the end: %q, want 0 bytes", uri, got)
	}
	c.OK("close %s", f[0])
}

// TestObjectBytes maps a local file, an HTTP object and an S3 object (of a
// real S3 server, versitygw) in a C client of a `filemap serve`, and checks
// every byte it reads against the object, by filemap_read_at and by
// touching the mapping; and the same for a client linked with
// libfilemap.a.
func TestObjectBytes(t *testing.T) {
	built(t) // before starting an S3 server for nothing
	path, data := pattern.TempFile(t, objectSize)
	t.Run("file", func(t *testing.T) {
		d := serve(t, nil)
		checkSums(t, driveOn(t, d), path, data)
		checkSums(t, driveOn(t, d), "file://"+path, data)
		dir, _ := built(t)
		checkSums(t, drive(t, "static", dir, "FILEMAP_SOCKET="+d.Sock), path, data)
	})
	t.Run("http", func(t *testing.T) {
		d := serve(t, nil)
		checkSums(t, driveOn(t, d), faultyhttp.Start(t, data).URL, data)
	})
	t.Run("s3", func(t *testing.T) {
		srv := gw.Server(t)
		bucket := srv.NewBucket(t, false)
		srv.Put(t, bucket, "dir/object.bin", data)
		d := serve(t, srv.Env())
		checkSums(t, driveOn(t, d), "s3://"+bucket+"/dir/object.bin", data)
	})
}

// badOff is the page of failingPageObject's object whose reads fail: the
// first of a 64 KiB chunk.
const badOff = 3<<20 + 64<<10

// failingPageObject serves an HTTP object of objectSize bytes whose chunk
// at badOff fails with a 500 (srv.Fail(-1, …) ends that), and a daemon that
// fetches it in 64 KiB chunks with no retries, so that the failure comes at
// once and costs that chunk alone.
func failingPageObject(t *testing.T) (data []byte, srv *faultyhttp.Server, d *clitest.Daemon) {
	t.Helper()
	_, data = pattern.TempFile(t, objectSize)
	srv = faultyhttp.Start(t, data)
	srv.Fail(badOff, faultyhttp.Status500)
	d = serve(t, nil, "--retries", "0", "--remote-retries", "0", "--remote-chunk", "64K", "--remote-max-request", "64K")
	return data, srv, d
}

// TestReadAtFailingPage reads a page whose HTTP range fails: filemap_read_at
// returns -1 with errno EIO and the page's offset, where touching it would
// raise SIGBUS; the process lives, its neighbours read, and once the server
// serves it again the page reads too: the failure is not sticky.
func TestReadAtFailingPage(t *testing.T) {
	data, srv, d := failingPageObject(t)
	uri := srv.URL
	c := driveOn(t, d)
	id := fields(t, c.OK("open %s advice=random", uri), 3)[0]

	// A read that starts before the page copies up to it and says where it stopped.
	got := c.Do("read %s %d %d", id, badOff-100, 8192)
	want := fmt.Sprintf("err %d %d filemap: %s: cannot read the page at offset %d", syscall.EIO, badOff, uri, badOff)
	if !strings.HasPrefix(got, want) {
		t.Fatalf("read across the failing page: %q\nwant it to start %q", got, want)
	}
	if got := c.Do("read %s %d 4096", id, badOff); !strings.HasPrefix(got, fmt.Sprintf("err %d %d ", syscall.EIO, badOff)) {
		t.Errorf("read of the failing page: %q, want EIO at %d", got, badOff)
	}
	neighbour := int64(badOff + 128<<10)
	if got, want := c.OK("read %s %d 4096", id, neighbour), "4096 "+fnvSum(data[neighbour:neighbour+4096]); got != want {
		t.Errorf("read of a page 128 KiB away: %q, want %q", got, want)
	}
	srv.Fail(-1, faultyhttp.Status500)
	if got, want := c.OK("read %s %d 8192", id, badOff-100), "8192 "+fnvSum(data[badOff-100:badOff-100+8192]); got != want {
		t.Errorf("read across the page once the server serves it: %q, want %q", got, want)
	}
}
