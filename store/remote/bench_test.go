package remote

import (
	"context"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"
)

// linkObject simulates an object store: each request costs a round trip
// plus its transfer at a fixed bandwidth. Its bytes are not materialised.
type linkObject struct {
	size     int64
	rtt      time.Duration
	bytesPer time.Duration // per MiB
	requests atomic.Int64
	bytes    atomic.Int64
}

func (o *linkObject) GetRange(ctx context.Context, p []byte, off int64) error {
	o.requests.Add(1)
	o.bytes.Add(int64(len(p)))
	t := time.NewTimer(o.rtt + time.Duration(len(p))*o.bytesPer>>20)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (o *linkObject) Size() int64     { return o.size }
func (o *linkObject) Key() string     { return "sim:obj" }
func (o *linkObject) Version() string { return "1" }
func (o *linkObject) Close() error    { return nil }

// BenchmarkRandomFaults measures what partial-chunk fetches buy a random
// 4 KiB fault, and what they cost a sequential reader that reads page by
// page with no readahead (their worst case), on a simulated link of 5 ms
// round trip and 100 MiB/s per request — scaled down from S3's 20–50 ms so
// the benchmark is quick; the transfer share grows as the RTT shrinks.
//
//	go test -run - -bench RandomFaults ./store/remote/
func BenchmarkRandomFaults(b *testing.B) {
	for _, c := range []struct {
		name string
		sub  int
		seq  bool
	}{
		{"random/chunks", -1, false},
		{"random/spans", 0, false},
		{"sequential4K/chunks", -1, true},
		{"sequential4K/spans", 0, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			o := &linkObject{size: 1 << 40, rtt: 5 * time.Millisecond, bytesPer: 10 * time.Millisecond}
			s := New(o, Config{SubRange: c.sub, HedgeAfter: -1})
			defer s.Close()
			rng := rand.New(rand.NewPCG(1, 2))
			buf := make([]byte, 4096)
			off := int64(0)
			for b.Loop() {
				if !c.seq {
					off = rng.Int64N(o.size) &^ 4095
				}
				if _, err := s.ReadAt(buf, off); err != nil {
					b.Fatal(err)
				}
				off += 4096
			}
			b.ReportMetric(float64(o.requests.Load())/float64(b.N), "requests/read")
			b.ReportMetric(float64(o.bytes.Load())/float64(b.N)/1024, "KiB/read")
		})
	}
}
