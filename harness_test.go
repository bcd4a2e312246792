package filemap

// The test harness: the daemon runs in the test process (or in a child of
// it, when a test must kill it), and every client is a child process — the
// test binary run again as a "driver" that takes commands on stdin and
// answers one line each on stdout. Faults therefore happen in one process
// and are served by another, as in production.

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/child"
	"github.com/filemap/filemap/internal/syncbuf"
	"github.com/filemap/filemap/proto"
	"github.com/filemap/filemap/server"
	"github.com/filemap/filemap/store"
)

const (
	envRole   = "FILEMAP_TEST_ROLE"
	envSocket = "FILEMAP_TEST_SOCKET"
)

func TestMain(m *testing.M) {
	switch os.Getenv(envRole) {
	case "driver":
		os.Exit(runDriver(os.Stdin, os.Stdout))
	case "serve":
		os.Exit(runServe(os.Getenv(envSocket)))
	}
	os.Exit(m.Run())
}

// runServe is a daemon in its own process, for tests that kill it.
// It keeps its regions in a keeper unless FILEMAP_TEST_NOKEEP is set, and
// with FILEMAP_TEST_TAKEOVER set it takes over from the daemon running on
// socket.
func runServe(socket string) int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var l *proto.Listener
	var err error
	if os.Getenv("FILEMAP_TEST_TAKEOVER") != "" {
		l, err = server.Takeover(socket, 30*time.Second)
	} else {
		l, err = server.Listen(socket, 0o600)
	}
	if err != nil {
		return fail(err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	s, err := server.New(server.Config{NoHuge: os.Getenv("FILEMAP_TEST_NOHUGE") != "", Log: log})
	if err != nil {
		return fail(err)
	}
	if os.Getenv("FILEMAP_TEST_NOKEEP") == "" {
		kept, err := server.Kept(socket) // in a takeover, waits for the old daemon to close
		if err != nil {
			return fail(err)
		}
		s.Keep(socket, kept)
	}
	fmt.Println("ready")
	s.Serve(l)
	s.Close()
	return 0
}

type syncBuffer = syncbuf.Buffer

// spyStore wraps a store: it records every read and injects failures and
// delays. Only failures are fake; the bytes come from the real file.
type spyStore struct {
	store.Store
	h *spy
}

type span struct{ off, n int64 }

type spy struct {
	mu    sync.Mutex
	reads []span
	// fail, if set, returns the first offset in [off, off+n) that fails,
	// or -1.
	fail  func(off, n int64) int64
	delay time.Duration
	began chan span // if set, gets every read as it starts
	// hold, if set, blocks every read covering byte hold.at until
	// hold.release is closed.
	hold *struct {
		at      int64
		release chan struct{}
	}
}

func (s *spyStore) ReadAt(p []byte, off int64) (int, error) {
	return s.ReadAtContext(context.Background(), p, off)
}

// ReadAtContext passes ctx, the fault's deadline, on to the store.
func (s *spyStore) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	if bad := s.enter(off, int64(len(p))); bad >= 0 {
		n, _ := store.ReadAtContext(ctx, s.Store, p[:bad-off], off)
		return n, fmt.Errorf("injected I/O error at offset %d", bad)
	}
	return store.ReadAtContext(ctx, s.Store, p, off)
}

// View lends the store's own bytes if it can (store.Viewer), recorded,
// held and delayed as ReadAt's reads are. A read that is to fail is
// declined, so that ReadAt fails it, after the bytes before the failure.
func (s *spyStore) View(ctx context.Context, off int64, n int) ([]byte, func(), bool, error) {
	v, ok := s.Store.(store.Viewer)
	s.h.mu.Lock()
	fail := s.h.fail
	s.h.mu.Unlock()
	if !ok || fail != nil && fail(off, int64(n)) >= 0 {
		return nil, nil, false, nil
	}
	s.enter(off, int64(n))
	return v.View(ctx, off, n)
}

// Prefetch passes a readahead window on to a store that plans its requests
// (store.Prefetcher); the reads that follow are the spy's as ever.
func (s *spyStore) Prefetch(ctx context.Context, ranges [][2]int64) {
	if p, ok := s.Store.(store.Prefetcher); ok {
		p.Prefetch(ctx, ranges)
	}
}

// Idle passes on to a store that gives back memory when its object is
// idle (store.Idler).
func (s *spyStore) Idle() {
	if i, ok := s.Store.(store.Idler); ok {
		i.Idle()
	}
}

// TakePrimed and Prime pass on to a store whose Open brought bytes
// (store.Primed).
func (s *spyStore) TakePrimed() (int64, []byte) {
	if p, ok := s.Store.(store.Primed); ok {
		return p.TakePrimed()
	}
	return 0, nil
}

