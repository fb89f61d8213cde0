"""The data-path benchmark (bench/datapath.py) runs end to end at tiny sizes, one repetition:
every row is there for every configuration and every digest was checked. Counts only: the
figures themselves are no test's business."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


def test_datapath_bench_produces_every_row_with_checked_digests(tmp_path: Path) -> None:
    from datapath import CONFIGS, GUESSES, LABELS, WORKS

    out = tmp_path / "datapath.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "datapath.py"), "--reps", "1", "--size-mib", "3", "--chunk-mib", "1",
         "--duration", "1", "--logins", "8", "--json", str(out)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    raw = json.loads(out.read_text())
    works = [w for w in WORKS if w != "logins"]
    assert sorted((r["work"], r["config"]) for r in raw["rows"]) == sorted((w, c) for w in works for c in CONFIGS)
    for row in raw["rows"]:
        assert row["amount"] > 0 and row["seconds"] > 0, row
        assert set(row["cpu"]) >= {"client", "registry"}, row
    # 3 pushes of each kind answered with the blob's digest, 3 pulled blobs and 2 manifests per
    # load and configuration hashed to theirs
    assert raw["checked"] == {"pushes": 2 * len(CONFIGS), "pulls": len(CONFIGS), "manifests": 2 * 2 * len(CONFIGS)}
    [logins] = raw["logins"]
    assert logins["ok"] == logins["valid"] == 8
    assert sum(logins["guesses"].values()) == GUESSES and "429" in logins["guesses"]
    assert raw["acmebox_memory"][0]["rss"] > 0
    for work in works:
        assert f"| {LABELS[work]} |" in result.stdout
