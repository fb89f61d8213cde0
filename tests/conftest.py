"""The suite's plugins (fixtures, one module per part: tests/fixtures/) and two hooks that keep
the `e2e` marker honest. Helpers that tests import are in tests/helpers/.

`pytest -m "not e2e"` runs the tests that start no service (no Pebble, dockerd, nginx or
registry); a full run (tests/run.sh, CI) fails loudly when Pebble is missing."""

from __future__ import annotations

import pytest

from tests.helpers.pebble import PEBBLE_BINARY, pebble_installed

pytest_plugins = [
    "tests.fixtures.pebble",
    "tests.fixtures.process",
    "tests.fixtures.docker",
    "tests.fixtures.stack",
]

SERVICE_FIXTURES = frozenset({"pebble", "pebble_nonce_reject", "docker_engine", "stack", "stacks", "each_stack"})


def pytest_report_header() -> str:
    if pebble_installed():
        return f"Pebble: {PEBBLE_BINARY}"
    return 'Pebble: NOT installed (pebble-test/setup.sh); e2e tests will fail, deselect them with -m "not e2e"'


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses a service fixture without the e2e marker would start that service
    under -m "not e2e": refuse the run and name it."""
    unmarked = [
        item.nodeid
        for item in items
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("e2e") is None
    ]
    if unmarked:
        raise pytest.UsageError("tests that start services need @pytest.mark.e2e: " + ", ".join(unmarked))
