package filemap

// Per-client limits, seen from client processes: a limit reached is an
// error from Open that names it, its flag and the client; a client over its
// faults in flight waits instead of failing; and nothing of it touches the
// other clients.

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/testutil"
	"github.com/filemap/filemap/server"
)

// usageOf is what the daemon accounts to the client process pid.
func usageOf(d *daemon, pid int) server.ClientUsage {
	cs := d.s.Clients()
	if i := slices.IndexFunc(cs, func(c server.ClientUsage) bool { return c.PID == int32(pid) }); i >= 0 {
		return cs[i]
	}
	return server.ClientUsage{}
}

// wantRefused checks that an answer is an error from Open naming the limit,
// its flag and the client.
func wantRefused(t *testing.T, r string, pid int, what, flag string) {
	t.Helper()
	who := fmt.Sprintf("client pid %d (uid 0)", pid)
	if !strings.HasPrefix(r, "err ") || !strings.Contains(r, what) || !strings.Contains(r, flag) || !strings.Contains(r, fmt.Sprintf("pid %d", pid)) {
		t.Fatalf("Open over the limit: %q; want an error naming %q, %s and %s", r, what, flag, who)
	}
}

func TestLimitObjectsPerClient(t *testing.T) {
	d := startDaemon(t, server.Config{MaxObjectsPerClient: 2})
	path := patternFile(t, 1<<20)
	a := startDriver(t, d.sock)
	a.open(path, "")
	a.open(path, "") // the driver keeps the first mapping open
	pid := a.Cmd.Process.Pid
	wantRefused(t, a.Do("open %s", path), pid, "has 2 objects open", "--max-objects-per-client")
	testutil.WaitFor(t, "the refused Open's connection to end", func() bool { return usageOf(d, pid).Connections == 2 })
	if u := usageOf(d, pid); u.Objects != 2 || u.Regions != 2 || u.Connections != 2 {
		t.Errorf("usage after the refusal %+v; want 2 objects, 2 regions, 2 connections", u)
	}
	b := startDriver(t, d.sock) // another client has limits of its own
	b.open(path, "")
	b.open(path, "")
	a.OK("close")
	a.open(path, "")
	a.OK("read 0 %d", 1<<20)
}

func TestLimitMappedBytesPerClient(t *testing.T) {
	d := startDaemon(t, server.Config{MaxMappedBytesPerClient: 3 << 20})
	big, small := patternFile(t, 2<<20), patternFile(t, 1<<20)
	a := startDriver(t, d.sock)
	a.open(big, "")
	pid := a.Cmd.Process.Pid
	wantRefused(t, a.Do("open %s", big), pid, "has 2097152 bytes open", "--max-mapped-per-client")
	a.open(small, "") // exactly at the limit
	if u := usageOf(d, pid); u.MappedBytes != 3<<20 {
		t.Errorf("%d bytes accounted, want %d", u.MappedBytes, 3<<20)
	}
	a.OK("read 0 %d", 1<<20)
}

func TestLimitRegionsPerClient(t *testing.T) {
	d := startDaemon(t, server.Config{MaxRegionsPerClient: 1})
	path := patternFile(t, 1<<20)
	a := startDriver(t, d.sock)
	a.open(path, "")
	pid := a.Cmd.Process.Pid
	wantRefused(t, a.Do("open %s", path), pid, "has 1 regions attached", "--max-regions-per-client")
	// The refused Open let go of its object too.
	testutil.WaitFor(t, "the refused Open's connection to end", func() bool { return usageOf(d, pid).Connections == 1 })
	if u := usageOf(d, pid); u.Objects != 1 || u.Regions != 1 {
		t.Errorf("usage after the refusal %+v; want 1 object, 1 region", u)
	}
}

// A client at its limit of faults in flight: its next fault waits (in the
// kernel's queue of its uffd) until one ends, and then is served; the
// daemon never works on more of its faults at once; other clients are
// served meanwhile.
func TestLimitFaultsInFlightPerClient(t *testing.T) {
	d := startDaemon(t, server.Config{MaxFaultsInFlightPerClient: 1})
	const x, y = 100, 3000 // reads covering these wait for release
	release := make(chan struct{})
	var released bool
	t.Cleanup(func() {
		if !released {
			close(release)
		}
	})
	d.spy.set(func(s *spy) {
		s.fail = func(off, n int64) int64 {
			for _, p := range []int64{x, y} {
				if p*ps >= off && p*ps < off+n {
					<-release
				}
			}
			return -1
		}
	})
	path := patternFile(t, 16<<20)
	a := startDriver(t, d.sock)
	a.open(path, "advice=random")
	pid := a.Cmd.Process.Pid
	a.Send("par %d %d", x*ps, y*ps)
	testutil.WaitFor(t, "one fault in flight and one waiting", func() bool {
		u := usageOf(d, pid)
		return u.FaultsInFlight == 1 && u.FaultsQueued == 1
	})
	// The fault in flight is counted before its read begins: wait for
	// the read, then check that the queued one has not begun one too.
	reads := func() int { return d.spy.readsOf(x*ps) + d.spy.readsOf(y*ps) }
	testutil.WaitFor(t, "the read of the fault in flight", func() bool { return reads() >= 1 })
	if n := reads(); n != 1 {
		t.Fatalf("%d reads of the two pages began; the limit lets one fault through", n)
	}
	b := startDriver(t, d.sock)
	b.open(path, "advice=random")
	b.OK("read %d %d", 2000*ps, ps)
	released = true
	close(release)
	if r, ok := a.Reply(60 * time.Second); r != "ok" {
		t.Fatalf("the two faults: %q %v", r, ok)
	}
	// A fault is counted until its goroutine returns, just after the wake
	// that let the driver answer.
	testutil.WaitFor(t, "no fault in flight", func() bool { return usageOf(d, pid).FaultsInFlight == 0 })
	if u := usageOf(d, pid); u.PeakFaultsInFlight != 1 {
		t.Errorf("usage %+v; want at most 1 fault in flight, ever", u)
	}
}
