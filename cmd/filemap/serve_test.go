package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/filemap/filemap"
	"github.com/filemap/filemap/server"
	"golang.org/x/sys/unix"
)

// daemon is a `filemap serve` child.
type daemon struct {
	cmd    *exec.Cmd
	socket string
	stderr bytes.Buffer // read only after done
	done   chan struct{}
	err    error // of Wait, after done
	cancel context.CancelFunc
}

// startDaemon runs `filemap serve --socket S` and waits until it accepts
// connections.
func startDaemon(t *testing.T, args ...string) *daemon {
	t.Helper()
	// A short directory: socket paths are limited to 107 bytes.
	dir, err := os.MkdirTemp("", "fm-serve-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return startDaemonAt(t, filepath.Join(dir, "s.sock"), args...)
}

// startDaemonAt is startDaemon on socket.
func startDaemonAt(t *testing.T, socket string, args ...string) *daemon {
	t.Helper()
	return startDaemonEnv(t, socket, nil, args...)
}

// startDaemonEnv is startDaemonAt with env added to the daemon's
// environment.
func startDaemonEnv(t *testing.T, socket string, env []string, args ...string) *daemon {
	t.Helper()
	return startDaemonFor(t, childTimeout, socket, env, args...)
}

// startDaemonFor is startDaemonEnv for a daemon that the test may need for
// longer than childTimeout: it is killed after timeout.
func startDaemonFor(t *testing.T, timeout time.Duration, socket string, env []string, args ...string) *daemon {
	t.Helper()
	d := &daemon{socket: socket, done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	d.cancel = cancel
	d.cmd = exec.CommandContext(ctx, cliBinary(t), append([]string{"serve", "--socket", d.socket}, args...)...)
	d.cmd.Env = cliEnv(env...)
	d.cmd.Stderr = &d.stderr
	d.cmd.WaitDelay = 10 * time.Second
	if err := d.cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() { d.err = d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		d.cancel() // kills it if still running
		<-d.done
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-d.done:
			t.Fatalf("filemap serve exited before listening: %v; stderr:\n%s", d.err, d.stderr.Bytes())
		default:
		}
		if c, err := net.Dial("unix", d.socket); err == nil {
			c.Close()
			return d
		}
		if time.Now().After(deadline) {
			d.cancel()
			<-d.done
			t.Fatalf("filemap serve did not listen on %s within 20s; stderr:\n%s", d.socket, d.stderr.Bytes())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stop sends SIGTERM and checks that the daemon exits 0 and removes its
// socket.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.done:
	case <-time.After(20 * time.Second):
		d.cancel()
		<-d.done
		t.Fatalf("filemap serve did not exit within 20s of SIGTERM; stderr:\n%s", d.stderr.Bytes())
	}
	if d.err != nil {
		t.Fatalf("filemap serve after SIGTERM: %v; stderr:\n%s", d.err, d.stderr.Bytes())
	}
	if _, err := os.Stat(d.socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("filemap serve left its socket %s behind (stat: %v)", d.socket, err)
	}
}

func statJSON(t *testing.T, socket string) filemap.Stats {
	t.Helper()
	r := filemapCLI(t, "stat", "--socket", socket, "--json")
	r.wantCode(t, 0)
	var st filemap.Stats
	dec := json.NewDecoder(bytes.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		t.Fatalf("filemap stat --json: %v; stdout:\n%s", err, r.stdout)
	}
	return st
}

// objectsJSON is stat --objects --json, decoded strictly.
func objectsJSON(t *testing.T, socket string) []filemap.ObjectStat {
	t.Helper()
	r := filemapCLI(t, "stat", "--socket", socket, "--objects", "--json")
	r.wantCode(t, 0)
	var objs struct{ Objects []filemap.ObjectStat }
	dec := json.NewDecoder(bytes.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&objs); err != nil {
		t.Fatalf("filemap stat --objects --json: %v; stdout:\n%s", err, r.stdout)
	}
	return objs.Objects
}

// serve --takeover: the running daemon hands over its socket and exits 0,
// and the new one serves on the same socket. (Mappings that live across a
// takeover: TestTakeoverUnderLoad in the root package.)
func TestServeTakeover(t *testing.T) {
	old := startDaemon(t)
	path := filepath.Join(t.TempDir(), "obj")
	data := bytes.Repeat([]byte("takeover"), 1<<17) // 1 MiB
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	r := filemapCLI(t, "serve", "--socket", old.socket)
	r.wantCode(t, 1) // a second daemon without --takeover is refused
	if !bytes.Contains(r.stderr, []byte("already serving")) {
		t.Fatalf("a second serve on a live socket: %s", r.stderr)
	}
	next := startDaemonAt(t, old.socket, "--takeover")
	select {
	case <-old.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("the old daemon did not exit after the takeover; stderr:\n%s", old.stderr.Bytes())
	}
	if old.err != nil {
		t.Fatalf("the old daemon after the takeover: %v; stderr:\n%s", old.err, old.stderr.Bytes())
	}
	got := filemapCLI(t, "cat", "--socket", next.socket, path)
	got.wantCode(t, 0)
	if !bytes.Equal(got.stdout, data) {
		t.Fatalf("cat through the new daemon: %d bytes, not the file's", len(got.stdout))
	}
	if st := statJSON(t, next.socket); st.StoreBytes == 0 {
		t.Fatalf("the new daemon read nothing: %+v", st)
	}
	next.stop(t)
}

func TestServeCatStat(t *testing.T) {
	d := startDaemon(t)
	path, data := randomFile(t, t.TempDir(), 8<<20+77, 3)

	st0 := statJSON(t, d.socket)
	for i := range 2 {
		r := filemapCLI(t, "cat", "--socket", d.socket, path)
		r.wantCode(t, 0)
		if !bytes.Equal(r.stdout, data) {
			t.Fatalf("cat #%d through the daemon: wrote %d bytes that differ from the file's %d", i+1, len(r.stdout), len(data))
		}
		st := statJSON(t, d.socket)
		t.Logf("after cat #%d: %+v", i+1, st)
		if i == 0 {
			if st.StoreReads == st0.StoreReads || st.StoreBytes-st0.StoreBytes < uint64(len(data)) {
				t.Errorf("first cat: store reads %d → %d, bytes %d → %d; want the whole file read",
					st0.StoreReads, st.StoreReads, st0.StoreBytes, st.StoreBytes)
			}
			if st.MajorFaults == st0.MajorFaults {
				t.Errorf("first cat: no major faults counted")
			}
			if st.Objects != 1 {
				t.Errorf("after the first cat: %d objects cached, want 1", st.Objects)
			}
			if st.FillBufferLimit <= 0 || st.FillBufferBytes > st.FillBufferLimit {
				t.Errorf("read buffers %d bytes of a bound of %d: want a bound, kept", st.FillBufferBytes, st.FillBufferLimit)
			}
			st0 = st
			continue
		}
		if st.StoreReads != st0.StoreReads || st.StoreBytes != st0.StoreBytes {
			t.Errorf("second cat read the store: store reads %d → %d, bytes %d → %d; want the cache to serve it",
				st0.StoreReads, st.StoreReads, st0.StoreBytes, st.StoreBytes)
		}
		if st.MajorFaults != st0.MajorFaults {
			t.Errorf("second cat: major faults %d → %d, want none", st0.MajorFaults, st.MajorFaults)
		}
	}

	r := filemapCLI(t, "stat", "--socket", d.socket)
	r.wantCode(t, 0)
	for _, row := range []string{"major faults", "minor faults", "store reads", "MiB)", "fault latency major p50 / p99"} {
		if !bytes.Contains(r.stdout, []byte(row)) {
			t.Errorf("filemap stat printed no %q row:\n%s", row, r.stdout)
		}
	}

	// stat --objects: the file, whole in the cache, no client left.
	objs := objectsJSON(t, d.socket)
	if len(objs) != 1 || objs[0].URI != path || objs[0].Size != int64(len(data)) ||
		objs[0].CacheBytes != (int64(len(data))+4095)&^4095 || objs[0].Users != 0 || objs[0].Version == "" {
		t.Errorf("stat --objects --json after two cats of %s (%d bytes): %+v; want it alone, whole, no users", path, len(data), objs)
	}
	r = filemapCLI(t, "stat", "--socket", d.socket, "--objects")
	r.wantCode(t, 0)
	if !bytes.Contains(r.stdout, []byte("CACHED")) || !bytes.Contains(r.stdout, []byte("100.0")) || !bytes.Contains(r.stdout, []byte(path)) {
		t.Errorf("filemap stat --objects:\n%s\nwant a header and %s at 100.0%%", r.stdout, path)
	}

	// drop-caches empties the cache: the next cat reads the store again.
	filemapCLI(t, "drop-caches", "--socket", d.socket).wantCode(t, 0)
	if objs := objectsJSON(t, d.socket); len(objs) != 1 || objs[0].CacheBytes != 0 {
		t.Errorf("stat --objects after drop-caches: %+v; want the object, nothing cached", objs)
	}
	if st := statJSON(t, d.socket); st.CacheBytes != 0 {
		t.Errorf("after drop-caches: %d bytes cached", st.CacheBytes)
	}
	r = filemapCLI(t, "cat", "--socket", d.socket, path)
	r.wantCode(t, 0)
	if !bytes.Equal(r.stdout, data) {
		t.Fatalf("cat after drop-caches differs from the file")
	}
	if st := statJSON(t, d.socket); st.StoreBytes-st0.StoreBytes < uint64(len(data)) {
		t.Errorf("cat after drop-caches read %d bytes from the store, want the whole file again", st.StoreBytes-st0.StoreBytes)
	}
	filemapCLI(t, "drop-caches", "--socket", d.socket, "extra").wantCode(t, 1)

	// The demo through the daemon.
	r = filemapCLI(t, "demo", "--socket", d.socket, "--size", "2M", "--dir", t.TempDir())
	r.wantCode(t, 0)
	if !bytes.Contains(r.stdout, []byte("handler: daemon at "+d.socket)) {
		t.Errorf("filemap demo --socket did not use the daemon:\n%s", r.stdout)
	}

	d.stop(t)
}

// TestStatNoDaemon checks that stat without a daemon says where it looked.
func TestStatNoDaemon(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "nobody.sock")
	r := filemapCLI(t, "stat", "--socket", socket)
	r.wantCode(t, 1)
	r.wantStderr(t, socket, "filemap serve")
}

// --read-buffers bounds the daemon's read buffers, and stat shows the bound.
func TestServeReadBuffers(t *testing.T) {
	d := startDaemon(t, "--read-buffers", "8M")
	if st := statJSON(t, d.socket); st.FillBufferLimit != 8<<20 {
		t.Fatalf("read buffer bound %d, want 8 MiB", st.FillBufferLimit)
	}
	d.stop(t)
}

// --readahead-inflight bounds readahead reads in flight to local files, 0
// lifts the bound, and stat shows it; after a cat, no read is left in
// flight.
func TestServeReadaheadInflight(t *testing.T) {
	for _, c := range []struct {
		flag string
		want int64
	}{{"", 2 << 20}, {"4M", 4 << 20}, {"0", 0}} {
		var args []string
		if c.flag != "" {
			args = []string{"--readahead-inflight", c.flag}
		}
		d := startDaemon(t, args...)
		if st := statJSON(t, d.socket); st.DiskReadaheadLimit != c.want {
			t.Errorf("--readahead-inflight %q: bound %d, want %d", c.flag, st.DiskReadaheadLimit, c.want)
		}
		d.stop(t)
	}
	d := startDaemon(t)
	path := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(path, bytes.Repeat([]byte("filemap "), 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	filemapCLI(t, "cat", "--socket", d.socket, path).wantCode(t, 0)
	if st := statJSON(t, d.socket); st.DiskReadBytes != 0 {
		t.Errorf("%d bytes of disk reads in flight after the cat", st.DiskReadBytes)
	}
	d.stop(t)
}

func TestServeFlags(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "s.sock")
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"--socket-mode", "abc"}, []string{`--socket-mode "abc"`, "octal"}},
		{[]string{"--socket-mode", "0999"}, []string{`--socket-mode "0999"`}},
		{[]string{"--socket-mode", "01777"}, []string{`--socket-mode "01777"`}},
		{[]string{"--readahead", "100"}, []string{"--readahead 100", "at least one page"}},
		{[]string{"--readahead", "5000"}, []string{"--readahead 5000", "a multiple of 4096"}},
		{[]string{"--readahead-inflight", "lots"}, []string{`invalid value "lots" for flag -readahead-inflight`}},
		{[]string{"--readahead", "lots"}, []string{`invalid value "lots" for flag -readahead`, "bad size"}},
		{[]string{"--retries", "-1"}, []string{"--retries -1"}},
		{[]string{"--fault-timeout", "-1s"}, []string{"--fault-timeout -1s"}},
		{[]string{"--store-timeout", "soon"}, []string{`--store-timeout "soon"`}},
		{[]string{"--store-timeout", "30s", "--fault-timeout", "1m"}, []string{"give only --fault-timeout"}},
		{[]string{"--log-level", "chatty"}, []string{"--log-level"}},
		{[]string{"extra"}, []string{"extra"}},
	} {
		r := filemapCLI(t, append([]string{"serve", "--socket", socket}, c.args...)...)
		r.wantCode(t, 1)
		r.wantStderr(t, append(c.want, "filemap serve:")...)
		if _, err := os.Stat(socket); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("filemap %q made its socket", r.args)
		}
	}

	r := filemapCLI(t, "serve", "-h")
	r.wantCode(t, 0)
	r.wantStderr(t, "Usage: filemap serve", "-socket", "-socket-mode", "-readahead", "-retries", "-log-level", "-read-buffers", "-takeover", "-keep", "-fault-timeout")
}

