package server

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"sync"
	"syscall"
	"time"

	"github.com/filemap/filemap/proto"
	"github.com/filemap/filemap/store"
	"github.com/filemap/filemap/store/diskcache"
	"github.com/filemap/filemap/store/httpstore"
	"github.com/filemap/filemap/store/remote"
	"github.com/filemap/filemap/store/s3store"
)

// RemoteConfig tunes the objects the daemon fetches itself: http(s):// and
// s3:// URIs. It reads them with its own credentials (for S3, the SDK's
// standard chain in the daemon's environment), on behalf of any client
// that may connect to its socket.
type RemoteConfig struct {
	S3    s3store.Options // endpoint, addressing, region, credentials
	Fetch remote.Config   // chunk size, requests in flight, timeouts, retries, hedging

	// OpenTimeout bounds what Open asks the server (a HEAD, a probe);
	// 30 s if 0.
	OpenTimeout time.Duration

	// DiskCache, if set, is a directory where fetched chunks are kept
	// (store/diskcache), at most DiskCacheBytes of them: a restarted
	// daemon, or a second daemon on the same host after this one, fetches
	// them from disk.
	//
	// The disk cache is optional, and a daemon that does not start stalls
	// every client, local files' included. So a condition of its disk
	// that a crash may leave (full, remounted read-only after errors,
	// failing) does not stop the daemon: a full disk's cache serves what
	// it holds and caches again once there is room, and otherwise the
	// daemon runs without a disk cache; either is logged. What the
	// operator must fix (a path that is not a directory, no permission, a
	// file system that cannot punch holes, a directory another daemon
	// holds, a bad size) is an error.
	DiskCache      string
	DiskCacheBytes int64
}

// Remotes opens remote objects as the daemon reads them: in chunks, with
// retries and hedging, through the disk cache if there is one. One S3
// client and one HTTP client serve every object, so their connections are
// reused across objects. `filemap firecracker` opens its memory file with
// one too.
type Remotes struct {
	cfg     RemoteConfig
	disk    *diskcache.Cache // nil without a disk cache
	diskOff error            // why there is none although one was asked for

	mu   sync.Mutex // protects the fields below
	s3   *s3store.Client
	http *http.Client
}

// NewRemotes makes the opener of remote objects that cfg describes. Its
// clients are made at the first Open of an object that needs them.
func NewRemotes(cfg RemoteConfig, log *slog.Logger) (*Remotes, error) {
	if cfg.OpenTimeout <= 0 {
		cfg.OpenTimeout = 30 * time.Second
	}
	if cfg.S3.Log == nil {
		cfg.S3.Log = log // the SDK's own lines, at debug level
	}
	if cfg.S3.Prime == 0 {
		// Open's request brings what the first fault would fetch.
		cfg.S3.Prime = cfg.Fetch.PrimeBytes()
	}
	r := &Remotes{cfg: cfg}
	if cfg.DiskCache != "" {
		// One disk chunk is one remote request: the same size.
		chunk := cfg.Fetch.ChunkSize
		if chunk <= 0 {
			chunk = remote.DefaultChunkSize
		}
		d, err := diskcache.Open(cfg.DiskCache, cfg.DiskCacheBytes, diskcache.WithChunkSize(chunk), diskcache.WithLogger(log))
		switch {
		case err == nil:
			r.disk = d
		case diskUnavailable(err):
			r.diskOff = err
			log.Error("filemap: the disk cache's file system cannot be used now: running without a disk cache "+
				"(remote objects are fetched, not cached on disk) until a restart finds it usable",
				"dir", cfg.DiskCache, "err", err)
		default:
			return nil, err
		}
	}
	return r, nil
}

// diskUnavailable tells the errors of a disk cache's file system that a
// crash may leave and that pass without a change of configuration: full,
// out of quota, remounted read-only after errors, failing.
func diskUnavailable(err error) bool {
	return diskcache.Full(err) || errors.Is(err, syscall.EROFS) || errors.Is(err, syscall.EIO)
}

