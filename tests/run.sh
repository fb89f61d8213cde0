#!/usr/bin/env bash
# The test command: sets everything up (pebble-test/setup.sh), checks lint and types, then
# runs the whole suite, end-to-end tests against real Pebble included. Extra arguments go
# to pytest (e.g. tests/run.sh -k store).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
bash pebble-test/setup.sh
bash pebble-test/container-setup.sh   # base images, wheels, compose v2 for tests/test_containers.py (cached)
.venv/bin/ruff check acmebox tests bench
.venv/bin/mypy
mkdir -p test-artifacts
exec .venv/bin/python -m pytest -ra --durations=10 "$@"
