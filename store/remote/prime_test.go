package remote

import "testing"

// primedObject is a fakeObject whose first bytes came with it (Primer).
type primedObject struct {
	*fakeObject
	n int
}

func (o *primedObject) Primed() (int64, []byte) {
	b := o.data[:o.n]
	o.n = 0
	return 0, b
}

// The bytes an Object brought at Open serve the reads within them with no
// request; a read past them asks, and its bytes are right. Bytes of a
// partial page, or past the first chunk, are not kept.
func TestPrimedServesFirstReads(t *testing.T) {
	for _, c := range []struct {
		name       string
		size, n    int
		servedFrom int // reads of the first servedFrom bytes need no request
	}{
		{"span", testSize, testSub, testSub},
		{"partial page", testSize, testSub + 100, testSub},
		{"more than a chunk", testSize, 2 * testChunk, testChunk},
		{"the whole object", 3000, 3000, 3000},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := &primedObject{fakeObject: newFake(t, c.size), n: c.n}
			s := newStore(t, o, testConfig())
			readAndCheck(t, s, o.data, 0, min(4096, c.servedFrom))
			readAndCheck(t, s, o.data, int64(c.servedFrom)-1, 1)
			if got := o.requests(); len(got) != 0 {
				t.Fatalf("reads within the primed bytes made requests %v; want none", got)
			}
			if c.servedFrom < c.size {
				readAndCheck(t, s, o.data, int64(c.servedFrom), 4096)
				if len(o.requests()) == 0 {
					t.Fatal("a read past the primed bytes made no request")
				}
			}
		})
	}
}
