#!/bin/sh
# Reloads nginx when acmebox says so, without a Docker socket or a shared PID namespace:
# acmebox (`--reload file`) writes a new generation number to a file on the certs volume,
# and this loop, running in the nginx container beside the master, runs `nginx -s reload`
# when the number changes. The compose file mounts it as
# /docker-entrypoint.d/40-acmebox-reload-on-change.sh: the official nginx image's entrypoint
# runs such scripts (as root, before nginx starts); this one leaves the loop in the background.
#
#   ACMEBOX_RELOAD_FILE        the generation file [/etc/letsencrypt/reload-generation]
#   ACMEBOX_RELOAD_POLL        seconds between looks [1]; acmebox waits 2 s after writing
#   ACMEBOX_RELOAD_COMMAND     how to reload [nginx -s reload]
#   ACMEBOX_RELOAD_FOREGROUND  1: loop in the foreground (for running it outside the image)
set -eu
file=${ACMEBOX_RELOAD_FILE:-/etc/letsencrypt/reload-generation}
poll=${ACMEBOX_RELOAD_POLL:-1}
command=${ACMEBOX_RELOAD_COMMAND:-nginx -s reload}
me=$(basename "$0")

watch() {
  # What is there at start is what nginx is about to load: only later changes reload.
  last=$(cat "$file" 2>/dev/null || true)
  while sleep "$poll"; do
    now=$(cat "$file" 2>/dev/null || true)
    [ "$now" = "$last" ] && continue
    last=$now
    # shellcheck disable=SC2086  # the command is a word list on purpose
    if out=$($command 2>&1); then
      echo "$me: generation $now: nginx reloaded"
    else
      echo "$me: generation $now: reload failed: $out" >&2
    fi
  done
}

echo "$me: watching $file every ${poll}s"
if [ "${ACMEBOX_RELOAD_FOREGROUND:-0}" = 1 ]; then
  watch
else
  watch </dev/null &
fi
