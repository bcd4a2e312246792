package remote

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/filemap/filemap/store"
)

// A fetch is the bytes [off, off+n) of one chunk (all of it, a partial
// span for a lone small read, or pages a fetch gave up on, asked for
// again), in flight or cached. It plays the locked folio of filemap_fault:
// every read that wants its bytes waits on it.
type fetch struct {
	off    int64
	n      int
	demand atomic.Bool  // a demand read waits for it: see slots
	began  atomic.Int64 // when its latest request began, in Unix nanoseconds; 0 while queued
	turn   *waiter      // its place in the queue for its next request
	done   chan struct{}

	// ctx bounds f's requests, retries and backoffs: it ends when the
	// read that started f is done (it returned, gave up, or ran out of
	// time) or the Store closes. stop releases it once f has run. Set
	// before f is listed; a group's fetches but its first have none (see
	// lead).
	ctx  context.Context
	stop func()

	// retries is how often a failed page of f is asked for again:
	// Config.Retries, or fewer for pages a fetch gave up on just now.
	retries int

	// group is the request of several chunks that f is one of (see
	// Prefetch), or nil when f has a request of its own. Set before f is
	// listed.
	group *group

	// held says a Hold asked for it, not a read: it says nothing of where
	// demand reads go (see Store.span). Set before it is listed.
	held bool

	// Protected by Store.mu; buf, bad and err are set before done is closed.
	buf        *[]byte       // the bytes; nil on error or once recycled
	bad        []badRun      // pages given up while the others arrived, in offset order
	err        error         // every page failed
	ended      bool          // buf, bad and err are set
	refs       int           // reads using buf, and Holds keeping it
	pins       int           // Holds and readahead windows keeping it: it joins the lru only when none does
	listed     bool          // in Store.chunks: findable by reads
	cached     bool          // in Store.lru
	moved      chan struct{} // closed when a faster fetch of some of f's bytes is listed (see Promote); nil until waited on
	prev, next *fetch
}

// bind gives f its context: base's (the Store's), ended too when ctx, the
// context of the read that starts f, is done. Only ctx's end does it, not a
// deadline of its own, so that a read whose ctx has time left never sees
// a fetch it started end for lack of time.
func (f *fetch) bind(base, ctx context.Context) {
	c, cancel := context.WithCancelCause(base)
	after := context.AfterFunc(ctx, func() { cancel(context.Cause(ctx)) })
	f.ctx = c
	f.stop = func() {
		after()
		cancel(context.Canceled)
	}
}

// badAt returns the run of pages f gave up on that holds byte off.
func (f *fetch) badAt(off int64) (badRun, bool) {
	for _, r := range f.bad {
		if r.off <= off && off < r.end {
			return r, true
		}
	}
	return badRun{}, false
}

// badIn returns the first run of pages f gave up on that meets [lo, hi).
func (f *fetch) badIn(lo, hi int64) (badRun, bool) {
	for _, r := range f.bad {
		if r.off < hi && lo < r.end {
			return r, true
		}
	}
	return badRun{}, false
}

// run fetches f, retrying and narrowing down failures, and records the
// outcome: f's, or that of every fetch of f's group, which f leads.
func (s *Store) run(f *fetch) {
	defer s.wg.Done()
	buf, bad, err := s.fetchRetrying(f)
	f.stop()
	if f.group != nil {
		s.finishGroup(f.group, buf, bad, err)
		return
	}
	s.finish(f, buf, bad, err)
}

// lead is the fetch whose request brings f's bytes: f, or its group's
// first fetch, which waits for the group's slot.
func (f *fetch) lead() *fetch {
	if f.group != nil {
		return f.group.fetches[0]
	}
	return f
}

// want is the bytes f's requests ask for: f's own, or its group's.
func (f *fetch) want() int {
	if f.group != nil {
		return f.group.n
	}
	return f.n
}

// fetchRetrying gets the bytes of f: with one request, and when that
// fails, with more (narrow.go): those of the pages that fail are given up,
// and the others are returned with them. It fails only when no byte
// arrived, or a failure was permanent.
func (s *Store) fetchRetrying(f *fetch) (*[]byte, []badRun, error) {
	lo, hi := f.off, f.off+int64(f.want())
	bp, got, err := s.request(f, lo, hi)
	if err == nil {
		return bp, nil, nil
	}
	x := &salvage{s: s, f: f, base: lo, limit: 1 + f.retries, fails: make([]uint8, (hi-lo+pageSize-1)/pageSize)}
	x.settle(x.failed(lo, hi, bp, got, err))
	return x.result()
}

