package remote

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/filemap/filemap/internal/testutil"
	"github.com/filemap/filemap/store"
)

// A Hold's plan: whole pages, split at chunk boundaries, sorted, merged
// within a chunk across gaps of at most HoldGap, and a chunk whose ranges
// add up to more than half of it fetched whole.
func TestHoldPlan(t *testing.T) {
	const c, p = testChunk, pageSize
	cfg := testConfig()
	cfg.HoldGap = 2 * p
	s := newStore(t, newFake(t, testSize), cfg)
	for _, tc := range []struct {
		name string
		in   [][2]int64
		want [][2]int64
	}{
		{"a page", [][2]int64{{5*c + p, 5*c + 2*p}}, [][2]int64{{5*c + p, 5*c + 2*p}}},
		{"rounded out to pages", [][2]int64{{100, p + 1}}, [][2]int64{{0, 2 * p}}},
		{"a gap of HoldGap merged", [][2]int64{{c, c + p}, {c + 3*p, c + 4*p}}, [][2]int64{{c, c + 4*p}}},
		{"a wider gap not", [][2]int64{{c, c + p}, {c + 4*p, c + 5*p}}, [][2]int64{{c, c + p}, {c + 4*p, c + 5*p}}},
		{"overlaps merged", [][2]int64{{c, c + 3*p}, {c + p, c + 2*p}}, [][2]int64{{c, c + 3*p}}},
		{"sorted", [][2]int64{{3 * c, 3*c + p}, {c, c + p}}, [][2]int64{{c, c + p}, {3 * c, 3*c + p}}},
		{"not merged across chunks", [][2]int64{{2*c - p, 2 * c}, {2 * c, 2*c + p}}, [][2]int64{{2*c - p, 2 * c}, {2 * c, 2*c + p}}},
		{"split at a chunk boundary", [][2]int64{{2*c - p, 2*c + p}}, [][2]int64{{2*c - p, 2 * c}, {2 * c, 2*c + p}}},
		{"most of a chunk is the chunk", [][2]int64{{4 * c, 4*c + c/2 + p}}, [][2]int64{{4 * c, 5 * c}}},
		{"half of it is not", [][2]int64{{4 * c, 4*c + c/2}}, [][2]int64{{4 * c, 4*c + c/2}}},
		{"far-apart ranges adding up to most of it", [][2]int64{{4 * c, 4*c + c/4 + p}, {5*c - c/4, 5 * c}}, [][2]int64{{4 * c, 5 * c}}},
		{"clipped to the object", [][2]int64{{16 * c, 20 * c}}, [][2]int64{{16 * c, testSize}}},
		{"nothing", [][2]int64{{-5, 0}, {testSize, testSize + p}, {c, c}}, nil},
	} {
		if got := s.plan(tc.in); fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("%s: plan(%v) = %v; want %v", tc.name, tc.in, got, tc.want)
		}
	}
}

// Held bytes serve reads with no request of their own however many other
// chunks pass through the cache meanwhile; once released they are cached
// like any fetch, within the cache's budget.
func TestHoldKeepsBytesUntilReleased(t *testing.T) {
	o := newFake(t, testSize)
	cfg := testConfig()
	cfg.Parallel = 2 // a cache of 4 chunks
	s := newStore(t, o, cfg)
	var ranges [][2]int64
	for i := range int64(6) {
		ranges = append(ranges, [2]int64{i*testChunk + 4096, i*testChunk + 8192})
	}
	h := s.Hold(ranges)
	if err := h.Wait(nil); err != nil {
		t.Fatal(err)
	}
	if got := h.Ranges(); fmt.Sprint(got) != fmt.Sprint(ranges) {
		t.Fatalf("held %v; want %v", got, ranges)
	}
	for i := range 8 {
		readAndCheck(t, s, o.data, int64(8+i)*testChunk, testChunk)
	}
	before := len(o.requests())
	for _, r := range ranges {
		readAndCheck(t, s, o.data, r[0], int(r[1]-r[0]))
	}
	if n := len(o.requests()) - before; n != 0 {
		t.Fatalf("reads of held bytes made %d requests", n)
	}
	h.Release()
	h.Release() // a second one does nothing
	s.mu.Lock()
	defer s.mu.Unlock()
	if budget := int64(2 * cfg.Parallel * testChunk); s.cached > budget {
		t.Fatalf("cache holds %d bytes after the release; budget %d", s.cached, budget)
	}
	listed, inLRU := 0, 0
	for _, l := range s.chunks {
		listed += len(l)
	}
	for f := s.lru.head; f != nil; f = f.next {
		if f.refs != 0 || f.pins != 0 {
			t.Fatalf("cached fetch %+v still referenced", f)
		}
		inLRU++
	}
	if listed != inLRU {
		t.Fatalf("%d fetches listed, %d cached: released holds must be cached or forgotten", listed, inLRU)
	}
}

