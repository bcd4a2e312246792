// Package seaweedtest runs a SeaweedFS cluster for tests, on 127.0.0.1: a
// master, three volume servers that keep every volume on two of them
// (replication 001), and a filer with its S3 gateway, each a process of
// its own, so that a test can make a volume server crash or hang, as a host
// does.
//
// It is a scale test's store, not in CI: a test that wants it skips unless
// $FILEMAP_SEAWEEDFS names a weed binary (scripts/seaweedfs.sh install
// builds one and prints its path).
package seaweedtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/filemap/filemap/internal/syncbuf"
	"github.com/filemap/filemap/internal/tied"
)

// EnvBinary names the environment variable that points at the weed binary.
const EnvBinary = "FILEMAP_SEAWEEDFS"

// The gateway's one identity, and the region clients sign for.
const (
	AccessKey = "filemap-test-access"
	SecretKey = "filemap-test-secret-key"
	Region    = "us-east-1"
)

// Volumes is how many volume servers a cluster has.
const Volumes = 3

// startTimeout bounds each step of the start: a server answering, the
// volume servers joining the master, the gateway listing buckets.
const startTimeout = 60 * time.Second

// Cluster is a running SeaweedFS.
type Cluster struct {
	Endpoint  string // the S3 gateway: http://127.0.0.1:PORT, on every address of the namespace
	Port      int    // the S3 gateway's port
	AccessKey string
	SecretKey string
	Region    string
	Client    *s3.Client // path-style, static credentials, SDK retries off

	Master  *Server
	Volume  [Volumes]*Server
	Filer   *Server // with the S3 gateway in it
	dir     string
	servers []*Server
}

// Server is one weed process.
type Server struct {
	Name string // "master", "volume0", ...
	Addr string // its HTTP address, 127.0.0.1:PORT; gRPC is on PORT+10000
	proc *tied.Proc
	log  *syncbuf.Buffer
}

// Binary is $FILEMAP_SEAWEEDFS, or "" when it is not set.
func Binary() (string, error) {
	p := os.Getenv(EnvBinary)
	if p == "" {
		return "", nil
	}
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s=%s: %w", EnvBinary, p, err)
	}
	return p, nil
}

// Start starts a cluster for one test and stops it when the test ends. It
// skips the test, saying why, unless $FILEMAP_SEAWEEDFS is set.
func Start(tb testing.TB) *Cluster {
	tb.Helper()
	bin, err := Binary()
	if err != nil {
		tb.Fatal(err)
	}
	if bin == "" {
		tb.Skipf("skipping: a scale test on SeaweedFS; set %s to a weed binary (scripts/seaweedfs.sh install)", EnvBinary)
	}
	c, err := New(bin)
	if err != nil {
		tb.Fatalf("seaweedtest: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("SeaweedFS logs:\n%s", c.Logs())
		}
		c.Close()
	})
	return c
}

