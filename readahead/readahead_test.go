package readahead

import (
	"slices"
	"testing"
)

const npages = 1 << 20

var kernel = Config{ReadaheadPages: 32, ReadaheadMaxPages: 32} // ra_pages 32, as the reference measured

func TestMissReadAround(t *testing.T) {
	cases := []struct {
		cfg    Config
		index  int64
		n      int64
		advice Advice
		want   Window
	}{
		// The kernel's read-around: a cold fault at 1000 with 32-page ra reads [984, 1016), marker 1008.
		{kernel, 1000, npages, Normal, Window{984, 1016, 1008}},
		// A fault at 0 reads [0, 32) with the marker at 24.
		{kernel, 0, npages, Normal, Window{0, 32, 24}},
		{kernel, 10, npages, Normal, Window{0, 32, 24}},
		{kernel, 99, 100, Normal, Window{83, 100, -1}}, // clipped at EOF: the marker would be past it
		{kernel, 99, 110, Normal, Window{83, 110, 107}},
		{kernel, 1000, npages, Random, Window{1000, 1001, -1}},
		{Config{ReadaheadPages: 1}, 1000, npages, Normal, Window{1000, 1001, -1}},
		{kernel, 1000, npages, Sequential, Window{1000, 1064, 1032}},
		{kernel, 0, 1, Normal, Window{0, 1, -1}},
	}
	for _, c := range cases {
		var s State
		if got := s.Miss(c.cfg, c.index, c.n, c.advice); got != c.want {
			t.Errorf("Miss(ra %d, %d, npages %d, %v) = %v, want %v", c.cfg.ReadaheadPages, c.index, c.n, c.advice, got, c.want)
		}
	}
}

// Touching each marker reads the next window; with the kernel's 32-page
// maximum every async window is 32 pages with its marker on its first page.
func TestMarkerChainKernelDefault(t *testing.T) {
	var s State
	w := s.Miss(kernel, 1000, npages, Normal)
	want := []Window{{1016, 1048, 1016}, {1048, 1080, 1048}, {1080, 1112, 1080}}
	for i, next := range want {
		got, ok := s.MarkerHit(kernel, w.Marker, npages, nil)
		if !ok || got != next {
			t.Fatalf("marker hit %d at %d: %v, want %v", i, w.Marker, got, next)
		}
		w = got
	}
}

// A sequential stream ramps up to the maximum window.
func TestMarkerRampUp(t *testing.T) {
	cfg := Config{ReadaheadPages: 32, ReadaheadMaxPages: 2048}
	var s State
	w := s.Miss(cfg, 0, npages, Normal)
	var sizes []int64
	for range 8 {
		var ok bool
		w, ok = s.MarkerHit(cfg, w.Marker, npages, nil)
		if !ok || w.Marker != w.Start {
			t.Fatalf("async window %v: marker not on its first page", w)
		}
		sizes = append(sizes, w.Len())
	}
	want := []int64{128, 256, 512, 1024, 2048, 2048, 2048, 2048} // get_next_ra_size: ×4 below max/16, ×2 to max/2, then max
	for i := range want {
		if sizes[i] != want[i] {
			t.Fatalf("window sizes %v, want %v", sizes, want)
		}
	}
}

// A store whose round trips are long ramps a stream up by its own factor:
// from 128 KiB to 256 MiB in four windows, where the kernel's ramp takes
// seven.
func TestMarkerRampFast(t *testing.T) {
	for _, tc := range []struct {
		ramp int64
		want []int64
	}{
		{0, []int64{128, 512, 2048, 8192, 16384, 32768, 65536, 65536}},
		{8, []int64{256, 2048, 16384, 65536, 65536, 65536, 65536, 65536}},
	} {
		cfg := Config{ReadaheadPages: 32, ReadaheadMaxPages: 65536, Ramp: tc.ramp}
		var s State
		w := s.Miss(cfg, 0, 1<<20, Normal)
		var sizes []int64
		for range len(tc.want) {
			var ok bool
			if w, ok = s.MarkerHit(cfg, w.Marker, 1<<20, nil); !ok {
				t.Fatalf("ramp %d: no window after %v", tc.ramp, sizes)
			}
			sizes = append(sizes, w.Len())
		}
		if !slices.Equal(sizes, tc.want) {
			t.Errorf("ramp %d: window sizes %v, want %v", tc.ramp, sizes, tc.want)
		}
	}
}

