// Package s3test runs a real S3 server for tests: versitygw, the Versity S3
// gateway, on 127.0.0.1 with a posix backend in a temporary directory.
// scripts/versitygw.sh install puts the binary where Binary finds it.
//
// A test package starts one gateway for all its tests with a Once:
//
//	var gw s3test.Once
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		gw.Close()
//		os.Exit(code)
//	}
//
//	func TestX(t *testing.T) {
//		srv := gw.Server(t)
//		bucket := srv.NewBucket(t, false)
//		...
//	}
package s3test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/filemap/filemap/internal/syncbuf"
	"github.com/filemap/filemap/internal/tied"
)

// The test credentials and region. versitygw runs in single-account mode
// with these as its root user.
const (
	AccessKey = "filemap-test-access"
	SecretKey = "filemap-test-secret-key"
	Region    = "us-east-1"
)

// EnvBinary names the environment variable that points at a versitygw
// binary, ahead of PATH and GOPATH/bin.
const EnvBinary = "FILEMAP_VERSITYGW"

// ErrNoBinary reports that no versitygw binary was found.
var ErrNoBinary = errors.New("versitygw not found: run scripts/versitygw.sh install, or set " + EnvBinary)

// startTimeout bounds the wait for a started gateway to answer; it starts in
// a fraction of a second, but a loaded CI machine may be slow.
const startTimeout = 30 * time.Second

// Server is a running versitygw.
type Server struct {
	Endpoint  string // http://127.0.0.1:PORT
	AccessKey string
	SecretKey string
	Region    string
	Client    *s3.Client // path-style, static credentials, SDK retries off
	Dir       string     // the posix backend's root: one directory per bucket

	tmp     string
	proc    *tied.Proc
	log     *lockedBuffer
	buckets atomic.Int64
	closed  sync.Once
}

// Binary finds versitygw: $FILEMAP_VERSITYGW, else PATH, else GOBIN or
// GOPATH/bin, where scripts/versitygw.sh install puts it.
func Binary() (string, error) {
	p, err := tied.Binary(EnvBinary, "versitygw")
	if err == nil && p == "" {
		err = ErrNoBinary
	}
	return p, err
}

// Start starts a gateway for one test and stops it when the test ends. A
// missing binary skips the test, except in CI (CI=true), where a test that
// did not run must not pass: there it fails.
func Start(tb testing.TB) *Server {
	tb.Helper()
	s, err := New()
	if err != nil {
		skipOrFail(tb, err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

func skipOrFail(tb testing.TB, err error) {
	tb.Helper()
	if errors.Is(err, ErrNoBinary) && os.Getenv("CI") != "true" {
		tb.Skipf("skipping: %v", err)
		return
	}
	tb.Fatalf("s3test: %v", err)
}

// New starts a gateway whose lifetime the caller manages with Close.
func New() (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	// The free port is found by binding and closing it, so another process
	// may take it before versitygw binds: then versitygw exits at once, and
	// trying another port cures it.
	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s, err := start(bin, nil, port, "http://"+port)
		if err == nil || attempt == 2 {
			return s, err
		}
	}
}

// NewAt starts a gateway as New does, but run by the command wrap (its
// arguments then versitygw's; e.g. ip netns exec NAME, to run it in a
// network namespace), listening on listen (host:port), and reached by
// clients at endpoint (http://host:port).
func NewAt(wrap []string, listen, endpoint string) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	return start(bin, wrap, listen, endpoint)
}

func start(bin string, wrap []string, listen, endpoint string) (*Server, error) {
	tmp, err := os.MkdirTemp("", "filemap-versitygw-")
	if err != nil {
		return nil, err
	}
	s := &Server{
		Endpoint:  endpoint,
		AccessKey: AccessKey,
		SecretKey: SecretKey,
		Region:    Region,
		Dir:       filepath.Join(tmp, "root"),
		tmp:       tmp,
		log:       &lockedBuffer{},
	}
	versions := filepath.Join(tmp, "versions")
	for _, d := range []string{s.Dir, versions} {
		if err := os.Mkdir(d, 0o755); err != nil {
			os.RemoveAll(tmp)
			return nil, err
		}
	}
	args := append(slices.Clone(wrap), bin,
		"--port", listen,
		"--access", AccessKey,
		"--secret", SecretKey,
		"--region", Region,
		"--keep-alive", // without it the gateway closes every connection after one response
		"--quiet",
		"posix",
		"--versioning-dir", versions, // lets buckets turn versioning on
		s.Dir,
	)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = gatewayEnv()
	cmd.Stdout, cmd.Stderr = s.log, s.log
	// The gateway must not outlive a test binary that is killed (a test
	// timeout, ^C).
	if s.proc, err = tied.Start(cmd); err != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	if err := s.waitReady(); err != nil {
		s.Close()
		return nil, fmt.Errorf("%s on %s: %w\n%s", bin, listen, err, s.log.String())
	}
	s.Client = s.ClientFor(s.Endpoint, 0)
	return s, nil
}

// gatewayEnv is the environment without the variables that versitygw reads
// as settings (VGW_*, ROOT_*): the command line alone configures it.
func gatewayEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "VGW_") && !strings.HasPrefix(kv, "ROOT_") {
			env = append(env, kv)
		}
	}
	return env
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// waitReady polls until the gateway answers HTTP at all (an anonymous
// request gets 403, which is an answer).
func (s *Server) waitReady() error {
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(startTimeout)
	for {
		resp, err := hc.Get(s.Endpoint + "/")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		select {
		case <-s.proc.Exited():
			return fmt.Errorf("exited before answering: %v", s.proc.Err())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer after %v: %w", startTimeout, err)
		}
	}
}

