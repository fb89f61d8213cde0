"""Prometheus metrics, served at /metrics on the challenge server's port.

deploy/alerts.yml holds the alert rules over these names (tests/test_alerts.py checks that
every name it uses is exported here).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"acmebox_certificate_{name}", doc, ["name"], registry=r)

        self.expiry = gauge("expiry_timestamp_seconds", "notAfter of the live certificate")
        self.not_before = gauge("not_before_timestamp_seconds", "notBefore of the live certificate")
        self.next_renewal = gauge("next_renewal_timestamp_seconds", "when the next renewal is scheduled")
        self.last_success = gauge("last_success_timestamp_seconds", "time of the last successful issuance")
        self.last_failure = gauge("last_failure_timestamp_seconds", "time of the last failed attempt")
        self.ari_start = gauge("ari_window_start_timestamp_seconds", "start of the CA's ARI window")
        self.ari_end = gauge("ari_window_end_timestamp_seconds", "end of the CA's ARI window")
        self.placeholder = gauge("placeholder", "1 while only a self-signed placeholder is live")
        self.served_expiry = gauge("served_expiry_timestamp_seconds", "notAfter of what the server presented")
        self.served_matches = gauge(
            "served_matches", "1 when the server presented the live certificate at the last look (--reload-verify)"
        )
        self.consecutive_failures = gauge(
            "consecutive_failures", "failed or held-back attempts in a row since the last success (persisted)"
        )
        self.held_until = Gauge(
            "acmebox_certificate_held_until_timestamp_seconds",
            "until when acmebox itself holds the next order back (problem: ledger, disk, clock)",
            ["name", "problem"],
            registry=r,
        )
        self._holds: dict[str, set[str]] = {}
        self.orders = Counter("acmebox_orders", "ACME orders sent", ["name"], registry=r)
        self.failures = Counter(
            "acmebox_failures", "failed attempts by ACME problem type", ["name", "problem"], registry=r
        )
        self.reloads = Counter(
            "acmebox_reloads", "server reloads by result (ok, failed, mismatch)", ["result"], registry=r
        )

    def watch_disks(self, dirs: Mapping[str, Path]) -> None:
        """Export free and total bytes of the filesystems holding `dirs` (label `dir`: the key,
        e.g. certs or state), read at each scrape."""
        self.registry.register(_DiskCollector(dict(dirs)))

    def held(self, name: str, problem: str, until: dt.datetime | None) -> None:
        """Record that `name`'s next order is held back by acmebox until `until` for `problem`;
        None clears every hold of `name` (after a success)."""
        if until is None:
            for held in self._holds.pop(name, set()):
                self.held_until.remove(name, held)
        else:
            self._holds.setdefault(name, set()).add(problem)
            self.held_until.labels(name, problem).set(until.timestamp())

    @staticmethod
    def set_time(gauge: Gauge, name: str, when: dt.datetime | None) -> None:
        if when is None:
            with contextlib.suppress(KeyError):
                gauge.remove(name)
        else:
            gauge.labels(name).set(when.timestamp())

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _DiskCollector(Collector):
    """statvfs of each watched directory (of its nearest existing parent before it exists)."""

    def __init__(self, dirs: dict[str, Path]) -> None:
        self.dirs = dirs

    def collect(self) -> Iterable[GaugeMetricFamily]:
        free = GaugeMetricFamily("acmebox_disk_free_bytes", "bytes available to acmebox on the filesystem of dir",
                                 labels=["dir", "path"])
        size = GaugeMetricFamily("acmebox_disk_size_bytes", "size of the filesystem of dir", labels=["dir", "path"])
        for label, path in self.dirs.items():
            probe = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
            try:
                st = os.statvfs(probe)
            except OSError:
                continue  # the series goes missing; the alert on absent data says so
            free.add_metric([label, str(path)], float(st.f_bavail * st.f_frsize))
            size.add_metric([label, str(path)], float(st.f_blocks * st.f_frsize))
        yield free
        yield size
