// Package progress tells the user how far a long command has got, on
// stderr. On a terminal it keeps one live line, rewritten in place with \r
// and erased at the end, so that the screen ends as it would without it.
// Anywhere else (a pipe, a file, a CI log) rewrites would pile up as
// garbage, so it writes one line per finished step instead.
package progress

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// Reporter writes one command's progress. Its methods may be called from
// several goroutines.
type Reporter struct {
	w      io.Writer
	prefix string // starts every line: "filemap bench: "
	live   bool   // w is a terminal
	cols   int    // the terminal's width; 0 if unknown

	mu    sync.Mutex
	line  string // the live line's text after the prefix; "" if none
	shown int    // columns the live line takes on the terminal now
}

// IsTerminal reports whether f is a terminal.
func IsTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// New reports to f, live if f is a terminal, every line starting with
// prefix.
func New(f *os.File, prefix string) *Reporter {
	r := NewWriter(f, IsTerminal(f), prefix)
	if ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ); err == nil {
		r.cols = int(ws.Col)
	}
	return r
}

// NewWriter reports to w, with a live line if live (w is a terminal of
// unknown width), else with a line per finished step.
func NewWriter(w io.Writer, live bool, prefix string) *Reporter {
	return &Reporter{w: w, live: live, prefix: prefix}
}

// Live reports what runs now. On a terminal it replaces the live line;
// elsewhere it writes nothing: only finished steps (Done) are worth a line
// of a log.
func (r *Reporter) Live(format string, args ...any) {
	if !r.live {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.line = fmt.Sprintf(format, args...)
	r.drawLocked()
}

// Done reports a finished step: a line of its own where there is no live
// line. On a terminal the live line moves on to the next step instead.
func (r *Reporter) Done(format string, args ...any) {
	if r.live {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(r.w, "%s%s\n", r.prefix, fmt.Sprintf(format, args...))
}

// Println writes a line that stays, such as a warning. On a terminal it
// goes where the live line was, and the live line is drawn again below it.
func (r *Reporter) Println(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.eraseLocked()
	fmt.Fprintf(r.w, "%s%s\n", r.prefix, fmt.Sprintf(format, args...))
	if r.line != "" {
		r.drawLocked()
	}
}

// Clear erases the live line: at the end, and before an error is printed.
func (r *Reporter) Clear() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.eraseLocked()
	r.line = ""
}

// Every draws line() as the live line every d, on a terminal, until stop
// is called; the first after d, so that a step shorter than that shows
// nothing. It is for progress the step cannot report itself, such as a
// loop that may block in a page fault. stop waits for the last drawing;
// the line stays until Clear or the next Live.
func (r *Reporter) Every(d time.Duration, line func() string) (stop func()) {
	if !r.live {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				r.Live("%s", line())
			}
		}
	}()
	return sync.OnceFunc(func() {
		close(done)
		wg.Wait()
	})
}

// drawLocked writes the live line over the one shown, padded with spaces over
// what is left of a longer one. A line wider than the terminal would wrap,
// and \r returns only to the start of its last row: it is cut to fit.
// Called with mu held.
func (r *Reporter) drawLocked() {
	s := r.prefix + r.line
	n := utf8.RuneCountInString(s)
	if r.cols > 0 && n >= r.cols {
		s, n = cut(s, r.cols-1), r.cols-1
	}
	fmt.Fprintf(r.w, "\r%s%s", s, strings.Repeat(" ", max(r.shown-n, 0)))
	r.shown = n
}

// eraseLocked blanks the live line and returns to its start. Called with mu
// held.
func (r *Reporter) eraseLocked() {
	if r.shown > 0 {
		fmt.Fprintf(r.w, "\r%s\r", strings.Repeat(" ", r.shown))
		r.shown = 0
	}
}

// cut is s's first n runes.
func cut(s string, n int) string {
	for i := range s {
		if n == 0 {
			return s[:i]
		}
		n--
	}
	return s
}
