package main

import (
	"bytes"
	"encoding/pem"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/s3test"
)

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// cat of an https:// URL: every byte through page faults served from
// ranged GETs, over TLS with HTTP/2, by the private handler.
func TestCatHTTPS(t *testing.T) {
	data := randomBytes(3<<20+123, 1)
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
	data := randomBytes(5<<20+7, 2)
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
