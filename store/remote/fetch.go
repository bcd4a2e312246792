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

// A fetch is the bytes [off, off+n) of one chunk (all of it, or a partial
// span for a lone small read), in flight or cached. It plays the locked
// folio of filemap_fault: every read that wants its bytes waits on it.
type fetch struct {
	off    int64
	n      int
	demand atomic.Bool // a demand read waits for it: see slots
	turn   *waiter     // its place in the queue for its first attempt
	done   chan struct{}

	// group is the request of several chunks that f is one of (see
	// Prefetch), or nil when f has a request of its own. Set before f is
	// listed.
	group *group

	// held says a Hold asked for it, not a read: it says nothing of where
	// demand reads go (see Store.span). Set before it is listed.
	held bool

	// Under Store.mu; buf and err are set before done is closed.
	buf        *[]byte // the bytes; nil on error or once recycled
	err        error
	ended      bool // buf and err are set
	refs       int  // reads using buf, and Holds keeping it
	pins       int  // Holds keeping it: it joins the lru only when none does
	listed     bool // in Store.chunks: findable by reads
	cached     bool // in Store.lru
	prev, next *fetch
}

// run fetches f, retrying, and records the outcome: f's, or that of every
// fetch of f's group, which f leads.
func (s *Store) run(f *fetch) {
	defer s.wg.Done()
	buf, err := s.fetchRetrying(f)
	if f.group != nil {
		s.finishGroup(f.group, buf, err)
		return
	}
	s.finish(f, buf, err)
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

// fetchRetrying makes attempts at f until one succeeds, one fails for good,
// the retries run out or the Store is closed. It waits for a slot before
// each attempt and holds none while it backs off.
func (s *Store) fetchRetrying(f *fetch) (*[]byte, error) {
	for try := 0; ; try++ {
		if try > 0 {
			f.turn = s.slots.enqueue(&f.demand)
		}
		if s.slots.wait(s.ctx, f.turn) != nil {
			return nil, s.fetchError(f, 0, ErrClosed)
		}
		buf, err := s.attempt(f)
		switch {
		case err == nil:
			return buf, nil
		case s.ctx.Err() != nil:
			return nil, s.fetchError(f, 0, ErrClosed)
		case permanent(err) || try >= s.cfg.Retries:
			return nil, s.fetchError(f, try+1, err)
		}
		s.cfg.Observer.Retry(Kind(err))
		if !s.sleep(s.backoff(try)) {
			return nil, s.fetchError(f, 0, ErrClosed)
		}
	}
}

// fetchError says which bytes failed, and after how many tries if more
// than one.
func (s *Store) fetchError(f *fetch, tries int, err error) error {
	what := fmt.Sprintf("fetching bytes %d-%d", f.off, f.off+int64(f.want())-1)
	if tries > 1 {
		what += fmt.Sprintf(" (%d tries)", tries)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// permanent says whether retrying err is pointless. A changed object is,
// even if the Object forgot to say so.
func permanent(err error) bool {
	return IsPermanent(err) || errors.Is(err, store.ErrChanged)
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

func (s *Store) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.ctx.Done():
		return false
	}
}

// attempt is one try at f, holding a slot acquired for it: one request, and
// a hedge if that one straggles and a slot is spare. The first success
// wins and cancels the other request.
//
// The first request runs in attempt's own goroutine (which, for a demand
// read, is the faulting read's: see Store.read) and only a hedge gets a
// goroutine of its own: every hand-off between goroutines is a wake-up
// that a fault waits for, and a scheduling delay on a busy machine.
func (s *Store) attempt(f *fetch) (*[]byte, error) {
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	r := &race{pending: 1, decided: make(chan struct{}), stop: cancel}
	if d := s.hedgeDelay(f.want()); d > 0 {
		// A late call finds the race decided and starts nothing.
		t := time.AfterFunc(d, func() { s.hedge(ctx, f, r) })
		defer t.Stop()
	}
	s.doRequest(ctx, f, r, false)
	<-r.decided // the hedge may still be running when the first fails
	return r.buf, r.err
}

// hedge starts a second request for f if a slot is spare. Hedges never
// wait for a slot: a straggler is worth a spare slot, not another fetch's
// turn.
func (s *Store) hedge(ctx context.Context, f *fetch, r *race) {
	if !s.slots.tryAcquire(f.demand.Load()) {
		return
	}
	if !r.join() {
		s.slots.release()
		return
	}
	s.cfg.Observer.Hedge()
	s.request(ctx, f, r, true)
}

// hedgeDelay is how long a request of n bytes may run before it is hedged;
// 0 for never.
func (s *Store) hedgeDelay(n int) time.Duration {
	switch {
	case s.cfg.HedgeAfter < 0:
		return 0
	case s.cfg.HedgeAfter > 0:
		return s.cfg.HedgeAfter
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

// request runs doRequest in a goroutine of its own.
func (s *Store) request(ctx context.Context, f *fetch, r *race, hedged bool) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.doRequest(ctx, f, r, hedged)
	}()
}

// doRequest runs one ranged request for f into a buffer of its own, holding
// a slot until the Object returns, and reports to r.
func (s *Store) doRequest(ctx context.Context, f *fetch, r *race, hedged bool) {
	defer s.slots.release()
	n := f.want()
	bp := s.bufs.get(n)
	start := time.Now()
	err := s.getRange(ctx, *bp, f.off)
	lat := time.Since(start)
	s.cfg.Observer.Request(RequestStats{Bytes: n, Latency: lat, Hedge: hedged, Err: Kind(err)})
	if err == nil {
		s.lat[s.sizeClass(n)].add(lat)
	}
	if !r.end(bp, err) {
		s.bufs.put(bp)
	}
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
	mu      sync.Mutex
	pending int // requests running
	done    bool
	buf     *[]byte
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

// end reports a request's outcome and says whether the race took bp.
func (r *race) end(bp *[]byte, err error) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pending--
	if r.done {
		return false
	}
	switch {
	case err == nil:
		r.buf, r.err = bp, nil
	case permanent(err):
		r.err = err
	default:
		if r.err == nil {
			r.err = err
		}
		if r.pending > 0 {
			return false // the other request may still succeed
		}
	}
	r.done = true
	close(r.decided)
	if r.pending > 0 {
		r.stop()
	}
	return err == nil
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
