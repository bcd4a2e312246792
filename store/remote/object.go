// Package remote is filemap's readahead onto the network: it turns an object
// that is read by byte ranges over a network (an HTTP resource, an S3
// object) into a store.Store, fetching aligned chunks with several ranged
// requests in flight, one request per chunk however many faults want it,
// per-request timeouts, retries with backoff and jitter, and hedged requests
// for stragglers. In the kernel it stands where the block layer's request
// queue does under mm/readahead.c.
//
// Lock order: Store.mu comes before its slots' lock; a fetch's race.mu and
// latencies' lock are innermost. The daemon takes Store.mu with its own
// held (an idle object's Idle); the whole order is in package server's
// documentation.
package remote

import (
	"context"
	"errors"
)

// Object is one version of a remote object, read by byte ranges. An
// implementation pins its version when it is opened and must never return
// bytes of another one.
type Object interface {
	// GetRange fills p with the bytes at off of the pinned version: exactly
	// len(p) bytes (off+len(p) never passes Size), or an error. An error
	// that retrying cannot cure (the object changed, access denied, a
	// server that ignores ranges) is wrapped with store.Permanent. An error after
	// some of the bytes arrived (a body cut short, or stalled until ctx
	// ended) may say so with Short: the Store keeps those.
	GetRange(ctx context.Context, p []byte, off int64) error

	Size() int64
	Key() string     // the object without its version, e.g. "s3:ENDPOINT/bucket/key" or a URL
	Version() string // e.g. the ETag, or VersionId where versioning is on
	Close() error
}

// A Primer is an Object that brought some of its bytes when it was
// opened: the request that pinned its version asked for its first bytes,
// which most programs read first, rather than for nothing but its
// attributes. New keeps them as a fetched span of the first chunk, so the
// first read there costs no request of its own.
type Primer interface {
	// Primed returns the bytes at off that came with the Object, once; b
	// is empty if none did.
	Primed() (off int64, b []byte)
}

type shortError struct {
	n   int
	err error
}

func (e shortError) Error() string { return e.err.Error() }
func (e shortError) Unwrap() error { return e.err }

// Short marks err, the failure of a GetRange, as one that came after the
// first n bytes of p had been filled with the object's bytes: a body that
// broke off, or stalled. The Store keeps them and asks again only for the
// rest, starting with the page where the body broke off.
func Short(n int, err error) error {
	if err == nil || n <= 0 {
		return err
	}
	return shortError{n, err}
}

// arrived is how many bytes a failed GetRange brought before err (Short).
func arrived(err error) int {
	var s shortError
	if errors.As(err, &s) {
		return s.n
	}
	return 0
}
