package touch_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/filemap/filemap"
	"github.com/filemap/filemap/internal/touch"
	"github.com/filemap/filemap/uffd"
)

// The child of TestPagesFaultAtOnce touches, from atOnceThreads threads,
// one page each of the object at $TOUCH_TEST_URL through a private handler.
const (
	envAtOnceURL  = "TOUCH_TEST_URL"
	atOnceThreads = 4
)

// atOncePages are one page in each of the first four 2 MiB chunks, none
// the first page: a ranged GET that does not start at byte 0 is a fault's.
var atOncePages = []int64{100, 700, 1300, 1900}

func TestMain(m *testing.M) {
	if url := os.Getenv(envAtOnceURL); url != "" {
		os.Exit(touchAtOnce(url))
	}
	os.Exit(m.Run())
}

func touchAtOnce(url string) int {
	m, err := filemap.Open(context.Background(), url, filemap.WithAdvice(filemap.Random))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer m.Close()
	if _, err := touch.Pages(m.Bytes(), atOncePages, 4096, atOnceThreads, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// Threads that touch cold pages fault at once, as a C program's do, even
// in a program with one P: Pages gives each thread a P of its own. With
// asynchronous preemption off, a thread blocked in a fault would otherwise
// keep the only P until its page came, and the threads would fault one
// after another. The object's server holds each ranged GET until all the
// faults' GETs have come, or for 5 s.
func TestPagesFaultAtOnce(t *testing.T) {
	u, err := uffd.New(0)
	if err != nil {
		t.Skipf("userfaultfd: %v (needs root or vm.unprivileged_userfaultfd=1)", err)
	}
	u.Close()
	data := bytes.Repeat([]byte("filemap!"), 8<<20/8)
	var mu sync.Mutex
	inflight, peak := 0, 0
	all := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if off, ok := rangeStart(r.Header.Get("Range")); ok && off > 0 {
			mu.Lock()
			inflight++
			peak = max(peak, inflight)
			if inflight == atOnceThreads {
				close(all)
			}
			mu.Unlock()
			select {
			case <-all:
			case <-time.After(5 * time.Second):
			}
			defer func() {
				mu.Lock()
				inflight--
				mu.Unlock()
			}()
		}
		w.Header().Set("ETag", `"v1"`)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}))
	defer srv.Close()

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envAtOnceURL+"="+srv.URL+"/object", "GOMAXPROCS=1", "GODEBUG=asyncpreemptoff=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	mu.Lock()
	defer mu.Unlock()
	if peak < atOnceThreads {
		t.Fatalf("at most %d of %d threads' faults reached the store at once; want all of them", peak, atOnceThreads)
	}
}

// rangeStart is the first byte a Range header asks for.
func rangeStart(h string) (int64, bool) {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok {
		return 0, false
	}
	first, _, _ := strings.Cut(spec, "-")
	off, err := strconv.ParseInt(first, 10, 64)
	return off, err == nil
}
