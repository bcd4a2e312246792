package firecracker

// The test harness. The handler runs in the test process (or, for tests
// that kill it, in a child); every VMM is a child process — the test binary
// run again as a "client" that does what Firecracker does on a restore:
// anonymous private guest memory, a userfaultfd with UFFD_FEATURE_EVENT_REMOVE
// registered for MISSING faults over each region, the JSON of the regions
// and the uffd in one sendmsg, the socket left open. It then takes commands
// on stdin (touch, check, balloon) and answers one line each, so its page
// faults happen in one process and are served from another.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/filemap/filemap/internal/child"
	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/internal/sigbus"
	"github.com/filemap/filemap/internal/syncbuf"
	"github.com/filemap/filemap/server"
	"github.com/filemap/filemap/store"
	"github.com/filemap/filemap/store/remote"
	"github.com/filemap/filemap/uffd"
	"golang.org/x/sys/unix"
)

const envRole = "FILEMAP_FC_ROLE"

func TestMain(m *testing.M) {
	switch os.Getenv(envRole) {
	case "client":
		os.Exit(runClient())
	case "handler":
		os.Exit(runHandler())
	}
	os.Exit(m.Run())
}

// openFile is Config.Open for a local memory file.
func openFile(path string) func(context.Context) (store.Store, error) {
	return func(context.Context) (store.Store, error) {
		f, err := store.OpenLocal(path)
		if err != nil {
			return nil, err
		}
		st, err := store.NewFile(f, path)
		if err != nil {
			f.Close()
			return nil, err
		}
		return st, nil
	}
}

type syncBuffer = syncbuf.Buffer

// readCounter counts the store reads of each 4 KiB page.
type readCounter struct {
	mu    sync.Mutex
	pages map[int64]int
}

// wrap counts the reads of s. A store that holds planned ranges (a remote
// one) stays one, as it is in production, and so does its readahead.
func (c *readCounter) wrap(s store.Store) store.Store {
	cs := &countingStore{Store: s, c: c}
	if h, ok := s.(interface {
		holder
		store.Readaheader
	}); ok {
		return &countingHolder{countingStore: cs, h: h}
	}
	return cs
}

// maxReads is the most times any page was read.
func (c *readCounter) maxReads() (page int64, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for p, k := range c.pages {
		if k > n {
			page, n = p, k
		}
	}
	return page, n
}

func (c *readCounter) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pages)
}

type countingStore struct {
	store.Store
	c *readCounter
}

func (s *countingStore) ReadAt(p []byte, off int64) (int, error) {
	n, err := s.Store.ReadAt(p, off)
	s.c.mu.Lock()
	if s.c.pages == nil {
		s.c.pages = make(map[int64]int)
	}
	for pg := off / PageSize; pg*PageSize < off+int64(n); pg++ {
		s.c.pages[pg]++
	}
	s.c.mu.Unlock()
	return n, err
}

type countingHolder struct {
	*countingStore
	h interface {
		holder
		store.Readaheader
	}
}

func (s *countingHolder) Hold(ranges [][2]int64) *remote.Held { return s.h.Hold(ranges) }
func (s *countingHolder) ChunkSize() int64                    { return s.h.ChunkSize() }
func (s *countingHolder) ReadaheadBytes() int64               { return s.h.ReadaheadBytes() }

// testServer is a handler in the test process.
type testServer struct {
	*Server
	sock  string
	log   *syncBuffer
	reads *readCounter
}

