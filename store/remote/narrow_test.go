package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/bits"
	"strings"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/testutil"
	"github.com/filemap/filemap/store"
)

var errBadPage = errors.New("500 internal server error")

// failPage returns a hook that fails every request covering byte bad: with
// nothing of the body (a 500), or, short, with the bytes before the page
// (a body that breaks off there).
func failPage(bad int64, short bool) func(context.Context, call) error {
	return func(_ context.Context, c call) error {
		if c.off <= bad && bad < c.off+int64(c.n) {
			if short {
				return Short(int(bad-c.off), errBadPage)
			}
			return errBadPage
		}
		return nil
	}
}

// readPages reads every page of [lo, hi) alone and returns the offsets of
// those that failed, checking the others against the reference and that
// each error names its page.
func readPages(t *testing.T, s *Store, data []byte, lo, hi int64) []int64 {
	t.Helper()
	var failed []int64
	for off := lo; off < hi; off += 4096 {
		buf := make([]byte, 4096)
		n, err := s.ReadAt(buf, off)
		switch {
		case err != nil && !strings.Contains(err.Error(), fmt.Sprintf("offset %d", off)):
			t.Errorf("read of page at %d: %v; want an error naming its offset", off, err)
		case err != nil:
			failed = append(failed, off)
		case n != 4096 || !bytes.Equal(buf, data[off:off+4096]):
			t.Errorf("read of page at %d: wrong bytes", off)
		}
	}
	return failed
}

// A server that fails every request for one page of a chunk costs that
// page alone: after one scan of the chunk, each of its other pages reads
// the object's bytes, the bad page's read fails naming it, and the chunk
// cost a bounded number of requests, about two per halving, not the
// retries of each of its pages.
func TestNarrowToBadPage(t *testing.T) {
	for _, short := range []bool{false, true} {
		t.Run(fmt.Sprintf("short=%v", short), func(t *testing.T) {
			o := newFake(t, testSize)
			bad := int64(3*testChunk + 9*4096)
			o.hook = failPage(bad, short)
			cfg := fastRetries(testConfig())
			cfg.SubRange = -1 // whole chunks, the worst case
			s := newStore(t, o, cfg)
			buf := make([]byte, testChunk)
			n, err := s.ReadAt(buf, 3*testChunk)
			if !errors.Is(err, errBadPage) || n != int(bad-3*testChunk) || !bytes.Equal(buf[:n], o.data[3*testChunk:bad]) {
				t.Fatalf("read of the chunk: %d bytes, %v; want the %d before the bad page, and its error", n, err, bad-3*testChunk)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("fetching bytes %d-%d", bad, bad+4095)) {
				t.Errorf("error %q does not name the bad page's bytes", err)
			}
			scan := len(o.requests())
			if failed := readPages(t, s, o.data, 3*testChunk, 4*testChunk); len(failed) != 1 || failed[0] != bad {
				t.Errorf("pages that failed: %v; want only %d", failed, bad)
			}
			// Two whole tries, then two requests per halving of 16 pages;
			// and one for the bad page asked for again by its own read.
			pages := testChunk / 4096
			limit := 2 + 2*bits.Len(uint(pages-1))
			if short {
				limit = 1 + 2 + DefaultRetries // the break, the page alone and its retries, the rest
			}
			if got := o.requests(); scan > limit || len(got) != scan+1 {
				t.Errorf("%d requests for the chunk, then %d for its pages read alone; want at most %d, then 1: %v",
					scan, len(got)-scan, limit, got)
			}
		})
	}
}

// Errors are not sticky. A read that starts at a page given up on asks for
// it again, once, and gets it once the server serves it. A read that only
// passes over it gets its error while the failure is recent (BackoffMax),
// as readahead passes over a failed page in the kernel, and asks again
// after that.
func TestGivenUpPageAskedAgain(t *testing.T) {
	for _, recent := range []bool{true, false} {
		t.Run(fmt.Sprintf("recent=%v", recent), func(t *testing.T) {
			o := newFake(t, testSize)
			bad := int64(5*testChunk + 3*4096)
			o.hook = failPage(bad, false)
			cfg := fastRetries(testConfig())
			cfg.SubRange = -1
			cfg.BackoffMax = time.Nanosecond
			if recent {
				cfg.BackoffMax = time.Hour
			}
			s := newStore(t, o, cfg)
			if _, err := s.ReadAt(make([]byte, testChunk), 5*testChunk); !errors.Is(err, errBadPage) {
				t.Fatalf("read of the chunk: %v; want the bad page's error", err)
			}
			o.hook = nil
			before := len(o.requests())
			if recent {
				n, err := s.ReadAt(make([]byte, testChunk), 5*testChunk)
				if !errors.Is(err, errBadPage) || n != int(bad-5*testChunk) || len(o.requests()) != before {
					t.Fatalf("read passing over the page just given up: %d, %v after %d requests; want the bytes before it, its error, no request",
						n, err, len(o.requests())-before)
				}
				readAndCheck(t, s, o.data, bad, 4096)
			}
			readAndCheck(t, s, o.data, 5*testChunk, testChunk)
			if got := o.requests()[before:]; len(got) != 1 || got[0].off != bad || got[0].n != 4096 {
				t.Fatalf("requests to read the page again: %v; want one, for it alone", got)
			}
		})
	}
}

