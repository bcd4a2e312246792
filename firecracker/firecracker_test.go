package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/fdstore"
	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/internal/testutil"
	"github.com/filemap/filemap/server"
	"github.com/filemap/filemap/store"
	"github.com/filemap/filemap/uffd"
	"golang.org/x/sys/unix"
)

// memFile makes a memory file of size bytes.
func memFile(t testing.TB, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "mem")
	pattern.WriteFile(t, p, size)
	return p
}

// twoRegions splits a file of size bytes in two regions, as a VM with a
// memory hole below 4 GiB has (its vmstate's regions, cumulative offsets).
func twoRegions(size int64) []span {
	return []span{{0, size / 4}, {size / 4, size - size/4}}
}

func TestRestoreReadsEveryPageAndBalloonZeros(t *testing.T) {
	const size = 8 << 20
	mem := memFile(t, size)
	ts := startServer(t, mem, Config{})
	c := startClient(t, ts.sock, mem, clientOpts{spans: twoRegions(size)})
	c.OK("checkall")
	// The balloon inflates over a range the guest has read, and one it
	// has not: both read as zeros from now on, not the image's bytes.
	c.OK("check %d %d", 0, 64<<10)
	c.OK("balloon %d %d", 0, 1<<20)
	c.OK("zeros %d %d", 0, 1<<20)
	c.OK("balloon %d %d", 6<<20, 256<<10)
	c.OK("zeros %d %d", 6<<20, 256<<10)
	// Deflated and written again, a page is the guest's own.
	c.OK("write %d", 4096)
	c.OK("check %d %d", 1<<20, 4<<20)
	st := ts.Stats()
	if st.Removes < 2 || st.ZeroFilled == 0 || st.Copied == 0 {
		t.Errorf("stats %+v: want removes, zero fills and copies", st)
	}
	if st.Sigbus != 0 {
		t.Errorf("%d pages poisoned", st.Sigbus)
	}
	c.close()
	testutil.WaitFor(t, "the VM to be gone", func() bool { return ts.Stats().VMs == 0 })
	if !strings.Contains(ts.log.String(), "VM gone") {
		t.Errorf("no end-of-VM log line:\n%s", ts.log.String())
	}
}

func TestPageSizeKeysOfEveryVersion(t *testing.T) {
	const size = 2 << 20
	mem := memFile(t, size)
	ts := startServer(t, mem, Config{})
	for _, keys := range []string{"both", "kib", "none"} {
		c := startClient(t, ts.sock, mem, clientOpts{spans: []span{{0, size}}, keys: keys})
		c.OK("checkall")
		c.close()
	}
	if st := ts.Stats(); st.Restores != 3 || st.Rejected != 0 {
		t.Errorf("stats %+v: want 3 restores", st)
	}
}

// TestSharedCache restores several VMs from one image at once: the store
// is read once per page, however many guests fault on it.
func TestSharedCache(t *testing.T) {
	const size = 16 << 20
	mem := memFile(t, size)
	ts := startServer(t, mem, Config{})
	var cs []*fcClient
	for range 3 {
		cs = append(cs, startClient(t, ts.sock, mem, clientOpts{spans: twoRegions(size)}))
	}
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Go(func() { c.Send("checkall") })
	}
	wg.Wait()
	for i, c := range cs {
		if l, ok := c.Reply(60 * time.Second); l != "ok" {
			t.Fatalf("client %d: %q (%v)", i, l, ok)
		}
	}
	if page, n := ts.reads.maxReads(); n != 1 {
		t.Errorf("page %d was read from the store %d times; want once", page, n)
	}
	if got := ts.reads.distinct(); got != size/PageSize {
		t.Errorf("%d distinct pages read, want %d", got, size/PageSize)
	}
	if st := ts.Stats(); st.Objects != 1 || st.VMs != 3 {
		t.Errorf("stats %+v: want one cache shared by three VMs", st)
	}
}

