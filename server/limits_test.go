package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/testutil"
	"github.com/filemap/filemap/proto"
	"github.com/filemap/filemap/store"
	"golang.org/x/sys/unix"
)

// newServerWith is newTestServer with a configuration.
func newServerWith(t *testing.T, cfg Config) *testServer {
	t.Helper()
	log := new(syncBuffer)
	cfg.Log = slog.New(slog.NewTextHandler(log, nil))
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := Listen(path, 0o600)
	if err != nil {
		t.Fatalf("server.Listen: %v", err)
	}
	go s.Serve(l)
	t.Cleanup(func() {
		s.Close()
		l.Close()
		if t.Failed() {
			t.Logf("server log:\n%s", log.String())
		}
	})
	return &testServer{Server: s, path: path, log: log}
}

// usage is what the daemon accounts to this process.
func usage(t *testing.T, s *Server) ClientUsage {
	t.Helper()
	for _, u := range s.Clients() {
		if u.PID == int32(os.Getpid()) {
			return u
		}
	}
	return ClientUsage{}
}

// A descriptor that was not opened for reading is refused: the daemon would
// read the file with its own rights (through /proc/self/fd) where the
// client has none. The refusal is an error reply, not a broken connection.
func TestOpenRefusesDescriptorNotOpenForReading(t *testing.T) {
	ts := newTestServer(t)
	c := ts.dial(t)
	obj := tempFile(t, []byte(strings.Repeat("secret ", 1000)))
	opath, err := unix.Open(obj.Name(), unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	op := os.NewFile(uintptr(opath), "opath")
	defer op.Close()
	wo, err := os.OpenFile(obj.Name(), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer wo.Close()
	before := openFds(t)
	c.callError(t, proto.TOpen, proto.Open{URI: obj.Name()}, []*os.File{op}, "O_PATH")
	c.callError(t, proto.TOpen, proto.Open{URI: obj.Name()}, []*os.File{wo}, "not open for reading")
	waitOpenFds(t, before)
	if st := c.stat(t); st.ProtocolErrors != 0 || st.Objects != 0 {
		t.Errorf("after refused opens: %d protocol errors, %d objects; want 0, 0", st.ProtocolErrors, st.Objects)
	}
	// A descriptor open for reading and writing is fine.
	rw, err := os.OpenFile(obj.Name(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Close()
	fds, err := c.call(t, proto.TOpen, proto.Open{URI: obj.Name()}, []*os.File{rw}, &proto.OpenReply{})
	closeAll(fds)
	if err != nil {
		t.Fatalf("open through an O_RDWR descriptor: %v", err)
	}
}

// The per-client limits on objects and their bytes refuse with an error
// that names the limit, its flag and the client, and count only what is
// held: a closed handle frees its share.
func TestLimitObjectsAndBytes(t *testing.T) {
	ts := newServerWith(t, Config{MaxObjectsPerClient: 2, MaxMappedBytesPerClient: 5 << 12})
	c := ts.dial(t)
	obj := tempFile(t, make([]byte, 2<<12))
	open := func() (uint64, error) {
		f, err := os.Open(obj.Name())
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var rep proto.OpenReply
		fds, err := c.call(t, proto.TOpen, proto.Open{URI: obj.Name()}, []*os.File{f}, &rep)
		closeAll(fds)
		return rep.Handle, err
	}
	h1, err := open()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := open(); err != nil {
		t.Fatal(err)
	}
	who := fmt.Sprintf("client pid %d (uid %d)", os.Getpid(), os.Getuid())
	_, err = open()
	if err == nil || !strings.Contains(err.Error(), who+" has 2 objects open") || !strings.Contains(err.Error(), "--max-objects-per-client") {
		t.Fatalf("a third open = %v; want the objects limit, naming %s", err, who)
	}
	if u := usage(t, ts.Server); u.Objects != 2 || u.MappedBytes != 4<<12 || u.Connections != 1 {
		t.Errorf("usage %+v; want 2 objects of 8 KiB each, 1 connection", u)
	}
	if _, err := c.call(t, proto.TClose, proto.Close{Handle: h1}, nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := open(); err != nil {
		t.Fatalf("an open after a close: %v", err)
	}
	// Now the bytes: 2 objects of 8 KiB are 16 KiB; a third would be 24 KiB > 20 KiB.
	ts2 := newServerWith(t, Config{MaxMappedBytesPerClient: 5 << 12})
	c = ts2.dial(t)
	for i := range 3 {
		_, err := open()
		if i < 2 && err != nil {
			t.Fatal(err)
		}
		if i == 2 && (err == nil || !strings.Contains(err.Error(), "--max-mapped-per-client") || !errors.Is(errorOf(err), ErrLimit)) {
			t.Fatalf("an open over the bytes limit = %v", err)
		}
	}
	// The account goes with the client's last connection.
	c.Close()
	testutil.WaitForState(t, func() string { return fmt.Sprintf("usage %+v", usage(t, ts2.Server)) }, func() bool { return len(ts2.Clients()) == 0 })
}

// errorOf turns an error reply back into the error it reports, for
// errors.Is: the wire carries only its text.
func errorOf(err error) error {
	var pe *proto.Error
	if errors.As(err, &pe) && strings.Contains(pe.Message, ErrLimit.Error()) {
		return ErrLimit
	}
	return err
}

// An object larger than any process can map is refused at open, whatever
// the limits: its page-state table alone would take the daemon's memory.
// A memfd stands for the sparse tmpfs file a client could make.
func TestOpenRefusesAbsurdSize(t *testing.T) {
	ts := newServerWith(t, Config{MaxMappedBytesPerClient: -1})
	c := ts.dial(t)
	fd, err := unix.MemfdCreate("huge", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "huge")
	defer f.Close()
	if err := f.Truncate(1 << 60); err != nil {
		t.Fatal(err)
	}
	c.callError(t, proto.TOpen, proto.Open{URI: "/huge"}, []*os.File{f}, "larger than any process can map")
	if st := c.stat(t); st.Objects != 0 {
		t.Errorf("%d objects after the refused open", st.Objects)
	}
}

// Regions: a region outside any address space is refused, and so is one
// region too many, with the limit named; a refused attach holds nothing.
func TestLimitRegions(t *testing.T) {
	ts := newServerWith(t, Config{MaxRegionsPerClient: 1})
	c := ts.dial(t)
	h := openHandle(t, c)
	u := uffdFile(t)
	c.callError(t, proto.TAttach, proto.Attach{Handle: h, Addr: 1<<57 - 4096, Len: 8192}, []*os.File{u}, "not in any process's address space")
	c.callError(t, proto.TAttach, proto.Attach{Handle: h, Addr: 4096, Len: 1 << 63}, []*os.File{u}, "not in any process's address space")
	var ar proto.AttachReply
	if _, err := c.call(t, proto.TAttach, proto.Attach{Handle: h, Addr: 1 << 30, Len: 4096}, []*os.File{u}, &ar); err != nil {
		t.Fatalf("attach: %v", err)
	}
	c.callError(t, proto.TAttach, proto.Attach{Handle: h, Addr: 2 << 30, Len: 4096}, []*os.File{u}, "--max-regions-per-client")
	if u := usage(t, ts.Server); u.Regions != 1 {
		t.Errorf("%d regions accounted, want 1", u.Regions)
	}
	if _, err := c.call(t, proto.TDetach, proto.Detach{Region: ar.Region}, nil, nil); err != nil {
		t.Fatal(err)
	}
	if u := usage(t, ts.Server); u.Regions != 0 {
		t.Errorf("%d regions accounted after the detach, want 0", u.Regions)
	}
	if _, err := c.call(t, proto.TAttach, proto.Attach{Handle: h, Addr: 2 << 30, Len: 4096}, []*os.File{u}, &ar); err != nil {
		t.Fatalf("attach after a detach: %v", err)
	}
}

func TestLimitDefaults(t *testing.T) {
	l := newLimits(Config{MaxObjectsPerClient: -1, MaxFaultsInFlightPerClient: 7})
	want := limits{objects: 0, regions: DefaultMaxRegionsPerClient, mapped: DefaultMaxMappedBytesPerClient, faults: 7}
	if l != want {
		t.Errorf("newLimits = %+v, want %+v", l, want)
	}
}

// fakeStore serves zeros; a read covering a byte in block waits until
// release is closed.
type fakeStore struct {
	size    int64
	block   int64
	release chan struct{}
	mu      sync.Mutex
	reads   int
}

func (f *fakeStore) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	f.reads++
	f.mu.Unlock()
	if f.block >= off && f.block < off+int64(len(p)) {
		<-f.release
		for i := range p {
			p[i] = 0xEE // late bytes, which must reach nobody
		}
		return len(p), nil
	}
	n := copy(p, make([]byte, max(0, min(int64(len(p)), f.size-off))))
	if int64(n) < int64(len(p)) {
		return n, io.EOF
	}
	return n, nil
}

func (f *fakeStore) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reads
}

func (f *fakeStore) Close() error    { return nil }
func (f *fakeStore) Size() int64     { return f.size }
func (f *fakeStore) Key() string     { return "fake" }
func (f *fakeStore) Version() string { return "1" }

type raFakeStore struct{ *fakeStore }

func (raFakeStore) ReadaheadBytes() int64 { return 42 }

// A read that outlives its fault's deadline fails with ErrStoreTimeout,
// leaves the caller's buffer alone even when it returns later, and blocks
// only reads that would wait for the same bytes: a window over it fails at
// once, a page next to it is read.
func TestStoreTimeout(t *testing.T) {
	g := newHangGuard(50*time.Millisecond, true, slog.New(slog.NewTextHandler(io.Discard, nil)))
	fs := &fakeStore{size: 8 << 20, block: 10 * ps, release: make(chan struct{})}
	st := g.wrap(fs, false)
	if _, ok := st.(store.Readaheader); ok {
		t.Error("the wrapper of a store that is no Readaheader is one")
	}
	if ra, ok := g.wrap(raFakeStore{fs}, false).(store.Readaheader); !ok || ra.ReadaheadBytes() != 42 {
		t.Error("the wrapper of a Readaheader lost its ReadaheadBytes")
	}
	win := make([]byte, 32*ps)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	n, err := st.(store.ContextReader).ReadAtContext(ctx, win, 0)
	if !errors.Is(err, ErrStoreTimeout) || !errors.Is(err, context.DeadlineExceeded) || n != 0 {
		t.Fatalf("a window over the hung page: %d, %v; want 0, ErrStoreTimeout at the fault's deadline", n, err)
	}
	if g.hung.Load() != 1 {
		t.Fatalf("%d reads hung, want 1", g.hung.Load())
	}
	// A page next to it, alone: read. A window overlapping it: not tried.
	reads := fs.count()
	if _, err := st.ReadAt(make([]byte, ps), 11*ps); err != nil {
		t.Fatalf("the page next to the hung one: %v", err)
	}
	if _, err := st.ReadAt(make([]byte, 4*ps), 9*ps); !errors.Is(err, ErrStoreTimeout) || fs.count() != reads+1 {
		t.Fatalf("a window overlapping the hung read: %v after %d store reads; want ErrStoreTimeout, not tried", err, fs.count()-reads)
	}
	// The page itself, alone: tried (the hung read was a window), and hangs.
	if _, err := st.ReadAt(make([]byte, ps), 10*ps); !errors.Is(err, ErrStoreTimeout) || g.hung.Load() != 2 {
		t.Fatalf("the hung page alone: %v, %d hung", err, g.hung.Load())
	}
	// Again: not tried, it would wait for the same bytes.
	reads = fs.count()
	if _, err := st.ReadAt(make([]byte, ps), 10*ps); !errors.Is(err, ErrStoreTimeout) || fs.count() != reads {
		t.Fatalf("the hung page again: %v after %d store reads", err, fs.count()-reads)
	}
	close(fs.release)
	deadline := time.Now().Add(testWait)
	for g.hung.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d reads still hung after their store answered", g.hung.Load())
		}
		time.Sleep(time.Millisecond)
	}
	for i, b := range win {
		if b != 0 {
			t.Fatalf("byte %d of the abandoned read's caller buffer is %#x: the late read wrote into it", i, b)
		}
	}
	// A long read goes in segments, and its bytes arrive.
	big := make([]byte, 3*segmentBytes+ps)
	for i := range big {
		big[i] = 1
	}
	// With a deadline of its own: the guard's 50 ms, which ReadAt would
	// give it, is less than a loaded machine may take to copy 3 MiB.
	long, cancelLong := context.WithTimeout(context.Background(), testWait)
	defer cancelLong()
	if n, err := st.(store.ContextReader).ReadAtContext(long, big, 12*ps); n != len(big) || err != nil {
		t.Fatalf("a read of %d bytes: %d, %v", len(big), n, err)
	}
	for i, b := range big {
		if b != 0 {
			t.Fatalf("byte %d of a segmented read is %#x, want 0", i, b)
		}
	}
	// At the end of the store: the short count and EOF come through.
	if n, err := st.ReadAt(make([]byte, 2*ps), fs.size-ps); n != ps || err != io.EOF {
		t.Fatalf("a read across the end: %d, %v; want %d, EOF", n, err, ps)
	}
	if g := newHangGuard(-1, true, nil); g.wrap(fs, true) != store.Store(fs) {
		t.Error("no fault timeout still wraps the store")
	}
	// By default, only stores that may hang.
	if g := newHangGuard(DefaultFaultTimeout, false, nil); g.wrap(fs, false) != store.Store(fs) || g.wrap(fs, true) == store.Store(fs) {
		t.Error("the default wraps a store that does not hang, or not one that may")
	}
	if f := tempFile(t, nil); mayHang(f) {
		t.Errorf("%s is on a network or FUSE file system?", f.Name())
	}
}

// Caches no client has open are kept for a later open of the same bytes,
// at most MaxIdleCaches of them, the least recently released dropped
// first; a negative bound keeps none.
func TestIdleCachesBounded(t *testing.T) {
	ts := newServerWith(t, Config{MaxIdleCaches: 2})
	c := ts.dial(t)
	var files []*os.File
	for i := range 4 {
		files = append(files, tempFile(t, []byte(strings.Repeat(fmt.Sprint(i), 3<<12))))
	}
	// open opens file i and closes the handle at once, and returns the
	// identity of the cache it was given.
	open := func(c *testClient, i int) uint64 {
		f, err := os.Open(files[i].Name())
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var rep proto.OpenReply
		fds, err := c.call(t, proto.TOpen, proto.Open{URI: f.Name()}, []*os.File{f}, &rep)
		if err != nil {
			t.Fatalf("open %s: %v", f.Name(), err)
		}
		defer closeAll(fds)
		var st unix.Stat_t
		if err := unix.Fstat(int(fds[0].Fd()), &st); err != nil {
			t.Fatal(err)
		}
		if _, err := c.call(t, proto.TClose, proto.Close{Handle: rep.Handle}, nil, nil); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}
	var ino [4]uint64
	for i := range 4 {
		ino[i] = open(c, i)
		if st := c.stat(t); st.Objects != min(i+1, 2) || st.IdleObjects != st.Objects {
			t.Errorf("after releasing %d caches, %d are kept, %d idle; want %d, all idle", i+1, st.Objects, st.IdleObjects, min(i+1, 2))
		}
	}
	if got := open(c, 3); got != ino[3] {
		t.Errorf("the most recently released cache was dropped: inode %d, then %d", ino[3], got)
	}
	if got := open(c, 0); got == ino[0] {
		t.Errorf("the least recently released cache was kept past the bound (inode %d)", got)
	}

	none := newServerWith(t, Config{MaxIdleCaches: -1})
	c = none.dial(t)
	open(c, 0)
	if n := c.stat(t).Objects; n != 0 {
		t.Errorf("with MaxIdleCaches -1, %d caches kept after their release", n)
	}
}

// uffdFile is a new userfaultfd, closed when the test ends.
func uffdFile(t *testing.T) *os.File {
	fd, _, err := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK, 0, 0)
	if err != 0 {
		t.Skipf("userfaultfd: %v (the tests need it; see the README)", err)
	}
	f := os.NewFile(fd, "uffd")
	t.Cleanup(func() { f.Close() })
	return f
}

