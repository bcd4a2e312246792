package remote

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/testutil"
	"github.com/filemap/filemap/store"
)

const (
	testChunk = 64 << 10
	testSub   = 16 << 10
	testSize  = 16*testChunk + 1234 // a short last chunk
)

// testConfig is a small geometry that keeps tests quick: 64 KiB chunks,
// 16 KiB partial fetches for reads of up to 16 KiB, no hedging.
func testConfig() Config {
	return Config{ChunkSize: testChunk, SubRange: testSub, SmallRead: testSub, HedgeAfter: -1}
}

// readAndCheck reads n bytes at off with store.ReadFull and checks them
// against the reference.
func readAndCheck(t *testing.T, s store.Store, data []byte, off int64, n int) {
	t.Helper()
	buf := make([]byte, n)
	got, err := store.ReadFull(s, buf, off)
	want := data[min(off, int64(len(data))):min(off+int64(n), int64(len(data)))]
	if err != nil || got != len(want) || !bytes.Equal(buf[:got], want) {
		t.Fatalf("ReadFull(%d bytes at %d) = %d, %v; want %d bytes equal to the reference", n, off, got, err, len(want))
	}
}

// readAsync starts a ReadAt of n bytes at off and returns where its error
// will come, after the bytes were checked.
func readAsync(t *testing.T, s *Store, data []byte, off int64, n int) <-chan error {
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, n)
		got, err := s.ReadAt(buf, off)
		if err == nil && !bytes.Equal(buf[:got], data[off:off+int64(n)]) {
			err = fmt.Errorf("ReadAt(%d bytes at %d): wrong bytes", n, off)
		}
		done <- err
	}()
	return done
}

func TestReadAtMatchesReference(t *testing.T) {
	o := newFake(t, testSize)
	s := newStore(t, o, testConfig())
	if s.Size() != testSize || s.Key() != "fake:obj" || s.Version() != "v1" {
		t.Fatalf("Size %d Key %q Version %q", s.Size(), s.Key(), s.Version())
	}
	for _, c := range []struct {
		off int64
		n   int
	}{
		{0, 4096},
		{4096, 4096},
		{1, 10},
		{testChunk - 100, 200},           // across a chunk boundary
		{3*testChunk + 5, 5 * testChunk}, // many chunks, unaligned
		{0, testSize},                    // all of it
		{testSize - 1234, 4096},          // the tail, with a page past the end
		{testSize - 1, 1},
	} {
		readAndCheck(t, s, o.data, c.off, c.n)
	}
}

// ReadAt follows io.ReaderAt at the end of the object.
func TestReadAtEOF(t *testing.T) {
	o := newFake(t, testSize)
	s := newStore(t, o, testConfig())
	buf := make([]byte, 8192)
	n, err := s.ReadAt(buf, testSize-100)
	if n != 100 || err != io.EOF || !bytes.Equal(buf[:100], o.data[testSize-100:]) {
		t.Errorf("ReadAt across the end = %d, %v; want 100, EOF", n, err)
	}
	if n, err := s.ReadAt(buf, testSize); n != 0 || err != io.EOF {
		t.Errorf("ReadAt at the end = %d, %v; want 0, EOF", n, err)
	}
	if n, err := s.ReadAt(buf[:0], 5); n != 0 || err != nil {
		t.Errorf("empty ReadAt = %d, %v", n, err)
	}
	if _, err := s.ReadAt(buf, -1); err == nil || !strings.Contains(err.Error(), "negative offset") {
		t.Errorf("ReadAt at -1 = %v", err)
	}
	if n, err := s.ReadAt(buf[:100], testSize-100); n != 100 || err != nil {
		t.Errorf("ReadAt ending exactly at the end = %d, %v; want 100, nil", n, err)
	}
}

// 64 concurrent 4 KiB reads into one chunk make one request.
func TestSingleFlight(t *testing.T) {
	o := newFake(t, testSize)
	h := newHolder()
	o.hook = h.hook
	cfg := testConfig()
	cfg.SubRange = -1
	s := newStore(t, o, cfg)
	const chunk = 5
	var done []<-chan error
	for i := range 64 {
		off := int64(chunk*testChunk + (i*4096)%testChunk)
		done = append(done, readAsync(t, s, o.data, off, 4096))
	}
	h.next(t).release <- nil
	for _, d := range done {
		if err := recv(t, d); err != nil {
			t.Fatal(err)
		}
	}
	if r := o.requests(); len(r) != 1 || r[0].off != chunk*testChunk || r[0].n != testChunk {
		t.Fatalf("requests %v; want one for chunk %d", r, chunk)
	}
}

