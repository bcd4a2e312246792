package remote

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
)

// Held is the bytes one Hold fetches, kept in memory until Release.
type Held struct {
	s       *Store
	fetches []*fetch
	err     error // starting the fetches failed: the Store is closed
	once    sync.Once
}

// Hold fetches the byte ranges of ranges ahead of the reads that will want
// them — the pages a replayed working set is about to need — and keeps the
// fetched bytes until Release: a read that a held fetch covers is served
// from memory, with no request of its own, however long after it comes and
// whatever passes through the cache meanwhile. Held bytes are outside
// CacheChunks: the caller bounds them by how many Holds it keeps.
//
// Why: a replay that reads a record page by page through ReadAt pays a
// request per run of pages (or, for runs in chunks read before, a whole
// chunk per run once the few cached chunks are evicted); planned by chunk,
// the same pages cost a request or two per chunk, each chunk fetched once.
//
// The ranges are planned by chunk (see plan): ranges of one chunk at most
// HoldGap apart are fetched by one request, and a chunk whose planned
// ranges add up to more than half of it is fetched whole. A planned range
// that a listed fetch covers already (in flight, or cached) is held, not
// fetched again.
//
// Held fetches are bulk requests, queued in the order of the Holds: they
// never take the slot kept for demand reads, and demand fetches go first.
// A demand read that wants bytes of a held fetch still queued promotes it.
// Hold does not block; Wait waits for the bytes.
func (s *Store) Hold(ranges [][2]int64) *Held {
	h := &Held{s: s}
	for _, r := range s.plan(ranges) {
		f, err := s.hold(r[0], r[1])
		if err != nil {
			h.err = fmt.Errorf("%s: hold bytes %d-%d: %w", s.Key(), r[0], r[1]-1, err)
			break
		}
		h.fetches = append(h.fetches, f)
	}
	return h
}

// ChunkSize is the unit of fetching (Config.ChunkSize): a caller that
// plans reads by chunk, as a replay does, groups them by it.
func (s *Store) ChunkSize() int64 { return int64(s.cfg.ChunkSize) }

// Ranges are the byte ranges h fetches, or found fetched: its plan.
func (h *Held) Ranges() [][2]int64 {
	rs := make([][2]int64, len(h.fetches))
	for i, f := range h.fetches {
		rs[i] = [2]int64{f.off, f.off + int64(f.n)}
	}
	return rs
}

// Wait waits until every range of h is fetched, one has failed for good
// (after the Store's retries), the Store is closed, or stop is closed. It
// returns the first failure, which names the object and the bytes; after
// stop, an error that wraps context.Canceled.
func (h *Held) Wait(stop <-chan struct{}) error {
	if h.err != nil {
		return h.err
	}
	s := h.s
	for _, f := range h.fetches {
		select {
		case <-f.done:
		case <-s.ctx.Done():
		case <-stop:
			return fmt.Errorf("%s: waiting for held bytes %d-%d: %w", s.Key(), f.off, f.off+int64(f.n)-1, context.Canceled)
		}
		if err := s.wait(context.Background(), f); errors.Is(err, ErrClosed) {
			return fmt.Errorf("%s: held bytes %d-%d: %w", s.Key(), f.off, f.off+int64(f.n)-1, err)
		} else if err != nil {
			return fmt.Errorf("%s: %w", s.Key(), err) // it names the bytes
		}
		if len(f.bad) > 0 { // the other bytes are held
			return fmt.Errorf("%s: %w", s.Key(), f.bad[0].err)
		}
	}
	return nil
}

// Release lets go of h's bytes: each fetch no other Hold keeps joins the
// cache of recent chunks, as a read's fetch would have, and may be evicted
// from then on. A second Release does nothing.
func (h *Held) Release() {
	h.once.Do(func() {
		s := h.s
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, f := range h.fetches {
			f.refs--
			s.unpinLocked(f)
			s.maybeFreeLocked(f)
		}
	})
}

// pinLocked keeps f, found listed, out of the cache's reach until unpin: a
// cached f leaves the lru. Called with s.mu held.
func (s *Store) pinLocked(f *fetch) {
	if f.cached {
		s.lru.remove(f)
		f.cached = false
		s.cached -= int64(f.n)
	}
	f.pins++
}

