package filemap

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/internal/s3test"
	"github.com/filemap/filemap/internal/testutil"
	"github.com/filemap/filemap/server"
	"github.com/filemap/filemap/store/remote"
	"github.com/filemap/filemap/store/s3store"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
)

// remoteObjectSize is large enough that a short sequential read at the start
// leaves its end unread, readahead included.
const remoteObjectSize = 64<<20 + 123

// versions writes two different versions of an object of size bytes as
// local files: the references the drivers check the mapping against.
func versions(t *testing.T, size int64) (v1, v2 string, d1, d2 []byte) {
	t.Helper()
	dir := t.TempDir()
	v1, v2 = filepath.Join(dir, "v1"), filepath.Join(dir, "v2")
	pattern.WriteFile(t, v1, size)
	d1, err := os.ReadFile(v1)
	if err != nil {
		t.Fatal(err)
	}
	d2 = bytes.Clone(d1)
	for i := range d2 {
		d2[i] ^= 0x5a
	}
	if err := os.WriteFile(v2, d2, 0o644); err != nil {
		t.Fatal(err)
	}
	return v1, v2, d1, d2
}

// checkVersionPinned is the consistency model of remote objects, with a
// real client process: a mapping shows the version pinned at its Open; when
// the object changes, the pages it had cached still show that version, and
// the pages it had not get SIGBUS (a log line and a metric name the object),
// never bytes of the new version; a new Open maps the new version whole.
func checkVersionPinned(t *testing.T, d *daemon, uri, v1, v2 string, replace func()) {
	a := startDriver(t, d.sock)
	a.open(uri, "ref="+v1)
	for off := int64(0); off < 4<<20; off += 1 << 20 {
		a.OK("read %d %d", off, 1<<20)
	}
	a.OK("read %d %d", remoteObjectSize-100, 100) // the short last page, zero-filled past the end
	replace()
	last := int64(remoteObjectSize-16<<20) &^ (ps - 1)
	var at int64
	if got := a.Do("read %d %d", last, ps); !strings.HasPrefix(got, "sigbus ") {
		t.Errorf("a page not cached before %s changed: %q, want SIGBUS", uri, got)
	} else if fmt.Sscan(strings.TrimPrefix(got, "sigbus "), &at); at/ps != last/ps {
		t.Errorf("SIGBUS at offset %d, outside the page read at %d", at, last)
	}
	a.OK("read %d %d", 0, 4<<20) // cached: still the pinned version
	testutil.WaitFor(t, "the log line naming the changed object", func() bool {
		return strings.Contains(d.log.String(), "object changed since it was opened") && strings.Contains(d.log.String(), uri)
	})
	if n := promtest.ToFloat64(d.s.Metrics().ChangedCount(uri)); n < 1 {
		t.Errorf("filemap_object_changed_total{object=%q} = %v, want >= 1", uri, n)
	}
	if st := d.s.Stats(); st.ObjectChanged < 1 || st.RemoteRequests == 0 {
		t.Errorf("Stats: %d fills failed for a changed object, %d remote requests; want >= 1 of each", st.ObjectChanged, st.RemoteRequests)
	}

	b := startDriver(t, d.sock)
	b.open(uri, "ref="+v2)
	for off := int64(0); off < remoteObjectSize; off += 4 << 20 {
		b.OK("read %d %d", off, min(4<<20, remoteObjectSize-off))
	}
	var touched, reads int
	fmt.Sscan(b.OK("rand 4 500"), &touched, &reads)
	if reads == 0 {
		t.Error("no random reads of the new version")
	}
}

func TestS3ObjectMapping(t *testing.T) {
	gw := s3test.Start(t)
	bucket := gw.NewBucket(t, false)
	const key = "models/weights.bin"
	uri := "s3://" + bucket + "/" + key
	v1, v2, d1, d2 := versions(t, remoteObjectSize)
	gw.Put(t, bucket, key, d1)
	d := startDaemon(t, server.Config{Remote: server.RemoteConfig{S3: s3store.Options{
		Endpoint:    gw.Endpoint,
		Region:      gw.Region,
		Credentials: credentials.NewStaticCredentialsProvider(gw.AccessKey, gw.SecretKey, ""),
	}}})
	checkVersionPinned(t, d, uri, v1, v2, func() { gw.Put(t, bucket, key, d2) })

	c := startDriver(t, d.sock)
	for _, bad := range []struct{ uri, want string }{
		{"s3://" + bucket + "/no/such/key", "no such key"},
		{"s3://no-such-bucket-here/key", "no such bucket"},
	} {
		if got := c.Do("open %s ref=%s", bad.uri, v1); !strings.HasPrefix(got, "err ") || !strings.Contains(got, bad.want) || !strings.Contains(got, bad.uri) {
			t.Errorf("open %s: %q; want an error naming it and %q", bad.uri, got, bad.want)
		}
	}
}

