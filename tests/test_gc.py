"""`acmebox gc` against the real stack (nginx with the project's template, the registry the
stack runs and its own `garbage-collect`, the token service): a deleted image's blobs are
freed on disk and in /metrics, while a client pulls in a loop without one failure; during the
run a push is refused with a clear message and Retry-After, both at the token service (a new
login) and at nginx (a push token issued before); afterwards pushes work again. /healthz reports
the storage's use.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.registries import registry_command
from tests.helpers.stack import USERS, Stack, push_blob, push_image, running_stack

pytestmark = pytest.mark.e2e
CONFIG = ROOT / "compose" / "registry" / "config.yml"
BIG = 3 * 1024 * 1024
MANIFEST = {"Accept": "application/vnd.oci.image.manifest.v1+json"}


@pytest.fixture(scope="module")
def gc_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run = tmp_path_factory.mktemp("gc-stack")
    # nginx's workers (nobody) look for the maintenance flag on the certs volume: let them reach
    # it through pytest's private (0700) directories, as they reach the compose file's volume.
    for d in (run, run.parent, run.parent.parent):
        d.chmod(d.stat().st_mode | 0o011)
    with running_stack(run) as stack:
        yield stack


def acmebox_get(stack: Stack, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", stack.acmebox_port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def storage_bytes(stack: Stack) -> float | None:
    m = re.search(r"^acmebox_registry_storage_bytes ([0-9.e+]+)$", acmebox_get(stack, "/metrics")[1], re.M)
    return float(m.group(1)) if m else None


def blob_file(stack: Stack, digest: str) -> Path:
    hex_ = digest.split(":")[1]
    return stack.run / "registry-data" / "docker" / "registry" / "v2" / "blobs" / "sha256" / hex_[:2] / hex_ / "data"


class Puller(threading.Thread):
    """Pulls team/keep:1 (manifest, then its layer) in a loop with anonymous tokens."""

    def __init__(self, stack: Stack, layer: str) -> None:
        super().__init__(daemon=True)
        self.stack, self.layer = stack, layer
        self.ok = self.failed = 0
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                token = self.stack.token("repository:team/keep:pull")
                m = self.stack.https("GET", "/v2/team/keep/manifests/1", token=token, headers=MANIFEST)
                b = self.stack.https("GET", f"/v2/team/keep/blobs/{self.layer}", token=token)
                good = m.status == 200 and b.status == 200 and hashlib.sha256(b.body).hexdigest() == self.layer[7:]
                detail = f"{m.status} {b.status}"
            except Exception as e:  # a failed pull of any kind counts
                good, detail = False, repr(e)
            if good:
                self.ok += 1
            else:
                self.failed += 1
                self.failures.append(detail)


def test_gc_frees_a_deleted_images_blobs_while_pulls_go_on(gc_stack: Stack) -> None:
    stack = gc_stack
    alice = ("alice", USERS["alice"])
    writer = stack.token("repository:team/keep:pull,push", "repository:team/drop:pull,push,delete", basic=alice)
    push_image(stack, "team/keep", "1", writer, layer=b"kept layer " * 1000)
    big = os.urandom(BIG)
    big_digest = "sha256:" + hashlib.sha256(big).hexdigest()
    drop = push_image(stack, "team/drop", "1", writer, layer=big)
    assert blob_file(stack, big_digest).stat().st_size == BIG
    assert stack.https("DELETE", f"/v2/team/drop/manifests/{drop}", token=writer).status == 202
    keep_manifest = stack.https("GET", "/v2/team/keep/manifests/1", token=writer, headers=MANIFEST).json()
    kept_layer = keep_manifest["layers"][0]["digest"]

    _, health = acmebox_get(stack, "/healthz")
    assert re.search(r"registry storage .*: \d+% of its filesystem used", health), health

    early_push_token = stack.token("repository:team/keep:pull,push", basic=alice)
    puller = Puller(stack, kept_layer)
    puller.start()
    flag = stack.certs / "registry-maintenance"
    env = {**os.environ, "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(stack.run / "registry-data")}
    gc = subprocess.Popen(
        [sys.executable, "-m", "acmebox", "gc", "--certs-dir", str(stack.certs), "--registry-storage",
         str(stack.run / "registry-data"), "--registry-command",
         shlex.join([*registry_command(stack.registry, CONFIG)[:-2], "garbage-collect", str(CONFIG)]),
         "--drain", "6", "--expect", "60"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not flag.exists():
            assert gc.poll() is None and time.monotonic() < deadline, gc.communicate()
            time.sleep(0.05)
        # the storage is looked at again when the run starts (and when it ends)
        deadline = time.monotonic() + 30
        while (before := storage_bytes(stack) or 0) < BIG:
            assert time.monotonic() < deadline, f"/metrics shows {before} bytes under the storage root"
            time.sleep(0.2)
        # a new login for push: refused by the token service, with the reason and Retry-After
        r = stack.https("GET", "/auth/token?service=registry&scope=repository:team/keep:pull,push", basic=alice)
        assert r.status == 503 and 5 <= int(r.headers["Retry-After"]) <= 66, (r.status, r.headers)
        assert "read-only for maintenance (garbage collection)" in r.json()["errors"][0]["message"]
        # a push token from before: refused by nginx
        r = stack.https("POST", "/v2/team/keep/blobs/uploads/", token=early_push_token)
        assert r.status == 503 and r.headers["Retry-After"] == "300", (r.status, r.body)
        assert "read-only for maintenance" in r.json()["errors"][0]["message"]
        assert stack.https("GET", "/auth/token?service=registry&scope=repository:team/keep:pull").status == 200
        out, err = gc.communicate(timeout=300)
    finally:
        if gc.poll() is None:
            gc.kill()
        puller.stop.set()
        puller.join(timeout=60)
    assert gc.returncode == 0, (out, err)
    freed = int(re.search(r"gc: freed (\d+) bytes", out).group(1))  # type: ignore[union-attr]
    assert freed >= BIG, out
    assert not flag.exists()
    assert not blob_file(stack, big_digest).exists()
    # and the registry says so too (no descriptor cache answering for a collected blob)
    gone = stack.token("repository:team/drop:pull", basic=alice)
    assert stack.https("HEAD", f"/v2/team/drop/blobs/{big_digest}", token=gone).status == 404
    assert blob_file(stack, kept_layer).exists()
    assert puller.failed == 0 and puller.ok > 0, puller.failures[:5]

    deadline = time.monotonic() + 30
    while (after := storage_bytes(stack)) is None or after > before - BIG:
        assert time.monotonic() < deadline, f"/metrics still shows {after} bytes (before: {before})"
        time.sleep(0.2)
    # writes are back
    writer = stack.token("repository:team/keep:pull,push", basic=alice)
    push_blob(stack, "team/keep", b"after gc", writer)


def test_storage_use_on_the_page_route_and_in_status(gc_stack: Stack) -> None:
    """What the browse page's status line reads (`/ui-index/storage`, through nginx) and what
    `acmebox status --registry-storage` says agree with /metrics and the filesystem."""
    stack = gc_stack
    r = stack.https("GET", "/ui-index/storage")
    assert r.status == 200, r.body
    usage = r.json()
    assert usage["used_bytes"] > 0 and usage["used_bytes"] == storage_bytes(stack)  # one look, both figures
    st = os.statvfs(stack.run / "registry-data")
    assert usage["filesystem_size"] == st.f_blocks * st.f_frsize
    assert 0 < usage["filesystem_free"] <= usage["filesystem_size"]
    assert stack.https("POST", "/ui-index/storage").status in (403, 405)  # nginx: GET only

    done = subprocess.run([sys.executable, "-m", "acmebox", "status", "--certs-dir", str(stack.certs),
                           "--state-dir", str(stack.state), "--registry-storage", str(stack.run / "registry-data")],
                          capture_output=True, text=True)
    used = round(100 * (1 - st.f_bavail / st.f_blocks))
    line = re.search(r"^registry storage .*: (\d+)% of its filesystem used", done.stdout, re.M)
    assert line and abs(int(line.group(1)) - used) <= 1, done.stdout
    assert done.returncode == (0 if used < 97 else 1), (done.returncode, done.stdout)
    missing = subprocess.run([sys.executable, "-m", "acmebox", "status", "--certs-dir", str(stack.certs),
                              "--state-dir", str(stack.state), "--registry-storage", str(stack.run / "nowhere")],
                             capture_output=True, text=True)
    assert missing.returncode == 1 and "registry storage" in missing.stdout and "Traceback" not in missing.stderr
