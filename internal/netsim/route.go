package netsim

import (
	"context"
	"errors"
	"fmt"
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
	bin, link, err := prepareLink(p)
	if err != nil {
		return nil, err
	}
	r = &Route{Link: link}
	defer func() {
		if err != nil {
			err = errors.Join(err, r.Close())
		}
	}()
	if r.proxy, r.Endpoint, err = startProxy(ctx, bin, link, fmt.Sprintf("%s:%d", link.HostAddr, port)); err != nil {
		return r, err
	}
	return r, applyProfile(ctx, r.proxy, link, p)
}

// StartRouteTest starts a route for one test and removes it when the test
// ends. It skips when this process is not root, saying so, and when
// toxiproxy is missing, except in CI (CI=true): there it fails.
func StartRouteTest(tb testing.TB, p Profile, port int) *Route {
	tb.Helper()
	r, err := StartRoute(context.Background(), p, port)
	forTest(tb, r, err, fmt.Sprintf("route to port %d", port))
	return r
}

// Close stops the proxy and removes the link.
func (r *Route) Close() error {
	if r.proxy != nil {
		r.proxy.Close()
	}
	return r.Link.Close()
}
