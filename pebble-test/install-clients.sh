#!/usr/bin/env bash
# Installs the registry clients Debian 12 lacks, crane (go-containerregistry) and oras (the ORAS
# project's CLI), from Debian's unstable suite into pebble-test/.clients/ without touching the
# system: as install.sh gets Pebble, a temporary sources list feeds `apt-get download` and
# `dpkg-deb -x` unpacks the binaries (static Go programs; they need only libc6 >= 2.34, which
# bookworm has). tests/test_client_matrix.py runs them. Idempotent: a second run only checks.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dest="$here/.clients"
packages=(crane oras)

if [ -x "$dest/usr/bin/crane" ] && [ -x "$dest/usr/bin/oras" ]; then
  echo "clients: already installed in $dest ($(tr '\n' ' ' <"$dest/VERSIONS" 2>/dev/null))"
  exit 0
fi

# shellcheck source=unstable.sh
. "$here/unstable.sh"
unstable_apt
(cd "$tmp" && apt-get "${opts[@]}" -qq download "${packages[@]}")
rm -rf "$dest.new"
for p in "${packages[@]}"; do
  dpkg-deb -x "$tmp/${p}"_*.deb "$dest.new"
  echo "$p $(dpkg-deb -f "$tmp/${p}"_*.deb Version)" >>"$dest.new/VERSIONS"
done
rm -rf "$dest"
mv "$dest.new" "$dest"
echo "clients: installed $(tr '\n' ' ' <"$dest/VERSIONS") in $dest"