// unpinLocked lets go of one pin of f. Once none is left, a fetched f joins the
// cache of recent chunks, as a read's fetch would have, or leaves if
// another fetch has its whole chunk, as dropPartials would have had it
// been cached. Called with s.mu held.
func (s *Store) unpinLocked(f *fetch) {
	f.pins--
	if f.pins == 0 && f.listed && f.ended && !f.cached {
		if s.closed || s.wholeBesidesLocked(f) {
			s.unlistLocked(f)
		} else {
			s.cacheLocked(f)
		}
	}
}

// wholeBesidesLocked says whether a fetch of f's whole chunk, other than f, has
// its bytes. Called with s.mu held.
func (s *Store) wholeBesidesLocked(f *fetch) bool {
	for _, g := range s.chunks[f.off/int64(s.cfg.ChunkSize)] {
		if g != f && g.ended && g.err == nil && len(g.bad) == 0 && s.wholeChunk(g) {
			return true
		}
	}
	return false
}

// hold returns a fetch of [lo, hi), which lies in one chunk, kept out of
// the cache until its holders release it: a listed one that covers it, or
// a new bulk fetch of exactly those bytes.
func (s *Store) hold(lo, hi int64) (*fetch, error) {
	ci := lo / int64(s.cfg.ChunkSize)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	f := s.lookupLocked(ci, lo, hi)
	if f == nil {
		f = &fetch{off: lo, n: int(hi - lo), done: make(chan struct{}), listed: true, held: true, retries: s.cfg.Retries}
		f.bind(s.ctx, context.Background()) // the Hold's: until it is released or the Store closes
		f.turn = s.slots.enqueue(&f.demand, f.n)
		s.chunks[ci] = append(s.chunks[ci], f)
		s.wg.Add(1)
		go s.run(f)
	}
	// Held bytes are the holder's to bound, not the cache's to evict.
	s.pinLocked(f)
	f.refs++
	return f, nil
}

// plan turns byte ranges into the fetches of a Hold: clipped to the
// object, rounded out to whole pages, split at chunk boundaries, sorted,
// and within each chunk merged where they overlap or lie at most HoldGap
// apart. A request costs a round trip plus its transfer: a gap narrower
// than what the link moves in a round trip is cheaper fetched than skipped
// by a second request. A chunk whose merged ranges add up to more than
// half of it is fetched whole, as span decides for demand reads: most of a
// chunk costs about what the chunk does, and the whole chunk serves the
// later reads of any of its bytes.
func (s *Store) plan(ranges [][2]int64) [][2]int64 {
	var rs [][2]int64
	for _, r := range ranges {
		lo, hi := max(r[0], 0), min(r[1], s.size)
		if lo >= hi {
			continue
		}
		lo, hi = lo&^(pageSize-1), min((hi+pageSize-1)&^(pageSize-1), s.size)
		for lo < hi {
			end := min(hi, s.chunkEnd(lo))
			rs = append(rs, [2]int64{lo, end})
			lo = end
		}
	}
	slices.SortFunc(rs, func(a, b [2]int64) int { return cmp.Compare(a[0], b[0]) })
	cs, gap := int64(s.cfg.ChunkSize), int64(s.cfg.HoldGap)
	var out [][2]int64
	first := 0 // out[first:] are of the chunk being planned
	for _, r := range rs {
		if n := len(out); n > 0 && out[n-1][0]/cs == r[0]/cs {
			if r[0] <= out[n-1][1]+gap {
				out[n-1][1] = max(out[n-1][1], r[1])
			} else {
				out = append(out, r)
			}
			continue
		}
		out = s.widen(out, first)
		first = len(out)
		out = append(out, r)
	}
	return s.widen(out, first)
}

// widen replaces out[first:], ranges of one chunk, by the whole chunk if
// they add up to more than half of it.
func (s *Store) widen(out [][2]int64, first int) [][2]int64 {
	if first >= len(out) {
		return out
	}
	lo := out[first][0] / int64(s.cfg.ChunkSize) * int64(s.cfg.ChunkSize)
	hi := s.chunkEnd(lo)
	var n int64
	for _, r := range out[first:] {
		n += r[1] - r[0]
	}
	if 2*n > hi-lo {
		return append(out[:first], [2]int64{lo, hi})
	}
	return out
}
