package netsim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/filemap/filemap/internal/s3test"
)

// The ports at the far end of a link: its namespace is its own, so nothing
// else takes them.
const (
	storePort = 7070 // versitygw, on every address of the namespace
	proxyPort = 7071 // the proxy in front of it, on the link's far address
	apiPort   = 8474 // toxiproxy's API, on the link's far address
)

// proxyName is the toxiproxy proxy in front of the store.
const proxyName = "s3"

// ErrNotRoot reports that this process may not make network namespaces.
var ErrNotRoot = errors.New("the simulated network needs root: network namespaces and tc")

// Sim is a running simulated store: versitygw behind toxiproxy, at the far
// end of a link.
type Sim struct {
	Link *Link
	// Store is versitygw, reached over the link but around the toxics:
	// for making buckets and putting objects quickly, and for its own
	// latency beside the sim's.
	Store *s3test.Server
	// Endpoint is the simulated store: S3 through the toxics and the link.
	Endpoint string

	profile Profile
	proxy   *Toxiproxy
}

// Start starts a simulated store with the network of p.
func Start(ctx context.Context, p Profile) (s *Sim, err error) {
	bin, link, err := prepareLink(p)
	if err != nil {
		return nil, err
	}
	s = &Sim{Link: link}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.Close())
		}
	}()
	peer := link.PeerAddr.String()
	s.Store, err = s3test.NewAt(link.Wrap(), fmt.Sprintf("0.0.0.0:%d", storePort), fmt.Sprintf("http://%s:%d", peer, storePort))
	if err != nil {
		return s, err
	}
	if s.proxy, s.Endpoint, err = startProxy(ctx, bin, link, fmt.Sprintf("127.0.0.1:%d", storePort)); err != nil {
		return s, err
	}
	return s, s.Set(ctx, p)
}

// StartTest starts a simulated store for one test or benchmark and stops
// it when that ends. It skips when this process is not root, saying so,
// and when a server binary is missing, except in CI (CI=true), where a
// test that did not run must not pass: there it fails.
func StartTest(tb testing.TB, p Profile) *Sim {
	tb.Helper()
	s, err := Start(context.Background(), p)
	forTest(tb, s, err, "simulated store")
	return s
}

// prepareLink checks that this process may make the simulated network and has
// its tools, and makes a link with p's link rate. It returns the link and
// toxiproxy's server binary, for the proxy at the link's far end.
func prepareLink(p Profile) (toxiproxy string, link *Link, err error) {
	if os.Geteuid() != 0 {
		return "", nil, ErrNotRoot
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			return "", nil, fmt.Errorf("the simulated network needs %s (iproute2): %w", tool, err)
		}
	}
	if toxiproxy, err = ToxiproxyBinary(); err != nil {
		return "", nil, err
	}
	if link, err = NewLink(p.LinkRate); err != nil {
		return "", nil, err
	}
	return toxiproxy, link, nil
}

// startProxy runs toxiproxy's server bin at the far end of link, with a
// proxy to upstream (an address reached from the link's namespace) that
// listens on the link's far address. It returns the server and the
// proxy's endpoint, http://host:port, where the store is reached through
// the toxics.
func startProxy(ctx context.Context, bin string, link *Link, upstream string) (*Toxiproxy, string, error) {
	proxy, err := StartToxiproxy(bin, link, apiPort)
	if err != nil {
		return nil, "", err
	}
	listen := fmt.Sprintf("%s:%d", link.PeerAddr, proxyPort)
	if err := proxy.CreateProxy(ctx, proxyName, listen, upstream); err != nil {
		proxy.Close()
		return nil, "", err
	}
	return proxy, "http://" + listen, nil
}

// forTest ends tb's test as err, the error of a start of c, says: a skip
// where this process is not root, saying so, and where a server binary is
// missing, except in CI (CI=true), where a test that did not run must not
// pass; any other error fails it. A started c is closed when the test
// ends.
func forTest(tb testing.TB, c io.Closer, err error, what string) {
	tb.Helper()
	switch {
	case errors.Is(err, ErrNotRoot):
		tb.Skipf("skipping: %v", err)
	case (errors.Is(err, ErrNoToxiproxy) || errors.Is(err, s3test.ErrNoBinary)) && os.Getenv("CI") != "true":
		tb.Skipf("skipping: %v", err)
	case err != nil:
		tb.Fatalf("netsim: %s: %v", what, err)
	}
	tb.Cleanup(func() {
		if err := c.Close(); err != nil {
			tb.Errorf("netsim: %v", err)
		}
	})
}

// Set gives the sim the network of p: its toxics change for the
// connections already open too, and the link's cap at once.
func (s *Sim) Set(ctx context.Context, p Profile) error {
	if err := applyProfile(ctx, s.proxy, s.Link, p); err != nil {
		return err
	}
	s.profile = p
	return nil
}

// applyProfile gives the proxy in front of a store, and the link it is
// reached over, the network of p.
func applyProfile(ctx context.Context, proxy *Toxiproxy, link *Link, p Profile) error {
	toxics := []Toxic{
		{Name: "latency", Type: "latency", Stream: "downstream", Toxicity: 1,
			Attributes: map[string]int64{"latency": p.Latency.Milliseconds(), "jitter": 0}},
		// toxiproxy's rate is in KB/s of 1000 bytes.
		{Name: "bandwidth", Type: "bandwidth", Stream: "downstream", Toxicity: 1,
			Attributes: map[string]int64{"rate": p.ConnRate / 1000}},
	}
	for _, x := range toxics {
		if err := proxy.SetToxic(ctx, proxyName, x); err != nil {
			return fmt.Errorf("profile %s: %w", p.Name, err)
		}
	}
	if err := link.SetRate(p.LinkRate); err != nil {
		return fmt.Errorf("profile %s: %w", p.Name, err)
	}
	return nil
}

// Profile is the network the sim has now.
func (s *Sim) Profile() Profile { return s.profile }

// Client is an S3 client of the simulated store that keeps up to conns
// connections open (0: the SDK's default).
func (s *Sim) Client(conns int) *s3.Client { return s.Store.ClientFor(s.Endpoint, conns) }

// Env is the environment that points the AWS SDK's standard configuration
// at the simulated store (see s3test.Server.Env).
func (s *Sim) Env() []string {
	env := s.Store.Env()
	for i, kv := range env {
		if strings.HasPrefix(kv, "AWS_ENDPOINT_URL=") {
			env[i] = "AWS_ENDPOINT_URL=" + s.Endpoint
		}
	}
	return env
}

// Exited is closed once a server of the sim has exited: the store, or
// the proxy. Each call watches them with a goroutine of its own, which ends
// then.
func (s *Sim) Exited() <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		select {
		case <-s.Store.Exited():
		case <-s.proxy.proc.Exited():
		}
		close(ch)
	}()
	return ch
}

// Close stops the servers and removes the link.
func (s *Sim) Close() error {
	if s.proxy != nil {
		s.proxy.Close()
	}
	if s.Store != nil {
		s.Store.Close()
	}
	return s.Link.Close()
}
