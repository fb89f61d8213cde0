#!/usr/bin/env bash
# Brings the registry stack up: ./start-registry.sh DOMAIN EMAIL
# (or DOCKER_REGISTRY_DOMAIN_NAME and DOCKER_REGISTRY_CERT_EMAIL_ADDRESS in the environment).
# DOMAIN may also be a public IPv4 or IPv6 address (a 6-day `shortlived` certificate).
# Checks the arguments, writes .env next to the compose file, creates the data directories
# with the owners and modes the containers need, and runs `docker compose up -d` (Compose v2)
# or `docker-compose up -d` (v1) when there is no v2. It prints how to stop the stack.
#   --staging        use Let's Encrypt's staging CA (recommended for a first try)
#   --prepare-only   do everything but start the containers
#   --swarm          deploy to the Docker Swarm this node manages (docs/swarm.md): creates the
#                    fleet secret, labels this node acmebox=true (acmebox, its state and the
#                    registry live here), merges docker-compose.swarm.yml over docker-compose.yml
#                    (needs Compose v2) and runs `docker stack deploy` (stack name: $STACK_NAME,
#                    default registry). Stop with `docker stack rm registry`; the data stays.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ACMEBOX_UID=10001   # the user the acmebox image runs as

die() { echo "start-registry.sh: $*" >&2; exit 2; }

staging=0 prepare_only=0 swarm=0 args=()
for a in "$@"; do
  case "$a" in
    --staging) staging=1 ;;
    --prepare-only) prepare_only=1 ;;
    --swarm) swarm=1 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $a (see --help)" ;;
    *) args+=("$a") ;;
  esac
