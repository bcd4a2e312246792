package server

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/syncbuf"
	"github.com/filemap/filemap/internal/testutil"
	"github.com/filemap/filemap/proto"
	"golang.org/x/sys/unix"
)

// testWait bounds every wait in the tests of this package. It is not a
// timing assertion: it turns a hang into a failure that says what was
// awaited.
const testWait = 30 * time.Second

type syncBuffer = syncbuf.Buffer

// since is what b logged after offset off.
func since(b *syncBuffer, off int) string { return b.String()[off:] }

// testServer is a real in-process server listening on a socket in a
// temporary directory, logging into a buffer.
type testServer struct {
	*Server
	path string
	log  *syncBuffer
}

func newTestServer(t *testing.T) *testServer {
	t.Helper()
	log := new(syncBuffer)
	s, err := New(Config{Log: slog.New(slog.NewTextHandler(log, nil))})
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := Listen(path, 0o600)
	if err != nil {
		t.Fatalf("server.Listen: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		l.Close() // in case Close ran before Serve took the listener
		select {
		case err := <-served:
			if err != nil && !errors.Is(err, net.ErrClosed) {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(testWait):
			t.Errorf("Serve still running %v after Close", testWait)
		}
		if t.Failed() {
			t.Logf("server log:\n%s", log.String())
		}
	})
	return &testServer{Server: s, path: path, log: log}
}

// dialRaw connects without saying anything.
func (ts *testServer) dialRaw(t *testing.T) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: ts.path, Net: "unix"})
	if err != nil {
		t.Fatalf("dial %s: %v", ts.path, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// testClient is a well-behaved client.
type testClient struct {
	*proto.Conn
	id uint32
}

// dial connects and says Hello.
func (ts *testServer) dial(t *testing.T) *testClient {
	t.Helper()
	c := &testClient{Conn: proto.NewConn(ts.dialRaw(t))}
	var hr proto.HelloReply
	if _, err := c.call(t, proto.THello, proto.Hello{PID: os.Getpid(), Program: "server.test"}, nil, &hr); err != nil {
		t.Fatalf("hello: %v", err)
	}
	if hr.Daemon != "filemap" || hr.PageSize != 4096 {
		t.Fatalf("hello reply %+v, want daemon filemap, page size 4096", hr)
	}
	return c
}

// call makes a request and waits for its answer, at most testWait.
func (c *testClient) call(t *testing.T, typ proto.Type, req any, fds []*os.File, reply any) ([]*os.File, error) {
	t.Helper()
	if err := c.UnixConn().SetDeadline(time.Now().Add(testWait)); err != nil {
		t.Fatalf("set deadline: %v", err)
	}
	c.id++
	got, err := c.Call(typ, c.id, req, fds, reply)
	if ne := (net.Error)(nil); errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%v: no answer within %v", typ, testWait)
	}
	return got, err
}

// stat asks for the daemon's counters; any failure is fatal.
func (c *testClient) stat(t *testing.T) proto.Stats {
	t.Helper()
	var st proto.Stats
	if _, err := c.call(t, proto.TStat, proto.Empty{}, nil, &st); err != nil {
		t.Fatalf("stat: %v", err)
	}
	return st
}

// callError makes a request that must fail with a TError whose message
// contains want, and returns it.
func (c *testClient) callError(t *testing.T, typ proto.Type, req any, fds []*os.File, want string) *proto.Error {
	t.Helper()
	got, err := c.call(t, typ, req, fds, nil)
	closeAll(got)
	var pe *proto.Error
	if !errors.As(err, &pe) {
		t.Fatalf("%v %+v = %v; want an error reply containing %q", typ, req, err, want)
	}
	if pe.Op != typ.String() || !strings.Contains(pe.Message, want) {
		t.Fatalf("%v %+v = error reply %q (op %q); want op %q, message containing %q", typ, req, pe.Message, pe.Op, typ, want)
	}
	return pe
}

// expectClosedByServer reads c until the server closes it. Nothing may
// arrive first.
func expectClosedByServer(t *testing.T, c *net.UnixConn) {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(testWait)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	if n > 0 {
		t.Fatalf("the server answered a bad frame with %q instead of closing the connection", buf[:n])
	}
	if ne := (net.Error)(nil); errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the server did not close the connection within %v", testWait)
	}
	if !errors.Is(err, io.EOF) && !errors.Is(err, unix.ECONNRESET) {
		t.Fatalf("read on the bad connection = %v; want EOF or ECONNRESET", err)
	}
}

// openFds lists /proc/self/fd: number → what it refers to.
func openFds(t *testing.T) map[string]string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("list open descriptors: %v", err)
	}
	fds := make(map[string]string, len(ents))
	for _, e := range ents {
		link, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue // the directory listing's own descriptor, closed since
		}
		fds[e.Name()] = link
	}
	return fds
}

// waitOpenFds waits until no descriptor is open that was not in before (a
// session's descriptors close shortly after its client's do). Some of
// before may have closed meanwhile: an earlier test's keeper, exiting, lets
// go of its pidfds in its own time.
func waitOpenFds(t *testing.T, before map[string]string) {
	t.Helper()
	var now map[string]string
	testutil.WaitForState(t, func() string {
		return fmt.Sprintf("%d descriptors open, %d before: %s", len(now), len(before), fdDiff(before, now))
	}, func() bool {
		now = openFds(t)
		for fd, link := range now {
			if before[fd] != link {
				return false
			}
		}
		return true
	})
}

// fdDiff describes the descriptors open now and not before (leaked), and
// the other way round.
func fdDiff(before, now map[string]string) string {
	var diff []string
	for fd, link := range now {
		if before[fd] != link {
			diff = append(diff, "+"+fd+"→"+link)
		}
	}
	for fd, link := range before {
		if now[fd] != link {
			diff = append(diff, "-"+fd+"→"+link)
		}
	}
	sort.Strings(diff)
	return strings.Join(diff, ", ")
}

// tempFile makes a file holding data, open for reading and writing.
func tempFile(t *testing.T, data []byte) *os.File {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "obj")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	return f
}