func startServer(t testing.TB, mem string, cfg Config) *testServer {
	t.Helper()
	ts := &testServer{sock: filepath.Join(t.TempDir(), "uffd.sock"), log: new(syncBuffer), reads: new(readCounter)}
	if cfg.Open == nil {
		cfg.Open = openFile(mem)
	}
	cfg.Name = mem
	cfg.Log = slog.New(slog.NewTextHandler(ts.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.WrapStore = ts.reads.wrap
	if cfg.RetryBackoff == 0 {
		cfg.RetryBackoff = time.Millisecond
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := server.Listen(ts.sock, 0o600)
	if err != nil {
		s.Close()
		t.Fatal(err)
	}
	ts.Server = s
	go s.Serve(l)
	t.Cleanup(func() {
		s.Close()
		if t.Failed() {
			t.Logf("handler log:\n%s", ts.log.String())
		}
	})
	return ts
}

// span is a region of the memory file a client maps: bytes [off, off+size).
type span struct{ off, size int64 }

// clientOpts are how a client child maps its memory and says so.
type clientOpts struct {
	spans []span
	page  int64  // 4096 or HugePageSize
	huge  bool   // MAP_HUGETLB
	keys  string // page size keys in the JSON: "both" (v1.12+), "kib" (v1.7–v1.11), "none" (before)
}

// fcClient is a VMM child process, or a handler's, driven by commands
// (internal/child).
type fcClient struct{ *child.T }

func startClient(t testing.TB, sock, mem string, o clientOpts) *fcClient {
	t.Helper()
	c := spawnClient(t, sock, mem, o)
	if l, ok := c.Reply(30 * time.Second); !ok || l != "ready" {
		t.Fatalf("client did not start: %q; stderr:\n%s", l, c.Stderr.String())
	}
	return c
}

func spawnClient(t testing.TB, sock, mem string, o clientOpts) *fcClient {
	t.Helper()
	if o.page == 0 {
		o.page = PageSize
	}
	if o.keys == "" {
		o.keys = "both"
	}
	var layout []string
	for _, s := range o.spans {
		layout = append(layout, fmt.Sprintf("%d:%d", s.off, s.size))
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envRole+"=client", "FC_SOCKET="+sock, "FC_MEM="+mem,
		"FC_LAYOUT="+strings.Join(layout, ","), fmt.Sprintf("FC_PAGE=%d", o.page), "FC_KEYS="+o.keys,
		"GORACE=atexit_sleep_ms=0")
	if o.huge {
		cmd.Env = append(cmd.Env, "FC_HUGE=1")
	}
	return startChild(t, cmd)
}

func startChild(t testing.TB, cmd *exec.Cmd) *fcClient {
	t.Helper()
	return &fcClient{child.StartT(t, cmd, "child")}
}

// close ends the client the way a VMM exits, and waits for it.
func (c *fcClient) close() {
	c.CloseInput()
	c.Cmd.Wait()
}

// regionsJSON is what Firecracker sends for regions at the given bases.
func regionsJSON(spans []span, bases []uintptr, page int64, keys string) []byte {
	var rs []map[string]any
	for i, s := range spans {
		m := map[string]any{"base_host_virt_addr": uint64(bases[i]), "size": s.size, "offset": s.off}
		switch keys {
		case "both":
			m["page_size"], m["page_size_kib"] = page, page
		case "kib":
			m["page_size_kib"] = page
		}
		rs = append(rs, m)
	}
	b, _ := json.Marshal(rs)
	return b
}

// dialHandshake is the VMM's side of the handshake: connect, then the
// payload and the descriptors in one sendmsg. The connection stays open.
func dialHandshake(sock string, payload []byte, fds ...int) (*net.UnixConn, error) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return nil, err
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := c.WriteMsgUnix(payload, oob, nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// guest is a client's memory: its regions and where the file's bytes are.
type guest struct {
	spans []span
	mems  [][]byte
	file  *os.File
	page  int64
}

// at is the guest memory holding file bytes [off, off+n), within one region.
func (g *guest) at(off, n int64) ([]byte, error) {
	for i, s := range g.spans {
		if off >= s.off && off+n <= s.off+s.size {
			return g.mems[i][off-s.off : off-s.off+n], nil
		}
	}
	return nil, fmt.Errorf("bytes [%d, %d) are not inside one region", off, off+n)
}

var sink atomic.Uint64

// runClient is the VMM child: it restores as Firecracker does, then runs
// commands.
func runClient() int {
	fail := func(format string, args ...any) int {
		fmt.Printf("error: "+format+"\n", args...)
		return 1
	}
	page, _ := strconv.ParseInt(os.Getenv("FC_PAGE"), 10, 64)
	g := &guest{page: page}
	for _, s := range strings.Split(os.Getenv("FC_LAYOUT"), ",") {
		var sp span
		if _, err := fmt.Sscanf(s, "%d:%d", &sp.off, &sp.size); err != nil {
			return fail("layout %q: %v", s, err)
		}
		g.spans = append(g.spans, sp)
	}
	f, err := os.Open(os.Getenv("FC_MEM"))
	if err != nil {
		return fail("%v", err)
	}
	g.file = f
	// Guest memory: anonymous and private, one mapping per region
	// (memory::anonymous in Firecracker), hugetlbfs-backed for "2M".
	flags := unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | unix.MAP_NORESERVE
	if os.Getenv("FC_HUGE") == "1" {
		flags = unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | unix.MAP_HUGETLB | unix.MAP_HUGE_2MB
	}
	var bases []uintptr
	for _, s := range g.spans {
		m, err := unix.Mmap(-1, 0, int(s.size), unix.PROT_READ|unix.PROT_WRITE, flags)
		if err != nil {
			return fail("mmap %d bytes: %v", s.size, err)
		}
		g.mems = append(g.mems, m)
		bases = append(bases, uintptr(unsafe.Pointer(&m[0])))
	}
	// UffdBuilder: close_on_exec, non_blocking, not user_mode_only, and
	// require_features(EVENT_REMOVE); then register MISSING per region.
	u, err := uffd.New(unix.O_CLOEXEC | unix.O_NONBLOCK)
	if err != nil {
		return fail("%v", err)
	}
	if _, err := u.API(0, uffd.FeatureEventRemove); err != nil {
		return fail("%v", err)
	}
	for i, m := range g.mems {
		if _, err := u.Register(bases[i], uintptr(len(m)), uffd.ModeMissing); err != nil {
			return fail("%v", err)
		}
	}
	conn, err := dialHandshake(os.Getenv("FC_SOCKET"), regionsJSON(g.spans, bases, page, os.Getenv("FC_KEYS")), u.Fd())
	if err != nil {
		return fail("handshake: %v", err)
	}
	defer conn.Close() // kept open, as Firecracker does, until the VMM exits
	defer u.Close()    // and the VMM keeps its own copy of the uffd
	fmt.Println("ready")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		fmt.Println(g.command(strings.Fields(sc.Text())))
	}
	return 0
}

// command runs one command and returns its answer line.
func (g *guest) command(args []string) string {
	if len(args) == 0 {
		return "error: empty command"
	}
	nums := make([]int64, 0, 2)
	for _, a := range args[1:] {
		if n, err := strconv.ParseInt(a, 10, 64); err == nil {
			nums = append(nums, n)
		}
	}
	arg := func(i int) int64 {
		if i < len(nums) {
			return nums[i]
		}
		return 0
	}
	switch args[0] {
	case "check": // check OFF LEN: the guest reads the file's bytes there
		return g.check(arg(0), arg(1), false)
	case "checkall":
		for _, s := range g.spans {
			if r := g.check(s.off, s.size, false); r != "ok" {
				return r
			}
		}
		return "ok"
	case "zeros": // zeros OFF LEN: the guest reads zeros there
		return g.check(arg(0), arg(1), true)
	case "balloon": // balloon OFF LEN: MADV_DONTNEED, as the balloon device does
		m, err := g.at(arg(0), arg(1))
		if err != nil {
			return "error: " + err.Error()
		}
		if err := unix.Madvise(m, unix.MADV_DONTNEED); err != nil {
			return "error: madvise: " + err.Error()
		}
		return "ok"
	case "write": // write OFF: store a byte, a write fault
		m, err := g.at(arg(0), 1)
		if err != nil {
			return "error: " + err.Error()
		}
		m[0] = 0x5A
		return "ok"
	case "touch": // touch FILE: load a word of each page listed, in order, timed
		return g.touch(args[1])
	case "race": // race AOFF ALEN BOFF BLEN: check A while another thread balloons B over and over
		return g.race(arg(0), arg(1), arg(2), arg(3))
	}
	return "error: unknown command " + args[0]
}

// race reads [aoff, aoff+alen) from this thread while another thread
// keeps inflating the balloon over [boff, boff+blen), 64 KiB at a time:
// the REMOVE events reach the handler between the faults, and its copies
// meet EAGAIN while one is unread. B must read as zeros afterwards.
func (g *guest) race(aoff, alen, boff, blen int64) string {
	bm, err := g.at(boff, blen)
	if err != nil {
		return "error: " + err.Error()
	}
	stop := make(chan struct{})
	var removes atomic.Int64
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		// Whole passes only: B reads as zeros afterwards only if every
		// page of it was removed at least once, however soon A's check
		// is done.
		for {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			for off := int64(0); off < blen; off += 64 << 10 {
				if err := unix.Madvise(bm[off:min(off+64<<10, blen)], unix.MADV_DONTNEED); err != nil {
					done <- err
					return
				}
				removes.Add(1)
				// A balloon's pace, not a flood: while any REMOVE is in
				// flight the kernel fails every fill with EAGAIN, so a
				// thread that never stops starves the guest's faults.
				time.Sleep(200 * time.Microsecond)
			}
		}
	}()
	r := g.check(aoff, alen, false)
	close(stop)
	if err := <-done; err != nil {
		return "error: madvise: " + err.Error()
	}
	if r != "ok" {
		return r
	}
	if r := g.check(boff, blen, true); r != "ok" {
		return r
	}
	return fmt.Sprintf("ok %d", removes.Load())
}

// check compares guest bytes [off, off+n) with the file's (or zeros). A
// page that cannot be read answers "sigbus OFFSET".
func (g *guest) check(off, n int64, zeros bool) string {
	want := make([]byte, 1<<20)
	for pos := off; pos < off+n; pos += int64(len(want)) {
		k := min(int64(len(want)), off+n-pos)
		m, err := g.at(pos, k)
		if err != nil {
			return "error: " + err.Error()
		}
		if zeros {
			clear(want[:k])
		} else if _, err := g.file.ReadAt(want[:k], pos); err != nil {
			return "error: " + err.Error()
		}
		var equal bool
		if at, faulted := sigbus.Catch(m, func() { equal = bytes.Equal(m, want[:k]) }); faulted {
			return fmt.Sprintf("sigbus %d", pos+at)
		}
		if !equal {
			i := int64(0)
			for m[i] == want[i] {
				i++
			}
			return fmt.Sprintf("bad offset %d: got %#x, want %#x", pos+i, m[i], want[i])
		}
	}
	return "ok"
}

// touch loads one word of each 4 KiB page listed in file (u32 page numbers,
// little-endian), in order, from one thread, checks it, and answers
// "ok ELAPSED_NS P50_NS P99_NS N".
func (g *guest) touch(file string) string {
	b, err := os.ReadFile(file)
	if err != nil {
		return "error: " + err.Error()
	}
	pages := make([]int64, len(b)/4)
	for i := range pages {
		pages[i] = int64(binary.LittleEndian.Uint32(b[4*i:]))
	}
	lat := make([]time.Duration, len(pages))
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var x uint64
	t0 := time.Now()
	for i, p := range pages {
		m, err := g.at(p*PageSize, 8)
		if err != nil {
			return "error: " + err.Error()
		}
		s := time.Now()
		w := *(*uint64)(unsafe.Pointer(&m[0]))
		lat[i] = time.Since(s)
		if w != pattern.Word(p*PageSize) {
			return fmt.Sprintf("bad offset %d: got %#x, want %#x", p*PageSize, w, pattern.Word(p*PageSize))
		}
		x ^= w
	}
	elapsed := time.Since(t0)
	sink.Add(x)
	slices.Sort(lat)
	q := func(f float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(f*float64(len(lat))))]
	}
	return fmt.Sprintf("ok %d %d %d %d", elapsed.Nanoseconds(), q(0.5).Nanoseconds(), q(0.99).Nanoseconds(), len(pages))
}