// With partial fetches on, concurrent reads spread over one chunk make at
// most two requests: the first read's span, and then the whole chunk.
func TestSingleFlightWithSubRange(t *testing.T) {
	o := newFake(t, testSize)
	h := newHolder()
	o.hook = h.hook
	s := newStore(t, o, testConfig())
	const chunk = 5
	var done []<-chan error
	for i := range 64 {
		off := int64(chunk*testChunk + (i*4096)%testChunk)
		done = append(done, readAsync(t, s, o.data, off, 4096))
	}
	first := h.next(t)
	first.release <- nil
	h.next(t).release <- nil
	for _, d := range done {
		if err := recv(t, d); err != nil {
			t.Fatal(err)
		}
	}
	r := o.requests()
	if len(r) == 2 && r[0].n == testChunk {
		r[0], r[1] = r[1], r[0]
	}
	if len(r) != 2 || r[0].n != testSub || r[1].off != chunk*testChunk || r[1].n != testChunk {
		t.Fatalf("requests %v; want a %d-byte span and chunk %d whole", r, testSub, chunk)
	}
}

// A lone small read fetches the aligned span around it; its neighbours in
// the span need no request; a read elsewhere in the chunk fetches the whole
// chunk, and from then on the chunk is cached.
func TestLoneSmallReadFetchesSpan(t *testing.T) {
	o := newFake(t, testSize)
	s := newStore(t, o, testConfig())
	base := int64(7 * testChunk)
	readAndCheck(t, s, o.data, base+testSub+4096, 4096)
	readAndCheck(t, s, o.data, base+testSub, 4096)
	readAndCheck(t, s, o.data, base+2*testSub-100, 100)
	want := []call{{0, base + testSub, testSub}}
	if r := o.requests(); fmt.Sprint(r) != fmt.Sprint(want) {
		t.Fatalf("requests %v; want %v", r, want)
	}
	readAndCheck(t, s, o.data, base, 4096)
	readAndCheck(t, s, o.data, base+testChunk-4096, 4096)
	readAndCheck(t, s, o.data, base+testSub+4096, 4096)
	want = append(want, call{1, base, testChunk})
	if r := o.requests(); fmt.Sprint(r) != fmt.Sprint(want) {
		t.Fatalf("requests %v; want %v", r, want)
	}
	// A small read across two spans fetches both spans in one request.
	readAndCheck(t, s, o.data, 9*testChunk+testSub-2048, 4096)
	if r := o.requests(); r[2].off != 9*testChunk || r[2].n != 2*testSub {
		t.Fatalf("request %v; want bytes [%d, +%d)", r[2], 9*testChunk, 2*testSub)
	}
	// A large read always fetches whole chunks.
	readAndCheck(t, s, o.data, 11*testChunk+4096, testSub+1)
	if r := o.requests(); r[3].off != 11*testChunk || r[3].n != testChunk {
		t.Fatalf("request %v; want chunk 11 whole", r[3])
	}
}

// However many reads want however many chunks, no more than Parallel
// requests are in flight, and a scan alone leaves one slot free.
func TestParallelBound(t *testing.T) {
	for _, c := range []struct {
		name  string
		reads func(s *Store, data []byte) []<-chan error
		peak  int
	}{
		{"demand", func(s *Store, data []byte) (done []<-chan error) {
			for i := range 16 {
				done = append(done, readAsync(t, s, data, int64(i*testChunk), 4096))
			}
			return done
		}, 4},
		{"scan", func(s *Store, data []byte) []<-chan error {
			return []<-chan error{readAsync(t, s, data, 0, 16*testChunk)}
		}, 3},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := newFake(t, testSize)
			h := newHolder()
			o.hook = h.hook
			cfg := testConfig()
			cfg.Parallel = 4
			s := newStore(t, o, cfg)
			done := c.reads(s, o.data)
			held := []*heldCall{}
			for range c.peak {
				held = append(held, h.next(t))
			}
			for i := range 16 { // release the first by offset, let the next one in
				slices.SortFunc(held, func(a, b *heldCall) int { return cmp.Compare(a.off, b.off) })
				held[0].release <- nil
				held = held[1:]
				if i+c.peak < 16 {
					held = append(held, h.next(t))
				}
			}
			for _, d := range done {
				if err := recv(t, d); err != nil {
					t.Fatal(err)
				}
			}
			if p := o.peak(); p != c.peak {
				t.Fatalf("peak requests in flight %d; want %d", p, c.peak)
			}
		})
	}
}