// Once a fetch has given up on a page, later fetches of its chunk do not
// ask for it (they would fail, and be narrowed down again): a lone fault
// narrows down its span, and a read of the whole chunk then fetches the
// rest around the bad page, and the bad page alone.
func TestLaterFetchesAvoidGivenUpPages(t *testing.T) {
	o := newFake(t, testSize)
	bad := int64(7*testChunk + 2*4096)
	o.hook = failPage(bad, false)
	cfg := fastRetries(testConfig())
	cfg.BackoffMax = time.Hour // passed over while recent
	s := newStore(t, o, cfg)
	if _, err := s.ReadAt(make([]byte, 4096), bad+4096); err != nil {
		t.Fatal(err)
	}
	before := len(o.requests())
	if n, err := s.ReadAt(make([]byte, testChunk), 7*testChunk); !errors.Is(err, errBadPage) || n != int(bad-7*testChunk) {
		t.Fatalf("read of the chunk: %d, %v; want the bytes before the bad page and its error", n, err)
	}
	readAndCheck(t, s, o.data, bad+4096, int(8*testChunk-bad-4096))
	for _, c := range o.requests()[before:] {
		if c.off <= bad && bad < c.off+int64(c.n) {
			t.Errorf("request %v asked for the page given up on", c)
		}
	}
}

// A prefetched group of chunks that fails for one page serves the other
// pages of every chunk of the group.
func TestNarrowGroup(t *testing.T) {
	o := newFake(t, testSize)
	bad := int64(2*testChunk + 4096)
	o.hook = failPage(bad, false)
	s := newStore(t, o, fastRetries(groupConfig()))
	s.Prefetch(context.Background(), [][2]int64{{0, 4 * testChunk}})
	if failed := readPages(t, s, o.data, 0, 4*testChunk); len(failed) != 1 || failed[0] != bad {
		t.Errorf("pages that failed: %v; want only %d", failed, bad)
	}
}

// A read's context bounds it: once it is done the read returns, and the
// requests and retries made for it stop, however many retries are allowed
// and however long one request may run.
func TestReadContextStopsRequests(t *testing.T) {
	for _, c := range []struct {
		name    string
		timeout time.Duration
	}{
		{"retries", 20 * time.Millisecond}, // requests time out, and would be retried for long
		{"request", time.Hour},             // the request would hang for an hour
	} {
		t.Run(c.name, func(t *testing.T) {
			o := newFake(t, testSize)
			h := newHolder()
			o.hook = h.hook // every request hangs until its context ends
			cfg := fastRetries(testConfig())
			cfg.Timeout, cfg.Retries = c.timeout, 1000
			s := newStore(t, o, cfg)
			drained := make(chan struct{})
			defer close(drained)
			go func() { // answer nothing, but let the holder's queue drain
				for {
					select {
					case <-h.arrived:
					case <-drained:
						return
					}
				}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			_, err := s.ReadAtContext(ctx, make([]byte, testChunk), 2*testChunk)
			if !errors.Is(err, context.DeadlineExceeded) || !store.IsRetried(err) {
				t.Fatalf("read past its deadline: %v; want one wrapping context.DeadlineExceeded, marked retried", err)
			}
			testutil.WaitFor(t, "the requests to end", func() bool {
				o.mu.Lock()
				defer o.mu.Unlock()
				return o.inflight == 0
			})
			settled := len(o.requests())
			time.Sleep(200 * time.Millisecond) // several request timeouts and backoffs
			if n := len(o.requests()); n != settled {
				t.Fatalf("%d requests were made after the read returned", n-settled)
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			if len(s.chunks) != 0 {
				t.Fatalf("fetches still listed after the read gave up: %v", s.chunks)
			}
		})
	}
}

// A read that joins a fetch another read started, and has more time than
// that one, gets its bytes when the first gives up: the fetch ends with
// the first read, and the second asks again.
func TestFollowerOutlivesLeader(t *testing.T) {
	o := newFake(t, testSize)
	h := newHolder()
	o.hook = h.hook
	s := newStore(t, o, fastRetries(testConfig()))
	short, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() {
		_, err := s.ReadAtContext(short, make([]byte, 4096), 4*testChunk)
		first <- err
	}()
	req := h.next(t)
	second := make(chan error, 1)
	go func() {
		buf := make([]byte, 4096)
		_, err := s.ReadAt(buf, 4*testChunk)
		if err == nil && !bytes.Equal(buf, o.data[4*testChunk:4*testChunk+4096]) {
			err = errors.New("wrong bytes")
		}
		second <- err
	}()
	testutil.WaitFor(t, "the second read to join the fetch", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		fs := s.chunks[4]
		return len(fs) == 1 && fs[0].refs == 2
	})
	cancel()
	if err := recv(t, req.ended); !errors.Is(err, context.Canceled) {
		t.Fatalf("the first read's request ended with %v; want it cancelled", err)
	}
	if err := recv(t, first); !errors.Is(err, context.Canceled) {
		t.Fatalf("the first read: %v; want context.Canceled", err)
	}
	again := h.next(t)
	again.release <- nil
	if err := recv(t, second); err != nil {
		t.Fatalf("the second read: %v", err)
	}
}
