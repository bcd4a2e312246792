package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
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
	w := bufio.NewWriterSize(os.Stdout, 1<<20)
	var copied atomic.Int64
	defer showCopy(&copied, end-start)()
	if err := copyThrough(m, w, start, end, &copied); err != nil {
		w.Flush()
		return err
	}
	return w.Flush()
}

// copyThrough writes the mapping's bytes [start, end) to w by user-mode
// loads, so that a page which cannot be read raises SIGBUS here, where it
// becomes an error that names its offset; the bytes before that page are
// written first. It adds what it wrote to copied.
func copyThrough(m *filemap.Mapping, w *bufio.Writer, start, end int64, copied *atomic.Int64) error {
	b := m.Bytes()
	buf := make([]byte, 1<<20)
	for off := start; off < end; {
		var n int
		if err := m.Guard(func() { n = copy(buf, b[off:end]) }); err != nil {
			var fe *filemap.FaultError
			if errors.As(err, &fe) && fe.Offset > off {
				// The copy stopped somewhere in the faulting page; the
				// pages before it are mapped now, and copy again cleanly.
				good := fe.Offset &^ (pageSize - 1)
				if m.Guard(func() { n = copy(buf, b[off:max(off, good)]) }) == nil {
					w.Write(buf[:n])
				}
			}
			return err
		}
		if _, err := w.Write(buf[:n]); err != nil {
			return err
		}
		copied.Add(int64(n))
		off += int64(n)
	}
	return nil
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
