package filemap

// A remote object that fails for some of its bytes costs the pages that
// fail and no others, and a fault's time before SIGBUS has one bound
// whatever the layers below it retry: with a real HTTP server, the real
// daemon and real page faults of a client process.

import (
	"fmt"
	"math/bits"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/faultyhttp"
	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/server"
	"github.com/filemap/filemap/store/remote"
)

// badOffset is a page inside the 2 MiB chunk at 10 MiB: 40 pages into it.
const (
	badOffset  = 10649600
	badChunkLo = badOffset / remote.DefaultChunkSize * remote.DefaultChunkSize
	badChunkHi = badChunkLo + remote.DefaultChunkSize
)

// faultyObject serves a 16 MiB object through a faultyhttp.Server and
// returns it with a local copy of its bytes, for the driver to check.
func faultyObject(t *testing.T) (*faultyhttp.Server, string) {
	t.Helper()
	ref := filepath.Join(t.TempDir(), "ref")
	pattern.WriteFile(t, ref, 16<<20+123)
	data, err := os.ReadFile(ref)
	if err != nil {
		t.Fatal(err)
	}
	return faultyhttp.Start(t, data), ref
}

// A server that fails every request for one page of a chunk, with a 500 or
// by breaking the body off there: every other page of the chunk is served
// with the object's bytes, the bad page alone gets SIGBUS, logged with its
// offset, and the chunk costs a bounded number of GETs, not the retries of
// every page read (about 30 for the 500). They are: the 256 KiB a lone
// fault fetches, narrowed down to the page — with a 500, tried twice and
// then two requests per halving; for a body that broke off, the page alone
// with its retries, and the rest — then the rest of the chunk, the bad page
// asked for again by its fault and by the next fault's window, and a few
// for hedges a busy machine may make.
func TestRemoteBadPage(t *testing.T) {
	const slack = 3
	for _, c := range []struct {
		mode  faultyhttp.Mode
		name  string
		limit int
	}{
		{faultyhttp.Status500, "500", 2 + 2*bits.Len(uint(remote.DefaultSubRange/ps-1)) + 1 + 2 + slack},
		{faultyhttp.BreakOff, "break", 1 + remote.DefaultRetries + 1 + 1 + 2 + slack},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv, ref := faultyObject(t)
			srv.Fail(badOffset, c.mode)
			d := startDaemon(t, server.Config{})
			a := startDriver(t, d.sock)
			a.open(srv.URL, "ref="+ref)
			got := a.OK("scan %d %d", badChunkLo/ps, badChunkHi/ps)
			if want := fmt.Sprintf("%d %d", remote.DefaultChunkSize/ps-1, badOffset/ps); got != want {
				t.Fatalf("scan of the chunk: served, SIGBUS = %q; want %q: every page but the bad one served", got, want)
			}
			if !strings.Contains(d.log.String(), fmt.Sprintf("offset=%d", badOffset)) {
				t.Errorf("no log line names offset %d", badOffset)
			}
			n := srv.GetsOf(badChunkLo, badChunkHi)
			t.Logf("%d GETs for the chunk: %v", n, srv.Gets())
			if n > c.limit {
				t.Errorf("%d GETs asked for bytes of the chunk; want at most %d", n, c.limit)
			}
			if st := d.s.Stats(); st.SIGBUS != 1 {
				t.Errorf("%d pages poisoned, want 1", st.SIGBUS)
			}
		})
	}
}

// A server that sends part of a body and then holds the connection open:
// the fault on a page it never sends gets SIGBUS within the daemon's fault
// timeout, although one request alone may take 10 s and be retried four
// times; the requests it made are abandoned, not left to their own
// timeouts; no request is made for it afterwards; and the page before the
// stall is served from the bytes that arrived.
func TestRemoteStallBounded(t *testing.T) {
	const timeout = 2 * time.Second
	srv, ref := faultyObject(t)
	stall := int64(badOffset)
	srv.Fail(stall, faultyhttp.Stall)
	d := startDaemon(t, server.Config{FaultTimeout: timeout})
	a := startDriver(t, d.sock)
	a.open(srv.URL, "ref="+ref)
	checkStallBounded(t, a, srv, stall, timeout)
	before := len(srv.Gets())
	if r := a.Do("read %d %d", stall-ps, ps); r != "ok" {
		t.Errorf("the page before the stall: %q, want it served", r)
	}
	if n := len(srv.Gets()) - before; n > 1 {
		t.Errorf("the page before the stall cost %d GETs; want its bytes from those that arrived (and at most its window's ask for the stalled page)", n)
	}
}

// The same through a private handler: the mapping's WithFaultTimeout is the
// handler's bound (its default, two minutes, would outlast the test).
func TestPrivateHandlerFaultTimeout(t *testing.T) {
	const timeout = 2 * time.Second
	srv, ref := faultyObject(t)
	srv.Fail(badOffset, faultyhttp.Stall)
	a := startDriver(t, "")
	a.open(srv.URL, fmt.Sprintf("ref=%s faulttimeout=%v", ref, timeout))
	checkStallBounded(t, a, srv, badOffset, timeout)
}

// checkStallBounded reads the page at stall, where the server stalls, and
// checks that it gets SIGBUS within three times timeout, that the server's
// stalled requests are abandoned then, and that no GET is made afterwards.
func checkStallBounded(t *testing.T, a *driver, srv *faultyhttp.Server, stall int64, timeout time.Duration) {
	t.Helper()
	start := time.Now()
	r := a.Do("read %d %d", stall, ps)
	took := time.Since(start)
	if sigbusPage(r) != stall/ps {
		t.Fatalf("read of the page where the server stalls: %q, want SIGBUS there", r)
	}
	if took > 3*timeout {
		t.Errorf("SIGBUS after %v; want it within the fault timeout of %v (three times, for a busy machine)", took, timeout)
	}
	gets := len(srv.Gets())
	if gets == 0 {
		t.Fatal("no GET reached the server")
	}
	// Well before a request's own timeout (10 s) would end it.
	for deadline := time.Now().Add(3 * time.Second); srv.Stalled() > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d stalled requests still held after the fault's SIGBUS", srv.Stalled())
		}
	}
	time.Sleep(timeout) // more than the backoff before any retry
	if n := len(srv.Gets()); n != gets {
		t.Errorf("%d GETs were made after the fault's SIGBUS: %v", n-gets, srv.Gets()[gets:])
	}
}
