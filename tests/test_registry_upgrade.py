"""Upgrading a registry's data from 2.8 (Debian's docker-registry, as registry:2) to distribution
3.x (as registry:3) with the repo's config file and acmebox's tokens: images pushed to 2.8 are
pulled from 3.x unchanged, and compose/registry/find-schema1.sh names the schema-1 tag that
3.x no longer serves (README "Upgrading to registry:3")."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from acmebox.config import TokenAuth
from acmebox.registry.token import Scope, TokenService
from tests.helpers.process import free_port
from tests.helpers.stack import start_registry

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
OCI = "application/vnd.oci.image.manifest.v1+json"
V2S2 = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT = f"{OCI}, {V2S2}, application/vnd.docker.distribution.manifest.v1+prettyjws"


class Registry:
    def __init__(self, port: int, svc: TokenService) -> None:
        self.base, self.svc = f"http://127.0.0.1:{port}", svc

    def call(self, method: str, path: str, scope: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        token = self.svc.issue("alice", [Scope.parse(scope)])["token"]
        url = path if path.startswith("http") else self.base + path
        req = urllib.request.Request(url, data=body, method=method,
                                     headers={"Authorization": f"Bearer {token}", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def wait_up(self) -> None:
        for _ in range(200):
            try:
                urllib.request.urlopen(self.base + "/v2/", timeout=2)
            except urllib.error.HTTPError:
                return  # 401: it answers
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"no registry at {self.base}")

    def push(self, repo: str, tag: str, media_type: str, layer: bytes) -> str:
        rw = f"repository:{repo}:pull,push"

        def blob(data: bytes) -> str:
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            status, headers, _ = self.call("POST", f"/v2/{repo}/blobs/uploads/", rw)
            assert status == 202, status
            location = headers["Location"]
            sep = "&" if "?" in location else "?"
            status, _, body = self.call("PUT", f"{location}{sep}digest={digest}", rw, data,
                                        {"Content-Type": "application/octet-stream"})
            assert status == 201, body
            return digest

        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
        oci = media_type == OCI
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": media_type,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json" if oci else
                       "application/vnd.docker.container.image.v1+json",
                       "digest": blob(config.encode()), "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip" if oci else
                        "application/vnd.docker.image.rootfs.diff.tar.gzip",
                        "digest": blob(layer), "size": len(layer)}],
        }).encode()
        status, headers, body = self.call("PUT", f"/v2/{repo}/manifests/{tag}", rw, manifest,
                                          {"Content-Type": media_type})
        assert status == 201, body
        return headers["Docker-Content-Digest"]

    def pull(self, repo: str, tag: str) -> tuple[int, str, bytes]:
        """(status, manifest digest, the layer's bytes) of an anonymous-style pull of repo:tag."""
        ro = f"repository:{repo}:pull"
        status, headers, body = self.call("GET", f"/v2/{repo}/manifests/{tag}", ro, headers={"Accept": ACCEPT})
        if status != 200:
            return status, "", body
        layer = json.loads(body)["layers"][0]["digest"]
        _, _, data = self.call("GET", f"/v2/{repo}/blobs/{layer}", ro)
        return status, headers["Docker-Content-Digest"], data


def plant_schema1(storage: Path, repo: str, tag: str) -> str:
    """A schema-1 manifest as an old registry stored it (blob, revision and tag links); no
    registry of 2.8's defaults accepts one on push any more."""
    manifest = json.dumps({"schemaVersion": 1, "name": repo, "tag": tag, "architecture": "amd64",
                           "fsLayers": [], "history": []}, indent=3).encode()
    hexd = hashlib.sha256(manifest).hexdigest()
    v2 = storage / "docker" / "registry" / "v2"
    (v2 / "blobs" / "sha256" / hexd[:2] / hexd).mkdir(parents=True)
    (v2 / "blobs" / "sha256" / hexd[:2] / hexd / "data").write_bytes(manifest)
    links = v2 / "repositories" / repo / "_manifests"
    for link in (links / "revisions" / "sha256" / hexd, links / "tags" / tag / "current",
                 links / "tags" / tag / "index" / "sha256" / hexd):
        link.mkdir(parents=True)
        (link / "link").write_text(f"sha256:{hexd}")
    return f"sha256:{hexd}"


def test_images_pushed_to_2_8_are_pulled_from_3(tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    subprocess.run(["htpasswd", "-Bbc", "-C", "4", str(htpasswd), "alice", "pw"], check=True, capture_output=True)
    svc = TokenService.from_settings(TokenAuth(htpasswd, tmp_path / "state" / "k", tmp_path / "auth" / "token.crt"))
    port = free_port()
    overrides = {"REGISTRY_AUTH_TOKEN_REALM": "http://127.0.0.1:1/auth/token", "REGISTRY_HTTP_SECRET": "upgrade",
                 "REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE": str(tmp_path / "auth" / "token.crt"),
                 "REGISTRY_NOTIFICATIONS_ENDPOINTS": "[]"}  # no acmebox here to tell
    old = start_registry(tmp_path, port, overrides, "2", direct=True)
    try:
        r = Registry(port, svc)
        r.wait_up()
        pushed = {(repo, "1"): (r.push(repo, "1", kind, layer), layer)
                  for repo, kind, layer in (("team/oci", OCI, b"oci layer"), ("team/docker", V2S2, b"docker"))}
    finally:
        old.terminate()
        old.wait(timeout=10)
    storage = tmp_path / "registry-data"
    legacy = plant_schema1(storage, "legacy/app", "old")
    found = subprocess.run([str(ROOT / "compose" / "registry" / "find-schema1.sh"), str(storage)],
                           capture_output=True, text=True, check=True).stdout
    assert found == f"legacy/app:old {legacy}\n"

    new = start_registry(tmp_path, port, overrides, "3", direct=True)
    try:
        r.wait_up()
        for (repo, tag), (digest, layer) in pushed.items():
            assert r.pull(repo, tag) == (200, digest, layer), (repo, tag)
        status, _, body = r.pull("legacy/app", "old")
        assert status != 200, ("distribution 3.x does not serve schema 1", body)
        # and writes go on as before
        assert r.push("team/oci", "2", OCI, b"after the upgrade").startswith("sha256:")
    finally:
        new.terminate()
        new.wait(timeout=10)
