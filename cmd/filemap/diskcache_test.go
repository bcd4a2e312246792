package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/internal/tmpfs"
)

// objectServer serves objects over HTTP with ranges and ETags, as a real
// server does, counts the ranged requests, and fails the next one with a
// 503 when armed.
type objectServer struct {
	*httptest.Server
	mu      sync.Mutex
	objects map[string][]byte
	ranged  atomic.Int64
	fail503 atomic.Bool
}

func newObjectServer(t *testing.T) *objectServer {
	s := &objectServer{objects: make(map[string][]byte)}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		data, ok := s.objects[r.URL.Path]
		s.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		if r.Header.Get("Range") != "" {
			s.ranged.Add(1)
			if s.fail503.CompareAndSwap(true, false) {
				http.Error(w, "slow down", http.StatusServiceUnavailable)
				return
			}
		}
		w.Header().Set("ETag", fmt.Sprintf(`"%d"`, len(data)))
		http.ServeContent(w, r, "", time.Unix(1700000000, 0), bytes.NewReader(data))
	}))
	t.Cleanup(s.Close)
	return s
}

// put adds an object of size bytes at path and returns its URL and bytes.
func (s *objectServer) put(path string, size int, seed uint64) (string, []byte) {
	data := pattern.Random(size, seed)
	s.mu.Lock()
	s.objects[path] = data
	s.mu.Unlock()
	return s.URL + path, data
}

// catVia runs filemap cat of uri through the daemon d and checks its bytes.
func catVia(t *testing.T, d *daemon, uri string, want []byte) {
	t.Helper()
	r := filemapCLI(t, "cat", "--socket", d.socket, uri)
	r.wantCode(t, 0)
	if !bytes.Equal(r.stdout, want) {
		t.Fatalf("filemap cat %s: %d bytes that are not the object's %d", uri, len(r.stdout), len(want))
	}
}

// freeAddr is a loopback address with a port nobody listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// The counts the README promises for remote objects and the disk cache,
// a corrupt chunk's among them, are in `filemap stat` (text and --json)
// and on /metrics, each with the value of what happened.
func TestServeDiskCacheCounts(t *testing.T) {
	srv := newObjectServer(t)
	uri, data := srv.put("/images/rootfs.img", 5<<20+7, 31)
	dir := t.TempDir()
	diskFlags := []string{"--disk-cache", dir, "--disk-cache-size", "64M"}

	first := startDaemon(t, diskFlags...)
	srv.fail503.Store(true)
	catVia(t, first, uri, data)
	st := statJSON(t, first.socket)
	if d := st.DiskCache; d == nil || d.Dir != dir || d.Misses != 3 || d.BytesWritten != uint64(len(data)) || d.Objects != 1 || d.Corrupt != 0 {
		t.Errorf("after a first cat of a 3-chunk object: disk cache %+v, want 3 misses, the object written", d)
	}
	if st.RemoteRequests == 0 || st.RemoteRequestBytes < uint64(len(data)) || st.RemoteRetries != 1 {
		t.Errorf("after a first cat with one 503: %d remote requests of %d bytes, %d retries; want the object's bytes and 1 retry",
			st.RemoteRequests, st.RemoteRequestBytes, st.RemoteRetries)
	}
	first.stop(t)

	// One byte of the first chunk goes bad on disk.
	datas, _ := filepath.Glob(filepath.Join(dir, "*.data"))
	if len(datas) != 1 {
		t.Fatalf("disk cache files %v, want one data file", datas)
	}
	flipByte(t, datas[0], 4100)

	addr := freeAddr(t)
	second := startDaemon(t, append(diskFlags, "--metrics", addr)...)
	srv.fail503.Store(true)
	catVia(t, second, uri, data)
	st = statJSON(t, second.socket)
	if d := st.DiskCache; d == nil || d.Corrupt != 1 || d.Hits < 2 || d.Misses != 1 {
		t.Errorf("after a cat with a corrupt chunk on disk: disk cache %+v, want 1 corrupt chunk fetched again, the others hits", d)
	}

	r := filemapCLI(t, "stat", "--socket", second.socket, "--json")
	r.wantCode(t, 0)
	for _, key := range []string{`"remote_requests"`, `"remote_request_bytes"`, `"remote_retries": 1`, `"remote_hedges"`,
		`"object_changed"`, `"disk_cache"`, `"corrupt": 1`, `"corrupt_indexes"`, `"write_errors"`, `"hits"`, `"misses": 1`} {
		if !bytes.Contains(r.stdout, []byte(key)) {
			t.Errorf("filemap stat --json has no %s:\n%s", key, r.stdout)
		}
	}
	r = filemapCLI(t, "stat", "--socket", second.socket)
	r.wantCode(t, 0)
	for _, row := range []string{
		`remote requests\s+[1-9]\d*`, `remote request bytes\s+[1-9]\d* \(.*\)`, `remote retries\s+1`,
		`remote hedges \(.*\)\s+0`, `object changed \(.*\)\s+0`, `disk cache\s+` + regexp.QuoteMeta(dir),
		`disk cache corrupt chunks \(fetched again\)\s+1`, `disk cache corrupt indexes\s+0`,
		`disk cache write errors \(not cached\)\s+0`, `disk cache hits / in memory / misses\s+\d+ / \d+ / 1`,
	} {
		if !regexp.MustCompile(`(?m)^\s*` + row + `\s*$`).Match(r.stdout) {
			t.Errorf("filemap stat has no row %q:\n%s", row, r.stdout)
		}
	}

	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, line := range []string{
		"filemap_disk_cache_corrupt_chunks_total 1", "filemap_disk_cache_corrupt_indexes_total 0",
		"filemap_disk_cache_misses_total 1", "filemap_disk_cache_write_errors_total 0", "filemap_disk_cache_hits_total ",
		"filemap_disk_cache_bytes ", "filemap_disk_cache_limit_bytes 6.7108864e+07",
		`filemap_remote_retries_total{kind="transient"} 1`, "filemap_remote_request_seconds_count{", "filemap_remote_hedges_total 0",
	} {
		if !bytes.Contains(body, []byte(line)) {
			t.Errorf("/metrics has no %q", line)
		}
	}
	second.stop(t)
}

