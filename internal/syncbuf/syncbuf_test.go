package syncbuf

import (
	"strings"
	"sync"
	"testing"
)

// Writers and a reader at once, under the race detector: every write lands
// whole.
func TestConcurrentWrites(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for range 100 {
				b.Write([]byte{'a' + byte(i), '\n'})
				_ = b.String()
			}
		})
	}
	wg.Wait()
	if got := b.Len(); got != 8*100*2 {
		t.Fatalf("Len %d, want %d", got, 8*100*2)
	}
	for i := range 8 {
		if n := strings.Count(b.String(), string(rune('a'+i))+"\n"); n != 100 {
			t.Errorf("writer %d: %d lines, want 100", i, n)
		}
	}
}
