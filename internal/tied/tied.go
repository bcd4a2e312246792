// Package tied starts the helper servers of tests and benchmarks
// (versitygw, toxiproxy) so that they die with the process that started
// them: a test binary killed by its timeout or by ^C leaves none behind.
package tied

import (
	"os/exec"
	"runtime"
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