// --fault-timeout is a fault's bound; the deprecated --store-timeout sets
// it instead, and guards every store's reads as it used to.
func TestFaultTimeoutFlags(t *testing.T) {
	for _, c := range []struct {
		args     []string
		timeout  time.Duration
		guardAll bool
	}{
		{nil, server.DefaultFaultTimeout, false},
		{[]string{"--fault-timeout", "30s"}, 30 * time.Second, false},
		{[]string{"--fault-timeout", "0"}, 0, false},
		{[]string{"--store-timeout", "auto"}, server.DefaultFaultTimeout, false},
		{[]string{"--store-timeout", "45s"}, 45 * time.Second, true},
		{[]string{"--store-timeout", "0"}, 0, false},
	} {
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		fault := fs.Duration("fault-timeout", server.DefaultFaultTimeout, "")
		store := fs.String("store-timeout", "", "")
		if err := fs.Parse(c.args); err != nil {
			t.Fatal(err)
		}
		timeout, guardAll, err := faultTimeoutFlags(fs, *fault, *store)
		if err != nil || timeout != c.timeout || guardAll != c.guardAll {
			t.Errorf("%q: fault timeout %v, every store guarded %v, %v; want %v, %v", c.args, timeout, guardAll, err, c.timeout, c.guardAll)
		}
	}
}

