// Command filemap maps objects into memory through a user-space page cache
// and serves their page faults: the kernel's filemap_fault, in user space.
//
//	filemap serve [flags]          run the handler daemon
//	filemap cat [flags] URI        write an object to stdout, read through a mapping
//	filemap stat [--json]          print the daemon's counters
//	filemap demo [flags]           map a generated file and compare with the kernel's mmap
//	filemap bench [flags] [FILE]   measure filemap beside the kernel's mmap and pread
//	filemap firecracker [flags]    serve a microVM's memory restore (Firecracker's UFFD protocol)
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

const usage = `filemap maps objects into memory; their pages are read on first touch by a
handler process through a shared page cache (the kernel's filemap_fault, in
user space, with userfaultfd).

Usage:
  filemap serve [flags]       run the handler daemon on a Unix socket
  filemap cat [flags] URI     write an object to stdout, read through a mapping
  filemap stat [flags]        print the daemon's counters
  filemap drop-caches [flags] empty the daemon's caches of this user's
                              objects (every user's, as root), as
                              drop_caches does the kernel's
  filemap demo [flags]        map generated 256 MiB files, check every byte
                              read, and compare with the kernel's own mmap
  filemap bench [flags] [FILE]
                              measure filemap beside the kernel's mmap and a
                              pread loop on FILE (default: a generated 1 GiB
                              file): cold, warm, random, fault latency
  filemap firecracker --socket SOCKET --mem URI [--record F] [--prefetch F]
                              serve VM memory restores over Firecracker's UFFD
                              protocol: UFFDIO_COPY from a shared cache of URI

URI is a path, a file:// URI, http(s):// or s3://BUCKET/KEY. Clients find the daemon at --socket, else
$FILEMAP_SOCKET; with neither, cat and demo start a private handler.

Run "filemap COMMAND -h" for a command's flags.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmds := map[string]func([]string) error{
		"serve":       serve,
		"cat":         cat,
		"stat":        stat,
		"drop-caches": dropCaches,
		"demo":        demo,
		"bench":       bench,
		"firecracker": firecrackerCmd,
	}
	name, args := os.Args[1], os.Args[2:]
	switch name {
	case "-h", "-help", "--help", "help":
		fmt.Print(usage)
		return
	}
	run, ok := cmds[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "filemap: unknown command %q\n\n%s", name, usage)
		os.Exit(2)
	}
	if err := run(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "filemap %s: %s\n", name, errorText(name, err))
		os.Exit(1)
	}
}

// errorText is err as it follows "filemap NAME: ", without the library's
// "filemap: " and the operation after it when that is NAME: Go errors
// start with their package's name, which the command has said already.
func errorText(name string, err error) string {
	msg := strings.TrimPrefix(err.Error(), "filemap: ")
	return strings.TrimPrefix(msg, name+": ")
}

// newFlags makes a command's flag set with a usage line. A bad flag's error
// is printed once, by main after the usage, with the command's name: the
// flag package's own print of it, before the usage, goes nowhere.
func newFlags(name, args, about string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fs.SetOutput(os.Stderr)
		defer fs.SetOutput(io.Discard)
		fmt.Fprintf(os.Stderr, "Usage: filemap %s %s\n\n%s\n\nFlags:\n", name, args, about)
		fs.PrintDefaults()
	}
	return fs
}

// oneArgError is the error of a command that takes one argument, called
// what, and got fs.Args(). The flag package reads flags only up to the
// first argument, so flags after it count as arguments: it says where they
// go, with the command line they meant.
func oneArgError(fs *flag.FlagSet, cmd, what string) error {
	err := fmt.Errorf("want exactly one %s, got %d arguments", what, fs.NArg())
	rest := fs.Args()[min(1, fs.NArg()):]
	if !slices.ContainsFunc(rest, func(a string) bool { return strings.HasPrefix(a, "-") }) {
		return err
	}
	line := []string{"filemap", cmd}
	for _, a := range append(rest, fs.Arg(0)) {
		line = append(line, shellWord(a))
	}
	return fmt.Errorf("%w: flags go before the %s: %s", err, what, strings.Join(line, " "))
}

// shellWord is s as one word of a shell command line.
func shellWord(s string) string {
	if s == "" || strings.ContainsAny(s, " \t\n'\"\\$`*?[]{}()<>|&;#~") {
		return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
	}
	return s
}

// byteSize is a flag holding a size such as 4096, 128K, 16M or 1G.
type byteSize int64

// String is the size in the largest binary unit that holds it exactly, as
// Set reads it back: 64T, 8M, 128K; 4097 stays a byte count.
func (b *byteSize) String() string {
	n := int64(*b)
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"T", 40}, {"G", 30}, {"M", 20}, {"K", 10}} {
		if n != 0 && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

func (b *byteSize) Set(s string) error {
	n, err := parseSize(s)
	if err != nil {
		return err
	}
	*b = byteSize(n)
	return nil
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	t := strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "B")
	t = strings.TrimSuffix(t, "I")
	if t != "" {
		switch t[len(t)-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult != 1 {
			t = t[:len(t)-1]
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad size %q (want a byte count such as 4096, 128K, 16M, 1G)", s)
	}
	return n * mult, nil
}

var stdout io.Writer = os.Stdout
