"""Registry contents for browse-page tests and benchmarks: many repositories made cheaply on
the registry's own storage, and a multi-platform image index pushed through the API.

Cheap repositories are what distribution 2.8's filesystem driver would have written had the
same image been pushed under another name: link files only, pointing at blobs that a real push
already stored. Checked against Debian's docker-registry 2.8.2 and distribution v3.1.1:
`_catalog` lists a directory as a repository when it has a `_layers` child (2.8) or a
`_manifests` child (3.x; registry/storage/catalog.go);
`tags/list` and manifest reads also need `_manifests/tags/<tag>/current/link` and
`_manifests/revisions/sha256/<hex>/link`; blob reads need `_layers/sha256/<hex>/link`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from tests.helpers.stack import Stack, push_blob, push_manifest_blobs


def repositories_root(stack: Stack) -> Path:
    return stack.run / "registry-data" / "docker" / "registry" / "v2" / "repositories"


def _link(path: Path, digest: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "link").write_text(digest)


def clone_repositories(stack: Stack, source: str, names: Iterable[str], tags: Iterable[str]) -> int:
    """Make each of `names` a repository whose `tags` all point at `source`'s first tag's
    manifest, sharing its blobs. Returns how many repositories were made."""
    root = repositories_root(stack)
    src = root / source
    tag_dirs = sorted((src / "_manifests" / "tags").iterdir())
    manifest = (tag_dirs[0] / "current" / "link").read_text()
    layers = [p.name for p in (src / "_layers" / "sha256").iterdir()]
    hex_ = manifest.split(":", 1)[1]
    tags = list(tags)
    count = 0
    for name in names:
        repo = root / name
        for layer in layers:
            _link(repo / "_layers" / "sha256" / layer, f"sha256:{layer}")
        _link(repo / "_manifests" / "revisions" / "sha256" / hex_, manifest)
        for tag in tags:
            _link(repo / "_manifests" / "tags" / tag / "current", manifest)
            _link(repo / "_manifests" / "tags" / tag / "index" / "sha256" / hex_, manifest)
        count += 1
    return count


def empty_repository(stack: Stack, name: str) -> None:
    """Listed by the catalog, unknown to tags/list: what deleting every tag can leave behind
    (2.8 lists it by its `_layers`, 3.x by its `_manifests`)."""
    for child in ("_layers", "_manifests"):
        (repositories_root(stack) / name / child).mkdir(parents=True, exist_ok=True)


def _put_manifest(stack: Stack, repo: str, ref: str, body: bytes, media_type: str, token: str) -> str:
    r = stack.https("PUT", f"/v2/{repo}/manifests/{ref}", token=token, body=body,
                    headers={"Content-Type": media_type})
    assert r.status == 201, (r.status, r.body)
    return r.headers["Docker-Content-Digest"]


def push_index(stack: Stack, repo: str, tags: list[str], token: str,
               platforms: list[tuple[str, str, str | None, int, str]]) -> str:
    """An OCI image index, pushed as a client would: per platform (os, architecture, variant,
    layer size in bytes, created), a config, a layer and a manifest; then the index under each
    of `tags`, with a buildx-style attestation entry that a browser should not call a platform.
    Returns the index digest."""
    entries = []
    for os_, arch, variant, layer_size, created in platforms:
        config = json.dumps({"architecture": arch, "os": os_, **({"variant": variant} if variant else {}),
                             "created": created, "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        layer = hashlib.sha256(f"{os_}/{arch}/{variant}".encode()).digest() * (layer_size // 32 + 1)
        layer = layer[:layer_size]
        manifest = push_manifest_blobs(stack, repo, token, config, layer)
        digest = _put_manifest(stack, repo, "sha256:" + hashlib.sha256(manifest).hexdigest(), manifest,
                               "application/vnd.oci.image.manifest.v1+json", token)
        platform = {"os": os_, "architecture": arch, **({"variant": variant} if variant else {})}
        entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
                        "size": len(manifest), "platform": platform})
    attestation = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": push_blob(stack, repo, b"{}", token), "size": 2},
        "layers": [],
    }).encode()
    att_digest = _put_manifest(stack, repo, "sha256:" + hashlib.sha256(attestation).hexdigest(), attestation,
                               "application/vnd.oci.image.manifest.v1+json", token)
    entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": att_digest,
                    "size": len(attestation), "platform": {"os": "unknown", "architecture": "unknown"},
                    "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                                    "vnd.docker.reference.digest": entries[0]["digest"]}})
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": entries}).encode()
    digest = ""
    for tag in tags:
        digest = _put_manifest(stack, repo, tag, index, "application/vnd.oci.image.index.v1+json", token)
    return digest


def push_built_image(stack: Stack, repo: str, tag: str, token: str, created: str, layer: bytes) -> str:
    """A one-layer image whose config says it was built at `created` (RFC 3339)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "created": created,
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    manifest = push_manifest_blobs(stack, repo, token, config, layer)
    return _put_manifest(stack, repo, tag, manifest, "application/vnd.oci.image.manifest.v1+json", token)
