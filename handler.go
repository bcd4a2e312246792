package filemap

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/filemap/filemap/internal/fdstore"
	"github.com/filemap/filemap/server"
	"golang.org/x/sys/unix"
)

// The private handler is this executable run again with these variables
// set. Its lifeline is fd 3: the other end is held by the parent only (and
// its fork children), so EOF there means the parent is gone, and the
// handler exits once it serves no region.
const (
	envHandler      = "FILEMAP_PRIVATE_HANDLER" // the socket path to serve
	envFaultTimeout = "FILEMAP_FAULT_TIMEOUT"   // its fault timeout (WithFaultTimeout), if not the default
	lifelineFd      = 3

	// lingerPoll is how often a handler whose lifeline has closed looks
	// for regions it still serves.
	lingerPoll = 100 * time.Millisecond
)

// handlerSettings are what a private handler is started with, from the
// options of the Open that starts it: an Open with other settings gets a
// handler of its own.
type handlerSettings struct {
	faultTimeout time.Duration // 0: the default; negative: none
}

// env is s as the private handler's environment.
func (s handlerSettings) env() []string {
	if s.faultTimeout == 0 {
		return nil
	}
	return []string{envFaultTimeout + "=" + s.faultTimeout.String()}
}

// handlerConfig is the configuration of the private handler that env, its
// environment, describes.
func handlerConfig(env func(string) string) (server.Config, error) {
	cfg := server.Config{CacheBytes: server.DefaultCacheBytes()}
	if v := env(envFaultTimeout); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return cfg, fmt.Errorf("%s=%q: %w", envFaultTimeout, v, err)
		}
		cfg.FaultTimeout = d
	}
	return cfg, nil
}

func init() {
	if path := os.Getenv(envHandler); path != "" {
		os.Exit(runPrivateHandler(path))
	}
}

// runPrivateHandler serves this process's parent, and exits when it and
// every fork child of it that maps what it mapped have.
func runPrivateHandler(path string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).
		With("handler", "private", "parent", os.Getppid())
	lifeline := os.NewFile(lifelineFd, "lifeline")
	cfg, err := handlerConfig(os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "filemap private handler:", err)
		return 1
	}
	cfg.Log = log
	s, err := server.New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "filemap private handler:", err)
		return 1
	}
	l, err := server.Listen(path, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, "filemap private handler:", err)
		return 1
	}
	// If this handler dies, its keeper serves the parent's regions to the
	// next one, which it starts itself: the parent, its threads waiting in
	// page faults, may be unable to.
	kept, err := server.Kept(path) // from the handler before this one, if it died
	if err != nil {
		log.Warn("cannot take the regions of the handler before this one: their faults stall", "err", err)
	}
	s.KeepRespawn(path, kept, &fdstore.Respawn{Files: []*os.File{lifeline}})
	lifeline.Write([]byte{1}) // ready
	go s.Serve(l)
	io.Copy(io.Discard, lifeline) // returns when the parent has exited
	// A fork child that closed what it inherited, the lifeline among it,
	// may still map what its parent did: served until it no longer does.
	for s.Stats().Regions > 0 {
		time.Sleep(lingerPoll)
	}
	s.Forget() // its regions too: nobody is left to serve
	os.RemoveAll(filepath.Dir(path))
	return 0
}

// The private handlers are what a process truly has one of (one for each
// handlerSettings its Opens ask for). lifeline is the parent's end of a
// handler's lifeline, kept reachable so that the garbage collector never
// closes it: only this process's exit does. If the handler dies, the
// lifeline reads EOF, dead is closed, and the next connect starts another:
// the mappings re-attach to it.
var private struct {
	mu       sync.Mutex
	handlers map[handlerSettings]*privateProc
}

type privateProc struct {
	socket   string
	lifeline *os.File
	dead     chan struct{}
}

// privateHandler returns the socket of this process's handler with
// settings set, starting one if there is none or it has died.
func privateHandler(set handlerSettings) (string, error) {
	private.mu.Lock()
	defer private.mu.Unlock()
	if p := private.handlers[set]; p != nil {
		select {
		case <-p.dead:
			os.RemoveAll(filepath.Dir(p.socket)) // it could not
			delete(private.handlers, set)
		default:
			return p.socket, nil
		}
	}
	socket, lifeline, err := startPrivateHandler(set)
	if err != nil {
		return "", err
	}
	p := &privateProc{socket: socket, lifeline: lifeline, dead: make(chan struct{})}
	if private.handlers == nil {
		private.handlers = make(map[handlerSettings]*privateProc)
	}
	private.handlers[set] = p
	go func() {
		io.Copy(io.Discard, lifeline) // returns when the handler has exited
		lifeline.Close()
		close(p.dead)
	}()
	return socket, nil
}

func startPrivateHandler(set handlerSettings) (string, *os.File, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", nil, fmt.Errorf("start a private handler: %w", err)
	}
	dir, err := os.MkdirTemp("", "filemap-handler-")
	if err != nil {
		return "", nil, fmt.Errorf("start a private handler: %w", err)
	}
	socket := filepath.Join(dir, "handler.sock")
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", nil, fmt.Errorf("start a private handler: socketpair: %w", err)
	}
	unix.SetNonblock(fds[0], true) // so that the wait below can time out
	ours, theirs := os.NewFile(uintptr(fds[0]), "lifeline"), os.NewFile(uintptr(fds[1]), "lifeline")
	cmd := exec.Command(exe)
	cmd.Env = append(append(os.Environ(), envHandler+"="+socket), set.env()...)
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		ours.Close()
		theirs.Close()
		return "", nil, fmt.Errorf("start a private handler (%s): %w", exe, err)
	}
	theirs.Close()
	go cmd.Wait()
	ours.SetReadDeadline(time.Now().Add(30 * time.Second))
	var ready [1]byte
	if _, err := io.ReadFull(ours, ready[:]); err != nil {
		ours.Close()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return "", nil, fmt.Errorf("private handler %s did not start within 30s", exe)
		}
		return "", nil, fmt.Errorf("private handler %s failed to start (see its message above): %w", exe, err)
	}
	ours.SetReadDeadline(time.Time{})
	return socket, ours, nil
}
