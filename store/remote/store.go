package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/filemap/filemap/store"
)

// ErrClosed is the error of reads of a closed Store, and of reads that were
// waiting when it was closed.
var ErrClosed = errors.New("remote store closed")

// Store is a store.Store over an Object. Reads are served from aligned
// chunks, each fetched by one ranged request however many reads want it,
// through a few recently fetched chunks kept in memory, and from the bytes
// that Holds fetched ahead of them.
type Store struct {
	obj    Object
	cfg    Config
	size   int64
	ctx    context.Context // cancelled by Close: every request derives from it
	cancel context.CancelFunc
	wg     sync.WaitGroup // fetch and request goroutines
	slots  *slots
	bufs   *bufPool
	lat    [3]latencies // by sizeClass

	mu     sync.Mutex // protects the fields below, and fetches' fields that say so
	closed bool
	loc    locality           // whether demand reads have neighbours
	chunks map[int64][]*fetch // by chunk index: fetches in flight or cached
	lru    lruList            // cached fetches, most recently used first
	cached int64              // bytes in lru
	primed *fetch             // of the bytes that came with the Object, if any
}

var (
	_ store.Store    = (*Store)(nil)
	_ store.Primed   = (*Store)(nil)
	_ store.Promoter = (*Store)(nil)
)

// New makes a Store of obj. The Store owns obj: Close closes it.
func New(obj Object, cfg Config) *Store {
	ctx, cancel := context.WithCancel(context.Background())
	cfg = cfg.withDefaults()
	s := &Store{
		obj:    obj,
		cfg:    cfg,
		size:   obj.Size(),
		ctx:    ctx,
		cancel: cancel,
		slots:  newSlots(cfg),
		bufs:   newBufPool(cfg.ChunkSize, cfg.MaxRequest),
		chunks: make(map[int64][]*fetch),
	}
	if p, ok := obj.(Primer); ok {
		s.Prime(p.Primed())
	}
	return s
}

// Prime keeps b, the object's bytes at off (those that came with it, see
// Primer), as a fetch of whole pages (or up to the object's end) within
// one chunk, cached as any recent fetch, unless a fetch has those bytes
// already (store.Primed).
func (s *Store) Prime(off int64, b []byte) {
	if off < 0 || off%pageSize != 0 || off >= s.size {
		return
	}
	end := min(off+int64(len(b)), s.chunkEnd(off))
	if end < s.size {
		end = off + (end-off)/pageSize*pageSize
	}
	if end <= off {
		return
	}
	ci := off / int64(s.cfg.ChunkSize)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.lookupLocked(ci, off, end) != nil {
		return
	}
	bp := s.bufs.get(int(end - off))
	copy(*bp, b)
	f := &fetch{off: off, n: int(end - off), done: make(chan struct{}), listed: true}
	close(f.done)
	f.buf, f.ended = bp, true
	s.chunks[ci] = append(s.chunks[ci], f)
	s.cacheLocked(f)
	s.primed = f
}

// TakePrimed returns a copy of the bytes that came with the Object, if the
// Store still has them (store.Primed).
func (s *Store) TakePrimed() (int64, []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.primed
	if f == nil || !f.listed || f.buf == nil {
		return 0, nil
	}
	return f.off, slices.Clone((*f.buf)[:f.n])
}

func (s *Store) Size() int64     { return s.size }
func (s *Store) Key() string     { return s.obj.Key() }
func (s *Store) Version() string { return s.obj.Version() }

// ReadaheadBytes asks a sequential reader to keep two rounds of requests
// in flight: while one round's requests finish, the next is queued, so the
// slots never go idle between readahead windows, and the depth sees that
// it bounds the requests (see depth) when the network does.
func (s *Store) ReadaheadBytes() int64 {
	return min(2*int64(s.slots.limit())*int64(s.cfg.MaxRequest), 2*s.cfg.MaxInflight)
}

// ReadAt reads like an io.ReaderAt: all of p, or the bytes up to Size and
// io.EOF, or an error that names the object, offset and length and wraps
// the cause. Reads of at most Config.SmallRead bytes are demand reads.
func (s *Store) ReadAt(p []byte, off int64) (int, error) {
	return s.ReadAtContext(context.Background(), p, off)
}

