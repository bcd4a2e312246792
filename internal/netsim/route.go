package netsim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// Route is one client host's network to a store that runs in this
// namespace, as each machine of a fleet has its own network to a shared
// store: a link of its own, with toxiproxy at its far end in front of the
// store, giving the route a profile's latency, per-connection rate and
// link rate.
//
//	client ──veth (tbf)──▶ toxiproxy ──veth (tbf)──▶ store
//	  this namespace     │ the route's namespace   │ this namespace
//
// The answers cross the link twice, once each way, so each direction's
// tbf caps them once.
type Route struct {
	Link     *Link
	Endpoint string // http://host:port: the store through the route

	proxy *Toxiproxy
}

// StartRoute starts a route with the network of p to the store that
// listens on port on every address of this namespace (it is reached at the
// link's near address, Link.HostAddr).
func StartRoute(ctx context.Context, p Profile, port int) (r *Route, err error) {
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("the simulated network needs %s (iproute2): %w", tool, err)
		}
	}
	bin, err := ToxiproxyBinary()
	if err != nil {
		return nil, err
	}
	link, err := NewLink(p.LinkRate)
	if err != nil {
		return nil, err
	}
	r = &Route{Link: link}
	defer func() {
		if err != nil {
			err = errors.Join(err, r.Close())
		}
	}()
	if r.proxy, err = StartToxiproxy(bin, link, apiPort); err != nil {
		return r, err
	}
	listen := fmt.Sprintf("%s:%d", link.PeerAddr, proxyPort)
	if err := r.proxy.CreateProxy(ctx, proxyName, listen, fmt.Sprintf("%s:%d", link.HostAddr, port)); err != nil {
		return r, err
	}
	r.Endpoint = "http://" + listen
	return r, applyProfile(ctx, r.proxy, link, p)
}

// StartRouteTest starts a route for one test and removes it when the test
// ends. It skips when this process is not root, saying so, and when
// toxiproxy is missing, except in CI (CI=true): there it fails.
func StartRouteTest(tb testing.TB, p Profile, port int) *Route {
	tb.Helper()
	r, err := StartRoute(context.Background(), p, port)
	switch {
	case errors.Is(err, ErrNotRoot):
		tb.Skipf("skipping: %v", err)
	case errors.Is(err, ErrNoToxiproxy) && os.Getenv("CI") != "true":
		tb.Skipf("skipping: %v", err)
	case err != nil:
		tb.Fatalf("netsim: route to port %d: %v", port, err)
	}
	tb.Cleanup(func() {
		if err := r.Close(); err != nil {
			tb.Errorf("netsim: %v", err)
		}
	})
	return r
}

// Close stops the proxy and removes the link.
func (r *Route) Close() error {
	if r.proxy != nil {
		r.proxy.Close()
	}
	return r.Link.Close()
}
