"""The benchmark script runs end to end (bench/compare.py, acmebox only, tiny sizes) and every
certificate it gets is verified. Counts only: the figures themselves are no test's business."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.e2e


def test_bench_runs_and_verifies_every_certificate(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "compare.py"), "--dev", "--clients", "acmebox", "--reps", "1",
         "--certs", "2", "--names", "2", "--idle", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    raw = json.loads(out.read_text())
    # per repetition: cold 1 + names 1 + many 2; the sidecar with 1 and with 2 certificates
    assert raw["verified"] == 7
    assert {(r["scenario"], r["client"]) for r in raw["runs"]} == {("cold", "acmebox"), ("names", "acmebox"),
                                                                   ("many", "acmebox")}
    assert [s["certs"] for s in raw["sidecar"]] == [1, 2]
    assert "7 certificates issued, every one verified" in result.stdout
    assert "| 1 certificate, cold process |" in result.stdout
