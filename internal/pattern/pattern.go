// Package pattern is the content of the tests' files and memory images:
// every 8-byte word holds a mix of its offset, so a page served at the
// wrong place is caught, and no word is zero, so a zero page is caught.
package pattern

import (
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// Word is the 8-byte word at byte offset off (a multiple of 8).
func Word(off int64) uint64 {
	x := uint64(off/8) * 0x9E3779B97F4A7C15
	return x ^ x>>29 | 1
}

// Fill fills p with the pattern's bytes from byte offset off on, which
// need not be a multiple of 8: a stream of it can be made, or checked, a
// piece at a time.
func Fill(p []byte, off int64) {
	var w [8]byte
	for i := 0; i < len(p); {
		o := off + int64(i)
		binary.LittleEndian.PutUint64(w[:], Word(o&^7))
		i += copy(p[i:], w[o&7:])
	}
}

// WriteFile makes path a file of size bytes of the pattern.
func WriteFile(t testing.TB, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		for i := 0; i < len(buf); i += 8 {
			binary.LittleEndian.PutUint64(buf[i:], Word(off+int64(i)))
		}
		if _, err := f.Write(buf[:min(int64(len(buf)), size-off)]); err != nil {
			f.Close()
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TempFile makes a file of size bytes of the pattern in a new temporary
// directory of t, and returns its path and its bytes.
func TempFile(t testing.TB, size int64) (string, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "object.bin")
	WriteFile(t, path, size)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, b
}

// Random is n bytes that seed determines and nothing else: data for a
// test to write, with no structure that could hide a misplaced byte.
func Random(n int, seed uint64) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24)}).Read(b)
	return b
}
