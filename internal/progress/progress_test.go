package progress

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/pty"
	"github.com/filemap/filemap/internal/syncbuf"
)

// wantScreen fails the test unless a terminal shows rows after out.
func wantScreen(t *testing.T, what string, out []byte, rows ...string) {
	t.Helper()
	got, wrapped := pty.Screen(out, 0)
	if !slices.Equal(got, rows) || wrapped {
		t.Errorf("%s: the terminal shows %q (wrapped: %v), want %q; written: %q", what, got, wrapped, rows, out)
	}
}

func TestIsTerminal(t *testing.T) {
	master, slave, err := pty.Open(0)
	if err != nil {
		t.Fatalf("open a pseudo-terminal: %v", err)
	}
	defer master.Close()
	defer slave.Close()
	if !IsTerminal(slave) {
		t.Error("a pseudo-terminal is not a terminal")
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	f, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if IsTerminal(w) || IsTerminal(f) {
		t.Errorf("a pipe or a file is a terminal: %v, %v", IsTerminal(w), IsTerminal(f))
	}
}

// On a terminal: one line, rewritten in place; a warning goes above it;
// at the end it is gone.
func TestLiveLine(t *testing.T) {
	var out syncbuf.Buffer
	r := NewWriter(&out, true, "cmd: ")
	r.Live("case %d of %d, a longer step", 1, 2)
	wantScreen(t, "Live", []byte(out.String()), "cmd: case 1 of 2, a longer step")
	r.Live("case 2 of 2")
	wantScreen(t, "a shorter Live", []byte(out.String()), "cmd: case 2 of 2")
	r.Println("warning: %s", "slow disk")
	wantScreen(t, "Println", []byte(out.String()), "cmd: warning: slow disk", "cmd: case 2 of 2")
	r.Done("case 2 of 2: 1000 MB/s")
	wantScreen(t, "Done", []byte(out.String()), "cmd: warning: slow disk", "cmd: case 2 of 2")
	r.Clear()
	wantScreen(t, "Clear", []byte(out.String()), "cmd: warning: slow disk", "")
	n := len([]byte(out.String()))
	r.Clear()
	if len([]byte(out.String())) != n {
		t.Errorf("a second Clear wrote %q", []byte(out.String())[n:])
	}
}

// Elsewhere (a pipe, a CI log): a line per finished step and the
// warnings, no rewrites.
func TestLogLines(t *testing.T) {
	var out syncbuf.Buffer
	r := NewWriter(&out, false, "cmd: ")
	r.Live("case 1 of 2")
	r.Done("case %d of %d: %d MB/s", 1, 2, 900)
	r.Println("warning: slow disk")
	r.Live("case 2 of 2")
	stop := r.Every(time.Millisecond, func() string { return "ticking" })
	r.Done("case 2 of 2: 1000 MB/s")
	stop()
	r.Clear()
	want := "cmd: case 1 of 2: 900 MB/s\ncmd: warning: slow disk\ncmd: case 2 of 2: 1000 MB/s\n"
	if got := string([]byte(out.String())); got != want {
		t.Errorf("wrote %q, want %q", got, want)
	}
}

// Every draws the line it is given until stopped; stop may be called
// twice.
func TestEvery(t *testing.T) {
	var out syncbuf.Buffer
	r := NewWriter(&out, true, "cmd: ")
	var mu sync.Mutex
	n := 0
	stop := r.Every(time.Millisecond, func() string {
		mu.Lock()
		defer mu.Unlock()
		n++
		return strings.Repeat("#", n)
	})
	deadline := time.Now().Add(10 * time.Second)
	for !bytes.Contains([]byte(out.String()), []byte("cmd: ###")) {
		if time.Now().After(deadline) {
			t.Fatalf("no third drawing within 10s: %q", []byte(out.String()))
		}
		time.Sleep(time.Millisecond)
	}
	stop()
	stop()
	mu.Lock()
	last := n
	mu.Unlock()
	wantScreen(t, "stopped", []byte(out.String()), "cmd: "+strings.Repeat("#", last))
	r.Clear()
	wantScreen(t, "cleared", []byte(out.String()), "")
}

// On a real terminal narrower than the line, the line is cut to fit: a
// wrapped line could not be rewritten with \r.
func TestLiveLineFitsTerminal(t *testing.T) {
	const cols = 20
	master, slave, err := pty.Open(cols)
	if err != nil {
		t.Fatalf("open a pseudo-terminal: %v", err)
	}
	defer master.Close()
	r := New(slave, "cmd: ")
	r.Live("%s", strings.Repeat("x", 3*cols))
	r.Live("µ%s", strings.Repeat("y", 2*cols)) // runes, not bytes, take columns
	r.Println("done")
	r.Clear()
	slave.Close()
	var term bytes.Buffer
	if err := pty.Copy(&term, master); err != nil {
		t.Fatal(err)
	}
	out := term.Bytes()
	rows, wrapped := pty.Screen(out, cols)
	if wrapped || !slices.Equal(rows, []string{"cmd: done", ""}) {
		t.Errorf("the terminal shows %q (wrapped: %v), want the note and an empty line; written: %q", rows, wrapped, out)
	}
	if !bytes.Contains(out, []byte("cmd: µyyyyyyyyyyyyy\r")) {
		t.Errorf("the second line was not cut to %d columns: %q", cols-1, out)
	}
}
