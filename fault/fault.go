// Package fault is filemap's filemap_fault: it resolves a MISSING fault that a
// client's userfaultfd reported on a region mapping an object's cache.
//
// The steps are the kernel's. Look the page up. Uptodate (the fault raced a
// fill that has finished): wake the faulter. In flight: wait for that fill,
// the page lock, then wake. A miss: read the read-around window from the
// store, write it into the memfd, wake. A failed read of the faulting page is
// retried a few times with backoff, then that page alone is poisoned, so the
// faulter gets SIGBUS at its address; a failure in the rest of the window
// never poisons anything. Waking a faulter does not map the page: the woken
// access runs again, finds the page in the memfd and the kernel maps it.
//
// A fault has one bound on its time, Config.Timeout: its reads, whatever
// retries the store makes below them, and its own retries all stop at its
// deadline, and the faulter gets SIGBUS. The window's reads get half the
// time, so that the faulting page is still read alone in time when another
// page of the window hangs (gVisor's Translate(required, optional): only
// the required page may fail the fault).
//
// The read buffers of all fills together are bounded (Config.ReadBuffers):
// they are most of the daemon's heap. A fill reads its pages a bounded
// piece at a time; readahead waits for buffers first, a fault's own read
// never waits for buffers that readahead holds, and a readahead fill that a
// fault waits for is moved ahead. A fill of a store that lends its own
// bytes (a remote store's fetched chunks) takes no buffer: that store
// bounds what it holds. Readahead reads of local files in flight
// are bounded too (queue.go): a fault's own read goes to the disk at once,
// and finds at most that much of a scan's readahead queued ahead of it.
//
// Lock order: a Region's raMu is taken under the cache's lock
// (pagecache.Cache.mu), by the window callback of Begin; the locks of the
// fill buffers and the disk queue are innermost. The whole order is in
// package server's documentation.
package fault

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/filemap/filemap/pagecache"
	"github.com/filemap/filemap/readahead"
	"github.com/filemap/filemap/reclaim"
	"github.com/filemap/filemap/store"
	"github.com/filemap/filemap/uffd"
	"golang.org/x/sys/unix"
)

const ps = pagecache.PageSize

// File is an object as the fault path sees it: its cache and its store.
type File struct {
	Cache *pagecache.Cache
	Store store.Store
}

// Target is the userfaultfd through which a region's faults are resolved.
type Target interface {
	Wake(start, length uintptr) error
	Poison(start, length uintptr, mode uint64) (uintptr, error)
}

// Region is one contiguous range of a client's memory that maps an object's
// cache: the user-space vm_area_struct.
type Region struct {
	File   *File
	Addr   uintptr // first byte of the range in the client
	PgOff  int64   // object page mapped at Addr
	NPages int64
	Target Target

	advice atomic.Uint32 // readahead.Advice
	raMu   sync.Mutex
	ra     readahead.Streams // file_ra_state, a few streams of it; protected by raMu
}

// Advice is the region's current access advice.
func (r *Region) Advice() readahead.Advice { return readahead.Advice(r.advice.Load()) }

// SetAdvice changes the advice that later misses follow.
func (r *Region) SetAdvice(a readahead.Advice) { r.advice.Store(uint32(a)) }

// hit records a fault served without a read of its own (mmap_miss--).
func (r *Region) hit() {
	r.raMu.Lock()
	r.ra.Hit()
	r.raMu.Unlock()
}

// Contains reports whether addr lies in the region.
func (r *Region) Contains(addr uintptr) bool {
	return addr >= r.Addr && addr < r.Addr+uintptr(r.NPages)*ps
}

// Page is the object page that addr maps.
func (r *Region) Page(addr uintptr) int64 { return r.PgOff + int64(addr-r.Addr)/ps }

// wake wakes the faulters of object pages [start, end) in this region.
func (r *Region) wake(start, end int64) error {
	start, end = max(start, r.PgOff), min(end, r.PgOff+r.NPages)
	if start >= end {
		return nil
	}
	addr := r.Addr + uintptr(start-r.PgOff)*ps
	return r.Target.Wake(addr, uintptr(end-start)*ps)
}

// Counters are the fault path's statistics.
type Counters struct {
	Major         atomic.Uint64 // faults that needed store I/O (VM_FAULT_MAJOR)
	Minor         atomic.Uint64 // faults served from the cache or by another fault's read
	Sigbus        atomic.Uint64 // pages poisoned
	StoreReads    atomic.Uint64
	StoreBytes    atomic.Uint64
	StoreErrors   atomic.Uint64
	FillsInFlight atomic.Int64 // claimed and not ended, those waiting for a buffer included
}

