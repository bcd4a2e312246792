package proto_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/filemap/filemap/proto"
	"golang.org/x/sys/unix"
)

// waitLimit bounds every wait in these tests. It is not a timing assertion:
// it only turns a hang into a failure that says what was awaited.
const waitLimit = 30 * time.Second

// socketPair returns the two ends of a connected Unix stream socketpair.
func socketPair(t testing.TB) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	a, b := fileConn(t, fds[0], "a"), fileConn(t, fds[1], "b")
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func fileConn(t testing.TB, fd int, name string) *net.UnixConn {
	t.Helper()
	f := os.NewFile(uintptr(fd), name)
	defer f.Close() // net.FileConn has its own copy
	c, err := net.FileConn(f)
	if err != nil {
		t.Fatalf("net.FileConn: %v", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		t.Fatalf("net.FileConn returned a %T, want *net.UnixConn", c)
	}
	return uc
}

// readerConn wraps c for reading, with a deadline so that a missing frame is
// a failure rather than a hang.
func readerConn(t testing.TB, c *net.UnixConn) *proto.Conn {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(waitLimit)); err != nil {
		t.Fatalf("set read deadline: %v", err)
	}
	return proto.NewConn(c)
}

// header returns an encoded header.
func header(typ proto.Type, nfds int, id uint32, length int) []byte {
	b := make([]byte, proto.HeaderSize)
	proto.EncodeHeader(b, proto.Header{Type: typ, NFds: nfds, ID: id, Length: length})
	return b
}

// sendRaw writes b with the given descriptors attached to its first byte.
func sendRaw(t testing.TB, c *net.UnixConn, b []byte, fds ...int) {
	t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, oobn, err := c.WriteMsgUnix(b, oob, nil)
	if err != nil || n != len(b) || oobn != len(oob) {
		t.Fatalf("sendmsg of %d bytes and %d fds: wrote %d, oob %d: %v", len(b), len(fds), n, oobn, err)
	}
}

// openFds counts the entries of /proc/self/fd.
func openFds(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("list open descriptors: %v", err)
	}
	return len(ents)
}

// tempFile makes a file holding data.
func tempFile(t testing.TB, data string) *os.File {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "f")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if _, err := f.WriteString(data); err != nil {
		t.Fatal(err)
	}
	return f
}

// rawFd is f's descriptor, without f.Fd's side effect of making it blocking.
func rawFd(t testing.TB, f *os.File) int {
	t.Helper()
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd := -1
	if err := rc.Control(func(u uintptr) { fd = int(u) }); err != nil {
		t.Fatal(err)
	}
	return fd
}

func fileID(t testing.TB, f *os.File) (dev, ino uint64) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(rawFd(t, f), &st); err != nil {
		t.Fatalf("fstat %s: %v", f.Name(), err)
	}
	return st.Dev, st.Ino
}

// writeAsync runs WriteFrame in a goroutine (a frame may not fit in the
// socket buffer) and returns a function that waits for it.
func writeAsync(t testing.TB, c *proto.Conn, f proto.Frame) func() {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- c.WriteFrame(f) }()
	return func() {
		t.Helper()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("WriteFrame: %v", err)
			}
		case <-time.After(waitLimit):
			t.Fatalf("WriteFrame did not return within %v", waitLimit)
		}
	}
}

