package server

// A store read that never returns — a hard NFS mount whose server is gone,
// a FUSE daemon that is stuck — must not hold its faulters forever. Every
// fault has a deadline (FaultTimeout), which the fault path passes to its
// reads; a remote store's requests end at it, but a read of a file cannot
// be cut short. So a store whose reads may hang is wrapped: a read still
// running at its fault's deadline is abandoned and fails, and the faulting
// page gets SIGBUS, as for any read error, while every other page is
// served. The window around a fault gets half the fault's time (see
// package fault), so the page next to one that hangs is still read alone
// in time.
//
// By default only files on network and FUSE file systems are wrapped, where
// such hangs happen. The wrapper costs every read a goroutine hand-off
// (about 2 µs) and a copy (a 1 MiB read from memory takes 175 µs instead of
// 78); a local disk does not hang short of dying (and then the kernel's own
// mmap hangs too), and remote objects end their requests at the deadline
// themselves. GuardAllStores wraps every store.
//
// A blocking read cannot be cancelled, only abandoned. It runs in a
// goroutine of its own, into a buffer of its own: the caller's buffer goes
// back to the fault path's pool when the read fails, and a read that
// returns after all must never write into it. Abandoned reads are bounded,
// so that a store that hangs every read costs a fixed amount of memory and
// goroutines: a new window that overlaps an abandoned read fails at once,
// and so does a read of the very page that hung; beyond maxHungReads in the
// whole daemon, every read fails at once until some return.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/filemap/filemap/fault"
	"github.com/filemap/filemap/store"
	"golang.org/x/sys/unix"
)

// DefaultFaultTimeout is the bound on a fault's time unless told
// otherwise: fault.DefaultTimeout, which says why.
const DefaultFaultTimeout = fault.DefaultTimeout

// maxHungReads bounds the abandoned reads of the whole daemon: each holds a
// goroutine and a buffer of up to a fill (1 MiB).
const maxHungReads = 64

// ErrStoreTimeout is wrapped by the error of a read that was still running
// at its fault's deadline, or that was not tried because earlier reads are
// hung.
var ErrStoreTimeout = errors.New("store read timed out")

// hangGuard abandons the hung reads of the stores of one server.
type hangGuard struct {
	timeout time.Duration // a read's bound when it has no deadline; 0: reads are not wrapped
	all     bool          // every store, not only those that may hang
	log     *slog.Logger
	hung    atomic.Int64 // abandoned reads still running
	bufs    [40]sync.Pool
}

// newHangGuard guards the stores of a server whose faults have timeout
// (none if 0 or less), all of them or only those that may hang.
func newHangGuard(timeout time.Duration, all bool, log *slog.Logger) *hangGuard {
	return &hangGuard{timeout: max(timeout, 0), all: all, log: log}
}

// HungStoreReads is the number of store reads that outlived their fault's
// deadline and have still not returned.
func (s *Server) HungStoreReads() int64 { return s.hangs.hung.Load() }

// wrap returns st with its reads bounded in time, keeping the optional
// interfaces the fault path looks for. mayHang says st is a file on a
// network or FUSE file system: by default, only those are wrapped.
func (g *hangGuard) wrap(st store.Store, mayHang bool) store.Store {
	if g.timeout <= 0 || !g.all && !mayHang {
		return st
	}
	t := &timedStore{Store: st, g: g}
	if ra, ok := st.(store.Readaheader); ok {
		return &timedReadaheadStore{timedStore: t, ra: ra}
	}
	return t
}

// getBuf lends a buffer of at least n bytes, whole pages, in power-of-two
// classes. Page multiples from Go's allocator are page-aligned, so reads of
// a local file still go O_DIRECT.
func (g *hangGuard) getBuf(n int) *[]byte {
	c := bits.Len64(uint64((n+ps-1)/ps) - 1)
	if b, ok := g.bufs[c].Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, (1<<c)*ps)
	return &b
}

func (g *hangGuard) putBuf(b *[]byte) {
	g.bufs[bits.Len64(uint64(len(*b)/ps)-1)].Put(b)
}

type timedStore struct {
	store.Store
	g *hangGuard

	mu   sync.Mutex
	hung []span // the ranges of abandoned reads still running; protected by mu
}

type timedReadaheadStore struct {
	*timedStore
	ra store.Readaheader
}

func (s *timedReadaheadStore) ReadaheadBytes() int64 { return s.ra.ReadaheadBytes() }

// Idle passes on to the store below (store.Idler).
func (s *timedStore) Idle() {
	if i, ok := s.Store.(store.Idler); ok {
		i.Idle()
	}
}

// span is a byte range [off, end) of a store.
type span struct{ off, end int64 }

// timedRead is one read running in its goroutine.
type timedRead struct {
	mu        sync.Mutex // protects the fields below but done
	n         int
	err       error
	finished  bool // n and err are set; the buffer is no longer written
	abandoned bool // the caller gave up: the goroutine cleans up
	done      chan struct{}
}

// segmentBytes is the most one timed read asks of the store: a larger read
// is made of several, each with a buffer of its own beside the caller's.
// It is the fault path's largest read (a 1 MiB chunk), which it never
// splits: reading a chunk in smaller pieces one after the other halves the
// throughput of O_DIRECT reads measured here (eight 128 KiB reads take
// 2.1 ms where one of 1 MiB takes 0.8-1.4 ms), while the copy from the
// private buffer costs well under a tenth of the read.
const segmentBytes = 1 << 20

