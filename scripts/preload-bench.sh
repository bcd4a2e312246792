#!/usr/bin/env bash
# preload-bench.sh: what the LD_PRELOAD shim (libfilemap-preload.so) costs, against what it
# stands in for. Builds the C library and filemap, starts a `filemap serve` of its own on a
# generated file under $FILEMAP_PRELOAD_DIRS, and prints medians and ratios of:
#
#   start     /bin/true with the shim preloaded, and without (medians of 50 samples of 20 runs)
#   sha256    sha256sum of the object through the shim, cold (the daemon's cache and the
#             kernel's cache of the file dropped), against `filemap cat FILE | sha256sum`
#   read      dd bs=1M (read(2) of 1 MiB) of the object through the shim, the daemon's cache
#             warm, against dd of the file, warm in the kernel's page cache
#   numpy     numpy.memmap(...).sum() through the shim, cold, against the same on the file
#             mapped by the kernel, cold (numpy: Debian's python3-numpy)
#
#   usage: scripts/preload-bench.sh [SIZE_MIB (1024)] [RUNS (5)]
#
# Needs root or the right to use userfaultfd (as the tests do), gcc, make, Go, bash 5.
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
runs=${2:-5}
python=/usr/bin/python3
[ -x "$python" ] || python=python3

work=$(mktemp -d)
daemon=
cleanup() {
	[ -n "$daemon" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT

make -s -C libfilemap O="$work/c" >/dev/null
go build -o "$work/filemap" ./cmd/filemap
shim=$work/c/libfilemap-preload.so
mkdir "$work/data"
obj=$work/data/object.bin
head -c "${size_mib}M" /dev/urandom >"$obj"
"$work/filemap" serve --socket "$work/sock" --keep=false 2>"$work/serve.log" &
daemon=$!
for _ in $(seq 100); do [ -S "$work/sock" ] && break; sleep 0.1; done
export FILEMAP_SOCKET=$work/sock FILEMAP_PRELOAD_DIRS=$work/data

# usecs runs a command and prints how long it took, in microseconds.
usecs() {
	local s=$EPOCHREALTIME
	"$@" >/dev/null 2>&1
	local e=$EPOCHREALTIME
	echo $((${e/./} - ${s/./}))
}

median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

# cold drops the daemon's caches and the kernel's pages of the file.
cold() {
	"$work/filemap" drop-caches
	"$python" -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$obj"
}

# pairs runs A and B in turn, RUNS times, with SETUP before each, and prints their medians
# in ms and B/A: above 1, the shim (A) is the faster.
pairs() {
	local name=$1 n=$2 setup=$3 a=$4 b=$5 ta=() tb=()
	for _ in $(seq "$n"); do
		$setup
		ta+=("$(usecs bash -c "$a")")
		$setup
		tb+=("$(usecs bash -c "$b")")
	done
	local ma mb
	ma=$(printf '%s\n' "${ta[@]}" | median)
	mb=$(printf '%s\n' "${tb[@]}" | median)
	awk -v n="$name" -v a="$ma" -v b="$mb" \
		'BEGIN {printf "%-8s shim %10.3f ms   baseline %10.3f ms   baseline/shim %.2f\n", n, a / 1000, b / 1000, b / a}'
}

nothing() { :; }

# Start-up: the shim's cost is the difference, not the ratio. Each sample is 20 runs, so that
# the clock's and the shell's noise spread over them.
batch() {
	local s=$EPOCHREALTIME
	for _ in $(seq 20); do LD_PRELOAD=$1 /bin/true; done
	local e=$EPOCHREALTIME
	echo $(((${e/./} - ${s/./}) / 20))
}
ta=() tb=()
for _ in $(seq 50); do
	ta+=("$(batch "$shim")")
	tb+=("$(batch "")")
done
ma=$(printf '%s\n' "${ta[@]}" | median)
mb=$(printf '%s\n' "${tb[@]}" | median)
echo "start    /bin/true with the shim ${ma} us, without ${mb} us: the shim costs $((ma - mb)) us"

pairs sha256 "$runs" cold "LD_PRELOAD=$shim sha256sum $obj" "$work/filemap cat $obj | sha256sum"

warm() { LD_PRELOAD=$shim cat "$obj" >/dev/null; cat "$obj" >/dev/null; }
warm
pairs read "$runs" nothing "LD_PRELOAD=$shim dd if=$obj of=/dev/null bs=1M" "dd if=$obj of=/dev/null bs=1M"

if "$python" -c 'import numpy' 2>/dev/null; then
	sum="import numpy, sys; print(numpy.memmap(sys.argv[1], dtype=numpy.uint64, mode='r').sum())"
	pairs numpy "$runs" cold "LD_PRELOAD=$shim $python -c \"$sum\" $obj" "$python -c \"$sum\" $obj"
else
	echo "numpy    skipped: $python has no numpy (apt-get install python3-numpy)"
fi
