#!/usr/bin/env bash
# Everything the demo and the tests need on a Debian machine, as root: Debian packages,
# Pebble 2.10 (pebble-test/install.sh), the registry behind registry:3 built from
# shared/third_party (pebble-test/install-registry3.sh), crane and oras from Debian's unstable
# suite (pebble-test/install-clients.sh) and a virtualenv at .venv with acmebox and its test
# tools, installed from the lock file requirements-test.txt. Idempotent: a second run only checks.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")

packages=(ca-certificates curl openssl tzdata python3 python3-venv python3-pip
          nginx-light docker.io busybox-static docker-registry docker-compose gettext-base
          skopeo apache2-utils chromium faketime mmdebstrap iproute2 time
          podman buildah containerd   # the client matrix (tests/test_client_matrix.py; ctr is containerd's)
          caddy wrk   # caddy, wrk: bench/datapath.py (the peer proxy; the manifest load)
          prometheus libnginx-mod-stream   # promtool: deploy/alerts.yml; stream: TLS-ALPN-01 routing
          systemd)  # systemd-analyze: deploy/systemd (the gc timer)
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
# Debian's nginx, docker.io, caddy and prometheus packages may start system services; the tests run their own
# on loopback ports and sockets, so services this install started are stopped again.
if [ ${#missing[@]} -gt 0 ]; then
  for svc in nginx docker containerd caddy prometheus; do
    (systemctl disable --now "$svc" || service "$svc" stop) >/dev/null 2>&1 || true
  done
fi

bash "$here/install.sh"
bash "$here/install-registry3.sh"
bash "$here/install-clients.sh"   # crane and oras (Debian unstable) into pebble-test/.clients/

# The venv comes from the lock files (pinned versions with hashes; docs/testing.md, "Dependencies"), so a
# fresh machine gets exactly the set CI tested.
venv=$top/.venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
stamp="$venv/.acmebox-installed"
if [ ! -f "$stamp" ] || [ "$top/requirements-test.txt" -nt "$stamp" ] || [ "$top/pyproject.toml" -nt "$stamp" ]; then
  "$venv/bin/pip" install -q --require-hashes --no-deps -r "$top/requirements-test.txt"
  "$venv/bin/pip" install -q --no-deps -e "$top"
  "$venv/bin/pip" check >/dev/null
  touch "$stamp"
fi
echo "setup: ready (venv $venv, pebble $(cat "$here/.pebble/VERSION"), $("$here/.registry3/registry" --version))"