func TestRoundTripWithDescriptors(t *testing.T) {
	for nfds := 0; nfds <= proto.MaxFds; nfds++ {
		for _, size := range []int{0, 1, 300, proto.MaxPayload} {
			t.Run(fmt.Sprintf("fds=%d/payload=%d", nfds, size), func(t *testing.T) {
				a, b := socketPair(t)
				w, r := proto.NewConn(a), readerConn(t, b)
				var files []*os.File
				for i := range nfds {
					files = append(files, tempFile(t, fmt.Sprintf("file %d\n", i)))
				}
				payload := make([]byte, size)
				for i := range payload {
					payload[i] = byte(i*7 + nfds)
				}
				wait := writeAsync(t, w, proto.Frame{Type: proto.TOpen, ID: 0xdeadbeef, Payload: payload, Fds: files})
				got, err := r.ReadFrame()
				wait()
				if err != nil {
					t.Fatalf("ReadFrame: %v", err)
				}
				defer got.CloseFds()
				if got.Type != proto.TOpen || got.ID != 0xdeadbeef || !bytes.Equal(got.Payload, payload) {
					t.Fatalf("got %v id %#x payload of %d bytes; want open id 0xdeadbeef payload of %d bytes (equal: %v)",
						got.Type, got.ID, len(got.Payload), len(payload), bytes.Equal(got.Payload, payload))
				}
				if len(got.Fds) != nfds {
					t.Fatalf("received %d descriptors, sent %d", len(got.Fds), nfds)
				}
				for i, rf := range got.Fds {
					sd, si := fileID(t, files[i])
					rd, ri := fileID(t, rf)
					if sd != rd || si != ri {
						t.Fatalf("descriptor %d: received dev/ino %d/%d, sent %d/%d", i, rd, ri, sd, si)
					}
					// The same open file: a write through the sent one is read
					// through the received one.
					msg := fmt.Sprintf("written through sender %d", i)
					if _, err := files[i].WriteAt([]byte(msg), 100); err != nil {
						t.Fatal(err)
					}
					buf := make([]byte, len(msg))
					if _, err := rf.ReadAt(buf, 100); err != nil || string(buf) != msg {
						t.Fatalf("descriptor %d: read %q, %v through the received fd; want %q", i, buf, err, msg)
					}
					flags, err := unix.FcntlInt(uintptr(rawFd(t, rf)), unix.F_GETFD, 0)
					if err != nil || flags&unix.FD_CLOEXEC == 0 {
						t.Fatalf("descriptor %d: F_GETFD = %#x, %v; want close-on-exec", i, flags, err)
					}
				}
			})
		}
	}
}

// A frame larger than what the socket takes in one sendmsg is written in
// parts; the descriptors still arrive with it.
func TestRoundTripPartialWrites(t *testing.T) {
	a, b := socketPair(t)
	if err := a.SetWriteBuffer(4096); err != nil {
		t.Fatal(err)
	}
	w, r := proto.NewConn(a), readerConn(t, b)
	files := []*os.File{tempFile(t, "one"), tempFile(t, "two")}
	payload := bytes.Repeat([]byte("0123456789abcdef"), proto.MaxPayload/16)
	for i := range 3 {
		wait := writeAsync(t, w, proto.Frame{Type: proto.TReply, ID: uint32(i), Payload: payload, Fds: files})
		got, err := r.ReadFrame()
		wait()
		if err != nil {
			t.Fatalf("frame %d: ReadFrame: %v", i, err)
		}
		if got.ID != uint32(i) || !bytes.Equal(got.Payload, payload) || len(got.Fds) != 2 {
			t.Fatalf("frame %d: id %d, payload equal %v, %d fds; want id %d, equal payload, 2 fds",
				i, got.ID, bytes.Equal(got.Payload, payload), len(got.Fds), i)
		}
		got.CloseFds()
	}
}

func TestWriteFrameRejects(t *testing.T) {
	a, _ := socketPair(t)
	w := proto.NewConn(a)
	err := w.WriteFrame(proto.Frame{Type: proto.TReply, Payload: make([]byte, proto.MaxPayload+1)})
	if !errors.Is(err, proto.ErrTooLarge) {
		t.Errorf("WriteFrame of %d payload bytes = %v, want ErrTooLarge", proto.MaxPayload+1, err)
	}
	f := tempFile(t, "x")
	fds := make([]*os.File, proto.MaxFds+1)
	for i := range fds {
		fds[i] = f
	}
	if err := w.WriteFrame(proto.Frame{Type: proto.TReply, Fds: fds}); !errors.Is(err, proto.ErrFds) {
		t.Errorf("WriteFrame with %d fds = %v, want ErrFds", len(fds), err)
	}
}

