"""ValidateCert (MS-ASCMD 2.2.1.22): is this S/MIME certificate good, as far as the server can tell?

Each certificate is checked for form, validity period, use (an extended key
usage, when present, must allow e-mail protection) and a chain of verified
signatures up to a trusted root: the system's CA bundle plus the gateway's
[tls] ca_file, with the device's CertificateChain as intermediates.
Revocation is not checked here (no CRL or OCSP fetching); a device that asks
for it with CheckCRL is told the revocation server could not be reached.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from ..wbxml import Element
from . import EasCall, EasError

NS = "ValidateCert"
SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# ValidateCert status (MS-ASCMD 2.2.3.177.18).
OK, PROTOCOL_ERROR, BAD_SIGNATURE, UNTRUSTED, BAD_CHAIN, NOT_FOR_EMAIL, EXPIRED = 1, 2, 3, 4, 5, 6, 7
NO_REVOCATION_SERVER = 14
MAX_CERTIFICATES = 50
MAX_DEPTH = 10


@functools.lru_cache(maxsize=4)
def _roots(extra: str) -> tuple[x509.Certificate, ...]:
    found: list[x509.Certificate] = []
    for path in (SYSTEM_BUNDLE, Path(extra) if extra else None):
        if path is not None and path.is_file():
            try:
                found.extend(x509.load_pem_x509_certificates(path.read_bytes()))
            except ValueError:
                continue
    return tuple(found)


def _load(element: Element) -> x509.Certificate | None:
    raw = element.opaque if element.opaque is not None else (element.text or "").encode()
    try:
        der = base64.b64decode(raw, validate=False) if element.opaque is None else raw
        return x509.load_der_x509_certificate(der)
    except (ValueError, binascii.Error, TypeError):
        return None


def _valid_now(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _for_email(cert: x509.Certificate) -> bool:
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return ExtendedKeyUsageOID.EMAIL_PROTECTION in usages or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):  # wrong issuer name, key type or signature
        return False


def check(cert: x509.Certificate, chain: list[x509.Certificate], roots: tuple[x509.Certificate, ...],
          now: dt.datetime) -> int:
    """The ValidateCert status of one certificate."""
    if not _valid_now(cert, now):
        return EXPIRED
    if not _for_email(cert):
        return NOT_FOR_EMAIL
    trusted = {r.public_bytes(Encoding.DER) for r in roots}

    def is_root(c: x509.Certificate) -> bool:
        return c.public_bytes(Encoding.DER) in trusted

    current = cert
    for _ in range(MAX_DEPTH):
        if is_root(current):
            return OK
        candidates = [c for c in (*chain, *roots) if c.subject == current.issuer and c is not current]
        if not candidates:
            return UNTRUSTED
        issuer = next((c for c in candidates if _signed_by(current, c)), None)
        if issuer is None:
            return BAD_SIGNATURE
        if not _valid_now(issuer, now):
            return EXPIRED
        if issuer is current or (issuer.subject == issuer.issuer and not is_root(issuer)):
            return UNTRUSTED  # a self-signed certificate nobody here trusts
        current = issuer
    return BAD_CHAIN


async def run(call: EasCall) -> Element:
    body = call.body
    if body is None or body.ns != NS or body.name != "ValidateCert":
        raise EasError(PROTOCOL_ERROR, "expected a ValidateCert request")
    certificates = body.find("Certificates")
    if certificates is None or not certificates.findall("Certificate"):
        raise EasError(PROTOCOL_ERROR, "ValidateCert without certificates")
    if len(certificates.children) > MAX_CERTIFICATES:
        raise EasError(PROTOCOL_ERROR, "too many certificates")
    chain_element = body.find("CertificateChain")
    chain = [c for c in (_load(e) for e in (chain_element.findall("Certificate") if chain_element else [])[
        :MAX_CERTIFICATES]) if c is not None]
    check_crl = body.text_of("CheckCRL") == "1"
    ca_file = call.ctx.config.tls.ca_file
    roots = _roots(str(call.ctx.config.path(ca_file)) if ca_file else "")
    now = dt.datetime.now(dt.timezone.utc)
    out = []
    for element in certificates.findall("Certificate"):
        cert = _load(element)
        status = BAD_CHAIN if cert is None else check(cert, chain, roots, now)
        if status == OK and check_crl:
            status = NO_REVOCATION_SERVER
        out.append(Element(NS, "Certificate", [Element(NS, "Status", text=str(status))]))
    return Element(NS, "ValidateCert", [Element(NS, "Status", text=str(OK)), *out])
