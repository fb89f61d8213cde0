"""Token signing key rotation on the loopback stack, with distribution 3.x and 2.8: anonymous
pulls through nginx run in a loop (a token from acmebox, the manifest, the config blob, as a
client pulls) while `acmebox token-key rotate` makes the pre-published next key current.
No pull may fail, and pulls after the rotation carry the new key."""

from __future__ import annotations

import json
import threading
import time

import jwt
import pytest

from tests.helpers.process import run_acmebox
from tests.helpers.stack import USERS, Stack, push_image

pytestmark = pytest.mark.e2e
ACCEPT = "application/vnd.oci.image.manifest.v1+json"


def key_args(s: Stack) -> list[str]:
    """The flags of the stack's acmebox, as `docker compose exec acmebox` would inherit them."""
    return ["--state-dir", str(s.state), "--auth-key", str(s.state / "token-signing.key"),
            "--auth-cert", str(s.run / "registry-auth" / "token.crt")]


def pull(s: Stack, repo: str) -> tuple[str, str]:
    """One anonymous pull of repo:v1 through nginx; returns (outcome, the token's kid)."""
    token = s.token(f"repository:{repo}:pull")
    kid = str(jwt.get_unverified_header(token)["kid"])
    r = s.https("GET", f"/v2/{repo}/manifests/v1", token=token, headers={"Accept": ACCEPT})
    if r.status != 200:
        return f"manifest HTTP {r.status} {r.body[:120]!r}", kid
    config = json.loads(r.body)["config"]["digest"]
    blob = s.https("GET", f"/v2/{repo}/blobs/{config}", token=token)
    return ("ok" if blob.status in (200, 307) else f"blob HTTP {blob.status}"), kid


def test_rotation_under_a_pull_loop_fails_no_pull(each_stack: Stack) -> None:
    s = each_stack
    repo = "rotation/img"
    push_image(s, repo, "v1", s.token(f"repository:{repo}:pull,push", basic=("alice", USERS["alice"])))
    shown = run_acmebox("token-key", "show", *key_args(s))
    assert shown.returncode == 0, shown.stderr
    old = shown.stdout.split()[1]
    upcoming = shown.stdout.splitlines()[1].split()[1]

    results: list[tuple[str, str]] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                results.append(pull(s, repo))
            except Exception as e:  # every failure counts, whatever it is
                results.append((f"error {e!r}", ""))

    puller = threading.Thread(target=loop)
    puller.start()
    try:
        while len(results) < 5:
            time.sleep(0.05)
        rotated = run_acmebox("token-key", "rotate", *key_args(s), "--registry", f"http://127.0.0.1:{s.registry_port}")
        assert rotated.returncode == 0, rotated.stderr
        assert f"rotated: {upcoming} signs tokens" in rotated.stdout
        seen = len(results)
        while len(results) < seen + 10:
            time.sleep(0.05)
    finally:
        stop.set()
        puller.join()
    failures = [r for r in results if r[0] != "ok"]
    assert not failures, failures[:5]
    kids = [kid for _, kid in results]
    assert kids[0] == old and kids[-1] == upcoming
    assert kids == sorted(kids, key=lambda k: k == upcoming), "once rotated, every token is signed with the new key"
    assert f"token signing key {upcoming} replaces {old}" in s.acmebox.log()

    # The key published by this rotation is not in the running registry's memory: a second
    # rotation checked against the registry is refused, and nothing changes.
    again = run_acmebox("token-key", "rotate", *key_args(s), "--registry", f"http://127.0.0.1:{s.registry_port}")
    assert again.returncode == 1 and "does not trust the next key" in again.stderr, again.stderr
    after = run_acmebox("token-key", "show", *key_args(s)).stdout
    assert after.split()[1] == upcoming and f"retiring {old}" in after
    bundle = (s.run / "registry-auth" / "token.crt").read_text()
    assert bundle.count("BEGIN CERTIFICATE") == 3  # current, next, retiring
    assert pull(s, repo)[0] == "ok"
