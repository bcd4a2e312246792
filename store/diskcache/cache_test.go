package diskcache

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/store/remote"
)

const key, v1, v2 = "s3:bucket/object", "etag-1", "etag-2"

// size is 10 whole chunks and a short one.
const size = 10*cs + 1234

// The restarted daemon: a new Cache on the directory an earlier one left
// serves every byte from disk, with no read of the wrapped store.
func TestRestartServesEveryByteFromDisk(t *testing.T) {
	dir := t.TempDir()
	data := pattern.Random(size, 1)

	c1, _ := open(t, dir, 1<<30)
	f1 := newFake(key, v1, data)
	st := c1.Wrap(f1)
	readAll(t, st, data, 12345) // reads that straddle chunks
	if got := f1.reads.Load(); got != 11 {
		t.Errorf("first scan: %d store reads, want one per chunk (11)", got)
	}
	s := c1.Stats()
	if s.Misses != 11 || s.BytesWritten != size || s.BytesOnDisk != 10*cs+pageSize || s.Objects != 1 {
		t.Errorf("first scan: stats %+v", s)
	}
	st.Close()
	if !f1.closed.Load() {
		t.Error("closing the cached store did not close the wrapped store")
	}
	if err := c1.Close(); err != nil {
		t.Fatal(err)
	}

	// Page by page, as faults read, then in one read across every chunk,
	// with nothing kept in memory: each chunk from disk, each time.
	c2, _ := open(t, dir, 1<<30, WithMemChunks(0))
	f2 := newFake(key, v1, data)
	st2 := c2.Wrap(f2)
	defer st2.Close()
	readAll(t, st2, data, pageSize)
	readAll(t, st2, data, size)
	if got := f2.reads.Load(); got != 0 {
		t.Errorf("restarted: %d store reads, want 0", got)
	}
	// 161 pages, each a whole chunk read and checked, then 11 chunks.
	s = c2.Stats()
	if s.Misses != 0 || s.Hits != 161+11 || s.BytesRead != 160*cs+1234+size || s.Corrupt != 0 {
		t.Errorf("restarted: stats %+v", s)
	}
}

// A read that spans several chunks loads them together and fills the
// buffer in order; the memory tier serves the faults that follow.
func TestMemChunksServeNeighbours(t *testing.T) {
	c, _ := open(t, t.TempDir(), 1<<30)
	data := pattern.Random(size, 2)
	f := newFake(key, v1, data)
	st := c.Wrap(f)
	defer st.Close()
	readAll(t, st, data[:4*cs], 4*cs)
	readAll(t, st, data[:4*cs], pageSize)
	if got := f.reads.Load(); got != 4 {
		t.Errorf("%d store reads, want 4", got)
	}
	if s := c.Stats(); s.MemHits != 4*cs/pageSize || s.Hits != 0 {
		t.Errorf("stats %+v: want every page read from memory", s)
	}
}

func TestCorruptDataByteIsRefetched(t *testing.T) {
	dir := t.TempDir()
	data := pattern.Random(size, 3)
	fill(t, dir, key, v1, data)
	dataPath := only(t, dir, dataSuffix)
	modify(t, dataPath, 3*cs+777, 1, func(b []byte) { b[0] ^= 0x40 })

	c, lb := open(t, dir, 1<<30)
	f := newFake(key, v1, data)
	st := c.Wrap(f)
	readAll(t, st, data, pageSize)
	if got := f.reads.Load(); got != 1 {
		t.Errorf("%d store reads, want 1 (the corrupt chunk)", got)
	}
	if s := c.Stats(); s.Corrupt != 1 || s.Hits != 10 || s.Misses != 1 {
		t.Errorf("stats %+v", s)
	}
	mustContain(t, "log", lb.String(), "corrupt", key, "offset="+strconv.Itoa(3*cs), dataPath)
	st.Close()
	c.Close()

	// The chunk fetched again was written again.
	c, _ = open(t, dir, 1<<30)
	f = newFake(key, v1, data)
	st = c.Wrap(f)
	defer st.Close()
	readAll(t, st, data, cs)
	if got := f.reads.Load(); got != 0 {
		t.Errorf("after the refetch: %d store reads, want 0", got)
	}
}

