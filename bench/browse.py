"""Benchmark: the browse page at 100, 1,000 and 5,000 repositories (3 tags each), this page
against the one it replaced (bench/old-ui/, the page as of commit b2bcd14), in the same stack
(real nginx, registry, token service, without the catalog index: bench/catalog.py times that;
tests/helpers/stack.py), in headless Chromium with an empty
cache for every load. Prints a Markdown table.

    .venv/bin/python bench/browse.py [--sizes 100,1000,5000]

Measured per page load, from navigation start:
- first paint: the first repository row in the document; requests the page had made by then
  (resource timing entries: the page's own files and its registry requests)
- settled: the last response before 1 s without requests; every request the browser made by
  then, the document and icon included (what a visitor's first screen costs: the old page
  reads everything, this one only what is in view)
- search: typing the name of the last repository in the catalog (past the first 1,000 for
  the larger sizes), until its row shows; requests it took (the old page never finds it)

Repositories beyond the first are made on the registry's storage (tests/registry_fill.py), all
pointing at one pushed image with three tags.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.helpers

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from tests.helpers.registry_fill import clone_repositories  # noqa: E402
from tests.helpers.stack import DOMAIN, USERS, Stack, push_image, running_stack  # noqa: E402

PAGES = {"old": ROOT / "bench" / "old-ui", "new": ROOT / "nginx" / "ui"}
TAGS = ["1.0", "1.1", "latest"]

# Runs in the page before its own scripts: notes the first repository row, and keeps every
# resource timing entry (the buffer holds 250 by default; the old page makes thousands).
PROBE = """
performance.setResourceTimingBufferSize(1000000);
new MutationObserver((_, observer) => {
  if (document.querySelector('.repo')) {
    window.__firstPaint = { t: performance.now(), n: performance.getEntriesByType('resource').length };
    observer.disconnect();
  }
}).observe(document, { childList: true, subtree: true });
"""


def spki_pin(stack: Stack) -> str:
    cert = x509.load_pem_x509_certificate((stack.certs / "live" / DOMAIN / "cert.pem").read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def install_page(ui_root: Path, which: str) -> None:
    for f in ui_root.iterdir():
        f.unlink()
    for f in PAGES[which].iterdir():
        shutil.copy(f, ui_root / f.name)


def wait_quiet(requests: list[str], quiet: float = 1.0, limit: float = 300.0) -> None:
    """Until no request has started for `quiet` seconds (Playwright's networkidle is 0.5 s)."""
    deadline = time.monotonic() + limit
    seen, since = len(requests), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if len(requests) != seen:
            seen, since = len(requests), time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


def measure(browser: Any, stack: Stack, last_repo: str) -> dict[str, Any]:
    context = browser.new_context(viewport={"width": 1366, "height": 900}, bypass_csp=True)
    try:
        page = context.new_page()
        page.add_init_script(PROBE)
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        response = page.goto(f"https://{stack.host}/", wait_until="commit")
        assert response is not None and response.status == 200, response and response.status
        page.wait_for_selector(".repo", timeout=600_000)
        page.wait_for_function("window.__firstPaint !== undefined")
        first = page.evaluate("window.__firstPaint")
        page.wait_for_function("document.getElementById('status').textContent !== 'Loading…'", timeout=600_000)
        wait_quiet(requests)
        last = page.evaluate("Math.max(...performance.getEntriesByType('resource').map((e) => e.responseEnd))")
        settled = {"t": last, "n": len(requests)}
        before = len(requests)
        started = time.monotonic()
        page.fill("#search", last_repo)
        row = page.locator(".repo:visible", has_text=last_repo)
        try:
            row.first.wait_for(timeout=60_000)
            search: dict[str, Any] = {"found": True, "t": (time.monotonic() - started) * 1000}
        except Exception:
            search = {"found": False, "t": None}
        wait_quiet(requests)
        search["n"] = len(requests) - before
        return {"first": first, "settled": settled, "search": search}
    finally:
        context.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,5000", help="repository counts, ascending (default: %(default)s)")
    args = parser.parse_args()
    try:
        sizes = sorted(int(s) for s in args.sizes.split(","))
        assert sizes and sizes[0] >= 1
    except (ValueError, AssertionError):
        print(f"browse.py: --sizes wants positive integers separated by commas, not {args.sizes!r}", file=sys.stderr)
        return 2
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-browse-") as tmp:
        Path(tmp).chmod(0o755)  # nginx's workers (nobody) read the page from here
        ui_root = Path(tmp) / "ui"
        ui_root.mkdir()
        with running_stack(Path(tmp) / "stack", ui_root=ui_root, catalog_index=False) as stack:
            writer = stack.token("repository:base/img:pull,push", basic=("alice", USERS["alice"]))
            for tag in TAGS:
                push_image(stack, "base/img", tag, writer, layer=b"layer" * 200)
            made = 1
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=[
                    f"--host-resolver-rules=MAP {DOMAIN} 127.0.0.1",
                    f"--ignore-certificate-errors-spki-list={spki_pin(stack)}",
                    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                ])
                for size in sizes:
                    clone_repositories(stack, "base/img", [f"bulk/r{i:05d}" for i in range(made - 1, size - 1)], TAGS)
                    made = size
                    last = f"bulk/r{size - 2:05d}" if size > 1 else "base/img"
                    for which in ("old", "new"):
                        install_page(ui_root, which)
                        result = measure(browser, stack, last)
                        rows.append((size, which, result))
                        print(f"{size} {which}: {result}", file=sys.stderr, flush=True)
                browser.close()
    print(
        "| repositories | page | first paint: requests | first paint: ms | settled: requests | settled: ms "
        "| search for the last: requests | search: ms |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for size, which, r in rows:
        s = r["search"]
        found = f"{s['t']:.0f}" if s["found"] else "not found"
        print(
            f"| {size:,} | {which} | {r['first']['n']} | {r['first']['t']:.0f} | {r['settled']['n']} "
            f"| {r['settled']['t']:.0f} | {s['n']} | {found} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
