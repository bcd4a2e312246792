#!/usr/bin/env bash
# versitygw, the Versity S3 gateway (Apache-2.0), is the real S3 server that
# store/s3store's tests run against (see internal/s3test).
#
#   scripts/versitygw.sh install   build and install it (once) and print its path
#   scripts/versitygw.sh path      print its path, or fail if it is not installed
#   scripts/versitygw.sh serve [ADDR]
#                                  run it in the foreground on ADDR
#                                  (default 127.0.0.1:7070) with a posix
#                                  backend in a temporary directory, for
#                                  trying filemap by hand
#
# It is installed with the Go toolchain from the module proxy, into
# $(go env GOBIN), else $(go env GOPATH)/bin, where internal/s3test looks for
# it. Building takes a minute or two on a 2-core machine; an install at the
# right version is kept. VERSITYGW_VERSION overrides the version.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/goinstall.sh"

module=github.com/versity/versitygw
version=${VERSITYGW_VERSION:-v1.8.0}

# The test credentials; internal/s3test uses the same ones.
access=filemap-test-access
secret=filemap-test-secret-key
region=us-east-1

install() {
	install_command "$module" "$module/cmd/versitygw" "$version" "$(gobin)/versitygw" "a minute or two"
}

path() {
	installed_path "$(gobin)/versitygw"
}

serve() {
	local addr=${1:-127.0.0.1:7070} bin dir
	bin=$(path)
	dir=$(mktemp -d "${TMPDIR:-/tmp}/filemap-versitygw.XXXXXX")
	pid=
	# bash runs no trap while it waits for a foreground child, so the
	# gateway runs in the background and a signal to this script stops it.
	trap 'if [ -n "$pid" ]; then kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; fi; rm -rf "$dir"' EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	mkdir "$dir/root" "$dir/versions"
	cat >&2 <<-EOF
		versitygw on http://$addr, data in $dir/root. For the AWS SDK and CLI:
		  export AWS_ENDPOINT_URL=http://$addr AWS_REGION=$region
		  export AWS_ACCESS_KEY_ID=$access AWS_SECRET_ACCESS_KEY=$secret
	EOF
	"$bin" --port "$addr" --access "$access" --secret "$secret" --region "$region" \
		--keep-alive --quiet \
		posix --versioning-dir "$dir/versions" "$dir/root" &
	pid=$!
	wait "$pid"
}

case "${1:-}" in
install) install ;;
path) path ;;
serve) shift; serve "$@" ;;
*)
	echo "usage: $0 install | path | serve [ADDR]" >&2
	exit 2
	;;
esac
