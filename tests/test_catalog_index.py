"""The catalog index (acmebox/registry/catalog.py, events.py) against the real stack: the
registry's own notifications keep it current on push and delete, notifications without the
secret are refused, a rebuild reads 10,000 repositories made on the registry's storage, and a
search at that size is one request to /ui-index/ answered from the index (the registry is not
asked: its request count stays the same). No assertion is about time; bench/catalog.py times it.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.helpers.pebble import Dirs, Pebble, pebble_args
from tests.helpers.process import ServiceProcess, free_port, healthz, wait_sync
from tests.helpers.registry_fill import clone_repositories, empty_repository, push_built_image, push_index
from tests.helpers.stack import NOTIFY_SECRET, USERS, Stack, running_stack

pytestmark = pytest.mark.e2e
BULK = 10_000
MULTIARCH = [("linux", "amd64", None, 3_000, "2026-11-20T10:00:00Z"),
             ("linux", "arm64", "v8", 2_800, "2026-11-20T10:05:00Z")]


@pytest.fixture(scope="module")
def cat_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("catalog-stack")) as stack:
        yield stack


def index(stack: Stack, path: str) -> Any:
    r = stack.https("GET", f"/ui-index/{path}")
    assert r.status == 200, (r.status, r.body)
    return r.json()


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def post_acmebox(stack: Stack, path: str, body: bytes, secret: str | None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", stack.acmebox_port, timeout=10)
    try:
        headers = {"Content-Type": "application/vnd.docker.distribution.events.v1+json"}
        if secret is not None:
            headers["Authorization"] = f"Bearer {secret}"
        conn.request("POST", path, body=body, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def repo_row(stack: Stack, name: str) -> dict[str, Any] | None:
    rows = index(stack, f"repositories?q={quote(name)}")["repositories"]
    return next((r for r in rows if r["name"] == name), None)


def registry_requests(stack: Stack) -> int:
    """Requests the registry has logged so far (one access line per request)."""
    return (stack.run / "registry.log").read_text().count('"GET /v2/') + \
        (stack.run / "registry.log").read_text().count('"HEAD /v2/')


def test_push_and_delete_events_keep_the_index_current(cat_stack: Stack) -> None:
    stack = cat_stack
    wait_for(lambda: stack.https("GET", "/ui-index/repositories").status == 200, "the first build")
    writer = stack.token("repository:team/app:pull,push,delete", basic=("alice", USERS["alice"]))
    digests = {tag: push_built_image(stack, "team/app", tag, writer, f"2026-11-0{i + 1}T08:00:00Z",
                                     layer=tag.encode() * 400) for i, tag in enumerate(["1.0", "1.1", "2.0"])}
    wait_for(lambda: (row := repo_row(stack, "team/app")) is not None and row["tags"] == 3, "three tags indexed")
    row = repo_row(stack, "team/app")
    assert row is not None and row["namespace"] == "team" and row["top_tags"] == ["2.0", "1.1", "1.0"]
    assert row["size"] > 3 * 1200 and row["last_push"] is not None
    tags = {t["tag"]: t for t in index(stack, "tags/team/app")["tags"]}
    assert {t: tags[t]["digest"] for t in tags} == digests
    assert tags["2.0"]["platforms"] == ["linux/amd64"] and tags["2.0"]["created"] == "2026-11-03T08:00:00Z"

    writer = stack.token("repository:team/multi:pull,push", basic=("alice", USERS["alice"]))
    push_index(stack, "team/multi", ["1"], writer, MULTIARCH)
    wait_for(lambda: repo_row(stack, "team/multi") is not None, "the index pushed")
    (multi,) = index(stack, "tags/team/multi")["tags"]
    assert multi["platforms"] == ["linux/amd64", "linux/arm64/v8"]  # the attestation is not a platform
    assert multi["size"] > 5_800

    deleter = stack.token("repository:team/app:delete", basic=("alice", USERS["alice"]))
    r = stack.https("DELETE", f"/v2/team/app/manifests/{digests['1.1']}", token=deleter)
    assert r.status == 202, (r.status, r.body)
    wait_for(lambda: (row := repo_row(stack, "team/app")) is not None and row["tags"] == 2, "the delete indexed")
    assert {t["tag"] for t in index(stack, "tags/team/app")["tags"]} == {"1.0", "2.0"}
    assert [n["namespace"] for n in index(stack, "namespaces?q=team")["namespaces"]] == ["team"]


def test_notifications_need_the_secret(cat_stack: Stack) -> None:
    envelope = json.dumps({"events": [{"action": "push", "target": {"repository": "team/forged", "tag": "x"}}]})
    assert post_acmebox(cat_stack, "/registry-events", envelope.encode(), None) == 401
    assert post_acmebox(cat_stack, "/registry-events", envelope.encode(), "wrong-secret-0123456789") == 401
    assert post_acmebox(cat_stack, "/registry-events/rebuild", b"", "wrong-secret-0123456789") == 401
    assert cat_stack.https("POST", "/registry-events").status == 404  # not routed through nginx at all
    assert cat_stack.https("POST", "/ui-index/repositories").status == 403  # read-only
    # even with the secret, an event only makes acmebox ask the registry, which knows no such name
    assert post_acmebox(cat_stack, "/registry-events", envelope.encode(), NOTIFY_SECRET) == 200
    time.sleep(1)
    assert repo_row(cat_stack, "team/forged") is None


def test_search_at_10000_repositories_answers_from_the_index(cat_stack: Stack) -> None:
    stack = cat_stack
    wait_for(lambda: stack.https("GET", "/ui-index/repositories").status == 200, "the first build")
    writer = stack.token("repository:seed/app:pull,push", basic=("alice", USERS["alice"]))
    push_built_image(stack, "seed/app", "1.0", writer, "2026-11-01T08:00:00Z", layer=b"seed" * 300)
    push_built_image(stack, "seed/app", "latest", writer, "2026-11-01T08:00:00Z", layer=b"seed" * 300)
    wait_for(lambda: repo_row(stack, "seed/app") is not None, "seed/app indexed")
    clone_repositories(stack, "seed/app", [f"bulk{i % 20:02d}/r{i:05d}" for i in range(BULK)], ["1.0", "latest"])
    empty_repository(stack, "bulk00/empty")
    built = index(stack, "repositories?n=1")["built"]
    assert post_acmebox(stack, "/registry-events/rebuild", b"", NOTIFY_SECRET) == 202
    wait_for(lambda: index(stack, "repositories?n=1")["built"] != built, "the rebuild", timeout=900)
    assert index(stack, "repositories?n=1")["total"] >= BULK + 1
    assert repo_row(stack, "bulk00/empty") is None  # no tags: not listed
    before = registry_requests(stack)
    found = index(stack, "repositories?q=r09876")
    assert [r["name"] for r in found["repositories"]] == ["bulk16/r09876"] and found["total"] == 1
    assert found["repositories"][0]["tags"] == 2 and found["repositories"][0]["top_tags"] == ["latest", "1.0"]
    by_ns = index(stack, "namespaces")["namespaces"]
    assert {n["namespace"]: n["repositories"] for n in by_ns if n["namespace"].startswith("bulk")} == \
        {f"bulk{i:02d}": BULK // 20 for i in range(20)}
    newest = index(stack, "repositories?sort=push&n=3")["repositories"]
    assert newest[0]["name"] == "seed/app"  # the last push the events recorded, kept through the rebuild
    page = index(stack, "repositories?namespace=bulk03&offset=400&n=100")
    assert page["total"] == 500 and len(page["repositories"]) == 100
    assert page["repositories"][0]["name"] == "bulk03/r08003"
    assert registry_requests(stack) == before  # all of that without asking the registry


def test_a_registry_that_is_not_there_is_named_in_health_and_costs_nothing_else(
        pebble: Pebble, dirs: Dirs, tmp_path: Path) -> None:
    """The index's registry refuses connections: acmebox still gets and serves its certificate,
    /healthz names the index's trouble without turning unhealthy for it, /ui-index/ says 503 (the
    page then reads the registry itself), and the tries back off (5 s, 10 s, ...), so its
    warnings come further and further apart."""
    htpasswd = tmp_path / "htpasswd"
    subprocess.run(["htpasswd", "-Bbc", "-C", "4", str(htpasswd), "alice", "pw"], check=True, capture_output=True)
    svc = ServiceProcess(["run", "--domain", "catalog.test", *pebble_args(pebble, dirs), "--reload", "none",
                          "--auth-htpasswd", str(htpasswd), "--auth-key", str(dirs.state / "token.key"),
                          "--auth-cert", str(tmp_path / "token.crt"),
                          "--catalog-registry", f"http://127.0.0.1:{free_port()}", "--catalog-secret", NOTIFY_SECRET],
                         tmp_path / "service.log")
    try:
        svc.wait_log("certificate stored", timeout=60)
        svc.wait_log("catalog index: cannot read the registry", timeout=30)
        wait_sync(lambda: "catalog index: cannot read the registry" in healthz(pebble.http_port)[1],
                  what="the index's trouble in /healthz")
        status, body = healthz(pebble.http_port)
        assert status == 200, body  # the certificate is fine; the index is a convenience
        assert "catalog.test: " in body
        with urllib.request.urlopen(f"http://127.0.0.1:{pebble.http_port}/healthz") as r:
            assert r.status == 200
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{pebble.http_port}/ui-index/repositories")
            raise AssertionError("the index answered without having been built")
        except urllib.error.HTTPError as e:
            assert e.code == 503
        # the second try waits twice as long as the first
        svc.wait_log("cannot read the registry (", timeout=30, count=2)
        tries = [line for line in svc.log().splitlines() if "catalog index: cannot read the registry" in line]
        assert tries[0].endswith("trying again in 5 s") and tries[1].endswith("trying again in 10 s"), tries
        assert svc.proc.poll() is None
    finally:
        svc.stop()
