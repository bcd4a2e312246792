package remote

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/testutil"
	"github.com/filemap/filemap/store"
)

// fakeObject serves reference bytes, counts requests and in-flight
// requests and bytes, and lets a test fail or hold any request through
// hook.
type fakeObject struct {
	t    *testing.T
	data []byte
	hook func(ctx context.Context, c call) error // may block; honours ctx

	mu                        sync.Mutex
	calls                     []call
	inflight, maxInflight     int
	inflightBytes, maxInBytes int
	closed                    bool
}

// call is one GetRange: its sequence number and range.
type call struct {
	seq int
	off int64
	n   int
}

func (c call) String() string { return fmt.Sprintf("#%d[%d+%d]", c.seq, c.off, c.n) }

func newFake(t *testing.T, size int) *fakeObject {
	return &fakeObject{t: t, data: reference(size)}
}

// reference is the object's bytes: no two aligned 4-byte words alike
// within 4 GiB, so a misplaced copy shows.
func reference(size int) []byte {
	b := make([]byte, size)
	for i := range b {
		w := uint32(i/4) * 2654435761
		b[i] = byte(w >> (8 * (i % 4)))
	}
	return b
}

func (o *fakeObject) GetRange(ctx context.Context, p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > int64(len(o.data)) || len(p) == 0 {
		o.t.Errorf("GetRange(%d bytes at %d) outside the object of %d bytes", len(p), off, len(o.data))
		return store.Permanent(errors.New("bad range"))
	}
	o.mu.Lock()
	c := call{seq: len(o.calls), off: off, n: len(p)}
	o.calls = append(o.calls, c)
	o.inflight++
	o.maxInflight = max(o.maxInflight, o.inflight)
	o.inflightBytes += len(p)
	o.maxInBytes = max(o.maxInBytes, o.inflightBytes)
	o.mu.Unlock()
	defer func() {
		o.mu.Lock()
		o.inflight--
		o.inflightBytes -= len(p)
		o.mu.Unlock()
	}()
	if o.hook != nil {
		if err := o.hook(ctx, c); err != nil {
			copy(p[:arrived(err)], o.data[off:]) // a body that broke off brought these
			return err
		}
	}
	copy(p, o.data[off:])
	return nil
}

func (o *fakeObject) Size() int64     { return int64(len(o.data)) }
func (o *fakeObject) Key() string     { return "fake:obj" }
func (o *fakeObject) Version() string { return "v1" }

func (o *fakeObject) Close() error {
	o.mu.Lock()
	o.closed = true
	o.mu.Unlock()
	return nil
}

func (o *fakeObject) requests() []call {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]call(nil), o.calls...)
}

func (o *fakeObject) peak() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.maxInflight
}

// holder holds every request until the test releases it; arrivals are
// reported in order.
type holder struct {
	arrived chan *heldCall
}

type heldCall struct {
	call
	ctx     context.Context
	release chan error // nil: serve the bytes
	ended   chan error // what the request saw: nil or its context's error
}

func newHolder() *holder { return &holder{arrived: make(chan *heldCall, 1024)} }

func (h *holder) hook(ctx context.Context, c call) error {
	hc := &heldCall{call: c, ctx: ctx, release: make(chan error, 1), ended: make(chan error, 1)}
	h.arrived <- hc
	select {
	case err := <-hc.release:
		hc.ended <- nil
		return err
	case <-ctx.Done():
		hc.ended <- ctx.Err()
		return ctx.Err()
	}
}

// next returns the next request to arrive.
func (h *holder) next(t *testing.T) *heldCall {
	t.Helper()
	return recv(t, h.arrived)
}

// recv receives from ch, failing the test if nothing comes for a long
// while: a hang guard, not a timing assertion.
func recv[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(20 * time.Second):
		t.Fatal("timed out waiting; the store is stuck")
		panic("unreachable")
	}
}

// countingObserver counts what a Store reports.
type countingObserver struct {
	mu sync.Mutex
	c  counts
}

type counts struct {
	requests int
	kinds    map[ErrorKind]int
	retries  int
	hedges   int
	hedged   int // requests that were hedges
}

func (o *countingObserver) Request(r RequestStats) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.c.kinds == nil {
		o.c.kinds = make(map[ErrorKind]int)
	}
	o.c.requests++
	o.c.kinds[r.Err]++
	if r.Hedge {
		o.c.hedged++
	}
}

func (o *countingObserver) Retry(ErrorKind) { o.mu.Lock(); o.c.retries++; o.mu.Unlock() }
func (o *countingObserver) Hedge()          { o.mu.Lock(); o.c.hedges++; o.mu.Unlock() }

func (o *countingObserver) snapshot() counts {
	o.mu.Lock()
	defer o.mu.Unlock()
	c := o.c
	c.kinds = maps.Clone(o.c.kinds)
	return c
}

// newStore makes a Store for a test, closes it at the end and then checks
// that every goroutine it started has ended.
func newStore(t *testing.T, obj Object, cfg Config) *Store {
	t.Helper()
	base := runtime.NumGoroutine()
	t.Cleanup(func() { settleGoroutines(t, base) })
	s := New(obj, cfg)
	t.Cleanup(func() { s.Close() })
	return s
}

// settleGoroutines waits for the goroutine count to come back to base.
func settleGoroutines(t *testing.T, base int) {
	t.Helper()
	if !testutil.Eventually(func() bool { return runtime.NumGoroutine() <= base }) {
		buf := make([]byte, 1<<16)
		t.Fatalf("goroutines leaked: %d, was %d\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
	}
}

// fastRetries is a Config whose backoffs are short, for tests of retries.
func fastRetries(cfg Config) Config {
	cfg.BackoffBase = 10 * time.Microsecond
	cfg.BackoffMax = 100 * time.Microsecond
	return cfg
}
