// Package floor is what the benchmarks set a cold sequential read through
// filemap beside: the pread loop, the I/O limit; and what a user-space page
// cache fed by copies cannot go below, filemap's fill path with nothing
// else, no fault, no message, no client. filemap over the fill path says
// what the handler adds, and the fill path over the pread loop what copying
// into new cache pages costs on the machine at hand. (The floor of a
// fault's round trip through a handler is in C, tools/uffdfloor.)
package floor

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// PieceSize and Depth are the fill path's: reads of a fill's 1 MiB piece,
// two in flight (the daemon's default readahead bound).
const (
	PieceSize = 1 << 20
	Depth     = 2
)

// Copy reads the size bytes of the file at path with O_DIRECT, PieceSize
// at a time with Depth reads in flight, and writes each piece into a new
// memfd as it arrives, as the daemon fills its cache. It returns the time
// from the first read to the last write.
func Copy(path string, size int64) (time.Duration, error) {
	src, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT, 0)
	if errors.Is(err, unix.EINVAL) { // a file system without O_DIRECT, as the daemon falls back
		src, err = os.Open(path)
	}
	if err != nil {
		return 0, err
	}
	defer src.Close()
	fd, err := unix.MemfdCreate("filemap-floor", unix.MFD_CLOEXEC)
	if err != nil {
		return 0, fmt.Errorf("memfd_create: %w", err)
	}
	dst := os.NewFile(uintptr(fd), "filemap-floor")
	defer dst.Close()
	if err := dst.Truncate(size); err != nil {
		return 0, err
	}
	type piece struct {
		buf []byte
		off int64
	}
	free, full := make(chan []byte, Depth), make(chan piece, Depth)
	for range Depth {
		free <- make([]byte, PieceSize) // page-aligned, as O_DIRECT wants
	}
	start := time.Now()
	var readErr error
	go func() {
		defer close(full)
		for off := int64(0); off < size; off += PieceSize {
			buf := <-free
			n, err := src.ReadAt(buf, off)
			if err != nil && err != io.EOF {
				readErr = fmt.Errorf("read %s at offset %d: %w", path, off, err)
				return
			}
			full <- piece{buf[:n], off}
		}
	}()
	var writeErr error
	for p := range full {
		if writeErr == nil {
			if _, err := dst.WriteAt(p.buf, p.off); err != nil {
				writeErr = fmt.Errorf("write a memfd at offset %d: %w", p.off, err)
			}
		}
		free <- p.buf[:cap(p.buf)]
	}
	elapsed := time.Since(start)
	if readErr != nil {
		return 0, readErr
	}
	return elapsed, writeErr
}

// Pread reads the size bytes of f into buf, len(buf) bytes a time: the
// pread loop.
func Pread(f *os.File, buf []byte, size int64) error {
	for off := int64(0); off < size; {
		n, err := f.ReadAt(buf[:min(int64(len(buf)), size-off)], off)
		off += int64(n)
		if err != nil && !(err == io.EOF && off == size) {
			return fmt.Errorf("read %s at offset %d: %w", f.Name(), off, err)
		}
	}
	return nil
}
