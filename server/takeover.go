package server

// Graceful upgrade. A new daemon connects to the running one and asks it to
// retire (TTakeover). The old one sends its listening socket, so no client
// ever finds the socket closed: connections made meanwhile wait in its
// backlog. Then it closes as on SIGTERM, leaving every region in its keeper
// (keep.go), and the new daemon takes them from there and serves them. A
// fault that arrives during the hand-over waits in the kernel for the new
// daemon; none fails.

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/filemap/filemap/internal/fdstore"
	"github.com/filemap/filemap/proto"
)

// Takeover asks the daemon listening at socket to hand over, and returns
// its listening socket. That daemon then closes; Kept waits for it and
// returns the regions it left, for Keep.
func Takeover(socket string, timeout time.Duration) (*proto.Listener, error) {
	nc, err := net.DialTimeout("unix", socket, timeout)
	if err != nil {
		return nil, fmt.Errorf("takeover: connect to the running daemon at %s: %w", socket, err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(timeout))
	c := proto.NewConn(nc.(*net.UnixConn))
	if _, err := c.Call(proto.THello, 1, proto.Hello{PID: os.Getpid(), Program: "filemap serve --takeover"}, nil, nil); err != nil {
		return nil, fmt.Errorf("takeover: %s: %w", socket, err)
	}
	fds, err := c.Call(proto.TTakeover, 2, proto.Empty{}, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("takeover: %s: %w", socket, err)
	}
	if len(fds) != 1 {
		closeAll(fds)
		return nil, fmt.Errorf("takeover: %s sent %d descriptors, want its listening socket", socket, len(fds))
	}
	fl, err := net.FileListener(fds[0])
	fds[0].Close()
	if err != nil {
		return nil, fmt.Errorf("takeover: %s: the descriptor sent is no listening socket: %w", socket, err)
	}
	l, ok := fl.(*net.UnixListener)
	if !ok {
		fl.Close()
		return nil, fmt.Errorf("takeover: %s: the descriptor sent is no Unix socket", socket)
	}
	// Ours now: the path goes with the daemon that listens last.
	return proto.AdoptListener(l), nil
}

// Kept returns the regions the previous daemon on socket left in its
// keeper, waiting for it to close if it is retiring (Takeover); none if it
// left no keeper.
func Kept(socket string) ([]fdstore.Entry, error) {
	return fdstore.Retrieve(socket, retrieveTimeout)
}

// takeover hands this daemon's listening socket to the session's process,
// a new daemon of this uid, and retires.
func (ss *session) takeover() (*os.File, error) {
	s := ss.s
	if ss.cred.Uid != uint32(os.Geteuid()) && ss.cred.Uid != 0 {
		return nil, fmt.Errorf("takeover: uid %d may not take over a daemon of uid %d", ss.cred.Uid, os.Geteuid())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.keeper == nil {
		return nil, errors.New("takeover: this daemon keeps no regions (it was started without a keeper): its clients would be lost")
	}
	if len(s.listeners) == 0 || s.retired {
		return nil, errors.New("takeover: this daemon is not listening")
	}
	l, ok := s.listeners[0].(*proto.Listener)
	if !ok {
		return nil, errors.New("takeover: the listening socket is not a Unix socket")
	}
	f, err := l.File()
	if err != nil {
		return nil, fmt.Errorf("takeover: %w", err)
	}
	s.retired = true
	for _, l := range s.listeners {
		if ul, ok := l.(*proto.Listener); ok {
			ul.SetUnlinkOnClose(false) // the successor listens there now
		}
	}
	ss.log.Info("handing over to a new daemon", "pid", ss.cred.Pid)
	ss.retire = true // once the reply is sent: Close ends this session too
	return f, nil
}

// Retired reports whether the daemon handed over to a successor: its
// socket path is the successor's now.
func (s *Server) Retired() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.retired
}

// waitFills waits for the fills in flight, readahead among them, to end:
// a fill that ended after a successor adopted the caches could evict pages
// the successor counts as present. It gives up after a while: a store
// hung for that long has its own timeout.
func (s *Server) waitFills() {
	deadline := time.Now().Add(10 * time.Second)
	for quiet := 0; quiet < 2 && time.Now().Before(deadline); {
		if s.counters.FillsInFlight.Load() == 0 {
			quiet++
		} else {
			quiet = 0
		}
		time.Sleep(time.Millisecond)
	}
}
