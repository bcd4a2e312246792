package remote

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// However many requests the depth allows, the bytes of those in flight,
// hedges included, never pass MaxInflight: a window's growing requests, a
// large read's chunks and faults all at once, every request held a little
// and the slow ones hedged.
func TestInflightBytesBound(t *testing.T) {
	const size = 64 * testChunk
	o := newFake(t, size)
	o.hook = func(ctx context.Context, c call) error {
		select {
		case <-time.After(time.Duration(1+rand.IntN(3)) * time.Millisecond):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	cfg := testConfig()
	cfg.MaxRequest = 4 * testChunk
	cfg.MaxInflight = 10 * testChunk
	cfg.HedgeAfter = 2 * time.Millisecond
	s := newStore(t, o, cfg)
	if limit := s.slots.limit(); int64(limit*cfg.MaxRequest) <= cfg.MaxInflight {
		t.Fatalf("the depth starts at %d requests, whose bytes are within the bound: the test exercises nothing", limit)
	}
	window, over := context.WithCancel(context.Background())
	defer over()
	s.Prefetch(window, [][2]int64{{0, size}})
	var wg sync.WaitGroup
	wg.Go(func() { readAndCheck(t, s, o.data, 0, size) })
	for g := range 8 {
		wg.Go(func() {
			for i := range 20 {
				readAndCheck(t, s, o.data, int64((g*20+i)*7919*4096%(size-4096)), 4096)
			}
		})
	}
	wg.Wait()
	o.mu.Lock()
	peak, requests, most := o.maxInBytes, len(o.calls), o.maxInflight
	o.mu.Unlock()
	t.Logf("%d requests, at most %d at once and %d bytes in flight; bound %d", requests, most, peak, cfg.MaxInflight)
	if int64(peak) > cfg.MaxInflight {
		t.Errorf("%d bytes of requests in flight at once, over MaxInflight %d", peak, cfg.MaxInflight)
	}
	if most < 2 {
		t.Errorf("never two requests at once: the test exercises nothing")
	}
}

// link is a network for the depth: requests of size bytes that each take
// latency plus their transfer at a connection's rate, all of them sharing
// a link's.
type link struct {
	latency    time.Duration
	conn, rate float64 // bytes a second: of one connection, of the link
	size       int64
}

// ends feeds d the ends of n requests on l, each with others waiting, as
// they come with d's depth in flight: evenly, a request's time apart
// divided by the depth.
func (l link) ends(d *depth, now time.Time, n int) time.Time {
	for range n {
		per := min(l.conn, l.rate/float64(d.limit))
		took := l.latency + time.Duration(float64(l.size)/per*float64(time.Second))
		now = now.Add(took / time.Duration(d.limit))
		d.ended(now, l.size, true)
	}
	return now
}

// The depth doubles while a round of requests brings more bytes a second,
// and settles at the depth of the best round once two do not: a link of
// 300 MB/s with 25 MB/s connections (the far profile) needs 12 requests of
// 8 MiB, so 16 fill it; one of 2 GB/s needs more than the bound allows.
// It never passes its bound, and requests with nobody waiting teach it
// nothing.
func TestDepthFindsTheLink(t *testing.T) {
	start := time.Unix(0, 0)
	for _, c := range []struct {
		name string
		l    link
		want int
	}{
		{"far", link{40 * time.Millisecond, 25e6, 300e6, 8 << 20}, 16},
		{"wide", link{40 * time.Millisecond, 25e6, 2000e6, 8 << 20}, 64},
		{"slow connections", link{10 * time.Millisecond, 5e6, 300e6, 8 << 20}, 64},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := newDepth(64)
			now := start
			for range 40 {
				now = c.l.ends(&d, now, d.limit)
				if d.limit > d.max {
					t.Fatalf("depth %d, over its bound %d", d.limit, d.max)
				}
			}
			if d.limit != c.want || d.settled < 0 {
				t.Errorf("depth %d (settled %v); want it settled at %d", d.limit, d.settled >= 0, c.want)
			}
		})
	}
	t.Run("nobody waiting", func(t *testing.T) {
		d := newDepth(64)
		now := start
		for range 1000 {
			now = now.Add(time.Millisecond)
			d.ended(now, 8<<20, false)
		}
		if d.limit != startDepth {
			t.Errorf("depth %d after requests nobody waited behind; want %d", d.limit, startDepth)
		}
	})
}

// A settled depth tries more requests again after a while, and keeps them
// once the network has room for them.
func TestDepthProbes(t *testing.T) {
	d := newDepth(64)
	far := link{40 * time.Millisecond, 25e6, 300e6, 8 << 20}
	now := far.ends(&d, time.Unix(0, 0), 20*startDepth)
	if d.limit != 16 || d.settled < 0 {
		t.Fatalf("depth %d (settled %v) on the far link; want it settled at 16", d.limit, d.settled >= 0)
	}
	wide := far
	wide.rate = 2000e6
	for range depthProbe + 10 {
		now = wide.ends(&d, now, d.limit)
	}
	if d.limit != 64 {
		t.Errorf("depth %d once the link widened; want 64", d.limit)
	}
}
