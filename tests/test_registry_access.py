"""Publicly readable, writable after a login: real docker, skopeo and HTTP clients against
the real registry behind the real nginx, with acmebox's token service."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers.docker import busybox_image, docker, with_hosts
from tests.helpers.oci import make_layout
from tests.helpers.stack import USERS, Stack, push_blob, push_image

pytestmark = pytest.mark.e2e
ALICE = ("alice", USERS["alice"])
MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])


# -- docker ------------------------------------------------------------------------------------


def test_docker_login_push_and_anonymous_pull(each_stack: Stack, docker_engine: str, tmp_path: Path) -> None:
    stack = each_stack
    config = tmp_path / "docker-config"
    config.mkdir()
    image = busybox_image(docker_engine, tmp_path, "acmebox-test/pushme:1")
    ref = f"{stack.host}/test/busybox:1"
    assert docker(docker_engine, "tag", image, ref, config=config).returncode == 0

    anonymous = docker(docker_engine, "push", ref, config=config)
    assert anonymous.returncode != 0
    assert "denied" in anonymous.stderr or "unauthorized" in anonymous.stderr, anonymous.stderr

    wrong = docker(
        docker_engine, "login", stack.host, "-u", "alice", "--password-stdin", stdin="wrong\n", config=config
    )
    assert wrong.returncode != 0, "docker login with a wrong password must fail"
    assert "unauthorized" in wrong.stderr.lower() or "401" in wrong.stderr, wrong.stderr

    password = USERS["alice"] + "\n"
    right = docker(docker_engine, "login", stack.host, "-u", "alice", "--password-stdin", stdin=password, config=config)
    assert right.returncode == 0, right.stderr
    assert "Login Succeeded" in right.stdout

    pushed = docker(docker_engine, "push", ref, config=config)
    assert pushed.returncode == 0, pushed.stderr
    assert "digest: sha256:" in pushed.stdout

    assert docker(docker_engine, "logout", stack.host, config=config).returncode == 0
    assert docker(docker_engine, "rmi", ref, config=config).returncode == 0
    pulled = docker(docker_engine, "pull", ref, config=config)
    assert pulled.returncode == 0, pulled.stderr
    assert docker(docker_engine, "image", "inspect", ref, config=config).returncode == 0

    other = f"{stack.host}/test/busybox:anonymous"
    assert docker(docker_engine, "tag", image, other, config=config).returncode == 0
    assert docker(docker_engine, "push", other, config=config).returncode != 0, "after logout, pushing is denied again"


# -- skopeo ------------------------------------------------------------------------------------


@pytest.fixture
def skopeo_env(tmp_path: Path, stack: Stack) -> dict[str, str]:
    """No saved credentials anywhere skopeo looks, and trust in Pebble's root."""
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    (tmp_path / "xdg").mkdir()
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.crt").write_text(stack.root_pem())
    return {"PATH": os.environ["PATH"], "HOME": str(home), "XDG_RUNTIME_DIR": str(tmp_path / "xdg"),
            "DOCKER_CONFIG": str(home / ".docker"), "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json"),
            "CERTS": str(tmp_path / "certs")}


def skopeo(test_hosts: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    cmd = with_hosts(test_hosts, ["skopeo", *args])
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_skopeo_reads_anonymously_and_writes_with_credentials(
    stack: Stack, test_hosts: Path, skopeo_env: dict[str, str], tmp_path: Path
) -> None:
    certs = skopeo_env["CERTS"]
    layout = tmp_path / "layout"
    make_layout(layout, "v1", "hello from skopeo\n")
    dest = f"docker://{stack.host}/test/skopeo:v1"

    anonymous = skopeo(test_hosts, skopeo_env, "copy", "--dest-cert-dir", certs, f"oci:{layout}:v1", dest)
    assert anonymous.returncode != 0, anonymous.stdout
    assert "unauthorized" in anonymous.stderr.lower() or "denied" in anonymous.stderr.lower(), anonymous.stderr

    wrong = skopeo(test_hosts, skopeo_env, "copy", "--dest-cert-dir", certs, "--dest-creds", "alice:wrong",
                   f"oci:{layout}:v1", dest)
    assert wrong.returncode != 0
    assert "401" in wrong.stderr or "unauthorized" in wrong.stderr.lower(), wrong.stderr

    pushed = skopeo(test_hosts, skopeo_env, "copy", "--dest-cert-dir", certs, "--dest-creds", ":".join(ALICE),
                    f"oci:{layout}:v1", dest)
    assert pushed.returncode == 0, pushed.stderr
    assert not Path(skopeo_env["REGISTRY_AUTH_FILE"]).exists(), "nothing saved that later cases could use"

    inspect = skopeo(test_hosts, skopeo_env, "inspect", "--cert-dir", certs, dest)
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout)["Created"].startswith("2026-11-01T12:00:00")

    tags = skopeo(test_hosts, skopeo_env, "list-tags", "--cert-dir", certs, f"docker://{stack.host}/test/skopeo")
    assert tags.returncode == 0, tags.stderr
    assert json.loads(tags.stdout)["Tags"] == ["v1"]

    out = tmp_path / "copied"
    copied = skopeo(test_hosts, skopeo_env, "copy", "--src-cert-dir", certs, dest, f"oci:{out}:v1")
    assert copied.returncode == 0, copied.stderr
    assert (out / "index.json").exists()

    untrusted = skopeo(test_hosts, skopeo_env, "inspect", dest)  # without Pebble's root: TLS is checked
    assert untrusted.returncode != 0 and "certificate" in untrusted.stderr


