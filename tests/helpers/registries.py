"""The registries the tests run: distribution 3.x (what `registry:3` runs; v3.1.1 built from
shared/third_party by pebble-test/install-registry3.sh) and Debian's docker-registry 2.8 (what
`registry:2` runs), both started as `<binary> serve CONFIG`.

ACMEBOX_TEST_REGISTRY=2 or 3 (default 3) picks the one the loopback stack tests use; the key
tests run both (`REGISTRIES`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.helpers import ROOT

REGISTRY3 = ROOT / "pebble-test" / ".registry3" / "registry"
REGISTRIES = ("3", "2")


def default_registry() -> str:
    version = os.environ.get("ACMEBOX_TEST_REGISTRY", "3")
    assert version in REGISTRIES, f"ACMEBOX_TEST_REGISTRY={version!r}: want one of {REGISTRIES}"
    return version


def registry_command(version: str, config: Path) -> list[str]:
    """The command line that serves `config` with registry `version` ("2" or "3")."""
    if version == "3":
        assert os.access(REGISTRY3, os.X_OK), f"no {REGISTRY3}: run pebble-test/install-registry3.sh (setup.sh does)"
        return [str(REGISTRY3), "serve", str(config)]
    binary = shutil.which("docker-registry")
    assert binary, "no docker-registry: install Debian's docker-registry (setup.sh does)"
    return [binary, "serve", str(config)]
