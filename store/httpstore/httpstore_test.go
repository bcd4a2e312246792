package httpstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/filemap/filemap/store"
	"github.com/filemap/filemap/store/remote"
)

const testSize = 300<<10 + 123

// getAndCheck reads n bytes at off with GetRange and checks them.
func getAndCheck(t *testing.T, o *Object, data []byte, off int64, n int) {
	t.Helper()
	p := make([]byte, n)
	if err := o.GetRange(context.Background(), p, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, data[off:off+int64(n)]) {
		t.Fatalf("GetRange(%d bytes at %d): wrong bytes", n, off)
	}
}

func TestOpenPinsSizeAndVersion(t *testing.T) {
	data := reference(testSize)
	s := newServer(t, data, false, nil)
	o := openServer(t, s, Options{})
	if o.Size() != testSize || o.Version() != `"v1"` || o.Key() != s.URL+"/obj" {
		t.Fatalf("Size %d Version %q Key %q", o.Size(), o.Version(), o.Key())
	}
	if s.heads.Load() != 1 || s.gets.Load() != 0 {
		t.Fatalf("Open made %d HEADs and %d GETs; want one HEAD", s.heads.Load(), s.gets.Load())
	}
	getAndCheck(t, o, data, 0, 1)
	getAndCheck(t, o, data, testSize-5000, 5000)
	getAndCheck(t, o, data, 12345, 100000)
}

// HEAD refused or without Content-Length: a one-byte GET tells size,
// version and range support.
func TestOpenFallsBackToProbe(t *testing.T) {
	for name, setup := range map[string]func(*testServer){
		"HEAD refused":           func(s *testServer) { s.refuseHead = true },
		"HEAD without length":    func(s *testServer) { s.headNoLength = true },
		"HEAD refused, no ETag":  func(s *testServer) { s.refuseHead, s.etag = true, "" },
		"HEAD refused, no bytes": func(s *testServer) { s.refuseHead, s.data = true, nil },
	} {
		t.Run(name, func(t *testing.T) {
			data := reference(testSize)
			s := newServer(t, data, false, func(s *testServer) { s.data = data; setup(s) })
			o := openServer(t, s, Options{})
			if o.Size() != int64(len(s.data)) || s.gets.Load() != 1 {
				t.Fatalf("Size %d after %d GETs; want %d after one probe", o.Size(), s.gets.Load(), len(s.data))
			}
			want := `"v1"`
			if s.etag == "" {
				want = "lm:Thu, 02 Jan 2025 03:04:05 GMT"
			}
			if o.Version() != want {
				t.Fatalf("Version %q; want %q", o.Version(), want)
			}
			if len(s.data) > 0 {
				getAndCheck(t, o, data, 777, 4096)
			}
		})
	}
}

func TestOpenWithoutRangeSupport(t *testing.T) {
	s := newServer(t, reference(testSize), false, func(s *testServer) { s.noRanges = true })
	_, err := Open(context.Background(), s.URL+"/obj", Options{Client: testClient(t, s, 2)})
	if err == nil || !strings.Contains(err.Error(), "server does not support byte ranges") || !strings.Contains(err.Error(), s.URL+"/obj") {
		t.Fatalf("Open = %v; want an error saying the server does not support byte ranges, naming the URL", err)
	}
}

func TestOpenErrors(t *testing.T) {
	s := newServer(t, reference(100), false, nil)
	u := strings.Replace(s.URL, "http://", "http://user:secret@", 1)
	for _, c := range []struct {
		url  string
		is   error
		says []string
	}{
		{s.URL + "/missing", fs.ErrNotExist, []string{s.URL + "/missing", "404"}},
		{u + "/missing", fs.ErrNotExist, []string{s.URL + "/missing", "404"}},
		{u + "/forbidden", fs.ErrPermission, []string{"403"}},
		{"ftp://host/x", nil, []string{"not an http"}},
		{"http://", nil, []string{"not an http"}},
		{"http://[::1", nil, []string{"bad URL"}},
	} {
		_, err := Open(context.Background(), c.url, Options{Client: testClient(t, s, 2)})
		if err == nil || (c.is != nil && !errors.Is(err, c.is)) || strings.Contains(err.Error(), "secret") {
			t.Errorf("Open(%s) = %v; want an error wrapping %v, without the password", c.url, err, c.is)
			continue
		}
		for _, want := range c.says {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("Open(%s) = %q; want it to say %q", c.url, err, want)
			}
		}
	}
}