// A chunk damaged under a running cache is caught on its next disk read.
func TestCorruptionWhileRunning(t *testing.T) {
	dir := t.TempDir()
	c, _ := open(t, dir, 1<<30, WithMemChunks(0))
	data := pattern.Random(size, 4)
	f := newFake(key, v1, data)
	st := c.Wrap(f)
	defer st.Close()
	readAll(t, st, data, cs)
	modify(t, only(t, dir, dataSuffix), 7*cs, 8, func(b []byte) { copy(b, "garbage!") })
	readAll(t, st, data, cs)
	if got := f.reads.Load(); got != 12 {
		t.Errorf("%d store reads, want 11 + 1", got)
	}
	if s := c.Stats(); s.Corrupt != 1 {
		t.Errorf("stats %+v", s)
	}
}

func TestTruncatedDataFileIsRefetched(t *testing.T) {
	dir := t.TempDir()
	data := pattern.Random(size, 5)
	fill(t, dir, key, v1, data)
	if err := os.Truncate(only(t, dir, dataSuffix), 4*cs+cs/2); err != nil {
		t.Fatal(err)
	}
	c, _ := open(t, dir, 1<<30)
	f := newFake(key, v1, data)
	st := c.Wrap(f)
	defer st.Close()
	readAll(t, st, data, 3000)
	// Chunks 0-3 are whole; 4 (cut in half) to 10 are short.
	if got := f.reads.Load(); got != 7 {
		t.Errorf("%d store reads, want 7", got)
	}
	if s := c.Stats(); s.Corrupt != 7 || s.Hits != 4 {
		t.Errorf("stats %+v", s)
	}
}

func TestCorruptIndexIsSurvived(t *testing.T) {
	damage := map[string]func(t *testing.T, idx string){
		"header byte": func(t *testing.T, idx string) {
			modify(t, idx, headerFixed+2, 1, func(b []byte) { b[0]++ })
		},
		"garbage": func(t *testing.T, idx string) {
			if err := os.WriteFile(idx, pattern.Random(4096, 6), 0o600); err != nil {
				t.Fatal(err)
			}
		},
		"empty": func(t *testing.T, idx string) { // killed while creating it
			if err := os.Truncate(idx, 0); err != nil {
				t.Fatal(err)
			}
		},
	}
	for name, fn := range damage {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			data := pattern.Random(size, 7)
			fill(t, dir, key, v1, data)
			idx := only(t, dir, idxSuffix)
			fn(t, idx)

			c, lb := open(t, dir, 1<<30)
			if s := c.Stats(); s.CorruptIndexes != 1 || s.BytesOnDisk != 0 || s.Objects != 0 {
				t.Errorf("stats %+v", s)
			}
			mustContain(t, "log", lb.String(), "corrupt index", idx)
			if n := len(filesOf(t, dir, dataSuffix)); n != 0 {
				t.Errorf("%d data files left behind an unusable index", n)
			}
			f := newFake(key, v1, data)
			st := c.Wrap(f)
			readAll(t, st, data, cs)
			if got := f.reads.Load(); got != 11 {
				t.Errorf("%d store reads, want 11", got)
			}
			st.Close()
			c.Close()

			c, _ = open(t, dir, 1<<30)
			f = newFake(key, v1, data)
			st = c.Wrap(f)
			defer st.Close()
			readAll(t, st, data, cs)
			if got := f.reads.Load(); got != 0 {
				t.Errorf("cached again: %d store reads, want 0", got)
			}
		})
	}
}

// A damaged record loses its chunk only.
func TestCorruptRecord(t *testing.T) {
	dir := t.TempDir()
	data := pattern.Random(size, 8)
	fill(t, dir, key, v1, data)
	modify(t, only(t, dir, idxSuffix), recordsStart(key, v1)+2*recordSize+1, 1, func(b []byte) { b[0]++ })
	c, lb := open(t, dir, 1<<30)
	if s := c.Stats(); s.Corrupt != 1 || s.BytesOnDisk != 9*cs+pageSize {
		t.Errorf("stats %+v", s)
	}
	mustContain(t, "log", lb.String(), "records failed their checksum")
	f := newFake(key, v1, data)
	st := c.Wrap(f)
	defer st.Close()
	readAll(t, st, data, cs)
	if got := f.reads.Load(); got != 1 {
		t.Errorf("%d store reads, want 1", got)
	}
}

