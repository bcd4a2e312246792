package filemap

// The security boundary (THREAT_MODEL.md), with clients of another uid:
// the daemon runs as root, and a client running as nobody reaches no file
// through it that it could not read itself, shares no cache with root's
// clients, and plants no bytes in the caches of its own uid's.

import (
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/internal/testutil"
	"github.com/filemap/filemap/proto"
	"github.com/filemap/filemap/server"
	"golang.org/x/sys/unix"
)

const nobody = 65534

// startDriverAs is startDriver for a client running as uid and gid nobody
// from exe, with CAP_SYS_PTRACE so that it may use userfaultfd for
// kernel-mode faults as the README asks of any client. It has extra as its
// descriptors 3 and on.
func startDriverAs(t *testing.T, exe, socket string, extra ...*os.File) *driver {
	t.Helper()
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), envRole+"=driver", "FILEMAP_SOCKET="+socket)
	cmd.ExtraFiles = extra
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential:  &syscall.Credential{Uid: nobody, Gid: nobody},
		AmbientCaps: []uintptr{unix.CAP_SYS_PTRACE},
	}
	cmd.Dir = filepath.Dir(exe)
	return runDriverCmd(t, cmd, "driver (nobody)")
}

func TestOtherUidReadsOnlyWithItsOwnRights(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the daemon runs as root and a client as uid 65534 (nobody)")
	}
	dir, exe := nobodysDir(t)
	secret := filepath.Join(dir, "secret") // root's, 0600
	if err := os.WriteFile(secret, []byte(strings.Repeat("root only ", 1000)), 0o600); err != nil {
		t.Fatal(err)
	}
	writeOnly := filepath.Join(dir, "write-only") // nobody's, 0200
	if err := os.WriteFile(writeOnly, []byte(strings.Repeat("no reading ", 1000)), 0o200); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(writeOnly, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	public := filepath.Join(dir, "public")
	pattern.WriteFile(t, public, 1<<20+77)
	if err := os.Chmod(public, 0o644); err != nil {
		t.Fatal(err)
	}

	d := startDaemonOn(t, server.Config{}, filepath.Join(dir, "filemap.sock"), 0o666)

	n := startDriverAs(t, exe, d.sock)
	// An O_PATH descriptor takes no right to the file: the daemon, root,
	// would have read it with its own.
	if r := n.Do("rawopen %s opath", secret); !strings.HasPrefix(r, "err ") || !strings.Contains(r, "O_PATH") {
		t.Errorf("open of root's 0600 file through an O_PATH descriptor: %q; want it refused", r)
	}
	// The ordinary way: the kernel refuses nobody itself.
	if r := n.Do("rawopen %s rdonly", secret); !strings.Contains(r, "permission denied") {
		t.Errorf("open of root's 0600 file for reading: %q; want permission denied", r)
	}
	// Writing is not reading.
	if r := n.Do("rawopen %s wronly", writeOnly); !strings.HasPrefix(r, "err ") || !strings.Contains(r, "not open for reading") {
		t.Errorf("open of a 0200 file through an O_WRONLY descriptor: %q; want it refused", r)
	}
	// A file nobody may read, it maps; root's client maps it too, and each
	// uid has its own cache of it.
	n.open(public, "")
	n.OK("read 0 %d", 1<<20+77)
	r := startDriver(t, d.sock)
	r.open(public, "")
	r.OK("read 0 %d", 1<<20+77)
	if st := d.s.Stats(); st.Objects != 2 {
		t.Errorf("%d caches of one file opened by two uids, want 2", st.Objects)
	}
	uids := map[uint32]bool{}
	for _, c := range d.s.Clients() {
		uids[c.UID] = true
	}
	if !uids[0] || !uids[nobody] {
		t.Errorf("clients of uids %v, want 0 and %d (SO_PEERCRED)", uids, nobody)
	}
}

// nobodysDir makes a directory for everything nobody must reach: the test
// binary, which it returns, a socket (0666: any uid may connect) and
// files.
func nobodysDir(t *testing.T) (dir, exe string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "filemap-security-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	exe = filepath.Join(dir, "filemap.test")
	if err := os.Link(os.Args[0], exe); err != nil {
		copyFile(t, os.Args[0], exe)
	}
	return dir, exe
}