# -- HTTP level --------------------------------------------------------------------------------


def test_http_reads_are_public_and_writes_need_a_login(each_stack: Stack) -> None:
    stack = each_stack
    repo = "test/http"
    writer = stack.token(f"repository:{repo}:pull,push,delete", basic=ALICE)
    digest = push_image(stack, repo, "v1", writer)

    anon_catalog = stack.https("GET", "/v2/_catalog", token=stack.token("registry:catalog:*"))
    assert anon_catalog.status == 200 and repo in anon_catalog.json()["repositories"]
    anon = stack.token(f"repository:{repo}:pull,push,delete")  # asks for all, gets pull
    tags = stack.https("GET", f"/v2/{repo}/tags/list", token=anon)
    assert tags.status == 200 and tags.json()["tags"] == ["v1"]

    wrong = stack.https("GET", f"/auth/token?service=registry&scope=repository:{repo}:push", basic=("alice", "nope"))
    assert wrong.status == 401 and wrong.headers["WWW-Authenticate"].startswith("Basic")

    manifest = stack.https("GET", f"/v2/{repo}/manifests/v1", token=anon, headers={"Accept": MANIFEST_TYPES}).body
    for label, auth in (
        ("anonymous", {"token": anon}),
        ("no token", {}),
        ("wrong password", {"basic": ("alice", "x")}),
    ):
        attempts = [
            stack.https("DELETE", f"/v2/{repo}/manifests/{digest}", **auth),  # type: ignore[arg-type]
            stack.https("PUT", f"/v2/{repo}/manifests/v2", body=manifest,
                        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, **auth),  # type: ignore[arg-type]
            stack.https("POST", f"/v2/{repo}/blobs/uploads/", **auth),  # type: ignore[arg-type]
            stack.https("PATCH", f"/v2/{repo}/blobs/uploads/00000000-0000-0000-0000-000000000000", body=b"x",
                        **auth),  # type: ignore[arg-type]
        ]
        assert [a.status for a in attempts] == [401] * 4, (label, [(a.status, a.body[:80]) for a in attempts])

    # DELETE by tag: distribution 3.x removes that tag only (the manifest stays, by digest and
    # under its other tags); 2.8 refuses it (400 DIGEST_INVALID). Either way, writers only.
    kept = stack.https("PUT", f"/v2/{repo}/manifests/keep", token=writer, body=manifest,
                       headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert kept.status == 201 and kept.headers["Docker-Content-Digest"] == digest
    assert stack.https("DELETE", f"/v2/{repo}/manifests/v1", token=anon).status == 401
    untag = stack.https("DELETE", f"/v2/{repo}/manifests/v1", token=writer)
    tags_left = sorted(stack.https("GET", f"/v2/{repo}/tags/list", token=anon).json()["tags"])
    if stack.registry == "3":
        assert untag.status == 202 and tags_left == ["keep"], (untag.status, untag.body)
    else:
        assert untag.status == 400 and b"DIGEST_INVALID" in untag.body and tags_left == ["keep", "v1"]
    still = stack.https("GET", f"/v2/{repo}/manifests/{digest}", token=anon, headers={"Accept": MANIFEST_TYPES})
    assert still.status == 200

    # DELETE by digest: the manifest goes, and with it every tag that named it (both versions).
    deleted = stack.https("DELETE", f"/v2/{repo}/manifests/{digest}", token=writer)
    assert deleted.status == 202, deleted.body
    gone = stack.https("GET", f"/v2/{repo}/manifests/{digest}", token=anon, headers={"Accept": MANIFEST_TYPES})
    assert gone.status == 404
    by_tag = stack.https("GET", f"/v2/{repo}/manifests/keep", token=anon, headers={"Accept": MANIFEST_TYPES})
    assert by_tag.status == 404


def test_a_64_mib_layer_pushes_through_nginx(stack: Stack) -> None:
    writer = stack.token("repository:test/big:pull,push", basic=ALICE)
    layer = os.urandom(64 * 1024 * 1024)
    digest = push_blob(stack, "test/big", layer, writer)
    head = stack.https("HEAD", f"/v2/test/big/blobs/{digest}", token=writer)
    assert head.status == 200 and int(head.headers["Content-Length"]) == len(layer)


def test_a_tampered_token_is_refused_by_the_registry(each_stack: Stack) -> None:
    stack = each_stack
    token = stack.token("repository:test/http:pull")
    assert stack.https("GET", "/v2/test/http/tags/list", token=token).status in (200, 404)
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["access"][0]["actions"] = ["pull", "push", "delete"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    r = stack.https("POST", "/v2/test/http/blobs/uploads/", token=f"{header}.{forged}.{signature}")
    assert r.status == 401
    r = stack.https("GET", "/v2/test/http/tags/list", token=f"{header}.{payload}.{signature[:-4]}AAAA")
    assert r.status == 401
