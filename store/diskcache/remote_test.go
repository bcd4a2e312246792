package diskcache

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/store"
	"github.com/filemap/filemap/store/remote"
)

// rangeObject is a remote.Object that records its requests.
type rangeObject struct {
	data []byte
	mu   sync.Mutex
	reqs [][2]int64 // offset, length
}

func (o *rangeObject) GetRange(ctx context.Context, p []byte, off int64) error {
	o.mu.Lock()
	o.reqs = append(o.reqs, [2]int64{off, int64(len(p))})
	o.mu.Unlock()
	copy(p, o.data[off:])
	return nil
}

func (o *rangeObject) requests() [][2]int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([][2]int64(nil), o.reqs...)
}

func (o *rangeObject) Size() int64     { return int64(len(o.data)) }
func (o *rangeObject) Key() string     { return "https://example.com/object" }
func (o *rangeObject) Version() string { return `"etag"` }
func (o *rangeObject) Close() error    { return nil }

// What the disk cache is for, with store/remote beneath: the first scan
// makes one request per chunk, whole chunks; a second scan by a new daemon
// (a new Cache and a new remote store on the same directory) makes none at
// all.
func TestRemoteSecondScanMakesNoRequests(t *testing.T) {
	dir := t.TempDir()
	data := pattern.Random(size, 30)
	cfg := remote.Config{ChunkSize: cs, HedgeAfter: -1}

	c, _ := open(t, dir, 1<<30)
	obj := &rangeObject{data: data}
	st := c.Wrap(remote.New(obj, cfg))
	readAll(t, st, data, pageSize) // fault by fault
	st.Close()
	c.Close()
	reqs := obj.requests()
	if len(reqs) != 11 {
		t.Errorf("first scan: %d requests, want one per chunk (11): %v", len(reqs), reqs)
	}
	for _, r := range reqs {
		if r[0]%cs != 0 || r[1] != min(cs, size-r[0]) {
			t.Errorf("first scan: request of %d bytes at %d is not one whole chunk", r[1], r[0])
		}
	}

	c, _ = open(t, dir, 1<<30)
	obj = &rangeObject{data: data}
	st = c.Wrap(remote.New(obj, cfg))
	defer st.Close()
	readAll(t, st, data, pageSize)
	if reqs := obj.requests(); len(reqs) != 0 {
		t.Errorf("second scan: %d requests, want none: %v", len(reqs), reqs)
	}
}

// A readahead window reaches the remote store below less the chunks on
// disk (put there by an earlier daemon): the misses go out grouped
// (MaxRequest), the cached chunks are not asked for, and the reads that
// follow make no request of their own.
func TestRemotePrefetchSkipsCached(t *testing.T) {
	dir := t.TempDir()
	data := pattern.Random(size, 31)
	cfg := remote.Config{ChunkSize: cs, MaxRequest: 4 * cs, HedgeAfter: -1}
	c, _ := open(t, dir, 1<<30)
	st := c.Wrap(remote.New(&rangeObject{data: data}, cfg))
	buf := make([]byte, 2*cs)
	if n, err := st.ReadAt(buf, 2*cs); n != len(buf) || err != nil {
		t.Fatalf("ReadAt(chunks 2 and 3) = %d, %v", n, err)
	}
	st.Close()
	c.Close()

	c, _ = open(t, dir, 1<<30)
	defer c.Close()
	obj := &rangeObject{data: data}
	st = c.Wrap(remote.New(obj, cfg))
	defer st.Close()
	st.(store.Prefetcher).Prefetch(context.Background(), [][2]int64{{0, 3 * cs}, {3 * cs, size}})
	readAll(t, st, data, pageSize)
	got := obj.requests()
	slices.SortFunc(got, func(a, b [2]int64) int { return int(a[0] - b[0]) })
	want := [][2]int64{{0, cs}, {cs, cs}, {4 * cs, 4 * cs}, {8 * cs, size - 8*cs}} // requests grow along the window
	if !slices.Equal(got, want) {
		t.Fatalf("requests %v; want the misses grouped, none for chunks 2 and 3 on disk: %v", got, want)
	}
}

