#!/bin/sh
# Fetches etcd 3.5 (Debian trixie's etcd-server and etcd-client) into .etcd/3.5/
# without touching the system's packages: apt reads a private sources list and
# keeps its lists and cache in a private state directory, and dpkg-deb only
# unpacks the two .debs. Prints the path of the etcd binary (etcdctl sits
# beside it, where etcd-recipes/testing looks for it when ETCD_BIN is set).
#
#   ETCD_BIN="$(scripts/etcd35.sh)" npx vitest run
#
# Idempotent: an existing unpacked 3.5 binary is reused.
set -eu
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.etcd/3.5"
bin="$dest/usr/bin/etcd"
if [ -x "$bin" ] && [ -x "$dest/usr/bin/etcdctl" ] && "$bin" --version 2>/dev/null | grep -q 'Version: 3\.5\.'; then
  echo "$bin"
  exit 0
fi
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || {
  echo "etcd35: needs apt-get and dpkg-deb (Debian/Ubuntu); or set ETCD_BIN to an etcd 3.5 binary yourself" >&2
  exit 1
}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$keyring" ] || { echo "etcd35: $keyring missing (apt-get install debian-archive-keyring)" >&2; exit 1; }
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
work="$(mktemp -d "${TMPDIR:-/tmp}/etcd35.XXXXXX")"
trap 'rm -rf "$work"' EXIT INT TERM
mkdir -p "$work/state/lists/partial" "$work/cache/archives/partial" "$work/debs"
echo "deb [signed-by=$keyring] $mirror trixie main" > "$work/sources.list"
# _apt (apt's download sandbox user) must be able to write the private dirs.
chmod -R a+rwX "$work" 2>/dev/null || true
apt_opts="-o Dir::Etc::sourcelist=$work/sources.list -o Dir::Etc::sourceparts=- \
  -o Dir::State=$work/state -o Dir::State::status=/var/lib/dpkg/status -o Dir::Cache=$work/cache \
  -o Debug::NoLocking=1 -o APT::Get::List-Cleanup=0 -o Acquire::Languages=none"
# shellcheck disable=SC2086
apt-get $apt_opts -qq update >&2
# shellcheck disable=SC2086
(cd "$work/debs" && apt-get $apt_opts -qq download etcd-server etcd-client >&2)
rm -rf "$dest"
mkdir -p "$dest"
for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$dest"; done
if ! "$bin" --version | grep -q 'Version: 3\.5\.'; then
  echo "etcd35: $bin is not etcd 3.5:" >&2
  "$bin" --version >&2
  exit 1
fi
echo "$bin"
