package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/testutil"
	"github.com/filemap/filemap/store"
)

// groupConfig groups up to four test chunks in one request.
func groupConfig() Config {
	cfg := testConfig()
	cfg.MaxRequest = 4 * testChunk
	return cfg
}

// sortedCalls is the requests made so far, by offset.
func sortedCalls(o *fakeObject) []call {
	cs := o.requests()
	slices.SortFunc(cs, func(a, b call) int { return int(a.off - b.off) })
	return cs
}

func sameRanges(got []call, want [][2]int) bool {
	if len(got) != len(want) {
		return false
	}
	for i, c := range got {
		if c.off != int64(want[i][0]) || c.n != want[i][1] {
			return false
		}
	}
	return true
}

// A window of twelve chunks costs four requests that grow along it, from
// one chunk to MaxRequest; every byte read afterwards is right, and no read
// asks again.
func TestPrefetchGroupsChunks(t *testing.T) {
	o := newFake(t, testSize)
	s := newStore(t, o, groupConfig())
	s.Prefetch(context.Background(), [][2]int64{{0, 3 * testChunk}, {3 * testChunk, 12 * testChunk}})
	readAndCheck(t, s, o.data, 0, 12*testChunk)
	want := [][2]int{{0, testChunk}, {testChunk, 2 * testChunk}, {3 * testChunk, 4 * testChunk}, {7 * testChunk, 4 * testChunk}, {11 * testChunk, testChunk}}
	if got := sortedCalls(o); !sameRanges(got, want) {
		t.Fatalf("requests %v; want requests of 1, 2, 4, 4 and the last chunk: %v", got, want)
	}
}

// Chunks a fetch covers already break a run and are not asked for again;
// a chunk with no neighbour to go with has a request of its own; the
// object's short last chunk ends the last group.
func TestPrefetchSkipsCovered(t *testing.T) {
	o := newFake(t, testSize)
	s := newStore(t, o, groupConfig())
	readAndCheck(t, s, o.data, 2*testChunk, testChunk)
	s.Prefetch(context.Background(), [][2]int64{{0, 7 * testChunk}, {9 * testChunk, 10 * testChunk}, {14 * testChunk, testSize + testChunk}})
	readAndCheck(t, s, o.data, 0, 7*testChunk)
	readAndCheck(t, s, o.data, 9*testChunk, testChunk)
	readAndCheck(t, s, o.data, 14*testChunk, testSize-14*testChunk)
	want := [][2]int{{0, testChunk}, {testChunk, testChunk}, {2 * testChunk, testChunk}, {3 * testChunk, 4 * testChunk},
		{9 * testChunk, testChunk}, {14 * testChunk, testSize - 14*testChunk}}
	if got := sortedCalls(o); !sameRanges(got, want) {
		t.Fatalf("requests %v; want %v", got, want)
	}
}

// With MaxRequest at a chunk, Prefetch asks for nothing.
func TestPrefetchOff(t *testing.T) {
	o := newFake(t, testSize)
	cfg := testConfig()
	cfg.MaxRequest = testChunk
	s := newStore(t, o, cfg)
	s.Prefetch(context.Background(), [][2]int64{{0, 8 * testChunk}})
	if n := len(o.requests()); n != 0 {
		t.Fatalf("%d requests after Prefetch with MaxRequest = ChunkSize", n)
	}
}

