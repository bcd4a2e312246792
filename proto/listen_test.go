package proto_test

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/filemap/filemap/proto"
	"golang.org/x/sys/unix"
)

// staleSocket leaves a socket file at path that nothing listens on, as a
// daemon that died does.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
}

// Listen refuses a path that holds anything but a stale socket, says what
// is there, and leaves it as it was: a mistyped --socket must not cost a
// user a file.
func TestListenRefusesWhatIsNotAStaleSocket(t *testing.T) {
	for _, c := range []struct {
		kind string
		make func(t *testing.T, path string)
		want string
	}{
		{"a regular file", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("a user's data"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, "is a regular file, not a socket; refusing to replace it"},
		{"an empty directory", func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o755); err != nil {
				t.Fatal(err)
			}
		}, "is a directory, not a socket; refusing to replace it"},
		{"a symbolic link to a stale socket", func(t *testing.T, path string) {
			target := path + ".target"
			staleSocket(t, target)
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
		}, "is a symbolic link, not a socket"},
		{"a named pipe", func(t *testing.T, path string) {
			if err := unix.Mkfifo(path, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "is a named pipe, not a socket"},
		{"a live socket", func(t *testing.T, path string) {
			l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
		}, "a daemon is already serving this socket"},
	} {
		t.Run(c.kind, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "victim")
			c.make(t, path)
			before := describe(t, path)
			l, err := proto.Listen(path, 0o600)
			if err == nil {
				l.Close()
				t.Fatalf("Listen on %s succeeded", c.kind)
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Listen on %s: %v; want an error naming %s and saying %q", c.kind, err, path, c.want)
			}
			if after := describe(t, path); after != before {
				t.Errorf("Listen on %s changed it: before %s, after %s", c.kind, before, after)
			}
		})
	}
}

// describe says what is at path: its mode, inode and, for a regular file,
// its bytes.
func describe(t *testing.T, path string) string {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		return err.Error()
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	s := fmt.Sprintf("%v ino %d", fi.Mode(), st.Ino)
	if fi.Mode().IsRegular() {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		s += " " + string(b)
	}
	return s
}

// A socket that refuses connections is a dead daemon's: Listen replaces it.
func TestListenReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	staleSocket(t, path)
	l, err := proto.Listen(path, 0o600)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer l.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial the new socket: %v", err)
	}
	c.Close()
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the new socket: %v, %v; want mode 0600", fi, err)
	}
}

// Close unlinks the listener's own socket, and nothing put at its path
// since: another daemon's socket or a file stays.
func TestListenerCloseUnlinksOnlyItsOwnSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := proto.Listen(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after Close the socket is still there: %v", err)
	}

	// The path is taken over while the first listener serves: its socket
	// removed by hand and a second daemon started there.
	first, err := proto.Listen(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	second, err := proto.Listen(path, 0o600)
	if err != nil {
		t.Fatalf("Listen on the freed path: %v", err)
	}
	defer second.Close()
	first.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the first listener's Close removed the second's socket: %v", err)
	}
	c.Close()

	// A file put where a listener's socket was.
	third, err := proto.Listen(filepath.Join(t.TempDir(), "t.sock"), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	tpath := third.Addr().String()
	if err := os.Remove(tpath); err != nil {
		t.Fatal(err)
	}
	data := []byte("not the listener's")
	if err := os.WriteFile(tpath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	third.Close()
	if got, err := os.ReadFile(tpath); err != nil || !bytes.Equal(got, data) {
		t.Errorf("after Close the file put at the socket's path reads %q, %v; want it kept", got, err)
	}

	// A listener told not to (its socket handed over) leaves its path.
	fourth, err := proto.Listen(filepath.Join(t.TempDir(), "f.sock"), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	fourth.SetUnlinkOnClose(false)
	fourth.Close()
	if fi, err := os.Lstat(fourth.Addr().String()); err != nil || fi.Mode().Type() != fs.ModeSocket {
		t.Errorf("a listener that hands its socket over unlinked it on Close: %v, %v", fi, err)
	}
}