// What a daemon killed between writing a chunk's data and its record, or a
// machine that lost power before the data reached the disk, leaves: misses,
// and no space lost.
func TestCrashLeftovers(t *testing.T) {
	dir := t.TempDir()
	data := pattern.Random(size, 9)
	fill(t, dir, key, v1, data)
	idx, dataPath := only(t, dir, idxSuffix), only(t, dir, dataSuffix)
	// Killed before chunk 1's record was written: data, no record.
	modify(t, idx, recordsStart(key, v1)+1*recordSize, recordSize, func(b []byte) { clear(b) })
	// Power lost before chunk 2's data reached the disk: a record, no data.
	f, err := os.OpenFile(dataPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := punch(f, 2*cs, cs); err != nil {
		t.Fatal(err)
	}
	f.Close()

	c, _ := open(t, dir, 1<<30)
	s := c.Stats()
	if s.BytesOnDisk != 9*cs+pageSize || s.Corrupt != 0 {
		t.Errorf("stats %+v", s)
	}
	// Chunk 1's bytes, which no record vouches for, were freed at Open.
	if got, want := allocated(t, dir), int64(8*cs+pageSize); got > want+pageSize {
		t.Errorf("data file holds %d bytes, want about %d", got, want)
	}
	fs := newFake(key, v1, data)
	st := c.Wrap(fs)
	defer st.Close()
	readAll(t, st, data, pageSize)
	if got := fs.reads.Load(); got != 2 {
		t.Errorf("%d store reads, want 2", got)
	}
	if s := c.Stats(); s.Corrupt != 1 {
		t.Errorf("stats %+v: want chunk 2 counted corrupt", s)
	}
}

// The budget holds on disk: with room for 4 chunks, reading 20 never
// allocates more than 4 (and a chunk of slack for file system metadata).
func TestBudget(t *testing.T) {
	dir := t.TempDir()
	c, _ := open(t, dir, 4*cs)
	data := pattern.Random(20*cs, 10)
	f := newFake(key, v1, data)
	st := c.Wrap(f)
	for i := range 20 {
		readAll(t, &window{st, int64(i) * cs}, data[i*cs:(i+1)*cs], pageSize)
		if a := allocated(t, dir); a > 5*cs {
			t.Fatalf("after chunk %d: %d bytes allocated, budget %d", i, a, 4*cs)
		}
		if s := c.Stats(); s.BytesOnDisk > 4*cs {
			t.Fatalf("after chunk %d: stats %+v", i, s)
		}
	}
	if s := c.Stats(); s.Evictions != 16 || s.BytesOnDisk != 4*cs {
		t.Errorf("stats %+v", s)
	}
	st.Close()
	c.Close()

	// The last four chunks read are the ones kept.
	c, _ = open(t, dir, 4*cs)
	f = newFake(key, v1, data)
	st = c.Wrap(f)
	defer st.Close()
	readAll(t, &window{st, 16 * cs}, data[16*cs:], cs)
	if got := f.reads.Load(); got != 0 {
		t.Errorf("%d store reads of the last 4 chunks, want 0", got)
	}
	// A smaller budget than last time evicts at Open.
	st.Close()
	c.Close()
	c, _ = open(t, dir, 2*cs)
	if s := c.Stats(); s.BytesOnDisk != 2*cs || s.Evictions != 2 || allocated(t, dir) > 3*cs {
		t.Errorf("smaller budget: stats %+v, %d bytes allocated", s, allocated(t, dir))
	}
}

// window reads st from base, so that tests can index a chunk from zero.
type window struct {
	st   io.ReaderAt
	base int64
}

func (w *window) ReadAt(p []byte, off int64) (int, error) { return w.st.ReadAt(p, w.base+off) }
func (w *window) Size() int64                             { return 0 }
func (w *window) Key() string                             { return "" }
func (w *window) Version() string                         { return "" }
func (w *window) Close() error                            { return nil }

// Eviction is least recently used across objects, and chunks of objects
// nobody has open are evicted too.
func TestBudgetAcrossObjects(t *testing.T) {
	dir := t.TempDir()
	c, _ := open(t, dir, 6*cs)
	a, b := pattern.Random(8*cs, 11), pattern.Random(8*cs, 12)
	fa, fb := newFake("a", v1, a), newFake("b", v1, b)
	sa, sb := c.Wrap(fa), c.Wrap(fb)
	readAll(t, sa, a[:4*cs], cs) // a0..a3
	readAll(t, sb, b[:2*cs], cs) // b0, b1
	sa.Close()                   // a's chunks stay, unused
	readAll(t, sb, b[:4*cs], cs) // b2, b3 evict a0, a1
	if s := c.Stats(); s.Evictions != 2 || s.BytesOnDisk != 6*cs || s.Objects != 2 {
		t.Fatalf("stats %+v", s)
	}
	readAll(t, sb, b, cs) // b4..b7 evict a2, a3, then a is gone
	if s := c.Stats(); s.BytesOnDisk != 6*cs || s.Objects != 1 {
		t.Errorf("stats %+v", s)
	}
	if n := len(filesOf(t, dir, idxSuffix)); n != 1 {
		t.Errorf("%d index files, want 1: an object whose chunks were all evicted keeps no files", n)
	}
	if got := allocated(t, dir); got > 7*cs {
		t.Errorf("%d bytes allocated", got)
	}
	sb.Close()
}

// Concurrent reads of one chunk wait for one fetch.
func TestSingleFlight(t *testing.T) {
	c, _ := open(t, t.TempDir(), 1<<30)
	data := pattern.Random(size, 13)
	f := newFake(key, v1, data)
	f.gate = make(chan struct{})
	st := c.Wrap(f)
	defer st.Close()
	o := st.(*cachedStore).o
	var wg sync.WaitGroup
	for i := range 32 {
		wg.Go(func() {
			off := int64(cs + i*1000)
			buf := make([]byte, 100)
			if _, err := st.ReadAt(buf, off); err != nil {
				t.Error(err)
			} else if !bytes.Equal(buf, data[off:off+100]) {
				t.Errorf("wrong bytes at %d", off)
			}
		})
	}
	waitUntil(func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		fl := o.flights[1]
		return fl != nil && fl.waiters == 31
	})
	close(f.gate)
	wg.Wait()
	if got := f.reads.Load(); got != 1 {
		t.Errorf("%d store reads, want 1", got)
	}
}