// A fault is never stuck behind a scan: the scan cannot take the last
// slot, a fault that arrives after the scan's queued fetch is served first,
// and a fault wanting a chunk the scan has queued asks for its own page on
// the reserved slot, rather than for the scan's whole chunk.
func TestSmallReadNotStarvedByScan(t *testing.T) {
	o := newFake(t, testSize)
	h := newHolder()
	o.hook = h.hook
	cfg := testConfig()
	cfg.Parallel = 3 // a scan may hold 2
	s := newStore(t, o, cfg)
	scan := readAsync(t, s, o.data, 0, 12*testChunk) // fetches chunks 0-2: 0 and 1 run, 2 waits
	scan0, scan1 := h.next(t), h.next(t)
	testutil.WaitFor(t, "the scan to queue chunk 2", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.chunks[2]) == 1
	})

	// A fault elsewhere gets the reserved slot at once.
	fault1 := readAsync(t, s, o.data, 10*testChunk+4096, 4096)
	f1 := h.next(t)
	if f1.off != 10*testChunk || f1.n != testSub {
		t.Fatalf("third request %v; want the fault's span in chunk 10", f1)
	}

	// Every slot is busy: the slot the scan frees goes to a fault that
	// came after the scan's queued chunk 2.
	fault2 := readAsync(t, s, o.data, 12*testChunk, 4096)
	scan1.release <- nil
	f2 := h.next(t)
	if f2.off != 12*testChunk {
		t.Fatalf("request after a scan chunk ended: %v; want the waiting fault's in chunk 12", f2)
	}
	f2.release <- nil
	if err := recv(t, fault2); err != nil {
		t.Fatal(err)
	}

	// A fault on chunk 2, which the scan has queued, asks for its page.
	fault3 := readAsync(t, s, o.data, 2*testChunk+4096, 4096)
	f3 := h.next(t)
	if f3.off != 2*testChunk+4096 || f3.n != 4096 {
		t.Fatalf("request %v; want the fault's own page of the scan's queued chunk 2", f3)
	}
	f3.release <- nil
	if err := recv(t, fault3); err != nil {
		t.Fatal(err)
	}
	f1.release <- nil
	if err := recv(t, fault1); err != nil {
		t.Fatal(err)
	}

	scan0.release <- nil
	for range 12 - 2 {
		h.next(t).release <- nil
	}
	if err := recv(t, scan); err != nil {
		t.Fatal(err)
	}
}

var errFlaky = errors.New("503 service unavailable")

// failFirst returns a hook that fails the first n requests with err.
func failFirst(n int, err error) func(context.Context, call) error {
	return func(_ context.Context, c call) error {
		if c.seq < n {
			return err
		}
		return nil
	}
}

// A flaky server's failures are retried until the bytes arrive: the chunk
// whole, then in halves (narrow.go). No byte is asked for more often than
// 1+Retries times, and every request after the first counts as a retry.
func TestRetriesThenSuccess(t *testing.T) {
	o := newFake(t, testSize)
	o.hook = failFirst(3, errFlaky)
	obs := &countingObserver{}
	cfg := fastRetries(testConfig())
	cfg.Observer = obs
	s := newStore(t, o, cfg)
	readAndCheck(t, s, o.data, testChunk, testChunk)
	got := obs.snapshot()
	n := len(o.requests())
	if got.retries != n-1 || got.kinds[ErrTransient] != 3 || got.kinds[ErrNone] != n-3 {
		t.Fatalf("%d requests, observer %+v; want 3 failures and every request after the first a retry", n, got)
	}
	checkAskedAtMost(t, o, 1+DefaultRetries)
}

