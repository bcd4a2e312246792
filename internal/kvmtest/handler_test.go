//go:build linux && amd64

package kvmtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/filemap/filemap/internal/clitest"
	"github.com/filemap/filemap/uffd"
	"golang.org/x/sys/unix"
)

// This file holds both ends of the Firecracker UFFD handshake (the guest
// memory regions as JSON, the userfaultfd by SCM_RIGHTS) as the tests use
// them: the handler processes (the real `filemap firecracker`, or a small
// one in this test binary) and the VMM's side, which the test process
// plays.

// The environment of the in-test handler's process, this test binary run
// again (see TestMain).
const (
	envRole   = "FILEMAP_KVMTEST_ROLE"
	envSocket = "FILEMAP_KVMTEST_SOCKET"
	envMem    = "FILEMAP_KVMTEST_MEM"

	roleHandler = "firecracker-handler"
)

// region is one element of the handshake's JSON array, with Firecracker's
// field names, in Firecracker's order (v1.12 and later send both page-size
// keys, and both are in bytes).
type region struct {
	BaseHostVirtAddr uint64 `json:"base_host_virt_addr"`
	Size             uint64 `json:"size"`
	Offset           uint64 `json:"offset"`
	PageSize         uint64 `json:"page_size"`
	PageSizeKiB      uint64 `json:"page_size_kib"`
}

// handlerProc is a page-fault handler running in a process of its own.
type handlerProc struct {
	name           string
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer // read them only after exited is closed
	exited         chan struct{}
	waitErr        error
}

// startFunc starts a Firecracker-protocol handler serving the memory file
// memPath on socket and returns once the socket exists. It registers a
// cleanup that stops the handler.
type startFunc func(t *testing.T, socket, memPath string) *handlerProc

// startProc starts cmd as a handler and waits for it to create socket.
func startProc(t *testing.T, name string, cmd *exec.Cmd, socket string) *handlerProc {
	t.Helper()
	h := &handlerProc{name: name, cmd: cmd, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = &h.stdout, &h.stderr
	// filemap's keeper inherits the handler's stderr and outlives it while
	// it keeps regions of a live client, this test process: without a
	// bound, Wait would wait for it to close the pipe, and it waits for us
	// to exit.
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		h.waitErr = cmd.Wait()
		close(h.exited)
	}()
	t.Cleanup(func() { h.stop(t, 0) })

	deadline := time.Now().Add(10 * time.Second)
	for {
		if fi, err := os.Stat(socket); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return h
		}
		select {
		case <-h.exited:
			t.Fatalf("%s exited before creating its socket: %v\n%s", name, h.waitErr, h.stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has not created %s after 10s", name, socket)
		}
	}
}

// stop waits up to grace for the handler to exit by itself, then asks it
// to (SIGTERM), then kills it, and returns what it wrote to stdout. It can
// be called more than once.
func (h *handlerProc) stop(t *testing.T, grace time.Duration) string {
	t.Helper()
	select {
	case <-h.exited:
	case <-time.After(grace):
		h.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-h.exited:
		case <-time.After(5 * time.Second):
			t.Errorf("%s ignored SIGTERM for 5s; killing it", h.name)
			h.cmd.Process.Kill()
			<-h.exited
		}
	}
	if s := h.stderr.String(); s != "" {
		t.Logf("%s stderr:\n%s", h.name, s)
	}
	return h.stdout.String()
}

// childEnv is this process's environment for a child, plus extra. Under
// -race a child would sleep 1s at exit; it need not.
func childEnv(extra ...string) []string {
	env := os.Environ()
	if os.Getenv("GORACE") == "" {
		env = append(env, "GORACE=atexit_sleep_ms=0")
	}
	return append(env, extra...)
}

// startInTestHandler runs serveFirecracker in a child process: this test
// binary again, in the handler role.
func startInTestHandler(t *testing.T, socket, memPath string) *handlerProc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = childEnv(envRole+"="+roleHandler, envSocket+"="+socket, envMem+"="+memPath)
	return startProc(t, "in-test handler", cmd, socket)
}

