// Package child runs the test suites' client processes: a child that takes
// commands on its stdin, one a line, and answers each with a line on its
// stdout ("ok ..." or an error). Faults must come from a real process other
// than the handler's, so the tests drive one this way.
package child

import (
	"bufio"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/syncbuf"
)

// Timeout is how long a command's answer is waited for.
const Timeout = 60 * time.Second

// Proc is a started child. Its stderr is kept for a failing test to print.
type Proc struct {
	Cmd    *exec.Cmd
	Stderr *syncbuf.Buffer
	in     io.WriteCloser
	lines  chan string
}

// Start starts cmd with its stdin and stdout piped to the returned Proc.
func Start(cmd *exec.Cmd) (*Proc, error) {
	p := &Proc{Cmd: cmd, Stderr: new(syncbuf.Buffer), lines: make(chan string, 16)}
	cmd.Stderr = p.Stderr
	var err error
	if p.in, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	return p, nil
}

// Send writes one command without waiting for its answer.
func (p *Proc) Send(cmd string) error {
	if _, err := fmt.Fprintln(p.in, cmd); err != nil {
		return fmt.Errorf("send %q: %w", cmd, err)
	}
	return nil
}

// Reply waits up to timeout for the next answer line; ok is false if the
// child exited or the time ran out first.
func (p *Proc) Reply(timeout time.Duration) (line string, ok bool) {
	select {
	case l, ok := <-p.lines:
		return l, ok
	case <-time.After(timeout):
		return "", false
	}
}

// Ask sends cmd and returns its answer, whatever it says.
func (p *Proc) Ask(cmd string) (string, error) {
	if err := p.Send(cmd); err != nil {
		return "", err
	}
	l, ok := p.Reply(Timeout)
	if !ok {
		return "", fmt.Errorf("no answer to %q (exited or stuck); stderr:\n%s", cmd, p.Stderr.String())
	}
	return l, nil
}

// AskOK sends cmd, which must succeed, and returns the rest of its "ok"
// answer.
func (p *Proc) AskOK(cmd string) (string, error) {
	l, err := p.Ask(cmd)
	if err != nil {
		return "", err
	}
	if l != "ok" && !strings.HasPrefix(l, "ok ") {
		return "", fmt.Errorf("%q: %s", cmd, l)
	}
	return strings.TrimPrefix(strings.TrimPrefix(l, "ok"), " "), nil
}

// CloseInput ends the child's commands, as a VMM or a client that exits
// would.
func (p *Proc) CloseInput() error { return p.in.Close() }

// Kill kills the child and waits for it, which closes our ends of its
// pipes.
func (p *Proc) Kill() {
	p.Cmd.Process.Kill()
	p.Cmd.Wait()
}

// T is a Proc tied to a test: killed when the test ends, its stderr logged
// under its name if the test failed, and every failure to get an answer
// fatal.
type T struct {
	*Proc
	t    testing.TB
	name string
}

// StartT starts cmd for test t; name says what it is in failures.
func StartT(t testing.TB, cmd *exec.Cmd, name string) *T {
	t.Helper()
	p, err := Start(cmd)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	c := &T{Proc: p, t: t, name: name}
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("%s %d stderr:\n%s", name, cmd.Process.Pid, p.Stderr.String())
		}
	})
	return c
}

// Send writes a command without waiting for its answer.
func (c *T) Send(format string, args ...any) {
	c.t.Helper()
	if err := c.Proc.Send(fmt.Sprintf(format, args...)); err != nil {
		c.t.Fatalf("%s: %v", c.name, err)
	}
}

// Do sends a command and returns its answer, whatever it says.
func (c *T) Do(format string, args ...any) string {
	c.t.Helper()
	l, err := c.Ask(fmt.Sprintf(format, args...))
	if err != nil {
		c.t.Fatalf("%s: %v", c.name, err)
	}
	return l
}

// OK sends a command that must succeed and returns the rest of its answer.
func (c *T) OK(format string, args ...any) string {
	c.t.Helper()
	rest, err := c.AskOK(fmt.Sprintf(format, args...))
	if err != nil {
		c.t.Fatalf("%s: %v", c.name, err)
	}
	return rest
}
