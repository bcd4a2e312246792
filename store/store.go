// Package store is filemap's address_space_operations.read_folio: the place an
// object's bytes come from when a page is not in the cache.
//
// A Store is read with ReadAt like an io.ReaderAt, has a fixed Size, and names
// the exact bytes it serves with a Version (a file's size and mtime, an HTTP
// ETag, an S3 VersionId), so that one mapping never mixes two versions.
package store

import (
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

// Prefetcher is a Store that can plan the reads of a readahead window at
// once, before they come one piece at a time: a network store then asks for
// a run of its chunks in one larger request, where reads would have made a
// request per chunk. The ranges are byte ranges within the object, in the
// order the reader wants them. Prefetch must not block; the reads that
// follow find the bytes in flight.
type Prefetcher interface {
	Prefetch(ranges [][2]int64)
}

// Idler is a Store that keeps memory for the reads to come, such as a
// remote store's recently fetched chunks, and can give it back when no
// client has its object open: the reads that would use it come from the
// page cache now, or not at all.
type Idler interface {
	Idle()
}

// Viewer is a Store that can lend its own copy of a range instead of
// copying it into the caller's buffer: a remote store's fetched chunk, which
// the fault path then writes into the page cache with no copy between.
//
// View returns the n bytes at off, which must lie within the object. It
// returns ok false, and no error, when it cannot lend them (they span two
// of its chunks, say): the caller reads them with ReadAt. The bytes must not
// be written, and stay valid until release is called, once.
type Viewer interface {
	View(off int64, n int) (b []byte, release func(), ok bool, err error)
}

// ErrChanged reports that an object no longer has the version pinned at Open.
var ErrChanged = errors.New("object changed since it was opened")

// ReadFull reads exactly len(p) bytes at off, or fewer only when the read
// reaches the store's Size. Any other short read is an error: a store that
// returns less than it promised must never become zero-filled pages.
func ReadFull(s Store, p []byte, off int64) (int, error) {
	want := len(p)
	if end := s.Size(); off+int64(want) > end {
		want = int(max(end-off, 0))
	}
	n := 0
	for n < want {
		m, err := s.ReadAt(p[n:want], off+int64(n))
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