// The URL's userinfo is sent as basic auth but kept out of the Key.
func TestUserinfo(t *testing.T) {
	data := reference(testSize)
	var auth sync.Map
	s := newServer(t, data, false, func(s *testServer) {
		s.fault = func(w http.ResponseWriter, r *http.Request, _ []byte) bool {
			user, pass, _ := r.BasicAuth()
			auth.Store(user+":"+pass, true)
			return false
		}
	})
	u := strings.Replace(s.URL, "http://", "http://user:secret@", 1) + "/obj"
	o, err := Open(context.Background(), u, Options{Client: testClient(t, s, 2), Header: http.Header{"X-Test": {"1"}}})
	if err != nil {
		t.Fatal(err)
	}
	getAndCheck(t, o, data, 10, 10)
	if _, ok := auth.Load("user:secret"); !ok || strings.Contains(o.Key(), "secret") {
		t.Fatalf("Key %q; basic auth sent: %v", o.Key(), ok)
	}
}

// Each kind of validator pins a version, and a change of the resource is
// ErrChanged, except without any validator, where only a change of size
// shows.
func TestVersionsAndChanges(t *testing.T) {
	lm := "lm:Thu, 02 Jan 2025 03:04:05 GMT"
	for _, c := range []struct {
		name, etag, version, newETag string
		noLM, ignoreIUS, detected    bool
	}{
		{"strong ETag", `"v1"`, `"v1"`, `"v2"`, false, false, true},
		{"Last-Modified", "", lm, "", false, false, true},
		{"Last-Modified, If-Unmodified-Since ignored", "", lm, "", false, true, true},
		{"weak ETag", `W/"w1"`, `W/"w1"`, `W/"w2"`, true, false, true},
		{"weak ETag and Last-Modified", `W/"w1"`, lm, `W/"w2"`, false, false, true},
		{"no validator", "", "", "", true, false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			data := reference(testSize)
			s := newServer(t, data, false, func(s *testServer) {
				s.etag = c.etag
				if c.noLM {
					s.modTime = time.Time{}
				}
				if c.ignoreIUS { // If-Range alone then gets a 200
					s.fault = func(_ http.ResponseWriter, r *http.Request, _ []byte) bool {
						r.Header.Del("If-Unmodified-Since")
						return false
					}
				}
			})
			o := openServer(t, s, Options{})
			if o.Version() != c.version {
				t.Fatalf("Version %q; want %q", o.Version(), c.version)
			}
			getAndCheck(t, o, data, 100, 5000)
			changedData := bytes.Clone(data)
			changedData[200] ^= 0xff
			s.change(changedData, c.newETag)
			err := o.GetRange(context.Background(), make([]byte, 5000), 100)
			if c.detected != errors.Is(err, store.ErrChanged) || (err != nil && !store.IsPermanent(err)) {
				t.Fatalf("GetRange after a change = %v; want ErrChanged: %v", err, c.detected)
			}
			if !c.detected { // the size is all we can check
				s.change(data[:testSize-1], "")
				if err := o.GetRange(context.Background(), make([]byte, 10), 100); !errors.Is(err, store.ErrChanged) {
					t.Fatalf("GetRange after a change of size = %v; want ErrChanged", err)
				}
			}
		})
	}
}

