"""Keeping the catalog index (catalog.py) in step with the registry, and answering from it.

- `POST /registry-events`: the registry's notifications (`notifications.endpoints`, sent straight to
  acmebox, not through nginx), accepted only with `Authorization: Bearer <secret>`. Each push or
  delete names a repository; that repository is read again from the registry's API (the event
  says what changed, the registry says what is), so a lost or reordered event costs nothing
  worse than a stale row until the next one or the next rebuild.
- Rebuild from the registry's API (`_catalog`, `tags/list`, manifests, configs) when the index is
  missing (never built), every REBUILD_EVERY seconds, and on `POST /registry-events/rebuild` with
  the same secret. Reads use anonymous pull tokens this service mints itself, so the index holds
  nothing an anonymous `docker pull` could not read.
- `GET /ui-index/repositories?q=&namespace=&sort=name|push&offset=&n=`, `/ui-index/namespaces?q=`,
  `/ui-index/tags/<name>`: the read-only JSON the browse page uses (nginx routes `/ui-index/`
  here); 503 while the index has never been built, so the page reads the registry itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
from aiohttp import web

from acmebox.registry.catalog import MAX_PAGE, SORTS, CatalogIndex, TagInfo
from acmebox.registry.token import Scope, TokenService

log = logging.getLogger(__name__)

EVENTS_PATH = "/registry-events"
INDEX_PREFIX = "/ui-index"
REBUILD_EVERY = 24 * 3600.0
READERS = 8  # requests in flight to the registry during a rebuild
# A repository name as the distribution spec defines it (path components joined by /)
REPOSITORY = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
MAX_PAUSE = 300.0  # seconds between tries at most while the registry cannot be read
RETRIES, RETRY_AFTER = 5, 1.0  # reading a repository again when a listed tag is not readable yet
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.docker.distribution.manifest.v2+json"
)
INDEX_TYPES = {"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"}
# Mints a bearer token for the given scopes (`repository:NAME:pull`, `registry:catalog:*`).
Minter = Callable[[list[str]], str]


def anonymous_minter(tokens: TokenService) -> Minter:
    """Tokens as an anonymous client gets them from `tokens`: what the index reads, anyone may."""
    return lambda scopes: str(tokens.issue(None, [Scope.parse(s) for s in scopes])["token"])


class RegistryError(Exception):
    """The registry could not be read (status or connection); the index keeps what it had."""


class RegistryReader:
    """Reads a repository's tags as TagInfo through the registry's API, caching manifests and
    configs by digest (content-addressed: the same digest is the same bytes in any repository)."""

    def __init__(self, base: str, mint: Minter, session: aiohttp.ClientSession, storage: Path | None = None) -> None:
        self.base = base.rstrip("/") + "/"
        self.mint = mint
        self.storage = storage  # the registry's storage root, where its blob 307s point (below)
        self.session = session
        self.blobs: dict[str, Any] = {}
        self.requests = 0
        self.incomplete: set[str] = set()  # repositories with a tag listed but not readable

    async def _get(self, path: str, scope: str, accept: str | None = None) -> tuple[int, dict[str, str], bytes]:
        headers = {"Authorization": f"Bearer {self.mint([scope])}"}
        if accept:
            headers["Accept"] = accept
        self.requests += 1
        try:
            async with self.session.get(urljoin(self.base, path.lstrip("/")), headers=headers,
                                        allow_redirects=False) as r:
                body = await r.read()
                return r.status, dict(r.headers), body
        except (aiohttp.ClientError, TimeoutError) as e:
            raise RegistryError(f"{path}: {type(e).__name__}: {e}") from None

    async def catalog(self) -> list[str]:
        """Every repository name, following `Link` pages."""
        names: list[str] = []
        path: str | None = f"/v2/_catalog?n={MAX_PAGE}"
        while path:
            status, headers, body = await self._get(path, "registry:catalog:*")
            if status != 200:
                raise RegistryError(f"_catalog answered {status}")
            names += json.loads(body).get("repositories") or []
            link = headers.get("Link", "")
            path = link[link.find("<") + 1:link.find(">")] if 'rel="next"' in link else None
        return names

    async def _json(self, repo: str, kind: str, digest_or_tag: str) -> tuple[str, Any, str] | None:
        """(digest, parsed JSON, media type) of a manifest or blob, None when it is gone (404)."""
        cached = self.blobs.get(digest_or_tag)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        status, headers, body = await self._get(
            f"/v2/{repo}/{kind}/{quote(digest_or_tag, safe=':')}", f"repository:{repo}:pull",
            MANIFEST_TYPES if kind == "manifests" else None,
        )
        if status == 404:
            return None
        if kind == "blobs" and status in (302, 307):
            stored = self._stored(headers.get("Location", ""))
            if stored is None:
                return None  # the image is indexed without its config's platform and build time
            body = stored
        elif status != 200:
            raise RegistryError(f"{repo} {kind}/{digest_or_tag} answered {status}")
        digest = headers.get("Docker-Content-Digest") or "sha256:" + hashlib.sha256(body).hexdigest()
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {}
        media = str(doc.get("mediaType") or headers.get("Content-Type", "")).split(";")[0]
        entry = (digest, doc, media)
        if len(self.blobs) < 100_000:
            self.blobs[digest] = entry
        return entry

    def _stored(self, location: str) -> bytes | None:
        """A config blob the registry's `redirect` storage middleware (compose/registry/config.yml)
        points at: nginx alone can follow that 307, so it is read here from the same storage
        (--registry-storage, mounted read-only), as nginx reads it. None without the storage, for
        a path outside it, or a file over 4 MiB (no image config is that large)."""
        if self.storage is None:
            return None
        root = self.storage.resolve()
        path = (root / urlsplit(location).path.lstrip("/")).resolve()
        try:
            if not path.is_relative_to(root) or path.stat().st_size > 4 << 20:
                return None
            return path.read_bytes()
        except OSError:
            return None

    async def _image(self, repo: str, manifest: dict[str, Any]) -> tuple[int, str | None, str | None]:
        """(size, platform, created) of one image manifest: config + layers; the config's os/arch."""
        config = manifest.get("config") or {}
        size = int(config.get("size") or 0) + sum(int(layer.get("size") or 0) for layer in manifest.get("layers") or [])
        platform = created = None
        if config.get("digest"):
            got = await self._json(repo, "blobs", str(config["digest"]))
            if got is not None and isinstance(got[1], dict):
                c = got[1]
                if c.get("os") and c.get("architecture"):
                    platform = "/".join(str(p) for p in (c["os"], c["architecture"], c.get("variant")) if p)
                created = c.get("created")
        return size, platform, created

    async def tag(self, repo: str, tag: str) -> TagInfo | None:
        got = await self._json(repo, "manifests", tag)
        if got is None:
            return None
        digest, doc, media = got
        if media in INDEX_TYPES:
            size, platforms, newest = 0, [], None
            for entry in doc.get("manifests") or []:
                annotations = entry.get("annotations") or {}
                if annotations.get("vnd.docker.reference.type") == "attestation-manifest":
                    continue
                child = await self._json(repo, "manifests", str(entry.get("digest")))
                if child is None:
                    continue
                csize, _, created = await self._image(repo, child[1])
                size += csize
                p = entry.get("platform") or {}
                platforms.append("/".join(str(x) for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x))
                if created and (newest is None or created > newest):
                    newest = created
            return TagInfo(tag, digest, media, size, tuple(platforms), newest)
        size, platform, created = await self._image(repo, doc)
        return TagInfo(tag, digest, media, size, (platform,) if platform else (), created)

    async def repository(self, repo: str) -> list[TagInfo]:
        """The tags `repo` has now ([] when the registry does not know it or it has none)."""
        status, _, body = await self._get(f"/v2/{repo}/tags/list", f"repository:{repo}:pull")
        if status == 404:
            return []
        if status != 200:
            raise RegistryError(f"{repo} tags/list answered {status}")
        out = []
        for tag in json.loads(body).get("tags") or []:
            info = await self.tag(repo, tag)
            if info is not None:
                out.append(info)
            else:  # listed but not readable yet: a push still writing its tag link
                self.incomplete.add(repo)
        return out


