package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/filemap/filemap/internal/syncbuf"
	"github.com/filemap/filemap/internal/testutil"
)

// TestFirecrackerFlags: the subcommand refuses what it cannot serve before
// it listens, naming the flag. (Restores through it are tested in package
// firecracker, with a client that behaves as Firecracker does.)
func TestFirecrackerFlags(t *testing.T) {
	dir := t.TempDir()
	mem := filepath.Join(dir, "mem")
	if err := os.WriteFile(mem, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "uffd.sock")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--mem", mem}, "--socket is required"},
		{[]string{"--socket", sock}, "--mem is required"},
		{[]string{"--socket", sock, "--mem", filepath.Join(dir, "nothing")}, "no such file or directory"},
		{[]string{"--socket", sock, "--mem", mem, "--copy-around", "12K"}, "--copy-around 12288: a power of two"},
		{[]string{"--socket", sock, "--mem", mem, "--readahead", "100"}, "--readahead 100"},
		{[]string{"--socket", sock, "--mem", mem, "--socket-mode", "0999"}, `--socket-mode "0999"`},
		{[]string{"--socket", sock, "--mem", mem, "--retries", "-1"}, "--retries -1"},
		{[]string{"--socket", sock, "--mem", mem, "--fault-timeout", "-1s"}, "--fault-timeout -1s"},
		{[]string{"--socket", sock, "--mem", mem, "--socket-owner", "no-such-user-here"}, `--socket-owner "no-such-user-here"`},
		{[]string{"--socket", sock, "--mem", mem, "--prefetch", filepath.Join(dir, "no-record")}, "prefetch"},
		{[]string{"--socket", sock, "--mem", mem, "--prefetch", mem}, "bad working-set record"},
	} {
		r := filemapCLI(t, append([]string{"firecracker"}, c.args...)...)
		r.wantCode(t, 1)
		r.wantStderr(t, c.want)
	}
	if _, err := os.Stat(sock); err == nil {
		t.Error("a refused configuration left a socket behind")
	}
}

// --fault-timeout bounds a VM's faults as it does serve's, and the handler
// says which bound it runs with.
func TestFirecrackerFaultTimeout(t *testing.T) {
	dir := t.TempDir()
	mem := filepath.Join(dir, "mem")
	if err := os.WriteFile(mem, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), childTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, cliBinary(t), "firecracker", "--socket", filepath.Join(dir, "uffd.sock"),
		"--keep=false", "--mem", mem, "--fault-timeout", "7s")
	cmd.Env = cliEnv()
	var stderr syncbuf.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "filemap firecracker to listen", func() bool {
		return strings.Contains(stderr.String(), "filemap firecracker: listening")
	})
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	if !strings.Contains(stderr.String(), "fault-timeout=7s") {
		t.Errorf("filemap firecracker --fault-timeout 7s does not say it runs with it:\n%s", stderr.String())
	}
}