// ReadAtContext is ReadAt bounded by ctx (store.ContextReader): once ctx is
// done, the requests this read started, their retries and their hedges
// stop, unless another read waits for them, and it returns. Of a failed
// read, n is the bytes before the first that failed, and the error, marked
// store.Retried, says which those are.
func (s *Store) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%s: read %d bytes at negative offset %d", s.Key(), len(p), off)
	}
	if off >= s.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	want := p[:min(int64(len(p)), s.size-off)]
	demand := len(p) <= s.cfg.SmallRead
	n := 0
	for {
		m, err := s.read(ctx, want[n:], off+int64(n), demand)
		n += m
		switch {
		case err == nil && len(want) < len(p):
			return n, io.EOF
		case err == nil:
			return n, nil
		case !s.again(ctx, err):
			return n, s.readError(len(p), off, err)
		}
	}
}

// readError names the object and the read, and marks err as retried
// already: the Store retries its requests itself.
func (s *Store) readError(n int, off int64, err error) error {
	return store.Retried(fmt.Errorf("%s: read %d bytes at offset %d: %w", s.Key(), n, off, err))
}

// again says whether a read with ctx that failed with err should ask again
// for what it failed to get: the fetch it waited for was started by another
// read, which is done, while this one has time left.
func (s *Store) again(ctx context.Context, err error) bool {
	var e endedError
	return errors.As(err, &e) && ctx.Err() == nil && s.ctx.Err() == nil
}

// View lends the bytes [off, off+n) of the fetch that holds them, when
// they lie in one chunk (store.Viewer): the read a fill of the page cache
// makes, one chunk at most, then costs no copy into the fill's buffer. The
// fetch is found, started, promoted and waited for as ReadAt does it; when
// some of its pages failed, the bytes before the first of them are lent,
// with its error.
func (s *Store) View(ctx context.Context, off int64, n int) (b []byte, release func(), ok bool, err error) {
	end := off + int64(n)
	if off < 0 || n <= 0 || end > s.size || end > s.chunkEnd(off) {
		return nil, nil, false, nil
	}
	s.mu.Lock()
	split := s.gaveUpLocked(off / int64(s.cfg.ChunkSize))
	s.mu.Unlock()
	if split { // ReadAt reads around the pages given up on, in segments
		return nil, nil, false, nil
	}
	demand := n <= s.cfg.SmallRead
	lone := demand && s.lone(off, end)
	for {
		f, until, started, err := s.get(ctx, off, end, demand, lone, true)
		if err != nil {
			return nil, nil, false, s.readError(n, off, err)
		}
		if started {
			s.run(f)
		}
		if until < end { // a fetch gave up on pages since: as above
			s.release(f)
			return nil, nil, false, nil
		}
		if err := s.waitOrMoved(ctx, f); err != nil {
			s.release(f)
			if err == errMoved || s.again(ctx, err) {
				continue // a faster fetch of these bytes is listed
			}
			return nil, nil, false, s.readError(n, off, err)
		}
		b := (*f.buf)[off-f.off : end-f.off]
		release := func() { s.release(f) }
		if r, bad := f.badIn(off, end); bad {
			if s.again(ctx, r.err) { // ReadAt asks again for the rest
				release()
				return nil, nil, false, nil
			}
			return b[:max(r.off-off, 0)], release, true, s.readError(n, off, r.err)
		}
		return b, release, true, nil
	}
}

// A segment is bytes [f's first, end) of a read, which fetch f brings.
type segment struct {
	f   *fetch
	end int64
}

