// Package store is filemap's address_space_operations.read_folio: the place an
// object's bytes come from when a page is not in the cache.
//
// A Store is read with ReadAt like an io.ReaderAt, has a fixed Size, and names
// the exact bytes it serves with a Version (a file's size and mtime, an HTTP
// ETag, an S3 VersionId), so that one mapping never mixes two versions.
package store

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// Store is one object's backing bytes.
type Store interface {
	io.ReaderAt
	io.Closer

	// Size is the object's length in bytes, fixed when the store was opened.
	Size() int64

	// Key names the object independently of its version: clients whose
	// stores have equal Key and Version share one page cache.
	Key() string

	// Version names the bytes this store serves. It is pinned when the
	// store is opened; a store that finds its object changed must fail
	// reads rather than return bytes of another version.
	Version() string
}

// Readaheader is a Store that knows how much a sequential reader should
// have in flight to keep it busy: the bdi's ra_pages of a block device. A
// network store asks for more than a disk: its bandwidth times its latency.
type Readaheader interface {
	ReadaheadBytes() int64
}

// ContextReader is a Store whose reads can be bounded: ReadAtContext is
// ReadAt, but once ctx is done it makes no more requests or retries and
// returns, with an error wrapping ctx's. The fault path reads through it,
// so that the deadline of a fault bounds everything done for it, however
// many layers retry below. A Store that cannot cut a read short (a local
// file: its reads do not hang short of a dying disk) still starts no read
// once ctx is done.
type ContextReader interface {
	ReadAtContext(ctx context.Context, p []byte, off int64) (int, error)
}

// ReadAtContext reads with s's ReadAtContext if it has one; else, unless
// ctx is done already, with ReadAt, which ctx cannot cut short.
func ReadAtContext(ctx context.Context, s Store, p []byte, off int64) (int, error) {
	if c, ok := s.(ContextReader); ok {
		return c.ReadAtContext(ctx, p, off)
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("%s: read %d bytes at offset %d not started: %w", s.Key(), len(p), off, context.Cause(ctx))
	}
	return s.ReadAt(p, off)
}

// Prefetcher is a Store that can plan the reads of a readahead window at
// once, before they come one piece at a time: a network store then asks for
// a run of its chunks in one larger request, where reads would have made a
// request per chunk. The ranges are byte ranges within the object, in the
// order the reader wants them. Prefetch must not block; the reads that
// follow find the bytes in flight. Its requests end when ctx is done: the
// window's reads have all ended, or run out of time.
type Prefetcher interface {
	Prefetch(ctx context.Context, ranges [][2]int64)
}

// Idler is a Store that keeps memory for the reads to come, such as a
// remote store's recently fetched chunks, and can give it back when no
// client has its object open: the reads that would use it come from the
// page cache now, or not at all.
type Idler interface {
	Idle()
}

// Primed is a Store whose Open brought some of its object's bytes: a
// remote object's first bytes, which the request that pinned its version
// asked for. A daemon that has a store of that version already keeps that
// one, and passes it these bytes (PassPrimed): the page cache it serves
// may have lost them since, and they are the bytes most programs read
// first.
type Primed interface {
	// TakePrimed returns the bytes at off that came with the Open, if
	// the store still holds them; b is empty if not.
	TakePrimed() (off int64, b []byte)
	// Prime keeps b, the object's bytes at off, as if it had read them.
	Prime(off int64, b []byte)
}

// PassPrimed gives to, a store of the same version of the same object, the
// bytes that came with from's Open, if both are Primed.
func PassPrimed(from, to Store) {
	f, ok := from.(Primed)
	t, ok2 := to.(Primed)
	if !ok || !ok2 {
		return
	}
	if off, b := f.TakePrimed(); len(b) > 0 {
		t.Prime(off, b)
	}
}

// Promoter is a Store whose reads in progress can be moved ahead of its
// readahead: a faulter waits for bytes [off, off+n) that a readahead read
// has asked for. Promote must not block.
type Promoter interface {
	Promote(off int64, n int)
}

// Viewer is a Store that can lend its own copy of a range instead of
// copying it into the caller's buffer: a remote store's fetched chunk, which
// the fault path then writes into the page cache with no copy between.
//
// View returns the n bytes at off, which must lie within the object, or
// with an error the bytes before the failure (perhaps none): as ReadAt
// does, bounded by ctx as ReadAtContext is. It returns ok false, and no
// error, when it cannot lend them (they span two of its chunks, say): the
// caller reads them with ReadAt. With ok true, release must be called,
// once; the bytes must not be written, and stay valid until then.
type Viewer interface {
	View(ctx context.Context, off int64, n int) (b []byte, release func(), ok bool, err error)
}

// Retried marks err, the failure of a read, as one the store has retried
// already, as often as it is configured to (a network store's requests):
// the fault path does not read the page again on top of that, which would
// multiply the two layers' retries.
func Retried(err error) error {
	if err == nil || IsRetried(err) {
		return err
	}
	return retriedError{err}
}

// IsRetried reports whether err, or an error it wraps, was marked Retried.
func IsRetried(err error) bool {
	var r retriedError
	return errors.As(err, &r)
}

type retriedError struct{ error }

func (e retriedError) Unwrap() error { return e.error }

// ErrChanged reports that an object no longer has the version pinned at Open.
var ErrChanged = errors.New("object changed since it was opened")

// Permanent marks err, the failure of a read, as one that no retry can
// cure: access denied, the object gone or changed, a server that ignores
// ranges. Neither a store's own retries nor the fault path's read again.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

// IsPermanent reports whether err, or any error it wraps, was marked
// Permanent.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}

type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// ReadFull reads exactly len(p) bytes at off, or fewer only when the read
// reaches the store's Size. Any other short read is an error: a store that
// returns less than it promised must never become zero-filled pages.
func ReadFull(s Store, p []byte, off int64) (int, error) {
	return ReadFullContext(context.Background(), s, p, off)
}

// ReadFullContext is ReadFull, with its reads bounded by ctx
// (ReadAtContext).
func ReadFullContext(ctx context.Context, s Store, p []byte, off int64) (int, error) {
	want := len(p)
	if end := s.Size(); off+int64(want) > end {
		want = int(max(end-off, 0))
	}
	n := 0
	for n < want {
		m, err := ReadAtContext(ctx, s, p[n:want], off+int64(n))
		n += m
		if n >= want {
			break
		}
		if errors.Is(err, io.EOF) {
			return n, fmt.Errorf("%s: short read at offset %d: got %d of %d bytes before EOF (size %d): %w",
				s.Key(), off, n, want, s.Size(), io.ErrUnexpectedEOF)
		}
		if err != nil {
			return n, err
		}
		if m == 0 {
			return n, fmt.Errorf("%s: read at offset %d made no progress: %w", s.Key(), off+int64(n), io.ErrNoProgress)
		}
	}
	return n, nil
}
