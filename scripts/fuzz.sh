#!/usr/bin/env bash
# Runs every fuzz target of the module, each for DURATION (default 1m), one
# after the other; the short runs in .ci/run are a smoke test, this is the
# longer run on demand (e.g. scripts/fuzz.sh 30m before a release).
#
#   scripts/fuzz.sh [DURATION] [DIR...]
#
# DIRs limit the search to those packages' directories (default: the whole
# module). A target is a func FuzzXxx in a _test.go file; each has its seed
# corpus in f.Add calls and, for some, in testdata/fuzz/FuzzXxx. A failure
# leaves the input that broke it in testdata/fuzz/FuzzXxx, ready to commit as
# a regression seed. Exits non-zero if any target failed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

duration=${1:-1m}
[ $# -gt 0 ] && shift
dirs=("$@")
[ ${#dirs[@]} -eq 0 ] && dirs=(.)

# path/to/x_test.go:func FuzzName → ./path/to FuzzName
targets=$(grep -rEo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]+' "${dirs[@]}" |
	sed -E 's#^(.*)/[^/]+_test\.go:func (Fuzz[A-Za-z0-9_]+)$#\1 \2#' | sort -u)
if [ -z "$targets" ]; then
	echo "no fuzz targets under ${dirs[*]}" >&2
	exit 1
fi

failed=()
while read -r dir target; do
	pkg=./${dir#./}
	echo "== $pkg $target for $duration"
	if ! go test -run '^$' -fuzz "^${target}\$" -fuzztime "$duration" "$pkg"; then
		failed+=("$pkg $target")
	fi
done <<<"$targets"

if [ ${#failed[@]} -gt 0 ]; then
	echo "failed:" >&2
	printf '  %s\n' "${failed[@]}" >&2
	exit 1
fi
echo "every target ran for $duration without failing"