// A cache whose handle is closed while a region still maps it is not idle:
// the client goes on faulting through its mapping. It goes idle, here to
// be dropped at once, when the region is detached.
func TestAttachedCacheNotIdle(t *testing.T) {
	ts := newServerWith(t, Config{MaxIdleCaches: -1})
	c := ts.dial(t)
	h := openHandle(t, c)
	var ar proto.AttachReply
	if _, err := c.call(t, proto.TAttach, proto.Attach{Handle: h, Addr: 1 << 30, Len: 4096}, []*os.File{uffdFile(t)}, &ar); err != nil {
		t.Fatalf("attach: %v", err)
	}
	if _, err := c.call(t, proto.TClose, proto.Close{Handle: h}, nil, nil); err != nil {
		t.Fatal(err)
	}
	if st := c.stat(t); st.Objects != 1 || st.IdleObjects != 0 {
		t.Errorf("handle closed, region attached: %d objects, %d idle; want 1, 0", st.Objects, st.IdleObjects)
	}
	if _, err := c.call(t, proto.TDetach, proto.Detach{Region: ar.Region}, nil, nil); err != nil {
		t.Fatal(err)
	}
	if st := c.stat(t); st.Objects != 0 {
		t.Errorf("after the detach, with no idle cache kept: %d objects", st.Objects)
	}
}