// Sending a descriptor must not change its file description to blocking
// mode, as os.File.Fd does for a file Go made non-blocking: the description
// is shared with its owner, whose runtime poller relies on O_NONBLOCK.
func TestWriteFrameKeepsNonblocking(t *testing.T) {
	// os.Pipe: Go sets O_NONBLOCK itself (and Fd would clear it).
	gr, gw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer gr.Close()
	defer gw.Close()
	// Pipe2(O_NONBLOCK): the flag came from the creator.
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	rp, wp := os.NewFile(uintptr(p[0]), "pipe-r"), os.NewFile(uintptr(p[1]), "pipe-w")
	defer rp.Close()
	defer wp.Close()
	files := []*os.File{gr, gw, rp, wp}
	check := func(when string) {
		t.Helper()
		for _, f := range files {
			fd := rawFd(t, f)
			fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
			if err != nil || fl&unix.O_NONBLOCK == 0 {
				t.Fatalf("%s fd %d %s WriteFrame: F_GETFL = %#x, %v; want O_NONBLOCK set", f.Name(), fd, when, fl, err)
			}
		}
	}
	check("before")
	a, b := socketPair(t)
	w, r := proto.NewConn(a), readerConn(t, b)
	wait := writeAsync(t, w, proto.Frame{Type: proto.TAttach, ID: 1, Payload: []byte("{}"), Fds: files})
	got, err := r.ReadFrame()
	wait()
	if err != nil {
		t.Fatal(err)
	}
	got.CloseFds()
	check("after")
	// The pipes still work through the poller.
	if _, err := gw.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	if _, err := gr.Read(buf); err != nil || buf[0] != 'x' {
		t.Fatalf("read through the pipe after sending it: %q, %v", buf, err)
	}
}

func TestDecodeHeader(t *testing.T) {
	valid := func(mod func(b []byte)) []byte {
		b := header(proto.TAttach, 1, 0x01020304, 100)
		if mod != nil {
			mod(b)
		}
		return b
	}
	for _, tc := range []struct {
		name string
		b    []byte
		want proto.Header
		err  error
	}{
		{"valid", valid(nil), proto.Header{Type: proto.TAttach, NFds: 1, ID: 0x01020304, Length: 100}, nil},
		{"longer buffer", append(valid(nil), 1, 2, 3), proto.Header{Type: proto.TAttach, NFds: 1, ID: 0x01020304, Length: 100}, nil},
		{"max fds and payload", header(proto.TReply, proto.MaxFds, 0xffffffff, proto.MaxPayload),
			proto.Header{Type: proto.TReply, NFds: proto.MaxFds, ID: 0xffffffff, Length: proto.MaxPayload}, nil},
		{"unknown type is the reader's business", header(0x42, 0, 0, 0), proto.Header{Type: 0x42}, nil},
		{"short", valid(nil)[:proto.HeaderSize-1], proto.Header{}, proto.ErrTruncated},
		{"empty", nil, proto.Header{}, proto.ErrTruncated},
		{"bad magic", valid(func(b []byte) { b[0] = 'X' }), proto.Header{}, proto.ErrMagic},
		{"bad magic second byte", valid(func(b []byte) { b[1] = 'm' }), proto.Header{}, proto.ErrMagic},
		{"version 0", valid(func(b []byte) { b[2] = 0 }), proto.Header{}, proto.ErrVersion},
		{"version 7", valid(func(b []byte) { b[2] = 7 }), proto.Header{}, proto.ErrVersion},
		{"flags", valid(func(b []byte) { b[5] = 1 }), proto.Header{}, proto.ErrHeader},
		{"reserved low", valid(func(b []byte) { b[6] = 0x80 }), proto.Header{}, proto.ErrHeader},
		{"reserved high", valid(func(b []byte) { b[7] = 1 }), proto.Header{}, proto.ErrHeader},
		{"too many fds", valid(func(b []byte) { b[4] = proto.MaxFds + 1 }), proto.Header{}, proto.ErrFds},
		{"255 fds", valid(func(b []byte) { b[4] = 255 }), proto.Header{}, proto.ErrFds},
		{"payload one too large", valid(func(b []byte) { binary.LittleEndian.PutUint32(b[12:], proto.MaxPayload+1) }), proto.Header{}, proto.ErrTooLarge},
		{"payload 4 GiB", valid(func(b []byte) { binary.LittleEndian.PutUint32(b[12:], 0xffffffff) }), proto.Header{}, proto.ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := proto.DecodeHeader(tc.b)
			if tc.err == nil {
				if err != nil || h != tc.want {
					t.Fatalf("DecodeHeader = %+v, %v; want %+v", h, err, tc.want)
				}
				return
			}
			if !errors.Is(err, tc.err) {
				t.Fatalf("DecodeHeader = %+v, %v; want %v", h, err, tc.err)
			}
			if h != (proto.Header{}) {
				t.Fatalf("DecodeHeader failed (%v) but returned header %+v", err, h)
			}
		})
	}
}

