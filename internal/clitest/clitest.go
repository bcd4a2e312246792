// Package clitest runs the filemap command for the tests of the packages
// that drive it from outside (libfilemap, python, kvmtest, the remote
// benchmarks): built with go build, and `filemap serve` daemons of it, as
// users run them.
package clitest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// buildTimeout bounds a build: minutes on a loaded 2-core machine with a
// cold build cache, seconds with a warm one.
const buildTimeout = 10 * time.Minute

// Build builds cmd/filemap as bin, making bin's directory. The go command
// is the one on PATH, where go test puts its own toolchain's first; an
// error wraps exec.ErrNotFound when there is none.
func Build(bin string) error {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("no go command to build cmd/filemap: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, goTool, "build", "-o", bin, "github.com/filemap/filemap/cmd/filemap").CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build -o %s ./cmd/filemap: %v\n%s", bin, err, out)
	}
	return nil
}

// startTimeout bounds the wait for a daemon to listen, and for one to exit
// once signalled.
const startTimeout = 30 * time.Second

// Daemon is a running `filemap serve`.
type Daemon struct {
	Sock string
	log  *os.File // a file, not a pipe: a keeper the daemon starts inherits it and outlives it
	cmd  *exec.Cmd
	done chan error // its exit status, once it has exited
}

// Serve starts bin serve on sock, where a daemon may have run before, with
// env as its whole environment and args after its own flags: no keeper
// unless args ask for one, and 1 ms before a retry, so that a test's
// failures come at once. It returns once the daemon listens, and stops it
// when the test ends, showing its log if the test failed.
func Serve(t *testing.T, bin, sock string, env []string, args ...string) *Daemon {
	t.Helper()
	log, err := os.CreateTemp(t.TempDir(), "serve-*.log")
	if err != nil {
		t.Fatal(err)
	}
	d := &Daemon{Sock: sock, log: log, done: make(chan error, 1)}
	d.cmd = exec.Command(bin, append([]string{"serve", "--socket", sock, "--keep=false", "--retry-backoff", "1ms"}, args...)...)
	d.cmd.Env = env
	d.cmd.Stderr = log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(func() {
		d.Stop(t)
		if t.Failed() {
			t.Logf("filemap serve log:\n%s", d.Log())
		}
	})
	for deadline := time.Now().Add(startTimeout); ; time.Sleep(10 * time.Millisecond) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("filemap serve did not listen on %s within %v:\n%s", sock, startTimeout, d.Log())
		}
	}
}

// Log is what the daemon has logged so far.
func (d *Daemon) Log() string {
	b, _ := os.ReadFile(d.log.Name())
	return string(b)
}

// Stop stops the daemon as an operator does, with SIGTERM, and waits for
// it to exit; it kills it if it has not within 30 seconds.
func (d *Daemon) Stop(t *testing.T) {
	d.signal(t, syscall.SIGTERM)
}

// Kill kills the daemon with SIGKILL, as a crash would, and waits for it.
func (d *Daemon) Kill(t *testing.T) {
	d.signal(t, syscall.SIGKILL)
}

func (d *Daemon) signal(t *testing.T, sig syscall.Signal) {
	if d.done == nil {
		return // stopped already
	}
	d.cmd.Process.Signal(sig)
	select {
	case <-d.done:
	case <-time.After(startTimeout):
		t.Errorf("filemap serve did not exit within %v of %v", startTimeout, sig)
		d.cmd.Process.Kill()
		<-d.done
	}
	d.done = nil
}