// A client hands back, as the cache of a file it may only read, a cache
// file holding bytes of its choosing; another client of its uid then maps
// that file, and must read the file's own bytes. The cache file is the
// daemon's own, of the attacker's decoy file: a root daemon adopts only
// files of its uid, and a client of another uid can make none.
func TestHandedBackCacheServesOnlyItsClient(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the daemon runs as root and its clients as uid 65534 (nobody)")
	}
	dir, exe := nobodysDir(t)
	const size = 1<<20 + 77
	target := filepath.Join(dir, "target") // root's, 0644: nobody may read it, not write it
	pattern.WriteFile(t, target, size)
	if err := os.Chmod(target, 0o644); err != nil {
		t.Fatal(err)
	}
	decoy := filepath.Join(dir, "decoy") // nobody's, as long as the target
	if err := os.WriteFile(decoy, []byte(strings.Repeat("planted!", size/8+1)[:size]), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(decoy, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	d := startDaemonOn(t, server.Config{}, filepath.Join(dir, "filemap.sock"), 0o666)

	attacker := startDriverAs(t, exe, d.sock)
	attacker.open(decoy, "")
	attacker.OK("read 0 %d", size) // the decoy's cache now holds the planted bytes
	attacker.OK("holdcache")
	testutil.WaitFor(t, "the decoy's cache to be unused", func() bool {
		for _, o := range d.s.Objects(nobody) {
			if o.URI == decoy && o.Users == 0 {
				return true
			}
		}
		return false
	})
	// The decoy's owner makes the daemon drop that cache (a cache no one has
	// open goes when its file changes): none wraps the held file now.
	later := time.Now().Add(time.Hour)
	attacker.OK("retime %s %d", decoy, later.UnixNano())
	attacker.OK("rawopen %s rdonly", decoy)
	attacker.OK("handback %s", target)

	innocent := startDriverAs(t, exe, d.sock)
	innocent.open(target, "")
	if r := innocent.Do("read 0 %d", size); r != "ok" {
		t.Fatalf("a client reading %s after another client of its uid handed back a cache of it: %q; want the file's own bytes", target, r)
	}
}

// A client may not hand back a cache of another uid, though a process of
// that uid gave it the file: the daemon would fill that one file as two
// caches, and write the bytes of the client's object into the other uid's.
func TestHandBackOtherUidsCacheRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the daemon and a client run as root, another client as uid 65534 (nobody)")
	}
	dir, exe := nobodysDir(t)
	const size = 256 << 10
	public := filepath.Join(dir, "public") // root's, 0644
	pattern.WriteFile(t, public, size)
	if err := os.Chmod(public, 0o644); err != nil {
		t.Fatal(err)
	}
	mine := filepath.Join(dir, "mine") // nobody's, as long
	if err := os.WriteFile(mine, []byte(strings.Repeat("nobody's", size/8)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(mine, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	d := startDaemonOn(t, server.Config{}, filepath.Join(dir, "filemap.sock"), 0o666)

	rootsCache := openAsClient(t, d.sock, public) // the test process is root's client
	n := startDriverAs(t, exe, d.sock, rootsCache)
	n.OK("holdfd 3")
	if r := n.Do("handback %s", mine); !strings.HasPrefix(r, "err ") || !strings.Contains(r, "uid 0") {
		t.Errorf("nobody hands back root's cache of %s as the cache of %s: %q; want it refused, naming uid 0", public, mine, r)
	}
}

// openAsClient opens path on the daemon at socket, from this process, and
// returns the cache file the daemon sends. The connection stays open until
// the test ends.
func openAsClient(t *testing.T, socket, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	nc, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	c := proto.NewConn(nc.(*net.UnixConn))
	t.Cleanup(func() { c.Close() })
	c.UnixConn().SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Call(proto.THello, 1, proto.Hello{PID: os.Getpid(), Program: "filemap.test"}, nil, nil); err != nil {
		t.Fatalf("hello: %v", err)
	}
	var or proto.OpenReply
	fds, err := c.Call(proto.TOpen, 2, proto.Open{URI: path}, []*os.File{f}, &or)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	if len(fds) != 1 {
		closeFiles(fds)
		t.Fatalf("open %s: %d descriptors, want the cache file", path, len(fds))
	}
	t.Cleanup(func() { fds[0].Close() })
	return fds[0]
}

// holdCache keeps the cache file of the open mapping and closes the
// mapping.
func (st *driverState) holdCache() string {
	fd, err := unix.FcntlInt(st.m.memfd.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return "err " + err.Error()
	}
	st.held = os.NewFile(uintptr(fd), "cache")
	if err := st.m.Close(); err != nil {
		return "err " + err.Error()
	}
	return "ok"
}

// handBack opens path as a client re-opening after a restart does, handing
// back the held cache file as the cache it maps, and says whether the
// daemon adopted it. The connection stays open: the cache is in use.
func (st *driverState) handBack(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return "err " + err.Error()
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "err " + err.Error()
	}
	nc, err := net.Dial("unix", os.Getenv("FILEMAP_SOCKET"))
	if err != nil {
		return "err " + err.Error()
	}
	c := proto.NewConn(nc.(*net.UnixConn))
	c.UnixConn().SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Call(proto.THello, 1, proto.Hello{PID: os.Getpid(), Program: "handback"}, nil, nil); err != nil {
		c.Close()
		return "err hello: " + err.Error()
	}
	var or proto.OpenReply
	fds, err := c.Call(proto.TOpen, 2, proto.Open{URI: path, Cache: true, Size: fi.Size()}, []*os.File{f, st.held}, &or)
	defer closeFiles(fds)
	if err != nil {
		c.Close()
		return "err " + err.Error()
	}
	if len(fds) != 1 || !sameFile(fds[0], st.held) {
		c.Close()
		return "err the daemon did not adopt the cache file handed back"
	}
	c.UnixConn().SetDeadline(time.Time{})
	st.handedBack = append(st.handedBack, c)
	return "ok"
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
}
