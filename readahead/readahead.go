// Package readahead is filemap's file_ra_state and mm/readahead.c: it decides
// which pages a fault reads besides the one it needs, and when to read ahead
// of a sequential reader. It does no I/O, so its windows are tested exactly.
//
// A miss reads the read-around window [N − ra/2, N + ra/2) and marks a page
// near its end (start + size − async_size) as the marker. The handler keeps
// the marker page out of the cache, holding its bytes, so the reader's touch
// of it arrives as a fault even though every other page of the window is
// mapped by the kernel without a message. That fault starts the next window
// asynchronously, larger each time (get_next_ra_size) up to the maximum,
// with its own marker on its first page: the I/O stays a window ahead of a
// sequential reader, who never waits for it.
package readahead

import "fmt"

// DefaultPages is the kernel's VM_READAHEAD_PAGES: 128 KiB of 4 KiB pages,
// the read-around window of a miss.
const DefaultPages = 32

// DefaultMaxPages bounds the windows a sequential stream ramps up to: 8 MiB,
// what this machine's disk has as read_ahead_kb.
const DefaultMaxPages = 2048

// Advice is what madvise(2) tells the kernel about an access pattern.
type Advice uint8

const (
	Normal     Advice = iota // MADV_NORMAL: read-around
	Random                   // MADV_RANDOM: the faulting page alone
	Sequential               // MADV_SEQUENTIAL: a doubled window ahead
	WillNeed                 // MADV_WILLNEED: read the range now
	DontNeed                 // MADV_DONTNEED: drop the range
)

var adviceNames = [...]string{"normal", "random", "sequential", "willneed", "dontneed"}

func (a Advice) String() string {
	if int(a) < len(adviceNames) {
		return adviceNames[a]
	}
	return fmt.Sprintf("Advice(%d)", uint8(a))
}

// ParseAdvice is the inverse of Advice.String.
func ParseAdvice(s string) (Advice, error) {
	for i, n := range adviceNames {
		if n == s {
			return Advice(i), nil
		}
	}
	return 0, fmt.Errorf("unknown advice %q (want normal, random, sequential, willneed or dontneed)", s)
}

// Window is the pages [Start, End) a read covers, and its marker page:
// the page whose touch starts the next window, or -1 for none.
type Window struct {
	Start, End int64
	Marker     int64
}

// Len is the number of pages in the window.
func (w Window) Len() int64 { return w.End - w.Start }

func (w Window) String() string {
	if w.Marker < 0 {
		return fmt.Sprintf("[%d, %d)", w.Start, w.End)
	}
	return fmt.Sprintf("[%d, %d) marker %d", w.Start, w.End, w.Marker)
}

// Config is the readahead tuning of an object's mappings.
type Config struct {
	ReadaheadPages    int64 // read-around window of a miss (ra_pages)
	ReadaheadMaxPages int64 // largest async window of a sequential stream

	// Ramp, if more than the kernel's 2 and 4, is how many times each
	// window of a sequential stream is the one before it. Each step of the
	// ramp waits for a request's round trip: where that is tens of ms and
	// the largest window hundreds of MiB (an object store's), the kernel's
	// ramp spends a second below the depth that keeps the link full.
	Ramp int64
}

func (c Config) norm() Config {
	if c.ReadaheadPages <= 0 {
		c.ReadaheadPages = DefaultPages
	}
	if c.ReadaheadMaxPages < c.ReadaheadPages {
		c.ReadaheadMaxPages = max(c.ReadaheadPages, DefaultMaxPages)
	}
	return c
}

// MmapLotsaMiss is the kernel's MMAP_LOTSAMISS: after this many more
// misses than hits, a mapping's misses read their page alone.
const MmapLotsaMiss = 100

// State is file_ra_state: the last window read for one mapping, and
// mmap_miss, how far its misses outnumber its hits.
type State struct {
	Start, Size, AsyncSize int64
	MmapMiss               int
}

// FaultAroundPages is the kernel's fault-around window: 16 pages.
const FaultAroundPages = 16

// Mapped records pages the kernel's fault-around has most likely mapped
// for this mapping without a message: the uptodate neighbours of a miss in
// its 16-page fault-around block. The kernel takes them off mmap_miss
// (filemap_map_pages); the handler cannot see them, so it counts them here.
func (s *State) Mapped(n int64) {
	s.MmapMiss = max(s.MmapMiss-int(n), 0)
}

// Hit records a fault that found its page read already (in the cache, in
// flight, or held as a marker). The handler sees few hits — the kernel maps
// cached pages without telling it — so it counts the ones it sees.
func (s *State) Hit() {
	if s.MmapMiss > 0 {
		s.MmapMiss--
	}
}

// Miss is do_sync_mmap_readahead: the window a miss at index reads, in an
// object of npages pages.
func (s *State) Miss(cfg Config, index, npages int64, advice Advice) Window {
	cfg = cfg.norm()
	switch {
	case advice == Random || cfg.ReadaheadPages <= 1:
		return clip(Window{index, index + 1, -1}, npages)
	case advice == Sequential:
		// Twice ra_pages, forward, with the marker in the middle: a stream
		// that keeps going keeps its I/O a window ahead.
		size := 2 * cfg.ReadaheadPages
		s.Start, s.Size, s.AsyncSize = index, size, size/2
	default:
		if s.MmapMiss < 1000 {
			s.MmapMiss++
		}
		if s.MmapMiss > MmapLotsaMiss {
			// Read-around is not paying: these misses are random.
			return clip(Window{index, index + 1, -1}, npages)
		}
		s.Start, s.Size, s.AsyncSize = max(index-cfg.ReadaheadPages/2, 0), cfg.ReadaheadPages, cfg.ReadaheadPages/4
	}
	return clip(s.window(), npages)
}

