package remote

import "context"

// A group is the fetches of a run of adjacent chunks that one request
// brings (see Prefetch). Each chunk stays a fetch of its own, found,
// waited for, cached and evicted as any other; they share the request's
// buffer, which goes back to the pool when the last of them lets go.
type group struct {
	fetches []*fetch // in offset order; the first leads: it has the slot
	n       int      // bytes of all of them

	// Under Store.mu.
	buf  *[]byte // the request's bytes, once fetched
	live int     // fetches whose slice of buf is still in use
}

// Prefetch starts fetching the chunks of ranges (byte ranges, in the order
// a reader wants them) that no fetch covers, each run of adjacent ones in
// requests of up to MaxRequest bytes (store.Prefetcher). A sequential
// reader's readahead window would otherwise cost a request per chunk: four
// times the requests at the defaults, and each costs the server and this
// process about what a megabyte's transfer does.
//
// The requests grow along the window, from one chunk to MaxRequest bytes,
// doubling: a request's bytes are there only once all of them are, and
// one connection brings them at its own rate (25-100 MB/s), so the
// window's first chunk, which its reader wants first, comes in a quarter
// of the time it would at the end of a request of four. The requests after
// it, in flight at once, come as the reader gets to them.
//
// The requests are bulk ones, queued behind those already waiting; a
// demand read that wants a chunk of one still queued promotes it, and then
// waits for the whole request, as a fault on a page under readahead waits
// for the kernel's readahead I/O. They end, retries and all, when ctx is
// done: the window's reads are over.
//
// The chunks it fetches, and those it finds fetched, are kept until then,
// out of CacheChunks, as a Hold keeps its bytes; then they join the cache
// of recent chunks. The window's fills may start long after its requests
// end, each waiting for a read buffer, while other windows' chunks arrive:
// were the window's chunks only cached, those would evict them, and the
// fills would fetch them again. The window bounds what it keeps.
func (s *Store) Prefetch(ctx context.Context, ranges [][2]int64) {
	per := s.cfg.MaxRequest / s.cfg.ChunkSize
	if per < 2 {
		return
	}
	cs := int64(s.cfg.ChunkSize)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	var run, kept []*fetch
	size := 1 // chunks of the next request
	start := func() {
		if len(run) > 0 {
			s.startRunLocked(ctx, run)
			kept = append(kept, run...)
			size = min(2*size, per)
		}
		run = nil
	}
	last := int64(-1) // the last chunk looked at
	for _, r := range ranges {
		lo, hi := max(r[0], 0), min(r[1], s.size)
		for ci := lo / cs; ci*cs < hi; ci++ {
			if ci <= last {
				continue
			}
			last = ci
			a, b := ci*cs, s.chunkEnd(ci*cs)
			if len(run) > 0 && (run[len(run)-1].off+cs != a || len(run) == size) {
				start()
			}
			if f := s.lookupLocked(ci, a, b); f != nil {
				start()
				s.pinLocked(f)
				kept = append(kept, f)
				continue
			}
			if s.gaveUpLocked(ci) { // its reads ask for what they need
				start()
				continue
			}
			run = append(run, &fetch{off: a, n: int(b - a)})
		}
	}
	start()
	if len(kept) > 0 {
		context.AfterFunc(ctx, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			for _, f := range kept {
				s.unpinLocked(f)
			}
		})
	}
}

// startRunLocked lists the fetches of run, one request's chunks, pinned (see
// Prefetch), and starts their request, which ends when ctx is done: a
// group's, or a lone chunk's own. Called with s.mu held.
func (s *Store) startRunLocked(ctx context.Context, run []*fetch) {
	var g *group
	if len(run) > 1 {
		g = &group{fetches: run}
	}
	n := 0
	for _, f := range run {
		n += f.n
		f.group, f.done, f.listed, f.pins = g, make(chan struct{}), true, 1
		ci := f.off / int64(s.cfg.ChunkSize)
		s.chunks[ci] = append(s.chunks[ci], f)
	}
	if g != nil {
		g.n = n
	}
	lead := run[0]
	lead.bind(s.ctx, ctx)
	lead.retries = s.cfg.Retries
	lead.turn = s.slots.enqueue(&lead.demand, n)
	s.wg.Add(1)
	go s.run(lead)
}

// finishGroup records the outcome of g's request for each of its fetches,
// as finish does for one: each gets its part of the bytes and of the pages
// given up, and fails if it got none of the bytes.
func (s *Store) finishGroup(g *group, buf *[]byte, bad []badRun, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	base := g.fetches[0].off
	for _, f := range g.fetches {
		lo, hi := f.off, f.off+int64(f.n)
		var b *[]byte
		fb, ferr := clipRuns(bad, lo, hi), err
		switch {
		case err != nil:
		case len(fb) == 1 && fb[0].off == lo && fb[0].end == hi:
			fb, ferr = nil, fb[0].err
		default:
			at := int(lo - base)
			part := (*buf)[at : at+f.n : at+f.n]
			b = &part
			g.live++
		}
		s.finishLocked(f, b, fb, ferr)
	}
	if g.live > 0 {
		g.buf = buf
	} else {
		s.bufs.put(buf)
	}
}

// clipRuns is the parts of runs within [lo, hi).
func clipRuns(runs []badRun, lo, hi int64) []badRun {
	var out []badRun
	for _, r := range runs {
		if r.off < hi && lo < r.end {
			r.off, r.end = max(r.off, lo), min(r.end, hi)
			out = append(out, r)
		}
	}
	return out
}
