package httpstore

import "net/http"

// NewTransport returns an http.Transport for ranged reads: an idle pool of
// at least parallel connections per host, so that the requests a
// remote.Store keeps in flight reuse connections instead of dialling;
// HTTP/2 wherever TLS offers it (one connection carries every range); and
// no transparent gzip, which would change what a byte range means. Proxy,
// dial and TLS handshake settings are http.DefaultTransport's.
func NewTransport(parallel int) *http.Transport {
	t, ok := http.DefaultTransport.(*http.Transport)
	if !ok { // replaced by the program: start from the zero Transport's defaults
		t = &http.Transport{Proxy: http.ProxyFromEnvironment}
	}
	t = t.Clone()
	t.MaxIdleConnsPerHost = max(parallel, 2)
	t.MaxIdleConns = max(t.MaxIdleConns, 4*t.MaxIdleConnsPerHost)
	t.ForceAttemptHTTP2 = true
	t.DisableCompression = true
	return t
}
