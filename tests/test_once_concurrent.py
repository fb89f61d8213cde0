"""`run --once` with many certificates: their steps run concurrently, orders bounded by
--max-concurrent-orders, each certificate's failure reported on its own, exit codes as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.certs import verify_live
from tests.helpers.pebble import Dirs, Pebble, pebble_args
from tests.helpers.process import assert_usage_error, run_acmebox

pytestmark = pytest.mark.e2e


def test_many_certificates_at_once_and_failures_each_reported(pebble: Pebble, dirs: Dirs) -> None:
    good = [[f"c{i}.conc.test", f"www.c{i}.conc.test"] for i in range(6)]
    bad = ["blocked.test", "sub.blocked.test"]
    certs = [a for names in good for a in ("--cert", ",".join(names))]
    certs[2:2] = ["--cert", bad[0]]  # a failing certificate between good ones
    certs += ["--cert", bad[1]]
    result = run_acmebox("run", "--once", "--max-concurrent-orders", "3", *certs, *pebble_args(pebble, dirs))
    assert result.returncode == 1, result.stderr
    for names in good:
        verify_live(pebble, dirs, names)
    for name in bad:
        assert not (dirs.certs / "live" / name).exists()
        assert any(line for line in result.stderr.splitlines() if f"{name}: renewal failed" in line), result.stderr
    lines = result.stderr.splitlines()
    assert any("2 of 8 certificates failed: blocked.test, sub.blocked.test" in line for line in lines), result.stderr
    # The first failing certificate in configuration order gives the last line and the exit code.
    assert "rejectedIdentifier" in lines[-1] and "blocked.test" in lines[-1], lines[-1]
    # Concurrent: every certificate's attempt starts before any certificate is stored.
    started = [i for i, line in enumerate(lines) if ": renewing now" in line]
    stored = [i for i, line in enumerate(lines) if ": certificate stored" in line]
    assert len(started) == 8 and len(stored) == 6
    assert max(started) < min(stored)

    again = run_acmebox("run", "--once", *[a for names in good for a in ("--cert", ",".join(names))],
                        *pebble_args(pebble, dirs))
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("nothing ordered") == 6


@pytest.mark.parametrize("value", ["0", "-1", "1001", "many"])
def test_bad_max_concurrent_orders(tmp_path: Path, value: str) -> None:
    result = run_acmebox("run", "--once", "--domain", "x.test", "--max-concurrent-orders", value,
                         "--certs-dir", str(tmp_path / "c"), "--state-dir", str(tmp_path / "s"))
    assert_usage_error(result, "max-concurrent-orders")
