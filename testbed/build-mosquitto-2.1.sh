#!/bin/sh
# Build mosquitto 2.1 for the tests from Debian's sid source package (bookworm ships 2.0.11).
#
#   testbed/build-mosquitto-2.1.sh <prefix>     (make mosquitto-2.1: prefix build/mosquitto-2.1)
#
# The system's apt sources are left alone: a private apt configuration under <prefix>/apt
# holds one deb-src line for sid on the mirror the system already uses. The broker, the
# dynamic-security plugin, mosquitto_ctrl, libmosquitto and the headers are installed under
# <prefix> (sbin/, lib/, bin/, include/); the broker and mosquitto_ctrl need
# LD_LIBRARY_PATH=<prefix>/lib. <prefix>/VERSION (the Debian version built) is written last:
# its presence means the build is complete.
set -eu

prefix=$(mkdir -p "$1" && cd "$1" && pwd)
rm -f "$prefix/VERSION"

# Build dependencies, installed from the system's (bookworm) packages when missing.
missing=""
for tool in cmake:cmake gcc:gcc make:make dpkg-source:dpkg-dev xz:xz-utils; do
	command -v "${tool%%:*}" >/dev/null || missing="$missing ${tool#*:}"
done
[ -e /usr/include/openssl/ssl.h ] || missing="$missing libssl-dev"
[ -e /usr/include/cjson/cJSON.h ] || missing="$missing libcjson-dev"
if [ -n "$missing" ]; then
	if [ "$(id -u)" = 0 ]; then
		echo "installing from Debian's packages:$missing"
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
	else
		echo "these Debian packages are required to build mosquitto 2.1:$missing"
		echo "  sudo apt-get update && sudo apt-get install -y$missing"
		exit 1
	fi
fi

# The Debian mirror the system's apt uses (only package registries are reachable).
mirror=$(grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ \
	2>/dev/null | head -n 1 | tr -d ' ' | sed 's:/$::')
mirror=${mirror:-http://deb.debian.org/debian}

apt="$prefix/apt"
rm -rf "$apt" "$prefix/src"
mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$prefix/src"
echo "deb-src $mirror sid main" >"$apt/sources.list"
set -- -q -o "Dir::Etc::sourcelist=$apt/sources.list" -o Dir::Etc::sourceparts=- \
	-o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
# apt's _apt user cannot write into a build tree owned by someone else.
[ "$(id -u)" = 0 ] && set -- "$@" -o APT::Sandbox::User=root
apt-get "$@" update
(cd "$prefix/src" && apt-get "$@" source --download-only mosquitto)
dsc=$(ls "$prefix"/src/mosquitto_*.dsc)
version=$(sed -n 's/^Version: //p' "$dsc")
case $version in
2.1.*) ;;
*) echo "sid has mosquitto $version, not 2.1" >&2; exit 1 ;;
esac
dpkg-source -x "$dsc" "$prefix/src/tree"

# No tests, docs, websockets or interactive shell: nothing the tests use needs them.
cmake -S "$prefix/src/tree" -B "$prefix/cmake" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	-DCMAKE_INSTALL_PREFIX="$prefix" \
	-DWITH_TESTS=OFF -DWITH_DOCS=OFF -DWITH_CTRL_SHELL=OFF -DWITH_WEBSOCKETS=OFF \
	-DWITH_CLIENTS=OFF -DWITH_LIB_CPP=OFF -DWITH_HTTP_API=OFF -DWITH_LTO=OFF \
	-DWITH_PLUGIN_EXAMPLES=OFF -DWITH_PLUGIN_PERSIST_SQLITE=OFF -DWITH_PLUGIN_SPARKPLUG_AWARE=OFF
cmake --build "$prefix/cmake" -j "$(nproc)"
cmake --install "$prefix/cmake"

LD_LIBRARY_PATH="$prefix/lib" "$prefix/sbin/mosquitto" -h | head -n 1 | grep -q "version 2\.1\."
for built in sbin/mosquitto bin/mosquitto_ctrl lib/mosquitto_dynamic_security.so \
	include/mosquitto_broker.h; do
	[ -e "$prefix/$built" ] || { echo "the build left no $built" >&2; exit 1; }
done
echo "$version" >"$prefix/VERSION"
echo "mosquitto $version built in $prefix"
