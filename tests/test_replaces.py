"""ARI's `replaces` (RFC 9773) against a real Pebble behind the fault proxy: a CA that refuses
the field, in whatever wording and problem type, gets exactly one more order without it; a CA
that answers renewalInfo for the certificate with an error gets orders without it. Counts are
of the requests the proxy saw."""

from __future__ import annotations

import pytest

from tests.helpers.faultproxy import FaultProxy, Rule
from tests.helpers.pebble import Dirs, Pebble
from tests.helpers.process import run_acmebox

pytestmark = pytest.mark.e2e  # Pebble behind the fault proxy

PEBBLE_NO_ISSUER = ("parsing ARI CertID failed: the certificate's issuer is unknown: "
                    "no known issuer matches the provided Authority Key Identifier")


def args_via(proxy: FaultProxy, pebble: Pebble, dirs: Dirs, name: str) -> list[str]:
    """ARI on (the default): a renewal names the certificate it replaces."""
    return ["--domain", name, "--directory", proxy.directory, "--ca-bundle", str(pebble.ca_bundle),
            "--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state),
            "--listen", f"127.0.0.1:{pebble.http_port}"]


def new_orders(proxy: FaultProxy) -> int:
    return proxy.count("/order-plz", "POST")


@pytest.mark.parametrize(
    ("problem", "status", "detail"),
    [("malformed", 400, PEBBLE_NO_ISSUER),
     ("alreadyReplaced", 409, "certificate has already been replaced"),
     ("conflict", 409, "an order for this certificate exists"),
     ("malformed", 400, "bad request"),
     ("serverInternal", 500, "could not find an order for the given certificate")],
    ids=["pebble-unknown-issuer", "alreadyReplaced", "conflict", "malformed-any-wording", "pebble-given-certificate"],
)
def test_a_refused_replaces_is_followed_by_one_order_without_it(
    proxy: FaultProxy, pebble: Pebble, dirs: Dirs, problem: str, status: int, detail: str
) -> None:
    name = f"refused-{problem.lower()}-{len(detail)}.test"
    args = args_via(proxy, pebble, dirs, name)
    first = run_acmebox("run", "--once", *args)
    assert first.returncode == 0, first.stderr
    assert new_orders(proxy) == 1

    proxy.add(Rule("/order-plz", "POST", status=status, problem=problem, detail=detail, times=1))
    out = run_acmebox("run", "--once", "--force-renew", *args)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("the CA refused replaces=") == 1, out.stderr
    assert out.stderr.count("sent without replaces") == 1
    assert new_orders(proxy) == 3, "the refused one and exactly one without replaces"


def test_a_refusal_of_the_order_without_replaces_is_not_retried(proxy: FaultProxy, pebble: Pebble, dirs: Dirs) -> None:
    """The retry without `replaces` happens once: a CA that refuses that order too ends the
    attempt (a recorded failure with its backoff), not a loop."""
    name = "refused-twice.test"
    args = args_via(proxy, pebble, dirs, name)
    assert run_acmebox("run", "--once", *args).returncode == 0
    proxy.add(Rule("/order-plz", "POST", status=400, problem="malformed", detail=PEBBLE_NO_ISSUER, times=2))
    out = run_acmebox("run", "--once", "--force-renew", *args)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "no known issuer" in out.stderr
    assert new_orders(proxy) == 1 + 2


def test_a_first_order_refused_as_malformed_is_not_retried(proxy: FaultProxy, pebble: Pebble, dirs: Dirs) -> None:
    """Without `replaces` there is nothing to drop: a malformed refusal is the attempt's failure."""
    proxy.add(Rule("/order-plz", "POST", status=400, problem="malformed", times=1))
    out = run_acmebox("run", "--once", *args_via(proxy, pebble, dirs, "first-malformed.test"))
    assert out.returncode == 1, out.stderr
    assert new_orders(proxy) == 1


@pytest.mark.parametrize("status", [404, 500])
def test_a_renewal_info_error_means_orders_without_replaces(
    proxy: FaultProxy, pebble: Pebble, dirs: Dirs, status: int
) -> None:
    """The CA answers renewalInfo for the certificate with an error (it does not know it): the
    renewal is ordered without `replaces`, and no order is refused for it."""
    name = f"ari-error-{status}.test"
    args = args_via(proxy, pebble, dirs, name)
    assert run_acmebox("run", "--once", *args).returncode == 0
    proxy.add(Rule("/renewalInfo/", "GET", status=status, problem="malformed", detail="unknown certificate"))
    out = run_acmebox("run", "--once", "--force-renew", *args)
    assert out.returncode == 0, out.stderr
    assert proxy.count("/renewalInfo/", "GET") >= 1
    assert "refused replaces" not in out.stderr and "sent without replaces" in out.stderr
    assert new_orders(proxy) == 2, "one order each, none refused"
