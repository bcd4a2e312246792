package server

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/filemap/filemap/internal/fdstore"
	"github.com/filemap/filemap/pagecache"
	"github.com/filemap/filemap/proto"
	"golang.org/x/sys/unix"
)

// craftedCache is a cache file as a client of the daemon's uid can make
// one: a memfd of size bytes (in whole pages) filled with b, sealed against
// resizing and made 0400, as the daemon makes its own.
func craftedCache(t *testing.T, size int64, b byte) *os.File {
	t.Helper()
	fd, err := unix.MemfdCreate("crafted", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatalf("memfd_create: %v", err)
	}
	f := os.NewFile(uintptr(fd), "crafted")
	t.Cleanup(func() { f.Close() })
	n := (size + pagecache.PageSize - 1) &^ (pagecache.PageSize - 1)
	if _, err := f.Write(bytes.Repeat([]byte{b}, int(n))); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW); err != nil {
		t.Fatalf("seal: %v", err)
	}
	if err := f.Chmod(0o400); err != nil {
		t.Fatal(err)
	}
	return f
}

// openCache opens path on c, handing back cache as the cache file it maps
// if not nil, and returns the handle and the inode of the cache file the
// daemon sent.
func openCache(t *testing.T, c *testClient, path string, cache *os.File) (handle, ino uint64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	req, send := proto.Open{URI: path}, []*os.File{f}
	if cache != nil {
		req.Cache, req.Size = true, fi.Size()
		send = append(send, cache)
	}
	var rep proto.OpenReply
	fds, err := c.call(t, proto.TOpen, req, send, &rep)
	if err != nil {
		t.Fatalf("open %s (handing back a cache: %v): %v", path, cache != nil, err)
	}
	defer closeAll(fds)
	return rep.Handle, inode(t, fds[0])
}

func inode(t *testing.T, f *os.File) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// A cache file a client hands back may hold any bytes: it serves the
// clients that hand back that very file and no one else, and it goes when
// they let go. The others get a cache read from the store.
func TestHandedBackCacheIsPrivate(t *testing.T) {
	ts := newTestServer(t)
	data := bytes.Repeat([]byte("the file's own bytes "), 1000)
	obj := tempFile(t, data)
	planted := craftedCache(t, int64(len(data)), 'X')

	a := ts.dial(t)
	ha, ino := openCache(t, a, obj.Name(), planted)
	if ino != inode(t, planted) {
		t.Fatalf("the daemon sent cache inode %d, not the file handed back (%d)", ino, inode(t, planted))
	}
	b := ts.dial(t)
	hb, ino := openCache(t, b, obj.Name(), nil)
	if ino == inode(t, planted) {
		t.Fatalf("an Open of %s found the cache another client handed back", obj.Name())
	}
	// Two mappings of one cache file re-attach: one cache.
	c := ts.dial(t)
	hc, ino := openCache(t, c, obj.Name(), planted)
	if ino != inode(t, planted) {
		t.Errorf("the same cache file handed back twice: cache inode %d, want %d", ino, inode(t, planted))
	}
	// Another client's own cache file of the same object: a cache of its own.
	other := craftedCache(t, int64(len(data)), 'Y')
	hd, ino := openCache(t, c, obj.Name(), other)
	if ino != inode(t, other) {
		t.Errorf("a second cache file of the object handed back: cache inode %d, want its own %d", ino, inode(t, other))
	}
	if st := a.stat(t); st.Objects != 3 {
		t.Errorf("%d caches, want 3: two handed back and the one read from the store", st.Objects)
	}

	for _, h := range []struct {
		c *testClient
		h uint64
	}{{a, ha}, {c, hc}, {c, hd}, {b, hb}} {
		if _, err := h.c.call(t, proto.TClose, proto.Close{Handle: h.h}, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	if st := a.stat(t); st.Objects != 1 || st.IdleObjects != 1 {
		t.Errorf("all handles closed: %d caches, %d idle; want the one read from the store, idle", st.Objects, st.IdleObjects)
	}
	if _, ino := openCache(t, b, obj.Name(), nil); ino == inode(t, planted) || ino == inode(t, other) {
		t.Errorf("an Open after every handle closed found a cache a client handed back")
	}
}

// A region of a cache a client handed back, kept by the keeper across a
// restart, stays private: the next daemon does not share it with a later
// Open.
func TestKeptHandedBackCacheStaysPrivate(t *testing.T) {
	uf := uffdFile(t)
	sock := filepath.Join(t.TempDir(), "s.sock")
	data := bytes.Repeat([]byte("the file's own bytes "), 1000)
	obj := tempFile(t, data)
	planted := craftedCache(t, int64(len(data)), 'X')

	first := startKeeping(t, sock, nil)
	a := first.dial(t)
	h, _ := openCache(t, a, obj.Name(), planted)
	var ar proto.AttachReply
	if _, err := a.call(t, proto.TAttach, proto.Attach{Handle: h, Addr: 1 << 30, Len: 4096}, []*os.File{uf}, &ar); err != nil {
		t.Fatalf("attach: %v", err)
	}
	first.Close() // its region waits in the keeper

	kept, err := Kept(sock)
	if err != nil {
		t.Fatal(err)
	}
	if len(kept) != 1 {
		t.Fatalf("the keeper kept %d regions, want 1", len(kept))
	}
	second := startKeeping(t, sock, kept)
	if st := second.Stats(); st.Regions != 1 {
		t.Fatalf("the restarted daemon serves %d regions, want the kept one", st.Regions)
	}
	b := second.dial(t)
	if _, ino := openCache(t, b, obj.Name(), nil); ino == inode(t, planted) {
		t.Fatalf("after a restart, an Open of %s found the cache a client had handed back", obj.Name())
	}
}

// startKeeping starts a server on sock that keeps its regions in a keeper,
// serving the regions entries a previous one left. The keeper is told to
// exit when the test ends.
func startKeeping(t *testing.T, sock string, entries []fdstore.Entry) *testServer {
	t.Helper()
	log := new(syncBuffer)
	s, err := New(Config{Log: slog.New(slog.NewTextHandler(log, nil))})
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	l, err := Listen(sock, 0o600)
	if err != nil {
		t.Fatalf("server.Listen: %v", err)
	}
	s.Keep(sock, entries)
	go s.Serve(l)
	t.Cleanup(func() {
		s.Forget()
		s.Close()
		if t.Failed() {
			t.Logf("server log:\n%s", log.String())
		}
	})
	return &testServer{Server: s, path: sock, log: log}
}
