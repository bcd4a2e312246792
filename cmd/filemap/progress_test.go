package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/internal/pty"
	"github.com/filemap/filemap/internal/syncbuf"
)

// Progress on stderr, as the long commands show it: on a terminal one line
// rewritten in place and erased at the end; elsewhere a line per case.

// progressLines are the lines of stderr that start with prefix, notes and
// warnings left out.
func progressLines(stderr []byte, prefix string) []string {
	var lines []string
	for l := range strings.Lines(string(stderr)) {
		l = strings.TrimSuffix(l, "\n")
		rest, ok := strings.CutPrefix(l, prefix)
		if ok && !strings.HasPrefix(rest, "note: ") && !strings.HasPrefix(rest, "warning: ") {
			lines = append(lines, rest)
		}
	}
	return lines
}

// wantCaseLines fails the test unless lines are one per case, in order,
// each naming the case and then the rate of each of its methods.
func wantCaseLines(t *testing.T, lines []string, cases [][]string) {
	t.Helper()
	if len(lines) != len(cases) {
		t.Fatalf("%d progress lines, want one per case, %d:\n%s", len(lines), len(cases), strings.Join(lines, "\n"))
	}
	for i, c := range cases {
		re := fmt.Sprintf(`^%s \(case %d of %d\): `, regexp.QuoteMeta(c[0]), i+1, len(cases))
		for j, m := range c[1:] {
			if j > 0 {
				re += ", "
			}
			re += regexp.QuoteMeta(m) + ` \d+ (MB|faults)/s[^,]*`
		}
		if !regexp.MustCompile(re).MatchString(lines[i]) {
			t.Errorf("progress line %d is %q, want one matching %q", i+1, lines[i], re)
		}
	}
}