// Open pins the object at uri at version, or at its current version if
// version is "", and returns a store of that version's bytes. An S3 object
// opens at any version its bucket keeps (by VersionId); any other is the
// current one, and an error wrapping store.ErrChanged if that is not
// version (an S3 ETag here, else in the caller's check).
func (r *Remotes) Open(ctx context.Context, uri store.URI, version string) (store.Store, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.OpenTimeout)
	defer cancel()
	var obj remote.Object
	switch uri.Scheme {
	case "s3":
		c, err := r.s3Client(ctx)
		if err != nil {
			return nil, err
		}
		o, err := c.OpenVersion(ctx, uri.Raw, version)
		if err != nil {
			return nil, err
		}
		obj = o
	case "http", "https":
		o, err := httpstore.Open(ctx, uri.Raw, httpstore.Options{Client: r.httpClient(), Parallel: r.cfg.Fetch.Parallel})
		if err != nil {
			return nil, err
		}
		obj = o
	default:
		return nil, fmt.Errorf("%s: scheme %s is not a remote store", uri.Name(), uri.Scheme)
	}
	var st store.Store = remote.New(obj, r.cfg.Fetch)
	if r.disk != nil {
		st = r.disk.Wrap(st)
	}
	return st, nil
}

// Reopen opens the object at uri for a cache of its version that is
// mapped already: at that version if the store still has it, else (the
// version replaced, or deleted) at the current one, which the caller pins
// to version, so that the pages the cache holds are served and those it
// lacks get SIGBUS.
func (r *Remotes) Reopen(ctx context.Context, uri store.URI, version string) (store.Store, error) {
	st, err := r.Open(ctx, uri, version)
	if err != nil && version != "" && (errors.Is(err, store.ErrChanged) || errors.Is(err, fs.ErrNotExist)) {
		if cur, cerr := r.Open(ctx, uri, ""); cerr == nil {
			return cur, nil
		}
	}
	return st, err
}

func (r *Remotes) s3Client(ctx context.Context) (*s3store.Client, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.s3 != nil {
		return r.s3, nil
	}
	c, err := s3store.NewClient(ctx, r.cfg.S3)
	if err != nil {
		return nil, err
	}
	r.s3 = c
	return c, nil
}

func (r *Remotes) httpClient() *http.Client {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.http == nil {
		r.http = &http.Client{Transport: httpstore.NewTransport(max(r.cfg.Fetch.Parallel, remote.DefaultParallel))}
	}
	return r.http
}

// DiskStats are the disk cache's counters, nil without one, and why there
// is none if one was asked for ("" otherwise).
func (r *Remotes) DiskStats() (*proto.DiskCacheStats, string) {
	if r.disk == nil {
		if r.diskOff != nil {
			return nil, r.diskOff.Error()
		}
		return nil, ""
	}
	d := r.disk.Stats()
	return &proto.DiskCacheStats{
		Dir: r.disk.Dir(), Hits: d.Hits, MemHits: d.MemHits, Misses: d.Misses,
		BytesRead: d.BytesRead, BytesWritten: d.BytesWritten,
		Corrupt: d.Corrupt, CorruptIndexes: d.CorruptIndexes, WriteErrors: d.WriteErrors,
		Uncached: d.Uncached, Evictions: d.Evictions,
		Bytes: d.BytesOnDisk, MaxBytes: d.MaxBytes, Objects: d.Objects,
	}, ""
}

// Close drops idle connections and closes the disk cache.
func (r *Remotes) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.http != nil {
		r.http.CloseIdleConnections()
	}
	if r.disk != nil {
		r.disk.Close()
	}
}

// refImmutable finds the cache of the version req names of the S3 object
// uri, when that version names bytes that never change (a VersionId, see
// s3store.Immutable) and a client of uid opened it before, and counts a
// reference to it: opening it again needs no HEAD, tens of milliseconds on
// S3 for every process of a fleet that maps a pinned model or image. A
// version's bytes may still have been deleted from the bucket since; the
// pages not cached then get SIGBUS, as they would in the mapping that is
// already open. An open that brought descriptors (fds) is not one to
// serve here.
func (s *Server) refImmutable(uid uint32, uri store.URI, req proto.Open, fds int) *cachedObject {
	if fds != 0 || req.Cache || uri.Scheme != "s3" || !s3store.Immutable(req.Version) {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, o := range s.objects {
		if k.uid == uid && k.adopted == 0 && k.version == req.Version && o.uri == req.URI {
			s.refLocked(o)
			return o
		}
	}
	return nil
}
