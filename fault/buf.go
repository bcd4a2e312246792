package fault

import (
	"container/list"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
	"weak"

	"github.com/filemap/filemap/pagecache"
)

// fillMem bounds the daemon's read buffers: the bytes lent to fills plus
// the buffers kept for reuse never exceed limit. The cache's pages live in
// memfds, outside the daemon's RSS; these buffers are the bulk of its heap,
// and without a bound hundreds of fills in flight each held a window.
//
// A fill that cannot have its buffer waits for one, holding nothing else,
// and every buffer lent comes back when its fill ends, so every wait ends.
// Demand fills (a fault's own read) go first, and readahead fills may hold
// at most raLimit, so a demand fill always finds the rest free of readahead:
// it waits only behind other demand fills. A readahead fill that a fault
// waits for is promoted to a demand fill (promote).
//
// Buffers come in power-of-two classes of pages, so a one-page read never
// pays for zeroing a window-sized buffer. Idle ones are kept until they have
// stayed idle through a whole garbage collection, as sync.Pool keeps them,
// but counted against the limit: a sync.Pool would hold buffers of every
// class a burst ever needed, unbounded. A small read may be lent an idle
// buffer of a larger class rather than have it dropped for a new one.
type fillMem struct {
	limit   int64        // bytes lent and idle together
	raLimit int64        // bytes lent that readahead fills may take
	queued  atomic.Int64 // readahead fills waiting: promote's fast path

	mu     sync.Mutex // protects the fields below
	lent   int64
	idle   int64                             // bytes in fresh and old
	fresh  [nclass][]*[]byte                 // idle buffers returned since the last GC
	old    [nclass][]*[]byte                 // idle buffers returned before it
	demand list.List                         // of *memWait, first come first served
	ahead  list.List                         // of *memWait
	byFill map[*pagecache.Fill]*list.Element // readahead waiters, in ahead
	peak   int64                             // the most lent and idle ever: tests check it
	waits  uint64                            // fills that had to wait
}

// nclass covers buffers of up to 1<<(nclass-1) pages, more than chunkPages.
const nclass = 16

type memWait struct {
	fill   *pagecache.Fill // nil for a one-page retry buffer
	size   int64           // bytes of the buffer's class
	demand bool
	grant  func(b *[]byte) // called once, outside the lock; must not block
}

type memGrant struct {
	w *memWait
	b *[]byte
}

// newFillMem makes a bound of limit bytes (at least two pages), a quarter
// of it kept for demand fills.
func newFillMem(limit int64) *fillMem {
	limit = max(limit/ps, 2) * ps
	reserve := max(limit/4/ps, 1) * ps
	m := &fillMem{limit: limit, raLimit: limit - reserve, byFill: make(map[*pagecache.Fill]*list.Element)}
	m.trimAfterEachGC()
	return m
}

func class(pages int64) int { return bits.Len64(uint64(pages - 1)) }

func classBytes(pages int64) int64 { return int64(1) << class(pages) * ps }

// piecePages is how many pages a fill of n pages reads at a time: all of
// them if they fit in one buffer of at most maxPages, else equal pieces
// that do. A readahead fill's buffer fits under the readahead share, a
// demand fill's under the reserve, which readahead leaves it: a demand fill
// never waits for readahead to give back buffers.
func (m *fillMem) piecePages(n, maxPages int64, demand bool) int64 {
	share := m.raLimit
	if demand {
		share = m.limit - m.raLimit
	}
	most := int64(1) << (bits.Len64(uint64(min(maxPages, share/ps))) - 1)
	k := (n + most - 1) / most
	return (n + k - 1) / k
}

// get lends a buffer of at least pages pages to fill f, now or when one is
// free: grant is called with it, outside the lock, from get itself or from
// the put that frees the room. f identifies a readahead waiter to promote;
// it may be nil.
func (m *fillMem) get(f *pagecache.Fill, pages int64, demand bool, grant func(*[]byte)) {
	w := &memWait{fill: f, size: classBytes(pages), demand: demand, grant: grant}
	m.mu.Lock()
	if m.demand.Len() == 0 && (demand || m.ahead.Len() == 0) && m.fitsLocked(w) {
		b := m.take(w)
		m.mu.Unlock()
		grant(b)
		return
	}
	m.waits++
	if demand {
		m.demand.PushBack(w)
	} else {
		e := m.ahead.PushBack(w)
		if f != nil {
			m.byFill[f] = e
			m.queued.Add(1)
		}
	}
	m.mu.Unlock()
}

// wait is get for a caller that can block.
func (m *fillMem) wait(f *pagecache.Fill, pages int64, demand bool) *[]byte {
	ch := make(chan *[]byte, 1)
	m.get(f, pages, demand, func(b *[]byte) { ch <- b })
	return <-ch
}

// put takes back a buffer and lends the room to the fills waiting.
func (m *fillMem) put(b *[]byte) {
	m.mu.Lock()
	m.lent -= int64(len(*b))
	c := class(int64(len(*b)) / ps)
	m.fresh[c] = append(m.fresh[c], b)
	m.idle += int64(len(*b))
	m.admit()
}

