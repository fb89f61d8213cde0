"""acmebox's test suite. A package, so that tests, bench/ and pebble-test/ import the shared
helpers as `tests.helpers.*` (fixtures are plugins in `tests.fixtures`, see conftest.py)."""
