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

module=github.com/versity/versitygw
version=${VERSITYGW_VERSION:-v1.8.0}

# The test credentials; internal/s3test uses the same ones.
access=filemap-test-access
secret=filemap-test-secret-key
region=us-east-1

bindir() {
	local gobin
	gobin=$(go env GOBIN)
	if [ -n "$gobin" ]; then
		echo "$gobin"
	else
		echo "$(go env GOPATH | cut -d: -f1)/bin"
	fi
}

# installed_version prints the module version a binary was built from: a
# binary from go install reports "git" to --version, but carries its
# module's version in its build information.
installed_version() {
	go version -m "$1" 2>/dev/null | awk -v m="$module" '$1 == "mod" && $2 == m { print $3 }'
}

install() {
	local bin
	bin="$(bindir)/versitygw"
	if [ -x "$bin" ] && [ "$(installed_version "$bin")" = "$version" ]; then
		echo "$bin"
		return
	fi
	echo "building $module/cmd/versitygw@$version (a minute or two)..." >&2
	# Outside any module, so that this repository's go.mod plays no part.
	(cd / && GOFLAGS=-buildvcs=false go install "$module/cmd/versitygw@$version")
	if [ "$(installed_version "$bin")" != "$version" ]; then
		echo "versitygw.sh: $bin is not $module@$version after go install" >&2
		exit 1
	fi
	echo "$bin"
}

path() {
	local bin
	bin="$(bindir)/versitygw"
	if [ ! -x "$bin" ]; then
		echo "versitygw.sh: $bin not found: run $0 install" >&2
		exit 1
	fi
	echo "$bin"
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
