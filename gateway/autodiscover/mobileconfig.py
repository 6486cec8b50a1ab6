"""Apple configuration profiles: ``GET /mobileconfig`` gives the caller an ActiveSync or IMAP/SMTP account profile."""

from __future__ import annotations

import plistlib
import uuid
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from ..config import Config
from .autoconfig import AddressError, offered_services, parse_address
from .published import MailService, ownership, published

__all__ = ["CONTENT_TYPE", "PROTOCOLS", "ProfileError", "build_profile", "sign_profile", "payload_uuid",
           "profile_response", "register_extra"]

CONTENT_TYPE = "application/x-apple-aspen-config"
PROTOCOLS = ("eas", "imap")
# Fixed, so one address on one gateway host always gets the same UUIDs: installing a
# fresh profile then replaces the old one instead of adding a second account.
_NAMESPACE = uuid.UUID("5f0c2a8e-5b7d-4c1e-9a43-0c6f1d2e8b71")


class ProfileError(ValueError):
    """This profile cannot be made (unknown protocol, or IMAP asked for where none is published)."""


def payload_uuid(address: str, host: str, part: str) -> str:
    """A stable UUID per address, gateway host and payload."""
    return str(uuid.uuid5(_NAMESPACE, f"{address.lower()}|{host.lower()}|{part}")).upper()


def _eas_payload(address: str, login: str, eas_url: str, ident: str, host: str) -> dict:
    parts = urlsplit(eas_url)
    # Host takes host[:port]; the device always uses the standard ActiveSync path on it.
    server = parts.hostname if parts.port in (None, 443) else f"{parts.hostname}:{parts.port}"
    return {
        "PayloadType": "com.apple.eas.account", "PayloadVersion": 1,
        "PayloadIdentifier": f"{ident}.eas", "PayloadUUID": payload_uuid(address, host, "eas"),
        "PayloadDisplayName": "Exchange ActiveSync", "PayloadDescription": f"Mail, calendar and contacts of {address}",
        "EmailAddress": address, "UserName": login, "Host": server, "SSL": parts.scheme == "https",
    }


def _pick(services: Sequence[MailService], kind: str) -> MailService | None:
    # A profile holds one server per direction: the first, which is the most preferred (implicit TLS).
    return next((s for s in services if s.kind == kind), None)


def _mail_payload(address: str, login: str, name: str, services: Sequence[MailService], ident: str,
                  host: str) -> dict:
    incoming, outgoing = _pick(services, "imap"), _pick(services, "smtp")
    if incoming is None or outgoing is None:
        raise ProfileError("no IMAP server and SMTP submission server are published for an IMAP profile")
    return {
        "PayloadType": "com.apple.mail.managed", "PayloadVersion": 1,
        "PayloadIdentifier": f"{ident}.mail", "PayloadUUID": payload_uuid(address, host, "mail"),
        "PayloadDisplayName": "Mail (IMAP)", "PayloadDescription": f"IMAP and SMTP for {address}",
        "EmailAccountType": "EmailTypeIMAP", "EmailAccountDescription": address,
        "EmailAccountName": name, "EmailAddress": address,
        # Apple's "use SSL" means TLS on the given port, implicit or by STARTTLS on a plain port.
        "IncomingMailServerHostName": incoming.host, "IncomingMailServerPortNumber": incoming.port,
        "IncomingMailServerUseSSL": incoming.tls != "none", "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerUsername": login,
        "OutgoingMailServerHostName": outgoing.host, "OutgoingMailServerPortNumber": outgoing.port,
        "OutgoingMailServerUseSSL": outgoing.tls != "none", "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerUsername": login, "OutgoingPasswordSameAsIncomingPassword": True,
    }


def build_profile(address: str, login: str, display_name: str, organisation: str, protocol: str,
                  services: Sequence[MailService], eas_url: str) -> bytes:
    """The profile as an XML property list; never a password in it (the device asks while installing)."""
    if protocol not in PROTOCOLS:
        raise ProfileError(f"protocol must be one of {', '.join(PROTOCOLS)}")
    host = urlsplit(eas_url).hostname or ""
    # Reverse-DNS, as Apple asks; a UUID stands for the address, which may not go in an identifier as is.
    ident = ".".join(reversed(host.split("."))) + ".casgate." + payload_uuid(address, host, "id").lower()
    payload = (_eas_payload(address, login, eas_url, ident, host) if protocol == "eas"
               else _mail_payload(address, login, display_name, services, ident, host))
    profile = {
        "PayloadType": "Configuration", "PayloadVersion": 1,
        "PayloadIdentifier": f"{ident}.{protocol}",
        "PayloadUUID": payload_uuid(address, host, f"profile-{protocol}"),
        "PayloadDisplayName": f"{address} ({'Exchange ActiveSync' if protocol == 'eas' else 'IMAP'})",
        "PayloadDescription": f"Sets up {address} on this device; it asks for the password while installing.",
        "PayloadOrganization": organisation,
        "PayloadContent": [payload],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=True)


def sign_profile(profile: bytes, cert_file: Path, key_file: Path) -> bytes:
    """Wrap the profile in CMS SignedData (DER) made with the certificate's key, the rest of its chain attached."""
    chain = x509.load_pem_x509_certificates(cert_file.read_bytes())
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    builder = pkcs7.PKCS7SignatureBuilder().set_data(profile).add_signer(chain[0], key, hashes.SHA256())
    for extra in chain[1:]:
        builder = builder.add_certificate(extra)
    # Not detached: the device reads the profile out of the envelope. Binary: the plist's
    # bytes are signed as they are, without S/MIME's change of line ends to CRLF.
    return builder.sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])


def signing_enabled(config: Config) -> bool:
    return config.autodiscover.sign_mobileconfig


def profile_response(config: Config, profile: bytes, filename: str, sign: bool) -> web.Response:
    if sign:
        # Read per request: profiles are fetched rarely, and a renewed certificate is used at once.
        profile = sign_profile(profile, config.path(config.tls.cert), config.path(config.tls.key))
    return web.Response(body=profile, headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "private, no-store",
                                               "Content-Disposition": f'attachment; filename="{filename}"'})


async def mobileconfig(request: web.Request) -> web.Response:
    from ..http.app import CTX  # the app module imports the front ends' register functions
    from ..http.basic_auth import authenticate
    ctx = request.app[CTX]
    user, _ = await authenticate(request, ctx.auth)
    asked = request.query.get("emailaddress") or user.address
    try:
        parse_address(asked)
    except AddressError as exc:
        raise web.HTTPBadRequest(text=f"{exc}\n") from None
    # Only the caller's own address (an alias of it included): a profile names the login.
    if ownership(ctx.config, ctx.directory, user, asked).kind == "unknown":
        raise web.HTTPForbidden(text="a profile is only made for your own address\n")
    protocol = request.query.get("protocol", "eas").lower()
    smtp = user.backends.get("smtp", "")
    try:
        body = build_profile(user.address, user.login, user.display_name, user.domain, protocol,
                             offered_services(ctx.config, smtp), published(ctx.config, smtp).eas_url)
    except ProfileError as exc:
        raise web.HTTPBadRequest(text=f"{exc}\n") from None
    filename = f"{user.domain}-{protocol}.mobileconfig"
    return profile_response(ctx.config, body, filename, signing_enabled(ctx.config))


def register_extra(app: web.Application) -> None:
    app.router.add_get("/mobileconfig", mobileconfig)