// TestFirecrackerConnectErrors are test_uffd.py's test_bad_socket_path and
// test_unbinded_socket, on the VMM's side of the handshake.
func TestFirecrackerConnectErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := dialHandshake(filepath.Join(dir, "nothing.sock"), []byte("[]"))
	if !errors.Is(err, unix.ENOENT) || !strings.Contains(err.Error(), "no such file or directory") {
		t.Errorf("no socket at the path: %v; want ENOENT", err)
	}
	// A socket file nobody listens on: bound, never listened, closed.
	path := filepath.Join(dir, "unbound.sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	_, err = dialHandshake(path, []byte("[]"))
	if !errors.Is(err, unix.ECONNREFUSED) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("a socket nobody listens on: %v; want ECONNREFUSED", err)
	}
}

// TestHandlerDies is test_malicious_handler: when the handler dies, the
// guest's next fault stalls — the VMM keeps its own copy of the uffd — and
// never reads zeros.
func TestHandlerDies(t *testing.T) {
	const size = 4 << 20
	mem := memFile(t, size)
	sock := filepath.Join(t.TempDir(), "uffd.sock")
	h := startHandler(t, sock, mem)
	c := startClient(t, sock, mem, clientOpts{spans: []span{{0, size}}})
	c.OK("check %d %d", 0, size/2)
	h.Cmd.Process.Signal(syscall.SIGKILL)
	h.Cmd.Wait()
	c.Send("check %d %d", size/2, size/2)
	if l, ok := c.Reply(2 * time.Second); ok {
		t.Fatalf("with its handler dead, the guest's touch answered %q; want a stall", l)
	}
	c.Cmd.Process.Kill()
}

// A handler killed in the middle of a restore, and started again on the
// same socket: it takes the VM from the dead one's keeper and serves the
// guest's faults, those that waited through the outage first. The VMM
// does nothing (Firecracker sends its handshake once); every byte is
// checked.
func TestHandlerRestarts(t *testing.T) {
	const size = 16 << 20
	mem := memFile(t, size)
	sock := filepath.Join(t.TempDir(), "uffd.sock")
	h := startHandler(t, sock, mem)
	c := startClient(t, sock, mem, clientOpts{spans: twoRegions(size)})
	c.OK("check %d %d", 0, size/4)
	h.Cmd.Process.Signal(syscall.SIGKILL)
	h.Cmd.Wait()
	c.Send("check %d %d", size/4, size/4) // stalls: no handler
	if l, ok := c.Reply(300 * time.Millisecond); ok {
		t.Fatalf("with its handler dead, the guest's touch answered %q; want a stall", l)
	}
	startHandler(t, sock, mem)
	if l, ok := c.Reply(30 * time.Second); !ok || l != "ok" {
		t.Fatalf("the touch that waited through the outage: %q (answered %v)", l, ok)
	}
	c.OK("check %d %d", size/2, size/2)
	c.OK("balloon %d %d", 0, 1<<20) // REMOVE events reach the new handler too
	c.OK("zeros %d %d", 0, 1<<20)
}

