package proto

import (
	"fmt"
	"net"
	"os"
	"path/filepath"

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
