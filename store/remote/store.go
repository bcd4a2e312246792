package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

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

	mu     sync.Mutex
	closed bool
	loc    locality           // whether demand reads have neighbours
	chunks map[int64][]*fetch // by chunk index: fetches in flight or cached
	lru    lruList            // cached fetches, most recently used first
	cached int64              // bytes in lru
}

var _ store.Store = (*Store)(nil)

// New makes a Store of obj. The Store owns obj: Close closes it.
func New(obj Object, cfg Config) *Store {
	ctx, cancel := context.WithCancel(context.Background())
	cfg = cfg.withDefaults()
	return &Store{
		obj:    obj,
		cfg:    cfg,
		size:   obj.Size(),
		ctx:    ctx,
		cancel: cancel,
		slots:  newSlots(cfg.Parallel),
		bufs:   newBufPool(cfg.ChunkSize, cfg.MaxRequest),
		chunks: make(map[int64][]*fetch),
	}
}

func (s *Store) Size() int64     { return s.size }
func (s *Store) Key() string     { return s.obj.Key() }
func (s *Store) Version() string { return s.obj.Version() }

// ReadaheadBytes asks a sequential reader to keep two rounds of chunks in
// flight: while one round's requests finish, the next is queued, so the
// Parallel slots never go idle between readahead windows.
func (s *Store) ReadaheadBytes() int64 { return 2 * int64(s.cfg.Parallel) * int64(s.cfg.ChunkSize) }