// New starts a cluster whose lifetime the caller manages with Close.
func New(bin string) (*Cluster, error) {
	dir, err := os.MkdirTemp("", "filemap-seaweedfs-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{AccessKey: AccessKey, SecretKey: SecretKey, Region: Region, dir: dir}
	if err := c.start(bin); err != nil {
		err = fmt.Errorf("%w\n%s", err, c.Logs())
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) start(bin string) error {
	var err error
	if c.Master, err = c.spawn(bin, "master", masterArgs); err != nil {
		return err
	}
	if err := waitHTTP(c.Master, "/cluster/status"); err != nil {
		return err
	}
	for i := range c.Volume {
		if c.Volume[i], err = c.spawn(bin, fmt.Sprintf("volume%d", i), c.volumeArgs); err != nil {
			return err
		}
	}
	if err := c.waitVolumes(); err != nil {
		return err
	}
	s3port, err := freePorts()
	if err != nil {
		return err
	}
	c.Port = s3port
	c.Endpoint = "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(s3port))
	filerArgs := func(dir string, port int) []string { return c.filerArgs(dir, port, s3port) }
	if c.Filer, err = c.spawn(bin, "filer", filerArgs); err != nil {
		return err
	}
	c.Client = c.newClient()
	return c.waitGateway()
}

// The servers' settings (scripts/seaweedfs.sh serve has the same). The
// master makes every new volume's replication 001 (a copy on another server
// of the rack), fills volumes to 256 MB only, so that a large object
// spreads over several and every server holds some of it, and sends no
// telemetry.
func masterArgs(dir string, port int) []string {
	return []string{"master", "-ip=127.0.0.1", "-port=" + strconv.Itoa(port), "-mdir=" + dir,
		"-defaultReplication=001", "-volumeSizeLimitMB=256", "-telemetry=false"}
}

func (c *Cluster) volumeArgs(dir string, port int) []string {
	return []string{"volume", "-ip=127.0.0.1", "-port=" + strconv.Itoa(port), "-dir=" + dir, "-max=16", "-master=" + c.Master.Addr}
}

// filerArgs: the gateway listens on every address, so that simulated
// hosts in network namespaces of their own (internal/netsim's routes)
// reach it at their links' near addresses; its other listeners (Iceberg,
// Lance) are off; its sockets are in the cluster's directory, not shared
// /tmp paths.
func (c *Cluster) filerArgs(dir string, port, s3port int) []string {
	config := filepath.Join(dir, "s3.json")
	return []string{"filer", "-ip=127.0.0.1", "-port=" + strconv.Itoa(port), "-master=" + c.Master.Addr,
		"-defaultStoreDir=" + dir, "-localSocket=" + filepath.Join(dir, "filer.sock"),
		"-s3", "-s3.port=" + strconv.Itoa(s3port), "-s3.ip.bind=0.0.0.0", "-s3.config=" + config,
		"-s3.localSocket=" + filepath.Join(dir, "s3.sock"), "-s3.port.iceberg=0", "-s3.port.lance=0"}
}

// s3Config is the gateway's identities: the test's, with every right.
func s3Config() []byte {
	type cred struct {
		AccessKey string `json:"accessKey"`
		SecretKey string `json:"secretKey"`
	}
	type identity struct {
		Name        string   `json:"name"`
		Credentials []cred   `json:"credentials"`
		Actions     []string `json:"actions"`
	}
	b, _ := json.Marshal(struct {
		Identities []identity `json:"identities"`
	}{[]identity{{"filemap", []cred{{AccessKey, SecretKey}}, []string{"Admin", "Read", "List", "Tagging", "Write"}}}})
	return b
}

// spawn starts weed with the arguments args makes of the server's
// directory and ports.
func (c *Cluster) spawn(bin, name string, args func(dir string, port int) []string) (*Server, error) {
	dir := filepath.Join(c.dir, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, err
	}
	if name == "filer" {
		if err := os.WriteFile(filepath.Join(dir, "s3.json"), s3Config(), 0o600); err != nil {
			return nil, err
		}
	}
	port, err := freePorts()
	if err != nil {
		return nil, err
	}
	s := &Server{Name: name, Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), log: new(syncbuf.Buffer)}
	// weed's logs go to stderr only, not to files in /tmp.
	cmd := exec.Command(bin, append([]string{"-logtostderr"}, args(dir, port)...)...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if s.proc, err = tied.Start(cmd); err != nil {
		return nil, fmt.Errorf("start weed %s: %w", name, err)
	}
	c.servers = append(c.servers, s)
	return s, nil
}

// Pid is the server's process id.
func (s *Server) Pid() int { return s.proc.Cmd.Process.Pid }

// Log is what the server has printed so far.
func (s *Server) Log() string { return s.log.String() }

// Kill kills the server with SIGKILL, as a host that crashes, and waits
// for it to be gone: its connections are reset, and new ones refused.
func (s *Server) Kill() { s.proc.Kill() }

// Stop stops the server with SIGSTOP, as a host that hangs: its
// connections stay open, and new ones are accepted by the kernel, but
// nothing answers. Close kills it.
func (s *Server) Stop() error {
	if err := s.proc.Cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		return fmt.Errorf("stop weed %s: %w", s.Name, err)
	}
	return nil
}

// freePorts finds a port that is free on 127.0.0.1 with the port 10000
// above it: a weed server's gRPC port is its HTTP port + 10000, which one
// server assumes of another, and which the filer's S3 gateway assumes of
// the filer whatever -port.grpc says. The ports are drawn below the
// kernel's ephemeral range (32768 on), where no outgoing connection takes
// them; another process may still bind them before the server does.
func freePorts() (int, error) {
	for range 100 {
		port := 11000 + rand.IntN(21000-11000)
		if free(port) && free(port+10000) {
			return port, nil
		}
	}
	return 0, errors.New("no free port P with P+10000 free on 127.0.0.1 in 11000-31000")
}

func free(port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// poll calls try until it succeeds, s exits, or startTimeout passes.
func poll(s *Server, what string, try func() error) error {
	deadline := time.Now().Add(startTimeout)
	for {
		err := try()
		if err == nil {
			return nil
		}
		select {
		case <-s.proc.Exited():
			return fmt.Errorf("weed %s exited before %s: %v", s.Name, what, s.proc.Err())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("weed %s: no %s after %v: %w", s.Name, what, startTimeout, err)
		}
	}
}

// waitHTTP waits until s answers 200 for path.
func waitHTTP(s *Server, path string) error {
	hc := &http.Client{Timeout: time.Second}
	return poll(s, "answer on "+path, func() error {
		resp, err := hc.Get("http://" + s.Addr + path)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", path, resp.Status)
		}
		return nil
	})
}

// waitVolumes waits until the master's topology holds every volume server.
func (c *Cluster) waitVolumes() error {
	return poll(c.Master, fmt.Sprintf("%d volume servers", Volumes), func() error {
		nodes, err := c.dataNodes()
		if err == nil && len(nodes) < Volumes {
			err = fmt.Errorf("%d of them have joined", len(nodes))
		}
		return err
	})
}

// dataNode is a volume server in the master's topology.
type dataNode struct {
	Url     string // its HTTP address
	Volumes int64  // the volumes it holds a copy of
}

// dataNodes lists the volume servers in the master's topology.
func (c *Cluster) dataNodes() ([]dataNode, error) {
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get("http://" + c.Master.Addr + "/dir/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var st struct {
		Topology struct {
			DataCenters []struct {
				Racks []struct{ DataNodes []dataNode }
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("GET http://%s/dir/status: %w", c.Master.Addr, err)
	}
	var nodes []dataNode
	for _, dc := range st.Topology.DataCenters {
		for _, r := range dc.Racks {
			nodes = append(nodes, r.DataNodes...)
		}
	}
	return nodes, nil
}

// MostVolumes is the volume server that holds copies of the most volumes:
// the one whose loss the most reads have to fail over from. It also says
// how many volumes each server holds.
func (c *Cluster) MostVolumes() (*Server, map[string]int64, error) {
	nodes, err := c.dataNodes()
	if err != nil {
		return nil, nil, err
	}
	counts := make(map[string]int64)
	for _, n := range nodes {
		counts[n.Url] = n.Volumes
	}
	var most *Server
	for _, s := range c.Volume {
		if most == nil || counts[s.Addr] > counts[most.Addr] {
			most = s
		}
	}
	return most, counts, nil
}

// waitGateway waits until the S3 gateway lists buckets with the test's
// credentials: it is up, and has its filer and identities.
func (c *Cluster) waitGateway() error {
	return poll(c.Filer, "S3 gateway", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := c.Client.ListBuckets(ctx, &s3.ListBucketsInput{})
		return err
	})
}

func (c *Cluster) newClient() *s3.Client {
	return s3.New(s3.Options{
		BaseEndpoint: aws.String(c.Endpoint),
		Region:       c.Region,
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(c.AccessKey, c.SecretKey, ""),
		Retryer:      aws.NopRetryer{},
	})
}

// CreateBucket creates a bucket with versioning on, so that an object's
// versions have VersionIds.
func (c *Cluster) CreateBucket(tb testing.TB, name string) {
	tb.Helper()
	ctx := context.Background()
	if _, err := c.Client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: &name}); err != nil {
		tb.Fatalf("seaweedtest: create bucket %s: %v", name, err)
	}
	_, err := c.Client.PutBucketVersioning(ctx, &s3.PutBucketVersioningInput{
		Bucket:                  &name,
		VersioningConfiguration: &types.VersioningConfiguration{Status: types.BucketVersioningStatusEnabled},
	})
	if err != nil {
		tb.Fatalf("seaweedtest: enable versioning on bucket %s: %v", name, err)
	}
}

