package proto

import (
	"os"
	"path/filepath"
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
