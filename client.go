package filemap

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"

	"github.com/filemap/filemap/proto"
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
	path := socket
	if path == "" {
		path = os.Getenv("FILEMAP_SOCKET")
	}
	if path == "" {
		var err error
		if path, err = privateHandler(set); err != nil {
			return nil, err
		}
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("connect to the filemap daemon at %s: %w (is `filemap serve` running?)", path, err)
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