// fetchError says which bytes failed, and after how many tries if more
// than one.
func fetchError(lo, hi int64, tries int, err error) error {
	what := fmt.Sprintf("fetching bytes %d-%d", lo, hi-1)
	if tries > 1 {
		what += fmt.Sprintf(" (%d tries)", tries)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// permanent says whether retrying err is pointless. A changed object is,
// even if the Object forgot to say so.
func permanent(err error) bool {
	return store.IsPermanent(err) || errors.Is(err, store.ErrChanged)
}

// backoff is the wait before retry try+1: full jitter, so that the many
// readers a failing server fails at once do not come back at once.
func (s *Store) backoff(try int) time.Duration {
	d := s.cfg.BackoffBase
	for i := 0; i < try && d < s.cfg.BackoffMax; i++ {
		d *= 2
	}
	return rand.N(min(d, s.cfg.BackoffMax))
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

// An endedError is the failure of bytes a fetch gave up on because its
// context ended: the read that started it is done. Another read that
// waited for those bytes, and has time left, asks for them again.
type endedError struct{ cause error }

func (e endedError) Error() string {
	return "not fetched: the read that asked first is done: " + e.cause.Error()
}
func (e endedError) Unwrap() error { return e.cause }

// ended is the error of f's bytes once its context has ended.
func (s *Store) ended(f *fetch) error {
	if s.ctx.Err() != nil {
		return ErrClosed
	}
	return endedError{context.Cause(f.lead().ctx)}
}

// request makes one attempt at bytes [lo, hi) of f, which leads its
// request: it waits for a slot (f's first, queued when f was listed, or a
// new one) and runs the attempt. It returns the winning request's buffer,
// of which the first got bytes are good (all of them on success), or nil.
func (s *Store) request(f *fetch, lo, hi int64) (bp *[]byte, got int, err error) {
	turn := f.turn
	if turn == nil {
		turn = s.slots.enqueue(&f.demand, int(hi-lo))
	}
	f.turn = nil
	if err := s.slots.wait(f.ctx, turn); err != nil {
		return nil, 0, s.ended(f)
	}
	f.began.Store(time.Now().UnixNano())
	return s.attempt(f, lo, hi)
}

// attempt is one try at bytes [lo, hi) of f, holding a slot acquired for
// it: one request, and a hedge if that one straggles and a slot is spare.
// The first success wins and cancels the other request.
//
// The first request runs in attempt's own goroutine (which, for a demand
// read, is the faulting read's: see Store.read) and only a hedge gets a
// goroutine of its own: every hand-off between goroutines is a wake-up
// that a fault waits for, and a scheduling delay on a busy machine.
func (s *Store) attempt(f *fetch, lo, hi int64) (*[]byte, int, error) {
	ctx, cancel := context.WithCancel(f.ctx)
	defer cancel()
	n := int(hi - lo)
	r := &race{pending: 1, decided: make(chan struct{}), stop: cancel}
	if d := s.hedgeDelay(n); d > 0 {
		// A late call finds the race decided and starts nothing.
		t := time.AfterFunc(d, func() { s.hedge(ctx, f, lo, n, r) })
		defer t.Stop()
	}
	s.doRequest(ctx, lo, n, r, false)
	<-r.decided // the hedge may still be running when the first fails
	return r.buf, r.got, r.err
}

// hedge starts a second request for bytes [lo, lo+n) of f if a slot is
// spare. Hedges never wait for a slot: a straggler is worth a spare slot,
// not another fetch's turn.
func (s *Store) hedge(ctx context.Context, f *fetch, lo int64, n int, r *race) {
	if !s.slots.tryAcquire(f.demand.Load(), n) {
		return
	}
	if !r.join() {
		s.slots.giveBack(n)
		return
	}
	s.cfg.Observer.Hedge()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.doRequest(ctx, lo, n, r, true)
	}()
}

// hedgeDelay is how long a request of n bytes may run before it is hedged;
// 0 for never.
func (s *Store) hedgeDelay(n int) time.Duration {
	switch {
	case s.cfg.HedgeAfter < 0:
		return 0
	case s.cfg.HedgeAfter > 0:
		return s.cfg.HedgeAfter
	case s.sizeClass(n) == 2:
		// A readahead group's: it runs long because the link is full,
		// which a second request makes worse, and its bytes move ahead
		// of it when a fault waits for them (see Promote).
		return 0
	}
	m, ok := s.lat[s.sizeClass(n)].median()
	if !ok {
		return 0
	}
	return max(hedgeFactor*m, hedgeFloor)
}

// sizeClass separates partial-chunk requests (0) from whole chunks (1) and
// from groups of chunks (2), whose latencies differ by the transfer time.
func (s *Store) sizeClass(n int) int {
	switch {
	case n > s.cfg.ChunkSize:
		return 2
	case 2*n > s.cfg.ChunkSize:
		return 1
	}
	return 0
}

// doRequest runs one ranged request for n bytes at off into a buffer of
// its own, holding a slot until the Object returns, and reports to r.
func (s *Store) doRequest(ctx context.Context, off int64, n int, r *race, hedged bool) {
	bp := s.bufs.get(n)
	start := time.Now()
	err := s.getRange(ctx, *bp, off)
	end := time.Now()
	lat := end.Sub(start)
	s.cfg.Observer.Request(RequestStats{Bytes: n, Latency: lat, Hedge: hedged, Err: Kind(err)})
	got := n
	if err == nil {
		s.lat[s.sizeClass(n)].add(lat)
	} else {
		got = min(arrived(err), n) / pageSize * pageSize // whole pages, which the fault path fills
	}
	s.slots.release(n, got, end)
	s.bufs.put(r.end(bp, got, err))
}

// getRange calls the Object with the per-request timeout. An Object may
// report its timeout as any error (a closed connection, say); it is made
// one that says so, and is retried.
func (s *Store) getRange(ctx context.Context, p []byte, off int64) error {
	rctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	err := s.obj.GetRange(rctx, p, off)
	if err != nil && ctx.Err() == nil && rctx.Err() != nil && !errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("%w after %v: %w", context.DeadlineExceeded, s.cfg.Timeout, err)
	}
	return err
}

// A race is the requests of one attempt: the first success decides it, or
// a permanent error, or the last failure.
type race struct {
	mu      sync.Mutex // protects the fields below
	pending int        // requests running
	done    bool
	buf     *[]byte // the winner's; or, failing, the one whose first got bytes arrived
	got     int
	err     error
	decided chan struct{} // closed when done
	stop    func()        // cancels the requests still running once decided
}

// join counts a hedge in, unless the race is already decided.
func (r *race) join() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		return false
	}
	r.pending++
	return true
}