// Observer is told how long faults and store reads take. Metrics implement
// it; the fault path does not care how they are kept.
type Observer interface {
	Fault(kind string, d time.Duration)              // "major", "minor" or "marker"
	StoreRead(d time.Duration, bytes int, err error) // one ReadAt of a store
	Readahead(pages int64)                           // an async window issued
	Changed(object string)                           // a fill failed: the object changed since Open
}

type nopObserver struct{}

func (nopObserver) Fault(string, time.Duration)         {}
func (nopObserver) StoreRead(time.Duration, int, error) {}
func (nopObserver) Readahead(int64)                     {}
func (nopObserver) Changed(string)                      {}

// Config tunes the fault path. NewHandler gives every field its default,
// so that the daemon and the Firecracker handler default alike.
type Config struct {
	ReadaheadPages    int64 // read-around window in pages (readahead.DefaultPages if 0)
	ReadaheadMaxPages int64 // largest async window of a sequential stream (readahead.DefaultMaxPages if 0)

	// Retries is how many times a failing faulting page is read again
	// before SIGBUS, for stores that do not retry themselves:
	// DefaultRetries if 0, none if negative. The first retry waits
	// RetryBackoff (DefaultRetryBackoff if 0), each later one twice as long.
	Retries      int
	RetryBackoff time.Duration

	// Timeout bounds a fault from its message to its page or its SIGBUS,
	// retries included, and a readahead fill's reads from its start (see
	// the package comment). DefaultTimeout if 0; none if negative.
	Timeout time.Duration
	Log     *slog.Logger
	// Budget is where written pages are accounted and evicted (no limit if
	// nil). No readahead window is larger than an eighth of it, whatever a
	// store asks: a window that is a large share of the budget evicts what
	// the reader is about to use.
	Budget   *reclaim.Budget
	Observer Observer // latencies; none if nil

	// ReadBuffers bounds the read buffers of all fills in flight together,
	// idle ones kept for reuse included: the bulk of the daemon's heap (the
	// cache's pages live in memfds, outside it). DefaultReadBuffers of the
	// budget if 0 or less; at least two pages. A quarter of it is kept for
	// faults' own reads: readahead waits for buffers before they do. Fills
	// of a store that lends its bytes (store.Viewer) take a buffer only
	// when it declines to.
	ReadBuffers int64

	// ReadaheadInflight bounds the bytes of readahead reads in flight to
	// local files, all of them together (diskQueue), so that a fault's own
	// read finds the disk's queue short. DefaultReadaheadInflight if 0; no
	// bound if negative. Stores that ask for a window of their own
	// (store.Readaheader: network stores) keep their own requests in
	// flight and are not bounded here.
	ReadaheadInflight int64
}

// DefaultRetries and DefaultRetryBackoff are the retries of a failing
// faulting page unless told otherwise: three, waiting 10, 20 and 40 ms.
const (
	DefaultRetries      = 3
	DefaultRetryBackoff = 10 * time.Millisecond
)

// DefaultTimeout is a fault's bound unless told otherwise: two minutes,
// after which the kernel reports a task blocked in a system call as hung
// (hung_task_timeout_secs). It is long enough for a server that is slow or
// failing over to answer, and for a remote store's full set of tries of a
// request (five of up to 10 s, with backoff); short enough that a program
// whose store is gone gets SIGBUS, an error it can handle, rather than
// hanging with no word of why.
const DefaultTimeout = 2 * time.Minute

// NewBudget makes the budget of a daemon's caches: cacheBytes of them,
// rounded down to pages but at least one (0 is no limit), evicted under
// policy (reclaim.S3FIFO if empty).
func NewBudget(cacheBytes int64, policy reclaim.Policy) (*reclaim.Budget, error) {
	if err := policy.Check(); err != nil {
		return nil, err
	}
	pages := cacheBytes / ps
	if cacheBytes > 0 {
		pages = max(pages, 1)
	}
	return reclaim.New(pages, policy), nil
}

// DefaultReadaheadInflight is two of a fill's pieces: a disk keeps
// streaming while one is written into the cache, and a fault's read waits
// behind at most this much of it.
const DefaultReadaheadInflight = 2 * chunkPages * ps

// DefaultReadBuffers is the bound on read buffers for a cache budget of
// budget bytes (0: none): a quarter of the budget, so that the daemon's
// heap, twice its live bytes under the garbage collector's default pacing,
// stays within half the budget; at least 4 MiB, enough for a few sequential
// streams' windows in flight, and at most 64 MiB, more than a disk or a
// network link needs in flight.
func DefaultReadBuffers(budget int64) int64 {
	const lo, hi = 4 << 20, 64 << 20
	if budget <= 0 {
		return hi
	}
	return min(max(budget/4, lo), hi)
}

// Handler resolves faults. It is safe for concurrent use.
type Handler struct {
	cfg     Config
	ra      readahead.Config
	raLimit int64 // no window larger, whatever a store asks: a share of the budget; none if 0
	c       *Counters
	mem     *fillMem
	disk    *diskQueue // nil: readahead of local files is not bounded
}