// A Hold of bytes a fetch has already is no request, and keeps that fetch
// out of the cache's reach until released.
func TestHoldReusesFetched(t *testing.T) {
	o := newFake(t, testSize)
	cfg := testConfig()
	cfg.Parallel = 1 // a cache of 2 chunks
	s := newStore(t, o, cfg)
	readAndCheck(t, s, o.data, 3*testChunk, testChunk)
	h := s.Hold([][2]int64{{3*testChunk + 4096, 3*testChunk + 8192}})
	if err := h.Wait(nil); err != nil {
		t.Fatal(err)
	}
	if r := o.requests(); len(r) != 1 {
		t.Fatalf("requests %v; want only the read's", r)
	}
	if got := h.Ranges(); fmt.Sprint(got) != fmt.Sprint([][2]int64{{3 * testChunk, 4 * testChunk}}) {
		t.Fatalf("held %v; want the read's chunk", got)
	}
	for i := range 4 {
		readAndCheck(t, s, o.data, int64(8+i)*testChunk, testChunk)
	}
	readAndCheck(t, s, o.data, 3*testChunk, testChunk)
	if r := o.requests(); len(r) != 5 {
		t.Fatalf("%d requests; the held chunk was fetched again", len(r))
	}
	h.Release()
}

// Held fetches are bulk: they never take the slot kept for faults, a fault
// goes before them, and a fault that wants held bytes still queued
// promotes their fetch. A Hold is no sign of locality: a fault elsewhere
// in a chunk held in part fetches only its span.
func TestHoldLeavesFaultsFirst(t *testing.T) {
	o := newFake(t, testSize)
	hk := newHolder()
	o.hook = hk.hook
	cfg := testConfig()
	cfg.Parallel = 2 // bulk fetches may hold 1
	s := newStore(t, o, cfg)
	h := s.Hold([][2]int64{{testChunk, 2 * testChunk}, {2 * testChunk, 3 * testChunk}, {3 * testChunk, 4 * testChunk}})
	first := hk.next(t)
	if first.off != testChunk {
		t.Fatalf("first request %v; want held chunk 1", first)
	}

	fault := readAsync(t, s, o.data, 9*testChunk+4096, 4096)
	f := hk.next(t)
	if f.off != 9*testChunk || f.n != testSub {
		t.Fatalf("request %v; want the fault's span in chunk 9 on the reserved slot", f)
	}

	promoted := readAsync(t, s, o.data, 3*testChunk+4096, 4096)
	testutil.WaitFor(t, "the fault to promote held chunk 3", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.chunks[3]) == 1 && s.chunks[3][0].demand.Load()
	})
	f.release <- nil
	if err := recv(t, fault); err != nil {
		t.Fatal(err)
	}
	next := hk.next(t)
	if next.off != 3*testChunk || next.n != testChunk {
		t.Fatalf("request %v; want held chunk 3, promoted by a fault, before chunk 2", next)
	}
	next.release <- nil
	if err := recv(t, promoted); err != nil {
		t.Fatal(err)
	}
	first.release <- nil
	hk.next(t).release <- nil
	if err := h.Wait(nil); err != nil {
		t.Fatal(err)
	}
	h.Release()

	part := s.Hold([][2]int64{{7 * testChunk, 7*testChunk + 4096}})
	hk.next(t).release <- nil
	if err := part.Wait(nil); err != nil {
		t.Fatal(err)
	}
	elsewhere := readAsync(t, s, o.data, 7*testChunk+2*testSub, 4096)
	if c := hk.next(t); c.off != 7*testChunk+2*testSub || c.n != testSub {
		t.Fatalf("request %v; want only the fault's span", c)
	} else {
		c.release <- nil
	}
	if err := recv(t, elsewhere); err != nil {
		t.Fatal(err)
	}
	part.Release()
}

