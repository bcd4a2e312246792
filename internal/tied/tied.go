// Package tied starts the helper servers of tests and benchmarks
// (versitygw, toxiproxy) so that they die with the process that started
// them: a test binary killed by its timeout or by ^C leaves none behind.
package tied

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
)

// Proc is a started process, waited for by a goroutine of its own.
type Proc struct {
	Cmd     *exec.Cmd
	exited  chan struct{} // closed when the process has been waited for
	waitErr error         // set before exited is closed
}

// Start starts cmd with Pdeathsig SIGKILL, from a goroutine locked to its
// OS thread that lives until the process is waited for: Pdeathsig follows
// the forking thread, not the process, and the Go runtime may end an idle
// thread. cmd's SysProcAttr, if set, keeps its other fields.
func Start(cmd *exec.Cmd) (*Proc, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	p := &Proc{Cmd: cmd, exited: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

// Exited is closed once the process has exited and been waited for.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Err is what Wait returned; valid once Exited is closed.
func (p *Proc) Err() error { return p.waitErr }

// Kill kills the process and waits for it.
func (p *Proc) Kill() {
	p.Cmd.Process.Kill()
	<-p.exited
}

// Binary finds a helper's binary: the file the environment variable env
// names, else name in PATH, else in GOBIN or GOPATH/bin, where go install
// puts it. It returns "" with no error when there is none; an env naming a
// missing file is an error.
func Binary(env, name string) (string, error) {
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", env, p, err)
		}
		return p, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range goBinDirs() {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", nil
}

func goBinDirs() []string {
	var dirs []string
	if out, err := exec.Command("go", "env", "GOBIN", "GOPATH").Output(); err == nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) == 2 {
			if gobin := strings.TrimSpace(lines[0]); gobin != "" {
				dirs = append(dirs, gobin)
			}
			for _, p := range filepath.SplitList(strings.TrimSpace(lines[1])) {
				dirs = append(dirs, filepath.Join(p, "bin"))
			}
		}
	}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, "go", "bin"))
	}
	return dirs
}
