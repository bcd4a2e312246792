// Package faultyhttp serves one object over HTTP as a real server does
// (byte ranges, an ETag), but fails the ranged GETs that ask for a chosen
// byte the ways servers fail: a 500 before any byte, a body that breaks off
// at that page, or one that stalls there with the connection held open
// until the client gives up. It can ask for a password, and hold the GETs that ask for a
// chosen byte, before any byte of their answer, until the test lets them
// go. It records every GET, for tests that count what a client asked for
// and when.
package faultyhttp

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Mode is how a GET that asks for the bad byte fails.
type Mode int

const (
	Status500 Mode = iota // a 500 before any byte of the body
	BreakOff              // the bytes before the bad one's page, then the connection closes
	Stall                 // the bytes before the bad one's page, then nothing until the client gives up
)

// Get is one ranged GET: bytes [Off, End), and when it came.
type Get struct {
	Off, End int64
	At       time.Time
}

// Server serves its object at URL.
type Server struct {
	URL  string // of the object
	Host string // the server's host:port, which serves the object at any path

	srv  *httptest.Server
	data []byte

	mu       sync.Mutex
	bad      int64 // -1: none
	mode     Mode
	gets     []Get
	stalled  int           // stalled bodies still held
	hold     int64         // -1: none
	released chan struct{} // closed by Release
	held     int           // GETs held until Release
	user     string        // with password, the only one served, if set
	password string
}

// Start serves data until the test ends.
func Start(t testing.TB, data []byte) *Server {
	s := &Server{data: data, bad: -1, hold: -1, released: make(chan struct{})}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.srv.Close)
	t.Cleanup(s.Release) // first: Close waits for the requests held
	s.URL = s.srv.URL + "/object.bin"
	s.Host = s.srv.Listener.Addr().String()
	return s
}

// Fail makes every GET that asks for byte bad fail as mode says; a
// negative bad fails none.
func (s *Server) Fail(bad int64, mode Mode) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bad, s.mode = bad, mode
}

// RequireAuth makes the server answer 401 to every request that does not
// authenticate as user with password (HTTP basic authentication), as a
// server of a private object does.
func (s *Server) RequireAuth(user, password string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.user, s.password = user, password
}

// URLAs is the object's URL with user and password in it.
func (s *Server) URLAs(user, password string) string {
	return strings.Replace(s.URL, "http://", "http://"+user+":"+password+"@", 1)
}

// Hold makes every GET that asks for byte off wait, before any byte of its
// answer, until Release (or until its client gives up); then it is
// answered as any other.
func (s *Server) Hold(off int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hold = off
}

// Release lets the GETs held by Hold go, and every later one pass; once
// is enough, more do nothing.
func (s *Server) Release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.released:
	default:
		close(s.released)
	}
}

// Held is how many GETs wait for Release now.
func (s *Server) Held() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held
}

// Gets is the ranged GETs so far.
func (s *Server) Gets() []Get {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Get(nil), s.gets...)
}

// GetsOf is how many GETs asked for bytes of [lo, hi).
func (s *Server) GetsOf(lo, hi int64) int {
	n := 0
	for _, g := range s.Gets() {
		if g.Off < hi && lo < g.End {
			n++
		}
	}
	return n
}

// Stalled is how many stalled bodies are held still: requests their client
// has not given up on.
func (s *Server) Stalled() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stalled
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	if !s.authorized(r) {
		http.Error(w, "who are you", http.StatusUnauthorized)
		return
	}
	w.Header().Set("ETag", `"v1"`)
	off, end, ranged := parseRange(r.Header.Get("Range"), int64(len(s.data)))
	if r.Method != http.MethodGet || !ranged {
		http.ServeContent(w, r, "object.bin", time.Unix(1700000000, 0), bytes.NewReader(s.data))
		return
	}
	s.mu.Lock()
	s.gets = append(s.gets, Get{off, end, time.Now()})
	bad, mode, hold := s.bad, s.mode, s.hold
	s.mu.Unlock()
	if off <= hold && hold < end {
		s.wait(r)
	}
	if bad < off || bad >= end {
		http.ServeContent(w, r, "object.bin", time.Unix(1700000000, 0), bytes.NewReader(s.data))
		return
	}
	if mode == Status500 {
		http.Error(w, "internal error reading the object", http.StatusInternalServerError)
		return
	}
	cut := max(bad&^4095, off)
	w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, end-1, len(s.data)))
	w.Header().Set("Content-Length", strconv.FormatInt(end-off, 10))
	w.WriteHeader(http.StatusPartialContent)
	w.Write(s.data[off:cut])
	w.(http.Flusher).Flush()
	if mode == BreakOff {
		panic(http.ErrAbortHandler) // the connection closes with the body short
	}
	s.mu.Lock()
	s.stalled++
	s.mu.Unlock()
	<-r.Context().Done() // the client gave up, or the server closes
	s.mu.Lock()
	s.stalled--
	s.mu.Unlock()
}

// authorized says whether r may have the object.
func (s *Server) authorized(r *http.Request) bool {
	s.mu.Lock()
	wantUser, wantPassword := s.user, s.password
	s.mu.Unlock()
	user, password, _ := r.BasicAuth()
	return wantUser == "" || user == wantUser && password == wantPassword
}

// wait holds r until Release, or until its client gives up.
func (s *Server) wait(r *http.Request) {
	s.mu.Lock()
	s.held++
	s.mu.Unlock()
	select {
	case <-s.released:
	case <-r.Context().Done():
	}
	s.mu.Lock()
	s.held--
	s.mu.Unlock()
}

// parseRange reads "bytes=A-B", the only form filemap sends.
func parseRange(h string, size int64) (off, end int64, ok bool) {
	a, b, found := strings.Cut(strings.TrimPrefix(h, "bytes="), "-")
	if !found || !strings.HasPrefix(h, "bytes=") {
		return 0, 0, false
	}
	off, err1 := strconv.ParseInt(a, 10, 64)
	last, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || off > last || last >= size {
		return 0, 0, false
	}
	return off, last + 1, true
}
