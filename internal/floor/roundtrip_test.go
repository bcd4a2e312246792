package floor

import (
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"
)

// The C floor of a fault's round trip (tools/uffdfloor/roundtrip.c, which
// scripts/uffdfloor.sh runs) builds without a warning and serves every
// fault it takes with the right bytes: the floor that filemap's round
// trips are read against does not rot.
func TestRoundTripFloor(t *testing.T) {
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Skip("no C compiler (cc) to build tools/uffdfloor/roundtrip.c")
	}
	bin := filepath.Join(t.TempDir(), "roundtrip")
	build := exec.Command(cc, "-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "-o", bin, "../../tools/uffdfloor/roundtrip.c")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", build, err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "64").CombinedOutput()
	if err != nil {
		t.Fatalf("roundtrip 64: %v\n%s", err, out)
	}
	want := regexp.MustCompile(`^64 faults, each a round trip through a handler thread: p50 [0-9.]+ µs, p99 [0-9.]+ µs, max [0-9.]+ µs\n$`)
	if !want.Match(out) {
		t.Errorf("roundtrip 64 printed %q, want a line matching %q", out, want)
	}
}
