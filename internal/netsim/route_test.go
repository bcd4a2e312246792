package netsim

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/pattern"
)

// TestRoute: a route reaches a server of this namespace that listens on
// every address, bytes intact, with its profile's toxics: no answer comes
// sooner than the latency added, and one connection gets no more than its
// rate (+25%: toxiproxy meters in slices). Bounds from below and above
// only, which a slow machine cannot break.
func TestRoute(t *testing.T) {
	p, err := ProfileNamed("region")
	if err != nil {
		t.Fatal(err)
	}
	data := pattern.Random(8<<20, 19)
	l, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	r := StartRouteTest(t, p, l.Addr().(*net.TCPAddr).Port)

	hc := &http.Client{Timeout: time.Minute}
	get := func(rng string) ([]byte, time.Duration) {
		t.Helper()
		req, err := http.NewRequest("GET", r.Endpoint+"/", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Range", rng)
		start := time.Now()
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("GET %s through the route: %v", rng, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("GET %s through the route: %v", rng, err)
		}
		return b, time.Since(start)
	}
	small, took := get("bytes=4096-8191")
	if !bytes.Equal(small, data[4096:8192]) {
		t.Fatalf("GET of 4 KiB through the route: %d bytes that are not the server's", len(small))
	}
	if took < p.Latency {
		t.Errorf("GET of 4 KiB through the route took %v; the profile adds %v", took, p.Latency)
	}
	all, took := get("bytes=0-" + strconv.Itoa(len(data)-1))
	if !bytes.Equal(all, data) {
		t.Fatalf("GET of %d bytes through the route: %d bytes that are not the server's", len(data), len(all))
	}
	if rate := float64(len(data)) / took.Seconds(); rate > float64(p.ConnRate)*1.25 {
		t.Errorf("one connection through the route got %s; the profile caps it at %s", Rate(rate), Rate(float64(p.ConnRate)))
	}
}