// read fills p from off, which lies within the object. The chunks of a
// large read are fetched in a sliding window of as many chunks as requests
// may be in flight, so
// that one huge read neither queues hundreds of fetches ahead of everyone
// else nor holds hundreds of chunk buffers while it copies the first. A
// chunk some of whose pages a fetch gave up on is read in segments: the
// pages that arrived from that fetch, the others from a fetch of their own.
//
// A demand read runs the last fetch it starts itself rather than in a new
// goroutine: it would only wait for it, and a fault's latency is mostly
// hand-offs once the request is small (see attempt). A large read starts
// all of its fetches in goroutines, to keep its window in flight while it
// copies.
func (s *Store) read(ctx context.Context, p []byte, off int64, demand bool) (n int, err error) {
	end := off + int64(len(p))
	next := off // the first byte not yet asked for
	var stack [4]segment
	window := stack[:0]
	var mine *fetch // started by this read, for it to run
	defer func() {
		if mine != nil { // failed before running it: others may wait for it
			go s.run(mine)
		}
		for _, sg := range window {
			s.release(sg.f)
		}
	}()
	lone := demand && s.lone(off, end)
	for n < len(p) {
		for depth := s.slots.limit(); len(window) < depth && next < end; {
			b := min(end, s.chunkEnd(next))
			f, b, started, err := s.get(ctx, next, b, demand, lone, demand)
			if err != nil {
				return n, err
			}
			if started {
				if mine != nil {
					go s.run(mine)
				}
				mine = f
			}
			window = append(window, segment{f, b})
			next = b
		}
		if f := mine; f != nil {
			mine = nil
			s.run(f)
		}
		sg := window[0]
		window = append(window[:0], window[1:]...)
		m, err := s.copyOut(ctx, sg, p[n:], off+int64(n))
		s.release(sg.f)
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// copyOut waits for sg's fetch and copies its bytes from off, up to the end
// of sg or the first page the fetch gave up on, into p.
func (s *Store) copyOut(ctx context.Context, sg segment, p []byte, off int64) (int, error) {
	f := sg.f
	if err := s.wait(ctx, f); err != nil {
		return 0, err
	}
	b := min(off+int64(len(p)), sg.end)
	r, bad := f.badIn(off, b)
	if bad {
		b = max(r.off, off)
	}
	n := copy(p, (*f.buf)[off-f.off:b-f.off])
	if bad {
		return n, r.err
	}
	return n, nil
}

// wait waits for f to end, or for ctx or the Store to be done.
func (s *Store) wait(ctx context.Context, f *fetch) error {
	return s.waitMoved(ctx, f, nil)
}

// errMoved says that a read waiting for a fetch should look again: a
// fetch of its bytes that comes sooner is listed (see Promote).
var errMoved = errors.New("a faster fetch of the bytes is listed")

// waitOrMoved is wait, which also returns errMoved once a faster fetch of
// some of f's bytes is listed.
func (s *Store) waitOrMoved(ctx context.Context, f *fetch) error {
	s.mu.Lock()
	if f.moved == nil && !f.ended {
		f.moved = make(chan struct{})
	}
	moved := f.moved
	s.mu.Unlock()
	return s.waitMoved(ctx, f, moved)
}

// waitMoved is wait, which returns errMoved if moved closes first.
func (s *Store) waitMoved(ctx context.Context, f *fetch, moved <-chan struct{}) error {
	select {
	case <-f.done:
		return f.err
	case <-moved:
		select {
		case <-f.done:
			return f.err
		default:
			return errMoved
		}
	case <-s.ctx.Done():
	case <-ctx.Done():
	}
	select {
	case <-f.done: // finished as we gave up: its bytes are good
		return f.err
	default:
	}
	if s.ctx.Err() != nil {
		return ErrClosed
	}
	return fmt.Errorf("waiting for bytes %d-%d: %w", f.off, f.off+int64(f.n)-1, context.Cause(ctx))
}

func (s *Store) chunkEnd(off int64) int64 {
	cs := int64(s.cfg.ChunkSize)
	return min((off/cs+1)*cs, s.size)
}

// lone says whether the demand read [a, b) should fetch only its own pages:
// recent demand reads had no neighbours (see locality) and none of them is
// near this one. With SubRange off, reads fetch whole chunks as configured.
func (s *Store) lone(a, b int64) bool {
	sub := int64(s.cfg.SubRange)
	if sub <= 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	near := s.loc.touch(a, b, sub)
	return !near && s.loc.scattered()
}

// get returns a fetch, in flight or done, that covers [a, b), which lies in
// one chunk, and counts a reference to it; it starts one if there is none.
// A demand read promotes a fetch still waiting for its turn. lone asks a
// demand read's new fetch to cover only [a, b)'s pages. With own, a new
// fetch is queued for a slot but not run: started says the caller must run
// it (s.run), in a goroutine or its own. A new fetch's requests end when
// ctx is done.
//
// The fetch brings [a, end): end is b, unless the read meets pages a fetch
// gave up on before it came. It then takes from that fetch only the bytes
// before them, and asks for them again with a fetch of their own, which
// brings those pages alone (see givenUpLocked): errors are not sticky.
func (s *Store) get(ctx context.Context, a, b int64, demand, lone, own bool) (f *fetch, end int64, started bool, err error) {
	ci := a / int64(s.cfg.ChunkSize)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, 0, false, ErrClosed
	}
	f = s.lookupLocked(ci, a, b)
	r, refetch := s.givenUpLocked(ci, a)
	if f == nil && (refetch || s.gaveUpLocked(ci)) {
		f = s.coverAtLocked(ci, a) // the pages given up on split the chunk
	}
	if f != nil && demand && s.slowLocked(f, b-a) {
		// A fault's bytes in a readahead request not yet done: they come
		// sooner in a request of their own than at the end of that one.
		f = s.urgentLocked(ctx, ci, a, b)
		s.mu.Unlock()
		if own {
			return f, b, true, nil
		}
		go s.run(f)
		return f, b, false, nil
	}
	if f != nil {
		end = min(b, f.off+int64(f.n))
		if r, bad := f.badIn(a, end); bad && f.ended && !s.passOverLocked(ci, r) {
			end = r.off // not a: lookup and coverAt skip those
		}
		f.refs++
		lead := f.lead() // whose request brings f's bytes
		promote := demand && !lead.demand.Load()
		if promote {
			lead.demand.Store(true)
		}
		s.mu.Unlock()
		if promote {
			s.slots.kick()
		}
		return f, end, false, nil
	}
	lo, hi := s.span(ci, a, b, demand, lone)
	lo, hi = s.avoidGivenUpLocked(ci, a, lo, hi)
	retries := s.cfg.Retries
	if refetch {
		lo, hi = a&^(pageSize-1), min(r.end, roundUp64(b, pageSize), s.chunkEnd(a))
		retries = max(s.cfg.Retries-r.tries, 0)
	}
	if demand && s.cfg.SubRange > 0 {
		s.loc.add(a, b)
	}
	f = &fetch{off: lo, n: int(hi - lo), done: make(chan struct{}), refs: 1, listed: true, retries: retries}
	f.bind(s.ctx, ctx)
	f.demand.Store(demand)
	f.turn = s.slots.enqueue(&f.demand, f.n)
	s.chunks[ci] = append(s.chunks[ci], f)
	s.wg.Add(1)
	s.mu.Unlock()
	if own {
		return f, min(b, hi), true, nil
	}
	go s.run(f)
	return f, min(b, hi), false, nil
}

func roundUp64(n, to int64) int64 { return (n + to - 1) / to * to }

// slowLocked says whether a fault waiting for f, a fetch not yet done, for n
// bytes would wait for a bulk request much larger than its own (a readahead
// group of chunks, or a scan's chunk) that has not begun, or is not about
// to end: by the median times of recent requests of both sizes, it has
// more than a request of n bytes left to run (and more than hedgeFloor),
// so that a fault waits at most about twice its own request. A sequential reader that has caught
// up with its readahead waits for the oldest of its requests, which is
// about to end; a fault elsewhere would wait for a whole one. A held fetch is never slow: a Hold plans its chunks from a
// record of the pages wanted, so a fault there promotes it, for the pages
// that follow. Called with s.mu held.
func (s *Store) slowLocked(f *fetch, n int64) bool {
	lead := f.lead()
	if f.ended || f.held || lead.demand.Load() || s.cfg.SubRange <= 0 || lead.want() <= 2*s.cfg.SubRange {
		return false
	}
	began := lead.began.Load()
	if began == 0 {
		return true
	}
	whole, ok := s.lat[s.sizeClass(lead.want())].median()
	own, ok2 := s.lat[s.sizeClass(int(n))].median()
	// On a fast store a wait of a few ms costs less than the bytes twice.
	return ok && ok2 && whole-time.Since(time.Unix(0, began)) > max(own, hedgeFloor)
}

// urgentLocked lists and queues a demand fetch of the whole pages of [a, b), which
// lie in chunk ci, ahead of the chunk's other fetches, so that the reads
// that come for those bytes find it first; its requests end with ctx. The
// caller runs it. Called with s.mu held.
func (s *Store) urgentLocked(ctx context.Context, ci, a, b int64) *fetch {
	lo, hi := a&^(pageSize-1), min(roundUp64(b, pageSize), s.chunkEnd(a))
	f := &fetch{off: lo, n: int(hi - lo), done: make(chan struct{}), refs: 1, listed: true, retries: s.cfg.Retries}
	f.bind(s.ctx, ctx)
	f.demand.Store(true)
	f.turn = s.slots.enqueue(&f.demand, f.n)
	s.chunks[ci] = append([]*fetch{f}, s.chunks[ci]...)
	s.wg.Add(1)
	return f
}

// Promote moves a read of bytes [off, off+n) ahead of readahead: a faulter
// waits for it (store.Promoter). When those bytes are in a readahead
// request much larger than themselves and not yet done, they get a demand
// request of their own, and the reads waiting for that request look again,
// finding the new one first; else the request that brings them is
// promoted, as a fault's own read of them would.
func (s *Store) Promote(off int64, n int) {
	cs := int64(s.cfg.ChunkSize)
	end := min(off+int64(n), s.size)
	for a := max(off, 0); a < end; a = (a/cs + 1) * cs {
		b := min(end, s.chunkEnd(a))
		s.promoteChunk(a/cs, a, b)
	}
}

// promoteChunk is Promote of [a, b), which lies in chunk ci.
func (s *Store) promoteChunk(ci, a, b int64) {
	s.mu.Lock()
	f := s.lookupLocked(ci, a, b)
	switch {
	case s.closed || f == nil || f.ended:
		s.mu.Unlock()
	case s.slowLocked(f, b-a):
		u := s.urgentLocked(s.ctx, ci, a, b)
		u.refs-- // nobody's yet: the reads that wait for f will find it
		if f.moved != nil {
			close(f.moved)
			f.moved = nil
		}
		s.mu.Unlock()
		go s.run(u)
	default:
		lead := f.lead()
		promote := !lead.demand.Load()
		lead.demand.Store(true)
		s.mu.Unlock()
		if promote {
			s.slots.kick()
		}
	}
}

// lookupLocked finds a listed fetch of chunk ci that covers [a, b) and has not
// given up on the page at a. Called with s.mu held.
func (s *Store) lookupLocked(ci, a, b int64) *fetch {
	for _, f := range s.chunks[ci] {
		if f.off <= a && b <= f.off+int64(f.n) && !s.failedAtLocked(f, a) {
			if f.cached {
				s.lru.moveToFront(f)
			}
			return f
		}
	}
	return nil
}

// failedAtLocked says whether f has ended having given up on the page at a.
// Called with s.mu held.
func (s *Store) failedAtLocked(f *fetch, a int64) bool {
	_, bad := f.badAt(a)
	return f.ended && bad
}

// givenUpLocked returns the run of pages holding byte a that a listed fetch of
// chunk ci gave up on. The read that starts there asks for them again —
// errors are not sticky — but only for them, the rest of the chunk being
// at hand, and with only what is left of their retries: they failed that
// many requests just now. Called with s.mu held.
func (s *Store) givenUpLocked(ci, a int64) (badRun, bool) {
	for _, f := range s.chunks[ci] {
		if r, bad := f.badAt(a); bad && f.ended {
			return r, true
		}
	}
	return badRun{}, false
}

// avoidGivenUpLocked narrows the span [lo, hi) of a new fetch for a read from a
// so that it asks for no page a listed fetch of chunk ci gave up on: such a
// request would fail for it, and be narrowed down all over again. The read
// stops before those pages, and asks for them alone (see givenUpLocked). Called
// with s.mu held.
func (s *Store) avoidGivenUpLocked(ci, a int64, lo, hi int64) (int64, int64) {
	for _, f := range s.chunks[ci] {
		if !f.ended {
			continue
		}
		for _, r := range f.bad {
			switch {
			case r.end <= a:
				lo = max(lo, r.end)
			case r.off > a:
				hi = min(hi, r.off)
			}
		}
	}
	return lo, hi
}

// gaveUpLocked says whether a listed fetch of chunk ci gave up on some of its
// pages. Called with s.mu held.
func (s *Store) gaveUpLocked(ci int64) bool {
	for _, f := range s.chunks[ci] {
		if f.ended && len(f.bad) > 0 {
			return true
		}
	}
	return false
}

// passOverLocked says whether a read that reaches r, pages a fetch of chunk ci
// gave up on, takes r's error rather than asking for them again: the
// failure is recent, and no fetch has, or is bringing, those pages since.
// Called with s.mu held.
func (s *Store) passOverLocked(ci int64, r badRun) bool {
	return time.Since(r.at) < s.cfg.BackoffMax && s.coverAtLocked(ci, r.off) == nil
}

// coverAtLocked finds a listed fetch of chunk ci that holds the page at a, or is
// bringing it. Called with s.mu held.
func (s *Store) coverAtLocked(ci, a int64) *fetch {
	for _, f := range s.chunks[ci] {
		if f.off <= a && a < f.off+int64(f.n) && !s.failedAtLocked(f, a) {
			if f.cached {
				s.lru.moveToFront(f)
			}
			return f
		}
	}
	return nil
}

// span is what to fetch for a read of [a, b) in chunk ci that no fetch
// covers: the whole chunk, except for a demand read of a chunk nobody has
// touched, which fetches only the SubRange-aligned span around itself.
//
// Why: a request costs a round trip plus its transfer. For an object store
// (20–50 ms to the first byte, 50–100 MB/s per connection) a 2 MiB chunk's
// transfer (20–40 ms) doubles a random fault's latency, and a 256 KiB span
// adds 3–5 ms (BenchmarkRandomFaults measures it on a simulated link). A
// second, uncovered read of the same chunk says there is locality after
// all, and fetches the whole chunk: at most one partial request is wasted
// per chunk. Sequential readers never take this path: readahead asks for
// more than SmallRead.
//
// A held fetch of the chunk (see Hold) is no such evidence: it was planned
// from a record, and a read it does not cover fell outside that plan.
//
// Neither is the span itself when recent faults have shown no neighbours
// (lone, see locality): then a fault fetches only its own pages, and
// another fault in the same chunk is no sign of locality either, as random
// faults land several to a chunk (2048 over 512 MiB of 2 MiB chunks is 8).
func (s *Store) span(ci, a, b int64, demand, lone bool) (lo, hi int64) {
	lo = ci * int64(s.cfg.ChunkSize)
	hi = s.chunkEnd(lo)
	sub := int64(s.cfg.SubRange)
	switch {
	case !demand || sub <= 0:
		return lo, hi
	case lone:
		return lo + (a-lo)/pageSize*pageSize, min(hi, lo+int64(roundUp(int(b-lo), pageSize)))
	case s.readBeforeLocked(ci):
		return lo, hi
	}
	slo := lo + (a-lo)/sub*sub
	shi := min(hi, lo+(b-lo+sub-1)/sub*sub)
	if 2*(shi-slo) > hi-lo { // most of a chunk costs about what the chunk does
		return lo, hi
	}
	return slo, shi
}

// readBeforeLocked says whether a read has fetched, or is fetching, bytes of
// chunk ci. Called with s.mu held.
func (s *Store) readBeforeLocked(ci int64) bool {
	for _, f := range s.chunks[ci] {
		if !f.held {
			return true
		}
	}
	return false
}

// finish records the outcome of f. A fetched chunk joins the cache, or if
// a Hold keeps it, stays listed outside the cache until released, even if
// some of its pages were given up (bad): reads of the others are served
// from it. A failed one is forgotten, so that the next read tries again.
func (s *Store) finish(f *fetch, buf *[]byte, bad []badRun, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.finishLocked(f, buf, bad, err)
}

// finishLocked is finish, called with s.mu held.
func (s *Store) finishLocked(f *fetch, buf *[]byte, bad []badRun, err error) {
	f.buf, f.bad, f.err, f.ended = buf, bad, err, true
	close(f.done)
	if err != nil || s.closed {
		s.unlistLocked(f)
		return
	}
	if s.wholeChunk(f) && len(f.bad) == 0 {
		s.dropPartialsLocked(f)
	}
	if f.pins == 0 {
		s.cacheLocked(f)
	}
}

// cacheLocked puts the fetched f at the front of the lru and evicts what passes
// the budget. Called with s.mu held.
func (s *Store) cacheLocked(f *fetch) {
	s.lru.pushFront(f)
	f.cached = true
	s.cached += int64(f.n)
	budget := int64(s.cfg.CacheChunks) * int64(s.cfg.ChunkSize)
	for s.cached > budget && s.lru.back() != f {
		s.evictLocked(s.lru.back())
	}
}

func (s *Store) wholeChunk(f *fetch) bool {
	return f.off%int64(s.cfg.ChunkSize) == 0 && f.off+int64(f.n) == s.chunkEnd(f.off)
}

// dropPartialsLocked evicts the cached partial fetches of whole's chunk, which
// whole makes redundant.
func (s *Store) dropPartialsLocked(whole *fetch) {
	ci := whole.off / int64(s.cfg.ChunkSize)
	for _, g := range s.chunks[ci] {
		if g != whole && g.cached {
			s.evictLocked(g)
		}
	}
}

func (s *Store) evictLocked(f *fetch) {
	s.lru.remove(f)
	f.cached = false
	s.cached -= int64(f.n)
	s.unlistLocked(f)
}

// unlistLocked takes f out of s.chunks, so no new read finds it, and frees its
// buffer if no read still uses it. Called with s.mu held.
func (s *Store) unlistLocked(f *fetch) {
	ci := f.off / int64(s.cfg.ChunkSize)
	list := s.chunks[ci]
	for i, g := range list {
		if g == f {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(s.chunks, ci)
	} else {
		s.chunks[ci] = list
	}
	f.listed = false
	s.maybeFreeLocked(f)
}

func (s *Store) release(f *fetch) {
	s.mu.Lock()
	f.refs--
	s.maybeFreeLocked(f)
	s.mu.Unlock()
}

// maybeFreeLocked recycles f's buffer once f is finished, out of the cache and
// read by nobody. Called with s.mu held.
func (s *Store) maybeFreeLocked(f *fetch) {
	if f.listed || f.refs > 0 || f.buf == nil {
		return
	}
	buf := f.buf
	f.buf = nil
	if g := f.group; g != nil { // buf is a slice of the group's
		if g.live--; g.live > 0 {
			return
		}
		buf, g.buf = g.buf, nil
	}
	s.bufs.put(buf)
}

// Idle drops the chunks kept for reads to come (store.Idler); reads in
// progress keep theirs until they end.
func (s *Store) Idle() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for f := s.lru.back(); f != nil; f = s.lru.back() {
		s.evictLocked(f)
	}
}

// Close cancels the requests in flight, fails the reads waiting for them
// and later reads with ErrClosed, waits for every goroutine of the Store to
// end (so the Object must honour its context), and closes the Object.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	s.mu.Lock()
	for f := s.lru.back(); f != nil; f = s.lru.back() {
		s.evictLocked(f)
	}
	// What is left is held: its buffers go when their Holds let go.
	for _, list := range s.chunks {
		for _, f := range slices.Clone(list) {
			s.unlistLocked(f)
		}
	}
	s.mu.Unlock()
	return s.obj.Close()
}
