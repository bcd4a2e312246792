package s3store_test

import (
	"bytes"
	"fmt"
	"io/fs"
	"net/http"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"

	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/store"
	"github.com/filemap/filemap/store/s3store"
)

// recorder is the SDK's HTTP client, recording each request as its method
// and Range.
type recorder struct {
	next aws.HTTPClient
	mu   sync.Mutex
	reqs []string
}

func (r *recorder) Do(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.reqs = append(r.reqs, req.Method+" "+req.Header.Get("Range"))
	r.mu.Unlock()
	return r.next.Do(req)
}

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	reqs := r.reqs
	r.reqs = nil
	return reqs
}

// With Prime, Open's one request is a ranged GET of the object's first
// bytes: it pins size and version as a HEAD does, and its bytes come with
// the Object, once. A shorter object comes whole; an empty one, which has
// no first byte, is asked for with a HEAD; a missing key, an old version
// and a changed ETag fail as they do without Prime.
func TestOpenPrimed(t *testing.T) {
	const prime = 256 << 10
	srv := gw.Server(t)
	rec := &recorder{next: awshttp.NewBuildableClient()}
	cfg := aws.Config{HTTPClient: rec}
	opts := options(srv)
	opts.Config, opts.Prime = &cfg, prime
	c, err := s3store.NewClient(testContext(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	bucket, versioned := srv.NewBucket(t, false), srv.NewBucket(t, true)
	open := func(uri, version string, data []byte, wantReqs ...string) *s3store.Object {
		t.Helper()
		rec.take()
		obj, err := c.OpenVersion(testContext(t), uri, version)
		if err != nil {
			t.Fatalf("OpenVersion(%s, %q): %v", uri, version, err)
		}
		if reqs := rec.take(); fmt.Sprint(reqs) != fmt.Sprint(wantReqs) {
			t.Errorf("OpenVersion(%s, %q) sent %q; want %q", uri, version, reqs, wantReqs)
		}
		if obj.Size() != int64(len(data)) {
			t.Errorf("OpenVersion(%s, %q): size %d, want %d", uri, version, obj.Size(), len(data))
		}
		want := data[:min(prime, len(data))]
		if off, b := obj.Primed(); off != 0 || !bytes.Equal(b, want) {
			t.Errorf("OpenVersion(%s, %q): primed %d bytes at %d, want the first %d", uri, version, len(b), off, len(want))
		}
		if _, b := obj.Primed(); len(b) != 0 {
			t.Errorf("OpenVersion(%s, %q): primed bytes a second time", uri, version)
		}
		return obj
	}
	first := fmt.Sprintf("GET bytes=0-%d", prime-1)

	data := pattern.Random(3<<20+5, 30)
	etag, _ := srv.Put(t, bucket, "big", data)
	obj := open("s3://"+bucket+"/big", "", data, first)
	if obj.Version() != etag {
		t.Errorf("Version %q, want the ETag %q", obj.Version(), etag)
	}
	checkRange(t, obj, data, prime, 4096)
	small := pattern.Random(1000, 31)
	srv.Put(t, bucket, "small", small)
	open("s3://"+bucket+"/small", "", small, first)
	srv.Put(t, bucket, "empty", nil)
	open("s3://"+bucket+"/empty", "", nil, first, "HEAD ")

	old := pattern.Random(prime+7, 32)
	_, oldVersion := srv.Put(t, versioned, "k", old)
	srv.Put(t, versioned, "k", data)
	if obj := open("s3://"+versioned+"/k", oldVersion, old, first); obj.Version() != oldVersion {
		t.Errorf("Version %q, want the VersionId %q", obj.Version(), oldVersion)
	}

	uri := "s3://" + bucket + "/no/such/key"
	_, err = c.Open(testContext(t), uri)
	checkOpenError(t, uri, err, `no such key "no/such/key"`, fs.ErrNotExist, srv.Endpoint)
	uri = "s3://" + bucket + "/big"
	newETag, _ := srv.Put(t, bucket, "big", small)
	_, err = c.OpenVersion(testContext(t), uri, etag)
	checkOpenError(t, uri, err, "now has ETag "+newETag, store.ErrChanged, srv.Endpoint)
}
