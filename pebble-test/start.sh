#!/usr/bin/env bash
# Starts pebble-challtestsrv (DNS only: every name -> 127.0.0.1, no AAAA) and Pebble on loopback.
# Everything lives in $PEBBLE_RUN_DIR: the listener CA and certificate made here, the config,
# logs and PID files that stop.sh reads. Prints the settings as KEY=VALUE lines when ready.
#
# Environment (defaults in brackets):
#   PEBBLE_RUN_DIR [pebble-test/run]    PEBBLE_PORT [14000]   PEBBLE_MGMT_PORT [15000]
#   PEBBLE_HTTP_PORT [5002]: the port Pebble's VA dials for HTTP-01 (acmebox or nginx listens there)
#   PEBBLE_TLS_PORT [5001]: the port it dials for TLS-ALPN-01 (nginx's stream server, or acmebox)
#   PEBBLE_DNS_PORT [8053]   PEBBLE_CHALLTESTSRV_MGMT_PORT [8055]
#   PEBBLE_WFE_NONCEREJECT [0]  PEBBLE_VA_NOSLEEP [1]  (Pebble's own variables, passed through;
#     so is PEBBLE_AUTHZREUSE, the percentage of new orders that reuse a valid authorization [50])
#   PEBBLE_PROFILES: the config's "profiles" object, e.g. Let's Encrypt's from 2027-02-10:
#     '{"classic": {"description": "64 days", "validityPeriod": 5529600}}' (an order without a
#     profile gets one of them at random) [default 90 days and shortlived 6 days]
#   PEBBLE_EAB [0]: 1 requires external account binding, with key id kid-1 and the HMAC key
#                   of Pebble's example config (printed as PEBBLE_EAB_KID / PEBBLE_EAB_HMAC_KEY)
#   PEBBLE_PROFILES [default and shortlived]: the config's "profiles" object, as JSON (a CA
#                   that withdraws a profile: restart with a set that lacks it)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin="$here/.pebble/usr/bin"
run=${PEBBLE_RUN_DIR:-$here/run}
port=${PEBBLE_PORT:-14000}
mgmt=${PEBBLE_MGMT_PORT:-15000}
http=${PEBBLE_HTTP_PORT:-5002}
dns=${PEBBLE_DNS_PORT:-8053}
ctsmgmt=${PEBBLE_CHALLTESTSRV_MGMT_PORT:-8055}

[ -x "$bin/pebble" ] || { echo "pebble is not installed: run $here/install.sh" >&2; exit 1; }
mkdir -p "$run"
run=$(cd "$run" && pwd)
for f in pebble.pid challtestsrv.pid; do
  if [ -f "$run/$f" ] && kill -0 "$(cat "$run/$f")" 2>/dev/null; then
    echo "already running ($run/$f); run stop.sh first" >&2; exit 1
  fi
done

# The listener certificate: a throwaway CA (the --ca-bundle for clients) and a leaf for loopback.
if [ ! -f "$run/listener-ca.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=acmebox pebble-test listener CA" -keyout "$run/listener-ca.key" \
    -out "$run/listener-ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout "$run/listener.key" -out "$run/listener.csr" 2>/dev/null
  openssl x509 -req -in "$run/listener.csr" -CA "$run/listener-ca.pem" -CAkey "$run/listener-ca.key" \
    -CAcreateserial -days 3650 -out "$run/listener.pem" \
    -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n') 2>/dev/null
  chmod 600 "$run/listener-ca.key" "$run/listener.key"
fi

eab_kid=kid-1
eab_key=zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W
eab_required=false
[ "${PEBBLE_EAB:-0}" = 1 ] && eab_required=true
profiles=${PEBBLE_PROFILES:-'{
    "default": {"description": "The default profile", "validityPeriod": 7776000},
    "shortlived": {"description": "A short-lived certificate profile", "validityPeriod": 518400}
  }'}
cat >"$run/pebble-config.json" <<JSON
{"pebble": {
  "listenAddress": "127.0.0.1:$port",
  "managementListenAddress": "127.0.0.1:$mgmt",
  "certificate": "$run/listener.pem",
  "privateKey": "$run/listener.key",
  "httpPort": $http,
  "tlsPort": ${PEBBLE_TLS_PORT:-5001},
  "ocspResponderURL": "",
  "externalAccountBindingRequired": $eab_required,
  "externalAccountMACKeys": {"$eab_kid": "$eab_key"},
  "domainBlocklist": ["blocked.test"],
  "profiles": $profiles
}}
JSON

"$bin/pebble-challtestsrv" -dnsserver "127.0.0.1:$dns" -management "127.0.0.1:$ctsmgmt" \
  -http01 "" -https01 "" -tlsalpn01 "" -doh "" -defaultIPv4 127.0.0.1 -defaultIPv6 "" \
  >"$run/challtestsrv.log" 2>&1 &
echo $! >"$run/challtestsrv.pid"

PEBBLE_VA_NOSLEEP=${PEBBLE_VA_NOSLEEP:-1} PEBBLE_WFE_NONCEREJECT=${PEBBLE_WFE_NONCEREJECT:-0} \
  "$bin/pebble" -config "$run/pebble-config.json" -dnsserver "127.0.0.1:$dns" >"$run/pebble.log" 2>&1 &
echo $! >"$run/pebble.pid"

for _ in $(seq 100); do
  if curl -fsS --cacert "$run/listener-ca.pem" "https://127.0.0.1:$port/dir" >/dev/null 2>&1 &&
     curl -fsS --cacert "$run/listener-ca.pem" "https://127.0.0.1:$mgmt/roots/0" >/dev/null 2>&1; then
    echo "PEBBLE_DIRECTORY=https://127.0.0.1:$port/dir"
    echo "PEBBLE_MANAGEMENT=https://127.0.0.1:$mgmt"
    echo "PEBBLE_CA_BUNDLE=$run/listener-ca.pem"
    echo "PEBBLE_HTTP_PORT=$http"
    if [ "$eab_required" = true ]; then echo "PEBBLE_EAB_KID=$eab_kid"; echo "PEBBLE_EAB_HMAC_KEY=$eab_key"; fi
    exit 0
  fi
  kill -0 "$(cat "$run/pebble.pid")" 2>/dev/null || break
  sleep 0.1
done
echo "pebble did not come up; see $run/pebble.log" >&2
tail -5 "$run/pebble.log" >&2 || true
"$here/stop.sh"
exit 1
