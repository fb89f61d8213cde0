#!/usr/bin/env bash
# Everything the demo and the tests need on a Debian machine, as root: Debian packages,
# Pebble 2.10 (pebble-test/install.sh) and a virtualenv at .venv with acmebox and its test
# tools. Idempotent: a second run only checks.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")

packages=(ca-certificates curl openssl tzdata python3 python3-venv python3-pip
          nginx-light docker.io busybox-static docker-registry docker-compose gettext-base
          skopeo apache2-utils chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's nginx and docker.io packages may start system services; the tests run their own
# on loopback ports and sockets, so services this install started are stopped again.
if [ ${#missing[@]} -gt 0 ]; then
  for svc in nginx docker containerd; do
    (systemctl disable --now "$svc" || service "$svc" stop) >/dev/null 2>&1 || true
  done
fi

bash "$here/install.sh"

if [ ! -x "$top/.venv/bin/python" ]; then
  python3 -m venv "$top/.venv"
fi
stamp="$top/.venv/.acmebox-installed"
if [ ! -f "$stamp" ] || [ "$top/pyproject.toml" -nt "$stamp" ]; then
  "$top/.venv/bin/pip" install -q --upgrade pip >/dev/null
  "$top/.venv/bin/pip" install -q -e "$top[test]"
  touch "$stamp"
fi
echo "setup: ready (venv $top/.venv, pebble $(cat "$here/.pebble/VERSION"))"
