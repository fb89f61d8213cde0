"""The package's shape, read with `ast` only (nothing of acmebox is imported): every module
opens with a docstring saying what it owns, the import graph has no cycle (imports under
TYPE_CHECKING and inside functions count), the ACME side never imports the registry token
service, and no module is over 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "acmebox"
MAX_LINES = 500
# Only the wiring and the entry points may know that the token service exists; every other
# module (the ACME side and the leaves) must work without it.
# config.py reads the token service's files to check them (TokenAuth.build); service.py wires it in;
# cli.py runs its one operator command (`token-key`).
MAY_IMPORT_REGISTRY = {"acmebox.cli", "acmebox.config", "acmebox.service"}
REGISTRY = ("acmebox.registry", "acmebox.registry_token")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imported(name: str) -> set[str]:
    """The acmebox modules that `name` imports anywhere in its text: at the top, under
    TYPE_CHECKING, inside functions. `from X import y` names module X.y when y is a module."""
    found: set[str] = set()
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = name if is_package(name) else name.rpartition(".")[0]
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            submodules = [f"{source}.{alias.name}" for alias in node.names]
            targets = [t for t in submodules if t in MODULES]
            if len(targets) < len(submodules):  # some names come from `source` itself
                targets.append(source)
        else:
            continue
        for target in targets:
            # `import acmebox.a.b` binds the deepest module that exists
            while target and target not in MODULES and "." in target:
                target = target.rpartition(".")[0]
            if target in MODULES and target != name:
                found.add(target)
    return found


GRAPH = {name: imported(name) for name in MODULES}


def cycles() -> list[list[str]]:
    """Every elementary cycle's node list once (Tarjan's strongly connected components would say
    which modules; a path says how)."""
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()

    def walk(path: list[str]) -> None:
        for nxt in sorted(GRAPH[path[-1]]):
            if nxt == path[0]:
                key = frozenset(path)
                if key not in seen:
                    seen.add(key)
                    found.append([*path, nxt])
            elif nxt not in path and nxt > path[0]:  # each cycle is found from its smallest module
                walk([*path, nxt])

    for start in sorted(GRAPH):
        walk([start])
    return found


def test_the_package_is_read() -> None:
    assert {"acmebox", "acmebox.cli", "acmebox.client", "acmebox.maintain"} <= set(MODULES)
    assert "acmebox.errors" in GRAPH["acmebox.client"]  # the graph sees imports


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_opens_with_what_it_owns(name: str) -> None:
    docstring = ast.get_docstring(TREES[name])
    assert docstring and docstring.strip(), f"{MODULES[name].relative_to(ROOT)} has no module docstring"


def test_no_import_cycle() -> None:
    found = cycles()
    assert found == [], "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_the_acme_side_never_imports_the_token_service() -> None:
    offenders = {
        name: sorted(t for t in targets if t.startswith(REGISTRY))
        for name, targets in GRAPH.items()
        if name not in MAY_IMPORT_REGISTRY and not name.startswith(REGISTRY)
    }
    assert {name: t for name, t in offenders.items() if t} == {}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_over_500_lines(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(ROOT)} has {lines} lines: split it"


# -- the rules themselves, on made-up graphs: each can fail ------------------------------------


def test_the_rules_catch_what_they_are_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(GRAPH, "acmebox.clock", {"acmebox.keys"})
    monkeypatch.setitem(GRAPH, "acmebox.keys", {"acmebox.clock"})
    assert ["acmebox.clock", "acmebox.keys", "acmebox.clock"] in cycles()
    monkeypatch.setitem(GRAPH, "acmebox.maintain", {"acmebox.registry_token"})
    with pytest.raises(AssertionError):
        test_the_acme_side_never_imports_the_token_service()


def test_no_formatter_markers() -> None:
    """No formatter runs (tests/run.sh runs ruff check only), so fmt-skip markers would only
    suggest one does."""
    marker = "# fmt: " + "skip"
    files = [p for d in ("acmebox", "tests", "bench", "pebble-test") for p in (ROOT / d).rglob("*.py")]
    assert [str(p.relative_to(ROOT)) for p in files if marker in p.read_text()] == []
