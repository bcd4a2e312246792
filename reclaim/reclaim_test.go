package reclaim

import (
	"container/list"
	"math/rand/v2"
	"testing"
)

// fakeCache is a cache whose residency the tests can see.
type fakeCache struct {
	resident map[int64]bool
	punched  int64
}

func newFake() *fakeCache { return &fakeCache{resident: make(map[int64]bool)} }

func (c *fakeCache) Punch(start, end int64) (int64, error) {
	var n int64
	for p := start; p < end; p++ {
		if c.resident[p] {
			delete(c.resident, p)
			n++
		}
	}
	c.punched += n
	return n, nil
}

// fill is what the fault path does on a miss: reserve, write, commit.
func fill(b *Budget, c *fakeCache, start, end int64) {
	refault := b.Refault(c, start)
	b.Reserve(end - start)
	for p := start; p < end; p++ {
		c.resident[p] = true
	}
	b.Commit(c, start, end, end-start, end-start, refault)
}

func TestBudgetNeverExceeded(t *testing.T) {
	for _, pol := range []Policy{S3FIFO, FIFO} {
		b := New(100, pol)
		c := newFake()
		r := rand.New(rand.NewPCG(1, 2))
		for range 10000 {
			p := r.Int64N(100000)
			if !c.resident[p] {
				fill(b, c, p, p+1+r.Int64N(16))
			}
			if int64(len(c.resident)) > 100 {
				t.Fatalf("%s: %d pages resident under a budget of 100", pol, len(c.resident))
			}
		}
		if st := b.Stats(); st.MaxResident > 100 || st.Evictions == 0 {
			t.Fatalf("%s: %+v", pol, st)
		}
	}
}

// A read larger than the budget is let in alone: the cache is emptied for it.
func TestReserveLargerThanBudget(t *testing.T) {
	b := New(10, S3FIFO)
	c := newFake()
	fill(b, c, 0, 8)
	fill(b, c, 100, 116)
	if len(c.resident) != 16 || c.resident[0] {
		t.Fatalf("resident %d pages, page 0 resident %v", len(c.resident), c.resident[0])
	}
}

// An extent that faults again soon after its eviction goes to the main
// queue, where a scan of new pages does not flush it.
func TestRefaultProtectsFromScan(t *testing.T) {
	b := New(100, S3FIFO)
	hot, scan := newFake(), newFake()
	fill(b, hot, 0, 10)
	for p := int64(0); p < 200; p += 10 { // a scan pushes hot out of the small queue
		fill(b, scan, p, p+10)
	}
	if hot.resident[0] {
		t.Fatal("a one-time extent survived a scan twice the budget")
	}
	fill(b, hot, 0, 10) // the refault
	if b.Stats().Refaults != 1 {
		t.Fatalf("refaults = %d, want 1", b.Stats().Refaults)
	}
	for p := int64(1000); p < 1400; p += 10 {
		fill(b, scan, p, p+10)
	}
	if !hot.resident[0] {
		t.Fatal("a refaulted extent was flushed by a scan")
	}
}

func TestForget(t *testing.T) {
	b := New(100, S3FIFO)
	a, c := newFake(), newFake()
	fill(b, a, 0, 50)
	fill(b, c, 0, 30)
	b.Forget(a)
	if st := b.Stats(); st.ResidentPages != 30 {
		t.Fatalf("resident after Forget = %d, want 30", st.ResidentPages)
	}
	fill(b, c, 100, 170) // fits without touching a's pages
	if a.punched != 0 {
		t.Fatalf("a forgotten cache was punched")
	}
}

// The policies side by side on what the handler sees: only misses. The
// LRU is the textbook one, which sees every access — more than any policy
// here can — and is the bar to approach.
func BenchmarkPolicyMissRatio(b *testing.B) {
	const pages, budget, n = 1 << 16, 1 << 12, 400000
	traces := map[string]func(r *rand.Rand) []int64{
		"zipf": func(r *rand.Rand) []int64 {
			z := rand.NewZipf(r, 1.1, 1, pages-1)
			t := make([]int64, n)
			for i := range t {
				t[i] = int64(z.Uint64())
			}
			return t
		},
		"zipf+scan": func(r *rand.Rand) []int64 {
			z := rand.NewZipf(r, 1.1, 1, pages-1)
			t := make([]int64, 0, n)
			scan := int64(pages)
			for len(t) < n {
				if r.IntN(64) == 0 { // about half the accesses scan pages never seen again
					for range 64 {
						t = append(t, scan)
						scan++
					}
					continue
				}
				t = append(t, int64(z.Uint64()))
			}
			return t
		},
	}
	for name, gen := range traces {
		trace := gen(rand.New(rand.NewPCG(7, 7)))
		for _, pol := range []Policy{S3FIFO, FIFO, "lru"} {
			b.Run(name+"/"+string(pol), func(b *testing.B) {
				var ratio float64
				for b.Loop() {
					ratio = missRatio(pol, trace, budget)
				}
				b.ReportMetric(ratio, "miss-ratio")
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}

func missRatio(pol Policy, trace []int64, budget int64) float64 {
	misses := 0
	if pol == "lru" {
		l := list.New()
		at := make(map[int64]*list.Element)
		for _, p := range trace {
			if e, ok := at[p]; ok {
				l.MoveToBack(e)
				continue
			}
			misses++
			at[p] = l.PushBack(p)
			if int64(l.Len()) > budget {
				delete(at, l.Remove(l.Front()).(int64))
			}
		}
		return float64(misses) / float64(len(trace))
	}
	bud := New(budget, pol)
	c := newFake()
	for _, p := range trace {
		if !c.resident[p] {
			misses++
			fill(bud, c, p, p+1)
		}
	}
	return float64(misses) / float64(len(trace))
}
