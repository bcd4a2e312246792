package s3store_test

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/filemap/filemap/store"
	"github.com/filemap/filemap/store/s3store"
)

// These tests put a misbehaving server on 127.0.0.1 in front of an
// Object, for the answers versitygw never gives: a server or cache that
// ignores Range or If-Match, a body cut short, a 5xx.

const fakeSize = 1000

// fakeS3 answers HEAD with fakeSize bytes and ETag "v1", and GET with get.
func fakeS3(t *testing.T, get http.HandlerFunc) (obj *s3store.Object, gets *atomic.Int64) {
	t.Helper()
	gets = new(atomic.Int64)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead {
			w.Header().Set("Content-Length", strconv.Itoa(fakeSize))
			w.Header().Set("ETag", `"v1"`)
			return
		}
		gets.Add(1)
		get(w, r)
	}))
	t.Cleanup(srv.Close)
	opts := s3store.Options{Endpoint: srv.URL, Credentials: someCredentials}
	return openObject(t, "s3://bucket/key", opts), gets
}

// rangeBody is what a well-behaved server sends for bytes=a-b of an object
// whose byte i is i%251, with the given ETag and total size.
func rangeBody(w http.ResponseWriter, r *http.Request, etag string, total int) {
	var first, last int
	if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &first, &last); err != nil {
		http.Error(w, "bad range", http.StatusBadRequest)
		return
	}
	w.Header().Set("ETag", etag)
	w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, last, total))
	w.Header().Set("Content-Length", strconv.Itoa(last-first+1))
	w.WriteHeader(http.StatusPartialContent)
	for i := first; i <= last; i++ {
		w.Write([]byte{byte(i % 251)})
	}
}

func TestFakeWellBehaved(t *testing.T) {
	obj, _ := fakeS3(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("If-Match") != `"v1"` {
			t.Errorf("If-Match = %q, want the ETag from HEAD", r.Header.Get("If-Match"))
		}
		rangeBody(w, r, `"v1"`, fakeSize)
	})
	p := make([]byte, 100)
	if err := obj.GetRange(testContext(t), p, 500); err != nil {
		t.Fatal(err)
	}
	for i, b := range p {
		if b != byte((500+i)%251) {
			t.Fatalf("byte %d is %d", 500+i, b)
		}
	}
}

func TestFakeChangedWithoutPrecondition(t *testing.T) {
	for name, get := range map[string]http.HandlerFunc{
		"other ETag": func(w http.ResponseWriter, r *http.Request) { rangeBody(w, r, `"v2"`, fakeSize) },
		"other size": func(w http.ResponseWriter, r *http.Request) { rangeBody(w, r, `"v1"`, fakeSize+1) },
		"412": func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusPreconditionFailed)
			io.WriteString(w, `<Error><Code>PreconditionFailed</Code><Message>no</Message></Error>`)
		},
		"416": func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
			io.WriteString(w, `<Error><Code>InvalidRange</Code><Message>no</Message></Error>`)
		},
	} {
		t.Run(name, func(t *testing.T) {
			obj, _ := fakeS3(t, get)
			err := obj.GetRange(testContext(t), make([]byte, 10), 20)
			if !errors.Is(err, store.ErrChanged) || !store.IsPermanent(err) {
				t.Fatalf("GetRange = %v, want a permanent ErrChanged", err)
			}
			if !strings.Contains(err.Error(), "s3://bucket/key at offset 20, length 10") {
				t.Errorf("GetRange = %v, want it to name the object, offset and length", err)
			}
		})
	}
}

func TestFakeIgnoredRange(t *testing.T) {
	obj, _ := fakeS3(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		w.Write(make([]byte, fakeSize))
	})
	err := obj.GetRange(testContext(t), make([]byte, 10), 20)
	if err == nil || !store.IsPermanent(err) || !strings.Contains(err.Error(), "ignored the Range") {
		t.Fatalf("GetRange = %v, want a permanent error about the ignored Range", err)
	}
	// The whole object in one read needs no Range.
	if err := obj.GetRange(testContext(t), make([]byte, fakeSize), 0); err != nil {
		t.Fatalf("GetRange of the whole object from a 200: %v", err)
	}
}

func TestFakeWrongRange(t *testing.T) {
	obj, _ := fakeS3(t, func(w http.ResponseWriter, r *http.Request) {
		r.Header.Set("Range", "bytes=0-9")
		rangeBody(w, r, `"v1"`, fakeSize)
	})
	err := obj.GetRange(testContext(t), make([]byte, 10), 20)
	if err == nil || !store.IsPermanent(err) || !strings.Contains(err.Error(), "sent bytes 0-9") {
		t.Fatalf("GetRange = %v, want a permanent error about the range sent", err)
	}
}