func TestVersionsDoNotMix(t *testing.T) {
	dir := t.TempDir()
	c, _ := open(t, dir, 1<<30)
	d1, d2 := pattern.Random(size, 14), pattern.Random(size+cs, 15)
	f1, f2 := newFake(key, v1, d1), newFake(key, v2, d2)
	s1 := c.Wrap(f1)
	s2 := c.Wrap(f2) // supersedes v1, which is still open
	readAll(t, s1, d1, 5000)
	readAll(t, s2, d2, 5000)
	readAll(t, s1, d1, cs)
	if n := len(filesOf(t, dir, idxSuffix)); n != 2 {
		t.Errorf("%d index files, want one per version", n)
	}
	s1.Close() // the superseded version's last user: its files go
	if n := len(filesOf(t, dir, idxSuffix)); n != 1 {
		t.Errorf("%d index files after closing v1, want 1", n)
	}
	s2.Close()
	c.Close()

	c, _ = open(t, dir, 1<<30)
	f2 = newFake(key, v2, d2)
	s2 = c.Wrap(f2)
	readAll(t, s2, d2, cs)
	if got := f2.reads.Load(); got != 0 {
		t.Errorf("v2: %d store reads, want 0", got)
	}
	s2.Close()
	f1 = newFake(key, v1, d1)
	s1 = c.Wrap(f1) // v2 is idle: wrapping v1 deletes it
	readAll(t, s1, d1, cs)
	if got := f1.reads.Load(); got != 11 {
		t.Errorf("v1: %d store reads, want 11", got)
	}
	if n := len(filesOf(t, dir, idxSuffix)); n != 1 {
		t.Errorf("%d index files, want 1", n)
	}
	s1.Close()
}