func TestDecodeHeaderVersionErrorNamesBoth(t *testing.T) {
	b := header(proto.THello, 0, 0, 0)
	b[2] = 7
	_, err := proto.DecodeHeader(b)
	if !errors.Is(err, proto.ErrVersion) {
		t.Fatalf("DecodeHeader of version 7 = %v, want ErrVersion", err)
	}
	words := strings.FieldsFunc(err.Error(), func(r rune) bool { return r < '0' || r > '9' })
	has := func(n int) bool {
		for _, w := range words {
			if w == fmt.Sprint(n) {
				return true
			}
		}
		return false
	}
	if !has(7) || !has(proto.Version) {
		t.Fatalf("version error %q does not name both the peer's version 7 and ours %d", err, proto.Version)
	}
}

func TestTypeString(t *testing.T) {
	for typ, want := range map[proto.Type]string{
		proto.THello: "hello", proto.TOpen: "open", proto.TAttach: "attach", proto.TAdvise: "advise",
		proto.TDetach: "detach", proto.TClose: "close", proto.TStat: "stat", proto.TReply: "reply",
		proto.TError: "error", 0x42: "type(0x42)",
	} {
		if got := typ.String(); got != want {
			t.Errorf("Type(%#x).String() = %q, want %q", uint8(typ), got, want)
		}
	}
}

// readAfter sends b (with fds), shuts the writer's side if closeAfter, and
// returns ReadFrame's result. Every descriptor the reader received must be
// closed when ReadFrame fails.
func readAfter(t *testing.T, b []byte, closeAfter bool, fds ...int) (proto.Frame, error) {
	t.Helper()
	a, c := socketPair(t)
	if len(b) > 0 {
		sendRaw(t, a, b, fds...)
	}
	if closeAfter {
		a.Close()
	}
	r := readerConn(t, c)
	before := openFds(t) // the descriptors in flight are in no table yet
	f, err := r.ReadFrame()
	if err != nil {
		if after := openFds(t); after != before {
			t.Fatalf("ReadFrame failed (%v) and %d descriptors are open, %d before: received descriptors leaked", err, after, before)
		}
	}
	return f, err
}

func TestReadFrameTruncated(t *testing.T) {
	full := append(header(proto.THello, 0, 9, 20), []byte(`{"pid":1,"program":"x"}`)[:20]...)
	f := tempFile(t, "fd")
	for _, tc := range []struct {
		name string
		b    []byte
		fds  []int
	}{
		{"one byte of header", full[:1], nil},
		{"half a header", full[:proto.HeaderSize/2], nil},
		{"header minus one", full[:proto.HeaderSize-1], nil},
		{"header only", full[:proto.HeaderSize], nil},
		{"part of the payload", full[:proto.HeaderSize+5], nil},
		{"payload minus one", full[:len(full)-1], nil},
		{"half a header with a descriptor", full[:proto.HeaderSize/2], []int{rawFd(t, f)}},
		{"header only with a descriptor", header(proto.TOpen, 1, 9, 20), []int{rawFd(t, f)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fr, err := readAfter(t, tc.b, true, tc.fds...)
			if !errors.Is(err, proto.ErrTruncated) {
				fr.CloseFds()
				t.Fatalf("ReadFrame after %d bytes and a close = %v frame, %v; want ErrTruncated", len(tc.b), fr.Type, err)
			}
		})
	}
}

func TestReadFrameDescriptorMismatch(t *testing.T) {
	f1, f2 := tempFile(t, "one"), tempFile(t, "two")
	payload := []byte(`{"handle":1}`)
	for _, tc := range []struct {
		name     string
		announce int
		fds      []int
	}{
		{"announces 1 carries 0", 1, nil},
		{"announces 1 carries 2", 1, []int{rawFd(t, f1), rawFd(t, f2)}},
		{"announces 0 carries 1", 0, []int{rawFd(t, f1)}},
		{"announces 4 carries 3", 4, []int{rawFd(t, f1), rawFd(t, f2), rawFd(t, f1)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := append(header(proto.TAttach, tc.announce, 3, len(payload)), payload...)
			fr, err := readAfter(t, b, false, tc.fds...)
			if !errors.Is(err, proto.ErrFds) {
				fr.CloseFds()
				t.Fatalf("ReadFrame = %v frame with %d fds, %v; want ErrFds", fr.Type, len(fr.Fds), err)
			}
		})
	}
}