// chunkPages bounds one fill of a readahead window, and one store read of
// any fill: a large readahead window is read as several fills, so the
// faults waiting at its start are woken before its end has arrived, and a
// large fill is read in pieces of at most this, so that it never needs a
// window-sized buffer. Pieces above a remote store's SmallRead keep
// readahead from passing for demand reads there.
const chunkPages = 256

// NewHandler makes a fault path that counts into c.
func NewHandler(cfg Config, c *Counters) *Handler {
	if cfg.ReadaheadPages <= 0 {
		cfg.ReadaheadPages = readahead.DefaultPages
	}
	if cfg.ReadaheadMaxPages <= 0 {
		cfg.ReadaheadMaxPages = max(cfg.ReadaheadPages, readahead.DefaultMaxPages)
	}
	switch {
	case cfg.Retries == 0:
		cfg.Retries = DefaultRetries
	case cfg.Retries < 0:
		cfg.Retries = 0
	}
	if cfg.RetryBackoff == 0 {
		cfg.RetryBackoff = DefaultRetryBackoff
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Budget == nil {
		cfg.Budget = reclaim.New(0, "")
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	if cfg.ReadBuffers <= 0 {
		cfg.ReadBuffers = DefaultReadBuffers(cfg.Budget.Stats().BudgetPages * ps)
	}
	if cfg.ReadaheadInflight == 0 {
		cfg.ReadaheadInflight = DefaultReadaheadInflight
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	h := &Handler{cfg: cfg, ra: readahead.Config{ReadaheadPages: cfg.ReadaheadPages, ReadaheadMaxPages: cfg.ReadaheadMaxPages}, c: c,
		raLimit: cfg.Budget.Stats().BudgetPages / 8, mem: newFillMem(cfg.ReadBuffers)}
	if cfg.ReadaheadInflight > 0 {
		h.disk = newDiskQueue(cfg.ReadaheadInflight)
	}
	return h
}

// FillMemStats is the state of the bound on read buffers.
type FillMemStats struct {
	Lent  int64  // bytes lent to fills now
	Idle  int64  // bytes kept for reuse
	Limit int64  // the bound on both together (Config.ReadBuffers)
	Waits uint64 // fills that had to wait for a buffer
}

// DiskQueueStats is the state of the bound on readahead reads in flight to
// local files.
type DiskQueueStats struct {
	Inflight int64  // bytes of reads in flight, faults' own included
	Limit    int64  // the bound on readahead's (Config.ReadaheadInflight); 0: none
	Waits    uint64 // readahead reads that waited for room
}

// DiskQueue reports the state of the bound on readahead reads in flight.
func (h *Handler) DiskQueue() DiskQueueStats {
	if h.disk == nil {
		return DiskQueueStats{}
	}
	inflight, waits := h.disk.stats()
	return DiskQueueStats{Inflight: inflight, Limit: h.disk.limit, Waits: waits}
}

// FillMemory reports the state of the bound on read buffers.
func (h *Handler) FillMemory() FillMemStats {
	lent, idle, _, waits := h.mem.stats()
	return FillMemStats{Lent: lent, Idle: idle, Limit: h.mem.limit, Waits: waits}
}

// WaitFill waits for fill f of o's cache to end, promoting it first, if
// it is a readahead fill still waiting for a buffer, for the cache file or
// for its store, to the precedence of a fault's own read: whoever waits
// for f is a faulter.
func (h *Handler) WaitFill(o *File, f *pagecache.Fill) { h.waitFill(context.Background(), o, f) }

// waitFill is WaitFill, giving up when ctx, the faulter's, is done; it
// says whether f ended.
func (h *Handler) waitFill(ctx context.Context, o *File, f *pagecache.Fill) bool {
	done := f.Wait() // and its reads and writes go before readahead's
	h.mem.promote(f)
	if h.disk != nil {
		h.disk.promote(f)
	}
	if p, ok := o.Store.(store.Promoter); ok && f.Page < 0 {
		// Its bytes may be in a request of a whole readahead window's.
		p.Promote(f.Start*ps, int((f.End-f.Start)*ps))
	}
	select {
	case <-done:
		return true
	case <-ctx.Done():
		return false
	}
}

// diskOf is the queue that bounds o's readahead reads, or nil.
func (h *Handler) diskOf(o *File) *diskQueue {
	if _, ok := o.Store.(store.Readaheader); ok {
		return nil
	}
	return h.disk
}

// Fault handles one fault message at addr in region r. It never blocks on
// I/O: an uptodate page is woken at once, anything else goes to a goroutine
// started with spawn, which the caller uses to know when no more work refers
// to r's userfaultfd.
func (h *Handler) Fault(r *Region, addr uintptr, spawn func(func())) {
	page := r.Page(addr)
	if page >= r.File.Cache.NPages() {
		// The kernel sends SIGBUS past the memfd's end before userfaultfd
		// sees the fault; only a lying client gets here.
		h.poison(r, page, fmt.Errorf("page %d is past the end of %s", page, r.File.Cache.Name()))
		return
	}
	start := time.Now()
	if s, _ := r.File.Cache.Lookup(page); s == pagecache.Uptodate {
		h.c.Minor.Add(1)
		r.hit()
		h.wake(r, page, page+1)
		h.cfg.Observer.Fault("minor", time.Since(start))
		return
	}
	spawn(func() { h.resolve(r, page, start) })
}

// raOf is the readahead configuration for o: the handler's, with a larger
// maximum window if o's store asks for one, as a block device's queue sets
// its bdi's ra_pages (a network store needs more in flight than a disk).
func (h *Handler) raOf(o *File) readahead.Config {
	ra := h.ra
	if s, ok := o.Store.(store.Readaheader); ok {
		if n := s.ReadaheadBytes() / ps; n > ra.ReadaheadMaxPages {
			// A network store: its windows are far larger, and each
			// step up to them waits a round trip.
			ra.ReadaheadMaxPages, ra.Ramp = n, storeRamp
		}
	}
	if h.raLimit > 0 {
		ra.ReadaheadMaxPages = min(ra.ReadaheadMaxPages, h.raLimit)
	}
	return ra
}

// storeRamp is how many times each window of a sequential stream is the
// one before it, for a store that asks for a larger readahead than the
// daemon's (store.Readaheader): from 128 KiB to 256 MiB in four windows.
const storeRamp = 8

// resolve is the slow part of a fault: wait for or start the read. A fault
// is counted before its faulter is woken, so counters never lag behind
// what a client has seen.
func (h *Handler) resolve(r *Region, page int64, start time.Time) {
	cache := r.File.Cache
	kind := "minor"
	defer func() { h.cfg.Observer.Fault(kind, time.Since(start)) }()
	ctx, cancel := h.deadline(start)
	defer cancel() // what its reads started and left running, nobody waits for now
	for {
		var w readahead.Window
		around := page &^ (readahead.FaultAroundPages - 1)
		neighbours := cache.CountUptodate(around, around+readahead.FaultAroundPages)
		s, f := cache.Begin(page, func() (int64, int64) {
			r.raMu.Lock()
			defer r.raMu.Unlock()
			r.ra.Mapped(neighbours)
			w = r.ra.Miss(h.raOf(r.File), page, cache.NPages(), r.Advice())
			return w.Start, w.End
		})
		switch s {
		case pagecache.Uptodate:
			h.c.Minor.Add(1)
			r.hit()
			h.wake(r, page, page+1)
			return
		case pagecache.InFlight:
			if !h.waitFill(ctx, r.File, f) {
				h.poison(r, page, fmt.Errorf("%s page %d (offset %d): still being read, by a fill of pages [%d, %d), at the fault timeout (%v)",
					cache.Name(), page, page*ps, f.Start, f.End, h.cfg.Timeout))
				return
			}
			if f.Uptodate(page) {
				h.c.Minor.Add(1)
				r.hit()
				h.wake(r, page, page+1)
				return
			}
			if f.Page == page && f.Err() != nil {
				// That fill already retried this very page, and its owner
				// poisons it. Only the owner does: a waiter may be a stale
				// duplicate whose faulter has moved on (and cleared the
				// poison), so it just lets the access run again.
				h.c.Minor.Add(1)
				h.wake(r, page, page+1)
				return
			}
			// Our page was only readahead for a fill that failed, or it is
			// now a marker: look again.
		case pagecache.Marker:
			kind = "marker"
			h.c.Minor.Add(1)
			h.markerHit(r, f)
			return
		default:
			kind = "major"
			h.c.Major.Add(1)
			refault := h.cfg.Budget.Refault(cache, page)
			h.c.FillsInFlight.Add(1)
			h.fill(ctx, r.File, f, h.buffer(r.File, f), w.Marker, refault)
			if f.Uptodate(page) {
				h.wake(r, f.Start, f.End)
			} else {
				h.poison(r, page, f.Err())
			}
			return
		}
	}
}

// deadline is the context of the reads for a fault, or a readahead fill,
// that began at start: it ends Timeout after start.
func (h *Handler) deadline(start time.Time) (context.Context, context.CancelFunc) {
	if h.cfg.Timeout < 0 {
		return context.WithCancel(context.Background())
	}
	return context.WithDeadline(context.Background(), start.Add(h.cfg.Timeout))
}

// markerHit serves a marker from its held bytes, wakes the faulter, and
// reads the next window in the background: the faulter does not wait for
// that I/O.
func (h *Handler) markerHit(r *Region, f *pagecache.Fill) {
	cache := r.File.Cache
	ra := h.raOf(r.File)
	// How far the marker's window reaches: counted before r.raMu is
	// taken, which the cache's lock goes before.
	ahead := cache.NextMiss(f.Page+1, f.Page+1+ra.ReadaheadMaxPages) - f.Page - 1
	r.raMu.Lock()
	r.ra.Hit()
	w, ok := r.ra.MarkerHit(ra, f.Page, cache.NPages(), func() int64 { return ahead })
	r.raMu.Unlock()
	if ok {
		// Claim the next window before the marker's bytes are in the
		// cache, as the kernel has the pages in its cache, locked, before
		// the fault returns: no faulter runs on before the window is
		// claimed, so a reader that reaches it waits for its read instead
		// of starting one of its own. Once written, the marker is mapped
		// with no message by any access that runs again: this faulter's,
		// when a signal (Go's preemption, every 10 ms) interrupts its
		// wait.
		h.readAhead(r.File, w)
	}
	h.cfg.Budget.Reserve(1)
	if err := cache.WritePagesUrgent(f.Page, f.Held()); err != nil {
		h.cfg.Budget.Release(1)
		h.cfg.Log.Error("cannot fill the cache", "object", cache.Name(), "err", err)
		cache.End(f, 0, 0, err)
		h.poison(r, f.Page, err)
		return
	}
	cache.End(f, f.Page, f.Page+1, nil)
	h.cfg.Budget.Commit(cache, f.Page, f.Page+1, 1, 1, false)
	h.wake(r, f.Page, f.Page+1)
}

// readAhead claims the absent pages of w at once and reads them in the
// background, a chunk per fill, holding back w's marker. A fill starts when
// it has its buffer: a fill waiting for one costs no goroutine, however
// large a window MADV_WILLNEED asks for. (A fault that finds a fill claimed
// here before it waits for a buffer cannot promote it, and waits for its
// turn: a buffer always comes, as every buffer lent is given back.) A fill
// of a store that lends its own bytes starts at once (see buffer).
//
// Each fill's reads end Timeout after it starts; what the store started
// for the window (see prefetch) ends when the last of its fills does.
func (h *Handler) readAhead(o *File, w readahead.Window) {
	h.cfg.Observer.Readahead(w.Len())
	// Fills end on chunkPages boundaries, so that none straddles two of a
	// remote store's chunks (a multiple of it) and waits for both.
	var fills []*pagecache.Fill
	for lo, hi := w.Start, int64(0); lo < w.End; lo = hi {
		hi = min((lo/chunkPages+1)*chunkPages, w.End)
		fills = append(fills, o.Cache.Claim(lo, hi)...)
	}
	if len(fills) == 0 {
		return
	}
	window, filled := untilAll(len(fills))
	h.prefetch(window, o, fills)
	for _, f := range fills {
		h.c.FillsInFlight.Add(1)
		start := func(b *fillBuf) {
			go func() {
				ctx, cancel := h.deadline(time.Now())
				h.fill(ctx, o, f, b, w.Marker, false)
				cancel()
				filled()
			}()
		}
		if lends(o) {
			start(h.buffer(o, f))
			continue
		}
		h.mem.get(f, h.piecePages(f), false, func(b *[]byte) { start(&fillBuf{h: h, f: f, b: b}) })
	}
}

// lends says whether o's store lends its own bytes to a fill
// (store.Viewer): a remote store, whose fetched chunk a fill writes into
// the cache with no copy.
func lends(o *File) bool {
	_, ok := o.Store.(store.Viewer)
	return ok
}

// fillBuf is the read buffer of fill f: lent by the bound on read buffers
// at the start, or, for a store that lends its own bytes, only if the store
// declines to (a chunk some of whose pages failed), for the pieces read
// after that. The bytes a remote store holds for its fetches are bounded
// by the store; counting them against the read buffers too would stall a
// remote stream's readahead at a fraction of the requests it keeps in
// flight.
type fillBuf struct {
	h *Handler
	f *pagecache.Fill
	b *[]byte // nil until needed
}

// buffer is fill f's buffer: lent now, a fault's own read going before
// readahead, unless o's store lends its bytes.
func (h *Handler) buffer(o *File, f *pagecache.Fill) *fillBuf {
	b := &fillBuf{h: h, f: f}
	if !lends(o) {
		b.b = h.mem.wait(f, h.piecePages(f), f.Page >= 0)
	}
	return b
}

// bytes is the buffer, waited for now if the fill has none yet.
func (b *fillBuf) bytes() []byte {
	if b.b == nil {
		b.b = b.h.mem.wait(b.f, b.h.piecePages(b.f), b.f.Page >= 0 || b.f.Waited())
	}
	return *b.b
}

// put gives the buffer back, if the fill had one.
func (b *fillBuf) put() {
	if b.b != nil {
		b.h.mem.put(b.b)
		b.b = nil
	}
}

// untilAll returns a context that ends once done has been called n times.
func untilAll(n int) (ctx context.Context, done func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var left atomic.Int64
	left.Store(int64(n))
	return ctx, func() {
		if left.Add(-1) == 0 {
			cancel()
		}
	}
}

// prefetch tells a store that plans requests for a window at once
// (store.Prefetcher) what the fills of one are about to read; its requests
// end with ctx.
func (h *Handler) prefetch(ctx context.Context, o *File, fills []*pagecache.Fill) {
	p, ok := o.Store.(store.Prefetcher)
	if !ok || len(fills) < 2 {
		return
	}
	ranges := make([][2]int64, len(fills))
	for i, f := range fills {
		ranges[i] = [2]int64{f.Start * ps, f.End * ps}
	}
	p.Prefetch(ctx, ranges)
}

// piecePages is how many pages of f one store read reads.
func (h *Handler) piecePages(f *pagecache.Fill) int64 {
	return h.mem.piecePages(f.End-f.Start, chunkPages, f.Page >= 0)
}

// fill reads the pages f claimed into the cache with the buffer b, a piece
// at a time, holds back marker if it is among them, gives b back and ends
// the fill; its reads end with ctx. For a fault's fill the faulting page
// decides the outcome: its piece is read first, and if that read fails, the
// pages read before the failure are kept only when they include the
// faulting page; otherwise the faulting page is read alone, with retries.
// The window's pieces get half of the fault's time, the faulting page read
// alone the rest. A failure in another piece keeps what was written. A
// readahead fill keeps what it read. refault says the fault missed a page
// evicted recently.
func (h *Handler) fill(ctx context.Context, o *File, f *pagecache.Fill, b *fillBuf, marker int64, refault bool) {
	defer h.c.FillsInFlight.Add(-1)
	x := &filling{h: h, o: o, f: f, marker: marker, refault: refault}
	pcs := pieces(f, h.piecePages(f))
	wctx, cancel := ctx, context.CancelFunc(func() {})
	if d, ok := ctx.Deadline(); ok && f.Page >= 0 && f.End-f.Start > 1 {
		wctx, cancel = context.WithTimeout(ctx, time.Until(d)/2)
	}
	err := x.readPieces(wctx, pcs, b)
	defer cancel()
	b.put()
	writeFailed := errors.As(err, new(writeError)) // logged already
	switch {
	case err == nil:
	case x.lo < x.hi || f.Page < 0:
		// What the failure cut off was readahead.
		if !writeFailed {
			h.cfg.Log.Debug("readahead failed", "object", o.Cache.Name(), "offset", f.Start*ps, "err", err)
		}
	case writeFailed:
		x.end(err)
		return
	default:
		// Read the faulting page alone: the window's failure may have been
		// another page's. Not when the window's read began at the faulting
		// page (so that page failed) within the window's time, and its store
		// retried it already: it was tried as often as it is to be.
		own := pcs[0][0] == f.Page && store.IsRetried(err) && wctx.Err() == nil
		h.retry(ctx, x, err, pcs[0][1]-pcs[0][0] > 1 && !own)
		return
	}
	x.end(nil)
}

// filling is a fill's progress: the run of pages [lo, hi) written into the
// cache so far, all but the marker if held.
type filling struct {
	h       *Handler
	o       *File
	f       *pagecache.Fill
	marker  int64 // the window's marker, held back if this fill reads it
	refault bool
	lo, hi  int64
	held    bool
}

// writeError is a failure to write pages read into the cache file, which
// no read again cures.
type writeError struct{ error }

func (e writeError) Unwrap() error { return e.error }

// pieces splits f's pages into pieces of at most piece pages, aligned on
// f.Start, in the order they are read: the faulting page's, those after
// it, then those before it, backwards. So the pages written are always one
// run, around the faulting page.
func pieces(f *pagecache.Fill, piece int64) [][2]int64 {
	first := f.Start
	if f.Page >= 0 {
		first += (f.Page - f.Start) / piece * piece
	}
	var pcs [][2]int64
	for lo := first; lo < f.End; lo += piece {
		pcs = append(pcs, [2]int64{lo, min(lo+piece, f.End)})
	}
	for hi := first; hi > f.Start; hi -= piece {
		pcs = append(pcs, [2]int64{hi - piece, hi})
	}
	return pcs
}

// readPieces reads the pieces pcs into buf and writes each into the cache
// as it arrives, until one fails. Of a piece whose read failed, the pages
// read before the failure are written if they extend the run.
func (x *filling) readPieces(ctx context.Context, pcs [][2]int64, buf *fillBuf) error {
	disk := x.h.diskOf(x.o)
	for _, p := range pcs {
		lo, hi := p[0], p[1]
		n := (hi - lo) * ps
		if disk != nil {
			disk.start(x.f, n)
		}
		data, got, release, err := x.h.readView(ctx, x.o, func() []byte { return buf.bytes()[:n] }, n, lo)
		if disk != nil {
			disk.done(n)
		}
		k := hi - lo
		if err != nil {
			k = int64(got / ps)
		}
		if x.extends(lo, lo+k) {
			if werr := x.write(lo, lo+k, data); werr != nil {
				release()
				return werr
			}
		}
		release()
		if err != nil {
			return err
		}
	}
	return nil
}

// extends reports whether pages [lo, hi) may be added to the run: the
// first pages written must include the faulting page, and later ones must
// adjoin the run.
func (x *filling) extends(lo, hi int64) bool {
	if lo >= hi {
		return false
	}
	if x.lo == x.hi {
		return x.f.Page < 0 || (lo <= x.f.Page && x.f.Page < hi)
	}
	return lo == x.hi || hi == x.lo
}

// write puts pages [lo, hi) of buf (which begins at lo) into the cache
// file, except the marker, which the cache holds back, and adds them to
// the run. The space is reserved in the budget first, so residency never
// runs ahead of it.
func (x *filling) write(lo, hi int64, buf []byte) error {
	cache, m := x.o.Cache, x.marker
	hold := lo <= m && m < hi && m != x.f.Page && cache.Hold(x.f, m, buf[(m-lo)*ps:][:ps])
	n := hi - lo
	if hold {
		n--
	}
	x.h.cfg.Budget.Reserve(n)
	write := cache.WritePages
	if lo <= x.f.Page && x.f.Page < hi || x.f.Waited() {
		write = cache.WritePagesUrgent // a faulter waits for these
	}
	var err error
	if hold {
		err = write(lo, buf[:(m-lo)*ps])
		if err == nil {
			err = write(m+1, buf[(m+1-lo)*ps:(hi-lo)*ps])
		}
	} else {
		err = write(lo, buf[:(hi-lo)*ps])
	}
	if err != nil {
		x.h.cfg.Budget.Release(n)
		x.h.cfg.Log.Error("cannot fill the cache", "object", cache.Name(), "err", err)
		return writeError{err}
	}
	if x.lo == x.hi {
		x.lo, x.hi = lo, hi
	}
	x.lo, x.hi, x.held = min(x.lo, lo), max(x.hi, hi), x.held || hold
	return nil
}

// end ends the fill: with the run written, if any, which it then commits
// to the budget; else with err, the faulting page's, if any.
func (x *filling) end(err error) {
	cache, budget := x.o.Cache, x.h.cfg.Budget
	if x.lo == x.hi {
		cache.End(x.f, 0, 0, err)
		return
	}
	cache.End(x.f, x.lo, x.hi, nil)
	if x.held {
		// Two dense runs around the page held back: reclaim counts a huge
		// cache's pages by block, and must know which block lacks it.
		m := x.marker
		budget.Commit(cache, x.lo, m, m-x.lo, m-x.lo, x.refault)
		budget.Commit(cache, m+1, x.hi, x.hi-m-1, x.hi-m-1, x.refault)
		return
	}
	n := x.hi - x.lo
	budget.Commit(cache, x.lo, x.hi, n, n, x.refault)
}

// retry reads the faulting page of x's fill alone, whose read failed with
// err, again (at once if again is set, else after the first backoff) and up
// to Retries times more, then ends the fill. It stops early when ctx, the
// fault's, is done, or the error is one no read again cures: permanent, or
// one the store has retried itself. The window's buffer is back already: a
// page's worth is enough, and no retry holds more.
func (h *Handler) retry(ctx context.Context, x *filling, err error, again bool) {
	o, f := x.o, x.f
	b := h.mem.wait(nil, 1, true)
	one := (*b)[:ps]
	delay := h.cfg.RetryBackoff
	for try := 0; ; try++ {
		if again || try > 0 {
			if _, err = h.read(ctx, o, one, f.Page); err == nil {
				err = x.write(f.Page, f.Page+1, one)
				h.mem.put(b)
				x.end(err)
				return
			}
		}
		if try >= h.cfg.Retries || permanent(err) || store.IsRetried(err) || !sleep(ctx, delay) {
			break
		}
		delay *= 2
	}
	h.mem.put(b)
	if errors.Is(err, store.ErrChanged) {
		h.cfg.Log.Error("object changed since it was opened: SIGBUS for pages not yet cached",
			"object", o.Cache.Name(), "offset", f.Page*ps, "err", err)
		h.cfg.Observer.Changed(o.Cache.Name())
	}
	what := ""
	if ctx.Err() != nil {
		what = fmt.Sprintf(" within the fault timeout (%v)", h.cfg.Timeout)
	}
	x.end(fmt.Errorf("read %s page %d (offset %d)%s: %w", o.Cache.Name(), f.Page, f.Page*ps, what, err))
}

// sleep waits d, or until ctx is done, and says whether it waited d.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// permanent reports a read error that no retry can cure: the object
// changed, or its store said so (access denied, gone).
func permanent(err error) bool {
	return errors.Is(err, store.ErrChanged) || store.IsPermanent(err)
}

// read reads whole pages from page on into buf, within ctx; the part past
// the object's end is zeroed, as the kernel zeroes the tail of the last
// page.
func (h *Handler) read(ctx context.Context, o *File, buf []byte, page int64) (int, error) {
	start := time.Now()
	n, err := store.ReadFullContext(ctx, o.Store, buf, page*ps)
	h.counted(start, n, err)
	if err != nil {
		return n, err
	}
	clear(buf[n:])
	return len(buf), nil
}

// readView reads n bytes of whole pages from page on. When the store can
// lend its own bytes of the pages (store.Viewer: a remote store's fetched
// chunk), data is those, valid until release, and the copy is saved; else
// data is buf(), which is called only then. Either way release must be
// called, once. On an error, got is the bytes read before the failure.
func (h *Handler) readView(ctx context.Context, o *File, buf func() []byte, n int64, page int64) (data []byte, got int, release func(), err error) {
	if v, ok := o.Store.(store.Viewer); ok {
		start := time.Now()
		b, rel, lent, err := v.View(ctx, page*ps, int(n))
		if lent {
			h.counted(start, len(b), err)
			return b, len(b), rel, err
		}
		if err != nil {
			h.counted(start, 0, err)
			return nil, 0, func() {}, err
		}
	}
	data = buf()
	got, err = h.read(ctx, o, data, page)
	return data, got, func() {}, err
}

// counted counts a store read that began at start and read n bytes.
func (h *Handler) counted(start time.Time, n int, err error) {
	h.c.StoreReads.Add(1)
	h.cfg.Observer.StoreRead(time.Since(start), n, err)
	h.c.StoreBytes.Add(uint64(n))
	if err != nil {
		h.c.StoreErrors.Add(1)
	}
}

func (h *Handler) wake(r *Region, start, end int64) {
	if err := r.wake(start, end); err != nil && !gone(err) {
		h.cfg.Log.Warn("UFFDIO_WAKE failed", "object", r.File.Cache.Name(), "page", start, "err", err)
	}
}

// poison makes the faulting access of page get SIGBUS at its address: the
// page's PTE becomes a poison marker and the faulter is woken onto it.
func (h *Handler) poison(r *Region, page int64, cause error) {
	addr := r.Addr + uintptr(page-r.PgOff)*ps
	_, err := r.Target.Poison(addr, ps, uffd.PoisonModeDontWake)
	for try := 0; errors.Is(err, unix.EAGAIN) && try < 100; try++ {
		// A non-cooperative event (REMOVE, UNMAP, REMAP, FORK) is unread;
		// the reader drains it and the ioctl works again.
		time.Sleep(time.Millisecond)
		_, err = r.Target.Poison(addr, ps, uffd.PoisonModeDontWake)
	}
	switch {
	case err == nil:
		// Counted and logged once per page, before the faulter sees it.
		h.c.Sigbus.Add(1)
		h.cfg.Log.Warn("read failed: SIGBUS for the faulting page", "object", r.File.Cache.Name(),
			"offset", page*ps, "addr", fmt.Sprintf("%#x", addr), "err", cause)
		h.wake(r, page, page+1)
	case errors.Is(err, unix.EEXIST):
		h.wake(r, page, page+1) // poisoned already: a duplicate message; wake it onto the marker
	case !gone(err):
		h.cfg.Log.Error("UFFDIO_POISON failed", "object", r.File.Cache.Name(), "addr", fmt.Sprintf("%#x", addr), "err", err)
	}
}

// WillNeed reads the absent pages of [start, end) in the background, as
// MADV_WILLNEED does, with no marker. Faults on those pages meanwhile wait
// for these reads. The range is clamped to the object's pages: readAhead
// claims every fill of its window before it starts any, so a window far
// past the end would hold those fills, and every fault on them, while it
// stepped through nothing.
func (h *Handler) WillNeed(o *File, start, end int64) {
	start, end = max(start, 0), min(end, o.Cache.NPages())
	if start >= end {
		return
	}
	h.readAhead(o, readahead.Window{Start: start, End: end, Marker: -1})
}

// gone reports an error that means the client's memory no longer exists.
func gone(err error) bool {
	return errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT)
}
