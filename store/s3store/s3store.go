// Package s3store is filemap's address_space_operations.read_folio over S3:
// it reads s3://bucket/key objects, from AWS or any S3-compatible endpoint,
// by byte ranges with the AWS SDK for Go v2. An Object is a remote.Object;
// store/remote turns it into a store.Store with readahead and retries.
//
// An Object pins the version it saw at Open (the ETag, and the VersionId
// where the bucket is versioned) and sends it with every ranged GET, so a
// replaced object makes reads fail with store.ErrChanged instead of mixing
// two versions in one mapping: the page cache never holds bytes of a
// version other than the one its Key and Version name.
package s3store

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Addressing is how a request's URL names the bucket.
type Addressing uint8

const (
	// AddressingAuto is path style when an endpoint is set (by
	// Options.Endpoint, AWS_ENDPOINT_URL or the shared config), since most
	// S3-compatible servers have no wildcard DNS for virtual hosts, and
	// virtual-hosted style on AWS.
	AddressingAuto Addressing = iota
	// PathStyle is http://endpoint/bucket/key.
	PathStyle
	// VirtualHosted is http://bucket.endpoint/key.
	VirtualHosted
)

// DefaultConnectTimeout bounds how long a connection to an endpoint may take
// to open, so that an unreachable endpoint fails Open in seconds, not in the
// SDK's default 30.
const DefaultConnectTimeout = 10 * time.Second

// fallbackRegion is the region of an S3-compatible endpoint for which no
// region is configured: such servers take any region in the signature, and
// most are configured with this one.
const fallbackRegion = "us-east-1"

// maxIdlePerHost keeps idle connections for the several ranged GETs that
// store/remote has in flight per object, for many objects on one endpoint;
// the SDK's default of 10 would close and reopen connections under load.
const maxIdlePerHost = 64

// Options configure a Client. The zero value uses the standard AWS
// configuration: credentials, region and endpoint from the environment
// (AWS_ACCESS_KEY_ID, AWS_REGION, AWS_ENDPOINT_URL, ...), the shared config
// files, and for credentials the rest of the SDK's chain.
type Options struct {
	// Endpoint is an S3-compatible endpoint such as http://127.0.0.1:7070.
	// Empty means AWS_ENDPOINT_URL or the shared config, else AWS.
	Endpoint string

	// Addressing chooses path-style or virtual-hosted URLs.
	Addressing Addressing

	// Region overrides the SDK's region chain. When nothing gives a region
	// and an endpoint is set, the region is us-east-1.
	Region string

	// Credentials, when set, replace the SDK's credential chain.
	Credentials aws.CredentialsProvider

	// ConnectTimeout bounds the opening of a connection (0 means
	// DefaultConnectTimeout), TCP and TLS. It does not apply when Config
	// has an HTTPClient of its own.
	ConnectTimeout time.Duration

	// Config, when set, is used instead of loading the default
	// configuration, for a caller that has one already. The fields above
	// still apply on top of it, except Log: the Config's logger stays.
	Config *aws.Config

	// Log gets the AWS SDK's own log lines, at debug level; nil drops them.
	Log *slog.Logger

	// Prime is how many of an object's first bytes Open asks for with a
	// ranged GetObject in place of the HeadObject: its answer pins the
	// version as the HEAD's would, and the bytes, which most programs
	// read first, come with it (Object.Primed). 0 sends a HeadObject.
	Prime int
}

// Client opens S3 objects through one SDK client: a daemon makes one Client
// per endpoint and opens every object with it, so that all of them share its
// connections, credentials cache and clock-skew correction.
type Client struct {
	api      *s3.Client
	raw      aws.HTTPClient // sends ranged GETs to presigned URLs (presign.go); nil: through the SDK
	endpoint string         // the endpoint URL the client resolved; "" on AWS
	region   string
	prime    int // Options.Prime
}

// NewClient makes a Client from the standard AWS configuration and opts.
// It sends no request.
func NewClient(ctx context.Context, opts Options) (*Client, error) {
	if err := checkEndpoint(opts.Endpoint); err != nil {
		return nil, err
	}
	cfg, err := loadConfig(ctx, opts)
	if err != nil {
		return nil, err
	}
	api := s3.NewFromConfig(cfg, func(o *s3.Options) { applyOptions(o, opts) })
	c := FromS3(api)
	c.prime = max(opts.Prime, 0)
	if c.region == "" {
		return nil, fmt.Errorf("s3store: no AWS region: set AWS_REGION, a region in the shared config, or an endpoint")
	}
	return c, nil
}