func (s *spyStore) Prime(off int64, b []byte) {
	if p, ok := s.Store.(store.Primed); ok {
		p.Prime(off, b)
	}
}

// Promote passes on to a store whose reads can be moved ahead
// (store.Promoter).
func (s *spyStore) Promote(off int64, n int) {
	if p, ok := s.Store.(store.Promoter); ok {
		p.Promote(off, n)
	}
}

// enter records a read of [off, off+n), tells began of it, waits for hold
// and sleeps for delay; it returns the offset where the read is to fail,
// or -1.
func (s *spyStore) enter(off, n int64) int64 {
	s.h.mu.Lock()
	s.h.reads = append(s.h.reads, span{off, n})
	fail, delay, began, hold := s.h.fail, s.h.delay, s.h.began, s.h.hold
	s.h.mu.Unlock()
	if began != nil {
		select {
		case began <- span{off, n}:
		default:
		}
	}
	if hold != nil && hold.at >= off && hold.at < off+n {
		<-hold.release
	}
	time.Sleep(delay)
	if fail != nil {
		return fail(off, n)
	}
	return -1
}

func (h *spy) set(f func(*spy)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f(h)
}

// readsOf counts the store reads that covered byte off.
func (h *spy) readsOf(off int64) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, r := range h.reads {
		if r.off <= off && off < r.off+r.n {
			n++
		}
	}
	return n
}

func (h *spy) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.reads)
}

// failPages makes reads covering any of the given pages fail at that page.
func failPages(pages ...int64) func(off, n int64) int64 {
	return func(off, n int64) int64 {
		for _, p := range pages {
			if p*ps >= off && p*ps < off+n {
				return p * ps
			}
		}
		return -1
	}
}

type daemon struct {
	s    *server.Server
	sock string
	log  *syncBuffer
	spy  *spy
}

func startDaemon(t *testing.T, cfg server.Config) *daemon {
	t.Helper()
	return startDaemonOn(t, cfg, filepath.Join(t.TempDir(), "filemap.sock"), 0o600)
}

// startDaemonOn is startDaemon listening on sock with the given mode.
func startDaemonOn(t *testing.T, cfg server.Config, sock string, mode os.FileMode) *daemon {
	t.Helper()
	d := &daemon{sock: sock, log: new(syncBuffer), spy: new(spy)}
	cfg.Log = slog.New(slog.NewTextHandler(d.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.WrapStore = func(s store.Store) store.Store { return &spyStore{Store: s, h: d.spy} }
	if cfg.RetryBackoff == 0 {
		cfg.RetryBackoff = time.Millisecond
	}
	s, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := server.Listen(d.sock, mode)
	if err != nil {
		t.Fatal(err)
	}
	d.s = s
	go s.Serve(l)
	t.Cleanup(func() {
		s.Close()
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.log.String())
		}
	})
	return d
}

// driver is a client process, driven by commands (internal/child).
type driver struct {
	*child.T
	t *testing.T
}

func startDriver(t *testing.T, socket string) *driver {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envRole+"=driver")
	if socket != "" {
		cmd.Env = append(cmd.Env, "FILEMAP_SOCKET="+socket)
	}
	return runDriverCmd(t, cmd, "driver")
}

// runDriverCmd starts cmd, a driver process, and ties it to the test: killed
// at its end, its stderr logged under name if the test failed.
func runDriverCmd(t *testing.T, cmd *exec.Cmd, name string) *driver {
	t.Helper()
	return &driver{child.StartT(t, cmd, name), t}
}

// open maps path in the driver and returns the mapping's base address.
func (d *driver) open(path string, opts string) uintptr {
	d.t.Helper()
	var size int64
	var base uintptr
	if _, err := fmt.Sscan(d.OK("open %s %s", path, opts), &size, &base); err != nil {
		d.t.Fatal(err)
	}
	return base
}

// openFds is this process's open descriptors and what each is.
func openFds(t *testing.T) map[string]string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	fds := make(map[string]string, len(ents))
	for _, e := range ents {
		if link, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil {
			fds[e.Name()] = link
		}
	}
	return fds
}

// newFds counts the descriptors open now that were not before: leaked
// ones. Some of before may have closed meanwhile (an earlier test's keeper
// lets go of its pidfds in its own time): that is no leak.
func newFds(before, now map[string]string) int {
	n := 0
	for fd, link := range now {
		if before[fd] != link {
			n++
		}
	}
	return n
}

func goroutines() int {
	runtime.GC()
	return runtime.NumGoroutine()
}
