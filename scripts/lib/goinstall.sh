# Sourced by the scripts that install a server the tests run (versitygw.sh,
# netsim.sh, seaweedfs.sh): where a Go tool goes, whether the one there is
# the version wanted, and go install of a module's command outside this
# repository's module. Messages name the script that sourced this file.

# gobin prints the directory go install puts commands in: $(go env GOBIN),
# else the first GOPATH's bin, where internal/tied looks for them too.
gobin() {
	local dir
	dir=$(go env GOBIN)
	if [ -n "$dir" ]; then
		echo "$dir"
	else
		echo "$(go env GOPATH | cut -d: -f1)/bin"
	fi
}

# module_version BIN MODULE prints the version of MODULE that BIN was built
# from: a binary from go install may report "git" or nothing to --version,
# but carries its module's version in its build information.
module_version() {
	go version -m "$1" 2>/dev/null | awk -v m="$2" '$1 == "mod" && $2 == m { print $3 }'
}

# install_command MODULE PACKAGE VERSION BIN TAKES prints BIN, having
# installed PACKAGE, a command of MODULE, at VERSION there first unless BIN
# is that version already. go install names a command after its package's
# last element, which may not be BIN's name, so it installs into a
# directory of its own, and the command is moved. TAKES says how long the
# build takes, for the message.
install_command() {
	local module=$1 pkg=$2 version=$3 bin=$4 takes=$5 tmp
	if [ -x "$bin" ] && [ "$(module_version "$bin" "$module")" = "$version" ]; then
		echo "$bin"
		return
	fi
	echo "building $pkg@$version ($takes)..." >&2
	tmp=$(mktemp -d)
	# Outside any module, so that this repository's go.mod plays no part.
	if ! (cd / && GOBIN="$tmp" GOFLAGS=-buildvcs=false go install "$pkg@$version"); then
		rm -rf "$tmp"
		exit 1
	fi
	mkdir -p "$(dirname "$bin")"
	mv "$tmp/${pkg##*/}" "$bin"
	rm -rf "$tmp"
	if [ "$(module_version "$bin" "$module")" != "$version" ]; then
		echo "${0##*/}: $bin is not $module@$version after go install" >&2
		exit 1
	fi
	echo "$bin"
}

# installed_path BIN prints BIN, or fails saying how to install it.
installed_path() {
	if [ ! -x "$1" ]; then
		echo "${0##*/}: $1 not found: run $0 install" >&2
		exit 1
	fi
	echo "$1"
}
