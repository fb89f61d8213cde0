#!/usr/bin/env bash
# Refreshes the lock files from pyproject.toml's ranges: requirements.txt (what acmebox runs
# with, used by the Dockerfile) and requirements-test.txt (that plus the test tools, used by
# pebble-test/setup.sh and so by CI). Both pin every package with its hashes.
#   bash tools/lock.sh            keep the pins that still fit the ranges, add what is new
#   bash tools/lock.sh --upgrade  move every pin to the newest version the ranges allow
#   bash tools/lock.sh --check    resolve again into a scratch copy; fail if the set differs
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
uv=.venv/bin/uv
[ -x "$uv" ] || { echo "lock: run pebble-test/setup.sh first (it installs uv into .venv)" >&2; exit 2; }
mode=${1:-}
out=$top
if [ "$mode" = --check ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
  cp requirements.txt requirements-test.txt "$out/"
fi
args=(--quiet --universal --python-version 3.11 --generate-hashes --custom-compile-command "bash tools/lock.sh")
[ "$mode" = --upgrade ] && args+=(--upgrade)
"$uv" pip compile "${args[@]}" pyproject.toml -o "$out/requirements.txt"
"$uv" pip compile "${args[@]}" --extra test pyproject.toml -o "$out/requirements-test.txt"
if [ "$mode" = --check ]; then
  for f in requirements.txt requirements-test.txt; do
    diff -u "$f" "$out/$f" || { echo "lock: $f is not what pyproject.toml resolves to; run bash tools/lock.sh" >&2; exit 1; }
  done
  echo "lock: requirements.txt and requirements-test.txt match pyproject.toml"
fi
