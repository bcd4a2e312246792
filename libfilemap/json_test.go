package libfilemap

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/filemap/filemap/proto"
)

// openReply is proto.OpenReply with its version a pointer, so that an
// absent version shows as absent, as in tests/json.c.
type openReply struct {
	Handle  uint64  `json:"handle"`
	Size    int64   `json:"size"`
	Version *string `json:"version"`
}

// goDecode is what Go's encoding/json, the daemon's, makes of p, written as
// tests/json.c writes what the library's decoder makes of it.
func goDecode(p []byte) string {
	var r openReply
	if err := json.Unmarshal(p, &r); err != nil {
		return "err"
	}
	v := "-"
	if r.Version != nil {
		v = hex.EncodeToString([]byte(*r.Version))
	}
	return fmt.Sprintf("ok %d %d %s", r.Handle, r.Size, v)
}

// cDecode runs prog (tests/json) on every payload, and returns its lines.
func cDecode(t *testing.T, prog string, payloads [][]byte) []string {
	t.Helper()
	var in bytes.Buffer
	for _, p := range payloads {
		binary.Write(&in, binary.LittleEndian, uint32(len(p)))
		in.Write(p)
	}
	cmd := exec.Command(prog)
	cmd.Stdin = &in
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v", prog, err)
	}
	lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	if len(lines) != len(payloads) {
		t.Fatalf("%s answered %d payloads of %d", prog, len(lines), len(payloads))
	}
	return lines
}

// mutants are p, each prefix of it, and p with each byte deleted, or
// replaced or preceded by each of the bytes JSON's grammar turns on.
func mutants(p []byte) [][]byte {
	out := [][]byte{p}
	for i := 0; i <= len(p); i++ {
		out = append(out, p[:i:i])
		if i == len(p) {
			break
		}
		out = append(out, append(p[:i:i], p[i+1:]...))
		for _, b := range []byte(`"\{}[],:0-.e9 n` + "\x00\x1f") {
			out = append(out, append(append(p[:i:i], b), p[i+1:]...))
			out = append(out, append(append(p[:i:i], b), p[i:]...))
		}
	}
	return out
}

// checkJSONDecoder compares the library's decoder of reply payloads with
// Go's, the encoder and decoder of the daemon, on replies as the daemon
// writes them, on hand-made ones with every construct the grammar has, and
// on tens of thousands of their mutants: both must accept the same
// payloads and find the same values in them. Where the library is stricter
// on purpose it must refuse what Go takes.
func checkJSONDecoder(t *testing.T, prog string) {
	t.Helper()
	bases := [][]byte{
		proto.Marshal(proto.OpenReply{Handle: math.MaxUint64, Size: math.MinInt64, Version: "1048576@1733559000123456789"}),
		proto.Marshal(proto.OpenReply{Handle: 1, Size: math.MaxInt64, Version: `"etag-\u2603"` + "\u00e9\U0001F600\t"}),
		[]byte(` { "handle" : 7 , "extra" : { "a" : [ 1 , -2.5e+3 , { "b" : null } , [ ] , { } ] , "t" : true , "f" : false } ,` +
			` "size" : -0 , "version" : "a\"b\\c\/d\b\f\n\r\t\u00e9\ud83d\ude00 \u2603" } `),
		[]byte(`{"handle":1,"handle":2,"version":null,"size":12e0}`),
		[]byte(`{}`),
		[]byte(`{"handle":0,"size":0,"version":""}`),
	}
	var payloads [][]byte
	skipped := 0
	for _, b := range bases {
		for _, m := range mutants(b) {
			// Go makes U+FFFD of invalid UTF-8; the library passes the
			// bytes on (a path is bytes): no answer to compare.
			if !utf8.Valid(m) {
				skipped++
				continue
			}
			payloads = append(payloads, m)
		}
	}
	got := cDecode(t, prog, payloads)
	mismatches := 0
	for i, p := range payloads {
		want := goDecode(p)
		// Go makes U+FFFD of a lone surrogate escape; the library refuses it.
		if got[i] == "err" && strings.Contains(want, hex.EncodeToString([]byte("\uFFFD"))) && bytes.Contains(p, []byte(`\u`)) {
			continue
		}
		if got[i] != want {
			if mismatches++; mismatches <= 10 {
				t.Errorf("payload %q: the library decodes %q, Go %q", p, got[i], want)
			}
		}
	}
	if mismatches > 10 {
		t.Errorf("... and %d more payloads decoded differently", mismatches-10)
	}
	t.Logf("%d payloads compared, %d not valid UTF-8 skipped", len(payloads), skipped)
	if len(payloads) < 10000 || skipped > len(payloads)/10 {
		t.Errorf("%d payloads compared, %d skipped: the test compares too little", len(payloads), skipped)
	}

	stricter := []string{
		`{"version":"\u0000"}`, // a C string cannot hold it
		`{"version":"\ud800"}`, // a lone surrogate
		`{"version":"\udc00x"}`,
		`{"x":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`, // nested deeper than any reply
		`null`, // a reply is an object
	}
	var sp [][]byte
	for _, s := range stricter {
		sp = append(sp, []byte(s))
	}
	for i, g := range cDecode(t, prog, sp) {
		if g != "err" || goDecode(sp[i]) == "err" {
			t.Errorf("payload %q: the library decodes %q, Go %q; want the library alone to refuse it", sp[i], g, goDecode(sp[i]))
		}
	}
}

func TestJSONDecoder(t *testing.T) {
	dir, _ := built(t)
	checkJSONDecoder(t, filepath.Join(dir, "tests", "json"))
}
