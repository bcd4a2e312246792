package httpstore

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testServer serves one resource the way real servers do — ranges,
// conditional requests and HEAD by http.ServeContent, If-Match checked
// strongly — with switches for servers that do less, and a fault hook.
type testServer struct {
	*httptest.Server

	mu           sync.Mutex
	data         []byte
	etag         string    // "" for none; W/"..." for a weak one
	modTime      time.Time // zero for no Last-Modified
	noRanges     bool      // answer every GET with 200 and the whole resource
	refuseHead   bool      // answer HEAD with 405
	headNoLength bool      // answer HEAD without Content-Length
	fault        fault     // consulted for every GET

	gets    atomic.Int64 // GETs
	heads   atomic.Int64
	status  map[int]int // statuses answered, by code
	protos  map[int]int // requests seen, by ProtoMajor
	newConn atomic.Int64
}

// A fault may answer a GET its own way; it reports whether it did.
type fault func(w http.ResponseWriter, r *http.Request, data []byte) bool

func newServer(t *testing.T, data []byte, tls bool, setup func(*testServer)) *testServer {
	t.Helper()
	s := &testServer{data: data, etag: `"v1"`, modTime: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
		status: map[int]int{}, protos: map[int]int{}}
	if setup != nil {
		setup(s)
	}
	s.Server = httptest.NewUnstartedServer(s)
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.newConn.Add(1)
		}
	}
	if tls {
		s.EnableHTTP2 = true
		s.StartTLS()
	} else {
		s.Start()
	}
	t.Cleanup(s.Close)
	return s
}

// change replaces the resource, as a new version with this ETag.
func (s *testServer) change(data []byte, etag string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.data, s.etag = data, etag
	if !s.modTime.IsZero() {
		s.modTime = s.modTime.Add(time.Hour)
	}
}

func (s *testServer) setFault(f fault) {
	s.mu.Lock()
	s.fault = f
	s.mu.Unlock()
}

func (s *testServer) answered(code int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status[code]
}

// statusRecorder notes the status of each answer; Unwrap lets
// http.ResponseController reach the connection for faults.
type statusRecorder struct {
	http.ResponseWriter
	s *testServer
}

func (w statusRecorder) WriteHeader(code int) {
	w.s.mu.Lock()
	w.s.status[code]++
	w.s.mu.Unlock()
	w.ResponseWriter.WriteHeader(code)
}

func (w statusRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (s *testServer) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	w := statusRecorder{rw, s}
	s.mu.Lock()
	s.protos[r.ProtoMajor]++
	data, etag, modTime, f := s.data, s.etag, s.modTime, s.fault
	s.mu.Unlock()
	switch r.URL.Path {
	case "/obj":
	case "/forbidden":
		http.Error(w, "<Error><Code>AccessDenied</Code></Error>", http.StatusForbidden)
		return
	default:
		http.NotFound(w, r)
		return
	}
	switch r.Method {
	case http.MethodHead:
		s.heads.Add(1)
		if s.refuseHead {
			http.Error(w, "HEAD not allowed", http.StatusMethodNotAllowed)
			return
		}
	case http.MethodGet:
		s.gets.Add(1)
		if f != nil && f(w, r, data) {
			return
		}
	}
	if s.noRanges {
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		w.Write(data)
		return
	}
	if etag != "" {
		w.Header().Set("ETag", etag)
	}
	if im := r.Header.Get("If-Match"); im != "" && !strongMatch(im, etag) {
		http.Error(w, "precondition failed", http.StatusPreconditionFailed)
		return
	}
	if s.headNoLength && r.Method == http.MethodHead {
		w.Header().Set("Accept-Ranges", "bytes")
		w.WriteHeader(http.StatusOK)
		return
	}
	http.ServeContent(w, r, "", modTime, bytes.NewReader(data))
}

