"""The catalog index's store (acmebox/registry/catalog.py) and the input rules of the registry's
operations (acmebox/operations.py), without a registry: what a row holds after a push, a
delete, a rebuild; search, namespaces, order by push, paging; refused settings."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from acmebox.errors import ConfigError
from acmebox.operations import CatalogSettings, GcSettings, check_storage
from acmebox.registry.catalog import CatalogIndex, TagInfo, version_key
from acmebox.registry.maintenance import Maintenance, flag_path, read_flag, write_flag

IMG = "application/vnd.oci.image.manifest.v1+json"


def tag(name: str, digest: str, size: int = 100, created: str | None = "2026-11-01T08:00:00Z") -> TagInfo:
    return TagInfo(name, digest, IMG, size, ("linux/amd64",), created)


def test_rows_follow_pushes_deletes_and_rebuilds(tmp_path: Path) -> None:
    index = CatalogIndex(tmp_path / "catalog.sqlite")
    assert index.built is None  # missing: the service rebuilds
    index.replace_repository("team/app", [tag("1.0", "sha256:a"), tag("1.1", "sha256:b", 50), tag("v2", "sha256:a")],
                             pushed={"1.1": 1_800_000_000.0})
    index.replace_repository("other", [tag("latest", "sha256:c", 7)])
    page = index.repositories()
    assert [r["name"] for r in page.rows] == ["other", "team/app"] and page.total == 2
    app = page.rows[1]
    assert app["tags"] == 3 and app["size"] == 150  # distinct digests only
    assert app["namespace"] == "team" and app["top_tags"] == ["v2", "1.1", "1.0"]
    assert app["last_push"] == 1_800_000_000.0
    # a refresh after a delete keeps the push times it knew
    index.replace_repository("team/app", [tag("1.1", "sha256:b", 50)])
    assert index.tags("team/app") == [{"tag": "1.1", "digest": "sha256:b", "media_type": IMG, "size": 50,
                                       "platforms": ["linux/amd64"], "created": "2026-11-01T08:00:00Z",
                                       "pushed": 1_800_000_000.0}]
    index.replace_repository("team/app", [])  # every tag gone: not listed
    assert index.tags("team/app") is None and index.count() == 1
    index.replace_repository("team/app", [tag("1", "sha256:d")])
    assert index.forget_missing({"other"}) == 1 and index.count() == 1
    index.mark_built(123.0)
    index.close()
    assert CatalogIndex(tmp_path / "catalog.sqlite").built == 123.0  # it is a file: kept across restarts


def test_search_namespaces_order_and_pages(tmp_path: Path) -> None:
    index = CatalogIndex(tmp_path / "catalog.sqlite")
    now = time.time()
    for i in range(250):
        index.replace_repository(f"ns{i % 5}/app-{i:03d}", [tag("1", f"sha256:{i}")], pushed={"1": now - i})
    index.replace_repository("top", [tag("1", "sha256:x", created=None)])
    found = [r["name"] for r in index.repositories(q="APP-24").rows]
    assert found == sorted(f"ns{i % 5}/app-{i}" for i in range(240, 250))
    assert index.repositories(q="app-249").total == 1
    assert index.namespaces()[0] == {"namespace": "", "repositories": 1, "last_push": None}
    assert [n["repositories"] for n in index.namespaces()[1:]] == [50] * 5
    assert [n["namespace"] for n in index.namespaces(q="app-001")] == ["ns1"]
    by_push = index.repositories(sort="push", limit=3).rows
    assert [r["name"] for r in by_push] == ["ns0/app-000", "ns1/app-001", "ns2/app-002"]
    assert index.repositories(sort="push", offset=250).rows[0]["name"] == "top"  # unknown push time: last
    page = index.repositories(namespace="ns3", offset=40, limit=100)
    assert page.total == 50 and len(page.rows) == 10 and page.rows[0]["name"] == "ns3/app-203"
    assert len(index.repositories(limit=5000).rows) == 251  # at most 1,000 a page


def test_version_order_is_the_pages() -> None:
    tags = ["v10", "v2", "latest", "1.10", "1.9", "v1"]
    assert sorted(tags, key=version_key, reverse=True) == ["latest", "v10", "v2", "v1", "1.10", "1.9"]


@pytest.mark.parametrize(("url", "secret", "auth", "error"), [
    (None, None, None, None),
    ("http://registry:5000", "0123456789abcdef", Path("/h"), None),
    ("registry:5000", "0123456789abcdef", Path("/h"), "want the registry's URL"),
    ("http://registry:5000/?x=1", "0123456789abcdef", Path("/h"), "want the registry's URL"),
    ("http://registry:5000", "short", Path("/h"), "16 or more"),
    ("http://registry:5000", "with a space in it!", Path("/h"), "16 or more"),
    ("http://registry:5000", None, Path("/h"), None),  # events unauthenticated (a warning at start)
    ("http://registry:5000", "", Path("/h"), None),
    ("http://registry:5000", "0123456789abcdef", None, "needs --auth-htpasswd"),
    (None, "0123456789abcdef", None, "--catalog-registry"),
])
def test_catalog_settings(url: str | None, secret: str | None, auth: Path | None, error: str | None) -> None:
    if error is None:
        settings = CatalogSettings.build(url, secret, auth)
        assert (settings is None) == (url is None)
    else:
        with pytest.raises(ConfigError, match=error):
            CatalogSettings.build(url, secret, auth)


def test_gc_and_storage_settings(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text("version: 0.1\n")
    good = {"config": None, "command": "docker compose run --rm registry garbage-collect /c.yml",
            "storage": tmp_path, "certs_dir": tmp_path, "delete_untagged": True, "drain": 0.0, "expect": 60.0}
    s = GcSettings.build(**good)  # type: ignore[arg-type]
    assert s.command == ("docker", "compose", "run", "--rm", "registry", "garbage-collect", "/c.yml")
    for change, error in [({"storage": None}, "needs --registry-storage"),
                          ({"storage": tmp_path / "nope"}, "not a directory"),
                          ({"certs_dir": tmp_path / "nope"}, "--certs-dir"),
                          ({"drain": -1.0}, "--drain"), ({"expect": 5.0}, "--expect"),
                          ({"command": "'unclosed"}, "--registry-command"),
                          ({"command": None, "config": None}, "--registry-config"),
                          ({"command": None, "config": tmp_path / "missing.yml"}, "--registry-config")]:
        with pytest.raises(ConfigError, match=error):
            GcSettings.build(**{**good, **change})  # type: ignore[arg-type]
    assert check_storage(None) is None
    with pytest.raises(ConfigError, match="--registry-storage"):
        check_storage(config)


def test_the_maintenance_flag(tmp_path: Path) -> None:
    flag = flag_path(tmp_path)
    assert read_flag(flag) is None
    m = write_flag(flag, "garbage collection", 120)
    assert read_flag(flag) == m and flag.stat().st_mode & 0o777 == 0o644  # nginx's workers read it
    assert 115 <= m.retry_after() <= 120 and "read-only for maintenance (garbage collection)" in m.message()
    flag.write_text("garbage")  # unreadable still means maintenance
    broken = read_flag(flag)
    assert isinstance(broken, Maintenance) and broken.retry_after() >= 5


@pytest.mark.parametrize(("fill_kib", "code", "says"), [
    (1024, 0, r"registry storage .*: 2\d% of its filesystem used$"),
    (3700, 0, r"registry storage .*: WARNING 9\d% of its filesystem used \(delete old tags, then `acmebox gc`\)$"),
    (4000, 1, r"registry storage .*: 9\d% of its filesystem used; pushes will fail soon"),
])
def test_status_warns_before_the_registry_disk_is_full(tmp_path: Path, fill_kib: int, code: int, says: str) -> None:
    """`acmebox status --registry-storage` on a real 4 MiB tmpfs (a private mount namespace)
    filled to about a quarter, 90 % and 98 %: the line /healthz gives too, and exit 1 at the last."""
    storage, certs, state = tmp_path / "registry", tmp_path / "certs", tmp_path / "state"
    for d in (storage, certs, state):
        d.mkdir()
    script = (f"mount -t tmpfs -o size=4m acmebox-test {storage} && "
              f"head -c {fill_kib * 1024} /dev/zero > {storage}/blob && "
              f"exec {sys.executable} -m acmebox status --certs-dir {certs} --state-dir {state} "
              f"--registry-storage {storage}")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == code, (done.stdout, done.stderr)
    assert re.search(says, done.stdout.strip().splitlines()[-1]), done.stdout
    assert "Traceback" not in done.stderr


def _gc(tmp_path: Path, seconds: str, *extra: str) -> subprocess.Popen[str]:
    """`acmebox gc` whose collector is `sleep SECONDS` (what it does to the registry is test_gc's;
    here it is how gc holds, stops and hands back the maintenance flag)."""
    (tmp_path / "storage").mkdir(exist_ok=True)
    (tmp_path / "certs").mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "acmebox", "gc", "--certs-dir", str(tmp_path / "certs"),
                             "--registry-storage", str(tmp_path / "storage"), "--drain", "0",
                             "--registry-command", f"sleep {seconds}", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _sleeping(seconds: str) -> list[int]:
    """PIDs of `sleep SECONDS` processes (the collector; SECONDS is unique to the test)."""
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", seconds.encode()]:
                found.append(int(proc.name))
    return found


def test_gc_stopped_by_sigterm_lowers_the_flag_and_stops_the_collector(tmp_path: Path) -> None:
    gc = _gc(tmp_path, "307.1")
    flag = flag_path(tmp_path / "certs")
    _wait_for(lambda: bool(_sleeping("307.1")), "the collector running")
    assert flag.exists()
    gc.send_signal(signal.SIGTERM)
    _, err = gc.communicate(timeout=30)
    assert gc.returncode == 1 and "stopped by SIGTERM" in err.strip().splitlines()[-1], err
    assert "Traceback" not in err
    assert not flag.exists()
    _wait_for(lambda: not _sleeping("307.1"), "the collector stopped too")


def test_a_second_gc_is_refused_while_one_runs(tmp_path: Path) -> None:
    first = _gc(tmp_path, "307.2")
    flag = flag_path(tmp_path / "certs")
    try:
        _wait_for(lambda: bool(_sleeping("307.2")), "the first collector running")
        second = _gc(tmp_path, "307.3")
        _, err = second.communicate(timeout=30)
        assert second.returncode == 1 and "another acmebox gc is running" in err, err
        assert flag.exists() and not _sleeping("307.3")  # the first run's flag stays up
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
    assert not flag.exists()


def test_a_collector_past_its_timeout_is_stopped(tmp_path: Path) -> None:
    gc = _gc(tmp_path, "307.4", "--timeout", "1")
    _, err = gc.communicate(timeout=60)
    assert gc.returncode == 1 and "did not finish in 1 s (--timeout): stopped" in err, err
    assert not flag_path(tmp_path / "certs").exists() and not _sleeping("307.4")