// Wait ends with an error that names the object and the bytes: when the
// fetch fails for good, when the Store closes, and (wrapping
// context.Canceled) when the caller stops waiting. Release after any of
// them, even after Close, is safe.
func TestHoldWaitErrors(t *testing.T) {
	t.Run("failed", func(t *testing.T) {
		o := newFake(t, testSize)
		denied := errors.New("403 access denied")
		o.hook = func(context.Context, call) error { return store.Permanent(denied) }
		s := newStore(t, o, testConfig())
		h := s.Hold([][2]int64{{2 * testChunk, 2*testChunk + 4096}})
		err := h.Wait(nil)
		if !errors.Is(err, denied) || !strings.Contains(err.Error(), "fake:obj") || !strings.Contains(err.Error(), fmt.Sprint(2*testChunk)) {
			t.Fatalf("Wait = %v; want the failure, naming the object and the bytes", err)
		}
		h.Release()
		o.hook = nil
		readAndCheck(t, s, o.data, 2*testChunk, 4096) // a failure is not kept
	})
	t.Run("stopped", func(t *testing.T) {
		o := newFake(t, testSize)
		hk := newHolder()
		o.hook = hk.hook
		s := newStore(t, o, testConfig())
		h := s.Hold([][2]int64{{0, 4096}})
		c := hk.next(t)
		stop := make(chan struct{})
		close(stop)
		if err := h.Wait(stop); !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "fake:obj") {
			t.Fatalf("Wait after stop = %v; want context.Canceled, naming the object", err)
		}
		h.Release()
		c.release <- nil
	})
	t.Run("closed", func(t *testing.T) {
		o := newFake(t, testSize)
		hk := newHolder()
		o.hook = hk.hook
		s := newStore(t, o, testConfig())
		h := s.Hold([][2]int64{{0, 4096}})
		done := make(chan error, 1)
		go func() { done <- h.Wait(nil) }()
		hk.next(t)
		s.Close()
		if err := recv(t, done); !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "held bytes 0-4095") {
			t.Fatalf("Wait across Close = %v; want ErrClosed, naming the bytes", err)
		}
		h.Release()
		after := s.Hold([][2]int64{{0, 4096}})
		if err := after.Wait(nil); !errors.Is(err, ErrClosed) {
			t.Fatalf("Wait of a Hold after Close = %v; want ErrClosed", err)
		}
		after.Release()
	})
	t.Run("closed while held", func(t *testing.T) {
		o := newFake(t, testSize)
		s := newStore(t, o, testConfig())
		h := s.Hold([][2]int64{{0, 4096}})
		if err := h.Wait(nil); err != nil {
			t.Fatal(err)
		}
		s.Close()
		h.Release()
		s.mu.Lock()
		defer s.mu.Unlock()
		if len(s.chunks) != 0 || s.lru.head != nil {
			t.Fatalf("after Close and Release: %d chunks listed, lru %v", len(s.chunks), s.lru.head)
		}
	})
}

// A held part of a chunk that was fetched whole meanwhile is dropped when
// released, not cached beside the whole chunk: the whole chunk serves it.
func TestReleasedPartGivesWayToWholeChunk(t *testing.T) {
	o := newFake(t, testSize)
	s := newStore(t, o, testConfig())
	h := s.Hold([][2]int64{{5*testChunk + 4096, 5*testChunk + 8192}})
	if err := h.Wait(nil); err != nil {
		t.Fatal(err)
	}
	readAndCheck(t, s, o.data, 5*testChunk, testChunk)
	h.Release()
	s.mu.Lock()
	list := slices.Clone(s.chunks[5])
	s.mu.Unlock()
	if len(list) != 1 || !s.wholeChunk(list[0]) {
		t.Fatalf("chunk 5 has %d fetches listed after the release; want only the whole chunk", len(list))
	}
	readAndCheck(t, s, o.data, 5*testChunk+4096, 4096)
	if r := o.requests(); len(r) != 2 {
		t.Fatalf("requests %v; want the hold's and the whole chunk's", r)
	}
}

func TestHoldGapDefaults(t *testing.T) {
	for _, c := range []struct{ in, want int }{{0, DefaultHoldGap}, {-1, 0}, {1000, 4096}, {1 << 20, 1 << 20}} {
		if got := (Config{HoldGap: c.in}).withDefaults().HoldGap; got != c.want {
			t.Errorf("HoldGap %d became %d; want %d", c.in, got, c.want)
		}
	}
}
