package firecracker

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/testutil"
	"github.com/filemap/filemap/store"
	"github.com/filemap/filemap/store/diskcache"
	"github.com/filemap/filemap/store/remote"
)

// fileObject is a remote.Object over a local file, so that a test has
// store/remote's chunks and holds without a network. It counts requests,
// and fails the first request for bytes of chunk fail (of chunk bytes), if
// it is not negative, for good.
type fileObject struct {
	f           *os.File
	size, chunk int64

	mu       sync.Mutex
	requests [][2]int64 // offset, length
	fail     int64
}

func (o *fileObject) GetRange(_ context.Context, p []byte, off int64) error {
	o.mu.Lock()
	o.requests = append(o.requests, [2]int64{off, int64(len(p))})
	fail := o.fail >= 0 && off/o.chunk == o.fail
	if fail {
		o.fail = -1
	}
	o.mu.Unlock()
	if fail {
		return store.Permanent(errors.New("403 injected"))
	}
	_, err := o.f.ReadAt(p, off)
	return err
}

func (o *fileObject) Size() int64     { return o.size }
func (o *fileObject) Key() string     { return "test:" + o.f.Name() }
func (o *fileObject) Version() string { return "v1" }
func (o *fileObject) Close() error    { return o.f.Close() }

func (o *fileObject) sent() [][2]int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([][2]int64(nil), o.requests...)
}

// remoteMem serves the memory file through store/remote, with chunks of
// chunk bytes and no hedging (a hedge is a second request for the same
// bytes, which would blur the counts). Every restore's object is kept in
// objs, in order.
type remoteMem struct {
	path  string
	chunk int

	mu   sync.Mutex
	objs []*fileObject
	fail int64 // the chunk whose first request fails, for the next object opened; -1 for none
}

func (m *remoteMem) open(context.Context) (store.Store, error) {
	f, err := os.Open(m.path)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	m.mu.Lock()
	o := &fileObject{f: f, size: fi.Size(), chunk: int64(m.chunk), fail: m.fail}
	m.fail = -1
	m.objs = append(m.objs, o)
	m.mu.Unlock()
	return remote.New(o, remote.Config{ChunkSize: m.chunk, HedgeAfter: -1}), nil
}

func (m *remoteMem) last() *fileObject {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.objs[len(m.objs)-1]
}

// writeRecord writes a complete record of 4 KiB pages for a memory file of
// size bytes at version, and returns its path.
func writeRecord(t *testing.T, pages []int64, size int64, version string) string {
	t.Helper()
	return writeRecordOf(t, PageSize, pages, size, version)
}

