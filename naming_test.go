package filemap

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/server"
)

// A file opened by a relative path is named by its absolute path from the
// client's working directory, not the daemon's: in CachedObjects, as in
// filemap stat --objects.
func TestRelativePathNamedFromClientsDirectory(t *testing.T) {
	d := startDaemon(t, server.Config{})
	dir := filepath.Join(t.TempDir(), "x", "sub")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "data.bin")
	pattern.WriteFile(t, path, 1<<20)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), envRole+"=driver", "FILEMAP_SOCKET="+d.sock)
	cmd.Dir = dir
	a := runDriverCmd(t, cmd, "driver in "+dir)
	a.open("data.bin", "")
	a.OK("read 0 %d", 1<<20) // the bytes, checked against the file

	objs, err := CachedObjects(context.Background(), WithSocket(d.sock))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 1 || objs[0].URI != path {
		t.Fatalf("CachedObjects after opening data.bin in %s: %+v; want one object named %s", dir, objs, path)
	}
}
