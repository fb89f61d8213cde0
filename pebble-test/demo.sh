#!/usr/bin/env bash
# The whole job on this machine, nothing reachable from outside: installs what is needed
# (setup.sh), brings up the registry stack on loopback — Pebble as the CA, nginx, the registry,
# acmebox, the browse page — gets the certificate through nginx's port 80, pushes a small image
# with a login, pulls it anonymously, prints the addresses to open, and runs until Ctrl-C,
# which stops everything it started. Files go to ./demo/.
#   --containers   the same with the image and compose/docker-compose.yml, through
#                  start-registry.sh, in a dockerd of its own (private network namespace)
#   --no-wait      stop right after the checks
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
args=()
for a in "$@"; do
  case "$a" in
    --containers|--no-wait) args+=("$a") ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown argument $a (see --help)" >&2; exit 2 ;;
  esac
done
bash "$here/setup.sh"
case " ${args[*]:-} " in *" --containers "*) bash "$here/container-setup.sh" ;; esac
exec "$top/.venv/bin/python" "$here/demo_stack.py" "${args[@]}"