class CatalogService:
    """The index file, its upkeep from the registry at `registry_url`, and the routes above."""

    def __init__(self, path: Path, registry_url: str, secret: str, mint: Minter,
                 storage: Path | None = None) -> None:
        self.path = path
        self.registry_url = registry_url
        self.storage = storage
        self.secret = secret
        self.mint = mint
        self.index = CatalogIndex(path)
        self.pending: dict[str, dict[str, float]] = {}
        self.wake = asyncio.Event()  # events arrived
        self.asked = asyncio.Event()  # a rebuild was asked for
        self.touched: set[str] = set()  # repositories events named during a rebuild
        self.retries: dict[str, int] = {}  # repository -> reads again so far for a tag not readable yet
        self.rebuild_requested = self.index.built is None
        self.rebuilding = False
        self.failures = 0  # reads of the registry failed in a row (the pause doubles)
        self.error: str | None = None  # what /healthz says while they fail
        self.last_reader: RegistryReader | None = None

    def install(self, app: web.Application) -> None:
        app.router.add_post(EVENTS_PATH, self.events)
        app.router.add_post(EVENTS_PATH + "/rebuild", self.rebuild_request)
        app.router.add_get(INDEX_PREFIX + "/repositories", self.repositories)
        app.router.add_get(INDEX_PREFIX + "/namespaces", self.namespaces)
        app.router.add_get(INDEX_PREFIX + "/tags/{name:.+}", self.tags)
        app.cleanup_ctx.append(self._background)

    async def _background(self, app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(self.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.index.close()

    # -- upkeep --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Refresh the repositories events named, and rebuild when asked or due, side by side (a
        rebuild of a large registry takes minutes; events are not held back meanwhile). Registry
        failures are logged and retried after a pause, never fatal."""
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session, asyncio.TaskGroup() as tasks:
            tasks.create_task(self._rebuilds(session))
            while True:
                while self.pending:
                    repo, pushed = self.pending.popitem()
                    if self.rebuilding:
                        self.touched.add(repo)
                    await self._guarded(self.refresh(session, repo, pushed))
                self.wake.clear()
                await self.wake.wait()

    async def _rebuilds(self, session: aiohttp.ClientSession) -> None:
        while True:
            due = (self.index.built or 0) + REBUILD_EVERY
            if self.rebuild_requested or time.time() >= due:
                self.rebuild_requested = False
                await self._guarded(self.rebuild(session))
                for repo in self.touched:  # read again: the rebuild may have written an older view
                    self.pending.setdefault(repo, {})
                self.touched.clear()
                self.wake.set()
                continue
            self.asked.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(1.0, min(due - time.time(), 600.0))):
                    await self.asked.wait()

    async def _guarded(self, job: Any) -> None:
        try:
            await job
        except RegistryError as e:
            # 5 s, doubling to 5 min while the registry stays away: a stopped registry costs a
            # log line every few minutes, not 720 an hour
            pause = min(MAX_PAUSE, 5.0 * 2 ** self.failures)
            self.failures += 1
            self.error = f"cannot read the registry ({e}) for {self.failures} tries; the page reads it itself"
            log.warning("catalog index: cannot read the registry (%s); trying again in %.0f s", e, pause)
            await asyncio.sleep(pause)
            self.rebuild_requested = self.rebuild_requested or self.index.built is None
        except Exception:  # the index is a convenience: it must never stop the service
            log.exception("catalog index: update failed")
            await asyncio.sleep(5)
        else:
            if self.failures:
                log.info("catalog index: the registry answers again")
            self.failures, self.error = 0, None

    async def refresh(self, session: aiohttp.ClientSession, repo: str, pushed: dict[str, float]) -> None:
        """Read `repo` again. The registry notifies a manifest push before it writes the tag's
        link, so a tag listed but not readable yet is read again RETRY_AFTER seconds later (at
        most RETRIES times), keeping the push times."""
        reader = RegistryReader(self.registry_url, self.mint, session, self.storage)
        self.index.replace_repository(repo, await reader.repository(repo), pushed)
        tries = self.retries.pop(repo, 0)
        if repo in reader.incomplete and tries < RETRIES:
            def again() -> None:
                self.retries[repo] = tries + 1
                self.pending.setdefault(repo, {}).update(pushed)
                self.wake.set()

            asyncio.get_running_loop().call_later(RETRY_AFTER, again)

    async def rebuild(self, session: aiohttp.ClientSession) -> None:
        """Read every repository again; names the catalog no longer lists are dropped."""
        self.rebuilding = True
        started = time.monotonic()
        reader = RegistryReader(self.registry_url, self.mint, session, self.storage)
        self.last_reader = reader
        try:
            names = await reader.catalog()
            queue = iter(names)

            async def worker() -> None:
                for name in queue:
                    self.index.replace_repository(name, await reader.repository(name))

            async with asyncio.TaskGroup() as tasks:
                for _ in range(READERS):
                    tasks.create_task(worker())
            self.index.forget_missing(set(names))
            self.index.mark_built()
        finally:
            self.rebuilding = False
        log.info("catalog index rebuilt: %d repositories, %d registry requests, %.1f s",
                 len(names), reader.requests, time.monotonic() - started)

    # -- routes --------------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        return bool(self.secret) and hmac.compare_digest(header.encode(), f"Bearer {self.secret}".encode())

    async def events(self, request: web.Request) -> web.Response:
        if self.secret and not self._authorized(request):  # without one, events are hints from anyone
            return web.json_response({"error": "unauthorized"}, status=401)
        try:
            envelope = json.loads(await request.read())
            events = envelope.get("events") or []
        except (ValueError, AttributeError):
            return web.json_response({"error": "not a notification envelope"}, status=400)
        for event in events if isinstance(events, list) else []:
            if not isinstance(event, dict) or event.get("action") not in ("push", "delete"):
                continue
            target = event.get("target") or {}
            repo = target.get("repository")
            if not isinstance(repo, str) or not REPOSITORY.fullmatch(repo):
                continue
            pushed = self.pending.setdefault(repo, {})
            if event.get("action") == "push" and target.get("tag"):
                pushed[str(target["tag"])] = time.time()
        self.wake.set()
        return web.Response(status=200)

    async def rebuild_request(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        self.rebuild_requested = True
        self.asked.set()
        return web.json_response({"rebuild": "scheduled"}, status=202)

    def _not_ready(self) -> web.Response | None:
        if self.index.built is None:
            return web.json_response({"error": "the catalog index is being built"}, status=503,
                                     headers={"Retry-After": "30", "Cache-Control": "no-store"})
        return None

    async def repositories(self, request: web.Request) -> web.Response:
        if (busy := self._not_ready()) is not None:
            return busy
        q = request.query
        try:
            offset, n = int(q.get("offset", "0")), int(q.get("n", "100"))
        except ValueError:
            return web.json_response({"error": "offset and n are numbers"}, status=400)
        sort = q.get("sort", "name")
        if sort not in SORTS or offset < 0 or not 0 < n <= MAX_PAGE:
            return web.json_response({"error": f"sort is one of {', '.join(SORTS)}; n is 1 to {MAX_PAGE}"},
                                     status=400)
        page = self.index.repositories(q.get("q", ""), q.get("namespace"), sort, offset, n)
        return web.json_response({"repositories": page.rows, "total": page.total, "offset": page.offset,
                                  "built": self.index.built}, headers={"Cache-Control": "no-store"})

    async def namespaces(self, request: web.Request) -> web.Response:
        if (busy := self._not_ready()) is not None:
            return busy
        return web.json_response({"namespaces": self.index.namespaces(request.query.get("q", ""))},
                                 headers={"Cache-Control": "no-store"})

    async def tags(self, request: web.Request) -> web.Response:
        if (busy := self._not_ready()) is not None:
            return busy
        tags = self.index.tags(request.match_info["name"])
        if tags is None:
            return web.json_response({"error": "not in the index"}, status=404)
        return web.json_response({"tags": tags}, headers={"Cache-Control": "no-store"})
