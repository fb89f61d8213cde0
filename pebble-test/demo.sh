#!/usr/bin/env bash
# The local demo: sets everything up, starts Pebble on loopback, runs `acmebox run --once`
# for registry.test against it, shows the certificate it got, and stops Pebble again.
# Files go to ./demo/ (certs/ and state/): run it twice to see the certificate reused.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
bash "$here/setup.sh"
export PEBBLE_RUN_DIR="$top/demo/pebble"
bash "$here/stop.sh"
trap 'bash "$here/stop.sh"' EXIT
eval "$(bash "$here/start.sh")"
echo "== Pebble is up at $PEBBLE_DIRECTORY; running acmebox"
"$top/.venv/bin/python" -m acmebox run --once \
  --domain registry.test --domain ui.registry.test --email demo@example.com \
  --directory "$PEBBLE_DIRECTORY" --ca-bundle "$PEBBLE_CA_BUNDLE" \
  --certs-dir "$top/demo/certs" --state-dir "$top/demo/state" \
  --listen "127.0.0.1:$PEBBLE_HTTP_PORT"
live="$top/demo/certs/live/registry.test"
echo "== $live: version $(sed -n 's/.*"version": "\(.*\)".*/\1/p' "$live/meta.json")"
ls -l "$live/"
openssl x509 -in "$live/cert.pem" -noout -subject -issuer -serial -dates -ext subjectAltName
echo "== key matches certificate: $( [ "$(openssl pkey -in "$live/privkey.pem" -pubout)" = "$(openssl x509 -in "$live/cert.pem" -noout -pubkey)" ] && echo yes || echo NO)"
