"""The store's atomic switch: readers never see a key and a certificate that do not belong
together, or a partial file, even when the writer is killed at any instant."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509

from acmebox import keys, placeholder
from acmebox.store import KEEP_VERSIONS, LIVE_ORDER, CertStore
from tests.helpers import ROOT
from tests.helpers.other_user import as_user


def make_cert(names: list[str]) -> tuple[bytes, bytes]:
    return placeholder.make(tuple(names), "ec256", dt.datetime.now(dt.UTC))


def pair_matches(chain_pem: bytes, key_pem: bytes) -> bool:
    chain = x509.load_pem_x509_certificates(chain_pem)
    return keys.public_der(keys.from_pem(key_pem)) == keys.public_der(chain[0].public_key())  # type: ignore[arg-type]


def consistent(live_dir: Path) -> bool:
    """Every file present and whole, the key belongs to the certificate, and combined.pem
    (when present) holds that same pair."""
    chain_pem = (live_dir / "fullchain.pem").read_bytes()
    key_pem = (live_dir / "privkey.pem").read_bytes()
    cert = x509.load_pem_x509_certificate((live_dir / "cert.pem").read_bytes())
    ok = cert == x509.load_pem_x509_certificates(chain_pem)[0] and pair_matches(chain_pem, key_pem)
    combined = live_dir / "combined.pem"
    if combined.exists():
        ok = ok and combined.read_bytes() == chain_pem + key_pem
    return ok


def test_save_switches_and_prunes(tmp_path: Path) -> None:
    store = CertStore(tmp_path)
    store.prepare()
    assert store.current("registry.test") is None
    live = tmp_path / "live" / "registry.test"
    for i in range(KEEP_VERSIONS + 2):
        key_pem, cert_pem = make_cert(["registry.test", "www.registry.test"])
        stored = store.save("registry.test", key_pem, cert_pem, {"placeholder": False})
        assert stored.version == f"{i + 1:04d}"
        current = store.current("registry.test")
        assert current is not None and current.serial == stored.serial and current.version == stored.version
        assert current.meta.to_json() == {"placeholder": False}
        assert current.path == tmp_path / "archive" / "registry.test" / stored.version
        if i == 0:
            inode = live.stat().st_ino
    # live/<name> is one directory for good (a bind mount of it keeps seeing renewals), of real files
    assert live.is_dir() and not live.is_symlink() and live.stat().st_ino == inode
    assert sorted(p.name for p in live.iterdir()) == sorted(LIVE_ORDER)
    assert not [p for p in live.iterdir() if p.is_symlink()]
    for name in ("privkey.pem", "combined.pem"):
        assert stat.S_IMODE((live / name).stat().st_mode) == 0o600
    assert stat.S_IMODE((live / "fullchain.pem").stat().st_mode) == 0o644
    assert consistent(live)
    assert json.loads((live / "meta.json").read_text())["version"] == f"{KEEP_VERSIONS + 2:04d}"
    kept = sorted(p.name for p in (tmp_path / "archive" / "registry.test").iterdir())
    assert kept == [f"{v:04d}" for v in range(3, KEEP_VERSIONS + 3)]
    assert store.current("registry.test").names == ["registry.test", "www.registry.test"]  # type: ignore[union-attr]


def test_refuses_a_key_that_does_not_match(tmp_path: Path) -> None:
    store = CertStore(tmp_path)
    store.prepare()
    key_a, _ = make_cert(["a.test"])
    _, cert_b = make_cert(["a.test"])
    try:
        store.save("a.test", key_a, cert_b, {})
    except ValueError as e:
        assert "does not match" in str(e)
    else:
        raise AssertionError("mismatched key accepted")
    assert store.current("a.test") is None
    assert not (tmp_path / "live" / "a.test").exists()


def certbot_layout(root: Path, name: str, versions: int = 2) -> list[tuple[bytes, bytes]]:
    """What certbot leaves: archive/<name>/{cert,chain,fullchain,privkey}N.pem and live/<name>/
    holding relative symlinks to the newest, plus renewal/<name>.conf."""
    pairs = [make_cert([name]) for _ in range(versions)]
    archive, live = root / "archive" / name, root / "live" / name
    archive.mkdir(parents=True)
    live.mkdir(parents=True)
    for n, (key_pem, cert_pem) in enumerate(pairs, 1):
        (archive / f"privkey{n}.pem").write_bytes(key_pem)
        (archive / f"cert{n}.pem").write_bytes(cert_pem)
        (archive / f"chain{n}.pem").write_bytes(b"")
        (archive / f"fullchain{n}.pem").write_bytes(cert_pem)
    for kind in ("privkey", "cert", "chain", "fullchain"):
        (live / f"{kind}.pem").symlink_to(f"../../archive/{name}/{kind}{versions}.pem")
    (live / "README").write_text("certbot's README\n")
    (root / "renewal").mkdir()
    (root / "renewal" / f"{name}.conf").write_text(
        f"version = 2.11.0\narchive_dir = {archive}\n[renewalparams]\nauthenticator = webroot\n"
        "server = https://acme-v02.api.letsencrypt.org/directory\n"
    )
    return pairs


def test_takes_over_a_certbot_live_directory(tmp_path: Path) -> None:
    pairs = certbot_layout(tmp_path, "old.test")
    (tmp_path / "archive" / "old.test" / "privkey2.pem").chmod(0o640)
    os.chown(tmp_path / "archive" / "old.test" / "privkey2.pem", -1, 101)
    serial = x509.load_pem_x509_certificate(pairs[-1][1]).serial_number
    store = CertStore(tmp_path)
    found = store.current("old.test")  # read as it is, before any conversion (status, revoke)
    assert found is not None and found.version == "certbot" and found.serial == serial
    store.prepare()
    live = tmp_path / "live" / "old.test"
    assert not [p for p in live.iterdir() if p.is_symlink()] and consistent(live)
    found = store.current("old.test")
    assert found is not None and found.serial == serial and found.version == "0001"
    assert found.meta.to_json() == {"migrated_from": "certbot", "directory": "https://acme-v02.api.letsencrypt.org/directory"}
    key = (live / "privkey.pem").stat()
    assert (stat.S_IMODE(key.st_mode), key.st_gid) == (0o640, 101)  # the admin's permissions survive
    store.prepare()  # a second start changes nothing
    assert store.current("old.test").version == "0001"  # type: ignore[union-attr]
    new_key, new_cert = make_cert(["old.test"])
    store.save("old.test", new_key, new_cert, {})
    assert consistent(live) and store.current("old.test").version == "0002"  # type: ignore[union-attr]


def old_layout(root: Path, name: str, versions: int = 2) -> list[tuple[bytes, bytes]]:
    """What acmebox 0.1.0 wrote: live/<name> -> ../archive/<name>/NNNN, one directory symlink."""
    pairs = [make_cert([name]) for _ in range(versions)]
    for n, (key_pem, cert_pem) in enumerate(pairs, 1):
        d = root / "archive" / name / f"{n:04d}"
        d.mkdir(parents=True)
        (d / "privkey.pem").write_bytes(key_pem)
        (d / "privkey.pem").chmod(0o600)
        (d / "cert.pem").write_bytes(cert_pem)
        (d / "chain.pem").write_bytes(b"")
        (d / "fullchain.pem").write_bytes(cert_pem)
        (d / "meta.json").write_text(json.dumps({"names": [name], "placeholder": False}))
    (root / "live").mkdir(exist_ok=True)
    (root / "live" / name).symlink_to(f"../archive/{name}/{versions:04d}")
    return pairs


def test_takes_over_the_previous_layout(tmp_path: Path) -> None:
    pairs = old_layout(tmp_path, "a.test")
    serial = x509.load_pem_x509_certificate(pairs[-1][1]).serial_number
    store = CertStore(tmp_path)
    assert store.current("a.test").version == "0002"  # type: ignore[union-attr]
    store.prepare()
    live = tmp_path / "live" / "a.test"
    assert live.is_dir() and not live.is_symlink() and consistent(live)
    found = store.current("a.test")
    assert found is not None and (found.serial, found.version) == (serial, "0002")
    assert found.meta.to_json() == {"names": ["a.test"], "placeholder": False}
    assert sorted(p.name for p in (tmp_path / "live").iterdir()) == ["a.test"]


def test_an_interrupted_conversion_is_finished(tmp_path: Path) -> None:
    """A crash between moving the old link aside and renaming the new directory in."""
    pairs = old_layout(tmp_path, "a.test")
    os.rename(tmp_path / "live" / "a.test", tmp_path / "live" / ".a.test.old-layout")
    half = tmp_path / "live" / ".a.test.new-0123"
    half.mkdir()
    (half / "combined.pem").write_bytes(b"-----BEGIN")
    CertStore(tmp_path).prepare()
    live = tmp_path / "live" / "a.test"
    assert live.is_dir() and consistent(live)
    assert (live / "privkey.pem").read_bytes() == pairs[-1][0]
    assert sorted(p.name for p in (tmp_path / "live").iterdir()) == ["a.test"]


def test_an_interrupted_switch_is_rolled_forward(tmp_path: Path) -> None:
    """A crash between the renames inside live/<name>/: the next start installs the newest
    archive version, which was complete before the first rename."""
    store = CertStore(tmp_path)
    store.prepare()
    old = make_cert(["a.test"])
    store.save("a.test", *old, {"n": 1})
    live = tmp_path / "live" / "a.test"
    old_files = {p.name: p.read_bytes() for p in live.iterdir()}
    new = make_cert(["a.test"])
    store.save("a.test", *new, {"n": 2})
    for fname in ("privkey.pem", "meta.json"):  # renamed in LIVE_ORDER: these two had not switched yet
        (live / fname).write_bytes(old_files[fname])
    assert not consistent(live)
    store.prepare()
    assert consistent(live) and (live / "privkey.pem").read_bytes() == new[0]
    assert store.current("a.test").meta.to_json() == {"n": 2}  # type: ignore[union-attr]


def test_leftovers_of_a_crash_are_cleaned_and_never_live(tmp_path: Path) -> None:
    store = CertStore(tmp_path)
    store.prepare()
    key_pem, cert_pem = make_cert(["a.test"])
    store.save("a.test", key_pem, cert_pem, {})
    half = tmp_path / "archive" / "a.test" / ".new-deadbeef"
    half.mkdir()
    (half / "privkey.pem").write_bytes(b"-----BEGIN PRIV")
    tmp_file = tmp_path / "live" / "a.test" / ".privkey.pem.0123.tmp"
    tmp_file.write_bytes(b"-----BEGIN PRIV")
    store.prepare()
    assert not half.exists() and not tmp_file.exists()
    assert consistent(tmp_path / "live" / "a.test")


# -- key permissions -------------------------------------------------------------------------


def test_key_group_and_mode_are_carried_over(tmp_path: Path) -> None:
    store = CertStore(tmp_path)
    store.prepare()
    store.save("a.test", *make_cert(["a.test"]), {})
    key = tmp_path / "live" / "a.test" / "privkey.pem"
    os.chown(key, -1, 101)
    key.chmod(0o640)
    for _ in range(3):
        store.save("a.test", *make_cert(["a.test"]), {})
        for path in (key, key.with_name("combined.pem"), store.current("a.test").path / "privkey.pem"):  # type: ignore[union-attr]
            st = path.stat()
            assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, 101), path
    key.chmod(0o644)  # "other" is never carried over
    store.save("a.test", *make_cert(["a.test"]), {})
    assert stat.S_IMODE(key.stat().st_mode) == 0o640


def test_key_group_flag_is_applied_on_every_write(tmp_path: Path) -> None:
    store = CertStore(tmp_path, key_mode=0o640, key_group=101)
    store.prepare()
    store.save("a.test", *make_cert(["a.test"]), {})
    key = tmp_path / "live" / "a.test" / "privkey.pem"
    os.chown(key, -1, 0)
    key.chmod(0o600)  # someone narrowed it: the flags win on the next write
    store.save("a.test", *make_cert(["a.test"]), {})
    for path in (key, key.with_name("combined.pem")):
        st = path.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, 101), path
    assert stat.S_IMODE(key.with_name("fullchain.pem").stat().st_mode) == 0o644


WRITER = """
import datetime as dt, sys
from pathlib import Path
from acmebox import placeholder
from acmebox.store import CertStore
store = CertStore(Path(sys.argv[1]))
store.prepare()
pairs = [placeholder.make(("a.test",), "ec256", dt.datetime.now(dt.UTC)) for _ in range(4)]
print("ready", flush=True)
i = 0
while True:
    store.save("a.test", *pairs[i % 4], {"i": i})
    i += 1