// Each bad answer is an error of the right kind that names the URL, offset
// and length, and never writes past p.
func TestGetRangeErrors(t *testing.T) {
	type kind int
	const (
		retry kind = iota
		permanent
	)
	for _, c := range []struct {
		name  string
		fault func(t *testing.T) fault
		kind  kind
		is    error
		says  string
	}{
		{"500", func(*testing.T) fault { return status(500) }, retry, nil, "500 Internal Server Error"},
		{"503", func(*testing.T) fault { return status(503) }, retry, nil, "503"},
		{"429", func(*testing.T) fault { return status(429) }, retry, nil, "429"},
		{"404", func(*testing.T) fault { return status(404) }, permanent, fs.ErrNotExist, "404"},
		{"403", func(*testing.T) fault { return status(403) }, permanent, fs.ErrPermission, "403"},
		{"401", func(*testing.T) fault { return status(401) }, permanent, fs.ErrPermission, "401"},
		{"412", func(*testing.T) fault { return status(412) }, permanent, store.ErrChanged, "412"},
		{"416", func(*testing.T) fault { return status(416) }, permanent, store.ErrChanged, "shorter"},
		{"connection reset", reset, retry, nil, ""},
		{"short body", func(t *testing.T) fault { return partial(t, false, 100, false) }, retry, io.ErrUnexpectedEOF, "body ended after 9900 of 10000 bytes"},
		{"lying Content-Length", func(t *testing.T) fault { return partial(t, true, 100, false) }, retry, io.ErrUnexpectedEOF, ""},
		{"body longer than asked", longer, permanent, nil, "longer"},
		{"200 instead of 206", func(*testing.T) fault { return whole }, permanent, nil, "ignored the Range header"},
		{"wrong Content-Range", func(t *testing.T) fault {
			return withContentRange(t, func(f, l int64, size int) string { return fmt.Sprintf("bytes %d-%d/%d", f+1, l+1, size) })
		}, permanent, nil, "asked for bytes 12295-22294"},
		{"short Content-Range", func(t *testing.T) fault {
			return withContentRange(t, func(f, l int64, size int) string { return fmt.Sprintf("bytes %d-%d/%d", f, l-1, size) })
		}, permanent, nil, "got Content-Range"},
		{"no Content-Range", func(t *testing.T) fault {
			return withContentRange(t, func(int64, int64, int) string { return "" })
		}, permanent, nil, "without Content-Range"},
		{"garbled Content-Range", func(t *testing.T) fault {
			return withContentRange(t, func(f, l int64, size int) string { return fmt.Sprintf("bytes=%d-%d/%d", f, l, size) })
		}, permanent, nil, "bad Content-Range"},
		{"other total", func(t *testing.T) fault {
			return withContentRange(t, func(f, l int64, size int) string { return fmt.Sprintf("bytes %d-%d/%d", f, l, size+1) })
		}, permanent, store.ErrChanged, "now has"},
		{"Content-Length disagrees", func(t *testing.T) fault {
			return func(w http.ResponseWriter, r *http.Request, data []byte) bool {
				first, last := requested(t, r)
				w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, last, len(data)))
				w.Header().Set("Content-Length", "9999")
				w.WriteHeader(http.StatusPartialContent)
				w.Write(data[first : first+9999])
				return true
			}
		}, permanent, nil, "Content-Length 9999"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newServer(t, reference(testSize), false, func(s *testServer) { s.fault = c.fault(t) })
			o := openServer(t, s, Options{})
			const off, n = 3*4096 + 7, 10000
			buf := bytes.Repeat([]byte{0xee}, n+16)
			err := o.GetRange(context.Background(), buf[8:8+n], off)
			if err == nil || store.IsPermanent(err) != (c.kind == permanent) || (c.is != nil && !errors.Is(err, c.is)) {
				t.Fatalf("GetRange = %v; want a permanent: %v error wrapping %v", err, c.kind == permanent, c.is)
			}
			for _, want := range []string{s.URL + "/obj", "offset 12295", "10000 bytes", c.says} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			if !bytes.Equal(buf[:8], bytes.Repeat([]byte{0xee}, 8)) || !bytes.Equal(buf[8+n:], bytes.Repeat([]byte{0xee}, 8)) {
				t.Fatal("GetRange wrote outside p")
			}
		})
	}
}

// A change of version mid-life fails reads through a remote.Store with
// ErrChanged, from the server's 412 to If-Match, and is not retried.
func TestETagChangeThroughStore(t *testing.T) {
	data := reference(testSize)
	s := newServer(t, data, false, nil)
	o := openServer(t, s, Options{})
	st := remote.New(o, remote.Config{ChunkSize: 64 << 10, HedgeAfter: -1})
	defer st.Close()
	readFull(t, st, data, 0, 4096)
	s.change(reference(testSize), `"v2"`)
	gets := s.gets.Load()
	_, err := store.ReadFull(st, make([]byte, 4096), 200<<10)
	if !errors.Is(err, store.ErrChanged) || !strings.Contains(err.Error(), "offset 204800") {
		t.Fatalf("read after the change: %v; want ErrChanged naming the offset", err)
	}
	if s.answered(http.StatusPreconditionFailed) != 1 || s.gets.Load() != gets+1 {
		t.Fatalf("%d GETs, %d answered 412; want one, not retried", s.gets.Load()-gets, s.answered(http.StatusPreconditionFailed))
	}
}

func readFull(t *testing.T, st store.Store, data []byte, off int64, n int) {
	t.Helper()
	buf := make([]byte, n)
	got, err := store.ReadFull(st, buf, off)
	want := data[off:min(off+int64(n), int64(len(data)))]
	if err != nil || got != len(want) || !bytes.Equal(buf[:got], want) {
		t.Fatalf("ReadFull(%d bytes at %d) = %d, %v; want %d bytes equal to the resource's", n, off, got, err, len(want))
	}
}