// More descriptors than the receive buffer has room for: the kernel
// truncates the control data (and closes the rest); the reader must close
// the ones it got and fail.
func TestReadFrameControlTruncated(t *testing.T) {
	f := tempFile(t, "many")
	fds := make([]int, 64)
	for i := range fds {
		fds[i] = rawFd(t, f)
	}
	b := header(proto.TAttach, 1, 3, 0)
	fr, err := readAfter(t, b, false, fds...)
	if !errors.Is(err, proto.ErrFds) {
		fr.CloseFds()
		t.Fatalf("ReadFrame of a frame with %d descriptors = %v with %d fds, %v; want ErrFds", len(fds), fr.Type, len(fr.Fds), err)
	}
}

func TestReadFrameCleanClose(t *testing.T) {
	t.Run("before any frame", func(t *testing.T) {
		if _, err := readAfter(t, nil, true); err != io.EOF {
			t.Fatalf("ReadFrame on a closed connection = %v, want io.EOF", err)
		}
	})
	t.Run("between frames", func(t *testing.T) {
		a, b := socketPair(t)
		w, r := proto.NewConn(a), readerConn(t, b)
		for i := range 2 {
			if err := w.WriteFrame(proto.Frame{Type: proto.TStat, ID: uint32(i), Payload: []byte("{}")}); err != nil {
				t.Fatal(err)
			}
		}
		a.Close()
		for i := range 2 {
			f, err := r.ReadFrame()
			if err != nil || f.ID != uint32(i) || f.Type != proto.TStat {
				t.Fatalf("frame %d: %v id %d, %v; want stat id %d", i, f.Type, f.ID, err, i)
			}
		}
		for range 2 {
			if _, err := r.ReadFrame(); err != io.EOF {
				t.Fatalf("ReadFrame after the last frame = %v, want io.EOF", err)
			}
		}
	})
}

func TestReadFrameBadHeader(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
		err  error
	}{
		{"bad magic", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), proto.ErrMagic},
		{"wrong version", func() []byte { b := header(proto.THello, 0, 1, 0); b[2] = 2; return b }(), proto.ErrVersion},
		{"huge length", func() []byte {
			b := header(proto.THello, 0, 1, 0)
			binary.LittleEndian.PutUint32(b[12:], 0xffffffff)
			return b
		}(), proto.ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := readAfter(t, tc.b, false); !errors.Is(err, tc.err) {
				t.Fatalf("ReadFrame = %v, want %v", err, tc.err)
			}
		})
	}
}

// peer answers one request on c with the frame reply returns.
func peer(t *testing.T, c *net.UnixConn, reply func(req proto.Frame) proto.Frame) <-chan error {
	r := readerConn(t, c)
	done := make(chan error, 1)
	go func() {
		req, err := r.ReadFrame()
		if err != nil {
			done <- fmt.Errorf("peer: read request: %w", err)
			return
		}
		req.CloseFds()
		done <- r.WriteFrame(reply(req))
	}()
	return done
}

func waitPeer(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitLimit):
		t.Fatalf("peer did not answer within %v", waitLimit)
	}
}

