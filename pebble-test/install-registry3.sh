#!/usr/bin/env bash
# Builds the registry behind `registry:3` (CNCF distribution v3.1.1) from the vendored source
# tarball in shared/third_party, with Go from Debian's unstable suite, into
# pebble-test/.registry3/registry (gitignored). Nothing on the system changes: Go is fetched
# with `apt-get download` through a temporary sources list and unpacked with `dpkg-deb -x`
# (as install.sh gets Pebble), the build needs no network (GOFLAGS=-mod=vendor GOPROXY=off).
# Cached: a second run only checks the binary against the tarball's checksum.
#
# The tarball is looked up in $ACMEBOX_SHARED/third_party, then ../shared/third_party beside
# the clone (how CI lays it out), then /work/shared/third_party.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
dest="$here/.registry3"
tarball_name=distribution-3.1.1.tar.gz
want_version=v3.1.1
go_package=golang-1.27

candidates=()
[ -n "${ACMEBOX_SHARED:-}" ] && candidates+=("$ACMEBOX_SHARED/third_party/$tarball_name")
candidates+=("$(dirname "$top")/shared/third_party/$tarball_name" "/work/shared/third_party/$tarball_name")
tarball=
for c in "${candidates[@]}"; do
  if [ -f "$c" ]; then tarball=$c; break; fi
done
if [ -z "$tarball" ]; then
  echo "install-registry3: $tarball_name not found; looked in: ${candidates[*]}" >&2
  echo "install-registry3: set ACMEBOX_SHARED to the shared/ directory that holds third_party/$tarball_name" >&2
  exit 1
fi
sum=$(sha256sum "$tarball" | cut -c1-64)
mkdir -p "$(dirname "$dest")"
exec 9>"$dest.lock"
flock 9   # setup.sh and container-setup.sh may run at once: one build

if [ -x "$dest/registry" ] && [ "$(cat "$dest/SOURCE-SHA256" 2>/dev/null)" = "$sum" ] &&
   "$dest/registry" --version 2>/dev/null | grep -q " $want_version"; then
  echo "registry3: already built in $dest ($("$dest/registry" --version))"
  exit 0
fi

# shellcheck source=unstable.sh
. "$here/unstable.sh"
echo "registry3: fetching $go_package from Debian unstable"
unstable_apt
mkdir -p "$tmp/go"
(cd "$tmp" && apt-get "${opts[@]}" -qq download "$go_package-go" "$go_package-src")
for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/go"; done
goroot="$tmp/go/usr/lib/go-1.27"
[ -x "$goroot/bin/go" ] || { echo "install-registry3: no go binary in $go_package-go" >&2; exit 1; }

echo "registry3: building distribution $want_version from $tarball (about 5 min on 2 cores)"
tar -C "$tmp" -xzf "$tarball"
src="$tmp/distribution-3.1.1"
mkdir -p "$tmp/gocache" "$tmp/gopath"
(cd "$src" && env GOROOT="$goroot" PATH="$goroot/bin:$PATH" GOFLAGS=-mod=vendor GOPROXY=off GOTOOLCHAIN=local \
   CGO_ENABLED=0 GOCACHE="$tmp/gocache" GOPATH="$tmp/gopath" GOTELEMETRY=off \
   go build -trimpath -ldflags="-s -w -X github.com/distribution/distribution/v3/version.version=$want_version -X github.com/distribution/distribution/v3/version.revision=9a8d98b679740cd514aa7e7d84d23d442a5ef54c" \
   -o "$tmp/registry" ./cmd/registry)
"$tmp/registry" --version | grep -q " $want_version" || {
  echo "install-registry3: the built binary says: $("$tmp/registry" --version)" >&2; exit 1; }
rm -rf "$dest.new"
mkdir -p "$dest.new"
install -m 0755 "$tmp/registry" "$dest.new/registry"
echo "$sum" >"$dest.new/SOURCE-SHA256"
rm -rf "$dest"
mv "$dest.new" "$dest"
echo "registry3: built $("$dest/registry" --version) in $dest"
