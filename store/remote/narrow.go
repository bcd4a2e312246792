package remote

import (
	"cmp"
	"slices"
	"time"
)

// A failed request must not cost the pages it did not fail for. The
// kernel's contract is that a page that cannot be read gets SIGBUS and its
// neighbours keep working; but a fetch is a chunk (or a group of chunks),
// and a server that fails one page fails every request that asks for it.
// So a fetch whose request fails is narrowed down to the pages that fail:
//
//   - the bytes that arrived before a failure (a body that broke off, see
//     Short) are kept, and the page where it broke off is asked for alone,
//     apart from the rest;
//   - a range of which nothing arrived is retried whole, with backoff, as
//     a fetch always was: most failures are the server's or the network's
//     (a 503, a reset), and a retry cures them with one request;
//   - if it fails again, it is asked for in halves, and once some bytes
//     have arrived, the half that fails is halved in turn, down to the
//     page: a bad page in a chunk of P pages costs about 2·log2(P)
//     requests, each for bytes not asked for before;
//   - if both halves fail and no request of the fetch has brought a byte,
//     the failure is not local: the range is retried whole, with backoff;
//   - a page alone is given up once 1+Retries requests that asked for it
//     have failed (the halvings count), a range of pages once that many
//     failed when it was not local; everything left is given up when the
//     fetch's context ends, or an error is permanent (which fails the whole
//     fetch).
//
// The pages given up are recorded as the fetch's bad runs; reads of the
// others are served from it. As in the kernel, where readahead passes over
// a page whose read failed and only a read of that page itself tries
// again: a read that starts in a bad run asks for its pages again (errors
// are not sticky), one that reaches a bad run further on gets its error
// (which names the bytes) while the failure is recent — within BackoffMax,
// as long as a retry would have waited — and after that asks again too
// (see Store.get).

// A badRun is pages [off, end) that a fetch gave up on, and why.
type badRun struct {
	off, end int64
	err      error
	tries    int       // requests that asked for its pages and failed, at most
	at       time.Time // when it was given up
}

// A salvage is the narrowing down of one failed fetch.
type salvage struct {
	s      *Store
	f      *fetch
	base   int64   // the first byte of f's request
	bp     *[]byte // the bytes that arrived, from base; allocated at the first
	fails  []uint8 // by page from base: failed requests that asked for it
	limit  int     // failed requests after which a page is given up
	local  bool    // a request of f brought bytes: failures are of some pages
	probed bool    // the first failure was tried in halves
	stop   error   // permanent, or f's context ended: nothing more is asked
	bad    []badRun
}

// A failure is the part [lo, hi) of a request that did not arrive, and
// where to split it in two.
type failure struct {
	lo, hi, at int64
	err        error
}

// failed records a request for [lo, hi) that failed with err after its
// first got bytes, in bp, arrived, and returns the part still missing, or
// nil when it is given up.
func (x *salvage) failed(lo, hi int64, bp *[]byte, got int, err error) *failure {
	if got > 0 {
		x.keep(lo, (*bp)[:got])
		x.local = true
	}
	x.s.bufs.put(bp)
	lo += int64(got)
	if x.stop == nil {
		switch {
		case permanent(err):
			x.stop = err
		case x.f.ctx.Err() != nil:
			x.stop = x.s.ended(x.f)
		}
	}
	if x.stop != nil {
		x.giveUp(lo, hi, x.stop)
		return nil
	}
	for i := x.page(lo); i < x.page(hi+pageSize-1); i++ {
		x.fails[i] = min(x.fails[i]+1, 255)
	}
	at := lo + (hi-lo)/2/pageSize*pageSize
	if got > 0 || at == lo {
		at = min(lo+pageSize, hi) // the page where the body broke off, alone
	}
	return &failure{lo: lo, hi: hi, at: at, err: err}
}

// settle gets the missing part m of a request, or gives it up.
func (x *salvage) settle(m *failure) {
	split := true // until both halves of m fail with nothing arriving
	for m != nil {
		tries := x.tries(m.lo, m.hi)
		if split && m.hi-m.lo > pageSize && (x.local || !x.probed && tries >= min(2, x.limit)) {
			x.probed = true
			l := x.once(m.lo, m.at, m.err)
			r := x.once(m.at, m.hi, m.err)
			if !l.none(m.lo) || !r.none(m.at) { // the failure is of some pages
				x.settle(l)
				x.settle(r)
				return
			}
			split = false // nothing of m arrives: ask for it whole, with backoff
			m = &failure{lo: m.lo, hi: m.hi, at: m.at, err: l.err}
			tries = x.tries(m.lo, m.hi)
		}
		if tries >= x.limit {
			x.giveUp(m.lo, m.hi, m.err)
			return
		}
		if !sleep(x.f.ctx, x.s.backoff(tries-1)) {
			x.stop = x.s.ended(x.f)
			x.giveUp(m.lo, m.hi, x.stop)
			return
		}
		m = x.once(m.lo, m.hi, m.err)
	}
}

// none says whether m is the failure of a request for bytes from lo of
// which nothing arrived.
func (m *failure) none(lo int64) bool { return m != nil && m.lo == lo }

// once asks for [lo, hi) again, after a failure with err, and returns the
// part that is still missing.
func (x *salvage) once(lo, hi int64, err error) *failure {
	if x.stop != nil {
		x.giveUp(lo, hi, x.stop)
		return nil
	}
	x.s.cfg.Observer.Retry(Kind(err))
	bp, got, err := x.s.request(x.f, lo, hi)
	if err != nil {
		return x.failed(lo, hi, bp, got, err)
	}
	x.keep(lo, (*bp)[:hi-lo])
	x.s.bufs.put(bp)
	x.local = true
	return nil
}

// keep copies the bytes b that arrived for lo into the fetch's buffer.
func (x *salvage) keep(lo int64, b []byte) {
	if x.bp == nil {
		x.bp = x.s.bufs.get(x.f.want())
	}
	copy((*x.bp)[lo-x.base:], b)
}

func (x *salvage) page(off int64) int64 { return (off - x.base) / pageSize }

// tries is the most failed requests any page of [lo, hi) was asked for by.
func (x *salvage) tries(lo, hi int64) int {
	n := 0
	for i := x.page(lo); i < x.page(hi+pageSize-1); i++ {
		n = max(n, int(x.fails[i]))
	}
	return n
}

func (x *salvage) giveUp(lo, hi int64, err error) {
	if lo < hi {
		x.bad = append(x.bad, badRun{off: lo, end: hi, err: err, tries: x.tries(lo, hi), at: time.Now()})
	}
}

// result is the fetch's outcome: the bytes, with the runs given up; or,
// when nothing arrived or a failure was permanent, an error.
func (x *salvage) result() (*[]byte, []badRun, error) {
	slices.SortFunc(x.bad, func(a, b badRun) int { return cmp.Compare(a.off, b.off) })
	if x.bp == nil || x.stop != nil && permanent(x.stop) {
		x.s.bufs.put(x.bp)
		lo, hi := x.base, x.base+int64(x.f.want())
		err := x.stop
		if err == nil {
			err = x.bad[0].err
		}
		return nil, nil, fetchError(lo, hi, x.tries(lo, hi), err)
	}
	for i, r := range x.bad {
		x.bad[i].err = fetchError(r.off, r.end, r.tries, r.err)
	}
	if len(x.bad) == 0 { // every part arrived after all
		return x.bp, nil, nil
	}
	return x.bp, x.bad, nil
}