// runHandler is a handler in a child process, for tests that kill it.
func runHandler() int {
	s, err := New(Config{
		Open:     openFile(os.Getenv("FC_MEM")),
		Name:     os.Getenv("FC_MEM"),
		Record:   os.Getenv("FC_RECORD"),
		Prefetch: os.Getenv("FC_PREFETCH"),
		Log:      slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	l, err := server.Listen(os.Getenv("FC_SOCKET"), 0o600)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	if err := s.Keep(os.Getenv("FC_SOCKET")); err != nil {
		fmt.Println("error:", err)
		return 1
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	go func() {
		<-sig
		s.Close()
	}()
	fmt.Println("ready")
	s.Serve(l)
	s.Close()
	fmt.Println("closed")
	return 0
}

// startHandler runs a handler child on sock.
func startHandler(t testing.TB, sock, mem string, env ...string) *fcClient {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envRole+"=handler", "FC_SOCKET="+sock, "FC_MEM="+mem, "GORACE=atexit_sleep_ms=0")
	cmd.Env = append(cmd.Env, env...)
	// Its keeper inherits its stderr, and outlives it when it is killed.
	cmd.WaitDelay = time.Second
	h := startChild(t, cmd)
	if l, ok := h.Reply(30 * time.Second); !ok || l != "ready" {
		t.Fatalf("handler did not start: %q; stderr:\n%s", l, h.Stderr.String())
	}
	return h
}

// writePages writes a touch list for a client.
func writePages(t testing.TB, path string, pages []int64) {
	t.Helper()
	b := make([]byte, 4*len(pages))
	for i, p := range pages {
		binary.LittleEndian.PutUint32(b[4*i:], uint32(p))
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
