"""Debian's Chromium through Playwright, trusting exactly the stack's served key: the browser the
browse-page tests and benchmarks drive, and a page with a record of its requests and errors."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.helpers import ROOT
from tests.helpers.stack import DOMAIN, Stack

ARTIFACTS = ROOT / "test-artifacts"


def spki_pin(stack: Stack) -> str:
    """base64(SHA-256(SPKI)) of the served key: Chromium trusts exactly that key, nothing more."""
    cert = x509.load_pem_x509_certificate((stack.certs / "live" / DOMAIN / "cert.pem").read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()



@contextmanager
def chromium(stack: Stack) -> Iterator[Any]:
    """A launched Chromium that resolves the registry's name to loopback."""
    playwright = pytest.importorskip("playwright.sync_api")
    binary = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(binary).exists():
        pytest.fail("chromium is not installed (Debian package chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=binary,
            args=[
                f"--host-resolver-rules=MAP {DOMAIN} 127.0.0.1",
                f"--ignore-certificate-errors-spki-list={spki_pin(stack)}",
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
            ],
        )
        try:
            yield b
        finally:
            b.close()


class Page:
    """A fresh browser context (no cache, no storage) with a record of requests and errors."""

    def __init__(self, browser: Any, stack: Stack, width: int = 1280, height: int = 900, **options: Any) -> None:
        self.stack = stack
        self.context = browser.new_context(viewport={"width": width, "height": height}, **options)
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def open(self, fragment: str = "") -> Any:
        self.page.goto(f"https://{self.stack.host}/{fragment}")
        return self.page

    def paths(self, pattern: str) -> list[str]:
        return [u for u in self.requests if re.search(pattern, u)]

    def close(self) -> None:
        self.context.close()


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)