// As with the kernel's readahead, a sequential scan of a cold 16 MiB file
// with 128 KiB readahead takes at most 2 major faults: the first miss, then
// every later window is started by a marker before the reader gets there.
func TestSequentialScan16MiB(t *testing.T) {
	const pages = 16 << 20 >> 12
	order := make([]int64, pages)
	for p := range order {
		order[p] = int64(p)
	}
	for _, cfg := range []Config{kernel, {ReadaheadPages: 32, ReadaheadMaxPages: 2048}} {
		if majors := simulate(cfg, pages, order); majors > 2 {
			t.Errorf("max %d pages: %d major faults for a 16 MiB sequential scan, want at most 2", cfg.ReadaheadMaxPages, majors)
		}
	}
}

// A marker hit the state does not expect, of a window whose pages after
// the marker are in the cache or being read, continues after those pages,
// growing from their count, as the stream would have: a window of the
// ramp's first size from the marker on would fall within them and claim
// nothing.
func TestMarkerHitInterleavedAhead(t *testing.T) {
	cfg := Config{ReadaheadPages: 32, ReadaheadMaxPages: 65536, Ramp: 8}
	var s State
	s.Miss(cfg, 5000, npages, Normal)
	w, ok := s.MarkerHit(cfg, 1000, npages, func() int64 { return 2047 })
	if want := (Window{3048, 3048 + 16384, 3048}); !ok || w != want {
		t.Fatalf("window %v after a marker with 2047 pages ahead; want %v", w, want)
	}
}

// A marker hit the state does not expect (another stream moved the
// window) reads ahead from that marker.
func TestMarkerHitInterleaved(t *testing.T) {
	var s State
	s.Miss(kernel, 5000, npages, Normal)
	w, ok := s.MarkerHit(kernel, 1008, npages, nil)
	if !ok || w.Start != 1009 || w.Marker != 1009 {
		t.Fatalf("unexpected marker: %v", w)
	}
}

func TestMarkerHitAtEOF(t *testing.T) {
	var s State
	w := s.Miss(kernel, 40, 50, Normal) // [24, 50): marker 48
	if w.Marker != 48 {
		t.Fatalf("window %v", w)
	}
	if w, ok := s.MarkerHit(kernel, 48, 50, nil); ok {
		t.Fatalf("marker hit at the end read %v", w)
	}
}

func TestParseAdvice(t *testing.T) {
	for a := Normal; a <= DontNeed; a++ {
		if got, err := ParseAdvice(a.String()); err != nil || got != a {
			t.Errorf("ParseAdvice(%q) = %v, %v", a.String(), got, err)
		}
	}
	if _, err := ParseAdvice("often"); err == nil {
		t.Error("ParseAdvice accepted an unknown advice")
	}
}