// A store's error reaches the reader, naming the object and offset, and
// nothing is cached for it: the next read asks the store again.
func TestStoreErrorPropagates(t *testing.T) {
	dir := t.TempDir()
	c, _ := open(t, dir, 1<<30)
	data := pattern.Random(size, 16)
	f := newFake(key, v1, data)
	errBoom := errors.New("boom")
	fail := func(off int64) error {
		if off/cs == 2 {
			return errBoom
		}
		return nil
	}
	f.fail.Store(&fail)
	st := c.Wrap(f)
	defer st.Close()

	buf := make([]byte, 100)
	_, err := st.ReadAt(buf, 2*cs+10)
	if !errors.Is(err, errBoom) {
		t.Fatalf("err = %v, want boom", err)
	}
	mustContain(t, "error", err.Error(), key, "offset "+strconv.Itoa(2*cs))
	if s := c.Stats(); s.BytesWritten != 0 || s.BytesOnDisk != 0 || allocated(t, dir) != 0 {
		t.Errorf("a failed read cached something: stats %+v", s)
	}
	// A read across chunks 0-3 fails at chunk 2, with chunks 0 and 1 read.
	big := make([]byte, 4*cs)
	n, err := st.ReadAt(big, 0)
	if !errors.Is(err, errBoom) || n != 2*cs || !bytes.Equal(big[:n], data[:n]) {
		t.Errorf("ReadAt across the failure = %d, %v", n, err)
	}

	f.fail.Store(nil)
	before := f.reads.Load()
	readAll(t, st, data, cs)
	if got := f.reads.Load() - before; got != 8 {
		t.Errorf("%d store reads after the error cleared, want 8 (chunk 2 again, 4-10)", got)
	}
}

// The short last chunk: reads at and past the end, and its cached bytes.
func TestShortLastChunk(t *testing.T) {
	for _, n := range []int{3*cs + 1000, 100, cs} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			dir := t.TempDir()
			data := pattern.Random(n, uint64(n))
			fill(t, dir, key, v1, data)
			if a := allocated(t, dir); a > roundUp64(int64(n), pageSize)+pageSize {
				t.Errorf("%d bytes allocated for %d", a, n)
			}
			c, _ := open(t, dir, 1<<30)
			f := newFake(key, v1, data)
			st := c.Wrap(f)
			defer st.Close()

			buf := make([]byte, 300)
			got, err := st.ReadAt(buf, int64(n-10))
			if got != 10 || err != io.EOF || !bytes.Equal(buf[:10], data[n-10:]) {
				t.Errorf("ReadAt across the end = %d, %v", got, err)
			}
			if got, err := st.ReadAt(buf, int64(n)); got != 0 || err != io.EOF {
				t.Errorf("ReadAt at the end = %d, %v", got, err)
			}
			if got, err := st.ReadAt(buf[:0], int64(n)); got != 0 || err != nil {
				t.Errorf("empty ReadAt at the end = %d, %v", got, err)
			}
			if _, err := st.ReadAt(buf, -1); err == nil {
				t.Error("ReadAt at -1 succeeded")
			}
			readAll(t, st, data, 4096)
			if got := f.reads.Load(); got != 0 {
				t.Errorf("%d store reads, want 0", got)
			}
		})
	}
}

func TestDirHeldByAnotherCache(t *testing.T) {
	dir := t.TempDir()
	c, _ := open(t, dir, 1<<30)
	_, err := Open(dir, 1<<30)
	if err == nil {
		t.Fatal("a second Cache opened a held directory")
	}
	mustContain(t, "error", err.Error(), dir, "in use", "process "+strconv.Itoa(os.Getpid()))
	c.Close()
	c2, err := Open(dir, 1<<30)
	if err != nil {
		t.Fatalf("after Close: %v", err)
	}
	c2.Close()
}

