package netsim

import (
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
)

// TestLinkSkipsTakenVeth: an index whose veth is still there after its
// namespace is gone (the kernel tears a deleted namespace's veth down
// later, and not while a process is still in it) is another link's: a new
// link takes the next index, where it would fail to make its veth.
func TestLinkSkipsTakenVeth(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skipf("skipping: %v", ErrNotRoot)
	}
	var taken *Link
	for i := range maxLinks {
		l := newLink(i)
		if _, err := os.Stat(netnsPath(l.Netns)); err == nil {
			continue
		}
		if _, err := net.InterfaceByName(l.host); err == nil {
			continue
		}
		// A veth of the link's name, in this namespace, stands for the
		// lingering one; its peer's name is no link's.
		args := []string{"ip", "link", "add", l.host, "type", "veth", "peer", "name", "fmtest" + strconv.Itoa(i)}
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatal(cmdError(args, out, err))
		}
		t.Cleanup(func() { exec.Command("ip", "link", "delete", l.host).Run() })
		taken = l
		break
	}
	if taken == nil {
		t.Fatal("no free link index")
	}
	l, err := NewLink(100e6)
	if err != nil {
		t.Fatalf("NewLink with %s's veth name taken: %v", taken.Netns, err)
	}
	defer l.Close()
	if l.Netns == taken.Netns {
		t.Fatalf("NewLink took %s, whose veth name is taken", l.Netns)
	}
}