// The kernel's mmap_miss (MMAP_LOTSAMISS): the 101st miss without hits
// reads its page alone; hits bring read-around back.
func TestMmapMiss(t *testing.T) {
	var s State
	for i := range MmapLotsaMiss {
		if w := s.Miss(kernel, int64(1000*i+500), npages, Normal); w.Len() != 32 {
			t.Fatalf("miss %d read %v, want read-around", i+1, w)
		}
	}
	if w := s.Miss(kernel, 777777, npages, Normal); w != (Window{777777, 777778, -1}) {
		t.Fatalf("miss %d read %v, want the page alone", MmapLotsaMiss+1, w)
	}
	s.Hit()
	s.Hit()
	if w := s.Miss(kernel, 888888, npages, Normal); w.Len() != 32 {
		t.Fatalf("after hits, a miss read %v, want read-around", w)
	}
	// Neighbours that fault-around mapped count as hits, as in filemap_map_pages.
	for range 10 {
		s.Miss(kernel, 5, npages, Normal)
	}
	s.Mapped(15)
	if w := s.Miss(kernel, 999999, npages, Normal); w.Len() != 32 {
		t.Fatalf("after mapped neighbours, a miss read %v, want read-around", w)
	}
	// Sequential and random advice leave mmap_miss alone.
	before := s.MmapMiss
	s.Miss(kernel, 5, npages, Sequential)
	s.Miss(kernel, 5, npages, Random)
	if s.MmapMiss != before {
		t.Fatalf("mmap_miss moved from %d to %d under sequential and random advice", before, s.MmapMiss)
	}
	for range 2000 {
		s.Miss(kernel, 5, npages, Normal)
	}
	if s.MmapMiss != 1000 {
		t.Fatalf("mmap_miss = %d, want it capped at 1000", s.MmapMiss)
	}
}

// simulate runs accesses against Streams as the handler would: a page not
// present and not a marker is a miss (a major fault); a marker's touch
// reads the next window. It returns the major faults.
func simulate(cfg Config, pages int64, order []int64) int {
	var s Streams
	present := make([]bool, pages)
	isMarker := make([]bool, pages)
	read := func(w Window) {
		for p := w.Start; p < w.End; p++ {
			if !present[p] && !isMarker[p] {
				present[p] = p != w.Marker
				isMarker[p] = p == w.Marker
			}
		}
	}
	majors := 0
	for _, p := range order {
		switch {
		case isMarker[p]:
			isMarker[p], present[p] = false, true
			if w, ok := s.MarkerHit(cfg, p, pages, nil); ok {
				read(w)
			}
		case !present[p]:
			majors++
			read(s.Miss(cfg, p, pages, Normal))
		}
	}
	return majors
}

// memmove of a large copy loads its last bytes first: a reader copying
// 1 MiB at a time touches the end of each MiB before its start. The miss
// at the end must not reset the stream that keeps ahead of the start.
func TestStreamsTailFirstCopies(t *testing.T) {
	const pages = 64 << 20 >> 12
	var order []int64
	for c := int64(0); c < pages; c += 256 {
		order = append(order, c+255)
		for p := c; p < c+256; p++ {
			order = append(order, p)
		}
	}
	if m := simulate(Config{ReadaheadPages: 32, ReadaheadMaxPages: 2048}, pages, order); m > 3 {
		t.Fatalf("%d major faults for 64 MiB copied 1 MiB at a time, want at most 3", m)
	}
}

// Two readers, each sequential in its own half, interleaved page by page.
func TestStreamsInterleaved(t *testing.T) {
	const pages = 32 << 20 >> 12
	var order []int64
	for p := int64(0); p < pages/2; p++ {
		order = append(order, p, pages/2+p)
	}
	if m := simulate(Config{ReadaheadPages: 32, ReadaheadMaxPages: 2048}, pages, order); m > 4 {
		t.Fatalf("%d major faults for two interleaved sequential readers, want at most 4", m)
	}
}

// Lone misses elsewhere (ends of copies loaded first, stray reads) replace
// each other, never a stream whose markers are being touched.
func TestStreamsKeepTheOneBeingRead(t *testing.T) {
	var s Streams
	s.Miss(kernel, 0, npages, Normal) // [0, 32), marker 24
	if w, _ := s.MarkerHit(kernel, 24, npages, nil); w != (Window{32, 64, 32}) {
		t.Fatalf("first async window %v", w)
	}
	for i := int64(1); i <= 2*MaxStreams; i++ {
		s.Miss(kernel, i*100000, npages, Normal)
	}
	if w, _ := s.MarkerHit(kernel, 32, npages, nil); w != (Window{64, 96, 64}) {
		t.Fatalf("after lone misses, the stream's next window is %v, want [64, 96) marker 64", w)
	}
}