// A directory the cache cannot write fails Open, with the directory named:
// a daemon asked for a disk cache says so at start rather than fetching
// everything every time unnoticed.
func TestReadOnlyDirFailsOpen(t *testing.T) {
	for _, populated := range []bool{false, true} {
		t.Run(fmt.Sprint("populated=", populated), func(t *testing.T) {
			dir := t.TempDir()
			if populated {
				fill(t, dir, key, v1, pattern.Random(cs, 17))
			}
			makeReadOnly(t, dir)
			_, err := Open(dir, 1<<30)
			if err == nil {
				t.Fatal("Open of a read-only directory succeeded")
			}
			mustContain(t, "error", err.Error(), dir, "writable")
		})
	}
}

// makeReadOnly makes dir unwritable: by its mode, or, for root, whom modes
// do not stop, with the immutable attribute.
func makeReadOnly(t *testing.T, dir string) {
	t.Helper()
	if os.Geteuid() != 0 {
		if err := os.Chmod(dir, 0o500); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(dir, 0o700) })
		return
	}
	const immutable = 0x10 // FS_IMMUTABLE_FL
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	flags, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err == nil {
		err = unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(flags|immutable))
	}
	if err != nil {
		t.Skipf("cannot make %s read-only as root: %v", dir, err)
	}
	t.Cleanup(func() {
		f, err := os.Open(dir)
		if err == nil {
			unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(flags))
			f.Close()
		}
	})
}

func TestOpenArguments(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		max  int64
		opts []Option
		want string
	}{
		{0, nil, "must be positive"},
		{-1, nil, "must be positive"},
		{cs - 1, []Option{WithChunkSize(cs)}, "less than one chunk"},
		{1 << 40, []Option{WithChunkSize(2 << 30)}, "chunk size"},
	} {
		_, err := Open(dir, c.max, c.opts...)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), dir) {
			t.Errorf("Open(%d) = %v, want an error naming %s and containing %q", c.max, err, dir, c.want)
		}
	}
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := Open(file, 1<<30); err == nil {
		t.Error("Open of a regular file succeeded")
	}
	if _, err := Open(filepath.Join(file, "sub"), 1<<30); err == nil {
		t.Error("Open under a regular file succeeded")
	}
	// The directory is made, private.
	sub := filepath.Join(dir, "a", "b")
	c, err := Open(sub, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if fi, err := os.Stat(sub); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("made %s: %v, %v", sub, fi.Mode(), err)
	}
	if c.ChunkSize() != DefaultChunkSize {
		t.Errorf("chunk size %d, want %d", c.ChunkSize(), DefaultChunkSize)
	}
}

// Files written with one chunk size are not read with another.
func TestChunkSizeChange(t *testing.T) {
	dir := t.TempDir()
	data := pattern.Random(size, 18)
	fill(t, dir, key, v1, data)
	c, err := Open(dir, 1<<30, WithChunkSize(2*cs))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if s := c.Stats(); s.Objects != 0 || s.CorruptIndexes != 0 {
		t.Errorf("stats %+v", s)
	}
	f := newFake(key, v1, data)
	st := c.Wrap(f)
	defer st.Close()
	readAll(t, st, data, cs)
	if got := f.reads.Load(); got != 6 {
		t.Errorf("%d store reads, want 6", got)
	}
}

// With the default chunk sizes one disk chunk is one remote request.
func TestChunkSizeMatchesRemote(t *testing.T) {
	if DefaultChunkSize != remote.DefaultChunkSize {
		t.Errorf("DefaultChunkSize %d, remote.DefaultChunkSize %d", DefaultChunkSize, remote.DefaultChunkSize)
	}
}

// A chunk that cannot be written is still served, and counted.
func TestWriteErrorServesRead(t *testing.T) {
	dir := t.TempDir()
	c, lb := open(t, dir, 1<<30)
	data := pattern.Random(size, 19)
	f := newFake(key, v1, data)
	st := c.Wrap(f)
	defer st.Close()
	o := st.(*cachedStore).o
	ro, err := os.Open(o.dataPath) // writes through it fail with EBADF
	if err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	rw := o.data
	o.data = ro
	c.mu.Unlock()
	readAll(t, st, data[:2*cs], pageSize)
	c.mu.Lock()
	o.data = rw
	c.mu.Unlock()
	ro.Close()
	s := c.Stats()
	if s.WriteErrors != 2 || s.BytesOnDisk != 0 || s.BytesWritten != 0 {
		t.Errorf("stats %+v", s)
	}
	mustContain(t, "log", lb.String(), "disk error", o.dataPath, key)
	readAll(t, st, data, cs) // chunks 0 and 1 from memory, 2-10 fetched and written
	if s := c.Stats(); s.BytesOnDisk != 8*cs+pageSize {
		t.Errorf("once writable again: stats %+v", s)
	}
}

