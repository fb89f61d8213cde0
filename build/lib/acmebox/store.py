"""The certificate store on the shared certs volume, in a certbot-compatible layout.

    <certs>/live/<name>            -> ../archive/<name>/0003   (a symlink, switched atomically)
    <certs>/archive/<name>/0003/   {cert,chain,fullchain,privkey}.pem and meta.json

nginx keeps reading `live/<name>/fullchain.pem` and `live/<name>/privkey.pem` as with certbot.
Unlike certbot, which repoints four file symlinks one after another, `live/<name>` is one
directory symlink: a new version is written completely (and fsynced) into its own directory,
then a single rename() swaps the link. A reader therefore sees the old key and certificate or
the new ones, never a mix and never a partial file, even if acmebox dies at any instant.
Private keys are created 0600.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
import uuid
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
    return [n.lower() for n in san.get_values_for_type(x509.DNSName)]


def split_chain(fullchain_pem: bytes) -> list[x509.Certificate]:
    certs = x509.load_pem_x509_certificates(fullchain_pem)
    if not certs:
        raise ValueError("no certificate in the chain")
    return certs


@dataclass
class StoredCert:
    """One version of a certificate as it lies on disk."""

    name: str
    version: str
    path: Path
    chain: list[x509.Certificate]
    meta: dict[str, Any] = field(default_factory=dict)

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
        return bool(self.meta.get("placeholder"))

    @property
    def key_type(self) -> str:
        return keys.key_type_of(self.cert.public_key())  # type: ignore[arg-type]


class CertStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.live = root / "live"
        self.archive = root / "archive"

    def prepare(self) -> None:
        """Create the layout and prove we can write there; a ConfigError says why not."""
        try:
            for d in (self.root, self.live, self.archive):
                d.mkdir(mode=0o755, parents=True, exist_ok=True)
            probe = self.root / f".acmebox-probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"certs dir {self.root} is not usable: {e.strerror or e}") from None
        # What a crash mid-save leaves: a version never made live, a link never swapped in.
        for name_dir in self.archive.iterdir():
            for leftover in name_dir.glob(".new-*"):
                shutil.rmtree(leftover, ignore_errors=True)
        for tmp_link in self.live.glob(".*"):
            if tmp_link.is_symlink():
                tmp_link.unlink()

    def current(self, name: str) -> StoredCert | None:
        """The version `live/<name>` points at, or None when there is none (or it is unreadable)."""
        link = self.live / name
        if not link.exists():
            return None
        try:
            chain = split_chain((link / "fullchain.pem").read_bytes())
            meta_path = link / "meta.json"
            meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        except (OSError, ValueError) as e:
            log.warning("certificate %s: live files unreadable (%s); treating it as missing", name, e)
            return None
        version = os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else "certbot"
        return StoredCert(name, version, link.resolve(), chain, meta)

    def save(self, name: str, key_pem: bytes, fullchain_pem: bytes, meta: dict[str, Any]) -> StoredCert:
        """Write a new version and make it live in one atomic step."""
        chain = split_chain(fullchain_pem)
        if keys.public_der(keys.from_pem(key_pem)) != keys.public_der(chain[0].public_key()):  # type: ignore[arg-type]
            raise ValueError(f"certificate for {name} does not match its private key")
        pem = [c.public_bytes(serialization.Encoding.PEM) for c in chain]

        name_dir = self.archive / name
        name_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        versions = self._versions(name)
        version = f"{(int(versions[-1]) + 1) if versions else 1:04d}"
        tmp = name_dir / f".new-{uuid.uuid4().hex}"
        tmp.mkdir(mode=0o755)
        write_new(tmp / "privkey.pem", key_pem, 0o600)
        write_new(tmp / "cert.pem", pem[0], 0o644)
        write_new(tmp / "chain.pem", b"".join(pem[1:]), 0o644)
        write_new(tmp / "fullchain.pem", b"".join(pem), 0o644)
        write_new(tmp / "meta.json", json.dumps(meta, indent=2, sort_keys=True).encode(), 0o644)
        fsync_dir(tmp)
        os.rename(tmp, name_dir / version)
        fsync_dir(name_dir)
        self._switch(name, version)
        self._prune(name, keep=version)
        return StoredCert(name, version, name_dir / version, chain, meta)

    def _switch(self, name: str, version: str) -> None:
        link = self.live / name
        if link.is_dir() and not link.is_symlink():
            # A certbot-made live/<name> directory: keep it in the archive, then take its place.
            os.rename(link, self.archive / name / f"certbot-{uuid.uuid4().hex[:8]}")
        tmp_link = self.live / f".{name}.{uuid.uuid4().hex}"
        os.symlink(f"../archive/{name}/{version}", tmp_link)
        os.replace(tmp_link, link)
        fsync_dir(self.live)

    def _versions(self, name: str) -> list[str]:
        d = self.archive / name
        return sorted((p.name for p in d.iterdir() if _VERSION.match(p.name)), key=int) if d.exists() else []

    def _prune(self, name: str, keep: str) -> None:
        for old in self._versions(name)[:-KEEP_VERSIONS]:
            if old != keep:
                shutil.rmtree(self.archive / name / old, ignore_errors=True)
