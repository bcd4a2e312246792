package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// The test binary is also the CLI: run with FILEMAP_TEST_CLI=1, it is
// `filemap` with its own arguments, so the tests below run the real command
// in real processes. (The private handler that a cat or demo starts is this
// binary again; the library's init function recognises that role before
// TestMain runs.)
func TestMain(m *testing.M) {
	if os.Getenv("FILEMAP_TEST_CLI") == "1" {
		main() // exits by itself on errors
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// childTimeout bounds every process a test starts.
const childTimeout = 60 * time.Second

// cliBinary is the path of this test binary, which acts as the CLI.
func cliBinary(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// cliEnv is the environment of a CLI child: this one without a daemon
// socket (so that cat and demo use a private handler unless told
// otherwise), plus FILEMAP_TEST_CLI=1 and extra.
func cliEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "FILEMAP_SOCKET=") || strings.HasPrefix(kv, "FILEMAP_TEST_CLI=") {
			continue
		}
		env = append(env, kv)
	}
	if os.Getenv("GORACE") == "" {
		// Under -race, a child would sleep 1s at exit (and so would its
		// private handler).
		env = append(env, "GORACE=atexit_sleep_ms=0")
	}
	return append(append(env, "FILEMAP_TEST_CLI=1"), extra...)
}

// result is how a CLI child ended.
type result struct {
	args           []string
	stdout, stderr []byte
	code           int
}

// filemapCLI runs `filemap args...` to completion, within childTimeout.
func filemapCLI(t *testing.T, args ...string) result {
	t.Helper()
	return filemapCLIEnv(t, nil, args...)
}

// filemapCLIEnv runs the CLI with env added to its environment.
func filemapCLIEnv(t *testing.T, env []string, args ...string) result {
	t.Helper()
	return filemapCLICmd(t, func(cmd *exec.Cmd) { cmd.Env = cliEnv(env...) }, args...)
}

// filemapCLICmd runs the CLI, its command set up by setup: its environment,
// and its credentials or working directory if need be.
func filemapCLICmd(t *testing.T, setup func(*exec.Cmd), args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), childTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, cliBinary(t), args...)
	setup(cmd)
	// A private handler inherits stderr and exits when the CLI does; do not
	// wait long for it to let go of the pipe.
	cmd.WaitDelay = 10 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{args: args, stdout: stdout.Bytes(), stderr: stderr.Bytes()}
	if ctx.Err() != nil {
		t.Fatalf("filemap %q did not finish within %v; stderr:\n%s", args, childTimeout, r.stderr)
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.code = ee.ExitCode()
	default:
		t.Fatalf("filemap %q: %v; stderr:\n%s", args, err, r.stderr)
	}
	return r
}

// wantCode fails the test unless the child exited with code.
func (r result) wantCode(t *testing.T, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("filemap %q exited %d, want %d; stderr:\n%s", r.args, r.code, code, r.stderr)
	}
}

// wantStderr fails the test unless stderr holds every one of subs.
func (r result) wantStderr(t *testing.T, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if !bytes.Contains(r.stderr, []byte(s)) {
			t.Errorf("filemap %q: stderr does not mention %q:\n%s", r.args, s, r.stderr)
		}
	}
}

func TestNoArgsPrintsUsage(t *testing.T) {
	r := filemapCLI(t)
	r.wantCode(t, 2)
	r.wantStderr(t, "Usage:", "filemap serve", "filemap cat", "filemap demo")
	if len(r.stdout) != 0 {
		t.Errorf("stdout not empty: %q", r.stdout)
	}
}

func TestUnknownCommand(t *testing.T) {
	r := filemapCLI(t, "frobnicate")
	r.wantCode(t, 2)
	r.wantStderr(t, `unknown command "frobnicate"`, "Usage:")
}

func TestHelp(t *testing.T) {
	r := filemapCLI(t, "help")
	r.wantCode(t, 0)
	if !bytes.Contains(r.stdout, []byte("Usage:")) {
		t.Errorf("filemap help printed no usage:\n%s", r.stdout)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"0": 0, "4096": 4096, "128K": 128 << 10, "16M": 16 << 20, "16MiB": 16 << 20, "1g": 1 << 30, "2KB": 2048,
	} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "lots", "1.5M", "M"} {
		if got, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", in, got)
		}
	}
}

// A size shows in the largest binary unit that holds it exactly, and reads
// back as itself.
func TestByteSizeString(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0", 4096: "4K", 4097: "4097", 128 << 10: "128K", 8 << 20: "8M", 3 << 30: "3G", 64 << 40: "64T", 1536 << 10: "1536K", -1: "-1",
	} {
		b := byteSize(n)
		if got := b.String(); got != want {
			t.Errorf("byteSize(%d).String() = %q, want %q", n, got, want)
		}
		if n < 0 {
			continue
		}
		if back, err := parseSize(want); err != nil || back != n {
			t.Errorf("parseSize(%q) = %d, %v; want %d", want, back, err, n)
		}
	}
}

// -h shows byte defaults in units, as a person would type them.
func TestHelpShowsSizesInUnits(t *testing.T) {
	r := filemapCLI(t, "serve", "-h")
	r.wantCode(t, 0)
	r.wantStderr(t, "(default 64T)", "(default 8M)", "(default 128K)", "(default 2M)")
	if bytes.Contains(r.stderr, []byte("70368744177664")) || bytes.Contains(r.stderr, []byte("8388608")) {
		t.Errorf("filemap serve -h shows a size as a raw byte count:\n%s", r.stderr)
	}
}