// Stores keep working after their Cache closes, uncached.
func TestReadAfterCacheClose(t *testing.T) {
	c, _ := open(t, t.TempDir(), 1<<30)
	data := pattern.Random(size, 20)
	f := newFake(key, v1, data)
	st := c.Wrap(f)
	readAll(t, st, data[:cs], cs)
	c.Close()
	readAll(t, st, data, 7000)
	st.Close()
	if _, err := st.ReadAt(make([]byte, 1), 0); err == nil {
		t.Error("read of a closed store succeeded")
	}
	if got := c.Wrap(f); got != f {
		t.Error("Wrap by a closed Cache did not return the store itself")
	}
}

// Many readers of two objects, random ranges, a budget smaller than both:
// every byte right, the budget kept. Run with -race.
func TestConcurrentReaders(t *testing.T) {
	dir := t.TempDir()
	c, _ := open(t, dir, 6*cs, WithMemChunks(2))
	objs := []struct {
		data []byte
		st   io.ReaderAt
	}{{data: pattern.Random(12*cs+99, 21)}, {data: pattern.Random(9*cs, 22)}}
	for i := range objs {
		st := c.Wrap(newFake("obj"+strconv.Itoa(i), v1, objs[i].data))
		defer st.Close()
		objs[i].st = st
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 1))
			buf := make([]byte, 3*cs)
			for range 200 {
				o := objs[r.IntN(len(objs))]
				off := r.Int64N(int64(len(o.data)))
				n := 1 + r.IntN(len(buf))
				if r.IntN(4) > 0 {
					n = 1 + r.IntN(pageSize)
				}
				got, err := o.st.ReadAt(buf[:n], off)
				want := o.data[off:min(off+int64(n), int64(len(o.data)))]
				if (err != nil && err != io.EOF) || !bytes.Equal(buf[:got], want) || got != len(want) {
					t.Errorf("ReadAt(%d at %d) = %d, %v", n, off, got, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if s := c.Stats(); s.BytesOnDisk > 6*cs || s.Corrupt != 0 || s.WriteErrors != 0 {
		t.Errorf("stats %+v", s)
	}
	if a := allocated(t, dir); a > 7*cs {
		t.Errorf("%d bytes allocated", a)
	}
}

func TestFormat(t *testing.T) {
	h := header{key: key, version: v1, size: size, chunkSize: cs}
	b := h.encode()
	got, err := decodeHeader(b)
	if err != nil || got != h {
		t.Errorf("decodeHeader(encode(%+v)) = %+v, %v", h, got, err)
	}
	for i := range b {
		bad := bytes.Clone(b)
		bad[i] ^= 1
		if _, err := decodeHeader(bad); err == nil {
			t.Errorf("header with byte %d flipped decoded", i)
		}
	}
	r := record{crc: 0xdeadbeef, length: cs, seq: 42}
	rb := r.encode(7)
	if got, ok := decodeRecord(rb[:], 7); !ok || got != r {
		t.Errorf("decodeRecord = %+v, %v", got, ok)
	}
	if _, ok := decodeRecord(rb[:], 8); ok {
		t.Error("a record decoded as another chunk's")
	}
	var zero [recordSize]byte
	if r, ok := decodeRecord(zero[:], 0); ok && r.length != 0 {
		t.Error("an all-zero record is present")
	}
	if stemOf("ab", "c") == stemOf("a", "bc") || !isStem(stemOf("a", "b")) {
		t.Error("stems collide or are not recognised")
	}
	chunk := pattern.Random(3*blockSize+100, 41) // a short last block
	sums := blockSums(chunk)
	if len(sums) != 4*4 || checkBlocks(chunk, 0, sums) != nil || checkBlocks(chunk[2*blockSize:], 2, sums) != nil {
		t.Errorf("block sums of %d bytes: %d bytes, or they do not check", len(chunk), len(sums))
	}
	chunk[3*blockSize+99] ^= 1
	if err := checkBlocks(chunk[blockSize:], 1, sums); err == nil || !strings.Contains(err.Error(), "block 3") {
		t.Errorf("a flipped byte in the short last block: %v; want block 3 named", err)
	}
}

// An index an earlier filemap wrote (format 1) is no corruption: its files
// are deleted, quietly, and its chunks fetched again.
func TestOldFormatIsDropped(t *testing.T) {
	dir := t.TempDir()
	data := pattern.Random(size, 42)
	fill(t, dir, key, v1, data)
	modify(t, only(t, dir, idxSuffix), 8, 4, func(b []byte) { le.PutUint32(b, 1) })
	c, lb := open(t, dir, 1<<30)
	defer c.Close()
	f := newFake(key, v1, data)
	st := c.Wrap(f)
	defer st.Close()
	readAll(t, st, data, cs)
	if s := c.Stats(); s.CorruptIndexes != 0 || s.Hits != 0 || f.reads.Load() != 11 {
		t.Errorf("stats %+v, %d store reads; want no corruption counted and every chunk fetched", s, f.reads.Load())
	}
	mustContain(t, "log", lb.String(), "older format")
}

// A small read with no neighbour read just before it (a scattered fault)
// of a chunk on disk reads and checks only the 64 KiB blocks it needs, not
// the chunk; a damaged block is caught by the read that needs it, and that
// chunk alone is fetched again; reads that follow one another still load
// whole chunks, which the memory tier keeps for them.
func TestScatteredReadsReadBlocks(t *testing.T) {
	const chunk = 4 * blockSize
	dir := t.TempDir()
	data := pattern.Random(6*chunk+1000, 40)
	c, _ := open(t, dir, 1<<30, WithChunkSize(chunk))
	st := c.Wrap(newFake(key, v1, data))
	readAll(t, st, data, chunk)
	st.Close()
	c.Close()
	modify(t, only(t, dir, dataSuffix), 2*chunk+3*blockSize+10, 1, func(b []byte) { b[0] ^= 0x10 })

	c, _ = open(t, dir, 1<<30, WithChunkSize(chunk))
	defer c.Close()
	f := newFake(key, v1, data)
	st = c.Wrap(f)
	defer st.Close()
	read := func(off int64, n int) {
		t.Helper()
		buf := make([]byte, n)
		if got, err := st.ReadAt(buf, off); got != n || err != nil || !bytes.Equal(buf, data[off:off+int64(n)]) {
			t.Fatalf("ReadAt(%d bytes at %d) = %d, %v, or wrong bytes", n, off, got, err)
		}
	}
	read(4*chunk+blockSize+100, 4096)
	read(chunk+5000, 4096)
	read(2*chunk+100, 8192) // the damaged chunk's intact first block
	if s := c.Stats(); s.Hits != 3 || s.BytesRead != 3*blockSize || s.Misses != 0 || s.Corrupt != 0 || f.reads.Load() != 0 {
		t.Fatalf("three scattered reads: stats %+v, %d store reads; want three blocks read from disk", s, f.reads.Load())
	}
	read(2*chunk+3*blockSize+5, 100)
	if s := c.Stats(); s.Corrupt != 1 || s.Misses != 1 || f.reads.Load() != 1 {
		t.Fatalf("read of the damaged block: stats %+v, %d store reads; want it caught and its chunk fetched", s, f.reads.Load())
	}
	before := c.Stats()
	read(5*chunk, 4096)      // scattered: a block
	read(5*chunk+4096, 4096) // its neighbour: the whole chunk, kept in memory
	read(5*chunk+8192, 4096)
	s := c.Stats()
	if s.Hits-before.Hits != 2 || s.BytesRead-before.BytesRead != blockSize+chunk || s.MemHits-before.MemHits != 1 {
		t.Fatalf("a sequential run: stats %+v, before %+v; want a block, then the chunk, then memory", s, before)
	}
}