func writeRecordOf(t *testing.T, pageSize int64, pages []int64, size int64, version string) string {
	t.Helper()
	r := &Record{PageSize: pageSize, ObjectSize: size, ObjectVersion: version, Start: time.Now(), Pages: pages,
		At: make([]time.Duration, len(pages))}
	b, err := EncodeRecord(r)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ws")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// chunksOf is the set of chunks of chunk bytes that pages touch.
func chunksOf(pages []int64, chunk int64) map[int64]bool {
	cs := make(map[int64]bool)
	for _, p := range pages {
		cs[p*PageSize/chunk] = true
	}
	return cs
}

// remoteReplay makes a memory file of size bytes served through
// store/remote in chunks of chunk bytes, a 10 % working set of its pages
// (from seed), and the file of those pages for the guest to touch.
func remoteReplay(t *testing.T, size, chunk int64, seed uint64) (mem string, ws []int64, touch string, rm *remoteMem) {
	t.Helper()
	mem = memFile(t, size)
	ws = workingSet(seed, size/PageSize, 0.1)
	touch = filepath.Join(t.TempDir(), "touch")
	writePages(t, touch, ws)
	return mem, ws, touch, &remoteMem{path: mem, chunk: int(chunk), fail: -1}
}

// A replay from a remote store fetches by chunk: every chunk the record
// touches is fetched once, by one request (a chunk holds less than the
// hold's gap), and nothing else is; the recorded pages, and only they,
// are read into the cache, each once; the guest then touches them with no
// fault.
func TestReplayFromRemoteFetchesByChunk(t *testing.T) {
	const size, chunk = 32 << 20, 256 << 10
	mem, ws, touch, rm := remoteReplay(t, size, chunk, 11)
	ts := startServer(t, mem, Config{Prefetch: writeRecord(t, ws, size, "v1"), Open: rm.open})
	c := startClient(t, ts.sock, mem, clientOpts{spans: twoRegions(size)})
	testutil.WaitFor(t, "the prefetch", func() bool { st := ts.Stats(); return st.Restores == 1 && st.Prefetching == 0 })

	reqs := rm.last().sent()
	chunks := chunksOf(ws, chunk)
	fetched := make(map[int64]bool)
	for _, r := range reqs {
		ci := r[0] / chunk
		if !chunks[ci] || fetched[ci] || (r[0]+r[1]-1)/chunk != ci {
			t.Fatalf("request for bytes %d-%d: the record touches chunk %d: %v, fetched before: %v",
				r[0], r[0]+r[1]-1, ci, chunks[ci], fetched[ci])
		}
		fetched[ci] = true
	}
	if len(fetched) != len(chunks) {
		t.Fatalf("%d chunks fetched; the record touches %d", len(fetched), len(chunks))
	}
	if n := ts.reads.distinct(); n != len(ws) {
		t.Errorf("%d pages read into the cache; the record has %d", n, len(ws))
	}
	if pg, n := ts.reads.maxReads(); n > 1 {
		t.Errorf("page %d read %d times", pg, n)
	}

	c.OK("touch %s", touch)
	st := ts.Stats()
	if st.Prefetched != uint64(len(ws)) || st.Faults != 0 || st.PrefetchLate != 0 {
		t.Errorf("prefetched %d of %d pages, then the touches faulted %d times (%d late)",
			st.Prefetched, len(ws), st.Faults, st.PrefetchLate)
	}
	c.OK("checkall")
	c.close()

	// A guest that touches from the moment it is restored races the
	// replay, into a cold cache: whatever the race, every byte is right.
	ts2 := startServer(t, mem, Config{Prefetch: writeRecord(t, ws, size, "v1"), Open: rm.open})
	c2 := startClient(t, ts2.sock, mem, clientOpts{spans: twoRegions(size)})
	c2.OK("touch %s", touch)
	c2.OK("checkall")
	c2.close()
	testutil.WaitFor(t, "the racing VM to be gone", func() bool { return ts2.Stats().VMs == 0 })
	st = ts2.Stats()
	t.Logf("racing replay: prefetched %d, late %d, faults %d (of %d pages touched, then all %d checked); %d requests for %d chunks",
		st.Prefetched, st.PrefetchLate, st.Faults, len(ws), size/PageSize, len(rm.last().sent()), len(chunks))
}

// A chunk whose fetch fails for good is left to the guest's faults, which
// read its pages with the fault path's retries: the replay goes on with
// the other chunks, and every byte the guest reads is right.
func TestReplayFromRemoteSurvivesAFailedChunk(t *testing.T) {
	const size, chunk = 8 << 20, 256 << 10
	mem := memFile(t, size)
	ws := workingSet(5, size/PageSize, 0.2)
	touch := filepath.Join(t.TempDir(), "touch")
	writePages(t, touch, ws)
	bad := ws[0] * PageSize / chunk // the chunk the record needs first
	rm := &remoteMem{path: mem, chunk: chunk, fail: bad}
	ts := startServer(t, mem, Config{Prefetch: writeRecord(t, ws, size, "v1"), Open: rm.open})
	c := startClient(t, ts.sock, mem, clientOpts{spans: twoRegions(size)})
	testutil.WaitFor(t, "the prefetch", func() bool { st := ts.Stats(); return st.Restores == 1 && st.Prefetching == 0 })
	if !strings.Contains(ts.log.String(), "cannot fetch recorded pages") {
		t.Errorf("no warning of the failed chunk in the log:\n%s", ts.log.String())
	}
	var inBad uint64
	for _, p := range ws {
		if p*PageSize/chunk == bad {
			inBad++
		}
	}
	if st := ts.Stats(); st.Prefetched != uint64(len(ws))-inBad {
		t.Errorf("prefetched %d pages; want all %d but the %d of the failed chunk", st.Prefetched, len(ws), inBad)
	}
	c.OK("touch %s", touch)
	if st := ts.Stats(); st.Faults == 0 || st.Sigbus != 0 {
		t.Errorf("the touches faulted %d times, %d SIGBUS; want the failed chunk's pages read by faults", st.Faults, st.Sigbus)
	}
	c.OK("checkall")
}

// A hugetlbfs guest's replay from a remote store whose chunks are smaller
// than its pages: each recorded huge page is fetched whole, across its
// chunks, once, and copied in before the guest touches it.
func TestReplayHugePagesFromRemote(t *testing.T) {
	const size, chunk = 8 << 20, 1 << 20
	need := int64(2 * size / HugePageSize)
	restore, err := reserveHugePages(need)
	if err != nil {
		t.Skipf("no 2 MiB huge pages for a hugetlbfs guest: %v", err)
	}
	t.Cleanup(restore)
	mem := memFile(t, size)
	rm := &remoteMem{path: mem, chunk: chunk, fail: -1}
	recorded := []int64{3, 1}
	ts := startServer(t, mem, Config{Prefetch: writeRecordOf(t, HugePageSize, recorded, size, "v1"), Open: rm.open})
	c := startClient(t, ts.sock, mem, clientOpts{spans: []span{{0, 2 << 20}, {2 << 20, size - 2<<20}}, page: HugePageSize, huge: true})
	testutil.WaitFor(t, "the prefetch", func() bool { st := ts.Stats(); return st.Restores == 1 && st.Prefetching == 0 })
	if st := ts.Stats(); st.Prefetched != uint64(len(recorded)) {
		t.Fatalf("prefetched %d huge pages; want %d", st.Prefetched, len(recorded))
	}
	var fetched int64
	for _, r := range rm.last().sent() {
		fetched += r[1]
	}
	if want := int64(len(recorded)) * HugePageSize; fetched != want {
		t.Errorf("fetched %d bytes for %d recorded huge pages; want %d", fetched, len(recorded), want)
	}
	c.OK("check %d %d", 3*HugePageSize, HugePageSize)
	c.OK("check %d %d", 1*HugePageSize, HugePageSize)
	if st := ts.Stats(); st.Faults != 0 {
		t.Errorf("touches of the prefetched huge pages faulted %d times", st.Faults)
	}
	c.OK("checkall")
}

// A replay through a disk cache plans its fetches as it does without one:
// the cache passes Hold on for the chunks it lacks (it used to read page
// runs, a chunk at a time: BenchmarkRestoreS3 through a cold disk cache
// replayed in 8.8-9.0 s that way and 2.6-2.7 s held), so every chunk the
// record touches is fetched once, whole, and nothing else is. A second
// restore, by a new daemon and cache on the same directory, fetches
// nothing and still has every recorded page in place before the guest
// touches it.
func TestReplayThroughDiskCache(t *testing.T) {
	const size, chunk = 32 << 20, 256 << 10
	mem, ws, touch, rm := remoteReplay(t, size, chunk, 12)
	record := writeRecord(t, ws, size, "v1")
	dir := t.TempDir()
	restore := func() [][2]int64 {
		c, err := diskcache.Open(dir, 1<<30, diskcache.WithChunkSize(chunk))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		open := func(ctx context.Context) (store.Store, error) {
			st, err := rm.open(ctx)
			if err != nil {
				return nil, err
			}
			w := c.Wrap(st)
			if _, ok := w.(holder); !ok {
				t.Errorf("the disk cache's store over a remote one is no holder: the replay reads page runs")
			}
			return w, nil
		}
		ts := startServer(t, mem, Config{Prefetch: record, Open: open})
		defer ts.Close()
		cl := startClient(t, ts.sock, mem, clientOpts{spans: twoRegions(size)})
		testutil.WaitFor(t, "the prefetch", func() bool { st := ts.Stats(); return st.Restores == 1 && st.Prefetching == 0 })
		reqs := rm.last().sent()
		cl.OK("touch %s", touch)
		if st := ts.Stats(); st.Prefetched != uint64(len(ws)) || st.Faults != 0 {
			t.Errorf("prefetched %d of %d pages, then the touches faulted %d times", st.Prefetched, len(ws), st.Faults)
		}
		cl.OK("checkall")
		cl.close()
		return reqs
	}

	reqs := restore()
	chunks := chunksOf(ws, chunk)
	fetched := make(map[int64]bool)
	for _, r := range reqs {
		ci := r[0] / chunk
		if r[0]%chunk != 0 || r[1] != chunk || !chunks[ci] || fetched[ci] {
			t.Fatalf("request for bytes %d-%d: want whole chunks the record touches, each once", r[0], r[0]+r[1]-1)
		}
		fetched[ci] = true
	}
	if len(fetched) != len(chunks) {
		t.Fatalf("%d chunks fetched; the record touches %d", len(fetched), len(chunks))
	}
	if reqs := restore(); len(reqs) != 0 {
		t.Fatalf("the second restore sent %d requests; want none, every chunk from the disk cache: %v", len(reqs), reqs)
	}
}
