"""The certificate store on the shared certs volume: real files in live/, history in archive/.

    <certs>/live/<name>/      a real directory; each file in it is replaced by rename()
        combined.pem          full chain, then private key, in one file: the atomic unit
        fullchain.pem cert.pem chain.pem privkey.pem   certbot's names
        meta.json             CertMeta (below) and which archive version it is (written last)
    <certs>/archive/<name>/0003/   {cert,chain,fullchain,privkey}.pem and meta.json

Why real files: every way of mounting the volume into another container sees renewals. The
whole volume, `live/` alone (no link points out of it) and `live/<name>/` alone (a bind mount
of a directory sees renames inside it) all read the newest files. A single file bind-mounted
by path keeps the inode it was bound to, so it cannot follow any atomic update; that style is
documented as unsupported (README) and shows up in `--reload-verify` as an old serial.

What is atomic: each file, so a reader never sees a partial file, and `combined.pem`, which
holds the key and its certificate together, so a reader of that one file never gets a key
with the wrong certificate. fullchain.pem and privkey.pem are renamed one right after the
other; a reader that opens them at different instants could straddle the two renames. nginx
reads them only when reloaded, which acmebox does after the switch. A crash between two
renames is repaired by prepare() at the next start: the newest archive version, complete
before the first rename, is installed again (roll forward).

Key permissions: privkey.pem and combined.pem get `key_mode`/`key_group` when given;
otherwise the previous privkey.pem's group and group bits are carried over (0600 for a first
key). "Other" never gets access.

Migration: the previous layout (live/<name> a symlink into archive/) and certbot's (live/<name>/
a directory of symlinks) are converted by prepare() without a new order.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from acmebox import keys
from acmebox.errors import ConfigError
from acmebox.fsutil import fsync_dir, write_new

log = logging.getLogger(__name__)

KEEP_VERSIONS = 3  # the live one and two before it, for a manual roll-back
_VERSION = re.compile(r"^\d{4,}$")


def cert_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [n.lower() for n in san.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)  # RFC 8738: canonical, as acmebox.names writes them
    ]


def split_chain(fullchain_pem: bytes) -> list[x509.Certificate]:
    certs = x509.load_pem_x509_certificates(fullchain_pem)
    if not certs:
        raise ValueError("no certificate in the chain")
    return certs


@dataclass(frozen=True)
class CertMeta:
    """What is recorded beside a certificate in meta.json: the schema, read and written only
    here. Every field is optional (None: not recorded, and not written); keys this version does
    not know are kept as they were in `extra`."""

    names: tuple[str, ...] | None = None  # as ordered
    key_type: str | None = None
    profile: str | None = None
    directory: str | None = None  # the CA directory URL that issued it (certbot's renewal conf after a take-over)
    account: str | None = None  # the ACME account URL that ordered it
    issued_at: str | None = None  # ISO time
    replaced: str | None = None  # the ARI certificate id the order replaced
    placeholder: bool | None = None  # True: a self-signed placeholder (placeholder.py)
    migrated_from: str | None = None  # "certbot" or "files": taken over from another layout
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        data = dict(self.extra)
        for key in _META_KEYS:
            value = getattr(self, key)
            if value is not None:
                data[key] = list(value) if isinstance(value, tuple) else value
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CertMeta:
        """The record in `data`; a field of the wrong type is read as not recorded."""
        known: dict[str, Any] = {}
        for key in _META_KEYS:
            value = data.get(key)
            if key == "names":
                ok = isinstance(value, list) and all(isinstance(n, str) for n in value)
                value = tuple(value) if ok else None  # type: ignore[arg-type]
            elif key == "placeholder":
                value = value if isinstance(value, bool) else None
            elif not isinstance(value, str):
                value = None
            known[key] = value
        extra = {k: v for k, v in data.items() if k not in _META_KEYS and k != "version"}
        return cls(**known, extra=extra)

    @classmethod
    def of(cls, meta: CertMeta | Mapping[str, Any]) -> CertMeta:
        return meta if isinstance(meta, CertMeta) else cls.from_json(meta)


_META_KEYS = ("names", "key_type", "profile", "directory", "account", "issued_at", "replaced", "placeholder",
              "migrated_from")


@dataclass
class StoredCert:
    """One version of a certificate as it lies on disk."""

    name: str
    version: str
    path: Path
    chain: list[x509.Certificate]
    meta: CertMeta = field(default_factory=CertMeta)

    @property
    def cert(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def names(self) -> list[str]:
        return cert_names(self.cert)

    @property
    def not_before(self) -> dt.datetime:
        return self.cert.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.cert.not_valid_after_utc

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    @property
    def placeholder(self) -> bool:
        return bool(self.meta.placeholder)

    @property
    def key_type(self) -> str:
        return keys.key_type_of(self.cert.public_key())  # type: ignore[arg-type]


LIVE_KEY_FILES = ("combined.pem", "privkey.pem")
# combined.pem first: the file that is right on its own switches first. fullchain.pem and
# privkey.pem next to each other, and meta.json last: its version says the switch is complete.
LIVE_ORDER = ("combined.pem", "cert.pem", "chain.pem", "fullchain.pem", "privkey.pem", "meta.json")
_OLD_LAYOUT = ".old-layout"


@dataclass(frozen=True)
class KeyPerms:
    """Mode and group (None: the process's own) of privkey.pem and combined.pem."""

    mode: int
    gid: int | None


class CertStore:
    def __init__(self, root: Path, key_mode: int | None = None, key_group: int | None = None) -> None:
        self.root = root
        self.live = root / "live"
        self.archive = root / "archive"
        self.key_mode = key_mode
        self.key_group = key_group

    # -- start-up ------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the layout and prove we can write there (and give files to `key_group`); a
        ConfigError says why not. Then finish what a crash interrupted, and convert live/
        entries of the previous layout or of certbot into real directories."""
        try:
            for d in (self.root, self.live, self.archive):
                d.mkdir(mode=0o755, parents=True, exist_ok=True)
            self._remove_temp_files()  # first: on a full volume they may hold the last inodes
            probe = self.root / f".acmebox-probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):  # full is a disk fault: the preflight waits for room
                raise ConfigError(f"certs dir {self.root} is not usable: {e.strerror or e}") from None
            log.error("certs dir %s is full (%s): the certificates on it stay served; nothing is ordered "
                      "until it has room", self.root, e.strerror or e)
            return
        try:
            if self.key_group is not None:
                os.chown(probe, -1, self.key_group)
        except OSError:
            raise ConfigError(
                f"--key-group {self.key_group}: acmebox (uid {os.geteuid()}) may not give files to that group; "
                "it must be a member (in compose: group_add)"
            ) from None
        finally:
            probe.unlink(missing_ok=True)
        names = {p.name for p in self.live.iterdir() if not p.name.startswith(".")}
        names |= {p.name[1 : -len(_OLD_LAYOUT)] for p in self.live.glob(f".*{_OLD_LAYOUT}")}
        for name in sorted(names):
            try:
                self._repair(name)
            except (OSError, ValueError) as e:
                log.warning("certificate %s: could not convert or repair live/%s (%s); leaving it", name, name, e)
        self._clean_leftovers()

    def _remove_temp_files(self) -> None:
        """What an interrupted or failed save() left, by acmebox's own temporary names only."""
        for leftover in (*self.archive.glob("*/.new-*"), *self.live.glob(".*.new-*")):
            shutil.rmtree(leftover, ignore_errors=True)
        for tmp in self.live.glob("*/.*.tmp"):
            tmp.unlink(missing_ok=True)

    def _repair(self, name: str) -> None:
        live = self.live / name
        aside = self.live / f".{name}{_OLD_LAYOUT}"
        if aside.is_symlink():  # a conversion was interrupted between its two renames
            if os.path.lexists(live):
                aside.unlink()
            else:
                os.rename(aside, live)
        if live.is_symlink():
            self._convert_old_layout(name)
        elif live.is_dir() and not self._is_ours(live):
            self._convert_foreign(name)
        elif live.is_dir():
            self._roll_forward(name)

    def _is_ours(self, live: Path) -> bool:
        combined = live / "combined.pem"
        return combined.is_file() and not combined.is_symlink() and "version" in _read_json(live / "meta.json")

    def _convert_old_layout(self, name: str) -> None:
        """live/<name> -> ../archive/<name>/NNNN (acmebox 0.1.0): the same version, as files."""
        live = self.live / name
        target = live.resolve()
        if not (target / "fullchain.pem").is_file():
            versions = self._versions(name)
            if not versions:
                log.warning("certificate %s: live/%s points nowhere; removing the link", name, name)
                live.unlink()
                return
            target = self.archive / name / versions[-1]
        self._install_from_archive(name, target.name, target)
        log.info("certificate %s: live/%s/ is now a directory of files (version %s); containers that "
                 "bind-mounted live/%s before must be restarted once", name, name, target.name, name)

    def _convert_foreign(self, name: str) -> None:
        """A certbot (or hand-made) live/<name>/: its pair becomes a version of our own."""
        live = self.live / name
        try:
            key_pem = (live / "privkey.pem").read_bytes()
            fullchain_pem = (live / "fullchain.pem").read_bytes()
        except OSError as e:
            log.warning("certificate %s: live/%s/ is not readable as a key and chain (%s); it will be "
                        "replaced by the next certificate", name, name, e.strerror or e)
            return
        renewal_conf = self.root / "renewal" / f"{name}.conf"
        server = re.search(r"(?m)^\s*server\s*=\s*(\S+)", _read_text(renewal_conf))
        # certbot's record of the CA: the renewal then asks that CA to replace it
        origin = "certbot" if any(p.is_symlink() for p in live.iterdir()) else "files"
        meta = CertMeta(directory=server.group(1) if server else None, migrated_from=origin)
        stored = self.save(name, key_pem, fullchain_pem, meta)
        log.info("certificate %s: took over live/%s/ (serial %x) as version %s, without a new order",
                 name, name, stored.serial, stored.version)

    def _roll_forward(self, name: str) -> None:
        """Install the newest archive version again if live/<name>/ does not hold it exactly."""
        versions = self._versions(name)
        if not versions:
            return
        source = self.archive / name / versions[-1]
        key_pem, pem, meta = _read_version(source)
        live = self.live / name
        for fname, data, _ in _live_files(key_pem, pem, meta, versions[-1]):
            try:
                if (live / fname).is_symlink() or (live / fname).read_bytes() != data:
                    break
            except OSError:
                break
        else:
            return
        log.warning("certificate %s: finishing the switch to version %s that was interrupted", name, versions[-1])
        self._install(name, versions[-1], key_pem, pem, meta, self._key_perms(name))

    def _clean_leftovers(self) -> None:
        for entry in self.live.iterdir():
            if entry.name.startswith("."):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
            elif entry.is_dir() and not entry.is_symlink():
                for tmp in entry.glob(".*.tmp"):
                    tmp.unlink(missing_ok=True)

    # -- reading and writing -------------------------------------------------------------------

    def current(self, name: str) -> StoredCert | None:
        """What live/<name>/ holds, or None when there is nothing (or it is unreadable). Reads
        every layout: ours, the previous one (a symlink) and certbot's."""
        live = self.live / name
        if not live.exists():
            return None
        try:
            chain = split_chain((live / "fullchain.pem").read_bytes())
            meta = _read_json(live / "meta.json", strict=True)
        except (OSError, ValueError) as e:
            log.warning("certificate %s: live files unreadable (%s); treating it as missing", name, e)
            return None
        version = str(meta.pop("version", "")) or (
            os.readlink(live).rsplit("/", 1)[-1] if live.is_symlink() else "certbot"
        )
        path = self.archive / name / version
        return StoredCert(name, version, path if path.is_dir() else live.resolve(), chain, CertMeta.from_json(meta))

    def save(self, name: str, key_pem: bytes, fullchain_pem: bytes,
             record: CertMeta | Mapping[str, Any]) -> StoredCert:
        """Write a new archive version, then switch live/<name>/ to it file by file (see the
        module docstring for what is atomic). Raises ValueError when the key does not match
        the certificate, OSError when the volume refuses a write (the old files stay live)."""
        typed = CertMeta.of(record)
        meta = typed.to_json()
        chain = split_chain(fullchain_pem)
        if keys.public_der(keys.from_pem(key_pem)) != keys.public_der(chain[0].public_key()):  # type: ignore[arg-type]
            raise ValueError(f"certificate for {name} does not match its private key")
        pem = [c.public_bytes(serialization.Encoding.PEM) for c in chain]
        perms = self._key_perms(name)

        name_dir = self.archive / name
        name_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        versions = self._versions(name)
        version = f"{(int(versions[-1]) + 1) if versions else 1:04d}"
        tmp = name_dir / f".new-{uuid.uuid4().hex}"
        tmp.mkdir(mode=0o755)
        try:
            write_new(tmp / "privkey.pem", key_pem, perms.mode, perms.gid)
            write_new(tmp / "cert.pem", pem[0], 0o644)
            write_new(tmp / "chain.pem", b"".join(pem[1:]), 0o644)
            write_new(tmp / "fullchain.pem", b"".join(pem), 0o644)
            write_new(tmp / "meta.json", _json(meta), 0o644)
            fsync_dir(tmp)
            os.rename(tmp, name_dir / version)
        except BaseException:  # a full volume: what was written must not hold its last inodes
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(name_dir)
        self._install(name, version, key_pem, pem, meta, perms)
        self._prune(name, keep=version)
        return StoredCert(name, version, name_dir / version, chain, typed)

    def _install_from_archive(self, name: str, version: str, source: Path) -> None:
        key_pem, pem, meta = _read_version(source)
        st = (source / "privkey.pem").stat()
        self._install(name, version, key_pem, pem, meta, self._key_perms(name, st))

    def _install(self, name: str, version: str, key_pem: bytes, pem: list[bytes], meta: dict[str, Any],
                 perms: KeyPerms) -> None:
        live = self.live / name
        files = _live_files(key_pem, pem, meta, version)
        if live.is_dir() and not live.is_symlink():
            for fname, data, is_key in files:
                tmp = live / f".{fname}.{uuid.uuid4().hex}.tmp"
                try:
                    write_new(tmp, data, perms.mode if is_key else 0o644, perms.gid if is_key else None)
                    os.rename(tmp, live / fname)
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
            fsync_dir(live)
            return
        # A new name, or the previous layout's symlink: a complete directory goes in with renames.
        tmp_dir = self.live / f".{name}.new-{uuid.uuid4().hex}"
        tmp_dir.mkdir(mode=0o755)
        try:
            for fname, data, is_key in files:
                write_new(tmp_dir / fname, data, perms.mode if is_key else 0o644, perms.gid if is_key else None)
            fsync_dir(tmp_dir)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
        if live.is_symlink():
            # rename() cannot put a directory over a symlink: move the link aside first. A crash
            # in between leaves the aside link, which prepare() puts back and converts again.
            aside = self.live / f".{name}{_OLD_LAYOUT}"
            os.rename(live, aside)
            os.rename(tmp_dir, live)
            fsync_dir(self.live)
            aside.unlink()
        else:
            os.rename(tmp_dir, live)
        fsync_dir(self.live)

    def _key_perms(self, name: str, previous: os.stat_result | None = None) -> KeyPerms:
        """The flags when given; else the previous key's group bits and, when they grant
        anything, its group (certbot keeps them too, since its PR 6480); else 0600 and the
        process's group."""
        if previous is None:
            try:
                previous = (self.live / name / "privkey.pem").stat()
            except OSError:
                previous = None
        if self.key_mode is not None:
            mode = self.key_mode
        elif previous is not None:
            mode = (previous.st_mode & 0o660) | 0o400
        else:
            mode = 0o600
        gid = self.key_group
        if gid is None and previous is not None and previous.st_mode & 0o060:  # a group that has no access is no loss
            gid = previous.st_gid
        if gid is not None and self.key_group is None and not _may_use_group(gid):
            log.error("certificate %s: cannot keep group %d on privkey.pem: acmebox (uid %d) is not a member; "
                      "readers in that group lose access (pass --key-group and add acmebox to the group)",
                      name, gid, os.geteuid())
            gid = None
        return KeyPerms(mode, gid)

    def _versions(self, name: str) -> list[str]:
        d = self.archive / name
        return sorted((p.name for p in d.iterdir() if _VERSION.match(p.name)), key=int) if d.exists() else []

    def _prune(self, name: str, keep: str) -> None:
        for old in self._versions(name)[:-KEEP_VERSIONS]:
            if old != keep:
                shutil.rmtree(self.archive / name / old, ignore_errors=True)


def _may_use_group(gid: int) -> bool:
    return os.geteuid() == 0 or gid == os.getegid() or gid in os.getgroups()


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode()


def _read_json(path: Path, strict: bool = False) -> dict[str, Any]:
    """The object in `path`; {} when it is missing (or, unless strict, unreadable)."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        if strict:
            raise
        return {}
    if not isinstance(value, dict):
        if strict:
            raise ValueError(f"{path.name} is not a JSON object")
        return {}
    return value


def _read_version(source: Path) -> tuple[bytes, list[bytes], dict[str, Any]]:
    """(key PEM, certificate PEMs, meta) of one archive version directory."""
    key_pem = (source / "privkey.pem").read_bytes()
    chain = split_chain((source / "fullchain.pem").read_bytes())
    pem = [c.public_bytes(serialization.Encoding.PEM) for c in chain]
    return key_pem, pem, _read_json(source / "meta.json", strict=True)


def _live_files(key_pem: bytes, pem: list[bytes], meta: dict[str, Any],
                version: str) -> list[tuple[str, bytes, bool]]:
    """(file name, content, holds the key) for live/<name>/, in LIVE_ORDER."""
    fullchain = b"".join(pem)
    content = {
        "combined.pem": fullchain + key_pem,
        "cert.pem": pem[0],
        "chain.pem": b"".join(pem[1:]),
        "fullchain.pem": fullchain,
        "privkey.pem": key_pem,
        "meta.json": _json({**meta, "version": version}),
    }
    return [(fname, content[fname], fname in LIVE_KEY_FILES) for fname in LIVE_ORDER]
