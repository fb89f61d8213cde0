"""Who may write where: the distribution spec's repository name grammar and the optional ACL file
(user -> repository patterns)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from acmebox.errors import ConfigError

# The distribution spec's repository name grammar (opencontainers/distribution-spec, "Pulling
# manifests"): path components of lower-case alphanumerics joined by `.`, `_`, `__` or dashes.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
MAX_REPOSITORY = 255
# ACL patterns: name characters plus `*` (within one path component) and `**` (across them).
_PATTERN = re.compile(r"^[a-z0-9._*/-]+$")
RESOURCE_CLASS = re.compile(r"^repository(?:\([a-z0-9]+\))?$")


def valid_repository(name: str) -> bool:
    return len(name) <= MAX_REPOSITORY and _REPOSITORY.match(name) is not None


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """An ACL pattern as a regex: `*` matches within one path component (so `alice/*` is not
    `alice/../bob`), `**` matches across components."""
    out = []
    for part in re.split(r"(\*\*|\*)", pattern):
        out.append(".*" if part == "**" else "[^/]*" if part == "*" else re.escape(part))
    return re.compile("".join(out))


def load_acl(path: Path | None) -> dict[str, list[re.Pattern[str]]] | None:
    """user -> repository patterns from a TOML file: `alice = ["alice/*", "shared/**"]`, or
    None without a file. With a file, a user it does not list may only pull."""
    if path is None:
        return None
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ConfigError(f"ACL file {path}: {str(e).splitlines()[0] if str(e) else 'too deeply nested'}") from None
    except OSError as e:
        raise ConfigError(f"ACL file {path}: {e.strerror or e}") from None
    acl = {}
    for user, patterns in data.items():
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise ConfigError(f"ACL file {path}: {user} must map to a list of repository patterns")
        for p in patterns:
            if not _PATTERN.match(p) or len(p) > MAX_REPOSITORY:
                raise ConfigError(f"ACL file {path}: {user}: pattern {p[:80]!r} can match no repository name "
                                  "(lower-case letters, digits, . _ - / and *)")
        acl[user] = [compile_pattern(p) for p in patterns]
    return acl