// promote makes readahead fill f, if it still waits for a buffer, a demand
// fill: a fault waits for it.
func (m *fillMem) promote(f *pagecache.Fill) {
	if m.queued.Load() == 0 {
		return
	}
	m.mu.Lock()
	e, ok := m.byFill[f]
	if !ok {
		m.mu.Unlock()
		return
	}
	w := m.ahead.Remove(e).(*memWait)
	delete(m.byFill, f)
	m.queued.Add(-1)
	w.demand = true
	m.demand.PushBack(w)
	m.admit()
}

// admit lends buffers to the waiters in order, demand fills first, while
// they fit, then unlocks and calls their grants. A readahead fill never
// passes a demand fill, which could otherwise wait for ever.
func (m *fillMem) admit() {
	var g []memGrant
	for {
		q := &m.demand
		if q.Len() == 0 {
			q = &m.ahead
		}
		e := q.Front()
		if e == nil || !m.fitsLocked(e.Value.(*memWait)) {
			break
		}
		w := q.Remove(e).(*memWait)
		if !w.demand && w.fill != nil {
			delete(m.byFill, w.fill)
			m.queued.Add(-1)
		}
		g = append(g, memGrant{w, m.take(w)})
	}
	m.mu.Unlock()
	for _, x := range g {
		x.w.grant(x.b)
	}
}

// fitsLocked reports whether w's buffer may be lent now. Called with m.mu held.
func (m *fillMem) fitsLocked(w *memWait) bool { return m.fitsSizeLocked(w.demand, w.size) }

// fitsSizeLocked reports whether a buffer of size bytes may be lent now to a
// demand fill or a readahead one. Called with m.mu held.
func (m *fillMem) fitsSizeLocked(demand bool, size int64) bool {
	if demand {
		return m.lent+size <= m.limit
	}
	return m.lent+size <= m.raLimit
}

// take lends w a buffer: an idle one of its class, else the smallest idle
// one that is larger and still fits, else a new one. A larger one wastes
// its tail while lent, but dropping it to make room for a new one would
// leave the garbage collector both to carry.
func (m *fillMem) take(w *memWait) *[]byte {
	for c := class(w.size / ps); c < nclass; c++ {
		size := int64(1) << c * ps
		if !m.fitsSizeLocked(w.demand, size) {
			break
		}
		if b := m.popIdleLocked(c); b != nil {
			m.lent += size
			m.idle -= size
			return b
		}
	}
	m.lent += w.size
	m.makeRoomLocked()
	m.peak = max(m.peak, m.lent+m.idle)
	b := make([]byte, w.size)
	return &b
}

// popIdleLocked takes an idle buffer of class c, the most recently used, or nil.
// Called with m.mu held.
func (m *fillMem) popIdleLocked(c int) *[]byte {
	for _, l := range []*[nclass][]*[]byte{&m.fresh, &m.old} {
		if n := len(l[c]); n > 0 {
			b := l[c][n-1]
			l[c][n-1], l[c] = nil, l[c][:n-1]
			return b
		}
	}
	return nil
}

// makeRoomLocked drops idle buffers, the older first, until the lent and the idle
// fit the limit again. Called with m.mu held.
func (m *fillMem) makeRoomLocked() {
	for _, l := range []*[nclass][]*[]byte{&m.old, &m.fresh} {
		for c := range l {
			for m.lent+m.idle > m.limit && len(l[c]) > 0 {
				n := len(l[c])
				m.idle -= int64(len(*l[c][n-1]))
				l[c][n-1], l[c] = nil, l[c][:n-1]
			}
		}
	}
}

// trim drops the buffers that stayed idle since the last collection, and
// all idle ones if none is lent: an idle daemon gives back what its last
// burst needed.
func (m *fillMem) trim() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.dropLocked(&m.old)
	m.old, m.fresh = m.fresh, [nclass][]*[]byte{}
	if m.lent == 0 {
		m.dropLocked(&m.old)
	}
}

// dropLocked forgets the idle buffers of l. Called with m.mu held.
func (m *fillMem) dropLocked(l *[nclass][]*[]byte) {
	for c := range l {
		for _, b := range l[c] {
			m.idle -= int64(len(*b))
		}
		l[c] = nil
	}
}

// gcTick is an object whose only use is to be collected: its cleanup runs
// after each garbage collection. It holds a pointer so that it is never
// one of the tiny allocations the runtime batches and frees late.
type gcTick struct{ _ *byte }

// trimAfterEachGC calls trim after every garbage collection for as long as
// m is in use.
func (m *fillMem) trimAfterEachGC() {
	wp := weak.Make(m)
	var arm func()
	arm = func() {
		runtime.AddCleanup(new(gcTick), func(struct{}) {
			if m := wp.Value(); m != nil {
				m.trim()
				arm()
			}
		}, struct{}{})
	}
	arm()
}

// stats are the bound's state, for tests and counters.
func (m *fillMem) stats() (lent, idle, peak int64, waits uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lent, m.idle, m.peak, m.waits
}
