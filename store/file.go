package store

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// File is a Store over a local file descriptor. The descriptor is opened by
// the client, never by the daemon, so the kernel has already checked that the
// client may read it.
//
// Aligned reads bypass the kernel's page cache (O_DIRECT) where the file
// system allows it: the bytes are cached once, in filemap's memfd, not twice,
// and the daemon copies each byte once instead of twice. The direct
// descriptor is the client's file opened again through /proc/self/fd, for
// reading only.
type File struct {
	f       *os.File
	direct  *os.File // nil where O_DIRECT is not supported
	name    string
	size    int64
	dev     uint64
	ino     uint64
	mtimeNs int64
}

// NewFile makes a Store of an open file, called name in errors. It takes
// ownership of f. The version is the file's size and modification time at
// this moment: a file rewritten in place later gets a new cache on its next
// Open.
func NewFile(f *os.File, name string) (*File, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, &os.PathError{Op: "fstat", Path: name, Err: err}
	}
	if err := checkRegular(name, st.Mode); err != nil {
		return nil, err
	}
	if st.Size == 0 {
		var sfs unix.Statfs_t
		if err := unix.Fstatfs(int(f.Fd()), &sfs); err != nil {
			return nil, &os.PathError{Op: "fstatfs", Path: name, Err: err}
		}
		if err := checkEmpty(name, sfs.Type, f); err != nil {
			return nil, err
		}
	}
	return &File{
		f:       f,
		direct:  openDirect(f),
		name:    name,
		size:    st.Size,
		dev:     st.Dev,
		ino:     st.Ino,
		mtimeNs: st.Mtim.Nano(),
	}, nil
}

func checkRegular(name string, mode uint32) error {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return nil
	case unix.S_IFDIR:
		return &os.PathError{Op: "open", Path: name, Err: syscall.EISDIR}
	default:
		return &os.PathError{Op: "open", Path: name, Err: errors.New("not a regular file")}
	}
}

// checkEmpty refuses a file that reports size 0 on a file system of type
// fsType but may hold bytes: a mapping of it would be empty where reading it
// is not. Such files are made as they are read (/proc/self/status, sysfs
// and debugfs attributes, a FUSE file system's synthetic files); their file
// systems have no mmap, and the kernel's mmap(2) refuses them too. On the
// pseudo file systems the size says nothing, and reading may block
// (/proc/kmsg, trace_pipe) or consume what it reads, so they are refused
// unread; elsewhere a 1-byte read at offset 0 tells an empty file from one
// whose size is not known.
func checkEmpty(name string, fsType int64, r io.ReaderAt) error {
	if fs := pseudoFS(fsType); fs != "" {
		return fmt.Errorf("%s: it is on %s, whose files report size 0 whatever they hold, so it cannot be "+
			"mapped (mmap(2) refuses it too): copy it to a regular file first", name, fs)
	}
	var b [1]byte
	n, err := r.ReadAt(b[:], 0)
	if n > 0 {
		return fmt.Errorf("%s: the file reports size 0 but has bytes (its file system makes them as they "+
			"are read), so it cannot be mapped (mmap(2) refuses it too): copy it to a regular file first", name)
	}
	if err != nil && err != io.EOF {
		return fmt.Errorf("%s: the file reports size 0; reading its first byte to tell whether it is empty: %w", name, err)
	}
	return nil
}

// pseudoFS names the file systems whose files are made as they are read,
// and whose sizes therefore say nothing of their contents, or "".
func pseudoFS(fsType int64) string {
	switch uint32(fsType) {
	case unix.PROC_SUPER_MAGIC:
		return "procfs"
	case unix.SYSFS_MAGIC:
		return "sysfs"
	case unix.DEBUGFS_MAGIC:
		return "debugfs"
	case unix.TRACEFS_MAGIC:
		return "tracefs"
	case unix.SECURITYFS_MAGIC:
		return "securityfs"
	case 0x62656570: // CONFIGFS_MAGIC
		return "configfs"
	case unix.CGROUP_SUPER_MAGIC, unix.CGROUP2_SUPER_MAGIC:
		return "cgroupfs"
	case unix.BPF_FS_MAGIC:
		return "bpffs"
	case unix.SELINUX_MAGIC:
		return "selinuxfs"
	case unix.SMACK_MAGIC:
		return "smackfs"
	}
	return ""
}

func openDirect(f *os.File) *os.File {
	d, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), os.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	return d
}

// dioAlign is the alignment O_DIRECT needs of offsets, lengths and buffers
// on every file system filemap meets: a page.
const dioAlign = 4096

// ReadAt reads from the file with pread(2). A read that ends before the size
// pinned at open means the file shrank under us: that is an error, not EOF.
func (s *File) ReadAt(p []byte, off int64) (int, error) {
	f := s.f
	if s.direct != nil && len(p) > 0 && off%dioAlign == 0 && len(p)%dioAlign == 0 &&
		uintptr(unsafe.Pointer(&p[0]))%dioAlign == 0 {
		f = s.direct
	}
	n, err := f.ReadAt(p, off)
	if err != nil && f == s.direct && errors.Is(err, syscall.EINVAL) {
		n, err = s.f.ReadAt(p, off) // a file system that takes O_DIRECT at open but not here
	}
	if err != nil && err != io.EOF {
		return n, fmt.Errorf("%s: read %d bytes at offset %d: %w", s.name, len(p), off, err)
	}
	return n, err
}

func (s *File) Size() int64 { return s.size }

func (s *File) Key() string { return fmt.Sprintf("file:%d:%d", s.dev, s.ino) }

func (s *File) Version() string { return fmt.Sprintf("%d@%d", s.size, s.mtimeNs) }

// Name is the path the client gave.
func (s *File) Name() string { return s.name }

func (s *File) Close() error {
	if s.direct != nil {
		s.direct.Close()
	}
	return s.f.Close()
}
