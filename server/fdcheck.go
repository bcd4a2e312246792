package server

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// checkReadable makes sure the descriptor a client sent for a local file was
// opened for reading. The kernel checked the client's right to read the file
// when — and only if — the client opened it for reading. An O_PATH
// descriptor needs no right to the file at all (only to search its
// directory), and an O_WRONLY one no right to read it; the daemon reads the
// file through the descriptor, and opens it again for O_DIRECT through
// /proc/self/fd, which the kernel checks against the daemon's credentials,
// not the client's. Without this check a client could have a daemon
// running as root read /etc/shadow for it.
func checkReadable(f *os.File, name string) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var flags int
	var ferr error
	if err := rc.Control(func(fd uintptr) { flags, ferr = unix.FcntlInt(fd, unix.F_GETFL, 0) }); err != nil {
		return err
	}
	if ferr != nil {
		return fmt.Errorf("open %s: the descriptor sent: fcntl(F_GETFL): %w", name, ferr)
	}
	switch {
	case flags&unix.O_PATH != 0:
		return fmt.Errorf("open %s: the descriptor sent is O_PATH: open the file for reading and send that descriptor", name)
	case flags&unix.O_ACCMODE != unix.O_RDONLY && flags&unix.O_ACCMODE != unix.O_RDWR:
		return fmt.Errorf("open %s: the descriptor sent is not open for reading (flags %#o): open the file for reading and send that descriptor", name, flags)
	}
	return nil
}
