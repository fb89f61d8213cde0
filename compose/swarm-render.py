"""Turns `docker compose -f docker-compose.yml -f docker-compose.swarm.yml config --format json`
(stdin) into a file `docker stack deploy -c` takes (stdout). Used by start-registry.sh --swarm.

Compose merges the two files (its `!override`/`!reset` tags); `docker stack deploy` cannot
read the single-host file itself: it rejects depends_on with conditions. So this drops what
Swarm has no use for (depends_on, build, restart, the project name), makes the default
network an overlay, lets the stack name the volumes, and writes the few values Compose prints
in a form the stack loader refuses (ports and modes as strings, nulls). Standard library only.
"""

import json
import sys

DROP = ("depends_on", "build", "restart", "container_name", "pull_policy")


def mode(value: object) -> object:
    return int(value, 8) if isinstance(value, str) else value


def main() -> None:
    merged = json.load(sys.stdin)
    out = {"version": "3.8", "services": {}, "volumes": {}, "networks": {}, "secrets": {}, "configs": {}}
    for name, svc in merged.get("services", {}).items():
        svc = {k: v for k, v in svc.items() if k not in DROP and v is not None}
        for port in svc.get("ports", []):
            if isinstance(port.get("published"), str):
                port["published"] = int(port["published"])
        for ref in svc.get("configs", []) + svc.get("secrets", []):
            if "mode" in ref:
                ref["mode"] = mode(ref["mode"])
        for vol in svc.get("volumes", []):
            vol.pop("bind", None)  # create_host_path: unknown to the stack loader; binds must exist
            if vol.get("volume") == {}:
                vol.pop("volume")
        if isinstance(svc.get("networks"), dict):
            svc["networks"] = sorted(svc["networks"])
        for key in ("environment", "labels"):  # an empty value is "", never null
            if isinstance(svc.get(key), dict):
                svc[key] = {k: "" if v is None else v for k, v in svc[key].items()}
        out["services"][name] = svc
    for vol in merged.get("volumes", {}):
        out["volumes"][vol] = {}  # named by the stack: <stack>_<volume>, on each node
    for net in merged.get("networks", {}) or {"default": {}}:
        out["networks"][net] = {"driver": "overlay", "attachable": True}
    for kind in ("secrets", "configs"):
        for key, value in (merged.get(kind) or {}).items():
            out[kind][key] = {k: v for k, v in value.items() if k in ("name", "file", "external")}
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
