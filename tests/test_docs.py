"""README.md and docs/*.md: every relative link reaches a file of the repository and every
`#anchor` a heading of its page (GitHub's slugs); the README stays a reader's page."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_BYTES = 10 * 1024
QUICKSTART = [
    "bash pebble-test/demo.sh   # the whole job on loopback, then the URLs to open; Ctrl-C stops it",
    "bash tests/run.sh          # the tests: ruff, mypy, then the whole suite against a real Pebble",
]

_INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def prose(text: str) -> list[str]:
    """The lines outside fenced code blocks, inline code spans blanked."""
    lines, fence = [], False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fence = not fence
            continue
        if not fence:
            lines.append(re.sub(r"`[^`]*`", "``", line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower case, punctuation dropped
    (letters, digits, `_`, `-` and spaces stay), spaces made `-`."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor; a repeated one gets -1, -2, ... as on GitHub."""
    seen: Counter[str] = Counter()
    found = set()
    fence = False
    for line in page.read_text().splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fence = not fence
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading and not fence:
            base = slug(heading.group(1))
            found.add(f"{base}-{seen[base]}" if seen[base] else base)
            seen[base] += 1
    return found


def links(page: Path) -> list[str]:
    targets = []
    for line in prose(page.read_text()):
        targets += _INLINE.findall(line)
        reference = _REFERENCE.match(line)
        if reference:
            targets.append(reference.group(1))
    return targets


def broken(page: Path, root: Path = ROOT) -> list[str]:
    """The relative links of `page` that lead nowhere (or out of `root`), with why."""
    problems = []
    for target in links(page):
        if not target or _EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            problems.append(f"{target}: no such file")
        elif root.resolve() not in dest.parents and dest != root.resolve():
            problems.append(f"{target}: outside the repository")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            problems.append(f"{target}: no heading #{anchor} in {dest.name}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    assert broken(page) == []


def test_the_docs_are_linked_from_the_readme() -> None:
    readme_links = {t.partition("#")[0] for t in links(ROOT / "README.md")}
    assert [p.name for p in PAGES[1:] if f"docs/{p.name}" not in readme_links] == []


def test_the_readme_is_a_readers_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= README_MAX_BYTES, "details go to docs/"
    for command in QUICKSTART:
        assert command in readme.splitlines()


def test_the_checker_finds_what_is_broken(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# A `code` title: with punctuation!\n## Twice\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Here\n"
        "[fine](other.md#a-code-title-with-punctuation) [second](other.md#twice-1) [self](#here)\n"
        "[gone](missing.md) [no anchor](other.md#nowhere) [self gone](#there) [web](https://example.com/#x)\n"
        "`[in code](nothing.md)`\n"
        "```\n[in a fence](nothing.md)\n```\n"
    )
    assert anchors(tmp_path / "other.md") == {"a-code-title-with-punctuation", "twice", "twice-1"}
    problems = broken(page, root=tmp_path)
    assert len(problems) == 3, problems
    assert problems[0].startswith("missing.md") and problems[1].startswith("other.md#nowhere")
    assert problems[2].startswith("#there")
