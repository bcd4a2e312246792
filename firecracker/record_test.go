package firecracker

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/pty"
	"github.com/filemap/filemap/internal/testutil"
)

func sampleRecord(n int) *Record {
	rng := rand.New(rand.NewPCG(1, 2))
	r := &Record{PageSize: PageSize, ObjectSize: 64 << 20, ObjectVersion: "67108864@1700000000000000000",
		Start: time.Unix(1700000000, 0)}
	seen := map[int64]bool{}
	var at time.Duration
	for len(r.Pages) < n {
		p := rng.Int64N(r.ObjectSize / PageSize)
		if seen[p] {
			continue
		}
		seen[p] = true
		at += time.Duration(rng.IntN(3)) * time.Millisecond
		r.Pages = append(r.Pages, p)
		r.At = append(r.At, at)
	}
	return r
}

func TestRecordRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, 1000} {
		r := sampleRecord(n)
		b, err := EncodeRecord(r)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeRecord(b)
		if err != nil {
			t.Fatalf("%d pages: %v", n, err)
		}
		if !got.Complete || got.PageSize != r.PageSize || got.ObjectSize != r.ObjectSize ||
			got.ObjectVersion != r.ObjectVersion || !got.Start.Equal(r.Start) {
			t.Errorf("%d pages: header %+v, want %+v", n, got, r)
		}
		if !slices.Equal(got.Pages, r.Pages) || !slices.Equal(got.At, r.At) {
			t.Errorf("%d pages: pages or times differ", n)
		}
		if n == 1000 {
			t.Logf("%d pages in %d bytes: %.1f bytes a page", n, len(b), float64(len(b)-recordHeader-len(r.ObjectVersion))/float64(n))
		}
	}
}

// TestRecordPrefixes cuts a record at every byte: what a crash leaves
// decodes to a prefix of the pages, never to an error or a wrong page.
func TestRecordPrefixes(t *testing.T) {
	r := sampleRecord(50)
	b, err := EncodeRecord(r)
	if err != nil {
		t.Fatal(err)
	}
	hdr := recordHeader + len(r.ObjectVersion)
	for cut := 0; cut < len(b); cut++ {
		got, err := DecodeRecord(b[:cut])
		if cut < hdr {
			if err == nil {
				t.Fatalf("cut at %d, inside the header: no error", cut)
			}
			continue
		}
		if err != nil {
			t.Fatalf("cut at %d of %d: %v", cut, len(b), err)
		}
		if got.Complete {
			t.Fatalf("cut at %d of %d: complete", cut, len(b))
		}
		if !slices.Equal(got.Pages, r.Pages[:len(got.Pages)]) {
			t.Fatalf("cut at %d: pages %v are not a prefix", cut, got.Pages)
		}
	}
}

func TestDecodeRecordErrors(t *testing.T) {
	good, err := EncodeRecord(sampleRecord(10))
	if err != nil {
		t.Fatal(err)
	}
	edit := func(f func(b []byte) []byte) []byte { return f(slices.Clone(good)) }
	le := binary.LittleEndian
	hdr := recordHeader + len(sampleRecord(0).ObjectVersion)
	for name, b := range map[string][]byte{
		"magic":     edit(func(b []byte) []byte { b[0] = 'X'; return b }),
		"version":   edit(func(b []byte) []byte { le.PutUint16(b[8:], 2); return b }),
		"flags":     edit(func(b []byte) []byte { le.PutUint16(b[10:], 1); return b }),
		"page size": edit(func(b []byte) []byte { le.PutUint32(b[12:], 3000); return b }),
		"size":      edit(func(b []byte) []byte { le.PutUint64(b[16:], 1<<62); return b }),
		"crc":       edit(func(b []byte) []byte { b[len(b)-1] ^= 1; return b }),
		"trailing":  append(slices.Clone(good), 0),
		"beyond the file": edit(func(b []byte) []byte {
			return append(b[:hdr], binary.AppendUvarint(nil, 2*(64<<20/PageSize+1))...)
		}),
		"twice": edit(func(b []byte) []byte {
			b = b[:hdr]
			b = binary.AppendUvarint(b, 2*6) // page 5
			b = binary.AppendUvarint(b, 0)
			b = binary.AppendUvarint(b, 2*1) // page 6
			b = binary.AppendUvarint(b, 0)
			return binary.AppendUvarint(b, 1) // page 5 again (delta −1)
		}),
	} {
		if _, err := DecodeRecord(b); !errors.Is(err, ErrRecord) {
			t.Errorf("%s: %v, want ErrRecord", name, err)
		}
	}
}

