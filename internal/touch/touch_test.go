package touch

import (
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestPages(t *testing.T) {
	mem := make([]byte, 64*4096)
	pages := []int64{0, 5, 63, 7, 1}
	lat := make([]time.Duration, len(pages))
	for i := range lat {
		lat[i] = -1
	}
	if _, err := Pages(mem, pages, 4096, 2, lat); err != nil {
		t.Fatal(err)
	}
	for i, d := range lat {
		if d < 0 {
			t.Fatalf("load %d was not timed", i)
		}
	}
	if _, err := Pages(mem, pages, 4096, 3, nil); err != nil {
		t.Fatal(err)
	}
}

func TestPagesFault(t *testing.T) {
	fd, err := unix.MemfdCreate("touch-test", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	unix.Ftruncate(fd, 4096)
	mem, err := unix.Mmap(fd, 0, 3*4096, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	_, err = Pages(mem, []int64{0, 2}, 4096, 1, nil) // page 2 is past the memfd's end: SIGBUS
	if err == nil || !strings.Contains(err.Error(), "offset 8192") {
		t.Fatalf("Pages over a page past EOF = %v, want an error naming offset 8192", err)
	}
}
