package proto

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultSocket is where clients look for the daemon and where `filemap
// serve` listens unless told otherwise: $FILEMAP_SOCKET, else
// $XDG_RUNTIME_DIR/filemap/filemap.sock, else /run/filemap/filemap.sock.
func DefaultSocket() string {
	if s := os.Getenv("FILEMAP_SOCKET"); s != "" {
		return s
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "filemap", "filemap.sock")
	}
	return "/run/filemap/filemap.sock"
}

// PeerCred is the pid and uid of the process at the other end of c, as the
// kernel saw them at connect (SO_PEERCRED).
func PeerCred(c *net.UnixConn) (*unix.Ucred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	if cerr != nil {
		return nil, fmt.Errorf("SO_PEERCRED: %w", cerr)
	}
	return cred, nil
}

// Accept hands each connection accepted on l to serve, in a goroutine of
// its own, until l is closed (then it returns nil). Running out of
// descriptors is logged and retried: a busy daemon must not die of it, and
// descriptors come back as connections close.
func Accept(l *net.UnixListener, log *slog.Logger, serve func(*net.UnixConn)) error {
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
				log.Error("accept: out of file descriptors; retrying", "socket", l.Addr().String(), "err", err)
				time.Sleep(100 * time.Millisecond)
				continue
			}
			return fmt.Errorf("accept on %s: %w", l.Addr(), err)
		}
		go serve(c)
	}
}
