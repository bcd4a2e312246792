#!/usr/bin/env bash
# A network that behaves like an object store's (internal/netsim): versitygw
# behind toxiproxy in a network namespace, reached over a veth pair capped
# by tbf. toxiproxy adds latency to each response and caps each connection;
# tbf caps the link. Root only.
#
#   scripts/netsim.sh install      build and install toxiproxy's server (once)
#                                  and print its path
#   scripts/netsim.sh up PROFILE   start a simulated store in the background
#                                  with PROFILE's network (region, far),
#                                  measure it, and print its figures and the
#                                  environment that points the AWS SDK and
#                                  filemap serve at it
#   scripts/netsim.sh down         stop it, and remove the namespaces of
#                                  simulated networks whose runs died
#
# The profiles (internal/netsim.Profiles):
#   region   10 ms added to each response, 50 MB/s a connection, 300 MB/s the link
#   far      40 ms added to each response, 25 MB/s a connection, 300 MB/s the link
#
# toxiproxy is installed with the Go toolchain from the module proxy, as
# toxiproxy-server in $(go env GOBIN), else $(go env GOPATH)/bin, where the
# tests look for it; an install at the right version is kept.
# TOXIPROXY_VERSION overrides the version. up needs versitygw too
# (scripts/versitygw.sh install).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/goinstall.sh"

module=github.com/Shopify/toxiproxy/v2
version=${TOXIPROXY_VERSION:-v2.5.0}
repo=$(cd "$(dirname "$0")/.." && pwd)
state=${XDG_RUNTIME_DIR:-/tmp}/filemap-netsim

install() {
	install_command "$module" "$module/cmd/server" "$version" "$(gobin)/toxiproxy-server" "half a minute"
}

need_root() {
	if [ "$(id -u)" != 0 ]; then
		echo "netsim.sh: the simulated network needs root (network namespaces, tc)" >&2
		exit 1
	fi
}

# build builds the command that runs the simulated store.
build() {
	mkdir -p "$state"
	(cd "$repo" && go build -o "$state/netsim" ./internal/netsim/cmd/netsim)
}

up() {
	local profile=${1:?usage: $0 up PROFILE}
	need_root
	if [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then
		echo "netsim.sh: a simulated store runs already (pid $(cat "$state/pid")): $0 down first" >&2
		exit 1
	fi
	build
	# Its own session: it outlives this script and the terminal's hangup.
	setsid "$state/netsim" up "$profile" >"$state/log" 2>&1 </dev/null &
	local pid=$!
	echo "$pid" >"$state/pid"
	until grep -q '^ready$' "$state/log"; do
		if ! kill -0 "$pid" 2>/dev/null; then
			cat "$state/log" >&2
			rm -f "$state/pid"
			exit 1
		fi
		sleep 0.2
	done
	grep -v '^ready$' "$state/log"
	echo "running as pid $pid; $0 down stops it"
}

down() {
	need_root
	if [ -f "$state/pid" ]; then
		local pid
		pid=$(cat "$state/pid")
		if kill -TERM "$pid" 2>/dev/null; then
			for _ in $(seq 150); do
				kill -0 "$pid" 2>/dev/null || break
				sleep 0.2
			done
		fi
		rm -f "$state/pid"
	fi
	[ -x "$state/netsim" ] || build
	"$state/netsim" clean
}

case "${1:-}" in
install) install ;;
up) shift; up "$@" ;;
down) down ;;
*)
	echo "usage: $0 install | up PROFILE | down" >&2
	exit 2
	;;
esac
