package remote

import (
	"fmt"
	"testing"
)

// scatter makes localityRing lone demand reads, one per chunk, each more
// than SubRange from the others, so that the Store learns that demand reads
// have no neighbours. It returns the requests they made.
func scatter(t *testing.T, s *Store, o *fakeObject) []call {
	t.Helper()
	for i := range localityRing {
		readAndCheck(t, s, o.data, int64(i*testChunk+testChunk/2), 4096)
	}
	return o.requests()
}

// Once recent faults have shown no neighbours, a lone fault fetches only its
// own pages, even in a chunk read before; the first read near a recent one
// fetches as before (here the whole chunk, read before).
func TestScatteredReadsFetchOnlyTheirPages(t *testing.T) {
	o := newFake(t, testSize)
	s := newStore(t, o, testConfig())
	r := scatter(t, s, o)
	if len(r) != localityRing {
		t.Fatalf("requests %v; want one span per read", r)
	}
	for _, c := range r {
		if c.n != testSub {
			t.Fatalf("request %v; want a %d-byte span while nothing is known", c, testSub)
		}
	}
	// Chunk 3 was read before, far from here: only the page is fetched.
	base := int64(3 * testChunk)
	readAndCheck(t, s, o.data, base, 4096)
	// Across a page boundary, the pages it touches.
	readAndCheck(t, s, o.data, 5*testChunk+testChunk-4096-100, 200)
	want := []call{{localityRing, base, 4096}, {localityRing + 1, 5*testChunk + testChunk - 2*4096, 2 * 4096}}
	if got := o.requests()[localityRing:]; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("requests %v; want %v", got, want)
	}
	// A neighbour of the page: locality after all.
	readAndCheck(t, s, o.data, base+4096, 4096)
	got := o.requests()
	if last := got[len(got)-1]; last.off != base || last.n != testChunk {
		t.Fatalf("request %v; want chunk 3 whole", last)
	}
	// Large reads are not demand reads and still fetch whole chunks.
	readAndCheck(t, s, o.data, 14*testChunk+100, testSub+1)
	got = o.requests()
	if last := got[len(got)-1]; last.off != 14*testChunk || last.n != testChunk {
		t.Fatalf("request %v; want chunk 14 whole", last)
	}
}

// Reads that come back near recent ones keep the spans: a reader that
// faults page by page through a region is served a span at a time.
func TestNeighbouringReadsKeepSpans(t *testing.T) {
	o := newFake(t, testSize)
	s := newStore(t, o, testConfig())
	for i := range 2 * localityRing {
		// Two pages a chunk, next to each other, a span apart from the
		// chunk's start.
		off := int64(i/2*testChunk + testSub + i%2*4096)
		if off+4096 > testSize {
			break
		}
		readAndCheck(t, s, o.data, off, 4096)
	}
	for _, c := range o.requests() {
		if c.n != testSub {
			t.Fatalf("request %v; want every chunk's span of %d bytes", c, testSub)
		}
	}
}

// With SubRange off, demand reads fetch whole chunks however scattered.
func TestScatteredReadsWithoutSubRange(t *testing.T) {
	o := newFake(t, testSize)
	cfg := testConfig()
	cfg.SubRange = -1
	s := newStore(t, o, cfg)
	scatter(t, s, o)
	readAndCheck(t, s, o.data, 15*testChunk+4096, 4096) // cached
	for _, c := range o.requests() {
		if c.n != testChunk {
			t.Fatalf("request %v; want whole chunks", c)
		}
	}
}

func TestLocalityRing(t *testing.T) {
	var l locality
	for i := range int64(localityRing) {
		if l.scattered() {
			t.Fatalf("scattered after %d reads; want a full ring first", i)
		}
		l.add(i<<20, i<<20+4096)
	}
	if !l.scattered() {
		t.Fatal("not scattered after a ring of reads with no neighbours")
	}
	if l.touch(100<<20, 100<<20+4096, 1<<10) {
		t.Fatal("a far read touched a remembered one")
	}
	// Within reach (4 KiB past the end) of four of them: a quarter.
	for i := range int64(4) {
		if !l.touch(i<<20+8192, i<<20+12288, 8192) {
			t.Fatalf("a read 4 KiB after read %d did not touch it", i)
		}
	}
	if l.scattered() {
		t.Fatal("still scattered with a quarter of the reads followed by a neighbour")
	}
	// The ring forgets the oldest: four new lone reads push out the four
	// that had neighbours.
	for i := range int64(4) {
		l.add((200+i)<<20, (200+i)<<20+4096)
	}
	if !l.scattered() {
		t.Fatal("not scattered once the reads with neighbours were forgotten")
	}
}