// checkAskedAtMost fails the test if a byte was asked for by more than n
// requests.
func checkAskedAtMost(t *testing.T, o *fakeObject, n int) {
	t.Helper()
	asked := map[int64]int{} // by page
	for _, c := range o.requests() {
		for p := c.off / 4096; p < (c.off+int64(c.n)+4095)/4096; p++ {
			if asked[p]++; asked[p] > n {
				t.Fatalf("page %d asked for by %d requests, more than %d: %v", p, asked[p], n, o.requests())
			}
		}
	}
}

// After the retries, the error names the object, offset and length and
// wraps the cause, and no byte was asked for more than 1+Retries times.
func TestRetriesExhausted(t *testing.T) {
	o := newFake(t, testSize)
	o.hook = failFirst(1000, errFlaky)
	cfg := fastRetries(testConfig())
	cfg.Retries = 2
	s := newStore(t, o, cfg)
	_, err := s.ReadAt(make([]byte, 4096), 3*testChunk)
	if !errors.Is(err, errFlaky) || store.IsPermanent(err) || !store.IsRetried(err) {
		t.Fatalf("error %v; want the cause, marked retried", err)
	}
	for _, want := range []string{"fake:obj", "offset 196608", "4096 bytes", "3 tries"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	checkAskedAtMost(t, o, 3)
	// A failed fetch is forgotten: the next read tries again.
	o.hook = nil
	readAndCheck(t, s, o.data, 3*testChunk, 4096)
}

func TestPermanentErrorNotRetried(t *testing.T) {
	denied := errors.New("403 forbidden")
	for _, c := range []struct {
		name string
		err  error
		is   error
	}{
		{"permanent", store.Permanent(denied), denied},
		{"changed", store.Permanent(fmt.Errorf("etag now \"b\": %w", store.ErrChanged)), store.ErrChanged},
		{"changed unmarked", fmt.Errorf("etag now \"b\": %w", store.ErrChanged), store.ErrChanged},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := newFake(t, testSize)
			o.hook = failFirst(1000, c.err)
			s := newStore(t, o, fastRetries(testConfig()))
			_, err := store.ReadFull(s, make([]byte, 3*testChunk), testChunk)
			if !errors.Is(err, c.is) || !strings.Contains(err.Error(), "offset 65536") {
				t.Fatalf("error %v; want one wrapping %v", err, c.is)
			}
			asked := map[int64]int{}
			for _, r := range o.requests() {
				if asked[r.off]++; asked[r.off] > 1 {
					t.Fatalf("requests %v: a failed chunk was asked for again", o.requests())
				}
			}
		})
	}
}

// A hung request runs out of Timeout and is retried.
func TestTimeoutRetried(t *testing.T) {
	o := newFake(t, testSize)
	h := newHolder()
	o.hook = func(ctx context.Context, c call) error {
		if c.seq == 0 {
			return h.hook(ctx, c) // hangs until its timeout
		}
		return nil
	}
	obs := &countingObserver{}
	cfg := fastRetries(testConfig())
	cfg.Timeout = 50 * time.Millisecond
	cfg.Observer = obs
	s := newStore(t, o, cfg)
	done := readAsync(t, s, o.data, 0, 4096)
	hung := h.next(t)
	if err := recv(t, hung.ended); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the hung request ended with %v; want its deadline", err)
	}
	if err := recv(t, done); err != nil {
		t.Fatal(err)
	}
	if got := obs.snapshot(); got.kinds[ErrTimeout] != 1 || got.retries != 1 {
		t.Fatalf("observer %+v; want one timeout and one retry", got)
	}
}

// A straggler is hedged; the hedge's answer wins and the straggler is
// cancelled.
func TestHedgeFirstAnswerWins(t *testing.T) {
	o := newFake(t, testSize)
	h := newHolder()
	o.hook = h.hook
	obs := &countingObserver{}
	cfg := testConfig()
	cfg.HedgeAfter = time.Millisecond
	cfg.Observer = obs
	s := newStore(t, o, cfg)
	done := readAsync(t, s, o.data, 2*testChunk, 3*4096)
	straggler, hedge := h.next(t), h.next(t)
	if hedge.off != straggler.off || hedge.n != straggler.n {
		t.Fatalf("hedge %v is not %v", hedge, straggler)
	}
	hedge.release <- nil
	if err := recv(t, done); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, straggler.ended); !errors.Is(err, context.Canceled) {
		t.Fatalf("the straggler ended with %v; want it cancelled", err)
	}
	if got := obs.snapshot(); got.hedges != 1 || got.hedged != 1 {
		t.Fatalf("observer %+v; want one hedge", got)
	}
}