// slowCloseStore is a store whose Close waits until release is closed, as
// a remote store's waits for its requests to end: it says on closing when
// the wait begins.
type slowCloseStore struct {
	store.Store
	closing chan<- struct{}
	release <-chan struct{}
}

func (s slowCloseStore) Close() error {
	s.closing <- struct{}{}
	<-s.release
	return s.Store.Close()
}

// A cache that goes past the idle bound is closed, and closing its store
// may take a while (a remote store waits for its requests to end, a cache
// for a collapse in progress). Meanwhile the daemon serves everyone else:
// another client's stat and Open are answered before that close returns.
func TestClosingStoreStallsNoOne(t *testing.T) {
	closing := make(chan struct{})
	release := make(chan struct{})
	var wrapped atomic.Int32
	ts := newServerWith(t, Config{MaxIdleCaches: -1, WrapStore: func(st store.Store) store.Store {
		if wrapped.Add(1) > 1 {
			return st // only the first object's store is slow to close
		}
		return slowCloseStore{Store: st, closing: closing, release: release}
	}})
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })

	c1 := ts.dial(t)
	h := openHandle(t, c1)
	closed := make(chan error, 1)
	go func() {
		_, err := c1.Call(proto.TClose, 100, proto.Close{Handle: h}, nil, nil)
		closed <- err
	}()
	select {
	case <-closing:
	case <-time.After(testWait):
		t.Fatalf("the first object's store was not closed within %v of its last handle's close, with no idle cache kept", testWait)
	}

	c2 := ts.dial(t)
	if n := c2.stat(t).Objects; n != 0 {
		t.Errorf("stat during the close: %d objects; want 0, the closing one dropped already", n)
	}
	openHandle(t, c2) // another object

	releaseOnce.Do(func() { close(release) })
	if err := <-closed; err != nil {
		t.Errorf("close of the first object's handle: %v", err)
	}
}
