package pattern

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// Fill at any offset and length gives the bytes WriteFile writes there, so
// a stream checked a piece at a time is checked against the file's bytes.
func TestFillMatchesWriteFile(t *testing.T) {
	const size = 3<<20 + 5
	path := filepath.Join(t.TempDir(), "f")
	WriteFile(t, path, size)
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ off, n int64 }{
		{0, 0}, {0, 1}, {0, 8}, {1, 7}, {3, 10}, {7, 1}, {7, 9}, {4093, 4099}, {1<<20 - 3, 1<<20 + 6}, {size - 5, 5},
	} {
		got := make([]byte, c.n)
		Fill(got, c.off)
		if want := file[c.off : c.off+c.n]; !bytes.Equal(got, want) {
			t.Errorf("Fill of %d bytes at offset %d: %x, want %x", c.n, c.off, got[:min(c.n, 16)], want[:min(c.n, 16)])
		}
	}
}
