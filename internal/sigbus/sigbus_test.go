package sigbus

import (
	"testing"

	"golang.org/x/sys/unix"
)

func TestCatch(t *testing.T) {
	// A page mapped beyond the end of an empty file: touching it is SIGBUS.
	fd, err := unix.MemfdCreate("sigbus-test", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	b, err := unix.Mmap(fd, 0, 2*4096, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(b)
	var x byte
	off, faulted := Catch(b, func() { x = b[4096+17] })
	if !faulted || off != 4096+17 {
		t.Fatalf("Catch = %d, %v; want the exact offset 4113", off, faulted)
	}
	if off, faulted := Catch(b, func() {}); faulted || off != 0 {
		t.Fatalf("Catch of nothing = %d, %v", off, faulted)
	}
	err = Check(b, func() { x = b[4096+17] })
	if e, ok := err.(*Error); !ok || e.Offset != 4096+17 || e.Error() != "memory fault reading offset 4113 (the page at 4096 could not be read)" {
		t.Fatalf("Check = %v", err)
	}
	// A fault outside b is not ours to catch.
	defer func() {
		if recover() == nil {
			t.Fatal("a fault outside b was swallowed")
		}
	}()
	Catch(b[:4096], func() { x = b[4096] })
	_ = x
}
