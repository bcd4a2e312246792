package s3store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/internal/s3test"
	"github.com/filemap/filemap/store"
	"github.com/filemap/filemap/store/s3store"
)

// gw is the package's one versitygw, started by the first test that needs it.
var gw s3test.Once

func TestMain(m *testing.M) {
	isolate()
	code := m.Run()
	gw.Close()
	os.Exit(code)
}

// isolate keeps the tests away from the machine's AWS configuration and
// from the instance metadata service: only what a test sets is used.
func isolate() {
	for _, k := range []string{
		"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
		"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
		"AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
	} {
		os.Unsetenv(k)
	}
	os.Setenv("AWS_CONFIG_FILE", os.DevNull)
	os.Setenv("AWS_SHARED_CREDENTIALS_FILE", os.DevNull)
	os.Setenv("AWS_EC2_METADATA_DISABLED", "true")
}

// testTimeout bounds each test's requests, so that a hung server fails the
// test instead of hanging it; no assertion depends on it.
const testTimeout = time.Minute

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// options points Options explicitly at srv.
func options(srv *s3test.Server) s3store.Options {
	return s3store.Options{
		Endpoint:    srv.Endpoint,
		Credentials: credentials.NewStaticCredentialsProvider(srv.AccessKey, srv.SecretKey, ""),
	}
}

func openObject(t *testing.T, uri string, opts s3store.Options) *s3store.Object {
	t.Helper()
	obj, err := s3store.Open(testContext(t), uri, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", uri, err)
	}
	t.Cleanup(func() { obj.Close() })
	return obj
}