// versionedHandler serves one object with ranges, an ETag and If-Match, as
// a real server does (http.ServeContent), and lets the test replace it.
type versionedHandler struct {
	mu      sync.Mutex
	data    []byte
	etag    string
	version int
}

func (h *versionedHandler) set(data []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.version++
	h.data, h.etag = data, fmt.Sprintf(`"v%d"`, h.version)
}

func (h *versionedHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/object.bin" {
		http.NotFound(w, r)
		return
	}
	h.mu.Lock()
	data, etag := h.data, h.etag
	h.mu.Unlock()
	w.Header().Set("ETag", etag)
	http.ServeContent(w, r, "object.bin", time.Unix(1700000000, 0), bytes.NewReader(data))
}

func TestHTTPObjectMapping(t *testing.T) {
	v1, v2, d1, d2 := versions(t, remoteObjectSize)
	h := &versionedHandler{}
	h.set(d1)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	d := startDaemon(t, server.Config{})
	checkVersionPinned(t, d, srv.URL+"/object.bin", v1, v2, func() { h.set(d2) })

	c := startDriver(t, d.sock)
	missing := srv.URL + "/missing.bin"
	if got := c.Do("open %s ref=%s", missing, v1); !strings.HasPrefix(got, "err ") || !strings.Contains(got, "404") {
		t.Errorf("open %s: %q; want an error saying 404", missing, got)
	}
}

// remoteRequests is how many ranged requests a daemon has made, from its
// metrics.
func remoteRequests(t *testing.T, d *daemon) uint64 {
	t.Helper()
	mfs, err := d.s.Metrics().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, mf := range mfs {
		if mf.GetName() == "filemap_remote_request_seconds" {
			for _, m := range mf.GetMetric() {
				n += m.GetHistogram().GetSampleCount()
			}
		}
	}
	return n
}

// With a disk cache, a restarted daemon serves a second scan of a remote
// object by a new process without a single request to the object store.
func TestS3DiskCacheSurvivesRestart(t *testing.T) {
	gw := s3test.Start(t)
	bucket := gw.NewBucket(t, false)
	const key = "images/rootfs.img"
	uri := "s3://" + bucket + "/" + key
	ref := filepath.Join(t.TempDir(), "ref")
	const size = 24<<20 + 5
	pattern.WriteFile(t, ref, size)
	data, err := os.ReadFile(ref)
	if err != nil {
		t.Fatal(err)
	}
	gw.Put(t, bucket, key, data)
	cfg := server.Config{Remote: server.RemoteConfig{
		S3: s3store.Options{
			Endpoint:    gw.Endpoint,
			Region:      gw.Region,
			Credentials: credentials.NewStaticCredentialsProvider(gw.AccessKey, gw.SecretKey, ""),
		},
		DiskCache:      t.TempDir(),
		DiskCacheBytes: 64 << 20,
	}}
	scan := func(d *daemon) {
		a := startDriver(t, d.sock)
		a.open(uri, "ref="+ref)
		for off := int64(0); off < size; off += 1 << 20 {
			a.OK("read %d %d", off, min(1<<20, size-off))
		}
		a.OK("close")
	}
	first := startDaemon(t, cfg)
	scan(first)
	chunks := uint64((size + remote.DefaultChunkSize - 1) / remote.DefaultChunkSize)
	switch n := remoteRequests(t, first); {
	case n == 0:
		t.Fatal("the first scan made no requests: the metric does not count them")
	case n >= chunks:
		// Readahead windows announce their chunks, through the disk
		// cache, and the store asks for runs of them at once.
		t.Errorf("the first scan made %d requests for %d chunks; want runs of chunks in one request each", n, chunks)
	default:
		t.Logf("the first scan: %d requests for %d chunks", n, chunks)
	}
	first.s.Close()

	second := startDaemon(t, cfg)
	scan(second)
	if n := remoteRequests(t, second); n != 0 {
		t.Errorf("the restarted daemon made %d ranged requests; want 0, every chunk from the disk cache", n)
	}
	if dc := second.s.Stats().DiskCache; dc == nil || dc.Hits == 0 || dc.Misses != 0 || dc.Corrupt != 0 {
		t.Errorf("the restarted daemon's disk cache stats %+v; want hits only", dc)
	}
}

