package main

import (
	"bytes"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/filemap/filemap/internal/faultyhttp"
	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/internal/s3test"
	"github.com/filemap/filemap/server"
	"github.com/filemap/filemap/store"
	"github.com/filemap/filemap/store/s3store"
)

// cat of an https:// URL: every byte through page faults served from
// ranged GETs, over TLS with HTTP/2, by the private handler.
func TestCatHTTPS(t *testing.T) {
	data := pattern.Random(3<<20+123, 1)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		http.ServeContent(w, r, "obj", time.Unix(1700000000, 0), bytes.NewReader(data))
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	// The private handler trusts the test server's certificate through
	// the standard SSL_CERT_FILE.
	cert := writeCert(t, srv)
	r := filemapCLIEnv(t, []string{"SSL_CERT_FILE=" + cert}, "cat", srv.URL+"/obj")
	r.wantCode(t, 0)
	if !bytes.Equal(r.stdout, data) {
		t.Fatalf("filemap cat %s: %d bytes, want the object's %d", srv.URL, len(r.stdout), len(data))
	}
	r = filemapCLIEnv(t, []string{"SSL_CERT_FILE=" + cert}, "cat", "--offset", "1048571", "--length", "10", srv.URL+"/obj")
	r.wantCode(t, 0)
	if !bytes.Equal(r.stdout, data[1048571:1048581]) {
		t.Errorf("a range across a chunk: %x, want %x", r.stdout, data[1048571:1048581])
	}
}

// cat of an s3:// object of a real S3 server (versitygw), with the standard
// AWS environment.
func TestCatS3(t *testing.T) {
	gw := s3test.Start(t)
	gw.SetEnv(t)
	bucket := gw.NewBucket(t, false)
	data := pattern.Random(5<<20+7, 2)
	gw.Put(t, bucket, "dir/object.bin", data)
	r := filemapCLI(t, "cat", "s3://"+bucket+"/dir/object.bin")
	r.wantCode(t, 0)
	if !bytes.Equal(r.stdout, data) {
		t.Fatalf("filemap cat: %d bytes, want the object's %d", len(r.stdout), len(data))
	}
	r = filemapCLI(t, "cat", "s3://"+bucket+"/dir/missing.bin")
	r.wantCode(t, 1)
	r.wantStderr(t, "s3://"+bucket+"/dir/missing.bin", "no such key")
}

// S3 keys are taken literally, as the AWS CLI takes them: an object whose
// key holds '%', "%25", spaces, '+', '?', '#' or non-ASCII is reached by
// writing that key after the bucket, and each is its own object, never
// another's bytes.
func TestCatS3LiteralKeys(t *testing.T) {
	gw := s3test.Start(t)
	gw.SetEnv(t)
	bucket := gw.NewBucket(t, false)
	keys := []string{"dir/100%.bin", "dir/100%25.bin", "dir/a b.bin", "dir/a+b.bin",
		"dir/what?x=1", "dir/take#2", "dir/données-ü.bin", "dir/%zz%"}
	objects := make(map[string][]byte)
	for i, key := range keys {
		objects[key] = pattern.Random(64<<10+i, uint64(100+i))
		gw.Put(t, bucket, key, objects[key])
	}
	for _, key := range keys {
		uri := "s3://" + bucket + "/" + key
		r := filemapCLI(t, "cat", uri)
		r.wantCode(t, 0)
		if !bytes.Equal(r.stdout, objects[key]) {
			t.Errorf("filemap cat %s: %d bytes that are not the object's %d", uri, len(r.stdout), len(objects[key]))
		}
	}
}

// cat --object-version of a version the key has moved past, by VersionId;
// and of one the bucket does not have.
func TestCatS3Version(t *testing.T) {
	gw := s3test.Start(t)
	gw.SetEnv(t)
	bucket := gw.NewBucket(t, true)
	uri := "s3://" + bucket + "/snap/mem"
	old := pattern.Random(3<<20+9, 3)
	_, id := gw.Put(t, bucket, "snap/mem", old)
	gw.Put(t, bucket, "snap/mem", pattern.Random(1<<20, 4))
	r := filemapCLI(t, "cat", "--object-version", id, uri)
	r.wantCode(t, 0)
	if !bytes.Equal(r.stdout, old) {
		t.Fatalf("filemap cat --object-version %s: %d bytes, want the old version's %d", id, len(r.stdout), len(old))
	}
	r = filemapCLI(t, "cat", "--object-version", "no-such-version", uri)
	r.wantCode(t, 1)
	r.wantStderr(t, uri, `no version "no-such-version"`)
}