// --max-idle-caches 0 keeps no cache once its last client lets go; by
// default the cache of a file cat read stays, idle.
func TestServeMaxIdleCaches(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(path, bytes.Repeat([]byte("idle "), 1<<16), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args       []string
		objects    int
		idle       int
		descriptor string
	}{{nil, 1, 1, "default"}, {[]string{"--max-idle-caches", "0"}, 0, 0, "0"}} {
		d := startDaemon(t, c.args...)
		filemapCLI(t, "cat", "--socket", d.socket, path).wantCode(t, 0)
		if st := statJSON(t, d.socket); st.Objects != c.objects || st.IdleObjects != c.idle {
			t.Errorf("--max-idle-caches %s: %d objects, %d idle after a cat; want %d, %d", c.descriptor, st.Objects, st.IdleObjects, c.objects, c.idle)
		}
		d.stop(t)
	}
}

// --socket-owner gives the socket to a user and group, by name or number,
// as a jailed Firecracker or a client of another uid needs; a name that
// does not exist is refused before anything listens.
func TestServeSocketOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: chown of the socket to another uid")
	}
	for _, c := range []struct {
		owner    string
		uid, gid uint32
	}{{"65534:65534", 65534, 65534}, {"nobody", 65534, 0}, {":12345", 0, 12345}} {
		d := startDaemon(t, "--socket-owner", c.owner)
		statJSON(t, d.socket) // serving: the socket has its owner
		var st unix.Stat_t
		if err := unix.Stat(d.socket, &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid != c.uid || st.Gid != c.gid {
			t.Errorf("--socket-owner %s: socket owned by %d:%d, want %d:%d", c.owner, st.Uid, st.Gid, c.uid, c.gid)
		}
		d.stop(t)
	}
	sock := filepath.Join(t.TempDir(), "s.sock")
	r := filemapCLI(t, "serve", "--socket", sock, "--socket-owner", "no-such-user-here")
	r.wantCode(t, 1)
	r.wantStderr(t, `--socket-owner "no-such-user-here"`, "unknown user")
	if _, err := os.Stat(sock); err == nil {
		t.Error("the socket was made for a refused --socket-owner")
	}
}

