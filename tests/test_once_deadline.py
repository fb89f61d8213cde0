"""`run --once` against a CA that trickles its answer (the fault proxy in front of a real
Pebble sends the newOrder answer one byte every 5 s, about half an hour in all): the run
reports the request deadline and ends; the worker thread left in the trickled answer does
not keep the process alive. A hang shows up as the subprocess timeout, far below the trickle."""

from __future__ import annotations

import subprocess

import pytest

from acmebox.client import REQUEST_DEADLINE
from tests.helpers.faultproxy import FaultProxy, Rule
from tests.helpers.pebble import Dirs, Pebble
from tests.helpers.process import run_acmebox

pytestmark = pytest.mark.e2e  # Pebble behind the fault proxy


def test_once_ends_at_its_deadline_with_a_trickling_ca(proxy: FaultProxy, pebble: Pebble, dirs: Dirs) -> None:
    proxy.add(Rule("/order-plz", "POST", action="trickle", every=5.0, times=1))
    args = ["--domain", "trickle.test", "--directory", proxy.directory, "--ca-bundle", str(pebble.ca_bundle),
            "--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state),
            "--listen", f"127.0.0.1:{pebble.http_port}", "--no-ari"]
    try:
        out = run_acmebox("run", "--once", *args, timeout=REQUEST_DEADLINE + 90)
    except subprocess.TimeoutExpired:
        pytest.fail("run --once did not end after reporting its deadline: a thread outlived the run")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"the CA did not answer within {REQUEST_DEADLINE:.0f}s" in out.stderr
    assert proxy.count("/order-plz") == 1