// firecracker --mem-version: every restore opens that version, an old one
// by VersionId; a version that is not the file's fails the restore.
func TestMemVersion(t *testing.T) {
	gw := s3test.Start(t)
	bucket := gw.NewBucket(t, true)
	uri := "s3://" + bucket + "/vm/mem"
	old := pattern.Random(2<<20, 5)
	_, id := gw.Put(t, bucket, "vm/mem", old)
	gw.Put(t, bucket, "vm/mem", pattern.Random(2<<20, 6))
	cfg := server.RemoteConfig{S3: s3store.Options{Endpoint: gw.Endpoint, Region: gw.Region,
		Credentials: credentials.NewStaticCredentialsProvider(gw.AccessKey, gw.SecretKey, "")}}
	log := slog.New(slog.DiscardHandler)
	open, done, err := memOpener(uri, id, cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	st, err := open(t.Context())
	if err != nil {
		t.Fatalf("open %s at %s: %v", uri, id, err)
	}
	got := make([]byte, len(old))
	if _, err := store.ReadFull(st, got, 0); err != nil || !bytes.Equal(got, old) {
		t.Fatalf("read %s at version %s: %v; the bytes are the old version's: %v", uri, id, err, bytes.Equal(got, old))
	}
	st.Close()

	path := filepath.Join(t.TempDir(), "mem")
	if err := os.WriteFile(path, old, 0o644); err != nil {
		t.Fatal(err)
	}
	open, done, err = memOpener(path, "not-its-version", cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	if _, err := open(t.Context()); !errors.Is(err, store.ErrChanged) || !strings.Contains(err.Error(), "--mem-version not-its-version") {
		t.Fatalf("open of %s at another version: %v, want ErrChanged naming --mem-version", path, err)
	}
}

// writeCert writes a TLS test server's certificate as a PEM file.
func writeCert(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "cert.pem")
	b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// Only an S3 VersionId lets restores skip opening the memory file: an ETag
// or a file's version may stop being current, and each restore checks.
func TestImmutableVersion(t *testing.T) {
	for _, c := range []struct{ uri, version, want string }{
		{"s3://bucket/vm/mem", "3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY", "3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY"},
		{"s3://bucket/vm/mem", `"9b2cf535f27731c974343645a3985328"`, ""},
		{"s3://bucket/vm/mem", `W/"9b2cf535"`, ""},
		{"s3://bucket/vm/mem", "", ""},
		{"s3://bucket/vm/mem", "null", ""}, // replaced in place while versioning is suspended
		{"/var/lib/fc/mem", "1073741824@1795686572285920050", ""},
		{"https://example.com/mem", "abc", ""},
	} {
		if got := immutableVersion(c.uri, c.version); got != c.want {
			t.Errorf("immutableVersion(%q, %q) = %q, want %q", c.uri, c.version, got, c.want)
		}
	}
}

// cat of an s3:// object with no credentials anywhere: no keys in the
// environment, no profile, an empty home, and an instance metadata service
// that has no role (a stand-in refusing with 403 or 404, as a host that is
// not an EC2 instance may). The error says no credentials were found and
// where they are looked for, takes the metadata service's status for no S3
// answer, and the AWS SDK's own log lines (its WARN about falling back to
// IMDSv1) stay off stderr.
func TestCatS3NoCredentials(t *testing.T) {
	gw := s3test.Start(t)
	bucket := gw.NewBucket(t, false)
	gw.Put(t, bucket, "obj", pattern.Random(4096, 7))
	for _, status := range []int{http.StatusNotFound, http.StatusForbidden} {
		imds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, http.StatusText(status), status)
		}))
		t.Cleanup(imds.Close)
		catS3NoCredentials(t, gw, "s3://"+bucket+"/obj", imds.URL)
	}
}