// A group's failure reaches the reads waiting for any of its chunks, naming
// the bytes of the request, and is forgotten: the next reads fetch the
// chunks again, each on its own. (The window's first chunk and its last
// have requests of their own, which succeed.)
func TestPrefetchGroupFails(t *testing.T) {
	o := newFake(t, testSize)
	gate := make(chan struct{})
	o.hook = func(ctx context.Context, c call) error {
		if c.n <= testChunk {
			return nil
		}
		select {
		case <-gate:
			return store.Permanent(errors.New("boom"))
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s := newStore(t, o, groupConfig())
	s.Prefetch(context.Background(), [][2]int64{{0, 4 * testChunk}})
	testutil.WaitFor(t, "the window's requests", func() bool { return len(o.requests()) == 3 })
	done := readAsync(t, s, o.data, testChunk+100, testSub+1000) // not a fault's: it waits for the group
	testutil.WaitFor(t, "the read to wait for the group", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		fs := s.chunks[1]
		return len(fs) == 1 && fs[0].refs == 1
	})
	close(gate)
	err := <-done
	if err == nil || !strings.Contains(err.Error(), "boom") || !strings.Contains(err.Error(), "fetching bytes 65536-196607") {
		t.Fatalf("read of a failed group's chunk: %v; want the group's error naming bytes 65536-196607", err)
	}
	readAndCheck(t, s, o.data, 0, 4*testChunk)
	if got := o.requests(); len(got) != 5 {
		t.Fatalf("requests %v; want the window's three and one a chunk of the group after it failed", got)
	}
}

// A demand read of a chunk whose group waits for a slot behind a scan's
// request asks for its own pages on the slot kept for demand reads, rather
// than for the whole group.
func TestPrefetchPromoted(t *testing.T) {
	o := newFake(t, testSize)
	gate := make(chan struct{})
	defer close(gate)
	o.hook = func(ctx context.Context, c call) error {
		if c.off != 12*testChunk {
			return nil
		}
		select {
		case <-gate:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	cfg := groupConfig()
	cfg.Parallel = 2 // one slot for bulk fetches, one kept for demand
	cfg.Timeout = time.Hour
	s := newStore(t, o, cfg)
	scan := readAsync(t, s, o.data, 12*testChunk, testChunk)
	testutil.WaitFor(t, "the scan's request", func() bool { return len(o.requests()) == 1 })
	s.Prefetch(context.Background(), [][2]int64{{0, 4 * testChunk}})
	select {
	case err := <-readAsync(t, s, o.data, 2*testChunk+4096, 4096):
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a demand read of a queued group's chunk still waits behind the scan")
	}
	if got := sortedCalls(o); !sameRanges(got, [][2]int{{2*testChunk + 4096, 4096}, {12 * testChunk, testChunk}}) {
		t.Fatalf("requests %v; want the read's page beside the scan's", got)
	}
	gate <- struct{}{}
	if err := <-scan; err != nil {
		t.Fatal(err)
	}
}

// The chunks a window's Prefetch brings stay until the window is over
// (its ctx is done), whatever arrives meanwhile: reads that come after
// more chunks than CacheChunks have arrived, as the fills of a window that
// waited for read buffers do, find theirs, and no chunk is fetched twice.
// Then they are cached chunks like any, within CacheChunks.
func TestPrefetchKeepsChunksForTheWindow(t *testing.T) {
	o := newFake(t, testSize)
	cfg := groupConfig()
	cfg.CacheChunks = 2
	s := newStore(t, o, cfg)
	window, over := context.WithCancel(context.Background())
	defer over()
	s.Prefetch(window, [][2]int64{{0, 12 * testChunk}})
	s.mu.Lock()
	var fs []*fetch
	for ci := range int64(12) {
		fs = append(fs, s.chunks[ci]...)
	}
	s.mu.Unlock()
	for _, f := range fs {
		recv(t, f.done)
	}
	readAndCheck(t, s, o.data, 0, 12*testChunk)
	want := [][2]int{{0, testChunk}, {testChunk, 2 * testChunk}, {3 * testChunk, 4 * testChunk}, {7 * testChunk, 4 * testChunk}, {11 * testChunk, testChunk}}
	if got := sortedCalls(o); !sameRanges(got, want) {
		t.Fatalf("requests %v; want the window's five and none again: %v", got, want)
	}
	over()
	testutil.WaitFor(t, "the window's chunks to join the cache, within its bound", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.chunks) == cfg.CacheChunks && s.cached == int64(cfg.CacheChunks)*testChunk
	})
}

// The group's buffer goes back when the last of its chunks lets go of it:
// once its window is over, and they leave the cache.
func TestPrefetchBufferReleased(t *testing.T) {
	o := newFake(t, testSize)
	s := newStore(t, o, groupConfig())
	window, over := context.WithCancel(context.Background())
	defer over()
	s.Prefetch(window, [][2]int64{{0, 4 * testChunk}})
	s.mu.Lock()
	g := s.chunks[1][0].group
	s.mu.Unlock()
	if g == nil {
		t.Fatal("no group for chunks 1 and 2")
	}
	readAndCheck(t, s, o.data, 0, 4*testChunk)
	s.mu.Lock()
	live, held := g.live, g.buf != nil
	s.mu.Unlock()
	if live != 2 || !held {
		t.Fatalf("after the reads: %d chunks use the buffer (held %v); want both kept", live, held)
	}
	over()
	testutil.WaitFor(t, "the window's chunks to join the cache", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.cached == 4*testChunk
	})
	s.Idle()
	s.mu.Lock()
	live, held = g.live, g.buf != nil
	s.mu.Unlock()
	if live != 0 || held {
		t.Fatalf("after Idle: %d chunks use the buffer (held %v); want it back in the pool", live, held)
	}
}

