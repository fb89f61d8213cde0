#!/usr/bin/env bash
# Installs Pebble 2.10+ (ARI, profiles, /set-renewal-info/) from Debian's unstable suite into
# pebble-test/.pebble/ without touching the system: a temporary sources list feeds
# `apt-get download`, and `dpkg-deb -x` unpacks the static binaries here.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dest="$here/.pebble"
want_min="2.10"

if [ -x "$dest/usr/bin/pebble" ] && [ -x "$dest/usr/bin/pebble-challtestsrv" ]; then
  echo "pebble: already installed in $dest ($(cat "$dest/VERSION" 2>/dev/null || echo unknown))"
  exit 0
fi

# shellcheck source=unstable.sh
. "$here/unstable.sh"
unstable_apt
version=$(apt-cache "${opts[@]}" show pebble | awk '/^Version:/ {print $2; exit}')
upstream=${version%%+*}
if ! dpkg --compare-versions "$upstream" ge "$want_min"; then
  echo "pebble: unstable offers $version, need >= $want_min" >&2
  exit 1
fi
(cd "$tmp" && apt-get "${opts[@]}" -qq download "pebble=$version")
rm -rf "$dest.new"
dpkg-deb -x "$tmp"/pebble_*.deb "$dest.new"
echo "$version" >"$dest.new/VERSION"
rm -rf "$dest"
mv "$dest.new" "$dest"
echo "pebble: installed $version in $dest"