// checkRange reads [off, off+n) and compares it with want.
func checkRange(t *testing.T, obj *s3store.Object, want []byte, off int64, n int) {
	t.Helper()
	p := make([]byte, n)
	if err := obj.GetRange(testContext(t), p, off); err != nil {
		t.Fatalf("GetRange(off %d, len %d): %v", off, n, err)
	}
	if i := firstDiff(p, want[off:off+int64(n)]); i >= 0 {
		t.Fatalf("GetRange(off %d, len %d): byte %d is %#x, want %#x", off, n, off+int64(i), p[i], want[off+int64(i)])
	}
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

func TestReadRanges(t *testing.T) {
	srv := gw.Server(t)
	bucket := srv.NewBucket(t, false)
	data := pattern.Random(3<<20+12345, 1)
	etag, _ := srv.Put(t, bucket, "dir/sub/object.bin", data)

	obj := openObject(t, "s3://"+bucket+"/dir/sub/object.bin", options(srv))
	if obj.Size() != int64(len(data)) {
		t.Fatalf("Size = %d, want %d", obj.Size(), len(data))
	}
	if obj.Version() != etag {
		t.Errorf("Version = %q, want the ETag %q (the bucket is not versioned)", obj.Version(), etag)
	}
	if want := "s3:" + srv.Endpoint + "/" + bucket + "/dir/sub/object.bin"; obj.Key() != want {
		t.Errorf("Key = %q, want %q", obj.Key(), want)
	}

	size := int64(len(data))
	checkRange(t, obj, data, 0, 4096)
	checkRange(t, obj, data, 0, 1)
	checkRange(t, obj, data, size-1, 1)
	checkRange(t, obj, data, size-4096, 4096)
	checkRange(t, obj, data, size/2-(1<<19), 1<<20) // across the middle
	checkRange(t, obj, data, 0, len(data))          // the whole object at once

	// Every byte, in chunks that do not divide the size.
	const chunk = 256<<10 + 7
	for off := int64(0); off < size; off += chunk {
		checkRange(t, obj, data, off, int(min(chunk, size-off)))
	}
}

func TestConcurrentReads(t *testing.T) {
	srv := gw.Server(t)
	bucket := srv.NewBucket(t, false)
	data := pattern.Random(2<<20, 2)
	srv.Put(t, bucket, "k", data)
	obj := openObject(t, "s3://"+bucket+"/k", options(srv))

	const chunk = 64 << 10
	var wg sync.WaitGroup
	errs := make(chan error, len(data)/chunk)
	for off := 0; off < len(data); off += chunk {
		wg.Go(func() {
			p := make([]byte, chunk)
			if err := obj.GetRange(testContext(t), p, int64(off)); err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(p, data[off:off+chunk]) {
				errs <- fmt.Errorf("bytes at offset %d differ", off)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestZeroLength(t *testing.T) {
	srv := gw.Server(t)
	bucket := srv.NewBucket(t, false)
	srv.Put(t, bucket, "empty", nil)
	obj := openObject(t, "s3://"+bucket+"/empty", options(srv))
	if obj.Size() != 0 {
		t.Fatalf("Size = %d, want 0", obj.Size())
	}
	if err := obj.GetRange(testContext(t), nil, 0); err != nil {
		t.Fatalf("GetRange of nothing: %v", err)
	}
	err := obj.GetRange(testContext(t), make([]byte, 1), 0)
	if err == nil || !store.IsPermanent(err) {
		t.Fatalf("GetRange past the end = %v, want a permanent error", err)
	}
}

func TestOutOfRange(t *testing.T) {
	srv := gw.Server(t)
	bucket := srv.NewBucket(t, false)
	srv.Put(t, bucket, "k", pattern.Random(100, 3))
	obj := openObject(t, "s3://"+bucket+"/k", options(srv))
	for _, c := range []struct {
		off int64
		n   int
	}{{-1, 1}, {0, 101}, {100, 1}, {99, 2}} {
		err := obj.GetRange(testContext(t), make([]byte, c.n), c.off)
		if err == nil || !store.IsPermanent(err) || !strings.Contains(err.Error(), "s3://"+bucket+"/k") {
			t.Errorf("GetRange(off %d, len %d) = %v, want a permanent error naming the object", c.off, c.n, err)
		}
	}
}

// TestEnvironment opens with Options left empty: the endpoint, region and
// credentials all come from the environment, through the SDK's standard
// configuration.
func TestEnvironment(t *testing.T) {
	srv := gw.Server(t)
	bucket := srv.NewBucket(t, false)
	data := pattern.Random(10000, 4)
	srv.Put(t, bucket, "k", data)
	srv.SetEnv(t)

	c, err := s3store.NewClient(testContext(t), s3store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Endpoint() != srv.Endpoint {
		t.Errorf("Endpoint = %q, want AWS_ENDPOINT_URL %q", c.Endpoint(), srv.Endpoint)
	}
	if !c.S3().Options().UsePathStyle {
		t.Error("an endpoint from AWS_ENDPOINT_URL should mean path-style addressing")
	}
	obj, err := c.Open(testContext(t), "s3://"+bucket+"/k")
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Close()
	if want := "s3:" + srv.Endpoint + "/" + bucket + "/k"; obj.Key() != want {
		t.Errorf("Key = %q, want %q", obj.Key(), want)
	}
	checkRange(t, obj, data, 0, len(data))
}

// TestReplaced replaces an object that is open: reads must fail with
// ErrChanged, permanently, and never hand out the new bytes.
func TestReplaced(t *testing.T) {
	srv := gw.Server(t)
	bucket := srv.NewBucket(t, false)
	old := pattern.Random(1<<20, 5)
	srv.Put(t, bucket, "k", old)
	obj := openObject(t, "s3://"+bucket+"/k", options(srv))
	checkRange(t, obj, old, 0, 4096)

	for _, size := range []int{len(old), len(old) / 2, len(old) * 2} {
		srv.Put(t, bucket, "k", pattern.Random(size, uint64(6+size)))
		p := bytes.Repeat([]byte{0xA5}, 4096)
		err := obj.GetRange(testContext(t), p, 8192)
		checkChanged(t, err, bucket, 8192)
		if !bytes.Equal(p, bytes.Repeat([]byte{0xA5}, 4096)) {
			t.Fatalf("new size %d: GetRange failed but wrote into the buffer", size)
		}
	}
}

func checkChanged(t *testing.T, err error, bucket string, off int64) {
	t.Helper()
	switch {
	case err == nil:
		t.Fatal("GetRange of a replaced object succeeded")
	case !errors.Is(err, store.ErrChanged):
		t.Fatalf("GetRange = %v, want ErrChanged", err)
	case !store.IsPermanent(err):
		t.Fatalf("GetRange = %v, want a permanent error", err)
	case !strings.Contains(err.Error(), fmt.Sprintf("s3://%s/k at offset %d", bucket, off)):
		t.Fatalf("GetRange = %v, want it to name the object and offset", err)
	}
}

func TestDeleted(t *testing.T) {
	srv := gw.Server(t)
	bucket := srv.NewBucket(t, false)
	srv.Put(t, bucket, "k", pattern.Random(5000, 7))
	obj := openObject(t, "s3://"+bucket+"/k", options(srv))
	srv.Delete(t, bucket, "k")
	checkChanged(t, obj.GetRange(testContext(t), make([]byte, 10), 10), bucket, 10)
}

// TestVersioned pins a VersionId: versitygw keeps replaced versions in its
// versioning directory and serves them by VersionId, so an open object
// still reads its own bytes after the key gets new ones, and even after the
// key is deleted (a delete marker hides it but keeps the version), until
// the version itself is deleted.
func TestVersioned(t *testing.T) {
	srv := gw.Server(t)
	bucket := srv.NewBucket(t, true)
	old := pattern.Random(1<<20+1, 8)
	etag, version := srv.Put(t, bucket, "k", old)
	if version == "" {
		t.Fatal("PutObject in a versioned bucket gave no VersionId")
	}
	obj := openObject(t, "s3://"+bucket+"/k", options(srv))
	if obj.Version() != version || obj.VersionID() != version || obj.ETag() != etag {
		t.Fatalf("Version %q, VersionID %q, ETag %q; want VersionId %q and ETag %q",
			obj.Version(), obj.VersionID(), obj.ETag(), version, etag)
	}

	newer := pattern.Random(2<<20, 9)
	_, newVersion := srv.Put(t, bucket, "k", newer)
	checkRange(t, obj, old, 0, len(old))

	srv.Delete(t, bucket, "k")
	checkRange(t, obj, old, 12345, 4096)

	// The key's latest version is a delete marker; the newer version is
	// still there by its id, and a fresh Open finds no key.
	if _, err := s3store.Open(testContext(t), "s3://"+bucket+"/k", options(srv)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open of a deleted key = %v, want ErrNotExist", err)
	}
	if newVersion == version {
		t.Errorf("the second PutObject reused VersionId %q", version)
	}

	// Deleting the pinned version itself is a change: versitygw answers
	// 404 NoSuchKey.
	key := "k"
	if _, err := srv.Client.DeleteObject(testContext(t), &s3.DeleteObjectInput{Bucket: &bucket, Key: &key, VersionId: &version}); err != nil {
		t.Fatal(err)
	}
	checkChanged(t, obj.GetRange(testContext(t), make([]byte, 10), 10), bucket, 10)
}

// TestOpenVersion opens a named version: by VersionId, an old version
// the key has moved past, and its bytes; by ETag, only the current one.
func TestOpenVersion(t *testing.T) {
	srv := gw.Server(t)
	c, err := s3store.NewClient(testContext(t), options(srv))
	if err != nil {
		t.Fatal(err)
	}
	versioned := srv.NewBucket(t, true)
	uri := "s3://" + versioned + "/k"
	old := pattern.Random(1<<20+3, 10)
	_, oldVersion := srv.Put(t, versioned, "k", old)
	newer := pattern.Random(1<<19, 11)
	srv.Put(t, versioned, "k", newer)
	obj, err := c.OpenVersion(testContext(t), uri, oldVersion)
	if err != nil {
		t.Fatalf("OpenVersion(%s, %s): %v", uri, oldVersion, err)
	}
	if obj.Size() != int64(len(old)) || obj.Version() != oldVersion {
		t.Fatalf("OpenVersion: size %d version %q, want %d and %q", obj.Size(), obj.Version(), len(old), oldVersion)
	}
	checkRange(t, obj, old, 0, len(old))
	if cur := openObject(t, uri, options(srv)); cur.Size() != int64(len(newer)) {
		t.Fatalf("Open: size %d, want the newer version's %d", cur.Size(), len(newer))
	}
	// A version deleted since, and ids the server cannot even parse.
	key := "k"
	if _, err := srv.Client.DeleteObject(testContext(t), &s3.DeleteObjectInput{Bucket: &versioned, Key: &key, VersionId: &oldVersion}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{oldVersion, "no-such-version-id", "3/HL7qXGfb4B5ZY1tmx0UGm2vNl0qKl4"} {
		_, err := c.OpenVersion(testContext(t), uri, bad)
		checkOpenError(t, uri, err, fmt.Sprintf("no version %q of key", bad), fs.ErrNotExist, srv.Endpoint)
		if !store.IsPermanent(err) {
			t.Errorf("OpenVersion(%s) = %v, want a permanent error", bad, err)
		}
	}

	plain := srv.NewBucket(t, false)
	uri = "s3://" + plain + "/k"
	oldETag, _ := srv.Put(t, plain, "k", old)
	obj, err = c.OpenVersion(testContext(t), uri, oldETag)
	if err != nil {
		t.Fatalf("OpenVersion(%s, %s): %v", uri, oldETag, err)
	}
	checkRange(t, obj, old, 0, 4096)
	newETag, _ := srv.Put(t, plain, "k", newer)
	_, err = c.OpenVersion(testContext(t), uri, oldETag)
	checkOpenError(t, uri, err, "now has ETag "+newETag, store.ErrChanged, srv.Endpoint)
}

func TestOpenNotFound(t *testing.T) {
	srv := gw.Server(t)
	bucket := srv.NewBucket(t, false)
	for _, c := range []struct{ uri, want string }{
		{"s3://" + bucket + "/no/such/key", `no such key "no/such/key" in bucket "` + bucket + `"`},
		{"s3://no-such-bucket/k", `no such bucket "no-such-bucket"`},
	} {
		_, err := s3store.Open(testContext(t), c.uri, options(srv))
		checkOpenError(t, c.uri, err, c.want, fs.ErrNotExist, srv.Endpoint)
		if !store.IsPermanent(err) {
			t.Errorf("Open(%s) = %v, want a permanent error", c.uri, err)
		}
	}
}

func checkOpenError(t *testing.T, uri string, err error, want string, is error, endpoint string) {
	t.Helper()
	switch {
	case err == nil:
		t.Fatalf("Open(%s) succeeded", uri)
	case !strings.Contains(err.Error(), want):
		t.Errorf("Open(%s) = %v, want it to say %q", uri, err, want)
	case !strings.Contains(err.Error(), uri):
		t.Errorf("Open(%s) = %v, want it to name the object", uri, err)
	case !strings.Contains(err.Error(), endpoint):
		t.Errorf("Open(%s) = %v, want it to name the endpoint %s", uri, err, endpoint)
	case is != nil && !errors.Is(err, is):
		t.Errorf("Open(%s) = %v, want errors.Is %v", uri, err, is)
	}
}

func TestWrongCredentials(t *testing.T) {
	srv := gw.Server(t)
	bucket := srv.NewBucket(t, false)
	srv.Put(t, bucket, "k", pattern.Random(100, 10))
	uri := "s3://" + bucket + "/k"
	for _, c := range []struct{ name, access, secret, want string }{
		{"wrong secret", srv.AccessKey, "not-the-secret", "the secret access key does not match the access key id"},
		{"unknown access key", "no-such-user", srv.SecretKey, "the endpoint knows no such access key id"},
	} {
		t.Run(c.name, func(t *testing.T) {
			opts := options(srv)
			opts.Credentials = credentials.NewStaticCredentialsProvider(c.access, c.secret, "")
			_, err := s3store.Open(testContext(t), uri, opts)
			checkOpenError(t, uri, err, "access denied ("+c.want+")", fs.ErrPermission, srv.Endpoint)
			if !store.IsPermanent(err) {
				t.Errorf("Open = %v, want a permanent error", err)
			}
		})
	}
}

func TestUnreachable(t *testing.T) {
	// A port that was free a moment ago: connections are refused at once.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "http://" + l.Addr().String()
	l.Close()

	opts := s3store.Options{
		Endpoint:       endpoint,
		Credentials:    credentials.NewStaticCredentialsProvider("a", "b", ""),
		ConnectTimeout: 2 * time.Second,
	}
	_, err = s3store.Open(testContext(t), "s3://bucket/key", opts)
	checkOpenError(t, "s3://bucket/key", err, "endpoint "+endpoint+" unreachable", nil, endpoint)
	if store.IsPermanent(err) {
		t.Errorf("Open = %v: an unreachable endpoint may come back, so the error should not be permanent", err)
	}
}

func TestBadURI(t *testing.T) {
	opts := s3store.Options{Endpoint: "http://127.0.0.1:1", Credentials: credentials.NewStaticCredentialsProvider("a", "b", "")}
	for _, uri := range []string{"s3://", "s3://bucket", "s3://bucket/", "s3://Bad_Bucket!/k", "http://bucket/key", "bucket/key"} {
		_, err := s3store.Open(testContext(t), uri, opts)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%q", uri)) {
			t.Errorf("Open(%q) = %v, want an error naming the URI", uri, err)
		}
	}
}

// TestCanceled: a read whose context ends is not the object's fault, so
// remote may retry it.
func TestCanceled(t *testing.T) {
	srv := gw.Server(t)
	bucket := srv.NewBucket(t, false)
	srv.Put(t, bucket, "k", pattern.Random(100, 11))
	obj := openObject(t, "s3://"+bucket+"/k", options(srv))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err := obj.GetRange(ctx, make([]byte, 10), 0)
	if err == nil || store.IsPermanent(err) || !errors.Is(err, context.Canceled) {
		t.Fatalf("GetRange with a canceled context = %v, want a retryable error wrapping context.Canceled", err)
	}
}

// TestSharedClient opens many objects with one Client and reads them one
// after another: every request must go over the one connection that the
// first opened (versitygw runs with --keep-alive).
func TestSharedClient(t *testing.T) {
	srv := gw.Server(t)
	bucket := srv.NewBucket(t, false)
	var dials atomic.Int64
	cfg := aws.Config{HTTPClient: countingClient(&dials)}
	opts := options(srv)
	opts.Config = &cfg
	c, err := s3store.NewClient(testContext(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		data := pattern.Random(50000, uint64(20+i))
		key := fmt.Sprintf("obj-%d", i)
		srv.Put(t, bucket, key, data)
		obj, err := c.Open(testContext(t), "s3://"+bucket+"/"+key)
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off < len(data); off += 10000 {
			checkRange(t, obj, data, int64(off), 10000)
		}
		obj.Close()
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("30 requests made %d connections, want 1", n)
	}
}

// countingClient is the SDK's HTTP client with a dialer that counts the
// connections it opens.
func countingClient(dials *atomic.Int64) *awshttp.BuildableClient {
	return awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
		dial := (&net.Dialer{Timeout: 5 * time.Second}).DialContext
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return dial(ctx, network, addr)
		}
	})
}

// BenchmarkGetRange4K: one ranged GET of 4 KiB from the local versitygw at
// a time, the request a lone fault makes; ns/op is its latency, and
// allocs/op what the client spends on it beside the server's work.
func BenchmarkGetRange4K(b *testing.B) {
	srv := gw.Server(b)
	bucket := srv.NewBucket(b, false)
	data := pattern.Random(16<<20, 7)
	srv.Put(b, bucket, "bench.bin", data)
	obj, err := s3store.Open(b.Context(), "s3://"+bucket+"/bench.bin", options(srv))
	if err != nil {
		b.Fatal(err)
	}
	p := make([]byte, 4096)
	b.ReportAllocs()
	i := int64(0)
	for b.Loop() {
		off := (i * 4096 * 7919) % int64(len(data)-4096) &^ 4095
		if err := obj.GetRange(b.Context(), p, off); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// In a bucket whose versioning is suspended, a PutObject replaces the
// key's null version in place. AWS S3 and MinIO call it VersionId "null"
// (TestFakeNullVersionID); versitygw gives no VersionId at all. Either
// way the version pinned is the ETag, so that two Opens across a
// replacement have different versions (a cache of the first is never taken
// for the second), and the first reads its own bytes or ErrChanged.
func TestSuspendedVersioningNullVersion(t *testing.T) {
	srv := gw.Server(t)
	bucket := srv.NewBucket(t, true)
	if _, err := srv.Client.PutBucketVersioning(testContext(t), &s3.PutBucketVersioningInput{
		Bucket:                  &bucket,
		VersioningConfiguration: &types.VersioningConfiguration{Status: types.BucketVersioningStatusSuspended},
	}); err != nil {
		t.Fatal(err)
	}
	uri := "s3://" + bucket + "/k"
	old := pattern.Random(1<<20, 12)
	etag, version := srv.Put(t, bucket, "k", old)
	obj := openObject(t, uri, options(srv))
	t.Logf("suspended versioning: PutObject gave VersionId %q; HeadObject %q", version, obj.VersionID())
	if obj.Version() != etag {
		t.Fatalf("Version %q (VersionId %q); want the ETag %s: a null version names no fixed bytes", obj.Version(), obj.VersionID(), etag)
	}
	checkRange(t, obj, old, 0, 4096)
	etag2, _ := srv.Put(t, bucket, "k", pattern.Random(1<<20, 13))
	again := openObject(t, uri, options(srv))
	if again.Version() != etag2 || again.Version() == obj.Version() {
		t.Fatalf("after a replacement: Version %q, before %q; want the new ETag %s", again.Version(), obj.Version(), etag2)
	}
	checkChanged(t, obj.GetRange(testContext(t), make([]byte, 4096), 8192), bucket, 8192)
}
