package s3store_test

import (
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/filemap/filemap/store/s3store"
)

// These tests make clients and send nothing.

var someCredentials = credentials.NewStaticCredentialsProvider("a", "b", "")

func TestRegionFallback(t *testing.T) {
	c, err := s3store.NewClient(t.Context(), s3store.Options{Endpoint: "http://127.0.0.1:9", Credentials: someCredentials})
	if err != nil {
		t.Fatal(err)
	}
	o := c.S3().Options()
	if o.Region != "us-east-1" || !o.UsePathStyle {
		t.Errorf("with an endpoint and no region: region %q, path style %v; want us-east-1 and path style", o.Region, o.UsePathStyle)
	}
	if c.Endpoint() != "http://127.0.0.1:9" {
		t.Errorf("Endpoint = %q", c.Endpoint())
	}
}

func TestNoRegion(t *testing.T) {
	_, err := s3store.NewClient(t.Context(), s3store.Options{Credentials: someCredentials})
	if err == nil || !strings.Contains(err.Error(), "AWS_REGION") {
		t.Fatalf("NewClient for AWS with no region = %v, want an error telling how to set one", err)
	}
}

func TestRegionChain(t *testing.T) {
	t.Setenv("AWS_REGION", "eu-west-3")
	c, err := s3store.NewClient(t.Context(), s3store.Options{Credentials: someCredentials})
	if err != nil {
		t.Fatal(err)
	}
	o := c.S3().Options()
	if o.Region != "eu-west-3" || o.UsePathStyle || c.Endpoint() != "" {
		t.Errorf("AWS with AWS_REGION: region %q, path style %v, endpoint %q; want eu-west-3, virtual-hosted, none",
			o.Region, o.UsePathStyle, c.Endpoint())
	}

	c, err = s3store.NewClient(t.Context(), s3store.Options{Region: "ap-south-1", Credentials: someCredentials})
	if err != nil {
		t.Fatal(err)
	}
	if r := c.S3().Options().Region; r != "ap-south-1" {
		t.Errorf("Options.Region ap-south-1 gave region %q", r)
	}
}

func TestAddressing(t *testing.T) {
	for _, c := range []struct {
		endpoint   string
		addressing s3store.Addressing
		pathStyle  bool
	}{
		{"http://127.0.0.1:9", s3store.AddressingAuto, true},
		{"http://127.0.0.1:9", s3store.VirtualHosted, false},
		{"", s3store.AddressingAuto, false},
		{"", s3store.PathStyle, true},
	} {
		opts := s3store.Options{Endpoint: c.endpoint, Addressing: c.addressing, Region: "us-east-1", Credentials: someCredentials}
		cl, err := s3store.NewClient(t.Context(), opts)
		if err != nil {
			t.Fatal(err)
		}
		if got := cl.S3().Options().UsePathStyle; got != c.pathStyle {
			t.Errorf("endpoint %q, addressing %d: path style %v, want %v", c.endpoint, c.addressing, got, c.pathStyle)
		}
	}
}

func TestEndpointFromEnvironment(t *testing.T) {
	t.Setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9/")
	c, err := s3store.NewClient(t.Context(), s3store.Options{Credentials: someCredentials})
	if err != nil {
		t.Fatal(err)
	}
	if c.Endpoint() != "http://127.0.0.1:9" || c.S3().Options().Region != "us-east-1" {
		t.Errorf("AWS_ENDPOINT_URL: endpoint %q, region %q; want http://127.0.0.1:9 and us-east-1", c.Endpoint(), c.S3().Options().Region)
	}
	// An explicit endpoint wins over the environment's.
	c, err = s3store.NewClient(t.Context(), s3store.Options{Endpoint: "http://127.0.0.2:9", Credentials: someCredentials})
	if err != nil {
		t.Fatal(err)
	}
	if c.Endpoint() != "http://127.0.0.2:9" {
		t.Errorf("Options.Endpoint over AWS_ENDPOINT_URL: endpoint %q", c.Endpoint())
	}
}

func TestBadEndpoint(t *testing.T) {
	for _, endpoint := range []string{"127.0.0.1:7070", "ftp://host", "http://", "http://[::1"} {
		_, err := s3store.NewClient(t.Context(), s3store.Options{Endpoint: endpoint, Credentials: someCredentials})
		if err == nil || !strings.Contains(err.Error(), endpoint) {
			t.Errorf("NewClient with endpoint %q = %v, want an error naming it", endpoint, err)
		}
	}
}