// Env is the environment that points the AWS SDK's standard configuration
// at endpoint with the cluster's credentials, and at nothing else.
func (c *Cluster) Env(endpoint string) []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + c.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + c.SecretKey,
		"AWS_SESSION_TOKEN=",
		"AWS_REGION=" + c.Region,
		"AWS_ENDPOINT_URL=" + endpoint,
		"AWS_PROFILE=",
		"AWS_CONFIG_FILE=" + os.DevNull,
		"AWS_SHARED_CREDENTIALS_FILE=" + os.DevNull,
		"AWS_EC2_METADATA_DISABLED=true",
	}
}

// Logs is what every server has printed so far, each under its name.
func (c *Cluster) Logs() string {
	var b strings.Builder
	for _, s := range c.servers {
		fmt.Fprintf(&b, "--- weed %s (%s):\n%s\n", s.Name, s.Addr, s.log.String())
	}
	return b.String()
}

// Servers is every server of the cluster, the master first.
func (c *Cluster) Servers() []*Server { return c.servers }

// Close kills every server, waits for them, and removes their directory.
func (c *Cluster) Close() error {
	var errs []error
	for _, s := range c.servers {
		s.Kill()
	}
	errs = append(errs, os.RemoveAll(c.dir))
	return errors.Join(errs...)
}
