package filemap

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"sync"
	"sync/atomic"

	"github.com/filemap/filemap/proto"
	"golang.org/x/sys/unix"
)

// errLost is a call on a connection to a handler that has gone away.
var errLost = errors.New("connection to the filemap handler lost")

// client is one connection to a handler: one session, whose regions the
// handler tears down when the connection closes. A goroutine reads it all
// the time, so that the connection's loss is known at once — a mapping
// then re-attaches to a new handler — and not at the next call.
type client struct {
	socket string // where it connected; "" for the private handler
	conn   *proto.Conn
	mu     sync.Mutex // one call at a time
	id     atomic.Uint32

	replies chan proto.Frame
	lost    chan struct{} // closed when the connection breaks or is closed
	err     error         // why, once lost is closed
	once    sync.Once
}

// connect reaches the handler at socket, else at $FILEMAP_SOCKET, else a
// private handler of this process with settings set.
func connect(ctx context.Context, socket string, set handlerSettings) (*client, error) {
	path, fromEnv, private := socket, false, false
	if path == "" {
		path = os.Getenv("FILEMAP_SOCKET")
		fromEnv = path != ""
	}
	if path == "" {
		var err error
		if path, err = privateHandler(set); err != nil {
			return nil, err
		}
		private = true
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	switch {
	case err != nil && private:
		return nil, fmt.Errorf("connect to this process's private handler: %w", err)
	case err != nil:
		return nil, &dialError{path: path, why: whyNoDaemon(path, fromEnv, err), err: err}
	}
	c := &client{socket: socket, conn: proto.NewConn(nc.(*net.UnixConn)),
		replies: make(chan proto.Frame, 1), lost: make(chan struct{})}
	go c.read()
	exe, _ := os.Executable()
	var hr proto.HelloReply
	if _, err := c.call(ctx, proto.THello, proto.Hello{PID: os.Getpid(), Program: exe}, nil, &hr); err != nil {
		c.close()
		return nil, fmt.Errorf("hello to %s: %w", path, err)
	}
	if hr.PageSize != ps {
		c.close()
		return nil, fmt.Errorf("daemon at %s uses %d-byte pages, this client %d", path, hr.PageSize, ps)
	}
	return c, nil
}

// read hands every frame to the call waiting for it, until the connection
// ends.
func (c *client) read() {
	for {
		f, err := c.conn.ReadFrame()
		if err != nil {
			c.fail(err)
			return
		}
		select {
		case c.replies <- f:
		case <-c.lost:
			f.CloseFds()
			return
		}
	}
}

func (c *client) fail(err error) {
	c.once.Do(func() {
		c.err = fmt.Errorf("%w: %v", errLost, err)
		close(c.lost)
		c.conn.Close()
	})
}

// call sends one request and waits for its reply, within ctx.
func (c *client) call(ctx context.Context, t proto.Type, req any, fds []*os.File, reply any) ([]*os.File, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	id := c.id.Add(1)
	if err := c.conn.WriteFrame(proto.Frame{Type: t, ID: id, Payload: proto.Marshal(req), Fds: fds}); err != nil {
		select {
		case <-c.lost:
			return nil, c.err
		default:
			return nil, err
		}
	}
	for {
		select {
		case f := <-c.replies:
			if f.ID != id { // the late reply of a call that gave up
				f.CloseFds()
				continue
			}
			return proto.DecodeReply(t, f, reply)
		case <-c.lost:
			return nil, c.err
		case <-ctx.Done():
			return nil, fmt.Errorf("%v: %w", t, ctx.Err())
		}
	}
}

func (c *client) close() { c.fail(net.ErrClosed) }

// dialError is a connect to a daemon's socket that failed, said in words
// that tell the causes apart, since each has its own cure: nothing at the
// path, a stale socket, another user's socket, something that is not a
// socket.
type dialError struct {
	path string
	why  string // what is at path, and what to do; names path
	err  error  // the dial's
}

func (e *dialError) Error() string { return e.why }
func (e *dialError) Unwrap() error { return e.err }

// whyNoDaemon explains err, the failed dial of path; fromEnv says that
// path came from $FILEMAP_SOCKET rather than from the caller.
func whyNoDaemon(path string, fromEnv bool, err error) string {
	errno := "(" + errnoText(err) + ")"
	start := fmt.Sprintf("start `filemap serve --socket %s`", path)
	checkPath := "is the socket's path right?"
	if fromEnv {
		start = "start `filemap serve` (which listens at $FILEMAP_SOCKET too), or unset FILEMAP_SOCKET to use a private handler"
		checkPath = "is FILEMAP_SOCKET right?"
	}
	switch {
	case errors.Is(err, unix.ENOENT):
		return fmt.Sprintf("no filemap daemon is listening at %s %s: %s", path, errno, start)
	case errors.Is(err, unix.EACCES):
		return fmt.Sprintf("may not connect to the filemap daemon at %s %s: %s", path, errno, whoseSocket(path))
	case errors.Is(err, unix.ECONNREFUSED):
		// connect(2) refuses a path that is not a socket the same way.
		if fi, serr := os.Stat(path); serr == nil && fi.Mode().Type() != fs.ModeSocket {
			return fmt.Sprintf("%s is %s, not a filemap daemon's socket %s: %s", path, proto.FileKind(fi.Mode()), errno, checkPath)
		}
		return fmt.Sprintf("no filemap daemon is running on %s %s: the socket is stale, left by a daemon that did not remove it; %s, which replaces it",
			path, errno, start)
	case errors.Is(err, unix.ENOTDIR):
		return fmt.Sprintf("cannot reach a filemap daemon at %s %s: a component of the path is not a directory; %s", path, errno, checkPath)
	}
	return fmt.Sprintf("connect to the filemap daemon at %s: %s", path, errnoText(err))
}

// whoseSocket says why this process may not connect to the socket at path:
// a directory it may not search, or a socket of another user.
func whoseSocket(path string) string {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "this user may not search a directory on the way to it"
	}
	return fmt.Sprintf("the socket belongs to uid %d, mode %#o, and this process runs as uid %d; "+
		"the daemon's --socket-mode and --socket-owner let other users in", st.Uid, st.Mode&0o777, os.Geteuid())
}

// errnoText is the system call's word for err, without the path that
// net.Dial's error repeats.
func errnoText(err error) string {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	return err.Error()
}
