package proto

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Frame is one message with the descriptors that came with it. The receiver
// owns Fds and must close the ones it does not keep.
type Frame struct {
	Type    Type
	ID      uint32
	Payload []byte
	Fds     []*os.File
}

// CloseFds closes the frame's descriptors.
func (f *Frame) CloseFds() {
	for _, fd := range f.Fds {
		fd.Close()
	}
	f.Fds = nil
}

// Conn frames messages on a Unix stream socket. Reads and writes may run
// concurrently with each other; concurrent writers are serialized.
type Conn struct {
	c   *net.UnixConn
	wmu sync.Mutex
	oob []byte
}

// NewConn wraps c.
func NewConn(c *net.UnixConn) *Conn {
	return &Conn{c: c, oob: make([]byte, unix.CmsgSpace(MaxFds*4)*2)}
}

// UnixConn is the underlying socket.
func (c *Conn) UnixConn() *net.UnixConn { return c.c }

// Close closes the socket.
func (c *Conn) Close() error { return c.c.Close() }

// WriteFrame sends a frame and its descriptors in one sendmsg(2).
func (c *Conn) WriteFrame(f Frame) error {
	if len(f.Payload) > MaxPayload {
		return fmt.Errorf("proto: write %v: %w: %d bytes", f.Type, ErrTooLarge, len(f.Payload))
	}
	if len(f.Fds) > MaxFds {
		return fmt.Errorf("proto: write %v: %w: %d", f.Type, ErrFds, len(f.Fds))
	}
	buf := make([]byte, HeaderSize+len(f.Payload))
	EncodeHeader(buf, Header{Type: f.Type, NFds: len(f.Fds), ID: f.ID, Length: len(f.Payload)})
	copy(buf[HeaderSize:], f.Payload)
	var oob []byte
	if len(f.Fds) > 0 {
		fds := make([]int, len(f.Fds))
		for i, fd := range f.Fds {
			n, err := rawFd(fd)
			if err != nil {
				return fmt.Errorf("proto: write %v: descriptor %s: %w", f.Type, fd.Name(), err)
			}
			fds[i] = n
		}
		oob = unix.UnixRights(fds...)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	n, _, err := c.c.WriteMsgUnix(buf, oob, nil)
	if err == nil && n < len(buf) {
		_, err = c.c.Write(buf[n:]) // the descriptors went with the first byte
	}
	if err != nil {
		return fmt.Errorf("proto: write %v: %w", f.Type, err)
	}
	return nil
}

// ReadFrame reads one frame. It never reads past the frame, so descriptors
// always arrive with the frame that carries them. On any error the
// descriptors received so far are closed.
func (c *Conn) ReadFrame() (Frame, error) {
	var fds []*os.File
	fail := func(err error) (Frame, error) {
		for _, fd := range fds {
			fd.Close()
		}
		return Frame{}, err
	}
	var hb [HeaderSize]byte
	if err := c.readFull(hb[:], &fds); err != nil {
		if errors.Is(err, io.EOF) && len(fds) == 0 {
			return Frame{}, io.EOF // a clean close between frames
		}
		return fail(err)
	}
	h, err := DecodeHeader(hb[:])
	if err != nil {
		return fail(err)
	}
	payload := make([]byte, h.Length)
	if err := c.readFull(payload, &fds); err != nil {
		if errors.Is(err, io.EOF) { // the header was read: a close now cuts a frame
			err = fmt.Errorf("%w: %v frame announces %d payload bytes, connection closed before them", ErrTruncated, h.Type, h.Length)
		}
		return fail(err)
	}
	if len(fds) != h.NFds {
		return fail(fmt.Errorf("%w: %v frame announces %d, carried %d", ErrFds, h.Type, h.NFds, len(fds)))
	}
	return Frame{Type: h.Type, ID: h.ID, Payload: payload, Fds: fds}, nil
}

func (c *Conn) readFull(b []byte, fds *[]*os.File) error {
	for got := 0; got < len(b); {
		n, oobn, flags, _, err := c.c.ReadMsgUnix(b[got:], c.oob)
		if oobn > 0 {
			recv, perr := parseRights(c.oob[:oobn])
			*fds = append(*fds, recv...)
			if perr != nil {
				return perr
			}
		}
		if flags&unix.MSG_CTRUNC != 0 {
			return fmt.Errorf("%w: more descriptors than a frame may carry (control data truncated)", ErrFds)
		}
		got += n
		if got == len(b) {
			return nil
		}
		if err != nil {
			if errors.Is(err, io.EOF) && got > 0 {
				return fmt.Errorf("%w: %d of %d bytes", ErrTruncated, got, len(b))
			}
			return err
		}
		if n == 0 {
			if got > 0 || len(*fds) > 0 {
				return fmt.Errorf("%w: %d of %d bytes", ErrTruncated, got, len(b))
			}
			return io.EOF
		}
	}
	return nil
}

// rawFd is f's descriptor. Unlike f.Fd it leaves a non-blocking file
// non-blocking.
func rawFd(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := rc.Control(func(u uintptr) { fd = int(u) }); err != nil {
		return -1, err
	}
	return fd, nil
}

func parseRights(oob []byte) ([]*os.File, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("%w: control message: %v", ErrFds, err)
	}
	var files []*os.File
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
			continue
		}
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			return files, fmt.Errorf("%w: %v", ErrFds, err)
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			files = append(files, os.NewFile(uintptr(fd), "received"))
		}
	}
	return files, nil
}

// Call sends a request and reads its reply, decoding a TReply payload into
// reply (which may be nil) and returning a TError payload as an *Error. The
// reply's descriptors are returned to the caller. Calls on one Conn must not
// overlap: the client serializes them.
func (c *Conn) Call(t Type, id uint32, req any, fds []*os.File, reply any) ([]*os.File, error) {
	if err := c.WriteFrame(Frame{Type: t, ID: id, Payload: Marshal(req), Fds: fds}); err != nil {
		return nil, err
	}
	f, err := c.ReadFrame()
	if err != nil {
		return nil, fmt.Errorf("proto: %v reply: %w", t, err)
	}
	if f.ID != id {
		f.CloseFds()
		return nil, fmt.Errorf("proto: %v reply has id %d, want %d", t, f.ID, id)
	}
	return DecodeReply(t, f, reply)
}

// DecodeReply decodes f, the answer to a request of type t: a TReply
// payload into reply (which may be nil), a TError payload as an *Error.
// It returns the reply's descriptors, and closes them on any error.
func DecodeReply(t Type, f Frame, reply any) ([]*os.File, error) {
	switch f.Type {
	case TReply:
		if reply != nil {
			if err := Unmarshal(f.Payload, reply); err != nil {
				f.CloseFds()
				return nil, fmt.Errorf("proto: %v reply: %w", t, err)
			}
		}
		return f.Fds, nil
	case TError:
		f.CloseFds()
		e := new(Error)
		if err := Unmarshal(f.Payload, e); err != nil {
			return nil, fmt.Errorf("proto: %v error reply: %w", t, err)
		}
		return nil, e
	default:
		f.CloseFds()
		return nil, fmt.Errorf("proto: %v answered with a %v frame", t, f.Type)
	}
}
