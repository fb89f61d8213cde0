"""Benchmark: the registry stack on a 3-node Docker Swarm (the tests' harness: tests/helpers/swarm.py,
tests/swarm_stack.py; needs root, dockerd and what pebble-test/container-setup.sh caches).

Deploys the stack with compose/start-registry.sh --swarm, then renews N times with
`acmebox renew --force --ignore-ledger` (Pebble validating through node 1, 2, 3 in turn) while a client
loops over the three nodes' port 443, a new TLS connection per request. Per renewal: seconds
from the renew command to every node presenting the new serial (looked at by TLS handshake
from outside the nodes, which adds about a second), split by the services' own log times into
issuing (acmebox's "renewing now" to "certificate stored") and spreading ("certificate
stored" to the last follower's "installed serial"); and the client's failed requests. Then memory (PSS)
per node and per service, and a 4th node joining (`Swarm.join`: its dockerd, the images loaded,
`docker swarm join`): seconds from the join returning to that node presenting the live serial,
and to its readiness path (/.well-known/acmebox-ready) answering 200. Also the versions running
(registry, nginx, acmebox). Prints a Markdown table; --json writes the raw figures.

    .venv/bin/python bench/swarm.py [--renewals 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.helpers

from tests.helpers.containers import wait  # noqa: E402
from tests.helpers.swarm import load_images, served_serial  # noqa: E402
from tests.helpers.swarm_stack import STACK, Deployed, deployed_stack, memory_mib, start_client, stop_client  # noqa: E402

LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: (.*)$")


def _logged(d: Deployed, service: str) -> list[tuple[dt.datetime, str]]:
    got = d.s.node(1).engine.run("docker", "service", "logs", "--raw", f"{STACK}_{service}", check=False)
    out = got.stdout + got.stderr  # the services log to stderr
    found = []
    for line in out.splitlines():
        m = LINE.match(line.strip())
        if m:
            found.append((dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f"), m.group(2)))
    return found


def split(d: Deployed, serial: int) -> tuple[float, float]:
    """(seconds issuing, seconds spreading to every follower) of the renewal to `serial`."""
    acmebox, followers = _logged(d, "acmebox"), _logged(d, "follower")
    stored = next(t for t, text in acmebox if f"certificate stored: serial {serial:x}" in text)
    renewing = max(t for t, text in acmebox if "renewing now" in text and t <= stored)
    installed = [t for t, text in followers if f"installed serial {serial:x}" in text]
    assert len(installed) == len(d.nodes), installed
    return (stored - renewing).total_seconds(), (max(installed) - stored).total_seconds()


def versions(d: Deployed) -> dict[str, str]:
    """What runs: `registry --version`, `nginx -v`, acmebox's version (from their containers)."""
    first = d.s.node(1)
    out = {}
    for svc, command in (("registry", ["registry", "--version"]), ("nginx", ["nginx", "-v"]),
                         ("acmebox", ["acmebox", "--version"])):
        cid = first.container(f"{STACK}_{svc}")
        got = first.engine.run("docker", "exec", cid or "-", *command, check=False)
        out[svc] = (got.stdout + got.stderr).strip().splitlines()[-1] if cid else "?"
    return out


def join(d: Deployed) -> dict[str, float]:
    """A 4th node joins: seconds for its dockerd and images, then from `docker swarm join`
    returning to the node presenting the live serial and to its readiness path answering 200."""
    live = d.live_serial()
    started = time.monotonic()
    fourth = d.s.node_up(4)
    load_images(d.s, ["acmebox:local", "nginx:1.27"], [fourth])
    prepared = time.monotonic()
    manager = d.s.node(1)
    token = manager.docker("swarm", "join-token", "-q", "worker").strip()
    fourth.docker("swarm", "join", "--token", token, "--advertise-addr", fourth.ip, f"{manager.ip}:2377")
    joined = time.monotonic()
    wait(lambda: served_serial(d.s, fourth) == live, 180, "node4 to serve the live certificate")
    serving = time.monotonic()
    wait(lambda: d.readiness(fourth) == 200, 120, "node4's readiness path to answer 200")
    ready = time.monotonic()
    return {"seconds_node_and_images": round(prepared - started, 1),
            "seconds_join_to_serving_live": round(serving - joined, 1),
            "seconds_join_to_ready": round(ready - joined, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renewals", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="acmebox-swarm-bench.") as work, deployed_stack(Path(work)) as d:
        for i in range(args.renewals):
            d.s.point_dns_at(i % 3 + 1)
            old = d.live_serial()
            proc, stop, result = start_client(d, f"renewal-{i}")
            try:
                time.sleep(2)
                started = time.monotonic()
                # --ignore-ledger: more renewals in a week than the order ledger lets through (Pebble)
                d.acmebox("acmebox", "renew", "--force", "--ignore-ledger")
                new = d.live_serial()
                assert new is not None and new != old
                wait(lambda n=new: d.all_serve(n), 120, "every node to serve the new certificate")  # type: ignore[misc]
                seconds = time.monotonic() - started
                time.sleep(1)
            finally:
                seen = stop_client(proc, stop, result)
            issuing, spreading = split(d, new)
            runs.append({"seconds_to_every_node": round(seconds, 2), "seconds_issuing": issuing,
                         "seconds_spreading": spreading, "ok": seen["ok"], "failed": seen["failed"]})
            print(f"renewal {i + 1}: {runs[-1]}", file=sys.stderr)
        memory = {n.name: memory_mib(n) for n in d.nodes}
        deploy = dict(d.measured)
        running = versions(d)
        joining = join(d)
    times = [r["seconds_to_every_node"] for r in runs]
    print(f"| Swarm, 3 nodes, {len(runs)} renewals | figure |\n|---|---|")
    print(f"| `renew --force` to every node serving the new serial | median {statistics.median(times):.1f} s "
          f"(min {min(times):.1f}, max {max(times):.1f}) |")
    for key, what in (("seconds_issuing", "issuing (renewing now to stored)"),
                      ("seconds_spreading", "spreading (stored to the last follower installing it)")):
        values = [r[key] for r in runs]
        print(f"| {what} | median {statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f}) |")
    print(f"| requests failed during the rollovers | {sum(r['failed'] for r in runs)} of "
          f"{sum(r['ok'] + r['failed'] for r in runs)} |")
    first = deploy["seconds_deploy_to_every_node_serving"]
    print(f"| deploy to every node serving the first certificate | {first} s |")
    for name, m in memory.items():
        parts = ", ".join(f"{svc} {mib}" for svc, mib in m.items() if svc != "total")
        print(f"| memory {name} (PSS MiB: dockerd, containerd and every container) | {m['total']} ({parts}) |")
    print(f"| a 4th node: `docker swarm join` returning to it presenting the live serial | "
          f"{joining['seconds_join_to_serving_live']} s (its readiness path 200 after "
          f"{joining['seconds_join_to_ready']} s; its dockerd and images before: "
          f"{joining['seconds_node_and_images']} s) |")
    print("| versions | " + "; ".join(f"{k}: {v}" for k, v in running.items()) + " |")
    if args.json is not None:
        args.json.write_text(json.dumps({"runs": runs, "memory_mib": memory, "deploy": deploy, "join": joining,
                                         "versions": running, "date": dt.date.today().isoformat()},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
