// Package netsim is a network that behaves like an object store's, for
// tests and benchmarks of remote objects: versitygw, the S3 server the
// tests use, in a network namespace of its own, reached over a veth pair
// whose two ends go through tbf (the link's cap, all connections
// together), and through toxiproxy in the namespace, whose toxics add
// latency to each response and cap each connection. Loopback answers a GET
// at once and at gigabytes a second, which measures only CPU; real S3
// answers after 10–30 ms and caps one connection at 50–100 MB/s, which is
// what a loader has to hide.
//
//	client ──veth (tbf)──▶ toxiproxy ──loopback──▶ versitygw
//	  this namespace     │ the sim's namespace                │
//
// It needs root (network namespaces, tc) and toxiproxy's server
// (scripts/netsim.sh install). scripts/netsim.sh up PROFILE starts one for
// people; tests and benchmarks call Start.
package netsim

import (
	"fmt"
	"strings"
	"time"
)

// Profile is what the network does to the store's answers.
type Profile struct {
	Name     string
	Latency  time.Duration // added to each response, before its first byte
	ConnRate int64         // bytes a second of one connection
	LinkRate int64         // bytes a second of the link, all connections together
}

func (p Profile) String() string {
	return fmt.Sprintf("%s: %v added to each response, %s per connection, %s for the link",
		p.Name, p.Latency, Rate(float64(p.ConnRate)), Rate(float64(p.LinkRate)))
}

// Profiles are the networks the benchmarks run on: a store in the client's
// region, and a far one.
func Profiles() []Profile {
	return []Profile{
		{Name: "region", Latency: 10 * time.Millisecond, ConnRate: 50e6, LinkRate: 300e6},
		{Name: "far", Latency: 40 * time.Millisecond, ConnRate: 25e6, LinkRate: 300e6},
	}
}

// ProfileNamed is the profile of Profiles called name.
func ProfileNamed(name string) (Profile, error) {
	var names []string
	for _, p := range Profiles() {
		if p.Name == name {
			return p, nil
		}
		names = append(names, p.Name)
	}
	return Profile{}, fmt.Errorf("no network profile %q: want one of %s", name, strings.Join(names, ", "))
}

// Rate formats bytes a second as MB/s (10^6 bytes), as the profiles are
// written.
func Rate(bytesPerSecond float64) string {
	return fmt.Sprintf("%.1f MB/s", bytesPerSecond/1e6)
}
