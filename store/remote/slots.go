package remote

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// slots bounds the requests in flight, and their bytes, and decides who
// goes next. It is the request queue's elevator, with two classes:
//
//   - demand: a fetch some small read (a fault) is waiting for;
//   - bulk: a fetch for a large read (readahead, a sequential scan).
//
// Bulk fetches may hold at most depth-reserve slots, and leave a chunk's
// bytes of the bound free, so a sequential scan can never fill every slot:
// a fault arriving during the scan starts its request at once on a
// reserved slot instead of waiting a whole transfer. A freed slot goes to
// the oldest waiting demand fetch of at most a chunk, then to the oldest
// larger one, before any bulk one, so a burst of faults jumps the scan's
// queue too. Classes are read when a slot is handed out, so a bulk fetch
// that a fault starts waiting for while it is still queued is promoted by
// setting its flag (and calling kick). A promoted fetch larger than a
// chunk (a readahead group a sequential reader has caught up with) goes
// before bulk ones but stays within the bulk bounds: the reserve is for
// faults' own requests, which would otherwise queue behind a scan's
// promoted groups for a whole transfer. With a single slot there is
// nothing to reserve, and demand fetches only go first.
//
// How many slots there are follows the network (see depth): from a few,
// doubled for as long as each round of requests brings more bytes a second
// than the last, up to Config.Parallel and within Config.MaxInflight bytes.
type slots struct {
	mu      sync.Mutex // protects the fields below
	depth   depth
	reserve int   // slots kept for demand fetches
	bytes   int64 // bound on the bytes in flight (Config.MaxInflight)
	spare   int64 // bytes of it that bulk fetches leave to demand ones
	busy    int
	inBytes int64     // bytes of the requests in flight
	waiting []*waiter // FIFO
}

type waiter struct {
	demand  *atomic.Bool
	n       int64         // bytes the request asks for
	ready   chan struct{} // closed when granted
	granted bool          // under slots.mu
}

// newSlots makes the slots of a Store with cfg's bounds, cfg having its
// defaults.
func newSlots(cfg Config) *slots {
	s := &slots{depth: newDepth(cfg.Parallel), bytes: cfg.MaxInflight, spare: int64(cfg.ChunkSize)}
	if cfg.Parallel >= 2 {
		s.reserve = 1
	}
	return s
}

// enqueue joins the queue for a slot for a request of n bytes, of the class
// *demand says. Reads enqueue their fetches in the order they need them, so
// that the chunk a reader wants first is asked for first.
func (s *slots) enqueue(demand *atomic.Bool, n int) *waiter {
	w := &waiter{demand: demand, n: int64(n), ready: make(chan struct{})}
	s.mu.Lock()
	s.waiting = append(s.waiting, w)
	s.dispatchLocked()
	s.mu.Unlock()
	return w
}

// wait waits for w's turn, or until ctx is done.
func (s *slots) wait(ctx context.Context, w *waiter) error {
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if w.granted { // granted while we gave up: pass it on
		s.busy--
		s.inBytes -= w.n
		s.dispatchLocked()
	} else {
		s.remove(w)
	}
	return ctx.Err()
}

// tryAcquire takes a slot for a request of n bytes only if one is free for
// this class and nobody who would get it first is waiting. Hedges use it:
// a hedge is worth a spare slot, never a queued fetch's turn.
func (s *slots) tryAcquire(demand bool, n int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	ahead := int64(math.MaxInt64) // the waiters a slot would go to first
	if demand && int64(n) <= s.spare {
		ahead = s.spare
	}
	if !s.fitsLocked(demand, int64(n)) || s.firstWaiter(demand, ahead) >= 0 {
		return false
	}
	s.busy++
	s.inBytes += int64(n)
	return true
}

// release frees the slot of a request of n bytes that has ended at now,
// having brought got of them: the depth learns from it.
func (s *slots) release(n, got int, now time.Time) {
	s.mu.Lock()
	s.busy--
	s.inBytes -= int64(n)
	// The slot was needed if a fetch is waiting for it, or would be,
	// but for the bytes in flight: the depth was the bound.
	s.depth.ended(now, int64(got), s.backlogLocked())
	s.dispatchLocked()
	s.mu.Unlock()
}

// giveBack frees a slot of n bytes taken for a request that did not run.
func (s *slots) giveBack(n int) {
	s.mu.Lock()
	s.busy--
	s.inBytes -= int64(n)
	s.dispatchLocked()
	s.mu.Unlock()
}

// kick re-runs dispatch after a waiter was promoted to demand.
func (s *slots) kick() {
	s.mu.Lock()
	s.dispatchLocked()
	s.mu.Unlock()
}

// limit is how many requests may be in flight now.
func (s *slots) limit() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.depth.limit
}

// fitsLocked says whether a request of n bytes of a class may start now.
// A request larger than the bound goes alone. Called with s.mu held.
func (s *slots) fitsLocked(demand bool, n int64) bool {
	limit, bytes := s.depth.limit, s.bytes
	if !demand || n > s.spare {
		limit, bytes = limit-s.reserve, bytes-s.spare
	}
	return s.busy < limit && (s.inBytes+n <= bytes || s.busy == 0)
}

// backlogLocked says whether fetches wait for a slot. Called with s.mu held.
func (s *slots) backlogLocked() bool { return len(s.waiting) > 0 }

// dispatchLocked hands free slots to waiters: demand ones of at most a
// chunk first, then larger demand ones, then bulk ones, oldest first
// within each. Called with s.mu held.
func (s *slots) dispatchLocked() {
	for {
		i := s.firstWaiter(true, s.spare)
		if i < 0 {
			i = s.firstWaiter(true, math.MaxInt64)
		}
		demand := i >= 0
		if !demand {
			i = s.firstWaiter(false, 0)
		}
		if i < 0 || !s.fitsLocked(demand, s.waiting[i].n) {
			return
		}
		w := s.waiting[i]
		s.waiting = append(s.waiting[:i], s.waiting[i+1:]...)
		w.granted = true
		s.busy++
		s.inBytes += w.n
		close(w.ready)
	}
}

// firstWaiter is the index of the oldest demand waiter for at most most
// bytes, or with demand false of the oldest waiter of any class; -1 if
// none.
func (s *slots) firstWaiter(demand bool, most int64) int {
	for i, w := range s.waiting {
		if !demand || w.demand.Load() && w.n <= most {
			return i
		}
	}
	return -1
}

func (s *slots) remove(w *waiter) {
	for i, x := range s.waiting {
		if x == w {
			s.waiting = append(s.waiting[:i], s.waiting[i+1:]...)
			return
		}
	}
}