// ReadAt is ReadAtContext bounded by the fault timeout: the fault path
// passes its deadline, and nothing else reads a store.
func (s *timedStore) ReadAt(p []byte, off int64) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.g.timeout)
	defer cancel()
	return s.ReadAtContext(ctx, p, off)
}

// ReadAtContext reads p at off, abandoning the read of the store below if
// it is still running when ctx is done.
func (s *timedStore) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return s.Store.ReadAt(p, off)
	}
	if h, ok := s.hungOver(span{off, off + int64(len(p))}); ok {
		return 0, fmt.Errorf("%s: read of %d bytes at offset %d: an earlier read of [%d, %d) ran out of its fault's time and has not returned: %w",
			s.Key(), len(p), off, h.off, h.end, ErrStoreTimeout)
	}
	bp := s.g.getBuf(min(len(p), segmentBytes))
	done := 0
	for done < len(p) {
		seg := p[done:min(len(p), done+segmentBytes)]
		n, abandoned, err := s.readSegment(ctx, seg, off+int64(done), bp)
		done += n
		if abandoned {
			return done, err // the buffer is the abandoned read's now
		}
		if err != nil || n < len(seg) {
			s.g.putBuf(bp)
			return done, err
		}
	}
	s.g.putBuf(bp)
	return done, nil
}

// readSegment reads len(p) bytes at off into p, through the buffer bp in
// a goroutine of its own. If the read outlives ctx it is abandoned, with
// bp, and abandoned is true.
func (s *timedStore) readSegment(ctx context.Context, p []byte, off int64, bp *[]byte) (n int, abandoned bool, err error) {
	sp := span{off, off + int64(len(p))}
	if n := s.g.hung.Load(); n >= maxHungReads {
		return 0, false, fmt.Errorf("%s: read of %d bytes at offset %d not tried: %d store reads ran out of their faults' time and have not returned: %w",
			s.Key(), len(p), off, n, ErrStoreTimeout)
	}
	if err := ctx.Err(); err != nil {
		return 0, false, fmt.Errorf("%s: read of %d bytes at offset %d not started: %w: %w", s.Key(), len(p), off, ErrStoreTimeout, context.Cause(ctx))
	}
	buf := (*bp)[:len(p)]
	r := &timedRead{done: make(chan struct{})}
	go func() {
		n, err := store.ReadAtContext(ctx, s.Store, buf, off) // a store that can stops at the deadline
		r.mu.Lock()
		r.n, r.err, r.finished = n, err, true
		abandoned := r.abandoned
		r.mu.Unlock()
		if !abandoned {
			close(r.done)
			return
		}
		s.mu.Lock()
		for i, h := range s.hung {
			if h == sp {
				s.hung = append(s.hung[:i], s.hung[i+1:]...)
				break
			}
		}
		s.mu.Unlock()
		s.g.hung.Add(-1)
		s.g.putBuf(bp)
		s.g.log.Info("a store read that had timed out returned", "object", s.Key(), "offset", off, "bytes", len(p), "err", err)
	}()
	start := time.Now()
	select {
	case <-r.done:
	case <-ctx.Done():
		r.mu.Lock()
		if !r.finished {
			r.abandoned = true
			s.mu.Lock()
			s.hung = append(s.hung, sp)
			s.mu.Unlock()
			s.g.hung.Add(1)
			r.mu.Unlock()
			waited := time.Since(start).Round(time.Millisecond)
			s.g.log.Warn("store read ran out of its fault's time; abandoning it", "object", s.Key(), "offset", off, "bytes", len(p), "after", waited)
			return 0, true, fmt.Errorf("%s: read of %d bytes at offset %d still running after %v, the fault's time (filemap serve --fault-timeout): %w: %w",
				s.Key(), len(p), off, waited, ErrStoreTimeout, context.Cause(ctx))
		}
		r.mu.Unlock() // it returned just now
	}
	return copy(p, buf[:r.n]), false, r.err
}

// hungOver returns an abandoned read that sp must not wait behind: one that
// sp covers entirely (sp would wait for the same bytes), or any that a
// read of more than a page overlaps (a window around a page that hangs).
// A read of one page that covers only part of one is tried: a window hangs
// for one bad page, and the page next to it, read alone when its fault
// retries, must be served.
func (s *timedStore) hungOver(sp span) (span, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range s.hung {
		overlap := h.off < sp.end && sp.off < h.end
		if overlap && (sp.end-sp.off > ps || sp.off <= h.off && h.end <= sp.end) {
			return h, true
		}
	}
	return span{}, false
}

// mayHang reports whether f is on a file system whose reads wait for
// another machine or another process: network file systems and FUSE.
func mayHang(f *os.File) bool {
	rc, err := f.SyscallConn()
	if err != nil {
		return false
	}
	var sfs unix.Statfs_t
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fstatfs(int(fd), &sfs) }); err != nil || serr != nil {
		return false
	}
	switch uint32(sfs.Type) {
	case unix.NFS_SUPER_MAGIC, unix.SMB_SUPER_MAGIC, unix.SMB2_SUPER_MAGIC, unix.CIFS_SUPER_MAGIC,
		unix.FUSE_SUPER_MAGIC, unix.V9FS_MAGIC, unix.CEPH_SUPER_MAGIC, unix.AFS_SUPER_MAGIC, unix.AFS_FS_MAGIC,
		unix.CODA_SUPER_MAGIC, unix.OCFS2_SUPER_MAGIC, unix.NCP_SUPER_MAGIC,
		0x01161970, // GFS2
		0x0bd00bd0: // Lustre
		return true
	}
	return false
}
