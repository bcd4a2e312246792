package s3store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/smithy-go/logging"
)

// credentialSources is where the SDK's default chain looks for credentials,
// in its order, for an error that must tell someone where to put them.
const credentialSources = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE and ~/.aws/credentials " +
	"(or ~/.aws/config), a web identity token (AWS_WEB_IDENTITY_TOKEN_FILE), an instance or container role"

// credentialsError marks the failure of the credentials chain to give any
// credentials. Its text is the chain's. Without the mark, the HTTP status
// of the last source's answer (the instance metadata service's 404 on a
// host that is not an EC2 instance) would pass for S3's.
type credentialsError struct{ error }

func (e credentialsError) Unwrap() error { return e.error }

// markedChain is the SDK's credentials chain, its failures marked.
type markedChain struct{ aws.CredentialsProvider }

func (c markedChain) Retrieve(ctx context.Context) (aws.Credentials, error) {
	creds, err := c.CredentialsProvider.Retrieve(ctx)
	if err != nil {
		return creds, credentialsError{err}
	}
	return creds, nil
}

// ProviderSources and IsCredentialsProvider let the SDK see through the
// mark to the chain, as it sees through its cache.
func (c markedChain) ProviderSources() []aws.CredentialSource {
	if s, ok := c.CredentialsProvider.(aws.CredentialProviderSource); ok {
		return s.ProviderSources()
	}
	return nil
}

func (c markedChain) IsCredentialsProvider(target aws.CredentialsProvider) bool {
	return aws.IsCredentialsProvider(c.CredentialsProvider, target)
}

// noCredentials is the error of an operation that found no credentials, or
// nil if err is not that.
func noCredentials(prefix string, err error) error {
	var ce credentialsError
	if !errors.As(err, &ce) {
		return nil
	}
	return fmt.Errorf("%s: no AWS credentials found (looked for %s): %w", prefix, credentialSources, ce.error)
}

// sdkLogger hands the AWS SDK's log lines to log, at debug level: they are
// the SDK's notes on its own fallbacks (such as its WARN on falling back to
// IMDSv1), not errors of the object, which the failed request's error
// says. With no log they are dropped, where the SDK would print them on
// stderr.
func sdkLogger(log *slog.Logger) logging.Logger {
	if log == nil {
		return logging.Nop{}
	}
	return logging.LoggerFunc(func(c logging.Classification, format string, v ...any) {
		log.Debug("aws sdk: "+fmt.Sprintf(format, v...), "sdk-level", string(c))
	})
}