func s3Config(gw *s3test.Server) server.Config {
	return server.Config{Remote: server.RemoteConfig{S3: s3store.Options{
		Endpoint:    gw.Endpoint,
		Region:      gw.Region,
		Credentials: credentials.NewStaticCredentialsProvider(gw.AccessKey, gw.SecretKey, ""),
	}}}
}

// The request that pins an S3 object's version at Open brings its first
// bytes too, and the first page comes with no ranged request of its own: at
// the first Open, and at one after the object went idle (its store gave
// back its chunks) and its cache dropped its pages, whose store the daemon
// keeps rather than the new one. A page past those bytes is fetched.
func TestS3FirstPageComesWithOpen(t *testing.T) {
	gw := s3test.Start(t)
	bucket := gw.NewBucket(t, false)
	const key = "models/first.bin"
	v1, _, d1, _ := versions(t, 4<<20+11)
	gw.Put(t, bucket, key, d1)
	d := startDaemon(t, s3Config(gw))
	uri := "s3://" + bucket + "/" + key
	for i := range 2 {
		c := startDriver(t, d.sock)
		c.open(uri, "ref="+v1)
		c.OK("read 0 %d", ps)
		if n := remoteRequests(t, d); n != 0 {
			t.Fatalf("open %d: the first page took %d ranged requests; want none, its bytes came with Open", i+1, n)
		}
		c.Cmd.Process.Kill() // the object goes idle: its store gives back its chunks
		testutil.WaitFor(t, "the object to go idle", func() bool {
			objs := d.s.Objects(0)
			return len(objs) == 1 && objs[0].Users == 0
		})
		if _, err := d.s.DropCaches(0); err != nil {
			t.Fatal(err)
		}
	}
	c := startDriver(t, d.sock)
	c.open(uri, "ref="+v1)
	c.OK("read %d %d", 1<<20, ps)
	if n := remoteRequests(t, d); n == 0 {
		t.Fatal("a page past the first bytes took no ranged request: the metric does not count them")
	}
}

// WithVersion, as the hosts of a fleet use it: by VersionId, a version the
// key has moved past maps whole, beside a mapping of the current one; a
// version the bucket does not have, or an ETag that is no longer current,
// fails Open with an error that says so.
func TestS3OpenVersion(t *testing.T) {
	gw := s3test.Start(t)
	versioned, plain := gw.NewBucket(t, true), gw.NewBucket(t, false)
	const key = "images/rootfs.ext4"
	v1, v2, d1, d2 := versions(t, 8<<20+77)
	_, id1 := gw.Put(t, versioned, key, d1)
	_, id2 := gw.Put(t, versioned, key, d2)
	etag1, _ := gw.Put(t, plain, key, d1)
	d := startDaemon(t, s3Config(gw))
	uri, plainURI := "s3://"+versioned+"/"+key, "s3://"+plain+"/"+key

	old := startDriver(t, d.sock)
	old.open(uri, "version="+id1+" ref="+v1)
	cur := startDriver(t, d.sock)
	cur.open(uri, "ref="+v2)
	old.OK("read 0 %d", len(d1))
	cur.OK("read 0 %d", len(d2))
	pinned := startDriver(t, d.sock)
	pinned.open(plainURI, "version="+etag1+" ref="+v1)
	pinned.OK("read 0 %d", len(d1))

	gw.Put(t, plain, key, d2)
	c := startDriver(t, d.sock)
	for _, bad := range []struct{ uri, version, want string }{
		{uri, "no-such-version", `no version "no-such-version" of key`},
		{plainURI, etag1, "now has ETag"},
	} {
		if got := c.Do("open %s version=%s ref=%s", bad.uri, bad.version, v1); !strings.HasPrefix(got, "err ") ||
			!strings.Contains(got, bad.want) || !strings.Contains(got, bad.uri) {
			t.Errorf("open %s at version %s: %q; want an error naming it and %q", bad.uri, bad.version, got, bad.want)
		}
	}
	if id1 == id2 {
		t.Fatalf("the two versions have one VersionId %q", id1)
	}
}

