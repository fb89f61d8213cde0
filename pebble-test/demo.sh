#!/usr/bin/env bash
# The whole job on this machine, nothing reachable from outside: installs what is needed
# (setup.sh), brings up the registry stack on loopback — Pebble as the CA, nginx, the registry,
# acmebox, the browse page — gets the certificate through nginx's port 80, pushes a small image
# with a login, pulls it anonymously, prints the addresses to open, and runs until Ctrl-C,
# which stops everything it started. Files go to ./demo/.
#   --containers   the same with the image and compose/docker-compose.yml, through
#                  start-registry.sh, in a dockerd of its own (private network namespace)
#   --no-wait      stop right after the checks
#   --registry 3|2 the registry: distribution 3.x (registry:3, the default) or 2.8 (registry:2)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --containers|--no-wait) args+=("$1") ;;
    --registry=2|--registry=3) args+=(--registry "${1#--registry=}") ;;
    --registry)
      case "${2:-}" in 2|3) args+=(--registry "$2"); shift ;;
        *) echo "demo.sh: --registry takes 3 or 2" >&2; exit 2 ;; esac ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
bash "$here/setup.sh"
case " ${args[*]:-} " in *" --containers "*) bash "$here/container-setup.sh" ;; esac
exec "$top/.venv/bin/python" "$here/demo_stack.py" "${args[@]}"