"""


READER = """
import select, subprocess, sys
from pathlib import Path
from cryptography import x509
from acmebox import keys
root, mnt = Path(sys.argv[1]), Path(sys.argv[2])
# What docker does for `-v certs/live:/x` and `-v certs/live/a.test:/y`: bind mounts, made here,
# in this process's private mount namespace.
subprocess.run(["mount", "--bind", str(root / "live"), str(mnt / "live")], check=True)
subprocess.run(["mount", "--bind", str(root / "live" / "a.test"), str(mnt / "name")], check=True)
views = [root / "live" / "a.test", mnt / "live" / "a.test", mnt / "name"]

def matches(chain_pem, key_pem):
    cert = x509.load_pem_x509_certificates(chain_pem)[0]
    return keys.public_der(keys.from_pem(key_pem)) == keys.public_der(cert.public_key())

def combined_ok(view):
    data = (view / "combined.pem").read_bytes()
    return matches(data, data)

def pair_ok(view):
    return matches((view / "fullchain.pem").read_bytes(), (view / "privkey.pem").read_bytes())

checks = bad = 0
print("ready", flush=True)
while True:
    if select.select([sys.stdin], [], [], 0)[0]:
        command = sys.stdin.readline().strip()
        if command == "stop":
            print(checks, bad, flush=True)
            break
        wrong = [str(v) for v in views if not combined_ok(v) or (command == "pair" and not pair_ok(v))]
        print("ok" if not wrong else "bad " + " ".join(wrong), flush=True)
        continue
    for view in views:  # meanwhile, as fast as it can: combined.pem is right at every instant
        checks += 1
        if not combined_ok(view):
            bad += 1
            print("mismatch in", view, file=sys.stderr, flush=True)