// A --socket that names a file, or a directory, is refused with an error
// that names it and says what it is, and stays as it was: serve and
// firecracker replace a stale socket only. So does the keeper's
// SOCKET.keeper: the daemon serves without a keeper, and says why.
func TestSocketPathIsNotAFile(t *testing.T) {
	dir := t.TempDir()
	mem := filepath.Join(dir, "mem")
	if err := os.WriteFile(mem, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	data := []byte("a user's data, not a socket")
	victim := filepath.Join(dir, "victim.bin")
	if err := os.WriteFile(victim, data, 0o644); err != nil {
		t.Fatal(err)
	}
	emptyDir := filepath.Join(dir, "empty")
	if err := os.Mkdir(emptyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		what string
	}{
		{[]string{"serve", "--socket", victim}, "is a regular file, not a socket; refusing to replace it"},
		{[]string{"serve", "--socket", emptyDir}, "is a directory, not a socket; refusing to replace it"},
		{[]string{"firecracker", "--socket", victim, "--mem", mem}, "is a regular file, not a socket; refusing to replace it"},
	} {
		r := filemapCLI(t, c.args...)
		r.wantCode(t, 1)
		r.wantStderr(t, c.args[2], c.what)
	}
	if got, err := os.ReadFile(victim); err != nil || !bytes.Equal(got, data) {
		t.Errorf("%s after serve and firecracker were pointed at it: %q, %v; want it untouched", victim, got, err)
	}
	if fi, err := os.Stat(emptyDir); err != nil || !fi.IsDir() {
		t.Errorf("%s after serve was pointed at it: %v, %v; want the directory", emptyDir, fi, err)
	}

	sockDir, err := os.MkdirTemp("", "fm-keeper-") // short: socket paths are limited to 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	socket := filepath.Join(sockDir, "s.sock")
	keeperPath := socket + ".keeper"
	if err := os.WriteFile(keeperPath, data, 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemonAt(t, socket)
	statJSON(t, socket) // it serves
	d.stop(t)
	if !bytes.Contains(d.stderr.Bytes(), []byte(keeperPath)) || !bytes.Contains(d.stderr.Bytes(), []byte("is a regular file, not a socket")) {
		t.Errorf("serve with a regular file at %s: stderr does not say so:\n%s", keeperPath, d.stderr.Bytes())
	}
	if got, err := os.ReadFile(keeperPath); err != nil || !bytes.Equal(got, data) {
		t.Errorf("%s after a daemon ran on %s: %q, %v; want it untouched", keeperPath, socket, got, err)
	}
}

// A daemon that shuts down removes its own socket only: if its path was
// taken meanwhile (its socket removed by hand and another daemon started
// there), the other daemon's socket stays and serves.
func TestServeShutdownLeavesAnotherDaemonsSocket(t *testing.T) {
	first := startDaemon(t, "--keep=false")
	statJSON(t, first.socket) // serving, its SIGTERM handler installed
	if err := os.Remove(first.socket); err != nil {
		t.Fatal(err)
	}
	second := startDaemonAt(t, first.socket, "--keep=false")
	statJSON(t, second.socket)
	if err := first.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-first.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("the first daemon did not exit within 20s of SIGTERM; stderr:\n%s", first.stderr.Bytes())
	}
	if first.err != nil {
		t.Fatalf("the first daemon after SIGTERM: %v; stderr:\n%s", first.err, first.stderr.Bytes())
	}
	if _, err := os.Lstat(second.socket); err != nil {
		t.Fatalf("the first daemon's shutdown removed the second's socket: %v", err)
	}
	statJSON(t, second.socket) // the second still serves there
	second.stop(t)
}

// drop-caches empties the caches of its own uid only; root's empties
// every uid's. A client of another uid, let in by --socket-mode 0666, must
// not make root's clients read their stores again.
func TestDropCachesOfItsOwnUid(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a client runs as uid 65534 (nobody)")
	}
	const nobody = 65534
	// Everything nobody reaches lives in a directory it may enter: the
	// CLI, the socket and the files.
	dir, err := os.MkdirTemp("", "fm-drop-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "filemap")
	if err := os.Link(cliBinary(t), exe); err != nil {
		b, err := os.ReadFile(cliBinary(t))
		if err == nil {
			err = os.WriteFile(exe, b, 0o755)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	asNobody := func(cmd *exec.Cmd) {
		cmd.Path, cmd.Dir, cmd.Env = exe, dir, cliEnv()
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: nobody, Gid: nobody},
			// userfaultfd for kernel-mode faults (cat's write(2) from the
			// mapping), as the README asks of any client.
			AmbientCaps: []uintptr{unix.CAP_SYS_PTRACE},
		}
	}
	rootPath, rootData := randomFile(t, dir, 1<<20, 1)
	nobodyPath := filepath.Join(dir, "nobodys.bin")
	if err := os.WriteFile(nobodyPath, rootData[:512<<10], 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemonAt(t, filepath.Join(dir, "s.sock"), "--socket-mode", "0666")
	filemapCLI(t, "cat", "--socket", d.socket, rootPath).wantCode(t, 0)
	filemapCLICmd(t, asNobody, "cat", "--socket", d.socket, nobodyPath).wantCode(t, 0)
	cached := func() (root, nobodys int64) {
		t.Helper()
		objs := objectsJSON(t, d.socket) // root's: every uid's objects
		for _, o := range objs {
			switch {
			case o.URI == rootPath && o.Uid == 0:
				root = o.CacheBytes
			case o.URI == nobodyPath && o.Uid == nobody:
				nobodys = o.CacheBytes
			}
		}
		if len(objs) != 2 {
			t.Fatalf("stat --objects: %+v; want root's object and nobody's", objs)
		}
		return root, nobodys
	}
	if root, nobodys := cached(); root != 1<<20 || nobodys != 512<<10 {
		t.Fatalf("after a cat by each uid, root's cache holds %d bytes, nobody's %d; want both whole", root, nobodys)
	}

	filemapCLICmd(t, asNobody, "drop-caches", "--socket", d.socket).wantCode(t, 0)
	if root, nobodys := cached(); root != 1<<20 || nobodys != 0 {
		t.Errorf("after nobody's drop-caches, root's cache holds %d bytes, nobody's %d; want root's whole, nobody's empty", root, nobodys)
	}
	filemapCLICmd(t, asNobody, "cat", "--socket", d.socket, nobodyPath).wantCode(t, 0)
	filemapCLI(t, "drop-caches", "--socket", d.socket).wantCode(t, 0)
	if root, nobodys := cached(); root != 0 || nobodys != 0 {
		t.Errorf("after root's drop-caches, root's cache holds %d bytes, nobody's %d; want both empty", root, nobodys)
	}
	d.stop(t)
}

// stat's text and its JSON say the same things by the same names: every
// JSON key, in words, begins a row of the text (fault_latency by kind), and
// the JSON's latencies are rounded, not float noise.
func TestStatTextNamesJSONKeys(t *testing.T) {
	d := startDaemon(t)
	path, _ := randomFile(t, t.TempDir(), 1<<20, 9)
	filemapCLI(t, "cat", "--socket", d.socket, path).wantCode(t, 0)
	r := filemapCLI(t, "stat", "--socket", d.socket, "--json")
	r.wantCode(t, 0)
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(r.stdout, &keys); err != nil {
		t.Fatalf("stat --json: %v\n%s", err, r.stdout)
	}
	var latency map[string]json.RawMessage
	if err := json.Unmarshal(keys["fault_latency"], &latency); err != nil || len(latency) == 0 {
		t.Fatalf("stat --json after a cat: fault_latency %s (%v), want the kinds", keys["fault_latency"], err)
	}
	for _, num := range regexp.MustCompile(`"(p50|p99|mean)_us": *([0-9.]+)`).FindAllStringSubmatch(string(r.stdout), -1) {
		if _, frac, _ := strings.Cut(num[2], "."); len(frac) > 2 {
			t.Errorf("stat --json: %s_us is %s, more than two decimals", num[1], num[2])
		}
	}
	delete(keys, "fault_latency")
	text := filemapCLI(t, "stat", "--socket", d.socket)
	text.wantCode(t, 0)
	var labels []string
	for _, line := range strings.Split(string(text.stdout), "\n") {
		labels = append(labels, strings.ToLower(strings.TrimSpace(line)))
	}
	hasRow := func(words string) bool {
		return slices.ContainsFunc(labels, func(l string) bool {
			rest, ok := strings.CutPrefix(l, words)
			return ok && (rest == "" || rest[0] == ' ' || rest[0] == '(')
		})
	}
	for key := range keys {
		if !hasRow(strings.ReplaceAll(key, "_", " ")) {
			t.Errorf("stat's text has no row for the JSON key %q:\n%s", key, text.stdout)
		}
	}
	for kind := range latency {
		if !hasRow("fault latency " + kind) {
			t.Errorf("stat's text has no row for fault_latency %q:\n%s", kind, text.stdout)
		}
	}
	d.stop(t)
}

// stat's clients are the daemon's connections other than the one asking:
// none while nothing else is connected, one while another connection is
// open.
func TestStatCountsOtherClients(t *testing.T) {
	d := startDaemon(t)
	clientsBecome := func(want int) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			st := statJSON(t, d.socket)
			if st.Clients == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("stat says %d clients, want %d", st.Clients, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	clientsBecome(0) // the connection that saw the daemon listen has gone
	c, err := net.Dial("unix", d.socket)
	if err != nil {
		t.Fatal(err)
	}
	clientsBecome(1)
	r := filemapCLI(t, "stat", "--socket", d.socket)
	r.wantCode(t, 0)
	if !regexp.MustCompile(`clients \(besides this stat\)\s+1`).Match(r.stdout) {
		t.Errorf("stat's text does not count the one other client:\n%s", r.stdout)
	}
	c.Close()
	clientsBecome(0)
	d.stop(t)
}

// drop-caches says what it dropped: the bytes the cache held, of how many
// objects.
func TestDropCachesSaysWhatItDropped(t *testing.T) {
	d := startDaemon(t)
	path, _ := randomFile(t, t.TempDir(), 1<<20, 10)
	filemapCLI(t, "cat", "--socket", d.socket, path).wantCode(t, 0)
	cached := statJSON(t, d.socket).CacheBytes
	if cached == 0 {
		t.Fatal("nothing cached after a cat")
	}
	r := filemapCLI(t, "drop-caches", "--socket", d.socket)
	r.wantCode(t, 0)
	if want := fmt.Sprintf("dropped %d bytes from the caches of 1 object\n", cached); string(r.stdout) != want {
		t.Errorf("drop-caches printed %q, want %q", r.stdout, want)
	}
	r = filemapCLI(t, "drop-caches", "--socket", d.socket)
	r.wantCode(t, 0)
	if want := "dropped 0 bytes from the caches of 0 objects\n"; string(r.stdout) != want {
		t.Errorf("drop-caches of empty caches printed %q, want %q", r.stdout, want)
	}
	d.stop(t)
}

// TestServeCPUProfile: --cpuprofile writes the daemon's CPU profile when
// it exits, a gzipped profile that go tool pprof reads; a file that cannot
// be made is an error at start, naming the flag.
func TestServeCPUProfile(t *testing.T) {
	prof := filepath.Join(t.TempDir(), "cpu.prof")
	d := startDaemon(t, "--cpuprofile", prof)
	path, data := randomFile(t, t.TempDir(), 8<<20, 5)
	r := filemapCLI(t, "cat", "--socket", d.socket, path)
	r.wantCode(t, 0)
	if !bytes.Equal(r.stdout, data) {
		t.Fatalf("cat through the daemon: wrote %d bytes that differ from the file's %d", len(r.stdout), len(data))
	}
	d.stop(t)
	f, err := os.Open(prof)
	if err != nil {
		t.Fatalf("no profile after the daemon exited: %v", err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("the profile is not gzipped, as pprof's are: %v", err)
	}
	if b, err := io.ReadAll(z); err != nil || len(b) == 0 {
		t.Fatalf("the profile: %d bytes, %v; want a whole, non-empty profile", len(b), err)
	}

	bad := filemapCLI(t, "serve", "--socket", filepath.Join(t.TempDir(), "s.sock"), "--cpuprofile", filepath.Join(t.TempDir(), "no", "such", "dir", "cpu.prof"))
	bad.wantCode(t, 1)
	bad.wantStderr(t, "--cpuprofile", "no such file or directory")
}
