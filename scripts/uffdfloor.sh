#!/usr/bin/env bash
# Builds and runs tools/uffdfloor/roundtrip.c: the floor of a page fault
# served from user space, a handler thread that answers each fault with one
# UFFDIO_COPY from memory and does nothing else. filemap's round trips
# (filemap bench's /dev/shm rows, filemap stat's fault service times) are
# read against it, measured in the same minutes on the same machine.
#
#   scripts/uffdfloor.sh [PAGES]    fault PAGES pages (default 4096), one at a time
#
# It needs a C compiler: $CC, else cc. On a KVM guest whose cpuidle driver
# is haltpoll, guest_halt_poll_ns moves it several times over (see filemap
# bench --halt-poll-ns).
set -euo pipefail
cd "$(dirname "$0")/.."

cc=${CC:-cc}
if ! command -v "$cc" >/dev/null; then
	echo "uffdfloor: no C compiler $cc; set CC" >&2
	exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$cc" -O2 -Wall -pthread -o "$tmp/roundtrip" tools/uffdfloor/roundtrip.c
"$tmp/roundtrip" "$@"
