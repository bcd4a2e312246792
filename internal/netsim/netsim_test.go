package netsim

import (
	"context"
	"testing"
)

// tolerance is how far a measured figure may stray from its profile's.
const tolerance = 0.25

// TestProfiles: each profile's network, measured once on enough bytes to
// be stable, adds the latency it asks to a GET, within ±25%, and gives one
// connection the rate it asks, within ±25%; 16 connections together get no
// more than the link's cap (+25%). This tests the simulator, which the
// remote benchmarks rely on to mean what their profiles say.
func TestProfiles(t *testing.T) {
	profiles := Profiles()
	s := StartTest(t, profiles[0])
	for _, p := range profiles {
		if err := s.Set(context.Background(), p); err != nil {
			t.Fatal(err)
		}
		f, err := s.Measure(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s\nmeasured: %s", p, f)
		if err := f.Check(p, tolerance); err != nil {
			t.Error(err)
		}
	}
}

// TestLinkCap: the link's tbf caps what all connections together get,
// toxics or not: at a cap well below what the store gives 16 connections
// on this machine, the store's own endpoint (around the toxics) gives them
// the cap, within ±25%.
func TestLinkCap(t *testing.T) {
	const rate = 100e6
	s := StartTest(t, Profiles()[0])
	if err := s.Link.SetRate(rate); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.putMeasureObject(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := linkRate(ctx, s.Store.ClientFor(s.Store.Endpoint, LinkConns))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("link capped at %s: %d connections around the toxics got %s", Rate(rate), LinkConns, Rate(got))
	if got < rate*(1-tolerance) || got > rate*(1+tolerance) {
		t.Errorf("%d connections over a link capped at %s got %s: want it ±%.0f%%", LinkConns, Rate(rate), Rate(got), tolerance*100)
	}
}
