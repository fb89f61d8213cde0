"""ACME Renewal Information (RFC 9773) on the wire: a certificate's CertID, the newOrder that
names the certificate it `replaces`, and the suggested window a renewalInfo answer gives. The
requests themselves are client.py's; when to act on a window is renewal.py's."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from acme import client as acme_client
from acme import messages
from cryptography import x509
from josepy.json_util import field


class NewOrder(messages.NewOrder):
    """newOrder with RFC 9773's `replaces` (the ARI CertID of the certificate being renewed)."""

    replaces: str | None = field("replaces", omitempty=True)


def ari_cert_id(cert: x509.Certificate) -> str:
    """base64url(AKI keyIdentifier) "." base64url(serial), as RFC 9773 defines it."""
    return acme_client._renewal_info_path_component(cert)


@dataclass(frozen=True)
class RenewalInfo:
    """An ARI answer: the suggested window and when to ask again."""

    start: dt.datetime
    end: dt.datetime
    retry_after: float | None
    explanation_url: str | None = None
