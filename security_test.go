package filemap

// The security boundary (issue 6, part 4; THREAT_MODEL.md), with a client of
// another uid: the daemon runs as root, and a client running as nobody
// reaches no file through it that it could not read itself, and shares no
// cache with root's clients.

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/server"
	"golang.org/x/sys/unix"
)

const nobody = 65534

// startDriverAs is startDriver for a client running as uid and gid nobody
// from exe, with CAP_SYS_PTRACE so that it may use userfaultfd for
// kernel-mode faults as the README asks of any client.
func startDriverAs(t *testing.T, exe, socket string) *driver {
	t.Helper()
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), envRole+"=driver", "FILEMAP_SOCKET="+socket)
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
	// Everything nobody must reach lives in a directory it may enter: the
	// test binary, the socket (0666: any uid may connect) and the files.
	dir, err := os.MkdirTemp("", "filemap-security-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "filemap.test")
	if err := os.Link(os.Args[0], exe); err != nil {
		copyFile(t, os.Args[0], exe)
	}
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