// strongMatch is If-Match's strong comparison (RFC 9110 §13.1.1): weak
// tags never match.
func strongMatch(ifMatch, etag string) bool {
	if ifMatch == "*" {
		return etag != ""
	}
	return etag != "" && etag[0] == '"' && ifMatch == etag
}

// requested is the range a GET asks for.
func requested(t testing.TB, r *http.Request) (first, last int64) {
	if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &first, &last); err != nil {
		t.Errorf("request without a single byte range: %q", r.Header.Get("Range"))
	}
	return first, last
}

// Faults.

// firstN applies f to the first n GETs only.
func firstN(n int64, f fault) fault {
	var seen atomic.Int64
	return func(w http.ResponseWriter, r *http.Request, data []byte) bool {
		return seen.Add(1) <= n && f(w, r, data)
	}
}

func status(code int) fault {
	return func(w http.ResponseWriter, r *http.Request, data []byte) bool {
		http.Error(w, "injected "+http.StatusText(code), code)
		return true
	}
}

// reset closes the connection without answering.
func reset(t *testing.T) fault {
	return func(w http.ResponseWriter, r *http.Request, data []byte) bool {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return false
		}
		conn.Close()
		return true
	}
}

// partial answers 206 with the right Content-Range and, if declare, the
// range's Content-Length; sends all but cut bytes of the range; and then,
// if hold, waits for the client to go away.
func partial(t *testing.T, declare bool, cut int, hold bool) fault {
	return func(w http.ResponseWriter, r *http.Request, data []byte) bool {
		first, last := requested(t, r)
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, last, len(data)))
		if declare {
			w.Header().Set("Content-Length", strconv.Itoa(int(last-first+1)))
		}
		w.WriteHeader(http.StatusPartialContent)
		http.NewResponseController(w).Flush() // chunked when no Content-Length
		w.Write(data[first : last+1-int64(cut)])
		if hold {
			http.NewResponseController(w).Flush()
			<-r.Context().Done()
		}
		return true
	}
}

// withContentRange answers 206 with the requested bytes but the given
// Content-Range (from the requested first, last and the size); "" for none.
func withContentRange(t *testing.T, cr func(first, last int64, size int) string) fault {
	return func(w http.ResponseWriter, r *http.Request, data []byte) bool {
		first, last := requested(t, r)
		if v := cr(first, last, len(data)); v != "" {
			w.Header().Set("Content-Range", v)
		}
		w.Header().Set("Content-Length", strconv.Itoa(int(last-first+1)))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(data[first : last+1])
		return true
	}
}

// whole answers 200 with the whole resource.
func whole(w http.ResponseWriter, r *http.Request, data []byte) bool {
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(http.StatusOK)
	w.Write(data)
	return true
}

// longer sends the range and then more bytes, with no Content-Length.
func longer(t *testing.T) fault {
	return func(w http.ResponseWriter, r *http.Request, data []byte) bool {
		first, last := requested(t, r)
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, last, len(data)))
		w.WriteHeader(http.StatusPartialContent)
		http.NewResponseController(w).Flush()
		w.Write(data[first:min(int(last)+101, len(data))])
		return true
	}
}

// reference is the resource's bytes: pseudo-random, so that a byte read
// from the wrong offset shows.
func reference(size int) []byte {
	b := make([]byte, size)
	rand.NewChaCha8([32]byte{byte(size), byte(size >> 8), byte(size >> 16)}).Read(b)
	return b
}

func openServer(t *testing.T, s *testServer, opts Options) *Object {
	t.Helper()
	if opts.Client == nil {
		opts.Client = testClient(t, s, 8)
	}
	o, err := Open(context.Background(), s.URL+"/obj", opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

// testClient is a client with NewTransport that trusts s's certificate.
func testClient(t *testing.T, s *testServer, parallel int) *http.Client {
	tr := NewTransport(parallel)
	if s.TLS != nil {
		tr.TLSClientConfig = s.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}