// ClientFor is a client with this server's credentials for endpoint: the
// server's own, or a proxy's in front of it. It keeps up to conns idle
// connections (0: the SDK's default), so that a caller with conns requests
// in flight reuses its connections, as a real client of a distant store
// must.
func (s *Server) ClientFor(endpoint string, conns int) *s3.Client {
	hc := awshttp.NewBuildableClient()
	if conns > 0 {
		hc = hc.WithTransportOptions(func(t *http.Transport) {
			t.MaxIdleConns = max(t.MaxIdleConns, conns)
			t.MaxIdleConnsPerHost = conns
		})
	}
	return s3.New(s3.Options{
		BaseEndpoint: aws.String(endpoint),
		HTTPClient:   hc,
		Region:       s.Region,
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""),
		// Fail fast: a test helper that fails should say why at once.
		Retryer: aws.NopRetryer{},
	})
}

// Close kills the gateway, waits for it, and removes its directory.
func (s *Server) Close() error {
	s.closed.Do(func() {
		s.proc.Kill()
		os.RemoveAll(s.tmp)
	})
	return nil
}

// Exited is closed once the gateway has exited.
func (s *Server) Exited() <-chan struct{} { return s.proc.Exited() }

// Log is what the gateway has printed so far.
func (s *Server) Log() string { return s.log.String() }

// NewBucket creates a bucket with a name no other test of this server uses.
func (s *Server) NewBucket(tb testing.TB, versioned bool) string {
	tb.Helper()
	name := fmt.Sprintf("filemap-test-%d", s.buckets.Add(1))
	s.CreateBucket(tb, name, versioned)
	return name
}

// CreateBucket creates a bucket, and turns versioning on if asked.
func (s *Server) CreateBucket(tb testing.TB, name string, versioned bool) {
	tb.Helper()
	ctx := context.Background()
	if _, err := s.Client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: &name}); err != nil {
		tb.Fatalf("s3test: create bucket %s: %v", name, err)
	}
	if !versioned {
		return
	}
	_, err := s.Client.PutBucketVersioning(ctx, &s3.PutBucketVersioningInput{
		Bucket:                  &name,
		VersioningConfiguration: &types.VersioningConfiguration{Status: types.BucketVersioningStatusEnabled},
	})
	if err != nil {
		tb.Fatalf("s3test: enable versioning on bucket %s: %v", name, err)
	}
}

// Put stores data as bucket/key and returns the ETag and VersionId (empty
// where the bucket is not versioned) that the server gave it.
func (s *Server) Put(tb testing.TB, bucket, key string, data []byte) (etag, versionID string) {
	tb.Helper()
	out, err := s.Client.PutObject(context.Background(), &s3.PutObjectInput{
		Bucket:        &bucket,
		Key:           &key,
		Body:          bytes.NewReader(data),
		ContentLength: aws.Int64(int64(len(data))),
	})
	if err != nil {
		tb.Fatalf("s3test: put s3://%s/%s (%d bytes): %v", bucket, key, len(data), err)
	}
	return aws.ToString(out.ETag), aws.ToString(out.VersionId)
}

// Delete removes bucket/key (its latest version, in a versioned bucket).
func (s *Server) Delete(tb testing.TB, bucket, key string) {
	tb.Helper()
	if _, err := s.Client.DeleteObject(context.Background(), &s3.DeleteObjectInput{Bucket: &bucket, Key: &key}); err != nil {
		tb.Fatalf("s3test: delete s3://%s/%s: %v", bucket, key, err)
	}
}

// Env is the environment that points the AWS SDK's standard configuration
// at this server, and at nothing else: no shared config files, no instance
// metadata service. For a child process, append it to os.Environ().
func (s *Server) Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + s.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + s.SecretKey,
		"AWS_SESSION_TOKEN=",
		"AWS_REGION=" + s.Region,
		"AWS_ENDPOINT_URL=" + s.Endpoint,
		"AWS_PROFILE=",
		"AWS_CONFIG_FILE=" + os.DevNull,
		"AWS_SHARED_CREDENTIALS_FILE=" + os.DevNull,
		"AWS_EC2_METADATA_DISABLED=true",
	}
}

// SetEnv sets Env in this test's environment, restored when it ends.
func (s *Server) SetEnv(tb testing.TB) {
	tb.Helper()
	for _, kv := range s.Env() {
		k, v, _ := strings.Cut(kv, "=")
		tb.Setenv(k, v)
	}
}

// Once starts one gateway for a whole test package, on first use.
type Once struct {
	once sync.Once
	srv  *Server
	err  error
}

// Server is the package's gateway, started by the first test that asks.
// A missing binary skips the test (fails it in CI), as Start does.
func (o *Once) Server(tb testing.TB) *Server {
	tb.Helper()
	o.once.Do(func() { o.srv, o.err = New() })
	if o.err != nil {
		skipOrFail(tb, o.err)
	}
	return o.srv
}

// Close stops the gateway if one was started; TestMain calls it after
// m.Run.
func (o *Once) Close() {
	// A Server call after Close must not start a gateway that nobody stops.
	o.once.Do(func() { o.err = errors.New("s3test: the package's gateway was closed") })
	if o.srv != nil {
		o.srv.Close()
	}
}

type lockedBuffer = syncbuf.Buffer
