package httpstore

import "testing"

func TestParseContentRange(t *testing.T) {
	for _, c := range []struct {
		in   string
		want contentRange
		ok   bool
	}{
		{"bytes 0-0/1", contentRange{0, 0, 1}, true},
		{"bytes 100-199/1000", contentRange{100, 199, 1000}, true},
		{"BYTES 5-9/*", contentRange{5, 9, -1}, true},
		{" bytes 0-9/10 ", contentRange{0, 9, 10}, true},
		{"bytes */1000", contentRange{-1, -1, 1000}, true},
		{"bytes 0-922337203685477580/922337203685477581", contentRange{0, 922337203685477580, 922337203685477581}, true},
		{"", contentRange{}, false},
		{"bytes", contentRange{}, false},
		{"bytes=0-9/10", contentRange{}, false},
		{"items 0-9/10", contentRange{}, false},
		{"bytes 0-9", contentRange{}, false},
		{"bytes 0-10/10", contentRange{}, false}, // past the length
		{"bytes 9-0/10", contentRange{}, false},
		{"bytes -1-9/10", contentRange{}, false},
		{"bytes +1-9/10", contentRange{}, false},
		{"bytes 1 -9/10", contentRange{}, false},
		{"bytes 0-9/ 10", contentRange{}, false},
		{"bytes */*", contentRange{}, false},
		{"bytes 0-9/10/11", contentRange{}, false},
		{"bytes 0-1,3-4/10", contentRange{}, false},
		{"bytes 0-9223372036854775806/9223372036854775807", contentRange{0, 1<<63 - 2, 1<<63 - 1}, true},
		{"bytes 0-9223372036854775807/*", contentRange{0, 1<<63 - 1, -1}, true},
		{"bytes 0-9223372036854775808/*", contentRange{}, false}, // overflow
		{"bytes 0-99999999999999999999/*", contentRange{}, false},
		{"bytes 0x0-9/10", contentRange{}, false},
	} {
		got, err := parseContentRange(c.in)
		if (err == nil) != c.ok || (c.ok && got != c.want) {
			t.Errorf("parseContentRange(%q) = %+v, %v; want %+v, ok %v", c.in, got, err, c.want, c.ok)
		}
	}
}

// FuzzParseContentRange checks that parsing never panics, that what it
// accepts is a consistent range, and that it reads its own output back.
func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{
		"bytes 0-0/1", "bytes 100-199/1000", "bytes 5-9/*", "bytes */1000", "BYTES 1-2/3",
		"bytes 0-9", "bytes 9-0/10", "bytes -1-9/10", "bytes 0-99999999999999999999/*", "bytes=0-9/10",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cr, err := parseContentRange(s)
		if err != nil {
			return
		}
		switch {
		case cr.first < 0 && (cr.last != -1 || cr.first != -1 || cr.size < 0):
			t.Fatalf("%q: unsatisfied range %+v", s, cr)
		case cr.first >= 0 && (cr.last < cr.first || cr.size >= 0 && cr.last >= cr.size):
			t.Fatalf("%q: inconsistent range %+v", s, cr)
		case cr.size < -1:
			t.Fatalf("%q: size %d", s, cr.size)
		}
		again, err := parseContentRange(cr.String())
		if err != nil || again != cr {
			t.Fatalf("%q parsed as %+v, formatted as %q, parsed again as %+v, %v", s, cr, cr.String(), again, err)
		}
	})
}