func catS3NoCredentials(t *testing.T, gw *s3test.Server, uri, imds string) {
	r := filemapCLIEnv(t, noCredentialsEnv(t, gw, imds), "cat", uri)
	r.wantCode(t, 1)
	r.wantStderr(t, uri, "no AWS credentials", "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "~/.aws/credentials", "web identity", "instance or container role")
	for _, sdk := range []string{"WARN", "IMDSv1", "access denied", "no such key"} {
		if bytes.Contains(r.stderr, []byte(sdk)) {
			t.Errorf("stderr shows %q:\n%s", sdk, r.stderr)
		}
	}
}

// A daemon asked for --log-level debug shows the AWS SDK's own log lines,
// as its debug records.
func TestServeLogsSDKLinesAtDebug(t *testing.T) {
	gw := s3test.Start(t)
	bucket := gw.NewBucket(t, false)
	gw.Put(t, bucket, "obj", pattern.Random(4096, 8))
	imds := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(imds.Close)
	d := startDaemonEnv(t, filepath.Join(shortTempDir(t), "s.sock"), noCredentialsEnv(t, gw, imds.URL), "--log-level", "debug")
	uri := "s3://" + bucket + "/obj"
	filemapCLI(t, "cat", "--socket", d.socket, uri).wantCode(t, 1)
	d.stop(t)
	lines := strings.Split(d.stderr.String(), "\n")
	if !slices.ContainsFunc(lines, func(l string) bool {
		return strings.Contains(l, "level=DEBUG") && strings.Contains(l, "aws sdk: falling back to IMDSv1")
	}) {
		t.Errorf("the daemon's debug log has no record of the AWS SDK's line:\n%s", d.stderr.Bytes())
	}
	for _, l := range lines {
		if strings.HasPrefix(l, "SDK ") {
			t.Errorf("the SDK wrote to stderr itself: %s", l)
		}
	}
}

// noCredentialsEnv is an environment in which the AWS SDK finds no
// credentials, with gw as the S3 endpoint and imds as the instance
// metadata service.
func noCredentialsEnv(t *testing.T, gw *s3test.Server, imds string) []string {
	return []string{
		"HOME=" + t.TempDir(),
		"AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY=", "AWS_SESSION_TOKEN=", "AWS_PROFILE=", "AWS_DEFAULT_PROFILE=",
		"AWS_CONFIG_FILE=", "AWS_SHARED_CREDENTIALS_FILE=", "AWS_WEB_IDENTITY_TOKEN_FILE=", "AWS_ROLE_ARN=",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=", "AWS_CONTAINER_CREDENTIALS_FULL_URI=",
		"AWS_REGION=" + gw.Region, "AWS_ENDPOINT_URL=" + gw.Endpoint,
		"AWS_EC2_METADATA_DISABLED=false", "AWS_EC2_METADATA_SERVICE_ENDPOINT=" + imds,
	}
}

// cat of an HTTP object whose server fails every request for one page, as
// in the field: the bytes before that page are written, every one of them
// (the chunk's pages before it too, not only the chunks before), and the
// error names the page's offset.
func TestCatBadPage(t *testing.T) {
	const bad = 10649600 // 40 pages into the 2 MiB chunk at 10 MiB
	data := pattern.Random(16<<20+123, 7)
	srv := faultyhttp.Start(t, data)
	srv.Fail(bad, faultyhttp.Status500)
	r := filemapCLI(t, "cat", srv.URL)
	r.wantCode(t, 1)
	r.wantStderr(t, "offset 10649600")
	if !bytes.Equal(r.stdout, data[:bad]) {
		t.Fatalf("filemap cat wrote %d bytes; want the %d before the bad page", len(r.stdout), bad)
	}
}

// cat --fault-timeout bounds, in cat's private handler, the time a page
// takes: of a server that sends part of a body and then holds the
// connection open, the bytes before the stall are written, and cat fails
// naming the stalled page's offset within the bound, where the default of
// two minutes would outlast the test.
func TestCatFaultTimeout(t *testing.T) {
	const stall, timeout = 5<<20 + 3*4096, 2 * time.Second
	data := pattern.Random(8<<20, 8)
	srv := faultyhttp.Start(t, data)
	srv.Fail(stall, faultyhttp.Stall)
	start := time.Now()
	r := filemapCLI(t, "cat", "--fault-timeout", timeout.String(), srv.URL)
	took := time.Since(start)
	r.wantCode(t, 1)
	r.wantStderr(t, fmt.Sprintf("offset %d", stall))
	if !bytes.Equal(r.stdout, data[:stall]) {
		t.Errorf("filemap cat wrote %d bytes; want the %d before the stall", len(r.stdout), stall)
	}
	if took > 3*timeout+5*time.Second { // the bound, and starting two processes on a busy machine
		t.Errorf("filemap cat --fault-timeout %v took %v", timeout, took)
	}
}
