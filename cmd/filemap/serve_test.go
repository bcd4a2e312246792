package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"net"
	"os"
	"os/exec"
	"path/filepath"
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
	d := &daemon{socket: socket, done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), childTimeout)
	d.cancel = cancel
	d.cmd = exec.CommandContext(ctx, cliBinary(t), append([]string{"serve", "--socket", d.socket}, args...)...)
	d.cmd.Env = cliEnv()
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
	for _, row := range []string{"major faults", "minor faults", "store reads", "MiB)", "major fault service p50 / p99"} {
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