// Transient faults are retried by a remote.Store and every byte arrives.
func TestFaultsRetriedThroughStore(t *testing.T) {
	for _, c := range []struct {
		name  string
		fault func(t *testing.T) fault
	}{
		{"500s", func(*testing.T) fault { return firstN(3, status(500)) }},
		{"resets", func(t *testing.T) fault { return firstN(3, reset(t)) }},
		{"short bodies", func(t *testing.T) fault { return firstN(3, partial(t, false, 100, false)) }},
		{"lying Content-Length", func(t *testing.T) fault { return firstN(3, partial(t, true, 100, false)) }},
		{"slow body", func(t *testing.T) fault { return firstN(1, partial(t, true, 1000, true)) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			data := reference(testSize)
			s := newServer(t, data, false, func(s *testServer) { s.fault = c.fault(t) })
			o := openServer(t, s, Options{})
			st := remote.New(o, remote.Config{ChunkSize: 64 << 10, Parallel: 2, HedgeAfter: -1,
				Timeout: 300 * time.Millisecond, BackoffBase: time.Millisecond})
			defer st.Close()
			readFull(t, st, data, 0, testSize)
			if chunks := int64(testSize+64<<10-1) / (64 << 10); s.gets.Load() <= chunks {
				t.Fatalf("%d GETs for %d chunks: the faults were not met", s.gets.Load(), chunks)
			}
		})
	}
}

// Over TLS the transport speaks HTTP/2, and reads work through it.
func TestTLSUsesHTTP2(t *testing.T) {
	data := reference(testSize)
	s := newServer(t, data, true, func(s *testServer) { s.fault = firstN(1, status(503)) })
	o := openServer(t, s, Options{})
	if s.heads.Load() != 1 || s.gets.Load() != 0 {
		t.Fatalf("Open made %d HEADs and %d GETs; want one HEAD", s.heads.Load(), s.gets.Load())
	}
	st := remote.New(o, remote.Config{ChunkSize: 64 << 10, BackoffBase: time.Millisecond})
	defer st.Close()
	readFull(t, st, data, 0, testSize)
	readFull(t, st, data, 4097, 3*4096)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.protos[2] == 0 || len(s.protos) != 1 {
		t.Fatalf("requests by HTTP major version: %v; want all HTTP/2", s.protos)
	}
}

// A multi-MiB resource read through httpstore and remote.Store at random
// offsets from several goroutines, over few connections, leaving no
// goroutine behind.
func TestEndToEnd(t *testing.T) {
	base := runtime.NumGoroutine()
	const size = 5<<20 + 4321
	data := reference(size)
	s := newServer(t, data, false, nil)
	o, err := Open(context.Background(), s.URL+"/obj", Options{Parallel: 4})
	if err != nil {
		t.Fatal(err)
	}
	st := remote.New(o, remote.Config{ChunkSize: 1 << 20, Parallel: 4})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for range 25 {
				off := rng.Int64N(size) &^ 4095
				n := 4096 << rng.IntN(9) // 4 KiB to 1 MiB, as faults and readahead ask
				buf := make([]byte, n)
				got, err := store.ReadFull(st, buf, off)
				if want := data[off:min(off+int64(n), size)]; err != nil || !bytes.Equal(buf[:got], want) {
					t.Errorf("ReadFull(%d bytes at %d) = %d, %v", n, off, got, err)
				}
			}
		})
	}
	wg.Wait()
	readFull(t, st, data, 0, size)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if c, g := s.newConn.Load(), s.gets.Load(); c > 2*4 {
		t.Errorf("%d connections for %d GETs: connections are not reused", c, g)
	}
	s.Close()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines left, %d before", runtime.NumGoroutine(), base)
		}
		time.Sleep(time.Millisecond)
	}
}

// An error of a request that got no answer names the URL once: net/http's
// *url.Error, which names it too (as "Head" or "Get" and the URL), is not
// kept around its cause.
func TestUnansweredRequestNamesURLOnce(t *testing.T) {
	data := reference(testSize)
	s := newServer(t, data, false, nil)
	o := openServer(t, s, Options{})
	url := s.URL + "/obj"
	s.Close() // every request now fails in net/http
	_, err := Open(context.Background(), url, Options{Client: testClient(t, s, 2)})
	if err == nil {
		t.Fatal("Open of a closed server's URL succeeded")
	}
	if n := strings.Count(err.Error(), url); n != 1 || !strings.Contains(err.Error(), "HEAD: ") {
		t.Errorf("Open error names %s %d times, want once, after HEAD: %v", url, n, err)
	}
	err = o.GetRange(context.Background(), make([]byte, 4096), 0)
	if err == nil {
		t.Fatal("GetRange from a closed server succeeded")
	}
	if n := strings.Count(err.Error(), url); n != 1 {
		t.Errorf("GetRange error names %s %d times, want once: %v", url, n, err)
	}
}