func TestFakeShortBody(t *testing.T) {
	obj, _ := fakeS3(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		w.Header().Set("Content-Range", "bytes 20-29/1000")
		w.Header().Set("Content-Length", "10")
		w.WriteHeader(http.StatusPartialContent)
		w.Write([]byte("12345")) // the server closes the connection after 5 of 10 bytes
	})
	err := obj.GetRange(testContext(t), make([]byte, 10), 20)
	if !errors.Is(err, io.ErrUnexpectedEOF) || store.IsPermanent(err) {
		t.Fatalf("GetRange = %v, want a retryable io.ErrUnexpectedEOF", err)
	}
}

// TestFakeOneAttempt: a 5xx or a throttle is retryable, and left to
// store/remote to retry: the SDK makes exactly one request.
func TestFakeOneAttempt(t *testing.T) {
	for _, c := range []struct {
		status int
		code   string
	}{{500, "InternalError"}, {503, "SlowDown"}, {429, "TooManyRequests"}} {
		obj, gets := fakeS3(t, func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(c.status)
			fmt.Fprintf(w, `<Error><Code>%s</Code><Message>later</Message></Error>`, c.code)
		})
		err := obj.GetRange(testContext(t), make([]byte, 10), 20)
		if err == nil || store.IsPermanent(err) {
			t.Errorf("%d %s: GetRange = %v, want a retryable error", c.status, c.code, err)
		}
		if n := gets.Load(); n != 1 {
			t.Errorf("%d %s: %d GET requests, want 1: remote does the retrying", c.status, c.code, n)
		}
	}
}

// TestFakePresigned: each ranged GET goes to a URL presigned for the pinned
// version, with the Range and If-Match headers beside the signature; a 403
// is met by presigning again, once (credentials that expired or rotated),
// and a second 403 is the permanent "access denied" it says.
func TestFakePresigned(t *testing.T) {
	var refuse atomic.Int64
	obj, gets := fakeS3(t, func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("X-Amz-Signature") == "" || q.Get("X-Amz-Credential") == "" {
			t.Errorf("GET %s: not presigned", r.URL)
		}
		if r.Header.Get("Range") == "" || r.Header.Get("If-Match") != `"v1"` {
			t.Errorf("GET with Range %q, If-Match %q", r.Header.Get("Range"), r.Header.Get("If-Match"))
		}
		if refuse.Add(-1) >= 0 {
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, `<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>`)
			return
		}
		rangeBody(w, r, `"v1"`, fakeSize)
	})
	refuse.Store(1)
	if err := obj.GetRange(testContext(t), make([]byte, 10), 20); err != nil {
		t.Fatalf("GetRange after one 403: %v", err)
	}
	if n := gets.Load(); n != 2 {
		t.Errorf("%d GETs for one 403 and a success, want 2", n)
	}
	refuse.Store(2)
	err := obj.GetRange(testContext(t), make([]byte, 10), 20)
	if !errors.Is(err, fs.ErrPermission) || !store.IsPermanent(err) || !strings.Contains(err.Error(), "AccessDenied") {
		t.Fatalf("GetRange after two 403s = %v, want a permanent ErrPermission naming AccessDenied", err)
	}
	if n := gets.Load(); n != 4 {
		t.Errorf("%d GETs in all, want 4: one new presign per GetRange, no more", n)
	}
}

// A VersionId of "null", which S3 gives a key written while versioning
// was off or suspended and reuses for the next such write, pins nothing
// (versitygw never sends one): the version is the ETag, and reads still
// ask for the null version and check the ETag.
func TestFakeNullVersionID(t *testing.T) {
	var versionAsked atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("x-amz-version-id", "null")
		if r.Method == http.MethodHead {
			w.Header().Set("Content-Length", strconv.Itoa(fakeSize))
			w.Header().Set("ETag", `"v1"`)
			return
		}
		versionAsked.Store(r.URL.Query().Get("versionId"))
		rangeBody(w, r, `"v1"`, fakeSize)
	}))
	t.Cleanup(srv.Close)
	obj := openObject(t, "s3://bucket/key", s3store.Options{Endpoint: srv.URL, Credentials: someCredentials})
	if obj.Version() != `"v1"` || obj.VersionID() != "null" {
		t.Fatalf("Version %q, VersionID %q; want the ETag, the VersionId kept as sent", obj.Version(), obj.VersionID())
	}
	p := make([]byte, 100)
	if err := obj.GetRange(testContext(t), p, 10); err != nil || p[0] != 10 {
		t.Fatalf("GetRange = %v, first byte %d", err, p[0])
	}
	if v, _ := versionAsked.Load().(string); v != "null" {
		t.Errorf("GET asked for versionId %q; want the null version's", v)
	}
}
