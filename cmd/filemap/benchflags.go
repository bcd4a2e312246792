// bench's command line: its flags and their checks, and the command
// itself, which runs the cases (benchrun.go) and prints what they measured
// (benchreport.go).

package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/filemap/filemap/internal/progress"
)

func bench(args []string) error {
	fl, err := parseBenchFlags(args)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, stop) // a second signal kills, as usual

	p := progress.New(os.Stderr, "filemap bench: ")
	rep, err := runBench(ctx, fl, p)
	p.Clear() // before the table or the error, which may go to the same terminal
	if err != nil {
		return err
	}
	rep.ratios()
	rep.targets()
	if fl.json {
		e := json.NewEncoder(stdout)
		e.SetIndent("", "  ")
		return e.Encode(rep)
	}
	return rep.printTable(stdout)
}

// benchFlags is bench's command line, checked.
type benchFlags struct {
	file        string // the user's FILE; "" for a generated one
	size        int64  // the generated file's size
	dir         string // where the generated file goes; "" for a new temporary directory
	keep        bool   // keep the generated file
	socket      string
	threads     []int // thread counts of the random cold case
	randomPages int64 // pages the random cases touch; 0 for the default
	json        bool
	haltPoll    int64 // guest_halt_poll_ns for the run; -1 leaves it
	rounds      int
}

func parseBenchFlags(args []string) (benchFlags, error) {
	var fl benchFlags
	fs := newFlags("bench", "[flags] [FILE]", "Measures filemap beside the kernel's own mmap, and a plain pread loop, on\n"+
		"FILE (opened read-only), or on a generated file: side by side in one run,\n"+
		"as ratios, since only ratios within one run mean much on a shared machine.\n\n"+
		"  sequential, cold   one load per page; the kernel's page cache dropped\n"+
		"                     before each row (as root sync and drop_caches, else\n"+
		"                     posix_fadvise(DONTNEED)) and filemap's emptied too\n"+
		"                     (DropCaches: with a daemon, the caches of every\n"+
		"                     client of this user)\n"+
		"  sequential, warm   the file in the kernel's page cache; a new filemap\n"+
		"                     mapping of an object already in filemap's cache\n"+
		"  random 4K, warm    one thread, distinct pages in a fixed random order of\n"+
		"                     a new mapping, every page cached: the fault served\n"+
		"                     from the cache (filemap's memfd, the kernel's page\n"+
		"                     cache); the latency of each load\n"+
		"  random 4K, cold    distinct pages in a fixed random order, split among\n"+
		"                     --threads locked OS threads; MADV_RANDOM and\n"+
		"                     filemap.Random; the latency of each load\n"+
		"  random 4K, /dev/shm\n"+
		"                     the same, one thread, on a copy of the file's first\n"+
		"                     64 MiB in /dev/shm: faults served with no disk I/O,\n"+
		"                     each one a round trip through the handler\n\n"+
		"On a KVM guest whose cpuidle driver is haltpoll, an idle vCPU woken by\n"+
		"another costs tens of microseconds unless it polls first: every fault\n"+
		"that reaches the handler wakes two threads. --halt-poll-ns sets\n"+
		"/sys/module/haltpoll/parameters/guest_halt_poll_ns for the run (root)\n"+
		"and restores it after; the header shows the value in force.\n\n"+
		"The sequential cold case also times a pread loop (1 MiB reads into one\n"+
		"buffer): the I/O limit; and filemap's fill path alone (O_DIRECT reads of\n"+
		"1 MiB, two in flight, each written into a new memfd; no fault, no message):\n"+
		"the floor of filemap's row. Every page read through filemap is compared\n"+
		"with pread of the file; a difference is an error naming its offset.\n\n"+
		"Every case but /dev/shm runs --rounds times, the kernel's, pread's and\n"+
		"filemap's rows interleaved, and each row shown is the median round; its\n"+
		"spread is the slowest round's time over the fastest's. A shared\n"+
		"machine's disk and CPUs drift over seconds: a spread far above 1 says\n"+
		"the row's ratios are loose.\n\n"+
		"Progress goes to stderr: on a terminal, a line rewritten in place;\n"+
		"elsewhere, a line per case as it finishes, with its rates.")
	size := byteSize(1 << 30)
	fs.Var(&size, "size", "size of the generated file")
	fs.StringVar(&fl.dir, "dir", "", "directory for the generated file (default: a new temporary directory)")
	fs.BoolVar(&fl.keep, "keep", false, "keep the generated file")
	fs.StringVar(&fl.socket, "socket", "", "daemon socket (default $FILEMAP_SOCKET, else a private handler)")
	threads := fs.String("threads", "1,2", "comma-separated thread counts for the random cases")
	fs.Int64Var(&fl.randomPages, "random-pages", 0, fmt.Sprintf("pages the random cases touch (0: 1/16 of the file's, at most %d)", benchRandomCap))
	fs.BoolVar(&fl.json, "json", false, "print JSON for machines")
	fs.Int64Var(&fl.haltPoll, "halt-poll-ns", -1, "set the haltpoll cpuidle driver's guest_halt_poll_ns for the run (-1: leave it)")
	fs.IntVar(&fl.rounds, "rounds", 3, "rounds of each case but /dev/shm, the methods interleaved; each row is the median round")
	if err := fs.Parse(args); err != nil {
		return fl, err
	}
	if fs.NArg() > 1 {
		fs.Usage()
		return fl, fmt.Errorf("want at most one FILE, got %q", fs.Args())
	}
	var err error
	if fl.threads, err = parseThreads(*threads); err != nil {
		return fl, err
	}
	if fl.randomPages < 0 {
		return fl, fmt.Errorf("--random-pages %d: want 0 or more", fl.randomPages)
	}
	if fl.rounds < 1 {
		return fl, fmt.Errorf("--rounds %d: want 1 or more", fl.rounds)
	}
	fl.file, fl.size = fs.Arg(0), int64(size)
	if fl.file != "" {
		var genOnly []string
		fs.Visit(func(f *flag.Flag) {
			if f.Name == "size" || f.Name == "dir" || f.Name == "keep" {
				genOnly = append(genOnly, "--"+f.Name)
			}
		})
		if len(genOnly) > 0 {
			return fl, fmt.Errorf("%s: only for the generated file, not with FILE %s", strings.Join(genOnly, ", "), fl.file)
		}
	} else if fl.size < 1 {
		return fl, fmt.Errorf("--size %d: at least one byte (the kernel cannot map an empty file)", fl.size)
	}
	return fl, nil
}

// parseThreads parses --threads: distinct counts from 1 to 64.
func parseThreads(s string) ([]int, error) {
	var ts []int
	for f := range strings.SplitSeq(s, ",") {
		t, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || t < 1 || t > 64 {
			return nil, fmt.Errorf("--threads %q: want comma-separated thread counts from 1 to 64", s)
		}
		if slices.Contains(ts, t) {
			return nil, fmt.Errorf("--threads %q: %d twice", s, t)
		}
		ts = append(ts, t)
	}
	return ts, nil
}
