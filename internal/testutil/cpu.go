package testutil

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// UserHZ is the unit of /proc's CPU times, 100 a second on Linux.
const UserHZ = 100

// MachineBusy is the CPU time all CPUs have spent on anything but idling
// since boot: the difference of two calls, over the wall time between
// them and the number of CPUs, is how busy the machine was.
func MachineBusy(tb testing.TB) time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		tb.Fatal(err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	var busy int64
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i != 3 && i != 4 && i < 8 { // not idle, not iowait; guest time is in user already
			busy += n
		}
	}
	return time.Duration(busy) * time.Second / UserHZ
}