// Adaptive hedging learns the usual latency first, then hedges a request
// that takes far longer.
func TestAdaptiveHedge(t *testing.T) {
	o := newFake(t, testSize)
	h := newHolder()
	var hold sync.Mutex
	holding := false
	o.hook = func(ctx context.Context, c call) error {
		hold.Lock()
		on := holding
		hold.Unlock()
		if on {
			return h.hook(ctx, c)
		}
		return nil
	}
	cfg := testConfig()
	cfg.HedgeAfter = 0
	cfg.SubRange = -1
	s := newStore(t, o, cfg)
	if d := s.hedgeDelay(testChunk); d != 0 {
		t.Fatalf("hedge delay %v with no latencies known; want none", d)
	}
	for i := range hedgeMinSamples {
		readAndCheck(t, s, o.data, int64(i*testChunk), 4096)
	}
	if d := s.hedgeDelay(testChunk); d != hedgeFloor {
		t.Fatalf("hedge delay %v after quick requests; want the floor %v", d, hedgeFloor)
	}
	for range hedgeMinSamples {
		s.lat[s.sizeClass(4*testChunk)].add(time.Millisecond)
	}
	if d := s.hedgeDelay(4 * testChunk); d != 0 {
		t.Fatalf("hedge delay %v for a group of chunks; want none: it is slow because the link is full", d)
	}
	hold.Lock()
	holding = true
	hold.Unlock()
	done := readAsync(t, s, o.data, 12*testChunk, 4096)
	straggler, hedge := h.next(t), h.next(t)
	hedge.release <- nil
	if err := recv(t, done); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, straggler.ended); !errors.Is(err, context.Canceled) {
		t.Fatalf("the straggler ended with %v; want it cancelled", err)
	}
}

// Close fails the reads waiting for requests in flight, cancels those
// requests, and fails later reads.
func TestCloseWithRequestsInFlight(t *testing.T) {
	o := newFake(t, testSize)
	h := newHolder()
	o.hook = h.hook
	s := newStore(t, o, testConfig())
	var done []<-chan error
	for i := range 3 {
		done = append(done, readAsync(t, s, o.data, int64(i*testChunk), 2*testChunk))
	}
	held := []*heldCall{h.next(t), h.next(t)}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, d := range done {
		if err := recv(t, d); !errors.Is(err, ErrClosed) {
			t.Fatalf("read during Close: %v; want ErrClosed", err)
		}
	}
	for _, c := range held {
		if err := recv(t, c.ended); !errors.Is(err, context.Canceled) {
			t.Fatalf("request during Close ended with %v; want it cancelled", err)
		}
	}
	if _, err := s.ReadAt(make([]byte, 10), 0); !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "fake:obj") {
		t.Fatalf("read after Close: %v; want ErrClosed naming the object", err)
	}
	if !o.closed {
		t.Fatal("Close did not close the object")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// The cache of recent chunks stays within its budget and its buffers are
// recycled rather than leaked to reads.
func TestCacheBounded(t *testing.T) {
	o := newFake(t, testSize)
	cfg := testConfig()
	cfg.Parallel = 2
	s := newStore(t, o, cfg)
	readAndCheck(t, s, o.data, 0, testSize)
	for i := range 16 {
		readAndCheck(t, s, o.data, int64(i*testChunk+8192), 4096)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	budget := int64(2 * cfg.Parallel * testChunk)
	if s.cached > budget {
		t.Fatalf("cache holds %d bytes; budget %d bytes", s.cached, budget)
	}
	inLRU := 0
	for f := s.lru.head; f != nil; f = f.next {
		if f.refs != 0 || !f.listed || f.buf == nil {
			t.Fatalf("cached fetch %+v", f)
		}
		inLRU++
	}
	listed := 0
	for _, l := range s.chunks {
		listed += len(l)
	}
	if listed != inLRU {
		t.Fatalf("%d fetches listed, %d cached: finished fetches must be cached or forgotten", listed, inLRU)
	}
}

// Random reads from many goroutines, with a fifth of the requests failing
// once, return exactly the reference bytes.
func TestRandomReads(t *testing.T) {
	o := newFake(t, testSize)
	var mu sync.Mutex
	failed := map[int64]bool{}
	o.hook = func(_ context.Context, c call) error {
		mu.Lock()
		defer mu.Unlock()
		if c.seq%5 == 0 && !failed[c.off] {
			failed[c.off] = true
			return errFlaky
		}
		return nil
	}
	cfg := fastRetries(testConfig())
	cfg.Parallel = 3
	cfg.HedgeAfter = 0
	s := newStore(t, o, cfg)
	var wg sync.WaitGroup
	for g := range 6 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range 60 {
				off := rng.Int64N(testSize + 100)
				n := 1 + rng.IntN(3*testChunk)
				if rng.IntN(2) == 0 { // fault-like: page-aligned and small
					off, n = off&^4095, 4096*(1+rng.IntN(4))
				}
				checkReadAt(t, s, o.data, off, n)
			}
		})
	}
	wg.Wait()
}

