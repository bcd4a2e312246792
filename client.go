package filemap

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/filemap/filemap/proto"
)

// client is one connection to a handler: one session, whose regions the
// handler tears down when the connection closes.
type client struct {
	conn *proto.Conn
	mu   sync.Mutex // one call at a time
	id   atomic.Uint32
}

// connect reaches the handler at socket, else at $FILEMAP_SOCKET, else a
// private handler of this process.
func connect(ctx context.Context, socket string) (*client, error) {
	if socket == "" {
		socket = os.Getenv("FILEMAP_SOCKET")
	}
	if socket == "" {
		var err error
		if socket, err = privateHandler(); err != nil {
			return nil, err
		}
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("connect to the filemap daemon at %s: %w (is `filemap serve` running?)", socket, err)
	}
	c := &client{conn: proto.NewConn(nc.(*net.UnixConn))}
	exe, _ := os.Executable()
	var hr proto.HelloReply
	if _, err := c.call(ctx, proto.THello, proto.Hello{PID: os.Getpid(), Program: exe}, nil, &hr); err != nil {
		c.close()
		return nil, fmt.Errorf("hello to %s: %w", socket, err)
	}
	if hr.PageSize != ps {
		c.close()
		return nil, fmt.Errorf("daemon at %s uses %d-byte pages, this client %d", socket, hr.PageSize, ps)
	}
	return c, nil
}

// call sends one request and waits for its reply, within ctx's deadline.
func (c *client) call(ctx context.Context, t proto.Type, req any, fds []*os.File, reply any) ([]*os.File, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	uc := c.conn.UnixConn()
	if d, ok := ctx.Deadline(); ok {
		uc.SetDeadline(d)
		defer uc.SetDeadline(time.Time{})
	}
	return c.conn.Call(t, c.id.Add(1), req, fds, reply)
}

func (c *client) close() { c.conn.Close() }
