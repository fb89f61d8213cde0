"""Reliability against the real world, with a real Pebble: CA faults through the fault proxy
(tests/helpers/faultproxy.py), a full certs volume (a tmpfs in a private mount namespace), a clock 100
days ahead (faketime around the acmebox process), damaged state files, a second instance, a
deactivated account, and a loop of orders stopped by the ledger. Assertions are on what the CA
saw (orders in the proxy's or Pebble's log) and on what is on disk, never on timing."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from acme import client as acme_client
from acme import messages
from cryptography import x509
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from acmebox import keys
from acmebox.client import AcmeClient
from acmebox.config import CertSpec, Config, HostPort
from acmebox.errors import CAUnreachable
from acmebox.ledger import ISSUED_PER_WEEK
from acmebox.service import Service
from tests.helpers import ROOT
from tests.helpers.certs import live_serial
from tests.helpers.clock import FakeClock
from tests.helpers.faultproxy import FaultProxy, Rule
from tests.helpers.pebble import Dirs, Pebble
from tests.helpers.process import ServiceProcess, acmebox_env, healthz, run_acmebox, wait_for, wait_sync

pytestmark = pytest.mark.e2e  # Pebble behind a fault proxy


def args_via(proxy: FaultProxy, pebble: Pebble, dirs: Dirs, name: str) -> list[str]:
    return ["--domain", name, "--directory", proxy.directory, "--ca-bundle", str(pebble.ca_bundle),
            "--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state),
            "--listen", f"127.0.0.1:{pebble.http_port}", "--no-ari"]


def state_of(dirs: Dirs, name: str) -> dict:  # type: ignore[type-arg]
    return dict(json.loads((dirs.state / "certs" / f"{name}.json").read_text()))


def assert_one_line(out: subprocess.CompletedProcess[str], code: int) -> None:
    assert out.returncode == code, out.stderr
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("acmebox: ")]
    assert len(errors) == 1, out.stderr


# -- CA answers the client cannot read -----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "action"),
    [("/order-plz", "badjson"), ("/order-plz", "drop-location"), ("/authZ/", "badjson"),
     ("/finalize-order/", "badjson"), ("/my-order/", "badjson")],
)
def test_unreadable_answers_are_ca_problems_with_a_kept_backoff(
    proxy: FaultProxy, pebble: Pebble, dirs: Dirs, path: str, action: str
) -> None:
    name = f"{action}{path.strip('/').replace('-', '')}.test".lower()
    proxy.add(Rule(path, "POST", action=action, times=1))
    out = run_acmebox("run", "--once", *args_via(proxy, pebble, dirs, name))
    assert_one_line(out, 1)
    assert "CA problem" in out.stderr
    state = state_of(dirs, name)
    assert state["failures"] == 1 and state["next_attempt"] is not None
    orders = proxy.orders()
    assert orders == 1

    again = run_acmebox("run", "--once", *args_via(proxy, pebble, dirs, name))
    assert_one_line(again, 1)
    assert proxy.orders() == orders, "a second run inside the backoff must not order"


def test_a_short_retry_after_on_an_authorization_is_waited_out(proxy: FaultProxy, pebble: Pebble, dirs: Dirs) -> None:
    proxy.add(Rule("/authZ/", "POST", status=503, retry_after="1", times=2))
    out = run_acmebox("run", "--once", *args_via(proxy, pebble, dirs, "poll503.test"))
    assert out.returncode == 0, out.stderr
    assert proxy.orders() == 1, "one order, not abandoned and placed again"
    assert live_serial(dirs.certs, "poll503.test")


async def test_a_stuck_request_loses_its_worker_not_the_account(proxy: FaultProxy, pebble: Pebble) -> None:
    proxy.add(Rule("/dir", "GET", action="trickle", every=0.5, times=1))
    client = AcmeClient(proxy.directory, pebble.ca_bundle, deadline=2.0)
    try:
        with pytest.raises(CAUnreachable, match="did not answer within 2s"):
            await client.connect()
        directory = await client.connect()  # on a new worker, while the old one still trickles
        assert "newOrder" in directory.to_partial_json()
    finally:
        await client.close()
    assert proxy.count("/dir", "GET") == 2


# -- the service at start ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule",
    [Rule("/dir", "GET", status=503, html=True, retry_after="1", times=1),
     Rule("/dir", "GET", action="badjson", times=1),
     Rule("/sign-me-up", "POST", status=500, times=1),
     Rule("/sign-me-up", "POST", status=429, problem="rateLimited", retry_after="2", times=1),
     Rule("/nonce-plz", None, status=500, times=1)],
    ids=["503-maintenance-page", "directory-badjson", "newAccount-500", "newAccount-429", "newNonce-500"],
)
def test_the_service_outlives_ca_errors_at_start(
    proxy: FaultProxy, pebble: Pebble, dirs: Dirs, tmp_path: Path, rule: Rule
) -> None:
    name = "start-" + (rule.path.strip("/").replace("-", "") or "x") + f"{rule.status}.test"
    proxy.add(rule)
    service = ServiceProcess(["run", *args_via(proxy, pebble, dirs, name)], tmp_path / "acmebox.log")
    try:
        service.wait_log("trying again in")
        assert service.proc.poll() is None, service.log()
        assert healthz(pebble.http_port)[0] == 503
        service.wait_log("certificate stored", timeout=60)
        assert service.proc.poll() is None
        assert "Traceback" not in service.log()
        assert proxy.orders() == 1
        wait_sync(lambda: healthz(pebble.http_port)[0] == 200, what="/healthz 200 once the certificate is in")
    finally:
        service.stop()


# -- a full certs volume -------------------------------------------------------------------------


def test_a_full_certs_volume_keeps_the_certificate_and_installs_it_later(
    pebble: Pebble, dirs: Dirs, tmp_path: Path
) -> None:
    """The certs dir is a tmpfs with few inodes in the service's own mount namespace. Filled up,
    a forced renewal's certificate cannot be written: it is kept in the state dir, and installed
    once the volume has room again, with no second order."""
    name = "fulldisk.test"
    dirs.certs.mkdir()
    service_args = ["--domain", name, "--directory", pebble.directory, "--ca-bundle", str(pebble.ca_bundle),
                    "--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state),
                    "--listen", f"127.0.0.1:{pebble.http_port}", "--no-ari"]
    script = (f"mount -t tmpfs -o size=4m,nr_inodes=64 acmebox-test {dirs.certs} && "
              f"exec {sys.executable} -m acmebox run {' '.join(service_args)}")
    log_path = tmp_path / "acmebox.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                stdout=log, stderr=subprocess.STDOUT, env=acmebox_env(), cwd=ROOT)
    certs_in_ns = Path(f"/proc/{proc.pid}/root") / dirs.certs.relative_to("/")

    def in_ns(command: str) -> None:
        subprocess.run(["nsenter", "-t", str(proc.pid), "-m", "sh", "-c", command], check=True)

    def renew(*extra: str) -> subprocess.CompletedProcess[str]:
        return run_acmebox("renew", *extra, name, "--state-dir", str(dirs.state), "--timeout", "60")

    try:
        wait_sync(lambda: "certificate stored" in log_path.read_text() or proc.poll() is not None, what="issuance")
        first = live_serial(certs_in_ns, name)
        orders = pebble.orders_in_log()
        in_ns(f"i=0; while touch {dirs.certs}/filler$i 2>/dev/null; do i=$((i+1)); done; rm {dirs.certs}/filler0")

        failed = renew("--force")
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert "cannot be written" in failed.stdout and "no new order" in failed.stdout
        assert pebble.orders_in_log() == orders + 1
        assert live_serial(certs_in_ns, name) == first, "the live pair is unchanged"
        kept = dirs.state / "pending" / f"{name}.json"
        kept_serial = x509.load_pem_x509_certificate(json.loads(kept.read_text())["fullchain"].encode()).serial_number

        in_ns(f"rm -f {dirs.certs}/filler*")
        done = renew()
        assert done.returncode == 0, done.stdout + done.stderr
        assert "renewed" in done.stdout
        assert pebble.orders_in_log() == orders + 1, "installed from the kept copy: zero extra orders"
        assert live_serial(certs_in_ns, name) == kept_serial
        assert not kept.exists()
        assert proc.poll() is None and "Traceback" not in log_path.read_text()
    finally:
        proc.terminate()
        proc.wait(15)


# -- a wrong clock -------------------------------------------------------------------------------


def test_a_clock_100_days_ahead_orders_nothing(pebble: Pebble, dirs: Dirs) -> None:
    name = "clock.test"
    args = ["--domain", name, "--directory", pebble.directory, "--ca-bundle", str(pebble.ca_bundle),
            "--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state),
            "--listen", f"127.0.0.1:{pebble.http_port}", "--no-ari"]
    assert run_acmebox("run", "--once", *args).returncode == 0
    orders = pebble.orders_in_log()
    faked = [shutil.which("faketime") or "faketime", "-f", "+100d", sys.executable, "-m", "acmebox", "run", "--once"]
    for _ in range(3):  # the certificate looks expired to this clock: each run would be due
        out = subprocess.run([*faked, *args], capture_output=True, text=True, env=acmebox_env(), cwd=ROOT, timeout=120)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        assert "clock" in out.stderr
    assert pebble.orders_in_log() - orders <= 1
    assert "local clock" in (state_of(dirs, name)["last_error"] or "")


# -- damaged state, a second instance, a deactivated account ----------------------------------------


@pytest.mark.parametrize("content", ['["a", "list"]', '{"failures": "three"}', '{"next_attempt": 5}', "{trunc"])
def test_a_damaged_state_file_is_moved_aside_and_counts_as_a_failure(
    pebble: Pebble, dirs: Dirs, content: str
) -> None:
    name = "state.test"
    args = ["--domain", name, "--directory", pebble.directory, "--ca-bundle", str(pebble.ca_bundle),
            "--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state),
            "--listen", f"127.0.0.1:{pebble.http_port}", "--no-ari"]
    path = dirs.state / "certs" / f"{name}.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    out = run_acmebox("run", "--once", *args)
    assert "Traceback" not in out.stderr
    assert "unreadable" in out.stderr
    assert list(path.parent.glob(f"{name}.json.unreadable-*")), "moved aside, not lost"
    state = state_of(dirs, name)
    assert state["failures"] == 1, "the backoff errs on the safe side: failed just now"
    assert out.returncode == 1 and "backoff after 1 failure" in out.stderr


@pytest.mark.parametrize("content", ["[]", '"str"', "null", "{trunc"])
def test_a_damaged_account_file_is_rewritten(pebble: Pebble, dirs: Dirs, content: str) -> None:
    args = ["--domain", "acct.test", "--directory", pebble.directory, "--ca-bundle", str(pebble.ca_bundle),
            "--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state),
            "--listen", f"127.0.0.1:{pebble.http_port}", "--no-ari"]
    assert run_acmebox("run", "--once", *args).returncode == 0
    (info,) = dirs.state.glob("accounts/**/account.json")
    url = json.loads(info.read_text())["url"]
    info.write_text(content)
    out = run_acmebox("run", "--once", "--force-renew", *args)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert json.loads(info.read_text())["url"] == url, "the same account, found again from its key"


def test_a_naive_timestamp_is_read_as_utc(pebble: Pebble, dirs: Dirs) -> None:
    path = dirs.state / "certs" / "naive.test.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"failures": 1, "next_attempt": "2020-01-01T00:00:00", "last_success": "2020-01-01T00:00:00"}')
    out = run_acmebox("run", "--once", "--domain", "naive.test", "--directory", pebble.directory,
                      "--ca-bundle", str(pebble.ca_bundle), "--certs-dir", str(dirs.certs),
                      "--state-dir", str(dirs.state), "--listen", f"127.0.0.1:{pebble.http_port}")
    assert out.returncode == 0, out.stderr
    assert not list(path.parent.glob("*.unreadable-*"))


def test_a_second_instance_on_one_state_dir_is_refused(pebble: Pebble, dirs: Dirs, tmp_path: Path) -> None:
    args = ["--domain", "lock.test", "--directory", pebble.directory, "--ca-bundle", str(pebble.ca_bundle),
            "--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state), "--no-ari"]
    first = ServiceProcess(["run", *args, "--listen", f"127.0.0.1:{pebble.http_port}"], tmp_path / "first.log")
    try:
        first.wait_log("managing 1 certificate")
        second = run_acmebox("run", "--once", *args, "--listen", "127.0.0.1:1")
        assert_one_line(second, 2)
        assert f"in use by another acmebox (PID {first.proc.pid})" in second.stderr
        assert first.proc.poll() is None
    finally:
        first.stop()


def test_a_deactivated_account_is_replaced(pebble: Pebble, dirs: Dirs) -> None:
    args = ["--domain", "deact.test", "--directory", pebble.directory, "--ca-bundle", str(pebble.ca_bundle),
            "--certs-dir", str(dirs.certs), "--state-dir", str(dirs.state),
            "--listen", f"127.0.0.1:{pebble.http_port}", "--no-ari"]
    assert run_acmebox("run", "--once", *args).returncode == 0
    (key_path,) = dirs.state.glob("accounts/**/key.pem")
    url = json.loads((key_path.parent / "account.json").read_text())["url"]
    net = acme_client.ClientNetwork(JWKEC(key=keys.from_pem(key_path.read_bytes())), alg=ES256,
                                    verify_ssl=str(pebble.ca_bundle))  # type: ignore[arg-type]
    acme = acme_client.ClientV2(acme_client.ClientV2.get_directory(pebble.directory, net), net)
    regr = messages.RegistrationResource(body=messages.Registration(), uri=url)
    net.account = regr
    acme.deactivate_registration(regr)

    out = run_acmebox("run", "--once", "--force-renew", *args)
    assert out.returncode == 0, out.stderr
    assert "deactivated" in out.stderr
    assert list(key_path.parent.glob("key.pem.deactivated-*")), "the old key is kept aside"
    assert json.loads((key_path.parent / "account.json").read_text())["url"] != url


# -- the ledger against a loop -------------------------------------------------------------------


async def test_the_ledger_stops_a_loop_of_orders(pebble: Pebble, dirs: Dirs) -> None:
    """Something keeps removing the live certificate (a bug, a clean-up job): every time the
    certificate looks missing and due. The ledger lets ISSUED_PER_WEEK orders through."""
    name = "loop.test"
    clock = FakeClock()
    config = Config(certs=(CertSpec.build([name]),), email=None, directory=pebble.directory,
                    ca_bundle=pebble.ca_bundle, certs_dir=dirs.certs, state_dir=dirs.state,
                    listen=HostPort("127.0.0.1", pebble.http_port), ari=False)
    service = Service(config, clock)
    maintainer = service.maintainers[name]
    orders = pebble.orders_in_log()
    task = asyncio.create_task(service.run())
    try:
        await wait_for(lambda: pebble.orders_in_log() == orders + 1 and maintainer.state is not None
                       and maintainer.state.last_success is not None, what="the first certificate")
        for _ in range(2 * ISSUED_PER_WEEK):
            live = dirs.certs / "live" / name
            if live.is_symlink():
                live.unlink()
            elif live.exists():
                shutil.rmtree(live)
            clock.advance(dt.timedelta(minutes=6))  # past the spacing between renewals
            before = pebble.orders_in_log()
            maintainer.wake.set()
            await wait_for(lambda: (dirs.certs / "live" / name).exists() or "ledger" in
                           (maintainer.state.last_error or ""), what="a new certificate or a refusal")  # type: ignore[union-attr]
            assert pebble.orders_in_log() - before <= 1
        assert pebble.orders_in_log() - orders == ISSUED_PER_WEEK
        assert maintainer.state is not None and "ledger allows" in (maintainer.state.last_error or "")
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