// MarkerHit is page_cache_async_ra: the touch of the marker at index
// starts the next window. The caller reads it without making the toucher
// wait. ok is false when there is nothing left to read.
//
// ahead, if not nil, counts the pages after index that are cached or being
// read, up to the largest window: the kernel's page_cache_next_miss. It is
// called only for a marker of a window this state no longer describes
// (another stream, or another thread's misses, moved it), whose size the
// pages after it tell.
func (s *State) MarkerHit(cfg Config, index, npages int64, ahead func() int64) (w Window, ok bool) {
	cfg = cfg.norm()
	switch {
	case index == s.Start+s.Size-s.AsyncSize:
		s.Start += s.Size
		s.Size = nextSize(s.Size, cfg)
	case ahead != nil:
		// Continue after that window's pages, growing from its size, as
		// the stream would have: a window of the ramp's first size would
		// fall within them, claim nothing and leave no marker.
		n := ahead()
		s.Start = index + 1 + n
		s.Size = nextSize(max(n+1, cfg.ReadaheadPages), cfg)
	default:
		// Read ahead from the marker on.
		s.Start = index + 1
		s.Size = nextSize(cfg.ReadaheadPages, cfg)
	}
	s.AsyncSize = s.Size
	w = clip(s.window(), npages)
	return w, w.Len() > 0
}

func (s *State) window() Window {
	return Window{s.Start, s.Start + s.Size, s.Start + s.Size - s.AsyncSize}
}

// nextSize is get_next_ra_size: quadruple small windows, double middling
// ones, and stop at max; or grow by cfg.Ramp, if that is more.
func nextSize(cur int64, cfg Config) int64 {
	grow := int64(2)
	if cur < cfg.ReadaheadMaxPages/16 {
		grow = 4
	}
	return min(max(grow, cfg.Ramp)*cur, cfg.ReadaheadMaxPages)
}

// clip bounds a window to the object; a marker outside it is dropped.
func clip(w Window, npages int64) Window {
	w.Start, w.End = max(w.Start, 0), min(w.End, npages)
	if w.End < w.Start {
		w.End = w.Start
	}
	if w.Marker < w.Start || w.Marker >= w.End {
		w.Marker = -1
	}
	return w
}

// MaxStreams is how many sequential streams one mapping's readahead
// follows at once.
const MaxStreams = 4

// Streams is a mapping's readahead state: a State for each of a few
// sequential streams, so that one stream's misses do not reset another's
// window. Several threads reading different parts of a mapping are several
// streams; so is memmove, which loads the end of a large copy before its
// start: the miss at the end must not throw away the window that is
// keeping ahead of the start. mmap_miss is the mapping's, as in the kernel.
type Streams struct {
	st       [MaxStreams]State
	used     [MaxStreams]uint64 // when each stream was last used; 0 for never
	hits     [MaxStreams]int    // markers each stream has had touched
	tick     uint64
	MmapMiss int
}

// Miss is State.Miss on the stream the miss at index belongs to: the one
// whose window it continues, or else the least recently used, restarted.
func (s *Streams) Miss(cfg Config, index, npages int64, advice Advice) Window {
	i := s.near(index)
	if i < 0 {
		i = s.victim()
		s.st[i], s.hits[i] = State{}, 0
	}
	s.touch(i)
	st := &s.st[i]
	st.MmapMiss = s.MmapMiss
	w := st.Miss(cfg, index, npages, advice)
	s.MmapMiss = st.MmapMiss
	return w
}

// MarkerHit is State.MarkerHit on the stream whose marker index is, or
// else on the stream the index is near.
func (s *Streams) MarkerHit(cfg Config, index, npages int64, ahead func() int64) (Window, bool) {
	i := -1
	for j := range s.st {
		if st := &s.st[j]; s.used[j] != 0 && index == st.Start+st.Size-st.AsyncSize {
			i = j
			break
		}
	}
	if i < 0 {
		if i = s.near(index); i < 0 {
			i = s.victim()
			s.st[i], s.hits[i] = State{Start: index, Size: cfg.norm().ReadaheadPages}, 0
		}
	}
	s.touch(i)
	s.hits[i]++
	return s.st[i].MarkerHit(cfg, index, npages, ahead)
}

// Hit is State.Hit for the mapping.
func (s *Streams) Hit() {
	if s.MmapMiss > 0 {
		s.MmapMiss--
	}
}

// Mapped is State.Mapped for the mapping.
func (s *Streams) Mapped(n int64) {
	s.MmapMiss = max(s.MmapMiss-int(n), 0)
}

// near is the stream whose window index falls in or just past (within
// half a window), or -1.
func (s *Streams) near(index int64) int {
	for j := range s.st {
		st := &s.st[j]
		if s.used[j] != 0 && st.Start <= index && index < st.Start+st.Size+max(st.Size/2, 1) {
			return j
		}
	}
	return -1
}

// victim is the stream a new one replaces: one never used, else the least
// recently used of those whose markers were never touched (a lone miss, such
// as the end of a copy loaded first), else the least recently used. A stream
// that is being read keeps its place however many lone misses come by.
func (s *Streams) victim() int {
	v := 0
	for j := range s.used {
		if s.used[j] == 0 {
			return j
		}
		if lone, vLone := s.hits[j] == 0, s.hits[v] == 0; lone != vLone {
			if lone {
				v = j
			}
		} else if s.used[j] < s.used[v] {
			v = j
		}
	}
	return v
}

func (s *Streams) touch(i int) {
	s.tick++
	s.used[i] = s.tick
}
