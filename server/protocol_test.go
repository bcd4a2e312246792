package server

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/filemap/filemap/internal/testutil"
	"github.com/filemap/filemap/proto"
	"golang.org/x/sys/unix"
)

// frame encodes a header announcing nfds descriptors, and the payload.
func frame(typ proto.Type, nfds int, id uint32, payload []byte) []byte {
	b := make([]byte, proto.HeaderSize, proto.HeaderSize+len(payload))
	proto.EncodeHeader(b, proto.Header{Type: typ, NFds: nfds, ID: id, Length: len(payload)})
	return append(b, payload...)
}

// sendWithFds writes b in one sendmsg with files' descriptors attached, then
// closes the sender's copies of any files it opened for this.
func sendWithFds(t *testing.T, c *net.UnixConn, b []byte, files ...*os.File) {
	t.Helper()
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			rc, err := f.SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			rc.Control(func(u uintptr) { fds[i] = int(u) })
		}
		oob = unix.UnixRights(fds...)
	}
	n, oobn, err := c.WriteMsgUnix(b, oob, nil)
	if err != nil || n != len(b) || oobn != len(oob) {
		t.Fatalf("sendmsg of %d bytes with %d fds: wrote %d, oob %d: %v", len(b), len(files), n, oobn, err)
	}
}

