"""The registry stack on a 3-node Docker Swarm (tests/helpers/swarm.py): deployed with
`compose/start-registry.sh --swarm` as an operator deploys it, Pebble validating through
whichever node its DNS points at. One acmebox issues; nginx on every node serves what the
follower beside it fetched; acmebox checks every frontend.

The tests run in file order on one deployment (module fixture); each says what it leaves.
Measurements go to test-artifacts/swarm.json (bench/swarm.py reports them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import ROOT
from tests.helpers.containers import NotPrepared, compose_v2, wait
from tests.helpers.swarm import DOMAIN, busybox_tar, served_serial
from tests.helpers.swarm_stack import (
    PASSWORD,
    STACK,
    USER,
    Deployed,
    deployed_stack,
    memory_mib,
    start_client,
    stop_client,
)

pytestmark = [pytest.mark.e2e, pytest.mark.swarm]
ARTIFACT = ROOT / "test-artifacts" / "swarm.json"


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    for tool in ("dockerd", "nsenter", "unshare", "busybox"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if compose_v2() is None:
        pytest.skip("no Compose v2 binary (pebble-test/container-setup.sh)")
    measured: dict[str, Any] = {}
    try:
        with deployed_stack(tmp_path_factory.mktemp("swarm")) as d:
            measured = d.measured
            yield d
    except NotPrepared as err:
        pytest.fail(str(err))
    finally:
        ARTIFACT.parent.mkdir(exist_ok=True)
        ARTIFACT.write_text(json.dumps(measured, indent=2) + "\n")


def test_one_order_every_node_serves(deployed: Deployed) -> None:
    d = deployed
    assert "start-registry.sh: deployed stack registry" in d.deploy_output
    assert d.s.orders() == 1
    live = d.live_serial()
    assert d.served() == {"node1": live, "node2": live, "node3": live}
    # every follower's node has its frontend listed (a follower polls from each node)
    wait(lambda: d.health()[0] == 200, 90, "/healthz to turn healthy")
    _, text = d.health()
    for node in ("node1", "node2", "node3"):
        assert f"frontend {node} (" in text and "serves the live certificate" in text, text
    # each node's readiness path (what a load balancer polls) says so too
    wait(lambda: [d.readiness(n) for n in d.nodes] == [200, 200, 200], 60, "every node's readiness path")
    row = d.status()[0]
    assert row["condition"] == "ok"
    assert sorted(f["node"] for f in row["frontends"]) == ["node1", "node2", "node3"]
    assert all(f["serves_live"] for f in row["frontends"])
    metrics = d.acmebox("python", "-c", "import urllib.request; print(urllib.request.urlopen("
                        "'http://127.0.0.1:8080/metrics').read().decode())").stdout
    for node in ("node1", "node2", "node3"):
        assert f'acmebox_frontend_serves_live{{frontend="{node}",name="{DOMAIN}"}} 1.0' in metrics
    # The key reached the other nodes only through the followers: no socket, no shared disk.
    for n in d.nodes:
        for svc in ("nginx", "follower"):
            cid = n.container(f"{STACK}_{svc}")
            assert cid is not None
            mounts = n.engine.inspect(cid)["Mounts"]
            assert not any("docker.sock" in m.get("Source", "") for m in mounts)
    d.measured["memory_mib_per_node"] = {n.name: memory_mib(n) for n in d.nodes}


def test_push_node1_pull_node3(deployed: Deployed) -> None:
    d = deployed
    root = d.s.pebble_root()
    for n in d.nodes:
        ca = n.root / "etc-docker" / "certs.d" / DOMAIN / "ca.crt"
        ca.parent.mkdir(parents=True, exist_ok=True)
        ca.write_text(root)
    first, third = d.s.node(1), d.s.node(3)
    image = f"{DOMAIN}/{USER}/busybox:1"
    subprocess.run(["docker", "import", "-", image], input=busybox_tar(d.s.work), check=True, capture_output=True,
                   env={**os.environ, **first.engine.env})
    first.engine.run("docker", "login", DOMAIN, "-u", USER, "--password-stdin", stdin=PASSWORD + "\n")
    first.docker("push", image)  # node1's daemon: registry.test is node1's address
    pulled = third.engine.run("docker", "pull", image, check=False)  # node3's: registry.test is node3's
    assert pulled.returncode == 0, pulled.stderr
    anonymous = third.engine.run("docker", "push", image, check=False)
    assert anonymous.returncode != 0 and "denied" in anonymous.stderr.lower(), anonymous.stderr


def test_renew_rolls_over_every_node_without_failures(deployed: Deployed) -> None:
    d = deployed
    old = d.live_serial()
    before = d.containers()
    orders = d.s.orders()
    d.s.point_dns_at(3)  # this time the CA validates through node3
    proc, stop, result = start_client(d, "rollover")
    try:
        time.sleep(2)  # the loop has seen the old certificate on every node
        started = time.monotonic()
        out = d.acmebox("acmebox", "renew", "--force", check=False)
        new = d.live_serial()
        assert new is not None and new != old, out.stdout + out.stderr
        wait(lambda: d.all_serve(new), 120, "every node to serve the new certificate")
        d.measured["seconds_renew_to_every_node_serving"] = round(time.monotonic() - started, 1)
        time.sleep(2)  # a few more rounds on the new certificate
    finally:
        seen = stop_client(proc, stop, result)
    assert d.s.orders() == orders + 1
    assert "every frontend serves it (verified)" in out.stdout + out.stderr, out.stdout + out.stderr
    assert seen["failed"] == 0, seen["errors"]
    assert seen["ok"] > 30
    for node_ip, serials in seen["serials"].items():
        assert serials[-1] == f"{new:x}", (node_ip, serials)
    assert d.containers() == before  # nothing restarted or replaced
    d.measured["rollover_requests"] = {"ok": seen["ok"], "failed": seen["failed"]}


def test_frontend_refusing_the_reload_is_named(deployed: Deployed) -> None:
    d = deployed
    third = d.s.node(3)
    nginx3 = third.container(f"{STACK}_nginx")
    assert nginx3 is not None
    # node3's nginx refuses every reload from now on: its configuration no longer parses
    third.docker("exec", nginx3, "sh", "-c", "echo 'this is not nginx;' > /etc/nginx/conf.d/zz-broken.conf")
    old = d.live_serial()
    d.s.point_dns_at(1)
    # the service would hold the answer until node3 serves it (a minute): do not wait for it
    d.acmebox("acmebox", "renew", "--force", "--timeout", "10", check=False)
    wait(lambda: d.live_serial() != old, 60, "the renewed certificate")
    new = d.live_serial()
    assert new is not None
    wait(lambda: d.all_serve(new, ["node1", "node2"]), 120, "nodes 1 and 2 to serve the new certificate")
    wait(lambda: "node3" in d.health()[1] and "not the live" in d.health()[1], 60, "health to name node3")
    code, text = d.health()
    assert code == 503
    lines = {line.split(" (")[0]: line for line in text.splitlines() if line.startswith("frontend ")}
    assert "serves the live certificate" in lines["frontend node1"]
    assert "serves the live certificate" in lines["frontend node2"]
    assert f"serial {old:x}" in lines["frontend node3"], text
    assert d.served()["node3"] == old
    row = d.status()[0]
    assert row["condition"] == "not served"
    assert [f["node"] for f in row["frontends"] if not f["serves_live"]] == ["node3"]
    # acmebox keeps asking node3 to reload (with a backoff) while the difference lasts
    wait(lambda: "reload asked 1 time(s)" not in d.health()[1], 60, "a second reload request")
    assert d.served()["node3"] == old
    # Repaired; `acmebox renew` (nothing due) makes acmebox look and ask at once, and it takes.
    third.docker("exec", nginx3, "rm", "/etc/nginx/conf.d/zz-broken.conf")
    d.acmebox("acmebox", "renew")
    wait(lambda: d.all_serve(new), 60, "node3 to catch up once it can reload")
    wait(lambda: d.health()[0] == 200, 60, "health to recover")


def test_node_down_others_serve_and_health_names_it(deployed: Deployed) -> None:
    d = deployed
    live = d.live_serial()
    d.s.node_down(2)
    assert d.all_serve(live, ["node1", "node3"])
    wait(lambda: "frontend node2" in d.health()[1] and d.health()[0] == 503, 90, "health to name node2")
    text = d.health()[1]
    assert "node2" in next(line for line in text.splitlines() if "node2" in line and "serves the live" not in line)
    # The node comes back: its nginx serves the current certificate again, health recovers.
    started = time.monotonic()
    d.s.node_up(2)
    wait(lambda: d.all_serve(live), 120, "node2 to serve the current certificate again")
    d.measured["seconds_node_restart_to_serving"] = round(time.monotonic() - started, 1)
    wait(lambda: d.health()[0] == 200, 90, "health to recover")


def test_acmebox_node_restart_orders_nothing(deployed: Deployed) -> None:
    d = deployed
    live, orders = d.live_serial(), d.s.orders()
    d.s.node_down(1)
    assert d.all_serve(live, ["node2", "node3"])  # the followers keep what they have
    d.s.node_up(1)
    wait(lambda: d.s.node(1).container(f"{STACK}_acmebox") is not None, 120, "acmebox back on node1")
    wait(lambda: d.health()[0] == 200, 120, "acmebox healthy again")
    assert d.live_serial() == live
    assert d.all_serve(live)
    assert d.s.orders() == orders


def test_node_joins_and_is_ready_only_on_the_live_certificate(deployed: Deployed) -> None:
    """A 4th node joins the running swarm (a worker, as an operator adds one). Its nginx starts on
    its follower's placeholder; while it does not serve the live certificate its readiness path
    (what a load balancer polls) is 503 and acmebox names it joining. That is held as a state, not
    caught in passing: acmebox is away while the node joins, then the node's follower is paused
    while acmebox looks. Released, the node serves the live serial, readiness turns 200, and
    acmebox lists four frontends on it; nothing is ordered."""
    d = deployed
    first = d.s.node(1)
    live, orders = d.live_serial(), d.s.orders()
    assert live is not None
    wait(lambda: [d.readiness(n) for n in d.nodes] == [200, 200, 200], 60, "nodes 1-3 ready")
    first.docker("service", "scale", f"{STACK}_acmebox=0", timeout=180)
    wait(lambda: first.container(f"{STACK}_acmebox") is None, 60, "acmebox to stop")
    # an issuer that is away takes no frontend out of routing
    assert [d.readiness(n) for n in d.nodes] == [200, 200, 200]

    fourth = d.s.join(4, ["acmebox:local", "nginx:1.27"])
    wait(lambda: fourth.container(f"{STACK}_follower") is not None and served_serial(d.s, fourth) is not None,
         180, "node4's nginx to answer on 443")
    follower4 = fourth.container(f"{STACK}_follower")
    assert follower4 is not None
    fourth.docker("pause", follower4)
    assert served_serial(d.s, fourth) not in (None, live)  # the follower's self-signed placeholder
    assert d.readiness(fourth) == 503

    first.docker("service", "scale", f"{STACK}_acmebox=1", timeout=180)
    wait(lambda: "frontend node4 (" in d.health()[1], 180, "acmebox back, looking at node4")

    def states() -> dict[str, str]:
        return {f["node"]: f["state"] for f in d.status()[0].get("frontends", [])}

    wait(lambda: states() == {"node1": "serves live", "node2": "serves live", "node3": "serves live",
                              "node4": "joining"}, 60, "status to name node4 joining")
    code, text = d.health()
    assert code == 503
    line = next(x for x in text.splitlines() if x.startswith("frontend node4 ("))
    assert "joining (not ready)" in line and f"not yet the live {live:x}" in line, text
    assert d.status()[0]["condition"] == "not served"
    assert d.readiness(fourth) == 503
    assert [d.readiness(d.s.node(i)) for i in (1, 2, 3)] == [200, 200, 200]

    fourth.docker("unpause", follower4)
    wait(lambda: served_serial(d.s, fourth) == live, 60, "node4 to serve the live certificate")
    wait(lambda: d.readiness(fourth) == 200, 60, "node4's readiness path to turn 200")
    wait(lambda: d.health()[0] == 200, 60, "health with node4 serving")
    lines = [x for x in d.health()[1].splitlines() if x.startswith("frontend ")]
    assert len(lines) == 4 and all("serves the live certificate" in x for x in lines), lines
    row = d.status()[0]
    assert row["condition"] == "ok"
    assert sorted(f["node"] for f in row["frontends"]) == ["node1", "node2", "node3", "node4"]
    assert all(f["serves_live"] and f["state"] == "serves live" for f in row["frontends"]), row["frontends"]
    assert d.served() == {"node1": live, "node2": live, "node3": live, "node4": live}
    assert d.live_serial() == live
    assert d.s.orders() == orders
