package main

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/faultyhttp"
	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/internal/syncbuf"
)

// cat of http://alice:PASSWORD@… with a page the server fails: the error
// cat prints, the daemon's log, `stat --objects` as text and JSON, and a
// private handler's log name the object with its password hidden.
func TestCatHTTPPasswordNeverShown(t *testing.T) {
	const (
		secret = "s3cr3tpw"
		size   = 8 << 20
		bad    = 6<<20 + 3*4096 // ranges covering this byte get a 500
	)
	data := pattern.Random(size, 7)
	srv := faultyhttp.Start(t, data)
	srv.RequireAuth("alice", secret)
	srv.Fail(bad, faultyhttp.Status500)
	uri := srv.URLAs("alice", secret)
	name := strings.Replace(uri, secret, "***", 1)
	shown := func(what string, text []byte) {
		t.Helper()
		if bytes.Contains(text, []byte(secret)) {
			t.Errorf("%s shows the password:\n%s", what, text)
		}
		if !bytes.Contains(text, []byte(name)) {
			t.Errorf("%s does not name the object %s:\n%s", what, name, text)
		}
	}

	d := startDaemon(t, "--retries", "0", "--remote-retries", "0")
	r := filemapCLI(t, "cat", "--socket", d.socket, "--length", "65536", uri)
	r.wantCode(t, 0)
	if !bytes.Equal(r.stdout, data[:65536]) {
		t.Fatalf("cat of the first 64 KiB: %d bytes, not the object's", len(r.stdout))
	}
	r = filemapCLI(t, "cat", "--socket", d.socket, "--offset", fmt.Sprint(bad), "--length", "4096", uri)
	r.wantCode(t, 1)
	r.wantStderr(t, "cannot read the page at offset "+fmt.Sprint(bad))
	shown("cat's error for the failing page", r.stderr)
	r = filemapCLI(t, "cat", "--socket", d.socket, "--offset", fmt.Sprint(2*size), uri)
	r.wantCode(t, 1)
	r.wantStderr(t, "past the end")
	shown("cat's error for an offset past the end", r.stderr)

	r = filemapCLI(t, "stat", "--socket", d.socket, "--objects")
	r.wantCode(t, 0)
	shown("stat --objects", r.stdout)
	r = filemapCLI(t, "stat", "--socket", d.socket, "--objects", "--json")
	r.wantCode(t, 0)
	shown("stat --objects --json", r.stdout)
	if objs := objectsJSON(t, d.socket); len(objs) != 1 || objs[0].URI != name {
		t.Errorf("stat --objects --json: %+v; want the object alone, named %s", objs, name)
	}
	d.stop(t)
	if !bytes.Contains(d.stderr.Bytes(), []byte("read failed: SIGBUS for the faulting page")) {
		t.Errorf("the daemon did not log the failed page:\n%s", d.stderr.Bytes())
	}
	shown("the daemon's log", d.stderr.Bytes())

	// A private handler logs to cat's stderr.
	r = filemapCLI(t, "cat", "--offset", fmt.Sprint(bad), "--length", "4096", uri)
	r.wantCode(t, 1)
	r.wantStderr(t, "read failed: SIGBUS for the faulting page", "cannot read the page at offset "+fmt.Sprint(bad))
	shown("cat's stderr with a private handler", r.stderr)
}

// firecracker --mem http://alice:PASSWORD@…: its log, and its error when
// the memory file cannot be opened, name the file with the password
// hidden.
func TestFirecrackerMemPasswordNeverShown(t *testing.T) {
	const secret = "s3cr3tpw"
	srv := faultyhttp.Start(t, pattern.Random(1<<20, 8))
	srv.RequireAuth("alice", secret)
	mem := func(password string) string { return srv.URLAs("alice", password) }
	name := mem("***")
	shown := func(what string, text []byte) {
		t.Helper()
		if bytes.Contains(text, []byte(secret)) || bytes.Contains(text, []byte("wr0ngpw")) {
			t.Errorf("%s shows a password:\n%s", what, text)
		}
		if !bytes.Contains(text, []byte(name)) {
			t.Errorf("%s does not name the memory file %s:\n%s", what, name, text)
		}
	}
	sock := filepath.Join(t.TempDir(), "fc.sock")

	r := filemapCLI(t, "firecracker", "--socket", sock, "--keep=false", "--mem", mem("wr0ngpw"))
	r.wantCode(t, 1)
	r.wantStderr(t, "--mem", "401")
	shown("the error of a memory file that cannot be opened", r.stderr)

	ctx, cancel := context.WithTimeout(context.Background(), childTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, cliBinary(t), "firecracker", "--socket", sock, "--keep=false", "--mem", mem(secret))
	cmd.Env = cliEnv()
	var stderr syncbuf.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(stderr.String(), "filemap firecracker: listening") {
		if time.Now().After(deadline) {
			t.Fatalf("filemap firecracker did not listen within 20s; stderr:\n%s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("filemap firecracker after SIGTERM: %v", err)
	}
	shown("the firecracker handler's log", []byte(stderr.String()))
}