func FuzzDecodeRecord(f *testing.F) {
	full, _ := EncodeRecord(sampleRecord(20))
	f.Add(full)
	f.Add(full[:len(full)-5])
	f.Add(full[:recordHeader+3])
	empty, _ := EncodeRecord(sampleRecord(0))
	f.Add(empty)
	f.Add([]byte(recordMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeRecord(b)
		if err != nil {
			if !errors.Is(err, ErrRecord) {
				t.Fatalf("error %v does not wrap ErrRecord", err)
			}
			return
		}
		if len(r.Pages) != len(r.At) || len(r.Pages) > len(b) {
			t.Fatalf("%d pages, %d times from %d bytes", len(r.Pages), len(r.At), len(b))
		}
		again, err := EncodeRecord(r)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		r2, err := DecodeRecord(again)
		if err != nil || !r2.Complete || !slices.Equal(r2.Pages, r.Pages) || !slices.Equal(r2.At, r.At) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// TestRecorderWritesAsItGoes: entries reach the file while the restore
// runs, so a crash leaves them; close adds the trailer.
func TestRecorderWritesAsItGoes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ws")
	r, err := newRecorder(path, PageSize, 1<<20, "v1", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []int64{7, 3, 3, 200} {
		r.add(p)
	}
	testutil.WaitFor(t, "the entries to be written", func() bool {
		b, _ := os.ReadFile(path)
		got, err := DecodeRecord(b)
		return err == nil && len(got.Pages) == 3
	})
	if err := r.close(); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	got, err := DecodeRecord(b)
	if err != nil || !got.Complete || !slices.Equal(got.Pages, []int64{7, 3, 200}) {
		t.Fatalf("after close: %+v, %v", got, err)
	}
}

func readRecord(t *testing.T, path string) *Record {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	r, err := DecodeRecord(b)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestRecordReplay records a restore's first touches, then replays them
// into the next restore, of a fresh handler: the pages arrive by prefetch,
// and the guest's faults almost vanish.
func TestRecordReplay(t *testing.T) {
	const size = 32 << 20
	mem := memFile(t, size)
	dir := t.TempDir()
	rec := filepath.Join(dir, "ws")
	ws := workingSet(7, size/PageSize, 0.1)
	touch := filepath.Join(dir, "touch")
	writePages(t, touch, ws)

	ts := startServer(t, mem, Config{Record: rec})
	c := startClient(t, ts.sock, mem, clientOpts{spans: twoRegions(size)})
	c.OK("touch %s", touch)
	c.close()
	testutil.WaitFor(t, "the recorded VM to be gone", func() bool { return ts.Stats().VMs == 0 })
	r := readRecord(t, rec)
	if !r.Complete || r.PageSize != PageSize || r.ObjectSize != size {
		t.Fatalf("record: complete %v, page size %d, size %d", r.Complete, r.PageSize, r.ObjectSize)
	}
	if !slices.Equal(r.Pages, ws) {
		t.Fatalf("recorded %d pages, not the %d touched in order", len(r.Pages), len(ws))
	}
	recorded := ts.Stats().Faults
	ts.Close()

	// A fresh handler replays it. Waiting for the replay before touching
	// shows what it can do: every page is in before the guest needs it.
	progress := new(syncBuffer)
	ts2 := startServer(t, mem, Config{Prefetch: rec, Progress: progress})
	c2 := startClient(t, ts2.sock, mem, clientOpts{spans: twoRegions(size)})
	testutil.WaitFor(t, "the prefetch", func() bool { st := ts2.Stats(); return st.Restores == 1 && st.Prefetching == 0 })
	c2.OK("touch %s", touch)
	c2.OK("checkall")
	st := ts2.Stats()
	if st.Prefetched != uint64(len(ws)) {
		t.Errorf("prefetched %d pages, want %d", st.Prefetched, len(ws))
	}
	// After the replay, checkall's faults are the pages outside the
	// working set; the working set's own touches made none.
	if touchFaults := st.Faults - (size/PageSize - uint64(len(ws))); touchFaults > uint64(len(ws))/10 {
		t.Errorf("the touches of the working set faulted %d times (recording: %d); want almost none", touchFaults, recorded)
	}
	if st.PrefetchLate != 0 {
		t.Errorf("%d pages late", st.PrefetchLate)
	}
	// The replay logs its start and its end, with pages and time; on a
	// terminal its line shows the planned pages, and is gone once it is
	// over.
	testutil.WaitFor(t, "the replay's end in the log", func() bool { return strings.Contains(ts2.log.String(), "prefetch done") })
	for _, want := range []string{
		fmt.Sprintf(`msg="firecracker: prefetch started" .*record=%s planned=%d bytes=%d`, regexp.QuoteMeta(rec), len(ws), len(ws)*PageSize),
		fmt.Sprintf(`msg="firecracker: prefetch done" .*installed=%d planned=%d late=0 took=\d`, len(ws), len(ws)),
	} {
		if !regexp.MustCompile(want).MatchString(ts2.log.String()) {
			t.Errorf("the log has no line matching %q", want)
		}
	}
	testutil.WaitFor(t, "the progress line to be erased", func() bool {
		rows, _ := pty.Screen([]byte(progress.String()), 0)
		return strings.Join(rows, "") == ""
	})
	if !regexp.MustCompile(fmt.Sprintf(`\rfilemap firecracker: VM \d+ prefetch \[#* *\] \d+/%d pages \(`, len(ws))).MatchString(progress.String()) {
		t.Errorf("the terminal never showed the replay's line of %d pages: %q", len(ws), progress.String())
	}

	// A guest that starts touching as soon as it is restored races the
	// replay; whatever the race, every byte is right, and the guest's
	// faults plus the replay's copies cover the working set.
	before := ts2.Stats()
	c3 := startClient(t, ts2.sock, mem, clientOpts{spans: twoRegions(size)})
	c3.OK("touch %s", touch)
	c3.OK("checkall")
	c3.close()
	testutil.WaitFor(t, "the racing VM to be gone", func() bool { return ts2.Stats().VMs == 1 })
	after := ts2.Stats()
	t.Logf("racing replay: prefetched %d, late %d, faults %d (of %d pages touched, then all %d checked)",
		after.Prefetched-before.Prefetched, after.PrefetchLate-before.PrefetchLate, after.Faults-before.Faults, len(ws), size/PageSize)
}

// TestRecordAfterCrashAndSIGTERM: a handler killed leaves a record that
// decodes to the pages touched so far; one that gets SIGTERM finishes it.
func TestRecordAfterCrashAndSIGTERM(t *testing.T) {
	const size = 8 << 20
	mem := memFile(t, size)
	dir := t.TempDir()
	ws := workingSet(3, size/PageSize, 0.2)
	touch := filepath.Join(dir, "touch")
	writePages(t, touch, ws)
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		rec := filepath.Join(dir, "ws-"+sig.String())
		sock := filepath.Join(dir, "uffd-"+sig.String()+".sock")
		h := startHandler(t, sock, mem, "FC_RECORD="+rec)
		c := startClient(t, sock, mem, clientOpts{spans: []span{{0, size}}})
		c.OK("touch %s", touch)
		// Written as it goes: the pages reach the file without a close.
		testutil.WaitFor(t, "the record to hold the pages", func() bool {
			b, _ := os.ReadFile(rec)
			r, err := DecodeRecord(b)
			return err == nil && len(r.Pages) == len(ws)
		})
		h.Cmd.Process.Signal(sig)
		if sig == syscall.SIGTERM {
			if l, _ := h.Reply(20 * time.Second); l != "closed" {
				t.Fatalf("handler after SIGTERM: %q", l)
			}
		}
		h.Cmd.Wait()
		r := readRecord(t, rec)
		if r.Complete != (sig == syscall.SIGTERM) || !slices.Equal(r.Pages, ws) {
			t.Errorf("%v: complete %v, %d pages (equal to the touches: %v)", sig, r.Complete, len(r.Pages), slices.Equal(r.Pages, ws))
		}
		c.Cmd.Process.Kill()
	}
}

func TestEncodeRecordRefuses(t *testing.T) {
	for _, r := range []*Record{
		{PageSize: 1000, ObjectSize: 1 << 20},
		{PageSize: PageSize, ObjectSize: 1 << 20, Pages: []int64{1, 1}},
		{PageSize: PageSize, ObjectSize: 1 << 20, Pages: []int64{1 << 20}},
		{PageSize: PageSize, ObjectSize: 1 << 20, ObjectVersion: string(bytes.Repeat([]byte("v"), 5000))},
	} {
		if _, err := EncodeRecord(r); err == nil {
			t.Errorf("%+v encoded", r)
		}
	}
}