// A versioned S3 object replaced while no daemon served its mapping: the
// restarted daemon opens the version the mapping shows by its VersionId,
// and serves every page of it, where an unversioned object could only
// give SIGBUS for the pages the cache lacked (TestRestartObjectChanged).
func TestRestartS3VersionKept(t *testing.T) {
	gw := s3test.Start(t)
	bucket := gw.NewBucket(t, true)
	const key = "snapshots/mem"
	uri := "s3://" + bucket + "/" + key
	v1, _, d1, d2 := versions(t, 8<<20+77)
	gw.Put(t, bucket, key, d1)
	sock := filepath.Join(t.TempDir(), "filemap.sock")
	d := startDaemonProc(t, sock, gw.Env()...)
	a := startDriver(t, sock)
	a.open(uri, "advice=random ref="+v1)
	a.OK("read 0 %d", ps)
	d.kill()
	gw.Put(t, bucket, key, d2)
	d2p := startDaemonProc(t, sock, gw.Env()...)
	a.OK("read 0 %d", len(d1))
	if st := d2p.stats(); st.SIGBUS != 0 || st.StoreBytes == 0 {
		t.Fatalf("the restarted daemon sent %d SIGBUS and read %d bytes; want none, and the pages not cached", st.SIGBUS, st.StoreBytes)
	}
}

// The version a mapping shows deleted while no daemon ran, and no keeper
// kept the region: the client hands its cache back to the restarted daemon,
// which adopts it at the key's current version, pinned to the old one: the
// cached pages are served, the others get SIGBUS, never the new bytes.
func TestRestartS3VersionDeleted(t *testing.T) {
	gw := s3test.Start(t)
	bucket := gw.NewBucket(t, true)
	key := "snapshots/mem"
	uri := "s3://" + bucket + "/" + key
	v1, _, d1, d2 := versions(t, 8<<20+77)
	_, id1 := gw.Put(t, bucket, key, d1)
	sock := filepath.Join(t.TempDir(), "filemap.sock")
	env := append(gw.Env(), "FILEMAP_TEST_NOKEEP=1")
	d := startDaemonProc(t, sock, env...)
	a := startDriver(t, sock)
	a.open(uri, "advice=random ref="+v1)
	a.OK("read 0 %d", ps)
	d.kill()
	gw.Put(t, bucket, key, d2)
	if _, err := gw.Client.DeleteObject(t.Context(), &s3.DeleteObjectInput{Bucket: &bucket, Key: &key, VersionId: &id1}); err != nil {
		t.Fatal(err)
	}
	d2p := startDaemonProc(t, sock, env...)
	testutil.WaitFor(t, "the client to re-attach", func() bool { return d2p.stats().Regions == 1 })
	a.OK("read 0 %d", ps)
	if got := a.Do("read %d 8", 4<<20); got != fmt.Sprintf("sigbus %d", 4<<20) {
		t.Fatalf("a page not cached, its version deleted: %q, want SIGBUS", got)
	}
}

// A VersionId names bytes that never change: a second Open of one the
// daemon has a cache of, open or idle, asks the store nothing (a request is
// tens of milliseconds on S3, for every process of a fleet that maps a
// pinned model). The current version, and a version named by its ETag,
// are asked for at every Open: a write may have replaced them. Open's
// request goes through the SDK, signed in its Authorization header; the
// ranged reads go to a presigned URL.
func TestS3PinnedVersionOpensWithoutHead(t *testing.T) {
	gw := s3test.Start(t)
	target, err := url.Parse(gw.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	var heads atomic.Int64
	rp := httputil.NewSingleHostReverseProxy(target)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead || r.Header.Get("Authorization") != "" {
			heads.Add(1)
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(proxy.Close)
	versioned, plain := gw.NewBucket(t, true), gw.NewBucket(t, false)
	const key = "models/weights.bin"
	v1, v2, d1, d2 := versions(t, 4<<20+11)
	_, id1 := gw.Put(t, versioned, key, d1)
	gw.Put(t, versioned, key, d2)
	etag, _ := gw.Put(t, plain, key, d1)
	cfg := s3Config(gw)
	cfg.Remote.S3.Endpoint = proxy.URL
	d := startDaemon(t, cfg)
	uri, plainURI := "s3://"+versioned+"/"+key, "s3://"+plain+"/"+key

	open := func(uri, opts string, data []byte) int64 {
		t.Helper()
		before := heads.Load()
		c := startDriver(t, d.sock)
		c.open(uri, opts)
		c.OK("read 0 %d", len(data))
		c.OK("close")
		return heads.Load() - before
	}
	for i, want := range []int64{1, 0, 0} {
		if n := open(uri, "version="+id1+" ref="+v1, d1); n != want {
			t.Errorf("open %d of VersionId %s: %d requests of Open's, want %d", i+1, id1, n, want)
		}
	}
	for i := range 2 {
		if n := open(uri, "ref="+v2, d2); n != 1 {
			t.Errorf("open %d of the current version: %d requests of Open's, want 1", i+1, n)
		}
		if n := open(plainURI, "version="+etag+" ref="+v1, d1); n != 1 {
			t.Errorf("open %d by ETag: %d requests of Open's, want 1", i+1, n)
		}
	}
}