// ReadAt reads like an io.ReaderAt: all of p, or the bytes up to Size and
// io.EOF, or an error that names the object, offset and length and wraps
// the cause. Reads of at most Config.SmallRead bytes are demand reads.
func (s *Store) ReadAt(p []byte, off int64) (int, error) {
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
	n, err := s.read(want, off, len(p) <= s.cfg.SmallRead)
	if err != nil {
		return n, fmt.Errorf("%s: read %d bytes at offset %d: %w", s.Key(), len(p), off, err)
	}
	if len(want) < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// View lends the bytes [off, off+n) of the fetch that holds them, when
// they lie in one chunk (store.Viewer): the read a fill of the page cache
// makes, one chunk at most, then costs no copy into the fill's buffer. The
// fetch is found, started, promoted and waited for as ReadAt does it.
func (s *Store) View(off int64, n int) (b []byte, release func(), ok bool, err error) {
	end := off + int64(n)
	if off < 0 || n <= 0 || end > s.size || end > s.chunkEnd(off) {
		return nil, nil, false, nil
	}
	demand := n <= s.cfg.SmallRead
	f, started, err := s.get(off, end, demand, demand && s.lone(off, end), true)
	if err != nil {
		return nil, nil, false, fmt.Errorf("%s: read %d bytes at offset %d: %w", s.Key(), n, off, err)
	}
	if started {
		s.run(f)
	}
	if err := s.wait(f); err != nil {
		s.release(f)
		return nil, nil, false, fmt.Errorf("%s: read %d bytes at offset %d: %w", s.Key(), n, off, err)
	}
	return (*f.buf)[off-f.off : end-f.off], func() { s.release(f) }, true, nil
}

// read fills p from off, which lies within the object. The chunks of a
// large read are fetched in a sliding window of at most Parallel chunks, so
// that one huge read neither queues hundreds of fetches ahead of everyone
// else nor holds hundreds of chunk buffers while it copies the first.
//
// A demand read runs the last fetch it starts itself rather than in a new
// goroutine: it would only wait for it, and a fault's latency is mostly
// hand-offs once the request is small (see attempt). A large read starts
// all of its fetches in goroutines, to keep its window in flight while it
// copies.
func (s *Store) read(p []byte, off int64, demand bool) (n int, err error) {
	end := off + int64(len(p))
	next := off // the first byte not yet asked for
	var stack [4]*fetch
	window := stack[:0]
	var mine *fetch // started by this read, for it to run
	defer func() {
		if mine != nil { // failed before running it: others may wait for it
			go s.run(mine)
		}
		for _, f := range window {
			s.release(f)
		}
	}()
	lone := demand && s.lone(off, end)
	for n < len(p) {
		for len(window) < s.cfg.Parallel && next < end {
			b := min(end, s.chunkEnd(next))
			f, started, err := s.get(next, b, demand, lone, demand)
			if err != nil {
				return n, err
			}
			if started {
				if mine != nil {
					go s.run(mine)
				}
				mine = f
			}
			window = append(window, f)
			next = b
		}
		if f := mine; f != nil {
			mine = nil
			s.run(f)
		}
		f := window[0]
		window = append(window[:0], window[1:]...)
		m, err := s.copyOut(f, p[n:], off+int64(n))
		s.release(f)
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// copyOut waits for f and copies its bytes from off, up to the end of
// off's chunk, into p.
func (s *Store) copyOut(f *fetch, p []byte, off int64) (int, error) {
	if err := s.wait(f); err != nil {
		return 0, err
	}
	b := min(off+int64(len(p)), s.chunkEnd(off))
	return copy(p, (*f.buf)[off-f.off:b-f.off]), nil
}

func (s *Store) wait(f *fetch) error {
	select {
	case <-f.done:
		return f.err
	case <-s.ctx.Done():
	}
	select {
	case <-f.done: // finished as we were closed: its bytes are good
		return f.err
	default:
		return ErrClosed
	}
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
// it (s.run), in a goroutine or its own.
func (s *Store) get(a, b int64, demand, lone, own bool) (f *fetch, started bool, err error) {
	ci := a / int64(s.cfg.ChunkSize)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, false, ErrClosed
	}
	if f := s.lookup(ci, a, b); f != nil {
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
		return f, false, nil
	}
	lo, hi := s.span(ci, a, b, demand, lone)
	if demand && s.cfg.SubRange > 0 {
		s.loc.add(a, b)
	}
	f = &fetch{off: lo, n: int(hi - lo), done: make(chan struct{}), refs: 1, listed: true}
	f.demand.Store(demand)
	f.turn = s.slots.enqueue(&f.demand)
	s.chunks[ci] = append(s.chunks[ci], f)
	s.wg.Add(1)
	s.mu.Unlock()
	if own {
		return f, true, nil
	}
	go s.run(f)
	return f, false, nil
}

// lookup finds a listed fetch of chunk ci that covers [a, b). Called with
// s.mu held.
func (s *Store) lookup(ci, a, b int64) *fetch {
	for _, f := range s.chunks[ci] {
		if f.off <= a && b <= f.off+int64(f.n) {
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
	case s.readBefore(ci):
		return lo, hi
	}
	slo := lo + (a-lo)/sub*sub
	shi := min(hi, lo+(b-lo+sub-1)/sub*sub)
	if 2*(shi-slo) > hi-lo { // most of a chunk costs about what the chunk does
		return lo, hi
	}
	return slo, shi
}

// readBefore says whether a read has fetched, or is fetching, bytes of
// chunk ci. Called with s.mu held.
func (s *Store) readBefore(ci int64) bool {
	for _, f := range s.chunks[ci] {
		if !f.held {
			return true
		}
	}
	return false
}

// finish records the outcome of f. A fetched chunk joins the cache, or if
// a Hold keeps it, stays listed outside the cache until released; a failed
// one is forgotten, so that the next read tries again.
func (s *Store) finish(f *fetch, buf *[]byte, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.finishLocked(f, buf, err)
}

// finishLocked is finish, called with s.mu held.
func (s *Store) finishLocked(f *fetch, buf *[]byte, err error) {
	f.buf, f.err, f.ended = buf, err, true
	close(f.done)
	if err != nil || s.closed {
		s.unlist(f)
		return
	}
	if s.wholeChunk(f) {
		s.dropPartials(f)
	}
	if f.pins == 0 {
		s.cache(f)
	}
}

// cache puts the fetched f at the front of the lru and evicts what passes
// the budget. Called with s.mu held.
func (s *Store) cache(f *fetch) {
	s.lru.pushFront(f)
	f.cached = true
	s.cached += int64(f.n)
	budget := int64(s.cfg.CacheChunks) * int64(s.cfg.ChunkSize)
	for s.cached > budget && s.lru.back() != f {
		s.evict(s.lru.back())
	}
}

func (s *Store) wholeChunk(f *fetch) bool {
	return f.off%int64(s.cfg.ChunkSize) == 0 && f.off+int64(f.n) == s.chunkEnd(f.off)
}

// dropPartials evicts the cached partial fetches of whole's chunk, which
// whole makes redundant.
func (s *Store) dropPartials(whole *fetch) {
	ci := whole.off / int64(s.cfg.ChunkSize)
	for _, g := range s.chunks[ci] {
		if g != whole && g.cached {
			s.evict(g)
		}
	}
}

func (s *Store) evict(f *fetch) {
	s.lru.remove(f)
	f.cached = false
	s.cached -= int64(f.n)
	s.unlist(f)
}

// unlist takes f out of s.chunks, so no new read finds it, and frees its
// buffer if no read still uses it. Called with s.mu held.
func (s *Store) unlist(f *fetch) {
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
	s.maybeFree(f)
}

func (s *Store) release(f *fetch) {
	s.mu.Lock()
	f.refs--
	s.maybeFree(f)
	s.mu.Unlock()
}

// maybeFree recycles f's buffer once f is finished, out of the cache and
// read by nobody. Called with s.mu held.
func (s *Store) maybeFree(f *fetch) {
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
		s.evict(f)
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
		s.evict(f)
	}
	// What is left is held: its buffers go when their Holds let go.
	for _, list := range s.chunks {
		for _, f := range slices.Clone(list) {
			s.unlist(f)
		}
	}
	s.mu.Unlock()
	return s.obj.Close()
}
