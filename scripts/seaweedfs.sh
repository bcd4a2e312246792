#!/usr/bin/env bash
# SeaweedFS (Apache-2.0), a distributed object store, is what the fleet test
# (TestFleetSeaweedFS in cmd/filemap) runs filemap daemons against: a
# master, three volume servers that keep every volume twice (replication
# 001), and a filer with its S3 gateway, all on loopback.
#
#   scripts/seaweedfs.sh install   build and install weed (once) and print its path
#   scripts/seaweedfs.sh path      print its path, or fail if it is not installed
#   scripts/seaweedfs.sh serve [DIR]
#                                  run the cluster in the foreground, its data
#                                  in DIR (default: a temporary directory,
#                                  removed at exit), for trying filemap by hand
#
# The fleet test starts its own cluster, the same way, given the binary:
#
#   FILEMAP_SEAWEEDFS=$(scripts/seaweedfs.sh install) go test -run TestFleetSeaweedFS -v ./cmd/filemap
#
# weed is built with the Go toolchain from the module proxy, into
# $(go env GOBIN), else $(go env GOPATH)/bin. Its module has replace
# directives, which `go install module@version` refuses, so it is built in
# the module's own directory in the module cache. That takes about four
# minutes on a 2-core machine; a build of the right version is kept (weed
# version shows it). SEAWEEDFS_VERSION overrides the version.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/goinstall.sh"

module=github.com/seaweedfs/seaweedfs
version=${SEAWEEDFS_VERSION:-v0.0.0-20261109003541-7506e5f91cd6}

# The credentials of the gateway's one identity; the fleet test uses the
# same ones.
access=filemap-test-access
secret=filemap-test-secret-key
region=us-east-1

# Loopback ports of `serve`. Each server's gRPC port is its HTTP port +
# 10000, as weed assumes when one server finds another by its HTTP address.
master_port=9333
volume_ports=(8081 8082 8083)
filer_port=8888
s3_port=8333

# is_version says whether a weed binary was stamped with the version at
# install: `weed version` shows it among other words.
is_version() {
	"$1" version 2>/dev/null | head -n 1 | grep -qwF -- "$version"
}

install() {
	local bin dir
	bin="$(gobin)/weed"
	if [ -x "$bin" ] && is_version "$bin"; then
		echo "$bin"
		return
	fi
	echo "building $module/weed@$version (about four minutes)..." >&2
	# Outside any module, so that this repository's go.mod plays no part.
	dir=$(cd / && go mod download -json "$module@$version" | awk -F'"' '$2 == "Dir" { print $4 }')
	if [ -z "$dir" ] || [ ! -d "$dir" ]; then
		echo "seaweedfs.sh: go mod download $module@$version gave no directory" >&2
		exit 1
	fi
	mkdir -p "$(gobin)"
	(cd "$dir" && GOFLAGS=-buildvcs=false go build \
		-ldflags "-X $module/weed/util/version.COMMIT=$version" -o "$bin.tmp" ./weed)
	mv "$bin.tmp" "$bin"
	if ! is_version "$bin"; then
		echo "seaweedfs.sh: $bin is not $module@$version after the build" >&2
		exit 1
	fi
	echo "$bin"
}

path() {
	installed_path "$(gobin)/weed"
}

# s3_config writes the gateway's identities: one, with every right.
s3_config() {
	cat >"$1" <<-EOF
		{"identities": [{"name": "filemap", "credentials": [{"accessKey": "$access", "secretKey": "$secret"}],
		  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
	EOF
}

serve() {
	local bin dir keep=1 pids=() i
	bin=$(path)
	dir=${1:-}
	if [ -z "$dir" ]; then
		dir=$(mktemp -d "${TMPDIR:-/tmp}/filemap-seaweedfs.XXXXXX")
		keep=
	fi
	# bash runs no trap while it waits for a foreground child, so the
	# servers run in the background and a signal to this script stops them.
	trap 'if [ ${#pids[@]} -gt 0 ]; then kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null; fi; [ -n "$keep" ] || rm -rf "$dir"' EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	mkdir -p "$dir/master" "$dir/filer"
	s3_config "$dir/s3.json"
	"$bin" -logtostderr master -ip=127.0.0.1 -port=$master_port -mdir="$dir/master" -defaultReplication=001 \
		-volumeSizeLimitMB=256 -telemetry=false >"$dir/master.log" 2>&1 &
	pids+=($!)
	for i in "${!volume_ports[@]}"; do
		mkdir -p "$dir/volume$i"
		"$bin" -logtostderr volume -ip=127.0.0.1 -port="${volume_ports[$i]}" -dir="$dir/volume$i" -max=16 -preStopSeconds=1 \
			-master=127.0.0.1:$master_port >"$dir/volume$i.log" 2>&1 &
		pids+=($!)
	done
	"$bin" -logtostderr filer -ip=127.0.0.1 -port=$filer_port -master=127.0.0.1:$master_port -defaultStoreDir="$dir/filer" \
		-localSocket="$dir/filer.sock" -s3 -s3.port=$s3_port -s3.config="$dir/s3.json" \
		-s3.localSocket="$dir/s3.sock" -s3.port.iceberg=0 -s3.port.lance=0 >"$dir/filer.log" 2>&1 &
	pids+=($!)
	cat >&2 <<-EOF
		SeaweedFS: master http://127.0.0.1:$master_port, volume servers on ports ${volume_ports[*]},
		filer http://127.0.0.1:$filer_port, S3 gateway http://127.0.0.1:$s3_port; data and logs in $dir.
		For the AWS SDK and CLI:
		  export AWS_ENDPOINT_URL=http://127.0.0.1:$s3_port AWS_REGION=$region
		  export AWS_ACCESS_KEY_ID=$access AWS_SECRET_ACCESS_KEY=$secret
	EOF
	wait -n "${pids[@]}" || true
	keep=1 # for its log
	echo "seaweedfs.sh: a server exited; see the logs in $dir" >&2
	exit 1
}

case "${1:-}" in
install) install ;;
path) path ;;
serve) shift; serve "$@" ;;
*)
	echo "usage: $0 install | path | serve [DIR]" >&2
	exit 2
	;;
esac