// TestBadInput sends one kind of bad frame per case on a fresh connection
// and checks that the server closes that connection and nothing else.
func TestBadInput(t *testing.T) {
	ts := newTestServer(t)
	obj := tempFile(t, []byte(strings.Repeat("object bytes ", 1000)))
	openReq := proto.Marshal(proto.Open{URI: obj.Name()})
	helloReq := proto.Marshal(proto.Hello{PID: 1, Program: "bad"})
	attachReq := proto.Marshal(proto.Attach{Handle: 1, Addr: 1 << 30, Len: 4096})
	// reopen gives a new descriptor of obj to send; sendWithFds's caller
	// closes it right after.
	reopen := func(t *testing.T) *os.File {
		f, err := os.Open(obj.Name())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	sendAndShut := func(b []byte) func(t *testing.T, c *net.UnixConn) {
		return func(t *testing.T, c *net.UnixConn) {
			sendWithFds(t, c, b)
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
		}
	}
	send := func(b []byte, nfiles int) func(t *testing.T, c *net.UnixConn) {
		return func(t *testing.T, c *net.UnixConn) {
			var files []*os.File
			for range nfiles {
				files = append(files, reopen(t))
			}
			sendWithFds(t, c, b, files...)
			for _, f := range files {
				f.Close()
			}
		}
	}
	withByte := func(b []byte, i int, v byte) []byte {
		b[i] = v
		return b
	}
	hugeLength := frame(proto.THello, 0, 1, nil)
	binary.LittleEndian.PutUint32(hugeLength[12:], 0xffffffff)

	tableBefore := openFds(t)
	defer func() {
		if !t.Failed() {
			waitOpenFds(t, tableBefore)
		}
	}()

	for _, tc := range []struct {
		name   string
		send   func(t *testing.T, c *net.UnixConn)
		reason string // in the log line that says why the connection was closed
	}{
		{"truncated header then close", sendAndShut(frame(proto.THello, 0, 1, helloReq)[:7]), "truncated frame: 7 of 16 bytes"},
		{"truncated payload then close", sendAndShut(frame(proto.THello, 0, 1, helloReq)[:proto.HeaderSize+5]), "truncated frame"},
		{"header then close", sendAndShut(frame(proto.THello, 0, 1, helloReq)[:proto.HeaderSize]), "truncated frame"},
		{"wrong version", send(withByte(frame(proto.THello, 0, 1, helloReq), 2, 2), 0), "unsupported protocol version 2"},
		{"huge length", send(hugeLength, 0), "payload too large: 4294967295 bytes"},
		{"bad magic", send([]byte("GET / HTTP/1.1\r\nHost: filemap\r\n\r\n"), 0), "bad magic"},
		{"reserved bits", send(withByte(frame(proto.THello, 0, 1, helloReq), 7, 1), 0), "bad header"},
		{"header announces 5 fds", send(frame(proto.TAttach, 5, 1, attachReq), 0), "header announces 5"},
		{"announces 1 fd carries 0", send(frame(proto.TAttach, 1, 1, attachReq), 0), "wrong number of file descriptors: attach frame announces 1, carried 0"},
		{"announces 1 fd carries 2", send(frame(proto.TAttach, 1, 1, attachReq), 2), "wrong number of file descriptors: attach frame announces 1, carried 2"},
		{"64 fds", send(frame(proto.TAttach, 1, 1, attachReq), 64), "more descriptors than a frame may carry"},
		{"open of a file with no fd", send(frame(proto.TOpen, 0, 1, openReq), 0), "got 0 descriptors"},
		{"open with 2 fds", send(frame(proto.TOpen, 2, 1, openReq), 2), "got 2 descriptors"},
		{"hello carrying an fd", send(frame(proto.THello, 1, 1, helloReq), 1), "hello takes 0 file descriptors, got 1"},
		{"stat carrying 2 fds", send(frame(proto.TStat, 2, 1, []byte("{}")), 2), "stat takes 0 file descriptors, got 2"},
		{"attach with 0 fds", send(frame(proto.TAttach, 0, 1, attachReq), 0), "attach takes 1 file descriptors, got 0"},
		{"unknown type 0x42", send(frame(0x42, 0, 1, []byte("{}")), 0), "unknown request type type(0x42)"},
		{"unknown type 0x42 with an fd", send(frame(0x42, 1, 1, []byte("{}")), 1), "file descriptors"},
		{"a reply sent as a request", send(frame(proto.TReply, 0, 1, []byte("{}")), 0), "unknown request type reply"},
		{"payload not JSON", send(frame(proto.THello, 0, 1, []byte("hello, daemon")), 0), "invalid character"},
		{"open payload not JSON", send(frame(proto.TOpen, 1, 1, []byte(`{"uri":`)), 1), "decode *proto.Open"},
		{"attach payload not JSON", send(frame(proto.TAttach, 1, 1, []byte(`[]`)), 1), "decode *proto.Attach"},
	} {
		// Every case ends with all of its descriptors, and all the server
		// received, closed again.
		before := openFds(t)
		t.Run(tc.name, func(t *testing.T) {
			good := ts.dial(t) // connected before the bad client
			errs := good.stat(t).ProtocolErrors
			logOff := ts.log.Len()

			bad := ts.dialRaw(t)
			tc.send(t, bad)
			expectClosedByServer(t, bad)

			testutil.WaitForState(t, func() string {
				return "no log line with \"closing connection\" and " + quote(tc.reason) + " in:\n" + since(ts.log, logOff)
			}, func() bool {
				for _, line := range strings.Split(since(ts.log, logOff), "\n") {
					if strings.Contains(line, "closing connection") && strings.Contains(line, tc.reason) {
						return true
					}
				}
				return false
			})
			if got := ts.Stats().ProtocolErrors; got != errs+1 {
				t.Errorf("Stats().ProtocolErrors = %d after the bad frame, %d before; want one more", got, errs)
			}
			if got := good.stat(t).ProtocolErrors; got != errs+1 {
				t.Errorf("the well-behaved client's stat says ProtocolErrors = %d, want %d", got, errs+1)
			}
			ts.dial(t) // a new client is welcome
		})
		// The subtest's cleanups closed its clients; the server closes their
		// sessions and every descriptor it received.
		waitOpenFds(t, before)
	}
}

func quote(s string) string { return `"` + s + `"` }

func TestOpenFile(t *testing.T) {
	ts := newTestServer(t)
	c := ts.dial(t)
	data := []byte(strings.Repeat("0123456789", 1000)) // 10000 bytes: 2 pages and a bit
	obj := tempFile(t, data)
	var rep proto.OpenReply
	fds, err := c.call(t, proto.TOpen, proto.Open{URI: obj.Name()}, []*os.File{obj}, &rep)
	if err != nil {
		t.Fatalf("open %s: %v", obj.Name(), err)
	}
	defer closeAll(fds)
	if rep.Size != int64(len(data)) || rep.Handle == 0 || rep.Version == "" || len(fds) != 1 {
		t.Fatalf("open reply %+v with %d fds; want size %d, a handle, a version and 1 fd", rep, len(fds), len(data))
	}
	memfd := fds[0]
	rc, err := memfd.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	var fl int
	var ferr, mmapErr error
	rc.Control(func(fd uintptr) {
		ferr = unix.Fstat(int(fd), &st)
		if ferr == nil {
			fl, ferr = unix.FcntlInt(fd, unix.F_GETFL, 0)
		}
		var m []byte
		m, mmapErr = unix.Mmap(int(fd), 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if mmapErr == nil {
			unix.Munmap(m)
		}
	})
	if ferr != nil {
		t.Fatal(ferr)
	}
	if want := int64(3 * 4096); st.Size != want {
		t.Errorf("memfd size %d, want %d (the object's %d bytes rounded up to pages)", st.Size, want, len(data))
	}
	if fl&unix.O_ACCMODE != unix.O_RDONLY {
		t.Errorf("memfd opened with flags %#x, want read-only", fl)
	}
	if !errors.Is(mmapErr, unix.EACCES) {
		t.Errorf("mmap(PROT_WRITE, MAP_SHARED) of the cache = %v, want EACCES", mmapErr)
	}

	// The same bytes, opened again with the version pinned: the same cache.
	obj2, err := os.Open(obj.Name())
	if err != nil {
		t.Fatal(err)
	}
	var rep2 proto.OpenReply
	fds2, err := c.call(t, proto.TOpen, proto.Open{URI: obj.Name(), Version: rep.Version}, []*os.File{obj2}, &rep2)
	obj2.Close()
	if err != nil {
		t.Fatalf("open pinned to %s: %v", rep.Version, err)
	}
	defer closeAll(fds2)
	var st2 unix.Stat_t
	if err := unix.Fstat(int(fds2[0].Fd()), &st2); err != nil {
		t.Fatal(err)
	}
	if rep2.Handle == rep.Handle || rep2.Version != rep.Version || st2.Ino != st.Ino || st2.Dev != st.Dev {
		t.Errorf("second open %+v memfd ino %d; want a new handle to the same cache (version %s, ino %d)", rep2, st2.Ino, rep.Version, st.Ino)
	}
	if got := c.stat(t).Objects; got != 1 {
		t.Errorf("Objects = %d after two opens of one file, want 1", got)
	}

	if _, err := c.call(t, proto.TClose, proto.Close{Handle: rep.Handle}, nil, nil); err != nil {
		t.Fatalf("close handle %d: %v", rep.Handle, err)
	}
	c.callError(t, proto.TClose, proto.Close{Handle: rep.Handle}, nil, "no open handle")
}

func TestOpenDirectory(t *testing.T) {
	ts := newTestServer(t)
	c := ts.dial(t)
	dir := t.TempDir()
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	c.callError(t, proto.TOpen, proto.Open{URI: dir}, []*os.File{d}, "is a directory")
	if st := c.stat(t); st.ProtocolErrors != 0 || st.Objects != 0 {
		t.Errorf("after a failed open: %d protocol errors, %d objects; want 0, 0", st.ProtocolErrors, st.Objects)
	}
}

func TestOpenPinnedVersionChanged(t *testing.T) {
	ts := newTestServer(t)
	c := ts.dial(t)
	obj := tempFile(t, []byte("version one"))
	c.callError(t, proto.TOpen, proto.Open{URI: obj.Name(), Version: "11@1"}, []*os.File{obj}, "changed")
	if st := c.stat(t); st.ProtocolErrors != 0 || st.Objects != 0 {
		t.Errorf("after a failed open: %d protocol errors, %d objects; want 0, 0", st.ProtocolErrors, st.Objects)
	}
}

func TestOpenUnservedScheme(t *testing.T) {
	ts := newTestServer(t)
	c := ts.dial(t)
	c.callError(t, proto.TOpen, proto.Open{URI: "s3://bucket/key"}, nil, "s3")
	c.callError(t, proto.TOpen, proto.Open{URI: ""}, nil, "empty object name")
	if st := c.stat(t); st.ProtocolErrors != 0 {
		t.Errorf("%d protocol errors, want 0", st.ProtocolErrors)
	}
}

// openHandle opens a small temporary file and returns its handle.
func openHandle(t *testing.T, c *testClient) uint64 {
	t.Helper()
	obj := tempFile(t, []byte(strings.Repeat("x", 3*4096)))
	var rep proto.OpenReply
	fds, err := c.call(t, proto.TOpen, proto.Open{URI: obj.Name()}, []*os.File{obj}, &rep)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	closeAll(fds)
	// The server closes its copy of the memfd after sending the reply; it
	// reads the next request only then, so after one more round trip the
	// descriptors of this process are settled.
	c.stat(t)
	return rep.Handle
}

func TestAttachNotAUffd(t *testing.T) {
	ts := newTestServer(t)
	c := ts.dial(t)
	h := openHandle(t, c)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	file := tempFile(t, []byte("not a uffd"))
	req := proto.Attach{Handle: h, Addr: 1 << 30, Len: 4096}

	before := openFds(t)
	c.callError(t, proto.TAttach, req, []*os.File{pr}, `the descriptor sent as a userfaultfd is "pipe:[`)
	c.callError(t, proto.TAttach, req, []*os.File{file}, file.Name())
	// The server closed its copies before it answered.
	if now := openFds(t); len(now) != len(before) {
		t.Errorf("%d descriptors open after the failed attaches, %d before: %s", len(now), len(before), fdDiff(before, now))
	}
	misaligned := req
	misaligned.Addr++
	c.callError(t, proto.TAttach, misaligned, []*os.File{pr}, "page-aligned")
	c.callError(t, proto.TAttach, proto.Attach{Handle: h, Addr: 1 << 30, Len: 0}, []*os.File{pr}, "page-aligned")
	c.callError(t, proto.TAttach, proto.Attach{Handle: h, Addr: 1 << 30, Len: 4096, Advice: "sideways"}, []*os.File{pr}, "sideways")
	waitOpenFds(t, before)
	if st := c.stat(t); st.ProtocolErrors != 0 || st.Regions != 0 {
		t.Errorf("after failed attaches: %d protocol errors, %d regions; want 0, 0", st.ProtocolErrors, st.Regions)
	}
}

func TestAttachUnknownHandle(t *testing.T) {
	ts := newTestServer(t)
	c := ts.dial(t)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	before := openFds(t)
	c.callError(t, proto.TAttach, proto.Attach{Handle: 1 << 40, Addr: 1 << 30, Len: 4096}, []*os.File{pr}, "no open handle")
	waitOpenFds(t, before)
	// A handle of another session is not this one's.
	other := ts.dial(t)
	h := openHandle(t, other)
	c.callError(t, proto.TAttach, proto.Attach{Handle: h, Addr: 1 << 30, Len: 4096}, []*os.File{pr}, "no open handle")
	c.callError(t, proto.TClose, proto.Close{Handle: h}, nil, "no open handle")
	if st := c.stat(t); st.ProtocolErrors != 0 {
		t.Errorf("%d protocol errors, want 0", st.ProtocolErrors)
	}
}

func TestUnknownIDs(t *testing.T) {
	ts := newTestServer(t)
	c := ts.dial(t)
	c.callError(t, proto.TDetach, proto.Detach{Region: 424242}, nil, "no region 424242")
	c.callError(t, proto.TClose, proto.Close{Handle: 424242}, nil, "no open handle 424242")
	c.callError(t, proto.TAdvise, proto.Advise{Region: 424242, Advice: "sequential"}, nil, "no region 424242")
	c.callError(t, proto.TDetach, proto.Detach{}, nil, "no region 0")
	if st := c.stat(t); st.ProtocolErrors != 0 || st.Clients != 0 {
		t.Errorf("after requests for unknown ids: %d protocol errors, %d clients besides the asker; want 0, 0", st.ProtocolErrors, st.Clients)
	}
}

// A local file named by a relative path is refused, with an error that
// says why: the daemon cannot know the client's working directory, and
// must not name the file from its own. The descriptor sent is closed.
func TestOpenRelativePathRefused(t *testing.T) {
	ts := newTestServer(t)
	c := ts.dial(t)
	obj := tempFile(t, []byte("relative"))
	before := openFds(t)
	for _, name := range []string{"data.bin", "./data.bin", "../x/data.bin", filepath.Base(obj.Name())} {
		c.callError(t, proto.TOpen, proto.Open{URI: name}, []*os.File{obj}, "must be named by its absolute path")
	}
	waitOpenFds(t, before)
	if st := c.stat(t); st.ProtocolErrors != 0 || st.Objects != 0 {
		t.Errorf("after refused opens: %d protocol errors, %d objects; want 0, 0", st.ProtocolErrors, st.Objects)
	}
	// The absolute path of the same file opens.
	fds, err := c.call(t, proto.TOpen, proto.Open{URI: obj.Name()}, []*os.File{obj}, &proto.OpenReply{})
	closeAll(fds)
	if err != nil {
		t.Fatalf("open %s: %v", obj.Name(), err)
	}
	if objs := ts.Objects(0); len(objs) != 1 || objs[0].URI != obj.Name() {
		t.Errorf("objects after opening %s: %+v", obj.Name(), objs)
	}
}
