package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/filemap/filemap"
	"github.com/filemap/filemap/internal/progress"
	"github.com/filemap/filemap/server"
	"github.com/filemap/filemap/store"
)

func cat(args []string) error {
	fs := newFlags("cat", "[flags] URI", "Writes the object's bytes to stdout, read through a mapping: every page\n"+
		"arrives by a real page fault served by the handler. A page that cannot be\n"+
		"read is an error naming its offset, and the exit status is 1.")
	var offset, length byteSize
	fs.Var(&offset, "offset", "first byte to write")
	fs.Var(&length, "length", "bytes to write (0: to the end)")
	socket := fs.String("socket", "", "daemon socket (default $FILEMAP_SOCKET, else a private handler)")
	version := fs.String("object-version", "", "the version to read (default: the current one): an S3 VersionId, old or\n"+
		"current; an ETag, which must be the current one")
	faultTimeout := fs.Duration("fault-timeout", server.DefaultFaultTimeout, "bound on a page's time in the private handler: a page not read by then is an error,\n"+
		"and every request and retry for it stops (0: none; a daemon's is its own --fault-timeout)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return oneArgError(fs, "cat", "URI")
	}
	uri := fs.Arg(0)
	if *faultTimeout < 0 {
		return fmt.Errorf("--fault-timeout %v: must be 0 (none) or more", *faultTimeout)
	}
	m, err := filemap.Open(context.Background(), uri, filemap.WithSocket(*socket), filemap.WithAdvice(filemap.Sequential),
		filemap.WithVersion(*version), filemap.WithFaultTimeout(noLimit(*faultTimeout)))
	if err != nil {
		return err
	}
	defer m.Close()
	b := m.Bytes()
	start := int64(offset)
	if start > int64(len(b)) {
		return fmt.Errorf("%s: offset %d is past the end (size %d)", store.Redact(uri), start, len(b))
	}
	end := int64(len(b))
	if length > 0 {
		end = min(end, start+int64(length))
	}
	var copied atomic.Int64
	defer showCopy(&copied, end-start)()
	return copyThrough(m, os.Stdout, start, end, &copied)
}

// catStep is how much of the mapping one write passes to stdout.
const catStep = 1 << 20

// copyThrough writes the mapping's bytes [start, end) to w, a step at a
// time. Each step's pages are first touched by user-mode loads, so that a
// page which cannot be read raises SIGBUS here, where it becomes an error
// that names its offset, after the bytes before that page are written.
// The step is then written straight from the mapping, with no copy of our
// own: a cat of a remote object through a pipe shares a small machine's
// CPUs with the handler and the network, and a copy of every byte is a
// share of them. Should that write fail with EFAULT (a page dropped since
// and not readable again, or a handler that serves only user-mode
// faults), the rest of the step is copied through a buffer instead. It
// adds what it wrote to copied.
func copyThrough(m *filemap.Mapping, w io.Writer, start, end int64, copied *atomic.Int64) error {
	b := m.Bytes()
	for off := start; off < end; {
		step := b[off:min(end, off+catStep)]
		if err := m.Guard(func() { touchPages(step) }); err != nil {
			return writeBefore(m, w, off, err)
		}
		n, err := w.Write(step)
		if errors.Is(err, syscall.EFAULT) {
			var k int
			k, err = copyOut(m, w, off+int64(n), off+int64(len(step)))
			n += k
		}
		copied.Add(int64(n))
		off += int64(n)
		if err != nil {
			return err
		}
	}
	return nil
}

// touchPages loads a byte of each page of p.
func touchPages(p []byte) {
	var sum byte
	for i := 0; i < len(p); i += pageSize {
		sum += p[i]
	}
	if len(p) > 0 {
		sum += p[len(p)-1]
	}
	runtime.KeepAlive(sum)
}

// copyOut writes the mapping's bytes [off, end) to w through a buffer,
// loading them in user mode, and returns how many it wrote.
func copyOut(m *filemap.Mapping, w io.Writer, off, end int64) (int, error) {
	b := m.Bytes()
	buf := make([]byte, end-off)
	if err := m.Guard(func() { copy(buf, b[off:end]) }); err != nil {
		return 0, writeBefore(m, w, off, err)
	}
	return w.Write(buf)
}

// writeBefore writes, after err, the fault of a load at or after off, the
// bytes from off up to the faulting page, which are mapped now, and
// returns err.
func writeBefore(m *filemap.Mapping, w io.Writer, off int64, err error) error {
	var fe *filemap.FaultError
	if errors.As(err, &fe) && fe.Offset > off {
		good := fe.Offset &^ (pageSize - 1)
		if good > off {
			buf := make([]byte, good-off)
			if m.Guard(func() { copy(buf, m.Bytes()[off:good]) }) == nil {
				w.Write(buf)
			}
		}
	}
	return err
}

// showCopy shows how far a cat has got, every second, on a terminal: a
// large remote object takes minutes. It shows nothing when the bytes go to
// that terminal too, or for a cat shorter than a second. The function it
// returns stops it and erases the line.
func showCopy(copied *atomic.Int64, total int64) (stop func()) {
	if progress.IsTerminal(os.Stdout) || total == 0 {
		return func() {}
	}
	p := progress.New(os.Stderr, "filemap cat: ")
	last, lastAt := int64(0), time.Now()
	stopEvery := p.Every(time.Second, func() string {
		n, now := copied.Load(), time.Now()
		rate := float64(n-last) / now.Sub(lastAt).Seconds() / 1e6
		last, lastAt = n, now
		return fmt.Sprintf("%s of %s (%.0f%%), %.1f MB/s", fmtBytes(n), fmtBytes(total), 100*float64(n)/float64(total), rate)
	})
	return func() {
		stopEvery()
		p.Clear()
	}
}
