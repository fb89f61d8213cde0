"""Benchmark: issuance latency against a real Pebble (no VA sleeps, no nonce rejection),
acmebox's asyncio-driven client versus the `acme` library's own `poll_and_finalize`, measured
in the same run with the same account, challenge server and CA. Prints medians and the ratio.

    .venv/bin/python bench/issuance.py [--runs 10]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from acme import challenges as acme_challenges
from acme import client as acme_client
from acme import crypto_util, messages

from acmebox import keys, webapp
from acmebox.account import AccountFiles
from acmebox.challenges import Http01Tokens
from acmebox.client import AcmeClient
from acmebox.config import HostPort

ROOT = Path(__file__).resolve().parent.parent


def start_pebble(run: Path) -> dict[str, str]:
    env = {**os.environ, "PEBBLE_RUN_DIR": str(run), "PEBBLE_PORT": "14400", "PEBBLE_MGMT_PORT": "15400",
           "PEBBLE_HTTP_PORT": "5402", "PEBBLE_DNS_PORT": "8453", "PEBBLE_CHALLTESTSRV_MGMT_PORT": "8455"}
    out = subprocess.run(["bash", str(ROOT / "pebble-test" / "start.sh")], env=env, capture_output=True, text=True,
                         check=True)
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line) | {"RUN": str(run)}


def library_issue(client: AcmeClient, name: str, tokens: Http01Tokens) -> None:
    """What a plain `acme` user writes: new_order, answer, poll_and_finalize (1 s sleeps)."""
    acme = acme_client.ClientV2(client.directory, client._net)  # the same account
    csr = crypto_util.make_csr(keys.to_pem(keys.generate("ec256")), [name])
    order = acme.new_order(csr)
    for authz in order.authorizations:
        if authz.body.status == messages.STATUS_VALID:
            continue
        challb = next(c for c in authz.body.challenges if isinstance(c.chall, acme_challenges.HTTP01))
        response, validation = challb.response_and_validation(client._net.key)
        tokens.present(challb.chall.encode("token"), validation)
        acme.answer_challenge(challb, response)
    acme.poll_and_finalize(order, dt.datetime.now() + dt.timedelta(seconds=90))


async def main(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pebble = start_pebble(Path(tmp) / "pebble")
        tokens = Http01Tokens()
        runner = await webapp.start(webapp.build_app(tokens, lambda: (True, "")), HostPort("127.0.0.1", 5402))
        client = AcmeClient(pebble["PEBBLE_DIRECTORY"], Path(pebble["PEBBLE_CA_BUNDLE"]))
        try:
            await client.connect()
            await client.login(AccountFiles(Path(tmp) / "account").load_or_create_key(), None)
            ours, library = [], []
            for i in range(runs):
                name = f"bench{i}.test"
                t0 = time.perf_counter()
                csr = crypto_util.make_csr(keys.to_pem(keys.generate("ec256")), [f"a-{name}"])
                await client.issue((f"a-{name}",), csr, tokens)
                ours.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                await asyncio.get_running_loop().run_in_executor(None, library_issue, client, f"l-{name}", tokens)
                library.append(time.perf_counter() - t0)
        finally:
            await client.close()
            await runner.cleanup()
            subprocess.run(["bash", str(ROOT / "pebble-test" / "stop.sh")], env={**os.environ,
                           "PEBBLE_RUN_DIR": pebble["RUN"]}, check=False)
    version = (ROOT / "pebble-test" / ".pebble" / "VERSION").read_text().strip()
    print(f"{runs} issuances each, one name, EC P-256 keys, Pebble {version} (no VA sleep)")
    for label, times in (("acmebox, asyncio polling", ours), ("acme poll_and_finalize (peer)", library)):
        ms = [t * 1000 for t in times]
        print(f"{label:32} median {statistics.median(ms):7.1f} ms  (min {min(ms):.1f}, max {max(ms):.1f})")
    print(f"{'ratio peer / acmebox':32} {statistics.median(library) / statistics.median(ours):.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    asyncio.run(main(parser.parse_args().runs))
    sys.exit(0)
