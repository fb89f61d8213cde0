"""The catalog index: what the registry holds, in SQLite in the state dir, so the browse page can
search, group and sort thousands of repositories at once. It is a copy, never the source of truth:
the registry decides what may be pulled, and the index is rebuilt from the registry's API whenever
it is missing or behind (events.py fills it; this module only stores and answers).

Tables:
    repos(name, namespace, tag_count, size, last_push, refreshed)
        namespace  the name up to its last `/` ('' for a top-level name)
        size       bytes of the distinct manifests' blobs (config + layers, per platform), as a pull
                   of every tag would download them at most
        last_push  UNIX seconds of the newest push event seen, else the newest image's build time
    tags(repo, tag, digest, media_type, size, platforms, created, pushed)
        platforms  JSON list of `os/arch[/variant]`; created: the image config's RFC 3339 time
    meta(key, value)  `built` (UNIX seconds of the last complete rebuild), `schema`

One connection, used from the event loop's thread only (answers take milliseconds at 10,000
repositories: `instr` over one indexed table).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = "1"
MAX_PAGE = 1000
SORTS = ("name", "push")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS repos (
    name TEXT PRIMARY KEY, namespace TEXT NOT NULL, tag_count INTEGER NOT NULL, size INTEGER NOT NULL,
    last_push REAL, refreshed REAL NOT NULL);
CREATE INDEX IF NOT EXISTS repos_namespace ON repos(namespace, name);
CREATE INDEX IF NOT EXISTS repos_push ON repos(last_push DESC, name);
CREATE TABLE IF NOT EXISTS tags (
    repo TEXT NOT NULL, tag TEXT NOT NULL, digest TEXT NOT NULL, media_type TEXT NOT NULL,
    size INTEGER NOT NULL, platforms TEXT NOT NULL, created TEXT, pushed REAL,
    PRIMARY KEY (repo, tag));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def namespace_of(name: str) -> str:
    return name.rpartition("/")[0]


@dataclass(frozen=True)
class TagInfo:
    """One tag as the registry serves it: `size` in bytes (config + layers; for an index, the sum
    over its platforms), `platforms` as `os/arch[/variant]`, `created` RFC 3339 or None."""

    tag: str
    digest: str
    media_type: str
    size: int
    platforms: tuple[str, ...] = ()
    created: str | None = None


@dataclass(frozen=True)
class Page:
    """One page of repositories: `rows` (dicts ready for JSON), `total` matching, `offset`."""

    rows: list[dict[str, Any]]
    total: int
    offset: int
    namespaces: list[dict[str, Any]] = field(default_factory=list)


def _created_seconds(created: str | None) -> float | None:
    if not created:
        return None
    import datetime as dt

    try:
        return dt.datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class CatalogIndex:
    """The SQLite file at `path` (made with its tables if missing). sqlite3.Error escapes only from
    the constructor; callers treat a broken file by deleting it and building again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        if self._meta("schema") not in (None, SCHEMA_VERSION):
            self.db.executescript("DELETE FROM repos; DELETE FROM tags; DELETE FROM meta;")
        self._set_meta("schema", SCHEMA_VERSION)

    def close(self) -> None:
        self.db.close()

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    @property
    def built(self) -> float | None:
        """When the last complete rebuild ended (UNIX seconds), None if never: the index is missing."""
        value = self._meta("built")
        return None if value is None else float(value)

    def mark_built(self, when: float | None = None) -> None:
        self._set_meta("built", repr(when if when is not None else time.time()))

    # -- writing -------------------------------------------------------------------------------

    def replace_repository(self, name: str, tags: list[TagInfo], pushed: dict[str, float] | None = None) -> None:
        """`name` holds exactly `tags` now (none: it is gone from the index). `pushed` gives push
        times (UNIX seconds) by tag for the tags an event just pushed; others keep theirs."""
        pushed = pushed or {}
        with self.db:
            self.db.execute("BEGIN")
            old = dict(self.db.execute("SELECT tag, pushed FROM tags WHERE repo = ?", (name,)).fetchall())
            self.db.execute("DELETE FROM tags WHERE repo = ?", (name,))
            if not tags:
                self.db.execute("DELETE FROM repos WHERE name = ?", (name,))
                return
            sizes: dict[str, int] = {}
            newest: float | None = None
            for t in tags:
                when = pushed.get(t.tag, old.get(t.tag))
                self.db.execute(
                    "INSERT INTO tags(repo, tag, digest, media_type, size, platforms, created, pushed)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (name, t.tag, t.digest, t.media_type, t.size, json.dumps(list(t.platforms)), t.created, when),
                )
                sizes[t.digest] = t.size
                for candidate in (when, _created_seconds(t.created)):
                    if candidate is not None and (newest is None or candidate > newest):
                        newest = candidate
                        break
            self.db.execute(
                "INSERT OR REPLACE INTO repos(name, namespace, tag_count, size, last_push, refreshed)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (name, namespace_of(name), len(tags), sum(sizes.values()), newest, time.time()),
            )

    def forget_missing(self, present: set[str]) -> int:
        """Drop repositories not in `present` (the registry's catalog); returns how many."""
        gone = [n for (n,) in self.db.execute("SELECT name FROM repos").fetchall() if n not in present]
        for name in gone:
            self.replace_repository(name, [])
        return len(gone)

    # -- reading -------------------------------------------------------------------------------

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM repos").fetchone()[0])

    def repositories(self, q: str = "", namespace: str | None = None, sort: str = "name", offset: int = 0,
                     limit: int = 100, top: int = 3) -> Page:
        """Repositories whose name contains `q` (case-insensitive), optionally in one `namespace`,
        by name or by last push (newest first), `limit` (at most MAX_PAGE) from `offset`; each row
        with its tag count, size, last push and its `top` highest tags by version."""
        where: list[str] = ["1"]
        args: list[str | int] = []
        if q:
            where.append("instr(name, ?) > 0")
            args.append(q.lower())
        if namespace is not None:
            where.append("namespace = ?")
            args.append(namespace)
        cond = " AND ".join(where)
        order = "last_push IS NULL, last_push DESC, name" if sort == "push" else "name"
        total = int(self.db.execute(f"SELECT count(*) FROM repos WHERE {cond}", args).fetchone()[0])
        rows = self.db.execute(
            f"SELECT name, namespace, tag_count, size, last_push FROM repos WHERE {cond} ORDER BY {order}"
            " LIMIT ? OFFSET ?", [*args, max(0, min(limit, MAX_PAGE)), max(0, offset)],
        ).fetchall()
        out = []
        for name, ns, count, size, last_push in rows:
            tags = [t for (t,) in self.db.execute("SELECT tag FROM tags WHERE repo = ?", (name,)).fetchall()]
            out.append({"name": name, "namespace": ns, "tags": count, "size": size, "last_push": last_push,
                        "top_tags": sorted(tags, key=version_key, reverse=True)[:top]})
        return Page(out, total, offset)

    def namespaces(self, q: str = "") -> list[dict[str, Any]]:
        """Every namespace with how many repositories (matching `q`) it holds, by name."""
        cond, args = ("instr(name, ?) > 0", [q.lower()]) if q else ("1", [])
        rows = self.db.execute(
            f"SELECT namespace, count(*), max(last_push) FROM repos WHERE {cond} GROUP BY namespace ORDER BY namespace",
            args,
        ).fetchall()
        return [{"namespace": ns, "repositories": n, "last_push": lp} for ns, n, lp in rows]

    def tags(self, repo: str) -> list[dict[str, Any]] | None:
        """The tags of `repo` with digest, media type, size, platforms, build and push time; None
        when the index does not know `repo`."""
        if self.db.execute("SELECT 1 FROM repos WHERE name = ?", (repo,)).fetchone() is None:
            return None
        rows = self.db.execute(
            "SELECT tag, digest, media_type, size, platforms, created, pushed FROM tags WHERE repo = ?", (repo,)
        ).fetchall()
        return [{"tag": t, "digest": d, "media_type": m, "size": s, "platforms": json.loads(p), "created": c,
                 "pushed": pu} for t, d, m, s, p, c, pu in sorted(rows, key=lambda r: version_key(r[0]), reverse=True)]

    def total_size(self) -> int:
        return int(self.db.execute("SELECT coalesce(sum(size), 0) FROM repos").fetchone()[0])


def version_key(tag: str) -> tuple[int, list[tuple[int, int | str]]]:
    """Natural order (`v2` < `v10`, `1.9` < `1.10`), `latest` above everything: the page's order."""
    import re

    parts: list[tuple[int, int | str]] = [(0, int(p)) if p.isdigit() else (1, p)
                                          for p in re.findall(r"\d+|[^\d]+", tag)]
    return (1 if tag == "latest" else 0, parts)