done
[ ${#args[@]} -le 2 ] || die "too many arguments: want DOMAIN EMAIL"
domain=${args[0]:-${DOCKER_REGISTRY_DOMAIN_NAME:-}}
email=${args[1]:-${DOCKER_REGISTRY_CERT_EMAIL_ADDRESS:-}}
[ -n "$domain" ] || die "missing DOMAIN: usage: start-registry.sh DOMAIN EMAIL"
[ -n "$email" ] || die "missing EMAIL: usage: start-registry.sh DOMAIN EMAIL"

# The name's canonical form (lower case, IDNA 2008 A-labels; an address as RFC 5952 writes it)
# comes from acmebox itself, so nginx's template points at the live/ directory acmebox writes,
# however the name was typed. --public-ca: Let's Encrypt certifies no private or reserved address.
# python3 with the idna package runs acmebox/names.py from this checkout; without it, the
# acmebox image does (built first).
canonical_name() {
  local out rc=0
  out=$(PYTHONPATH="$here/.." python3 -m acmebox.names --public-ca "$1" 2>&1) || rc=$?
  if [ $rc -eq 127 ] || { [ $rc -ne 0 ] && [ $rc -ne 2 ]; }; then
    command -v docker >/dev/null 2>&1 ||
      die "cannot check DOMAIN: need python3 with the idna package, or docker"
    # The compose file requires the name before anything, a build included: any valid one will do.
    (cd "$here" && export DOCKER_REGISTRY_DOMAIN_NAME="${DOCKER_REGISTRY_DOMAIN_NAME:-image-build.invalid}" &&
      { docker compose build -q acmebox 2>/dev/null || docker-compose build -q acmebox; }) >&2 ||
      die "cannot check DOMAIN: building the acmebox image failed"
    rc=0
    out=$(docker run --rm --entrypoint python acmebox:local -m acmebox.names --public-ca "$1" 2>&1) || rc=$?
  fi
  [ $rc -eq 0 ] || die "bad DOMAIN '$1': ${out#acmebox: error: }"
  printf '%s\n' "$out"
}
domain=$(canonical_name "$domain") || exit 2
[[ "$email" =~ ^[^@[:space:],\;]+@[^@[:space:],\;]+\.[^@[:space:],\;.]+$ ]] ||
  die "bad EMAIL '$email'"

docker_gid=0   # only docker-compose.docker-reload.yml uses it
[ -S /var/run/docker.sock ] && docker_gid=$(stat -c %g /var/run/docker.sock)
# The registry signs upload state with it; kept across runs (a new one breaks uploads in flight).
http_secret=$(sed -n 's/^REGISTRY_HTTP_SECRET=//p' "$here/.env" 2>/dev/null || true)
[ -n "$http_secret" ] || http_secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
# The registry's notifications carry it to acmebox's catalog index (kept across runs too).
notify_secret=$(sed -n 's/^REGISTRY_NOTIFY_SECRET=//p' "$here/.env" 2>/dev/null || true)
[ -n "$notify_secret" ] || notify_secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')

cat >"$here/.env" <<ENV
DOCKER_REGISTRY_DOMAIN_NAME=$domain
DOCKER_REGISTRY_CERT_EMAIL_ADDRESS=$email
ACMEBOX_STAGING=$staging
DOCKER_GID=$docker_gid
REGISTRY_HTTP_SECRET=$http_secret
REGISTRY_NOTIFY_SECRET=$notify_secret
ENV
chmod 600 "$here/.env"

install -d -m 0755 "$here/data" "$here/data/registry"
install -d -m 0700 "$here/data/acmebox"
install -d -m 0750 "$here/data/auth"
[ -f "$here/data/auth/htpasswd" ] || install -m 0640 /dev/null "$here/data/auth/htpasswd"
chown "$ACMEBOX_UID:$ACMEBOX_UID" "$here/data/acmebox"
chown -R "root:$ACMEBOX_UID" "$here/data/auth"
echo "start-registry.sh: wrote $here/.env for $domain ($email)$([ $staging = 1 ] && echo ', staging CA')"
[ -s "$here/data/auth/htpasswd" ] ||
  echo "start-registry.sh: no users yet; add one with: htpasswd -B $here/data/auth/htpasswd USER"

[ "$prepare_only" = 1 ] && exit 0
cd "$here"
# compose prefers the environment over .env: hand it the canonical form, not what was typed.
export DOCKER_REGISTRY_DOMAIN_NAME=$domain DOCKER_REGISTRY_CERT_EMAIL_ADDRESS=$email
if [ "$swarm" = 1 ]; then
  stack=${STACK_NAME:-registry}
  [ "$(docker info -f '{{.Swarm.ControlAvailable}}' 2>/dev/null)" = true ] ||
    die "--swarm: this Docker engine is not a Swarm manager (docker swarm init, or run this on a manager)"
  docker compose version >/dev/null 2>&1 || die "--swarm needs Compose v2 (docker compose) to merge the files"
  # One node holds acmebox's state and the registry's data: this one, unless another is labelled.
  labelled=$(docker node ls -q | xargs docker node inspect -f '{{if eq (index .Spec.Labels "acmebox") "true"}}{{.Description.Hostname}}{{end}}' | tr -d '\n')
  if [ -z "$labelled" ]; then
    docker node update --label-add acmebox=true "$(docker info -f '{{.Swarm.NodeID}}')" >/dev/null
    labelled=$(docker info -f '{{.Name}}')
  fi
  echo "start-registry.sh: acmebox and the registry run on $labelled (label acmebox=true)"
  # The fleet secret: followers authenticate with it, acmebox seals the key with it.
  docker secret inspect acmebox_fleet >/dev/null 2>&1 ||
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' | docker secret create acmebox_fleet - >/dev/null
  # Swarm configs cannot change: name them after their content.
  SWARM_CONFIG_HASH=$(cat ../nginx/templates/registry.conf.template ../nginx/reload-on-change.sh ../nginx/swarm-ready.conf \
    ../nginx/ui/* |
    sha256sum | cut -c1-12)
  export SWARM_CONFIG_HASH
  render=(python3 "$here/swarm-render.py")
  command -v python3 >/dev/null || render=(docker run --rm -i --entrypoint python "${ACMEBOX_IMAGE:-acmebox:local}" -c "$(cat "$here/swarm-render.py")")
  files=(-f docker-compose.yml -f docker-compose.swarm.yml)
  [ -z "${COMPOSE_FILE:-}" ] || files=()   # COMPOSE_FILE names the files (more overlays, e.g. a test's)
  docker compose "${files[@]}" config --format json | "${render[@]}" >"$here/.swarm-stack.json"
  detach=(); docker stack deploy --help 2>/dev/null | grep -q -- --detach && detach=(--detach=true)
  docker stack deploy "${detach[@]}" --prune -c "$here/.swarm-stack.json" "$stack"
  echo "start-registry.sh: deployed stack $stack; stop with: docker stack rm $stack (volumes and data stay)"
  exit 0
fi
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  compose=(docker-compose)
fi
"${compose[@]}" up -d --build
echo "start-registry.sh: started with ${compose[*]}; stop with: cd $here && ${compose[*]} stop"