"""


def ask(reader: subprocess.Popen[str], command: str) -> str:
    assert reader.stdin is not None and reader.stdout is not None
    reader.stdin.write(command + "\n")
    reader.stdin.flush()
    return reader.stdout.readline().strip()


def test_killed_writer_never_leaves_a_mismatched_pair_in_any_mount_view(tmp_path: Path) -> None:
    """SIGKILL a process that saves versions in a loop, at random instants, many times. A reader
    in its own mount namespace, looking through the whole volume, a bind mount of live/ and one
    of live/a.test/, never sees combined.pem with a key that does not fit its certificate;
    after each kill combined.pem is right in every view, and after the restart (prepare) the
    separate fullchain.pem and privkey.pem are too."""
    certs, mnt = tmp_path / "certs", tmp_path / "mnt"
    (mnt / "live").mkdir(parents=True)
    (mnt / "name").mkdir()
    store = CertStore(certs)
    store.prepare()
    store.save("a.test", *make_cert(["a.test"]), {})
    reader = subprocess.Popen(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", READER,
                               str(certs), str(mnt)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    try:
        assert reader.stdout is not None and reader.stdout.readline().strip() == "ready"
        rng = random.Random(1)
        seen_versions = set()
        for _ in range(15):
            proc = subprocess.Popen([sys.executable, "-c", WRITER, str(certs)], stdout=subprocess.PIPE, text=True)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.01, 0.15))  # a random instant, not a timing assertion
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert ask(reader, "combined") == "ok"
            CertStore(certs).prepare()  # the restart repairs and cleans up
            assert ask(reader, "pair") == "ok"
            seen_versions.add(json.loads((certs / "live" / "a.test" / "meta.json").read_text())["version"])
            assert not list((certs / "archive" / "a.test").glob(".new-*"))
            assert not [p for p in (certs / "live").iterdir() if p.name.startswith(".")]
            assert not list((certs / "live" / "a.test").glob(".*"))
        checks, bad = map(int, ask(reader, "stop").split())
    finally:
        reader.kill()
        reader.wait()
    assert bad == 0 and checks > 1000, (checks, bad)
    assert len(seen_versions) > 5


AS_NOBODY = """
import datetime as dt, logging, os, sys
from pathlib import Path
from acmebox import placeholder
from acmebox.store import CertStore
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
store = CertStore(Path(sys.argv[1]))
store.prepare()
store.save("a.test", *placeholder.make(("a.test",), "ec256", dt.datetime.now(dt.UTC)), {})
st = (Path(sys.argv[1]) / "live" / "a.test" / "privkey.pem").stat()
print(oct(st.st_mode & 0o777), st.st_gid)
"""


def test_a_group_acmebox_may_not_use_is_reported_not_fatal(tmp_path: Path) -> None:
    """acmebox not root (as in its image): a previous key of root's group without group bits
    (certbot's) is no loss and says nothing; a reader's group it cannot give is an error line,
    and the renewal still happens."""
    top = Path(tempfile.mkdtemp(prefix="acmebox-nobody-", dir="/tmp"))  # pytest's tmp is root-only
    try:
        certs = top / "certs"
        store = CertStore(certs)
        store.prepare()
        store.save("a.test", *make_cert(["a.test"]), {})
        subprocess.run(["chown", "-R", "65534:65534", str(top)], check=True)
        key = certs / "live" / "a.test" / "privkey.pem"
        command = as_user(65534, 65534, [sys.executable, "-c", AS_NOBODY, str(certs)])
        for gid, mode, expected, logged in ((0, 0o600, "0o600 65534", False), (101, 0o640, "0o640 65534", True)):
            os.chown(key, 65534, gid)
            key.chmod(mode)
            out = subprocess.run(command, capture_output=True, text=True, cwd=top)
            assert out.returncode == 0, out.stderr
            assert out.stdout.strip() == expected
            assert ("cannot keep group 101 on privkey.pem" in out.stderr) == logged, out.stderr
    finally:
        shutil.rmtree(top)
