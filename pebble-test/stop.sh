#!/usr/bin/env bash
# Stops exactly the processes start.sh started, by the PIDs it recorded in $PEBBLE_RUN_DIR.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
run=${PEBBLE_RUN_DIR:-$here/run}
pids=()
for f in pebble.pid challtestsrv.pid; do
  [ -f "$run/$f" ] || continue
  pid=$(cat "$run/$f")
  kill "$pid" 2>/dev/null && pids+=("$pid")
  rm -f "$run/$f"
done
for pid in "${pids[@]}"; do
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
done
