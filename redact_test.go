package filemap

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/internal/testutil"
	"github.com/filemap/filemap/server"
	"github.com/filemap/filemap/store/remote"
)

// failingHTTPObject serves size bytes at /file to alice with password
// alone: a ranged GET covering byte bad gets a 500, one covering byte
// changed a 412 (the object changed since it was opened), the rest their
// bytes. It returns the URL with the password in it, and the bytes.
func failingHTTPObject(t *testing.T, password string, size, bad, changed int64) (string, string) {
	t.Helper()
	ref := filepath.Join(t.TempDir(), "ref")
	pattern.WriteFile(t, ref, size)
	data, err := os.ReadFile(ref)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if user, pass, _ := r.BasicAuth(); user != "alice" || pass != password {
			http.Error(w, "who are you", http.StatusUnauthorized)
			return
		}
		if r.URL.Path != "/file" {
			http.NotFound(w, r)
			return
		}
		var first, last int64
		if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &first, &last); err == nil {
			switch {
			case first <= bad && bad <= last:
				http.Error(w, "injected failure", http.StatusInternalServerError)
				return
			case first <= changed && changed <= last:
				http.Error(w, "injected change", http.StatusPreconditionFailed)
				return
			}
		}
		w.Header().Set("ETag", `"v1"`)
		http.ServeContent(w, r, "file", time.Unix(1700000000, 0), bytes.NewReader(data))
	}))
	t.Cleanup(srv.Close)
	return strings.Replace(srv.URL, "http://", "http://alice:"+password+"@", 1) + "/file", ref
}

// An HTTP password is never shown, with a page that fails and one whose
// object changed: not in the daemon's log, the errors a client gets
// (Open's, ReadAt's, Guard's), the daemon's listing of its caches, its
// metrics page, the names of the cache files clients map, nor a private
// handler's log. Each of them names the object, redacted.
func TestHTTPPasswordNeverShown(t *testing.T) {
	const (
		secret  = "s3cr3tpw"
		wrong   = "wr0ngpw"
		size    = 16 << 20
		bad     = 8<<20 + 5*ps  // its page fails
		changed = 12<<20 + 3*ps // its page finds the object changed
	)
	uri, ref := failingHTTPObject(t, secret, size, bad, changed)
	name := strings.Replace(uri, secret, "***", 1)
	d := startDaemon(t, server.Config{NoHuge: true, Retries: -1,
		Remote: server.RemoteConfig{Fetch: remote.Config{Retries: -1}}})
	hidden := func(what, text string) {
		t.Helper()
		if strings.Contains(text, secret) || strings.Contains(text, wrong) {
			t.Errorf("%s shows a password:\n%s", what, text)
		}
	}
	shown := func(what, text string) {
		t.Helper()
		hidden(what, text)
		if !strings.Contains(text, name) {
			t.Errorf("%s does not name the object %s:\n%s", what, name, text)
		}
	}

	c := startDriver(t, d.sock)
	c.open(uri, "ref="+ref)
	c.OK("read 0 %d", 64<<10)
	got := c.Do("readat %d %d", bad, ps)
	if !strings.HasPrefix(got, "err ") || !strings.Contains(got, fmt.Sprint(bad)) {
		t.Errorf("ReadAt of the failing page: %q, want an error naming its offset", got)
	}
	shown("ReadAt's error", got)
	got = c.Do("guard %d %d", bad, ps)
	if !strings.HasPrefix(got, "fault ") {
		t.Errorf("Guard of the failing page: %q, want a FaultError", got)
	}
	shown("Guard's FaultError", got)
	if got := c.Do("read %d %d", changed, ps); !strings.HasPrefix(got, "sigbus ") {
		t.Errorf("a page of the changed object: %q, want SIGBUS", got)
	}
	got = c.Do("open %s ref=%s", strings.Replace(uri, secret, wrong, 1), ref)
	if !strings.HasPrefix(got, "err ") || !strings.Contains(got, "401") {
		t.Errorf("open with the wrong password: %q, want an error saying 401", got)
	}
	shown("Open's error", got)
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", c.Cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	shown("the client's /proc/PID/maps", string(maps))
	hidden("the client's stderr", c.Stderr.String())

	objs, err := CachedObjects(context.Background(), WithSocket(d.sock))
	if err != nil {
		t.Fatal(err)
	}
	listed := fmt.Sprintf("%+v", objs)
	if len(objs) != 1 || objs[0].URI != name {
		t.Errorf("CachedObjects: %s; want the object alone, named %s", listed, name)
	}
	shown("CachedObjects", listed)

	addr, stop, err := d.s.Metrics().Serve("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	resp, err := http.Get("http://" + addr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	page, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("filemap_object_changed_total{object=%q}", name); !strings.Contains(string(page), want) {
		t.Errorf("the metrics page has no %s", want)
	}
	shown("the metrics page", string(page))

	testutil.WaitFor(t, "the daemon's log lines of the failed and the changed page", func() bool {
		log := d.log.String()
		return strings.Contains(log, "read failed: SIGBUS for the faulting page") && strings.Contains(log, "object changed since it was opened")
	})
	shown("the daemon's log", d.log.String())

	// A private handler logs to its client's stderr.
	p := startDriver(t, "")
	p.open(uri, "ref="+ref)
	if got := p.Do("readat %d %d", bad, ps); !strings.HasPrefix(got, "err ") {
		t.Errorf("ReadAt of the failing page through a private handler: %q, want an error", got)
	}
	testutil.WaitFor(t, "the private handler's log line of the failed page", func() bool {
		return strings.Contains(p.Stderr.String(), "read failed: SIGBUS for the faulting page")
	})
	shown("the private handler's log", p.Stderr.String())
}
