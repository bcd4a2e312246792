package diskcache

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/filemap/filemap/store"
)

// cs is the chunk size of the tests: small, so that objects of many chunks
// are quick to make, and a page multiple like any chunk size.
const cs = 64 << 10

// fakeStore is an in-memory store.Store that counts its reads.
type fakeStore struct {
	key, version string
	data         []byte

	reads atomic.Int64
	// gate, if set, is received from by every ReadAt before it reads.
	gate chan struct{}
	// fail, if set, may fail a read at off.
	fail   atomic.Pointer[func(off int64) error]
	closed atomic.Bool
}

func newFake(key, version string, data []byte) *fakeStore {
	return &fakeStore{key: key, version: version, data: data}
}

func (f *fakeStore) ReadAt(p []byte, off int64) (int, error) {
	f.reads.Add(1)
	if f.gate != nil {
		<-f.gate
	}
	if f.closed.Load() {
		return 0, fmt.Errorf("fake %s: read of a closed store", f.key)
	}
	if fail := f.fail.Load(); fail != nil {
		if err := (*fail)(off); err != nil {
			return 0, err
		}
	}
	if off >= int64(len(f.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *fakeStore) Size() int64     { return int64(len(f.data)) }
func (f *fakeStore) Key() string     { return f.key }
func (f *fakeStore) Version() string { return f.version }
func (f *fakeStore) Close() error    { f.closed.Store(true); return nil }

var _ store.Store = (*fakeStore)(nil)

// logBuf is a log destination that tests read.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// open opens a Cache of chunk size cs on dir that logs to the returned
// buffer, and closes it when the test ends.
func open(t *testing.T, dir string, maxBytes int64, opts ...Option) (*Cache, *logBuf) {
	t.Helper()
	lb := &logBuf{}
	log := slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c, err := Open(dir, maxBytes, append([]Option{WithChunkSize(cs), WithLogger(log)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, lb
}

// readAll reads st in reads of step bytes and checks every byte against
// want.
func readAll(t *testing.T, st store.Store, want []byte, step int) {
	t.Helper()
	buf := make([]byte, step)
	for off := 0; off < len(want); off += step {
		n, err := st.ReadAt(buf, int64(off))
		end := min(off+step, len(want))
		if err != nil && !(err == io.EOF && end == len(want)) {
			t.Fatalf("ReadAt(%d bytes at %d): %v", step, off, err)
		}
		if n != end-off {
			t.Fatalf("ReadAt(%d bytes at %d) = %d bytes, want %d", step, off, n, end-off)
		}
		if !bytes.Equal(buf[:n], want[off:end]) {
			t.Fatalf("ReadAt(%d bytes at %d): wrong bytes", step, off)
		}
	}
}

// fill reads all of a fresh store of data through a new Cache on dir, and
// closes both, leaving the chunks on disk.
func fill(t *testing.T, dir string, key, version string, data []byte) {
	t.Helper()
	c, _ := open(t, dir, 1<<30)
	f := newFake(key, version, data)
	st := c.Wrap(f)
	readAll(t, st, data, cs)
	st.Close()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

// filesOf returns the paths of the files of suffix in dir.
func filesOf(t *testing.T, dir, suffix string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*"+suffix))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// only returns the one file of suffix in dir.
func only(t *testing.T, dir, suffix string) string {
	t.Helper()
	m := filesOf(t, dir, suffix)
	if len(m) != 1 {
		t.Fatalf("%d %s files in %s, want 1: %v", len(m), suffix, dir, m)
	}
	return m[0]
}

// allocated is the disk space the data files take: what the budget bounds.
func allocated(t *testing.T, dir string) int64 {
	t.Helper()
	var sum int64
	for _, p := range filesOf(t, dir, dataSuffix) {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		sum += st.Blocks * 512
	}
	return sum
}

// waitUntil yields until cond holds: the tests wait for states, not times,
// and a state never reached ends in the test binary's timeout.
func waitUntil(cond func() bool) {
	for !cond() {
		runtime.Gosched()
	}
}

// modify applies fn to the bytes of file at off.
func modify(t *testing.T, path string, off int64, n int, fn func([]byte)) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	fn(b)
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func mustContain(t *testing.T, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%s does not mention %q:\n%s", what, sub, s)
		}
	}
}