// startFilemapFirecracker runs `filemap firecracker --socket S --mem PATH`,
// the filemap binary built from ./cmd/filemap. It skips the test if that
// build has no firecracker command.
func startFilemapFirecracker(t *testing.T, socket, memPath string) *handlerProc {
	t.Helper()
	bin := buildFilemap(t)
	out, err := exec.Command(bin, "firecracker", "-h").CombinedOutput()
	if err != nil {
		if bytes.Contains(out, []byte("unknown command")) {
			t.Skipf("this build of filemap has no firecracker command yet (%s); TestGuestOnInTestHandler covers the VMM side", firstLine(out))
		}
		t.Fatalf("filemap firecracker -h: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "firecracker", "--socket", socket, "--mem", memPath)
	cmd.Env = childEnv()
	return startProc(t, "filemap firecracker", cmd, socket)
}

// buildFilemap builds cmd/filemap into a temporary directory. The go
// command's build cache makes this quick after the first time.
func buildFilemap(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "filemap")
	start := time.Now()
	if err := clitest.Build(bin); errors.Is(err, exec.ErrNotFound) {
		t.Skipf("skipping: %v", err)
	} else if err != nil {
		t.Fatal(err)
	}
	t.Logf("built cmd/filemap in %v", time.Since(start).Round(time.Millisecond))
	return bin
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return s
}

// sendHandshake does what Firecracker does once the guest memory is
// registered: connect to the handler's socket and send, in one sendmsg,
// the regions as JSON and the userfaultfd as SCM_RIGHTS. The caller keeps
// the connection open, as Firecracker does (since v1.12), so the handler
// cannot take EOF for the end of the message. A refused connection is
// retried briefly: the socket file appears at bind(2), a moment before
// listen(2).
func sendHandshake(t *testing.T, socket string, regions []region, u *uffd.UFFD) *net.UnixConn {
	t.Helper()
	payload, err := json.Marshal(regions)
	if err != nil {
		t.Fatal(err)
	}
	var conn *net.UnixConn
	for deadline := time.Now().Add(5 * time.Second); ; {
		conn, err = net.DialUnix("unix", nil, &net.UnixAddr{Name: socket, Net: "unix"})
		if err == nil {
			break
		}
		if !errors.Is(err, unix.ECONNREFUSED) || time.Now().After(deadline) {
			t.Fatalf("connect to the handler: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Cleanup(func() { conn.Close() })
	n, oobn, err := conn.WriteMsgUnix(payload, unix.UnixRights(u.Fd()), nil)
	if err != nil || n != len(payload) || oobn == 0 {
		t.Fatalf("send the handshake: %d/%d bytes, %d control bytes: %v", n, len(payload), oobn, err)
	}
	return conn
}

// serveFirecracker is a minimal Firecracker UFFD handler, the in-test one:
// it accepts one VMM on socket, reads the handshake, and serves MISSING
// faults with UFFDIO_COPY from the memory file until the VMM hangs up. Then
// it prints "faults F pages P": the fault messages read and the distinct
// pages installed. It runs in its own process, as a handler must: it fills
// memory in another process, and the VMM's threads block until it does.
func serveFirecracker(socket, memPath string) error {
	f, err := os.Open(memPath)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	file, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_PRIVATE)
	f.Close()
	if err != nil {
		return fmt.Errorf("mmap %s: %w", memPath, err)
	}

	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		return err
	}
	conn, err := l.AcceptUnix()
	l.Close() // one VMM, like Firecracker's example handlers
	if err != nil {
		return err
	}
	regions, u, err := readHandshake(conn)
	if err != nil {
		return err
	}
	defer u.Close()

	// The VMM keeps the connection open while it lives: EOF means it is gone.
	gone := make(chan struct{})
	go func() {
		io.Copy(io.Discard, conn)
		close(gone)
	}()

	installed := make(map[uint64]bool)
	faults := 0
	msgs := make([]uffd.Msg, 64)
	for {
		select {
		case <-gone:
			fmt.Printf("faults %d pages %d\n", faults, len(installed))
			return nil
		default:
		}
		if _, err := u.Poll(50 * time.Millisecond); err != nil {
			return err
		}
		n, err := u.Drain(msgs)
		if err != nil {
			return err
		}
		for _, m := range msgs[:n] {
			if m.Event != uffd.EventPagefault {
				return fmt.Errorf("unexpected uffd event: %v", m)
			}
			faults++
			page, err := serveFault(u, regions, file, m.Address)
			if err != nil {
				return err
			}
			installed[page] = true
		}
	}
}

// readHandshake reads Firecracker's one message: the JSON regions and the
// userfaultfd. The buffer is far larger than one region needs, because
// memory hotplug adds regions.
func readHandshake(conn *net.UnixConn) ([]region, *uffd.UFFD, error) {
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(8*4)) // room for a few fds
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, nil, fmt.Errorf("read the handshake: %w", err)
	}
	cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(cmsgs) == 0 {
		return nil, nil, fmt.Errorf("handshake of %d bytes without a control message: %v", n, err)
	}
	fds, err := unix.ParseUnixRights(&cmsgs[0])
	if err != nil || len(fds) == 0 {
		return nil, nil, fmt.Errorf("handshake without a userfaultfd: %v", err)
	}
	for _, fd := range fds[1:] {
		unix.Close(fd) // Firecracker sends one; tolerate more
	}
	var regions []region
	if err := json.Unmarshal(buf[:n], &regions); err != nil {
		unix.Close(fds[0])
		return nil, nil, fmt.Errorf("handshake JSON %q: %w", buf[:n], err)
	}
	for i, r := range regions {
		if r.PageSize == 0 {
			regions[i].PageSize = r.PageSizeKiB // before v1.12: bytes, despite the name
		}
	}
	return regions, uffd.FromFd(fds[0]), nil
}

// serveFault installs the page at addr from the memory file and returns
// the page's address. A page already present (another message for the same
// fault, after a signal interrupted the faulting vCPU) counts as served.
func serveFault(u *uffd.UFFD, regions []region, file []byte, addr uint64) (uint64, error) {
	for _, r := range regions {
		if addr < r.BaseHostVirtAddr || addr-r.BaseHostVirtAddr >= r.Size {
			continue
		}
		ps := r.PageSize
		page := addr &^ (ps - 1)
		off := r.Offset + page - r.BaseHostVirtAddr
		if off+ps > uint64(len(file)) {
			return 0, fmt.Errorf("fault at %#x: offset %#x is beyond the %d-byte memory file", addr, off, len(file))
		}
		var err error
		for range 100 {
			_, err = u.Copy(uintptr(page), uintptr(unsafe.Pointer(&file[off])), uintptr(ps), 0)
			if !errors.Is(err, unix.EAGAIN) {
				break
			}
			// The VMM's mappings are changing, or an event is
			// pending; none is expected here (no balloon), so the
			// retries are few before this is called a failure.
			time.Sleep(time.Millisecond)
		}
		return page, err
	}
	return 0, fmt.Errorf("fault at %#x outside every region", addr)
}
