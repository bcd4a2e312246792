package fdstore

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/filemap/filemap/proto"
	"github.com/filemap/filemap/uffd"
	"golang.org/x/sys/unix"
)

func init() {
	if path := os.Getenv(envKeeper); path != "" {
		os.Exit(runKeeper(path))
	}
}

// keeper is the keeper process's state.
type keeper struct {
	path string
	l    *proto.Listener // where a successor connects
	mu   sync.Mutex
	m    map[uint64]Entry
}

func runKeeper(path string) int {
	k := &keeper{path: path, m: make(map[uint64]Entry)}
	if err := k.run(); err != nil {
		fmt.Fprintln(os.Stderr, "filemap keeper:", err)
		return 1
	}
	return 0
}

func (k *keeper) run() error {
	f := os.NewFile(3, "daemon")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return err
	}
	daemon := proto.NewConn(nc.(*net.UnixConn))
	// A keeper before us has exited, its successor (our daemon) having
	// taken its entries; it may have left its socket. Listen replaces
	// that, and nothing else.
	if k.l, err = proto.Listen(k.path, 0o600); err != nil {
		return err
	}
	if err := daemon.WriteFrame(proto.Frame{Type: tEnd, Payload: proto.Marshal(struct{}{})}); err != nil {
		return err
	}
	started := time.Now()
	quit := k.serveDaemon(daemon)
	k.pruneOnce()
	if quit || k.empty() {
		k.l.Close()
		return nil
	}
	// A daemon that keeps dying within a second of its start is not run
	// again after the third time: it would die again, and again.
	quick := 0
	if time.Since(started) < time.Second {
		quick, _ = strconv.Atoi(os.Getenv(envQuick))
		quick++
	}
	if quick <= 3 {
		if err := respawn(quick); err != nil {
			fmt.Fprintln(os.Stderr, "filemap keeper: cannot run the daemon again:", err)
		}
	}
	go k.prune()
	return k.handOver()
}

// respawn runs the daemon again if it asked for it (Respawn), with the
// descriptors it left here as its 3 and on.
func respawn(quick int) error {
	n, err := strconv.Atoi(os.Getenv(envRespawn))
	if err != nil || n <= 0 {
		return nil
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envKeeper+"=") && !strings.HasPrefix(kv, envRespawn+"=") && !strings.HasPrefix(kv, envQuick+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, envQuick+"="+strconv.Itoa(quick))
	for i := range n {
		cmd.ExtraFiles = append(cmd.ExtraFiles, os.NewFile(uintptr(4+i), "respawn"))
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	go cmd.Wait()
	return nil
}

// serveDaemon keeps what the daemon puts until it quits (true) or its
// connection ends: it died, or closed to leave its entries to a successor.
func (k *keeper) serveDaemon(c *proto.Conn) (quit bool) {
	for {
		f, err := c.ReadFrame()
		if err != nil {
			return false
		}
		var e Entry
		if f.Type == tQuit {
			return true
		}
		if proto.Unmarshal(f.Payload, &e) != nil {
			f.CloseFds()
			continue
		}
		k.mu.Lock()
		if old, ok := k.m[e.ID]; ok {
			closeEntries([]Entry{old})
			delete(k.m, e.ID)
		}
		if f.Type == tPut {
			e.Files = f.Fds
			k.m[e.ID] = e
		} else {
			f.CloseFds()
		}
		k.mu.Unlock()
	}
}

func (k *keeper) empty() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.m) == 0
}

// prune forgets, every second, the entries whose process has exited; the
// keeper exits when none is left.
func (k *keeper) prune() {
	for range time.Tick(time.Second) {
		k.mu.Lock()
		k.forgetExitedLocked()
		if len(k.m) == 0 {
			k.l.Close()
			os.Exit(0)
		}
		k.mu.Unlock()
	}
}

func (k *keeper) pruneOnce() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.forgetExitedLocked()
}

// forgetExitedLocked drops the entries whose process has exited. Called with
// k.mu held.
func (k *keeper) forgetExitedLocked() {
	for id, e := range k.m {
		if e.exited() {
			closeEntries([]Entry{e})
			delete(k.m, id)
		}
	}
}

// exited reports whether e's process has exited: by its pid, or, for a
// process the daemon could not name, by its memory (Entry.Probe).
func (e Entry) exited() bool {
	if e.Pid != 0 {
		return errors.Is(unix.Kill(e.Pid, 0), unix.ESRCH)
	}
	if e.Probe == 0 || len(e.Files) == 0 {
		return false // kept until a successor takes it
	}
	rc, err := e.Files[0].SyscallConn()
	if err != nil {
		return false
	}
	alive := true
	// Not Files[0].Fd(), which would make the uffd blocking for every holder.
	rc.Control(func(fd uintptr) { alive = uffd.FromFd(int(fd)).Alive(uintptr(e.Probe)) })
	return !alive
}

// handOver gives every entry to the first successor of this uid (or root)
// that connects.
func (k *keeper) handOver() error {
	for {
		c, err := k.l.AcceptUnix()
		if err != nil {
			return err
		}
		cred, err := proto.PeerCred(c)
		if err != nil || cred.Uid != uint32(os.Geteuid()) && cred.Uid != 0 {
			c.Close()
			continue
		}
		k.mu.Lock() // held to the end: prune must not run after the hand-over
		k.l.Close() // unlinked before the successor can start a keeper of its own
		conn := proto.NewConn(c)
		for _, e := range k.m {
			if err := conn.WriteFrame(proto.Frame{Type: tEntry, Payload: proto.Marshal(e), Fds: e.Files}); err != nil {
				return fmt.Errorf("hand entry %d over: %w", e.ID, err)
			}
		}
		return conn.WriteFrame(proto.Frame{Type: tEnd, Payload: proto.Marshal(struct{}{})})
	}
}