// Over a remote store, the cached store holds too: a Hold asks the store
// below for the whole chunks the cache lacks and nothing of those on disk,
// the reads of held bytes make no request of their own, and what they read
// is on disk for the next daemon.
func TestRemoteHoldThroughCache(t *testing.T) {
	dir := t.TempDir()
	data := pattern.Random(size, 32)
	cfg := remote.Config{ChunkSize: cs, HedgeAfter: -1}
	c, _ := open(t, dir, 1<<30)
	st := c.Wrap(remote.New(&rangeObject{data: data}, cfg))
	readAll(t, &offsetStore{st, 2 * cs}, data[2*cs:3*cs], pageSize)
	st.Close()
	c.Close()

	c, _ = open(t, dir, 1<<30)
	obj := &rangeObject{data: data}
	st = c.Wrap(remote.New(obj, cfg))
	h, ok := st.(interface {
		Hold([][2]int64) *remote.Held
		ChunkSize() int64
	})
	if !ok || h.ChunkSize() != cs {
		t.Fatalf("the cached store of a remote store holds: %v, chunk size %d", ok, h.ChunkSize())
	}
	held := h.Hold([][2]int64{{4096, 8192}, {2*cs + 4096, 2*cs + 8192}, {5 * cs, 5*cs + 100}})
	if err := held.Wait(nil); err != nil {
		t.Fatal(err)
	}
	want := [][2]int64{{0, cs}, {5 * cs, cs}}
	got := obj.requests()
	slices.SortFunc(got, func(a, b [2]int64) int { return int(a[0] - b[0]) })
	if !slices.Equal(got, want) {
		t.Fatalf("held %v; want the whole chunks not on disk: %v", got, want)
	}
	for _, ci := range []int64{0, 2, 5} {
		readAll(t, &offsetStore{st, ci * cs}, data[ci*cs:(ci+1)*cs], pageSize)
	}
	held.Release()
	if n := len(obj.requests()); n != len(want) {
		t.Fatalf("%d requests after reading the held chunks; want none of their own", n-len(want))
	}
	st.Close()
	c.Close()

	c, _ = open(t, dir, 1<<30)
	defer c.Close()
	obj = &rangeObject{data: data}
	st = c.Wrap(remote.New(obj, cfg))
	defer st.Close()
	for _, ci := range []int64{0, 2, 5} {
		readAll(t, &offsetStore{st, ci * cs}, data[ci*cs:(ci+1)*cs], pageSize)
	}
	if reqs := obj.requests(); len(reqs) != 0 {
		t.Fatalf("the next daemon sent %v for chunks read through the hold; want them from disk", reqs)
	}
}

// offsetStore reads a store from off on: readAll of one chunk.
type offsetStore struct {
	store.Store
	off int64
}

func (s *offsetStore) ReadAt(p []byte, off int64) (int, error) { return s.Store.ReadAt(p, s.off+off) }

// stallObject is a remote.Object whose requests hang until their context
// ends; it counts those still running.
type stallObject struct {
	rangeObject
	running atomic.Int64
}

func (o *stallObject) GetRange(ctx context.Context, p []byte, off int64) error {
	o.running.Add(1)
	defer o.running.Add(-1)
	<-ctx.Done()
	return ctx.Err()
}

// A read through the cache is bounded by its context down to the remote
// store's requests: a miss whose request hangs (for as long as a request
// may, an hour here) ends with the read's deadline, and so does the
// request.
func TestRemoteReadContext(t *testing.T) {
	c, _ := open(t, t.TempDir(), 1<<30)
	defer c.Close()
	obj := &stallObject{rangeObject: rangeObject{data: pattern.Random(size, 32)}}
	st := c.Wrap(remote.New(obj, remote.Config{ChunkSize: cs, HedgeAfter: -1, Timeout: time.Hour}))
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := store.ReadAtContext(ctx, st, make([]byte, pageSize), 3*cs); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read of a miss whose request hangs: %v; want its deadline", err)
	}
	deadline := time.Now().Add(10 * time.Second) // a bound for a busy machine, not a timing assertion
	for obj.running.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the miss's request still runs after the read's deadline")
		}
		time.Sleep(time.Millisecond)
	}
}
