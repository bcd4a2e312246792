package netsim

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// NetnsPrefix begins the name of every network namespace a Link makes:
// NetnsPrefix followed by the link's index.
const NetnsPrefix = "filemap-netsim-"

// maxLinks bounds the links on one machine: each takes a /30 of
// 10.213.0.0/16 by its index.
const maxLinks = 250

// Link is a network namespace joined to this one by a veth pair. The
// egress of each end goes through tbf at the link's rate, so the rate caps
// what the two sides send each other, all connections together.
type Link struct {
	Netns    string     // the namespace: ip netns exec Netns runs a command at the far end
	HostAddr netip.Addr // this end's address
	PeerAddr netip.Addr // the far end's
	host     string     // this end's interface
	peer     string     // the far end's, in Netns
}

// NewLink makes a link of rate bytes a second, with the first free index:
// creating the namespace claims the index, so concurrent tests and
// benchmarks get links of their own.
func NewLink(rate int64) (*Link, error) {
	if rate <= 0 {
		return nil, fmt.Errorf("link rate %d: must be positive", rate)
	}
	for i := range maxLinks {
		l := newLink(i)
		if l.veth() {
			// Another link's: the kernel tears a deleted namespace's veth
			// down after `ip netns delete` returns, and not while a
			// process is still in the namespace.
			continue
		}
		out, err := exec.Command("ip", "netns", "add", l.Netns).CombinedOutput()
		if err != nil {
			if _, serr := os.Stat(netnsPath(l.Netns)); serr == nil {
				continue // another link's
			}
			return nil, cmdError([]string{"ip", "netns", "add", l.Netns}, out, err)
		}
		if err := l.setUp(rate); err != nil {
			return nil, errors.Join(err, l.Close())
		}
		return l, nil
	}
	return nil, fmt.Errorf("no free network namespace %s0 to %s%d: scripts/netsim.sh down removes those of runs that died",
		NetnsPrefix, NetnsPrefix, maxLinks-1)
}

func newLink(i int) *Link {
	return &Link{
		Netns:    NetnsPrefix + strconv.Itoa(i),
		HostAddr: netip.AddrFrom4([4]byte{10, 213, byte(i), 1}),
		PeerAddr: netip.AddrFrom4([4]byte{10, 213, byte(i), 2}),
		host:     fmt.Sprintf("fmsim%d", i),
		peer:     fmt.Sprintf("fmsim%dp", i),
	}
}

func netnsPath(name string) string { return filepath.Join("/run/netns", name) }

// veth says whether this namespace has an interface of l's name.
func (l *Link) veth() bool {
	_, err := net.InterfaceByName(l.host)
	return err == nil
}

// setUp makes the veth pair, gives its ends their addresses, and sets the
// rate.
func (l *Link) setUp(rate int64) error {
	host, peer := l.HostAddr.String()+"/30", l.PeerAddr.String()+"/30"
	steps := [][]string{
		{"ip", "link", "add", l.host, "type", "veth", "peer", "name", l.peer, "netns", l.Netns},
		{"ip", "addr", "add", host, "dev", l.host},
		{"ip", "link", "set", l.host, "up"},
		{"ip", "-n", l.Netns, "addr", "add", peer, "dev", l.peer},
		{"ip", "-n", l.Netns, "link", "set", l.peer, "up"},
		{"ip", "-n", l.Netns, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := run(s...); err != nil {
			return err
		}
	}
	return l.SetRate(rate)
}

// SetRate sets the link's cap, both ways, to rate bytes a second.
//
// tbf's bucket holds 5 ms of the rate (at least 256 KiB, more than the
// largest GSO packet a veth passes), so that the cap is smooth at the
// timer's resolution; its queue holds 20 ms, so that a saturated link
// delays a request behind it by at most that, as a real router's shallow
// buffer would.
func (l *Link) SetRate(rate int64) error {
	tbf := []string{"tbf",
		"rate", strconv.FormatInt(rate*8, 10) + "bit",
		"burst", strconv.FormatInt(max(rate/200, 256<<10), 10),
		"latency", "20ms"}
	ends := []struct {
		tc  []string
		dev string
	}{{[]string{"tc"}, l.host}, {[]string{"tc", "-n", l.Netns}, l.peer}}
	for _, e := range ends {
		args := append(e.tc, "qdisc", "replace", "dev", e.dev, "root")
		if err := run(append(args, tbf...)...); err != nil {
			return err
		}
	}
	return nil
}

// Command is a command run at the far end of the link (see Wrap).
func (l *Link) Command(name string, args ...string) *exec.Cmd {
	w := l.Wrap()
	return exec.Command(w[0], append(append(w[1:], name), args...)...)
}

// Wrap is the command that runs its arguments at the far end of the link:
// in its namespace, and ahead of this machine's other work (nice -10).
// The far end stands for other machines, whose CPUs a client does not
// share: on a loaded machine, the servers there would otherwise add the
// wait for a CPU to every response, and fall short of the rates asked.
func (l *Link) Wrap() []string {
	return []string{"ip", "netns", "exec", l.Netns, "nice", "-n", "-10"}
}

// Close removes the namespace, and with it the veth pair. The processes
// started in it must have exited.
func (l *Link) Close() error {
	return run("ip", "netns", "delete", l.Netns)
}

// RemoveLeftovers removes the namespaces of links whose owners died
// without closing them: those with no process in them, since a live
// link's servers run in it. It returns the names it removed.
func RemoveLeftovers() ([]string, error) {
	entries, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, NetnsPrefix) {
			continue
		}
		pids, err := exec.Command("ip", "netns", "pids", name).Output()
		if err != nil || len(bytes.TrimSpace(pids)) > 0 {
			continue // in use, or gone meanwhile
		}
		if err := run("ip", "netns", "delete", name); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, name)
	}
	return removed, errors.Join(errs...)
}

func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return cmdError(args, out, err)
	}
	return nil
}

func cmdError(args []string, out []byte, err error) error {
	return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
}
