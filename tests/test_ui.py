"""The browse page in headless Chromium (Debian's, driven by Playwright): it lists what was
pushed with a copy-able pull line, filters with the search box, and fits a phone's width.
Screenshots go to test-artifacts/."""

from __future__ import annotations

import base64
import hashlib
import shutil
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from stack import DOMAIN, USERS, Stack, push_image

pytestmark = pytest.mark.e2e
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def spki_pin(stack: Stack) -> str:
    """base64(SHA-256(SPKI)) of the served key: Chromium trusts exactly that key, nothing more."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((stack.certs / "live" / DOMAIN / "cert.pem").read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def test_browse_page_in_chromium(stack: Stack, tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.fail("chromium is not installed (Debian package chromium)")
    writer = stack.token("repository:test/ui:pull,push", basic=("alice", USERS["alice"]))
    digest = push_image(stack, "test/ui", "v1", writer, layer=b"x" * 2048)
    push_image(stack, "test/ui", "v2", writer, layer=b"y" * 10)
    ARTIFACTS.mkdir(exist_ok=True)

    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=[
                f"--host-resolver-rules=MAP {DOMAIN} 127.0.0.1",
                f"--ignore-certificate-errors-spki-list={spki_pin(stack)}",
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
            ],
        )  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"https://{stack.host}/")
            deadline = time.monotonic() + 20
            while (status := page.inner_text("#status")) == "Loading…" and time.monotonic() < deadline:
                time.sleep(0.1)  # (wait_for_function would need eval, which the page's CSP forbids)
            assert "repositor" in status, status
            page.wait_for_selector("text=test/ui", timeout=5000)
            pull = f"docker pull {stack.host}/test/ui:v1"
            assert page.locator(".pull-command", has_text=pull).count() == 1
            card = page.locator(".tag", has=page.locator(".pull-command", has_text=pull))
            assert card.locator(".digest").inner_text() == digest
            assert card.locator(".size").inner_text().endswith("KiB")
            assert "2026" in card.locator(".created").inner_text()
            page.screenshot(path=str(ARTIFACTS / "registry-ui.png"), full_page=True)

            page.fill("#search", "test/ui:v2")
            assert page.locator(".tag:not(.hidden)").count() == 1
            page.fill("#search", "no-such-image")
            assert page.locator(".repo:not(.hidden)").count() == 0
            page.fill("#search", "")
            assert errors == []

            phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
            phone.goto(f"https://{stack.host}/")
            phone.wait_for_selector("text=test/ui", timeout=20000)
            assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            phone.screenshot(path=str(ARTIFACTS / "registry-ui-phone.png"), full_page=True)
        finally:
            browser.close()
