package proto

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Listener is a Unix socket listening at a path of the file system. Close
// unlinks the path only while it still names the socket file this
// Listener bound: a daemon that shuts down must not delete what was put at
// its path since, such as the socket of a daemon started after it.
type Listener struct {
	*net.UnixListener
	path   string
	file   os.FileInfo // the socket file at path; nil: nothing of ours to unlink
	unlink atomic.Bool
	once   sync.Once
}

// Listen makes a listening Unix socket at path, in a directory made 0700
// if absent, readable and writable only as mode allows. A socket left at
// path by a process that died (one that refuses connections) is replaced.
// Anything else there is an error that says what it is, and stays: a live
// socket is another daemon's, and any other file may be a user's, named
// by a mistyped flag.
func Listen(path string, mode os.FileMode) (*Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	if err := removeStale(path); err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	l := AdoptListener(ul)
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	return l, nil
}

// AdoptListener makes a Listener of l, bound to a path: the socket file
// there now is the one its Close unlinks.
func AdoptListener(l *net.UnixListener) *Listener {
	l.SetUnlinkOnClose(false) // Close unlinks, if the path is still ours
	ln := &Listener{UnixListener: l, path: l.Addr().String()}
	if fi, err := os.Lstat(ln.path); err == nil && fi.Mode().Type() == fs.ModeSocket {
		ln.file = fi
	}
	ln.unlink.Store(true)
	return ln
}

// SetUnlinkOnClose says whether Close unlinks the socket's path (if it is
// still this socket): a daemon that hands its socket to a successor must
// not.
func (l *Listener) SetUnlinkOnClose(unlink bool) { l.unlink.Store(unlink) }

// Close unlinks the socket's path, if it still names this socket, and
// stops listening.
func (l *Listener) Close() error {
	l.once.Do(func() {
		if l.unlink.Load() && l.isOurs() {
			os.Remove(l.path)
		}
	})
	return l.UnixListener.Close()
}

// isOurs reports whether the path names the socket file this Listener
// bound, and not one put there since.
func (l *Listener) isOurs() bool {
	if l.file == nil {
		return false
	}
	fi, err := os.Lstat(l.path)
	return err == nil && fi.Mode().Type() == fs.ModeSocket && os.SameFile(fi, l.file)
}

// removeStale removes the socket at path if no process listens on it. It
// refuses to touch anything else.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("the path is %s, not a socket; refusing to replace it: remove it yourself, or choose another socket path", FileKind(fi.Mode()))
	}
	c, err := net.Dial("unix", path)
	switch {
	case err == nil:
		c.Close()
		return errors.New("a daemon is already serving this socket")
	case errors.Is(err, unix.EAGAIN):
		return errors.New("a daemon is already serving this socket (its backlog is full)")
	case !errors.Is(err, unix.ECONNREFUSED):
		return fmt.Errorf("cannot tell whether the socket there is stale, so it stays: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove the stale socket: %w", err)
	}
	return nil
}

// FileKind names the kind of file of mode m, for an error message about
// a socket's path: a regular file, a directory, ...
func FileKind(m fs.FileMode) string {
	switch m.Type() {
	case 0:
		return "a regular file"
	case fs.ModeDir:
		return "a directory"
	case fs.ModeSymlink:
		return "a symbolic link"
	case fs.ModeNamedPipe:
		return "a named pipe"
	case fs.ModeDevice:
		return "a block device"
	case fs.ModeDevice | fs.ModeCharDevice:
		return "a character device"
	}
	return fmt.Sprintf("a file of mode %v", m)
}