// FromS3 makes a Client of an SDK client the caller configured, for example
// one shared with other code. Its retryer still governs Open's HeadObject,
// but never GetRange, which makes one attempt (see noSDKRetries).
func FromS3(api *s3.Client) *Client {
	o := api.Options()
	c := &Client{api: api, region: o.Region}
	if o.HTTPClient != nil {
		c.raw = o.HTTPClient // the SDK's own connections
	}
	if o.BaseEndpoint != nil {
		c.endpoint = strings.TrimRight(*o.BaseEndpoint, "/")
	}
	return c
}

// Endpoint is the endpoint URL the client sends requests to, or "" on AWS.
func (c *Client) Endpoint() string { return c.endpoint }

// S3 is the SDK client, for callers that need another S3 operation.
func (c *Client) S3() *s3.Client { return c.api }

// where names the client's endpoint in errors and in Object.Key: objects
// with the same bucket and key on two endpoints are different objects and
// must never share a page cache.
func (c *Client) where() string {
	if c.endpoint == "" {
		return "aws"
	}
	return c.endpoint
}

// Open opens one object with a Client of its own. A daemon opening many
// objects should use NewClient and Client.Open instead, to share connections.
func Open(ctx context.Context, uri string, opts Options) (*Object, error) {
	c, err := NewClient(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", uri, err)
	}
	return c.Open(ctx, uri)
}

// checkEndpoint catches an endpoint without a scheme or host, which the SDK
// would otherwise turn into requests to a puzzling URL.
func checkEndpoint(endpoint string) error {
	if endpoint == "" {
		return nil
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return fmt.Errorf("s3store: endpoint %q: %w", endpoint, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("s3store: endpoint %q: want http://host[:port] or https://host[:port]", endpoint)
	}
	return nil
}

func loadConfig(ctx context.Context, opts Options) (aws.Config, error) {
	if opts.Config != nil {
		cfg := opts.Config.Copy()
		if cfg.HTTPClient == nil {
			cfg.HTTPClient = newHTTPClient(opts.ConnectTimeout)
		}
		if opts.Credentials != nil {
			cfg.Credentials = aws.NewCredentialsCache(opts.Credentials)
		}
		return cfg, nil
	}
	load := []func(*config.LoadOptions) error{
		config.WithHTTPClient(newHTTPClient(opts.ConnectTimeout)),
		config.WithLogger(sdkLogger(opts.Log)),
		// Ask for and check checksums only where S3 requires them: a
		// ranged GET carries no checksum of its own, and S3-compatible
		// servers vary in the checksums they know.
		config.WithRequestChecksumCalculation(aws.RequestChecksumCalculationWhenRequired),
		config.WithResponseChecksumValidation(aws.ResponseChecksumValidationWhenRequired),
	}
	if opts.Region != "" {
		load = append(load, config.WithRegion(opts.Region))
	}
	if opts.Credentials != nil {
		load = append(load, config.WithCredentialsProvider(opts.Credentials))
	}
	cfg, err := config.LoadDefaultConfig(ctx, load...)
	if err != nil {
		return aws.Config{}, fmt.Errorf("s3store: load AWS configuration: %w", err)
	}
	if opts.Credentials == nil && cfg.Credentials != nil {
		cfg.Credentials = markedChain{cfg.Credentials}
	}
	return cfg, nil
}

func newHTTPClient(connect time.Duration) *awshttp.BuildableClient {
	if connect <= 0 {
		connect = DefaultConnectTimeout
	}
	return awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) { d.Timeout = connect }).
		WithTransportOptions(func(t *http.Transport) {
			t.MaxIdleConnsPerHost = maxIdlePerHost
			t.TLSHandshakeTimeout = connect
		})
}

// applyOptions runs after the SDK has resolved the endpoint from the
// environment and shared config, so that it sees whether one is set.
func applyOptions(o *s3.Options, opts Options) {
	if opts.Endpoint != "" {
		o.BaseEndpoint = aws.String(opts.Endpoint)
	}
	if opts.Region != "" {
		o.Region = opts.Region
	}
	custom := o.BaseEndpoint != nil && *o.BaseEndpoint != ""
	if o.Region == "" && custom {
		o.Region = fallbackRegion
	}
	switch opts.Addressing {
	case PathStyle:
		o.UsePathStyle = true
	case VirtualHosted:
		o.UsePathStyle = false
	default:
		o.UsePathStyle = o.UsePathStyle || custom
	}
}
