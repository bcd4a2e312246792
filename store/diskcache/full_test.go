package diskcache

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/internal/tmpfs"
)

// A cache whose file system is full opens, serves the chunks on disk, serves
// new objects from their stores, and caches again, with no restart, once
// there is room.
func TestFullDiskServesFromDisk(t *testing.T) {
	fs := tmpfs.Mount(t, 4<<20)
	dir := filepath.Join(fs, "cache")
	data := pattern.Random(8*cs, 21)
	fill(t, dir, key, v1, data)
	filler := tmpfs.Fill(t, fs, 0)

	c, lb := open(t, dir, 1<<30)
	mustContain(t, "log", lb.String(), "full", "serving the chunks on disk")
	f := newFake(key, v1, data)
	st := c.Wrap(f)
	readAll(t, st, data, pageSize)
	st.Close()
	if n := f.reads.Load(); n != 0 {
		t.Errorf("the chunks on disk: %d store reads, want 0", n)
	}
	if s := c.Stats(); s.Hits == 0 || s.Corrupt != 0 {
		t.Errorf("the chunks on disk: stats %+v, want hits", s)
	}

	const key2 = "s3:bucket/other"
	other := pattern.Random(4*cs, 22)
	f2 := newFake(key2, v1, other)
	st2 := c.Wrap(f2)
	readAll(t, st2, other, cs)
	st2.Close()
	if n := f2.reads.Load(); n != 4 {
		t.Errorf("an object new to a full disk: %d store reads, want 4", n)
	}
	if s := c.Stats(); s.WriteErrors != 1 {
		t.Errorf("an object new to a full disk: %d write errors, want 1 (its files could not be made)", s.WriteErrors)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	before := c.Stats().BytesWritten
	st3 := c.Wrap(newFake(key2, v1, other))
	readAll(t, st3, other, cs)
	st3.Close()
	if s := c.Stats(); s.BytesWritten-before != uint64(len(other)) {
		t.Errorf("with room again: %d bytes written, want the object's %d; stats %+v", s.BytesWritten-before, len(other), s)
	}
	c.Close()
	c2, _ := open(t, dir, 1<<30)
	f4 := newFake(key2, v1, other)
	st4 := c2.Wrap(f4)
	defer st4.Close()
	readAll(t, st4, other, cs)
	if n := f4.reads.Load(); n != 0 {
		t.Errorf("after a restart: %d store reads of the object cached once there was room, want 0", n)
	}
}

// With no inode left, a cache whose directory and lock file exist opens,
// probing hole punching without a file of its own, and serves what it holds.
func TestNoInodeLeftServesFromDisk(t *testing.T) {
	fs := tmpfs.Mount(t, 4<<20)
	dir := filepath.Join(fs, "cache")
	data := pattern.Random(4*cs, 24)
	fill(t, dir, key, v1, data)
	tmpfs.FillInodes(t, fs)
	c, lb := open(t, dir, 1<<30)
	mustContain(t, "log", lb.String(), "full", "no space left on device")
	f := newFake(key, v1, data)
	st := c.Wrap(f)
	defer st.Close()
	readAll(t, st, data, cs)
	if n := f.reads.Load(); n != 0 {
		t.Errorf("%d store reads, want 0: every chunk from disk", n)
	}
}

// A chunk that fills the disk midway is undone whole, even when its index
// record lies in a page of the index that was never written (a hole, which
// a write of zeros would need room for): no byte of it stays allocated.
func TestFullDiskWriteLeavesNothing(t *testing.T) {
	fs := tmpfs.Mount(t, 4<<20)
	c, lb := open(t, filepath.Join(fs, "cache"), 1<<30)
	data := pattern.Random(256*cs, 23)
	st := c.Wrap(newFake(key, v1, data)) // its index header written
	defer st.Close()
	tmpfs.Fill(t, fs, 8*pageSize) // room for half of a chunk
	free := tmpfs.Free(t, fs)
	const ci = 200 // its record is in the index's second page
	buf := make([]byte, pageSize)
	if _, err := st.ReadAt(buf, ci*cs); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, data[ci*cs:ci*cs+pageSize]) {
		t.Fatal("wrong bytes")
	}
	if s := c.Stats(); s.WriteErrors != 1 || s.BytesOnDisk != 0 {
		t.Errorf("stats %+v, want one write error and nothing on disk", s)
	}
	if got := tmpfs.Free(t, fs); got != free {
		t.Errorf("%d bytes free after the failed write, want the %d before it: the half-written chunk stayed allocated\n%s", got, free, lb.String())
	}
}