// bench with stderr a pipe: one line per case as each finishes, with its
// rates, and not a byte of it on stdout, whose JSON stays one value.
func TestBenchProgressLines(t *testing.T) {
	r := filemapCLI(t, "bench", "--size", "4M", "--rounds", "1", "--threads", "1,2", "--json")
	r.wantCode(t, 0)
	if bytes.ContainsRune(r.stderr, '\r') {
		t.Errorf("stderr, a pipe, has a line rewritten with \\r:\n%q", r.stderr)
	}
	wantCaseLines(t, progressLines(r.stderr, "filemap bench: "), [][]string{
		{caseSeq, mapKernel, methodPread, methodFloor, mapFilemap},
		{caseWarm, mapKernel, mapFilemap},
		{caseRandomWarm, mapKernel, mapFilemap},
		{caseRandom + ", 1 thread", mapKernel, mapFilemap},
		{caseRandom + ", 2 threads", mapKernel, mapFilemap},
		{caseShm, mapKernel, mapFilemap},
	})
	var rep benchReport
	dec := json.NewDecoder(bytes.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil || dec.More() {
		t.Fatalf("stdout is not one JSON report (%v):\n%s", err, r.stdout)
	}
	if len(rep.Rows) != len(benchRows(1, 2)) {
		t.Errorf("%d rows, want %d", len(rep.Rows), len(benchRows(1, 2)))
	}
}

// demo with stderr a pipe: one line per case as each finishes; its table
// on stdout as before, with no progress in it.
func TestDemoProgressLines(t *testing.T) {
	r := filemapCLI(t, "demo", "--size", "1M")
	r.wantCode(t, 0)
	if bytes.ContainsRune(r.stderr, '\r') {
		t.Errorf("stderr, a pipe, has a line rewritten with \\r:\n%q", r.stderr)
	}
	wantCaseLines(t, progressLines(r.stderr, "filemap demo: "), [][]string{
		{caseRandom, mapKernel, mapFilemap},
		{caseSeq, mapKernel, mapFilemap},
		{caseWarm, mapKernel, mapFilemap},
	})
	out := string(r.stdout)
	if !strings.HasPrefix(out, "filemap demo: 1 MiB per file, 256 pages; handler: private; files in ") ||
		!strings.HasSuffix(out, fmt.Sprintf("every byte checked: %d bytes\n", demoChecked(1<<20))) || strings.Contains(out, "(case ") {
		t.Errorf("stdout is not the demo's table alone:\n%s", out)
	}
}

// terminalRun is a CLI child whose stderr is a terminal, a pseudo-terminal's
// slave end, and whose stdout is a pipe.
type terminalRun struct {
	cmd    *exec.Cmd
	cancel context.CancelFunc
	stdout bytes.Buffer
	term   syncbuf.Buffer // what the child wrote to its terminal so far
	read   chan error     // the end of the terminal's output
}

// startOnTerminal starts `filemap args...` with stderr a terminal cols wide.
func startOnTerminal(t *testing.T, cols int, env []string, args ...string) *terminalRun {
	t.Helper()
	master, slave, err := pty.Open(cols)
	if err != nil {
		t.Fatalf("open a pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { master.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), childTimeout)
	r := &terminalRun{cancel: cancel, read: make(chan error, 1)}
	r.cmd = exec.CommandContext(ctx, cliBinary(t), args...)
	r.cmd.Env = cliEnv(env...)
	r.cmd.Stdout, r.cmd.Stderr = &r.stdout, slave
	r.cmd.WaitDelay = 10 * time.Second
	err = r.cmd.Start()
	slave.Close() // the child's copies are the terminal's last holders
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() { r.read <- pty.Copy(&r.term, master) }()
	return r
}

// wait waits for the child and its terminal's last byte, and returns its
// exit status.
func (r *terminalRun) wait(t *testing.T) int {
	t.Helper()
	defer r.cancel()
	err := r.cmd.Wait()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
	default:
		t.Fatalf("filemap %q: %v; terminal:\n%q", r.cmd.Args[1:], err, r.term.String())
	}
	// The private handler holds the terminal too, until it sees the
	// command gone.
	if err := <-r.read; err != nil {
		t.Fatalf("read the terminal: %v", err)
	}
	return r.cmd.ProcessState.ExitCode()
}

// demo with stderr a terminal: a live line that says which case and which
// mapping runs, rewritten in place, never wider than the terminal, and
// erased at the end; no line per case; the table on stdout as with a pipe.
func TestDemoProgressOnTerminal(t *testing.T) {
	const cols = 60
	r := startOnTerminal(t, cols, nil, "demo", "--size", "1M")
	if code := r.wait(t); code != 0 {
		t.Fatalf("filemap demo exited %d; terminal:\n%q", code, r.term.String())
	}
	out := r.term.String()
	rows, wrapped := pty.Screen([]byte(out), cols)
	if wrapped || strings.Join(rows, "") != "" {
		t.Errorf("the terminal shows %q at the end (wrapped: %v), want nothing; written: %q", rows, wrapped, out)
	}
	for _, live := range []string{
		"\rfilemap demo: writing ",
		"\rfilemap demo: random 4K, cold (case 1 of 3): kernel mmap",
		"\rfilemap demo: random 4K, cold (case 1 of 3): filemap",
		"\rfilemap demo: sequential, warm (case 3 of 3): filemap",
	} {
		if !strings.Contains(out, live) {
			t.Errorf("the terminal never showed %q: %q", live, out)
		}
	}
	if strings.Contains(out, "MB/s") {
		t.Errorf("the terminal has a line per case, as a log would: %q", out)
	}
	if !strings.Contains(r.stdout.String(), fmt.Sprintf("every byte checked: %d bytes\n", demoChecked(1<<20))) {
		t.Errorf("stdout:\n%s", r.stdout.String())
	}
}

// A long cat to a pipe, with stderr a terminal: every second a line of the
// bytes so far and the rate, erased at the end; the bytes on stdout as
// ever. The object's second half waits until the line has been drawn, so
// that the cat is long whatever the machine's speed.
func TestCatProgressOnTerminal(t *testing.T) {
	const size = 8 << 20
	data := pattern.Random(size, 7)
	drawn := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var from int64
		if _, err := fmt.Sscanf(req.Header.Get("Range"), "bytes=%d-", &from); err == nil && from >= size/2 {
			select {
			case <-drawn:
			case <-req.Context().Done():
				return
			}
		}
		w.Header().Set("ETag", `"v1"`)
		http.ServeContent(w, req, "obj", time.Unix(1700000000, 0), bytes.NewReader(data))
	}))
	defer srv.Close()

	r := startOnTerminal(t, 0, nil, "cat", srv.URL+"/obj")
	line := regexp.MustCompile(`\rfilemap cat: [0-9.]+ [KM]iB of 8 MiB \(\d+%\), [0-9.]+ MB/s`)
	deadline := time.Now().Add(childTimeout)
	for !line.MatchString(r.term.String()) {
		if time.Now().After(deadline) {
			t.Fatalf("no progress line within %v: %q", childTimeout, r.term.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(drawn)
	if code := r.wait(t); code != 0 {
		t.Fatalf("filemap cat exited %d; terminal:\n%q", code, r.term.String())
	}
	if !bytes.Equal(r.stdout.Bytes(), data) {
		t.Errorf("stdout: %d bytes, not the object's %d", r.stdout.Len(), size)
	}
	if rows, _ := pty.Screen([]byte(r.term.String()), 0); strings.Join(rows, "") != "" {
		t.Errorf("the terminal shows %q at the end, want nothing", rows)
	}
}
