package remote

import (
	"context"
	"sync"
	"sync/atomic"
)

// slots bounds the requests in flight and decides who goes next. It is the
// request queue's elevator, with two classes:
//
//   - demand: a fetch some small read (a fault) is waiting for;
//   - bulk: a fetch for a large read (readahead, a sequential scan).
//
// Bulk fetches may hold at most limit-reserve slots, so a sequential scan
// can never fill every slot: a fault arriving during the scan starts its
// request at once on a reserved slot instead of waiting a whole chunk
// transfer. A freed slot goes to the oldest waiting demand fetch before any
// bulk one, so a burst of faults jumps the scan's queue too. Classes are
// read when a slot is handed out, so a bulk fetch that a fault starts
// waiting for while it is still queued is promoted by setting its flag
// (and calling kick). With a single slot there is nothing to reserve, and
// demand fetches only go first.
type slots struct {
	mu      sync.Mutex // protects the fields below
	limit   int
	reserve int
	busy    int
	waiting []*waiter // FIFO
}

type waiter struct {
	demand  *atomic.Bool
	ready   chan struct{} // closed when granted
	granted bool          // under slots.mu
}

func newSlots(limit int) *slots {
	s := &slots{limit: limit}
	if limit >= 2 {
		s.reserve = 1
	}
	return s
}

// enqueue joins the queue for a slot for a fetch of the class *demand says.
// Reads enqueue their fetches in the order they need them, so that the
// chunk a reader wants first is asked for first.
func (s *slots) enqueue(demand *atomic.Bool) *waiter {
	w := &waiter{demand: demand, ready: make(chan struct{})}
	s.mu.Lock()
	s.waiting = append(s.waiting, w)
	s.dispatch()
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
		s.dispatch()
	} else {
		s.remove(w)
	}
	return ctx.Err()
}

// tryAcquire takes a slot only if one is free for this class and nobody
// who would get it first is waiting. Hedges use it: a hedge is worth a
// spare slot, never a queued fetch's turn.
func (s *slots) tryAcquire(demand bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.busy >= s.cap(demand) || s.firstWaiter(demand) >= 0 {
		return false
	}
	s.busy++
	return true
}

func (s *slots) release() {
	s.mu.Lock()
	s.busy--
	s.dispatch()
	s.mu.Unlock()
}

// kick re-runs dispatch after a waiter was promoted to demand.
func (s *slots) kick() {
	s.mu.Lock()
	s.dispatch()
	s.mu.Unlock()
}

// cap is how many slots a class may fill.
func (s *slots) cap(demand bool) int {
	if demand {
		return s.limit
	}
	return s.limit - s.reserve
}

// dispatch hands free slots to waiters: demand ones first, oldest first.
func (s *slots) dispatch() {
	for s.busy < s.limit {
		i := s.firstWaiter(true)
		if i < 0 && s.busy < s.cap(false) {
			i = s.firstWaiter(false)
		}
		if i < 0 {
			return
		}
		w := s.waiting[i]
		s.waiting = append(s.waiting[:i], s.waiting[i+1:]...)
		w.granted = true
		s.busy++
		close(w.ready)
	}
}

// firstWaiter is the index of the oldest demand waiter, or with demand
// false of the oldest waiter of any class; -1 if none.
func (s *slots) firstWaiter(demand bool) int {
	for i, w := range s.waiting {
		if !demand || w.demand.Load() {
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
