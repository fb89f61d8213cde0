"""Benchmark: the catalog index (acmebox/registry/catalog.py, events.py) at 10,000 repositories in
the real stack (nginx, registry, token service, acmebox; tests/helpers/stack.py): how long a
rebuild from the registry's API takes, how fast `/ui-index/repositories?q=` answers through nginx
(one kept-alive TLS connection, as a browser holds it), and the browse page's search in headless
Chromium from typing to the row on screen, for a name deep in the catalog. Prints a Markdown table.

    .venv/bin/python bench/catalog.py [--size 10000] [--runs 50]
"""

from __future__ import annotations

import argparse
import http.client
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.helpers and bench.browse

from playwright.sync_api import sync_playwright  # noqa: E402

from bench.browse import measure, spki_pin  # noqa: E402
from tests.helpers.registry_fill import clone_repositories  # noqa: E402
from tests.helpers.stack import DOMAIN, NOTIFY_SECRET, USERS, push_image, running_stack  # noqa: E402

TAGS = ["1.0", "1.1", "latest"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10_000, help="repositories (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=50, help="searches timed (default: %(default)s)")
    args = parser.parse_args()
    if args.size < 2 or args.runs < 1:
        print("catalog.py: --size must be 2 or more and --runs 1 or more", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-catalog-") as tmp, running_stack(Path(tmp) / "stack") as stack:
        writer = stack.token("repository:base/img:pull,push", basic=("alice", USERS["alice"]))
        for tag in TAGS:
            push_image(stack, "base/img", tag, writer, layer=b"layer" * 200)
        names = [f"ns{i % 20:02d}/r{i:05d}" for i in range(args.size - 1)]
        clone_repositories(stack, "base/img", names, TAGS)
        conn = http.client.HTTPConnection("127.0.0.1", stack.acmebox_port, timeout=10)
        conn.request("POST", "/registry-events/rebuild", headers={"Authorization": f"Bearer {NOTIFY_SECRET}"})
        assert conn.getresponse().status == 202
        conn.close()
        log = stack.run / "acmebox.log"
        deadline = time.monotonic() + 1800
        while not re.search(rf"catalog index rebuilt: {args.size} repositories", log.read_text()):
            assert time.monotonic() < deadline, "rebuild did not finish"
            time.sleep(0.5)
        rebuilt = re.findall(rf"catalog index rebuilt: {args.size} repositories, (\d+) registry requests, ([\d.]+) s",
                             log.read_text())[-1]

        tls = http.client.HTTPSConnection("127.0.0.1", stack.https_port, context=stack.tls_context(), timeout=30)
        tls.sock = stack.tls_context().wrap_socket(socket.create_connection(("127.0.0.1", stack.https_port)),
                                                   server_hostname=DOMAIN)
        timings = []
        for i in range(args.runs):
            q = names[-1 - (i * 97) % len(names)].split("/")[1]
            started = time.perf_counter()
            tls.request("GET", f"/ui-index/repositories?q={q}&n=100", headers={"Host": stack.host})
            r = tls.getresponse()
            body = r.read()
            timings.append((time.perf_counter() - started) * 1000)
            assert r.status == 200 and q.encode() in body, (r.status, body[:200])
        tls.close()
        with sync_playwright() as p:
            chromium = shutil.which("chromium") or "/usr/bin/chromium"
            browser = p.chromium.launch(executable_path=chromium, args=[
                f"--host-resolver-rules=MAP {DOMAIN} 127.0.0.1",
                f"--ignore-certificate-errors-spki-list={spki_pin(stack)}",
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
            ])
            page = measure(browser, stack, names[-1])
            browser.close()
    timings.sort()
    p95 = timings[min(len(timings) - 1, int(len(timings) * 0.95))]
    print("| repositories | rebuild: registry requests | rebuild: s | search via nginx: median ms | p95 ms "
          "| page: first paint requests | first paint ms | page search: requests | page search: ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    s = page["search"]
    print(f"| {args.size:,} | {int(rebuilt[0]):,} | {float(rebuilt[1]):.0f} | {statistics.median(timings):.1f} "
          f"| {p95:.1f} | {page['first']['n']} | {page['first']['t']:.0f} | {s['n']} "
          f"| {s['t']:.0f} |" if s["found"] else "| not found |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