// flipByte inverts the byte at off of the file at path.
func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// A disk cache whose file system is full does not stop the daemon: it
// starts, serves the chunks on disk with no request, serves new objects
// from their store, and caches again once there is room.
func TestServeDiskCacheFullDisk(t *testing.T) {
	fs := tmpfs.Mount(t, 16<<20)
	dir := filepath.Join(fs, "cache")
	diskFlags := []string{"--disk-cache", dir, "--disk-cache-size", "64M"}
	srv := newObjectServer(t)
	uriA, a := srv.put("/a", 3<<20, 41)
	uriB, b := srv.put("/b", 3<<20, 42)
	uriC, c := srv.put("/c", 3<<20, 43)

	first := startDaemon(t, diskFlags...)
	catVia(t, first, uriA, a)
	first.stop(t)
	filler := tmpfs.Fill(t, fs, 0)

	d := startDaemon(t, diskFlags...)
	before := srv.ranged.Load()
	catVia(t, d, uriA, a)
	if n := srv.ranged.Load() - before; n != 0 {
		t.Errorf("the object cached before the disk filled: %d ranged requests, want 0 (all from disk)", n)
	}
	catVia(t, d, uriB, b)
	st := statJSON(t, d.socket)
	if st.DiskCache == nil || st.DiskCache.Hits == 0 || st.DiskCache.WriteErrors == 0 {
		t.Fatalf("on a full disk: disk cache %+v (off: %q), want it in use, with hits, and write errors for the new object",
			st.DiskCache, st.DiskCacheOff)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	written := st.DiskCache.BytesWritten
	catVia(t, d, uriC, c)
	if st := statJSON(t, d.socket); st.DiskCache.BytesWritten-written != uint64(len(c)) {
		t.Errorf("once there was room: %d bytes written to the disk cache, want the new object's %d", st.DiskCache.BytesWritten-written, len(c))
	}
	d.stop(t)
	if !bytes.Contains(d.stderr.Bytes(), []byte("file system is full")) {
		t.Errorf("the daemon did not log that the disk cache's file system was full:\n%s", d.stderr.Bytes())
	}
}

// A disk cache on a file system remounted read-only (as after errors) does
// not stop the daemon: it runs without one, says why in its log and in
// `filemap stat`, and serves remote objects from their store.
func TestServeDiskCacheReadOnly(t *testing.T) {
	fs := tmpfs.Mount(t, 4<<20)
	dir := filepath.Join(fs, "cache")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	tmpfs.ReadOnly(t, fs)
	srv := newObjectServer(t)
	uri, data := srv.put("/a", 1<<20, 51)
	d := startDaemon(t, "--disk-cache", dir, "--disk-cache-size", "64M")
	catVia(t, d, uri, data)
	st := statJSON(t, d.socket)
	if st.DiskCache != nil || !strings.Contains(st.DiskCacheOff, "read-only file system") || !strings.Contains(st.DiskCacheOff, dir) {
		t.Errorf("disk cache %+v, off %q; want none, and why, naming %s", st.DiskCache, st.DiskCacheOff, dir)
	}
	r := filemapCLI(t, "stat", "--socket", d.socket)
	r.wantCode(t, 0)
	if !regexp.MustCompile(`(?m)^\s*disk cache off \(why\)\s+.*read-only file system`).Match(r.stdout) {
		t.Errorf("filemap stat does not say the disk cache is off, and why:\n%s", r.stdout)
	}
	d.stop(t)
	if !bytes.Contains(d.stderr.Bytes(), []byte("running without a disk cache")) {
		t.Errorf("the daemon did not log that it runs without a disk cache:\n%s", d.stderr.Bytes())
	}
}

// What the operator must fix is an error at start, naming the directory.
func TestServeDiskCacheMisconfigured(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(t.TempDir(), "s.sock")
	r := filemapCLI(t, "serve", "--socket", socket, "--disk-cache", file, "--disk-cache-size", "64M")
	r.wantCode(t, 1)
	r.wantStderr(t, file, "not a directory")
}