// checkReadAt checks one ReadAt against io.ReaderAt's contract on the
// reference bytes.
func checkReadAt(t *testing.T, s *Store, data []byte, off int64, n int) {
	buf := make([]byte, n)
	got, err := s.ReadAt(buf, off)
	want := data[min(off, int64(len(data))):min(off+int64(n), int64(len(data)))]
	wantErr := error(nil)
	if len(want) < n {
		wantErr = io.EOF
	}
	if got != len(want) || err != wantErr || !bytes.Equal(buf[:got], want) {
		t.Errorf("ReadAt(%d bytes at %d) = %d, %v; want %d, %v and the reference bytes", n, off, got, err, len(want), wantErr)
	}
}

func FuzzReadAt(f *testing.F) {
	for _, seed := range [][2]int64{{0, 1}, {4095, 2}, {testChunk - 1, 2}, {testSize - 1, 4096}, {testSize, 1}, {12345, 5 * testChunk}} {
		f.Add(seed[0], seed[1])
	}
	data := reference(testSize)
	f.Fuzz(func(t *testing.T, off, n int64) {
		if off < 0 || n <= 0 || n > 8*testChunk || off > 2*testSize {
			return
		}
		o := &fakeObject{t: t, data: data}
		s := New(o, testConfig())
		defer s.Close()
		checkReadAt(t, s, o.data, off, int(n))
		checkReadAt(t, s, o.data, off, int(n)) // again, from the cache
	})
}

func TestConfigDefaults(t *testing.T) {
	c := Config{ChunkSize: 1<<20 + 1, SubRange: 1000}.withDefaults()
	if c.ChunkSize != 1<<20+4096 || c.SubRange != 4096 || c.Parallel != 64 || c.CacheChunks != 16 || c.MaxInflight != DefaultMaxInflight ||
		c.Retries != 4 || c.Timeout != DefaultTimeout || c.SmallRead != DefaultSmallRead || c.Observer == nil {
		t.Fatalf("defaults %+v", c)
	}
	if c := (Config{Retries: -1}).withDefaults(); c.Retries != 0 || c.ChunkSize != DefaultChunkSize {
		t.Fatalf("Retries -1 gave %+v", c)
	}
}

// Buffers come in page-to-chunk classes, and a chunk that is no power of
// two wastes nothing; a group's request gets one of MaxRequest.
func TestBufPool(t *testing.T) {
	p := newBufPool(3<<20, 9<<20)
	for _, c := range []struct{ n, cap int }{{1, 4096}, {4096, 4096}, {4097, 8192}, {200 << 10, 256 << 10}, {2<<20 + 1, 3 << 20}, {3 << 20, 3 << 20}, {3<<20 + 1, 9 << 20}, {9 << 20, 9 << 20}} {
		b := p.get(c.n)
		if len(*b) != c.n || cap(*b) != c.cap {
			t.Errorf("get(%d): len %d cap %d; want cap %d", c.n, len(*b), cap(*b), c.cap)
		}
		p.put(b)
		if b2 := p.get(c.n); len(*b2) != c.n || cap(*b2) != c.cap {
			t.Errorf("get(%d) after put: len %d cap %d", c.n, len(*b2), cap(*b2))
		}
	}
}

