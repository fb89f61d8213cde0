"""The error hierarchy: every failure acmebox reports to a user is one of these.

The CLI turns them into one line on stderr and an exit code; nothing else should reach the
user as a traceback.
"""

from __future__ import annotations

import datetime as dt
import re


class AcmeboxError(Exception):
    """Base class. `exit_code` is what the CLI exits with."""

    exit_code = 1


class ConfigError(AcmeboxError):
    """Bad input: flags, environment, files or directories the user pointed us at."""

    exit_code = 2


class CAUnreachable(AcmeboxError):
    """The CA could not be reached (network, TLS, timeout). Worth retrying later."""


class NotADirectory(ConfigError):
    """The URL answered, but not with an ACME directory."""


class CAProblem(AcmeboxError):
    """The CA answered with an RFC 8555 problem document (or an order/challenge failed)."""

    def __init__(
        self, typ: str, detail: str, retry_after: float | None = None, invalid: tuple[str, ...] = ()
    ) -> None:
        self.typ = typ or "urn:ietf:params:acme:error:serverInternal"
        self.detail = detail
        # Names whose authorization the CA found invalid (a failed validation, RFC 8555 7.1.4).
        self.invalid = invalid
        # Seconds the CA asked us to wait (from a Retry-After header), when it said.
        self.retry_after = retry_after
        super().__init__(f"CA problem {self.typ}: {detail}")

    @property
    def short_type(self) -> str:
        """`rateLimited` for `urn:ietf:params:acme:error:rateLimited`."""
        return self.typ.rsplit(":", 1)[-1]


# Problem types a CA may use to refuse the `replaces` field of a newOrder (RFC 9773 section 5
# leaves the form open): Let's Encrypt says alreadyReplaced or malformed, Pebble malformed
# ("parsing ARI CertID failed: ... no known issuer matches the provided Authority Key
# Identifier") or conflict. Whatever their wording, these mean the order as sent cannot be
# placed; the same order without `replaces` can.
REPLACES_REFUSAL_TYPES = frozenset({"malformed", "alreadyReplaced", "conflict"})
# Other types count when their text is about the certificate named (Pebble: serverInternal
# "could not find an order for the given certificate").
_ABOUT_REPLACES = re.compile(r"replace|certid|\bari\b|given certificate|issuer|authority key", re.IGNORECASE)


def refuses_replaces(e: CAProblem) -> bool:
    """Whether `e`, the refusal of a newOrder sent with `replaces`, may be about `replaces`."""
    if e.short_type in REPLACES_REFUSAL_TYPES:
        return True
    return e.short_type in ("unauthorized", "serverInternal", "badRequest") and bool(_ABOUT_REPLACES.search(e.detail))


class ReplacesRefused(CAProblem):
    """The CA refused a newOrder that carried `replaces`, in a way that may be about that field
    (refuses_replaces): the caller orders once more without it."""


class AccountRefused(CAProblem):
    """The CA refused the account itself for a reason that waiting does not fix (external
    account binding missing or wrong, a contact it does not accept): a matter of configuration,
    so `--once` reports it without recording a backoff that would delay the corrected run."""


class Deferred(AcmeboxError):
    """Not a failure of the CA: acmebox itself holds back an order until `until` (a full
    disk, a wrong clock, the order ledger). No order was placed for it."""

    def __init__(self, message: str, until: dt.datetime) -> None:
        self.until = until
        super().__init__(message)


class ClockError(Deferred):
    """The local clock disagrees with the CA's, or with a certificate just received."""


class DiskError(Deferred):
    """The certs or state dir cannot take what an order would bring."""
