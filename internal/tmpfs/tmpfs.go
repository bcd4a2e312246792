// Package tmpfs gives tests small, real file systems to fill: a tmpfs of a
// few MiB mounted on a temporary directory, where a write past its size
// fails with ENOSPC as on any full disk, and a read-only one.
package tmpfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// Mount mounts a tmpfs of size bytes and of at most Inodes files on a new
// temporary directory and unmounts it when the test ends. Mounting needs root (CAP_SYS_ADMIN): the
// test skips, saying so, without it.
func Mount(t testing.TB, size int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounting a small tmpfs to fill (CAP_SYS_ADMIN)")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,nr_inodes=%d,mode=0700", size, Inodes)); err != nil {
		t.Skipf("cannot mount a tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// Inodes is how many files (and directories) a tmpfs of Mount holds: few,
// so that FillInodes is quick.
const Inodes = 256

// FillInodes makes empty files in dir until the file system has no inode
// left, so that making a file fails with ENOSPC although bytes are free.
func FillInodes(t testing.TB, dir string) {
	t.Helper()
	for i := 0; ; i++ {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("inode-%d", i)))
		if errors.Is(err, unix.ENOSPC) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		if i > Inodes {
			t.Fatalf("made %d files in %s, a tmpfs of %d inodes", i, dir, Inodes)
		}
	}
}

// Fill fills the file system of dir with a file of its own, leaving leave
// bytes (a page multiple) free, and returns the file's path: removing it
// makes room again.
func Fill(t testing.TB, dir string, leave int64) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for i := range buf {
		buf[i] = 0xa5
	}
	var size int64
	for {
		n, err := f.Write(buf)
		size += int64(n)
		if errors.Is(err, unix.ENOSPC) {
			break
		}
		if err != nil {
			t.Fatalf("fill %s: %v", dir, err)
		}
	}
	if leave > 0 {
		if err := f.Truncate(max(size-leave, 0)); err != nil {
			t.Fatal(err)
		}
	}
	if got := Free(t, dir); got != leave {
		t.Fatalf("filled %s leaving %d bytes free, want %d", dir, got, leave)
	}
	return path
}

// Free is the bytes free in the file system of dir.
func Free(t testing.TB, dir string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bfree) * st.Bsize
}

// ReadOnly remounts the tmpfs mounted on dir read-only, as the kernel
// remounts a file system that met errors (errors=remount-ro).
func ReadOnly(t testing.TB, dir string) {
	t.Helper()
	if err := unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		t.Fatalf("remount %s read-only: %v", dir, err)
	}
}
