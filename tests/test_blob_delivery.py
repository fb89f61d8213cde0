"""Blobs sent by nginx from the registry's storage (the registry's `redirect` middleware, taken by
the template's @registry_blob): a client sees what the registry itself would have sent, and
nothing reaches a blob the registry has not authorized."""

from __future__ import annotations

import hashlib
import os

import pytest

from tests.helpers.stack import Stack, push_blob

pytestmark = pytest.mark.e2e


def test_a_pulled_blob_is_the_registrys_answer_sent_by_nginx(stack: Stack) -> None:
    data = os.urandom(300_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    push = stack.token("repository:blobs/app:pull,push", basic=("alice", "alice-s3cret"))
    assert push_blob(stack, "blobs/app", data, push) == digest
    token = stack.token("repository:blobs/app:pull")  # anonymous, as `docker pull` gets it
    got = stack.https("GET", f"/v2/blobs/app/blobs/{digest}", token=token)
    assert got.status == 200 and got.body == data
    assert got.headers["Docker-Content-Digest"] == digest
    assert got.headers["ETag"] == f'"{digest}"'
    assert got.headers["Content-Type"] == "application/octet-stream"
    assert got.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert got.headers["X-Content-Type-Options"] == "nosniff"
    assert got.headers["Strict-Transport-Security"].startswith("max-age=")
    head = stack.https("HEAD", f"/v2/blobs/app/blobs/{digest}", token=token)
    assert head.status == 200 and head.body == b"" and int(head.headers["Content-Length"]) == len(data)
    assert head.headers["Docker-Content-Digest"] == digest
    part = stack.https("GET", f"/v2/blobs/app/blobs/{digest}", token=token, headers={"Range": "bytes=1000-1999"})
    assert part.status == 206 and part.body == data[1000:2000]
    # the registry answered 307 and nginx sent the file: the 307 never reaches the client, and
    # the registry's log has the redirect for each of the three requests
    log = (stack.run / "registry.log").read_text()
    assert log.count(f"/v2/blobs/app/blobs/{digest}") >= 3 and "307" in log

    # what the registry refuses stays refused: no token, a token for another repository, a
    # repository the blob is not in, a digest it does not have
    assert stack.https("GET", f"/v2/blobs/app/blobs/{digest}").status == 401
    other = stack.token("repository:blobs/other:pull")
    assert stack.https("GET", f"/v2/blobs/app/blobs/{digest}", token=other).status == 401
    assert stack.https("GET", f"/v2/blobs/other/blobs/{digest}", token=other).status == 404
    missing = "sha256:" + "0" * 64
    assert stack.https("GET", f"/v2/blobs/app/blobs/{missing}", token=token).status == 404
    # and the storage is reachable no other way
    path = f"/docker/registry/v2/blobs/sha256/{digest[7:9]}/{digest[7:]}/data"
    for probe in (path, "/v2/.." + path, "/@registry_blob"):
        r = stack.https("GET", probe, token=token)
        assert r.status in (400, 404) and r.body != data, probe