// end reports a request's outcome: its buffer bp, of which the first got
// bytes are good, and its error. It returns the buffer the race does not
// keep, if any, for the pool.
func (r *race) end(bp *[]byte, got int, err error) (spare *[]byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pending--
	if r.done {
		return bp
	}
	switch {
	case err == nil:
		spare, r.buf, r.got, r.err = r.buf, bp, len(*bp), nil
	case permanent(err):
		spare, r.err = bp, err
	default:
		spare = bp
		if got > r.got {
			spare, r.buf, r.got = r.buf, bp, got
		}
		if r.err == nil {
			r.err = err
		}
		if r.pending > 0 {
			return spare // the other request may still succeed
		}
	}
	r.done = true
	close(r.decided)
	if r.pending > 0 {
		r.stop()
	}
	return spare
}

// lruList is an intrusive list of cached fetches, most recent first.
type lruList struct{ head, tail *fetch }

func (l *lruList) back() *fetch { return l.tail }

func (l *lruList) pushFront(f *fetch) {
	f.prev, f.next = nil, l.head
	if l.head != nil {
		l.head.prev = f
	} else {
		l.tail = f
	}
	l.head = f
}

func (l *lruList) remove(f *fetch) {
	if f.prev != nil {
		f.prev.next = f.next
	} else {
		l.head = f.next
	}
	if f.next != nil {
		f.next.prev = f.prev
	} else {
		l.tail = f.prev
	}
	f.prev, f.next = nil, nil
}

func (l *lruList) moveToFront(f *fetch) {
	if l.head != f {
		l.remove(f)
		l.pushFront(f)
	}
}