// Idle gives back every cached chunk; later reads fetch again and are
// right.
func TestIdleDropsCachedChunks(t *testing.T) {
	o := newFake(t, testSize)
	s := newStore(t, o, testConfig())
	readAndCheck(t, s, o.data, 0, 4*testChunk)
	s.mu.Lock()
	cached := s.cached
	s.mu.Unlock()
	if cached == 0 {
		t.Fatal("nothing cached after a read: the test exercises nothing")
	}
	s.Idle()
	s.mu.Lock()
	cached, listed, head := s.cached, len(s.chunks), s.lru.head
	s.mu.Unlock()
	if cached != 0 || listed != 0 || head != nil {
		t.Fatalf("after Idle: %d bytes cached, %d chunks listed, lru head %v; want none", cached, listed, head)
	}
	readAndCheck(t, s, o.data, testChunk+4096, 8192)
}

// View lends a fetch's bytes for a read inside one chunk, the same bytes
// ReadAt copies, and keeps the fetch's buffer until release even when the
// chunk cache lets go of it meanwhile; it declines reads across a chunk
// boundary or past the end, which ReadAt serves.
func TestView(t *testing.T) {
	o := newFake(t, testSize)
	s := newStore(t, o, testConfig())
	for _, c := range []struct {
		off int64
		n   int
		ok  bool
	}{
		{0, 4096, true},
		{3*testChunk + 8192, testChunk - 8192, true}, // to the chunk's end
		{5 * testChunk, testChunk, true},             // a whole chunk, a readahead's read
		{16 * testChunk, 1234, true},                 // the short last chunk, whole
		{testChunk - 100, 200, false},                // across a boundary
		{16 * testChunk, 4096, false},                // past the end
		{-1, 10, false},
	} {
		b, release, ok, err := s.View(context.Background(), c.off, c.n)
		if err != nil || ok != c.ok {
			t.Fatalf("View(%d, %d) = ok %v, %v; want ok %v", c.off, c.n, ok, err, c.ok)
		}
		if !ok {
			continue
		}
		if !bytes.Equal(b, o.data[c.off:c.off+int64(c.n)]) {
			t.Fatalf("View(%d, %d): not the object's bytes", c.off, c.n)
		}
		s.Idle() // the chunk cache lets go; the view's fetch stays
		want := bytes.Clone(b)
		readAndCheck(t, s, o.data, 7*testChunk, 4*testChunk) // other fetches take buffers
		if !bytes.Equal(b, want) {
			t.Fatalf("View(%d, %d): the bytes changed before release", c.off, c.n)
		}
		release()
	}
	s.Idle()
	s.mu.Lock()
	listed := len(s.chunks)
	s.mu.Unlock()
	if listed != 0 {
		t.Fatalf("%d chunks still listed after every view was released and the store went idle", listed)
	}
}

// A view of a chunk whose fetch fails is an error naming the object and
// the bytes, after the store's retries, and lends nothing.
func TestViewError(t *testing.T) {
	o := newFake(t, testSize)
	o.hook = failFirst(1000, errFlaky)
	cfg := fastRetries(testConfig())
	cfg.Retries = 2
	s := newStore(t, o, cfg)
	b, release, ok, err := s.View(context.Background(), 2*testChunk, 4096)
	if !errors.Is(err, errFlaky) || ok || b != nil || release != nil {
		t.Fatalf("View of a failing chunk = %d bytes, ok %v, %v; want the cause and nothing lent", len(b), ok, err)
	}
	if !strings.Contains(err.Error(), fmt.Sprintf("read 4096 bytes at offset %d", 2*testChunk)) || !strings.Contains(err.Error(), "fake:obj") {
		t.Fatalf("View error %q does not name the object and the bytes", err)
	}
	o.hook = nil // a failed fetch is forgotten: the next view fetches again
	b, release, ok, err = s.View(context.Background(), 2*testChunk, 4096)
	if err != nil || !ok || !bytes.Equal(b, o.data[2*testChunk:2*testChunk+4096]) {
		t.Fatalf("View after the failure = ok %v, %v", ok, err)
	}
	release()
}
