"""Prometheus metrics, served at /metrics on the challenge server's port."""

from __future__ import annotations

import contextlib
import datetime as dt

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"acmebox_certificate_{name}", doc, ["name"], registry=r)

        self.expiry = gauge("expiry_timestamp_seconds", "notAfter of the live certificate")
        self.next_renewal = gauge("next_renewal_timestamp_seconds", "when the next renewal is scheduled")
        self.last_success = gauge("last_success_timestamp_seconds", "time of the last successful issuance")
        self.last_failure = gauge("last_failure_timestamp_seconds", "time of the last failed attempt")
        self.ari_start = gauge("ari_window_start_timestamp_seconds", "start of the CA's ARI window")
        self.ari_end = gauge("ari_window_end_timestamp_seconds", "end of the CA's ARI window")
        self.placeholder = gauge("placeholder", "1 while only a self-signed placeholder is live")
        self.orders = Counter("acmebox_orders", "ACME orders sent", ["name"], registry=r)
        self.failures = Counter(
            "acmebox_failures", "failed attempts by ACME problem type", ["name", "problem"], registry=r
        )
        self.reloads = Counter(
            "acmebox_reloads", "server reloads by result (ok, failed, mismatch)", ["result"], registry=r
        )

    @staticmethod
    def set_time(gauge: Gauge, name: str, when: dt.datetime | None) -> None:
        if when is None:
            with contextlib.suppress(KeyError):
                gauge.remove(name)
        else:
            gauge.labels(name).set(when.timestamp())

    def render(self) -> bytes:
        return generate_latest(self.registry)
