package server

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/filemap/filemap/internal/faultyhttp"
	"github.com/filemap/filemap/internal/fdstore"
	"github.com/filemap/filemap/pagecache"
	"github.com/filemap/filemap/uffd"
	"golang.org/x/sys/unix"
)

// A daemon that takes over a region of a remote object from a predecessor
// that named its cache by the raw URI, password and all, names it
// redacted: in its listing and its logs.
func TestRestoreRedactsAKeptName(t *testing.T) {
	const secret = "s3cr3tpw"
	data := bytes.Repeat([]byte("kept"), 4096)
	srv := faultyhttp.Start(t, data)
	srv.RequireAuth("alice", secret)
	raw := srv.URLAs("alice", secret)

	ts := newTestServer(t)
	u, err := uffd.New(unix.O_CLOEXEC | unix.O_NONBLOCK)
	if err != nil {
		t.Skipf("userfaultfd: %v (needs root or vm.unprivileged_userfaultfd=1)", err)
	}
	defer u.Close()
	if _, err := u.API(0, 0); err != nil {
		t.Fatal(err)
	}
	uf, err := dupAsFile(u.Fd())
	if err != nil {
		t.Fatal(err)
	}
	cache, err := pagecache.New(raw, int64(len(data))) // as the predecessor named it
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	desc, err := json.Marshal(keptRegion{URI: raw, Name: raw, Version: `"v1"`, Size: int64(len(data))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ts.restore(fdstore.Entry{ID: 1, Pid: os.Getpid(), Desc: desc, Files: []*os.File{uf, dupFile(cache.File())}}); err != nil {
		t.Fatalf("restore: %v", err)
	}
	objs := ts.Objects(0)
	if len(objs) != 1 || objs[0].URI != strings.Replace(raw, secret, "***", 1) {
		t.Errorf("Objects after the restore: %+v; want the object, named %s", objs, strings.Replace(raw, secret, "***", 1))
	}
	if log := ts.log.String(); strings.Contains(log, secret) || !strings.Contains(log, "alice:***@") {
		t.Errorf("the daemon's log shows the password, or does not name the object:\n%s", log)
	}
}

func dupAsFile(fd int) (*os.File, error) {
	d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(d), "uffd"), nil
}
