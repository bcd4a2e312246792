package netsim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/filemap/filemap/internal/syncbuf"
	"github.com/filemap/filemap/internal/tied"
)

// EnvToxiproxy names the environment variable that points at toxiproxy's
// server binary, ahead of PATH and GOPATH/bin.
const EnvToxiproxy = "FILEMAP_TOXIPROXY"

// toxiproxyName is the name scripts/netsim.sh install gives toxiproxy's
// server (go install calls it "server").
const toxiproxyName = "toxiproxy-server"

// ErrNoToxiproxy reports that no toxiproxy server binary was found.
var ErrNoToxiproxy = errors.New("toxiproxy-server not found: run scripts/netsim.sh install, or set " + EnvToxiproxy)

// ToxiproxyBinary finds toxiproxy's server: $FILEMAP_TOXIPROXY, else
// toxiproxy-server in PATH, GOBIN or GOPATH/bin.
func ToxiproxyBinary() (string, error) {
	p, err := tied.Binary(EnvToxiproxy, toxiproxyName)
	if err == nil && p == "" {
		err = ErrNoToxiproxy
	}
	return p, err
}

// Toxiproxy is a running toxiproxy server, driven through its HTTP API.
type Toxiproxy struct {
	API  string // http://host:port
	proc *tied.Proc
	log  *syncbuf.Buffer
	hc   *http.Client
}

// toxiproxyStartTimeout bounds the wait for a started server's API to
// answer; it starts at once, but a loaded machine may be slow.
const toxiproxyStartTimeout = 30 * time.Second

// StartToxiproxy runs the server bin at the far end of l, its API on the
// link's far address at port.
func StartToxiproxy(bin string, l *Link, port int) (*Toxiproxy, error) {
	host := l.PeerAddr.String()
	cmd := l.Command(bin, "-host", host, "-port", fmt.Sprint(port))
	t := &Toxiproxy{API: fmt.Sprintf("http://%s:%d", host, port), log: new(syncbuf.Buffer),
		hc: &http.Client{Timeout: 10 * time.Second}}
	// One line per connection at info: a benchmark makes thousands.
	cmd.Env = append(cmd.Environ(), "LOG_LEVEL=warn")
	cmd.Stdout, cmd.Stderr = t.log, t.log
	var err error
	if t.proc, err = tied.Start(cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	if err := t.waitReady(); err != nil {
		t.Close()
		return nil, fmt.Errorf("%s in %s: %w\n%s", bin, l.Netns, err, t.log.String())
	}
	return t, nil
}

func (t *Toxiproxy) waitReady() error {
	deadline := time.Now().Add(toxiproxyStartTimeout)
	for {
		err := t.call(context.Background(), "GET", "/version", nil, nil)
		if err == nil {
			return nil
		}
		select {
		case <-t.proc.Exited():
			return fmt.Errorf("exited before answering: %v", t.proc.Err())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer after %v: %w", toxiproxyStartTimeout, err)
		}
	}
}

// Close kills the server and waits for it.
func (t *Toxiproxy) Close() {
	t.proc.Kill()
}

// Log is what the server has printed so far.
func (t *Toxiproxy) Log() string { return t.log.String() }

// Toxic is one of a proxy's toxics, as toxiproxy's API spells it.
type Toxic struct {
	Name       string           `json:"name"`
	Type       string           `json:"type"`   // latency, bandwidth, ...
	Stream     string           `json:"stream"` // downstream: from the upstream server to the client
	Toxicity   float64          `json:"toxicity"`
	Attributes map[string]int64 `json:"attributes"`
}

// CreateProxy makes a proxy called name that listens on listen and
// forwards each connection to upstream (both host:port).
func (t *Toxiproxy) CreateProxy(ctx context.Context, name, listen, upstream string) error {
	body := map[string]any{"name": name, "listen": listen, "upstream": upstream, "enabled": true}
	return t.call(ctx, "POST", "/proxies", body, nil)
}

// SetToxic adds the toxic to proxy, or, if it has one of that name,
// replaces its attributes. A toxic changed applies to the connections
// already open too.
func (t *Toxiproxy) SetToxic(ctx context.Context, proxy string, x Toxic) error {
	var toxics []Toxic
	if err := t.call(ctx, "GET", "/proxies/"+proxy+"/toxics", nil, &toxics); err != nil {
		return err
	}
	for _, have := range toxics {
		if have.Name == x.Name {
			if have.Type != x.Type || have.Stream != x.Stream {
				return fmt.Errorf("toxic %s of proxy %s is a %s %s, not a %s %s", x.Name, proxy, have.Stream, have.Type, x.Stream, x.Type)
			}
			return t.call(ctx, "POST", "/proxies/"+proxy+"/toxics/"+x.Name, x, nil)
		}
	}
	return t.call(ctx, "POST", "/proxies/"+proxy+"/toxics", x, nil)
}

// call sends a request to the API with in as its JSON body (nil: none),
// and decodes the answer into out (nil: discards it).
func (t *Toxiproxy) call(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, t.API+path, body)
	if err != nil {
		return err
	}
	resp, err := t.hc.Do(req)
	if err != nil {
		return fmt.Errorf("toxiproxy %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("toxiproxy %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("toxiproxy %s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(answer)))
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(answer, out); err != nil {
		return fmt.Errorf("toxiproxy %s %s: the answer: %w", method, path, err)
	}
	return nil
}