// rawUffd is a userfaultfd of the test process to send in handshakes that
// are refused before anything is registered.
func rawUffd(t *testing.T) int {
	t.Helper()
	u, err := uffd.New(unix.O_CLOEXEC | unix.O_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := u.API(0, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	return u.Fd()
}

// TestBadHandshakes: each bad handshake is logged, naming the field or the
// region, and closes that connection only; a VM restored afterwards, and
// one restored before, are served.
func TestBadHandshakes(t *testing.T) {
	const size = 4 << 20
	mem := memFile(t, size)
	ts := startServer(t, mem, Config{HandshakeTimeout: 2 * time.Second})
	before := startClient(t, ts.sock, mem, clientOpts{spans: []span{{0, size}}})
	before.OK("check %d %d", 0, 1<<20)
	fd := rawUffd(t)
	fds := openFds(t)
	region := func(base, sz, off, ps int64) string {
		return fmt.Sprintf(`{"base_host_virt_addr":%d,"size":%d,"offset":%d,"page_size":%d,"page_size_kib":%d}`, base, sz, off, ps, ps)
	}
	for _, c := range []struct {
		name, payload string
		fds           []int
		want          string
	}{
		{"malformed JSON", `[{"base_host_virt_addr": 1,`, []int{fd}, "malformed JSON"},
		{"not JSON", `[}`, []int{fd}, "malformed JSON"},
		{"not an array", `{"size": 4096}`, []int{fd}, "not a JSON array"},
		{"overlapping regions", "[" + region(1<<30, 1<<20, 0, 4096) + "," + region(1<<30+4096, 1<<20, 1<<20, 4096) + "]", []int{fd},
			"regions 0 and 1 overlap in the VMM's address space"},
		{"region beyond the file", "[" + region(1<<30, 1<<20, size-4096, 4096) + "]", []int{fd}, "region 0: bytes"},
		{"page size not a power of two", "[" + region(1<<30, 1<<20, 0, 12288) + "]", []int{fd}, "page_size 12288 is not a power of two"},
		{"page size not 4K or 2M", "[" + region(1<<30, 1<<20, 0, 8192) + "]", []int{fd}, "page_size 8192: want 4096, or 2097152"},
		{"page size keys disagree", `[{"base_host_virt_addr":1073741824,"size":4096,"offset":0,"page_size":4096,"page_size_kib":2097152}]`, []int{fd},
			"page_size 4096 and page_size_kib 2097152 disagree"},
		{"missing field", `[{"base_host_virt_addr":1073741824,"offset":0}]`, []int{fd}, "region 0: field size is missing"},
		{"wrong type", `[{"base_host_virt_addr":"here","size":4096,"offset":0}]`, []int{fd}, "field base_host_virt_addr: want uint64"},
		{"missing fd", "[" + region(1<<30, 1<<20, 0, 4096) + "]", nil, "no userfaultfd received"},
		{"not a userfaultfd", "[" + region(1<<30, 1<<20, 0, 4096) + "]", []int{int(os.Stdin.Fd())}, "no userfaultfd received"},
	} {
		t.Run(c.name, func(t *testing.T) {
			rejected := ts.Stats().Rejected
			conn, err := dialHandshake(ts.sock, []byte(c.payload), c.fds...)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			if n, err := conn.Read(make([]byte, 1)); err != io.EOF {
				t.Fatalf("read after a bad handshake: %d, %v; want EOF (the handler closes the connection)", n, err)
			}
			testutil.WaitFor(t, "the rejection to be counted", func() bool { return ts.Stats().Rejected == rejected+1 })
			if !strings.Contains(ts.log.String(), c.want) {
				t.Errorf("the log does not say %q:\n%s", c.want, ts.log.String())
			}
		})
	}
	// Every descriptor a rejected handshake brought was closed.
	testutil.WaitFor(t, "the descriptors of rejected handshakes to be closed", func() bool { return openFds(t) <= fds })
	after := startClient(t, ts.sock, mem, clientOpts{spans: twoRegions(size)})
	after.OK("checkall")
	before.OK("checkall")
}

func openFds(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestMessageWithoutFdIsRetried: bytes that arrive without a descriptor are
// set aside, and the handshake that follows with the uffd is served.
func TestMessageWithoutFdIsRetried(t *testing.T) {
	const size = 1 << 20
	mem := memFile(t, size)
	ts := startServer(t, mem, Config{})
	fd := rawUffd(t)
	conn, err := dialHandshake(ts.sock, []byte("garbage without a descriptor"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Once the handler has read it: unread, it would be glued in front of
	// the next message by the kernel.
	testutil.WaitFor(t, "the handler to read the message", func() bool {
		return strings.Contains(ts.log.String(), "without a descriptor")
	})
	payload := fmt.Sprintf(`[{"base_host_virt_addr":%d,"size":%d,"offset":0,"page_size":4096}]`, 1<<30, size)
	if _, _, err := conn.WriteMsgUnix([]byte(payload), unix.UnixRights(fd), nil); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the restore", func() bool { return ts.Stats().Restores == 1 })
	if st := ts.Stats(); st.Rejected != 0 || st.VMs != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestFaultsRaceRemoves: a guest faults on pages while its balloon keeps
// removing others from another thread; ioctls that meet an unread REMOVE
// with EAGAIN are deferred and retried, and every page reads right: the
// faulted ones as the file, the removed ones as zeros.
func TestFaultsRaceRemoves(t *testing.T) {
	const size = 16 << 20
	mem := memFile(t, size)
	ts := startServer(t, mem, Config{})
	c := startClient(t, ts.sock, mem, clientOpts{spans: []span{{0, size}}})
	removes := c.OK("race %d %d %d %d", 0, size-4<<20, size-4<<20, 4<<20)
	st := ts.Stats()
	t.Logf("balloon removes %s, REMOVE events %d, deferred faults %d", removes, st.Removes, st.Deferred)
	if st.Removes == 0 {
		t.Error("no REMOVE event reached the handler")
	}
}

// TestSmallCacheEvictsUnderCopies bounds the cache far below the guest's
// memory: pages are evicted while others are copied, and every byte the
// guest reads is still right (a copy of an evicted page fails with EFAULT
// through the guard and is read again, never copied as zeros).
func TestSmallCacheEvictsUnderCopies(t *testing.T) {
	const size = 16 << 20
	mem := memFile(t, size)
	ts := startServer(t, mem, Config{CacheBytes: 256 << 10, CopyAround: 16})
	var cs []*fcClient
	for range 2 {
		cs = append(cs, startClient(t, ts.sock, mem, clientOpts{spans: twoRegions(size)}))
	}
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Go(func() { c.Send("checkall") })
	}
	wg.Wait()
	for i, c := range cs {
		if l, _ := c.Reply(60 * time.Second); l != "ok" {
			t.Fatalf("client %d: %q", i, l)
		}
	}
	st := ts.Stats()
	if st.CacheBytes > 1<<20 {
		t.Errorf("cache holds %d bytes, bound 256 KiB", st.CacheBytes)
	}
	t.Logf("refilled after eviction: %d; store reads %d", st.Refilled, st.StoreReads)
}

// TestHugePages restores a guest whose memory is hugetlbfs-backed (2 MiB
// pages): each fault copies a whole huge page, and a ballooned huge page
// reads as zeros.
func TestHugePages(t *testing.T) {
	const size = 8 << 20
	need := int64(2 * size / HugePageSize) // the guest's, plus a spare set
	restore, err := reserveHugePages(need)
	if err != nil {
		t.Skipf("no 2 MiB huge pages for a hugetlbfs guest: %v", err)
	}
	t.Cleanup(restore)
	mem := memFile(t, size)
	ts := startServer(t, mem, Config{})
	c := startClient(t, ts.sock, mem, clientOpts{spans: []span{{0, 2 << 20}, {2 << 20, size - 2<<20}}, page: HugePageSize, huge: true})
	c.OK("checkall")
	c.OK("balloon %d %d", 4<<20, 2<<20)
	c.OK("zeros %d %d", 4<<20, 2<<20)
	c.OK("check %d %d", 6<<20, 2<<20)
	// The guest sees a copy before the handler counts it: wait for the
	// counts to catch up with what the guest has checked.
	testutil.WaitFor(t, fmt.Sprintf("%d huge pages copied and one zero-filled", size/HugePageSize), func() bool {
		st := ts.Stats()
		return st.Copied == size/HugePageSize && st.ZeroFilled >= 1
	})
}

// reserveHugePages makes sure n free 2 MiB huge pages exist, raising
// vm.nr_hugepages if it must, and returns what puts it back.
func reserveHugePages(n int64) (func(), error) {
	const path = "/proc/sys/vm/nr_hugepages"
	readInt := func(p string) (int64, error) {
		b, err := os.ReadFile(p)
		if err != nil {
			return 0, err
		}
		return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	}
	const free = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages"
	have, err := readInt(free)
	if err != nil {
		return nil, err
	}
	if have >= n {
		return func() {}, nil
	}
	old, err := readInt(path)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, []byte(strconv.FormatInt(old+n-have, 10)), 0); err != nil {
		return nil, fmt.Errorf("raise %s (needs root): %w", path, err)
	}
	restore := func() { os.WriteFile(path, []byte(strconv.FormatInt(old, 10)), 0) }
	if have, _ = readInt(free); have < n {
		restore()
		return nil, fmt.Errorf("%s raised, but only %d of %d huge pages are free (memory too fragmented?)", path, have, n)
	}
	return restore, nil
}

// workingSet is a guest's first touches: clusters of 1–8 pages at random
// places, in a random order, about frac of npages in all.
func workingSet(seed uint64, npages int64, frac float64) []int64 {
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	want := int(float64(npages) * frac)
	seen := make(map[int64]bool, want)
	var pages []int64
	for len(pages) < want {
		start := rng.Int64N(npages)
		n := 1 + rng.IntN(8)
		for p := start; p < min(start+int64(n), npages) && len(pages) < want; p++ {
			if !seen[p] {
				seen[p] = true
				pages = append(pages, p)
			}
		}
	}
	return pages
}

// With a pinned version (an S3 VersionId, which never changes), restores
// after the first use the open cache of that version without opening the
// memory file again: no HEAD per restore. Without one, each restore opens
// it, to find the version current then.
func TestPinnedVersionOpensOnce(t *testing.T) {
	const size = 4 << 20
	mem := memFile(t, size)
	st, err := openFile(mem)(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	version := st.Version()
	st.Close()
	for _, c := range []struct {
		pinned string
		opens  int64
	}{{"", 3}, {version, 1}, {"another version", 3}} {
		var opens atomic.Int64
		open := openFile(mem)
		ts := startServer(t, mem, Config{Pinned: c.pinned, Open: func(ctx context.Context) (store.Store, error) {
			opens.Add(1)
			return open(ctx)
		}})
		for range 3 {
			vm := startClient(t, ts.sock, mem, clientOpts{spans: twoRegions(size)})
			vm.OK("checkall")
			vm.close()
		}
		if n := opens.Load(); n != c.opens {
			t.Errorf("pinned %q: the memory file was opened %d times for 3 restores, want %d", c.pinned, n, c.opens)
		}
	}
}

// The balloon's removed memory survives the handler: a guest that ballooned
// pages it had read, and pages it never touched, reads zeros there after
// its handler was killed (kill -9) or stopped (SIGTERM, the graceful
// hand-over) and started again, and the memory file's bytes everywhere
// else; and so after a second hand-over, for what it ballooned in between.
func TestHandlerRestartKeepsBalloon(t *testing.T) {
	const size = 16 << 20
	const mib = 1 << 20
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			mem := memFile(t, size)
			sock := filepath.Join(t.TempDir(), "uffd.sock")
			spans := twoRegions(size) // [0, 4 MiB), [4 MiB, 16 MiB)
			h := startHandler(t, sock, mem)
			c := startClient(t, sock, mem, clientOpts{spans: spans})
			c.OK("check %d %d", 0, 4*mib)
			c.OK("check %d %d", 8*mib, 2*mib)
			// Read, never touched, and half of each.
			removed := []span{{1 * mib, mib}, {8 * mib, mib}, {12 * mib, mib}, {9*mib + mib/2, mib}}
			for _, r := range removed {
				c.OK("balloon %d %d", r.off, r.size)
			}
			h = handOver(t, h, sig, sock, mem)
			c.OK("check %d %d", 4*mib, mib)
			more := []span{{4 * mib, mib / 2}, {14 * mib, mib}}
			for _, r := range more {
				c.OK("balloon %d %d", r.off, r.size)
			}
			handOver(t, h, sig, sock, mem)
			checkBalloon(t, c, spans, append(removed, more...))
		})
	}
}

// handOver stops handler h with sig and starts the next one on sock.
func handOver(t *testing.T, h *fcClient, sig syscall.Signal, sock, mem string) *fcClient {
	t.Helper()
	h.Cmd.Process.Signal(sig)
	if sig == syscall.SIGTERM {
		if l, _ := h.Reply(20 * time.Second); l != "closed" {
			t.Fatalf("handler after SIGTERM: %q; stderr:\n%s", l, h.Stderr.String())
		}
	}
	h.Cmd.Wait()
	return startHandler(t, sock, mem)
}

// checkBalloon has the guest read zeros in every removed span and the
// memory file's bytes in the rest of its regions.
func checkBalloon(t *testing.T, c *fcClient, regions, removed []span) {
	t.Helper()
	isRemoved := func(off int64) bool {
		for _, r := range removed {
			if off >= r.off && off < r.off+r.size {
				return true
			}
		}
		return false
	}
	for _, g := range regions {
		for off := g.off; off < g.off+g.size; {
			end := off + PageSize
			for end < g.off+g.size && isRemoved(end) == isRemoved(off) {
				end += PageSize
			}
			if isRemoved(off) {
				if l := c.Do("zeros %d %d", off, end-off); l != "ok" {
					t.Errorf("removed bytes [%d, %d): %s", off, end, l)
				}
			} else if l := c.Do("check %d %d", off, end-off); l != "ok" {
				t.Errorf("bytes [%d, %d): %s", off, end, l)
			}
			off = end
		}
	}
}

// A VM kept by a handler from before the VM state (its keeper entry has
// the connection and the userfaultfd only) is served all the same by a
// handler started on its socket, which says that the pages the balloon
// removed before are unknown.
func TestHandlerAdoptsVMWithoutState(t *testing.T) {
	const size = 8 << 20
	mem := memFile(t, size)
	sock := filepath.Join(t.TempDir(), "uffd.sock")
	// The older handler: it takes the handshake and keeps what it kept.
	l, err := server.Listen(sock, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan *net.UnixConn, 1)
	go func() {
		c, _ := l.AcceptUnix()
		accepted <- c
	}()
	c := startClient(t, sock, mem, clientOpts{spans: twoRegions(size)})
	conn := <-accepted
	if conn == nil {
		t.Fatal("accept failed")
	}
	payload, fd, err := recvHandshake(conn, 10*time.Second, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	k, err := fdstore.Start(sock, nil)
	if err != nil {
		t.Fatal(err)
	}
	connFile, err := conn.File()
	if err != nil {
		t.Fatal(err)
	}
	u := os.NewFile(uintptr(fd), "uffd")
	if err := k.Put(fdstore.Entry{ID: 1, Pid: c.Cmd.Process.Pid, Desc: payload, Files: []*os.File{connFile, u}}); err != nil {
		t.Fatal(err)
	}
	k.Close(false)
	connFile.Close()
	u.Close()
	conn.Close()
	l.Close()

	h := startHandler(t, sock, mem)
	c.OK("checkall")
	c.OK("balloon %d %d", 0, 1<<20)
	c.OK("zeros %d %d", 0, 1<<20)
	if log := h.Stderr.String(); !strings.Contains(log, "removed before this handler started are unknown") {
		t.Errorf("the handler did not say the removed pages are unknown:\n%s", log)
	}
}

// A handler started again after the memory file changed (another snapshot
// written to its path) gives the VMs it takes over none of the new file's
// bytes: pages in the guest keep theirs, removed pages read as zeros, and
// the others get SIGBUS, never a guest made of two snapshots.
func TestHandlerRestartAfterMemoryFileChanged(t *testing.T) {
	const size = 8 << 20
	mem := memFile(t, size)
	sock := filepath.Join(t.TempDir(), "uffd.sock")
	h := startHandler(t, sock, mem)
	c := startClient(t, sock, mem, clientOpts{spans: []span{{0, size}}})
	c.OK("check %d %d", 0, 2<<20)
	c.OK("balloon %d %d", 4<<20, 1<<20)
	h.Cmd.Process.Signal(syscall.SIGKILL)
	h.Cmd.Wait()
	// The new snapshot replaces the file; the client compares with the
	// old one, which it holds open.
	b, err := os.ReadFile(mem)
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] ^= 0xff
	}
	next := mem + ".new"
	if err := os.WriteFile(next, b, 0o644); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(next, later, later); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(next, mem); err != nil {
		t.Fatal(err)
	}
	h = startHandler(t, sock, mem)
	c.OK("check %d %d", 0, 2<<20)
	c.OK("zeros %d %d", 4<<20, 1<<20)
	for _, off := range []int64{2 << 20, 6 << 20} {
		if l := c.Do("check %d %d", off, PageSize); l != fmt.Sprintf("sigbus %d", off) {
			t.Errorf("a page the guest never had, of the changed file: %q, want SIGBUS", l)
		}
	}
	if log := h.Stderr.String(); !strings.Contains(log, "memory file changed since this VM was restored") {
		t.Errorf("the handler did not say the memory file changed:\n%s", log)
	}
}