func TestCall(t *testing.T) {
	f := tempFile(t, "reply fd")
	t.Run("reply", func(t *testing.T) {
		a, b := socketPair(t)
		done := peer(t, b, func(req proto.Frame) proto.Frame {
			var o proto.Open
			if err := proto.Unmarshal(req.Payload, &o); err != nil || req.Type != proto.TOpen {
				return proto.Frame{Type: proto.TError, ID: req.ID, Payload: proto.Marshal(proto.Error{Op: "open", Message: fmt.Sprint(err)})}
			}
			return proto.Frame{Type: proto.TReply, ID: req.ID, Payload: proto.Marshal(proto.OpenReply{Handle: 7, Size: 8, Version: o.URI}), Fds: []*os.File{f}}
		})
		c := readerConn(t, a)
		var rep proto.OpenReply
		fds, err := c.Call(proto.TOpen, 5, proto.Open{URI: "/x"}, nil, &rep)
		waitPeer(t, done)
		if err != nil {
			t.Fatalf("Call: %v", err)
		}
		defer closeFiles(fds)
		if rep != (proto.OpenReply{Handle: 7, Size: 8, Version: "/x"}) || len(fds) != 1 {
			t.Fatalf("Call = %+v with %d fds; want handle 7 size 8 version /x with 1 fd", rep, len(fds))
		}
	})
	for _, tc := range []struct {
		name  string
		reply func(req proto.Frame) proto.Frame
		check func(t *testing.T, err error)
	}{
		{"id mismatch", func(req proto.Frame) proto.Frame {
			return proto.Frame{Type: proto.TReply, ID: req.ID + 1, Payload: []byte("{}"), Fds: []*os.File{f}}
		}, func(t *testing.T, err error) {
			if err == nil || !strings.Contains(err.Error(), "id 6, want 5") {
				t.Fatalf("Call = %v, want an error naming reply id 6 and request id 5", err)
			}
		}},
		{"error reply", func(req proto.Frame) proto.Frame {
			return proto.Frame{Type: proto.TError, ID: req.ID, Payload: proto.Marshal(proto.Error{Op: "open", Message: "no such thing"}), Fds: []*os.File{f}}
		}, func(t *testing.T, err error) {
			var pe *proto.Error
			if !errors.As(err, &pe) || pe.Op != "open" || pe.Message != "no such thing" {
				t.Fatalf("Call = %#v, want *proto.Error{open, no such thing}", err)
			}
		}},
		{"error reply not JSON", func(req proto.Frame) proto.Frame {
			return proto.Frame{Type: proto.TError, ID: req.ID, Payload: []byte("oops")}
		}, func(t *testing.T, err error) {
			var pe *proto.Error
			if err == nil || errors.As(err, &pe) {
				t.Fatalf("Call = %v, want a decode error", err)
			}
		}},
		{"unexpected type", func(req proto.Frame) proto.Frame {
			return proto.Frame{Type: proto.THello, ID: req.ID, Payload: []byte("{}"), Fds: []*os.File{f}}
		}, func(t *testing.T, err error) {
			if err == nil || !strings.Contains(err.Error(), "hello frame") {
				t.Fatalf("Call = %v, want an error naming the hello frame", err)
			}
		}},
		{"reply not JSON", func(req proto.Frame) proto.Frame {
			return proto.Frame{Type: proto.TReply, ID: req.ID, Payload: []byte("[1,2"), Fds: []*os.File{f}}
		}, func(t *testing.T, err error) {
			if err == nil || !strings.Contains(err.Error(), "decode") {
				t.Fatalf("Call = %v, want a decode error", err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := socketPair(t)
			done := peer(t, b, tc.reply)
			c := readerConn(t, a)
			before := openFds(t)
			var rep proto.OpenReply
			fds, err := c.Call(proto.TOpen, 5, proto.Open{URI: "/x"}, nil, &rep)
			waitPeer(t, done)
			if fds != nil {
				closeFiles(fds)
				t.Fatalf("Call failed (%v) but returned %d descriptors", err, len(fds))
			}
			tc.check(t, err)
			if after := openFds(t); after != before {
				t.Fatalf("%d descriptors open after a failed Call, %d before: the reply's descriptors leaked", after, before)
			}
		})
	}
	t.Run("peer closes", func(t *testing.T) {
		a, b := socketPair(t)
		r := readerConn(t, b)
		done := make(chan error, 1)
		go func() {
			_, err := r.ReadFrame()
			b.Close()
			done <- err
		}()
		c := readerConn(t, a)
		_, err := c.Call(proto.TStat, 1, proto.Empty{}, nil, nil)
		waitPeer(t, done)
		if !errors.Is(err, io.EOF) {
			t.Fatalf("Call to a peer that closed = %v, want io.EOF", err)
		}
	})
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// DefaultSocket follows $FILEMAP_SOCKET, then $XDG_RUNTIME_DIR.
func TestDefaultSocket(t *testing.T) {
	t.Setenv("FILEMAP_SOCKET", "/x/y.sock")
	if got := proto.DefaultSocket(); got != "/x/y.sock" {
		t.Errorf("DefaultSocket with FILEMAP_SOCKET = %q", got)
	}
	t.Setenv("FILEMAP_SOCKET", "")
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/5")
	if got, want := proto.DefaultSocket(), filepath.Join("/run/user/5", "filemap", "filemap.sock"); got != want {
		t.Errorf("DefaultSocket with XDG_RUNTIME_DIR = %q, want %q", got, want)
	}
	t.Setenv("XDG_RUNTIME_DIR", "")
	if got := proto.DefaultSocket(); got != "/run/filemap/filemap.sock" {
		t.Errorf("DefaultSocket = %q", got)
	}
}