// Whatever a window announces, reads that follow get the reference bytes,
// and no request leaves the object.
func FuzzPrefetch(f *testing.F) {
	for _, seed := range [][4]int64{{0, 10 * testChunk, 0, 4096}, {testChunk / 2, 3 * testChunk, 2 * testChunk, testChunk},
		{12 * testChunk, 8 * testChunk, testSize - 100, 200}, {-5, 1, 0, 1}} {
		f.Add(seed[0], seed[1], seed[2], seed[3])
	}
	data := reference(testSize)
	f.Fuzz(func(t *testing.T, lo, n, off, m int64) {
		if lo > 2*testSize || n < 0 || n > 4*testSize || m <= 0 || m > 8*testChunk || off < 0 || off > 2*testSize {
			return
		}
		o := &fakeObject{t: t, data: data}
		s := New(o, groupConfig())
		defer s.Close()
		s.Prefetch(context.Background(), [][2]int64{{lo, lo + n}, {off, off + m}})
		checkReadAt(t, s, o.data, off, int(m))
		checkReadAt(t, s, o.data, max(lo, 0), int(min(max(n, 1), 8*testChunk)))
	})
}

// A read of a readahead window's chunk that a faulter comes to wait for
// (Promote) gets its bytes from a demand request of their own, while the
// window's request that holds them is still running; the other reads of
// that request wait for it as before, and nothing is read twice but those
// bytes.
func TestPromoteMovesWaitingRead(t *testing.T) {
	o := newFake(t, testSize)
	h := newHolder()
	o.hook = h.hook
	s := newStore(t, o, groupConfig())
	window, over := context.WithCancel(context.Background())
	defer over()
	s.Prefetch(window, [][2]int64{{0, 7 * testChunk}}) // requests of chunks 0, 1-2, 3-6
	held := map[int64]*heldCall{}
	for range 3 {
		c := h.next(t)
		held[c.off] = c
	}
	if c := held[3*testChunk]; c == nil || c.n != 4*testChunk {
		t.Fatalf("requests %v; want one of chunks 3-6", held)
	}
	view := func(off int64) <-chan error {
		done := make(chan error, 1)
		go func() {
			b, release, ok, err := s.View(context.Background(), off, testChunk) // a readahead fill's, not a fault's
			switch {
			case err != nil || !ok:
				done <- fmt.Errorf("View(%d) = ok %v, %v", off, ok, err)
			case !bytes.Equal(b, o.data[off:off+testChunk]):
				done <- fmt.Errorf("View(%d): wrong bytes", off)
			default:
				release()
				done <- nil
			}
		}()
		return done
	}
	faulted, other := view(4*testChunk), view(5*testChunk)
	testutil.WaitFor(t, "the views to wait for the window's request", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.chunks[4]) == 1 && s.chunks[4][0].refs == 1 && len(s.chunks[5]) == 1 && s.chunks[5][0].refs == 1
	})

	// Recent requests say a window's request of 4 chunks takes far longer
	// than one of a chunk: the fault's bytes come sooner on their own.
	for range hedgeMinSamples {
		s.lat[s.sizeClass(4*testChunk)].add(time.Second)
		s.lat[s.sizeClass(testChunk)].add(10 * time.Millisecond)
	}
	s.Promote(4*testChunk, testChunk)
	own := h.next(t)
	if own.off != 4*testChunk || own.n != testChunk {
		t.Fatalf("request %v after Promote; want chunk 4 alone", own)
	}
	own.release <- nil
	if err := recv(t, faulted); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-other:
		t.Fatalf("the view of chunk 5 ended (%v) before the window's request did", err)
	default:
	}
	for _, c := range held {
		c.release <- nil
	}
	if err := recv(t, other); err != nil {
		t.Fatal(err)
	}
	if n := len(o.requests()); n != 4 {
		t.Fatalf("%d requests; want the window's 3 and chunk 4's own", n)
	}
}
