"""Thunderbird autoconfig: ``config-v1.1.xml`` for any address on a served domain, built from its routing."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from aiohttp import web
from lxml import etree

from ..config import Config, DomainConfig
from .published import MailService, mail_services, published

__all__ = ["AddressError", "PATHS", "parse_address", "served_domain", "offered_services",
           "build_client_config", "register_extra"]

CONTENT_TYPE = "application/xml"
PATHS = ("/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml")
# Thunderbird substitutes the address the user typed; the answer then never names a user.
USERNAME = "%EMAILADDRESS%"
_SOCKET_TYPES = {"implicit": "SSL", "starttls": "STARTTLS", "none": "plain"}
_TLS_ORDER = {"implicit": 0, "starttls": 1, "none": 2}
_KIND_ORDER = {"imap": 0, "pop3": 1, "smtp": 2}


class AddressError(ValueError):
    """Not an e-mail address we can route (the caller answers 400)."""


def parse_address(text: str | None) -> tuple[str, str]:
    """Split an address into (local part, lower-case ASCII domain); raise AddressError when it is not one."""
    if not text or not text.strip():
        raise AddressError("emailaddress is required")
    text = text.strip()
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain or len(text) > 254 or len(local) > 64:
        raise AddressError("emailaddress must look like name@domain")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 or c in '<>(),;:\\"[]@' for c in local):
        raise AddressError("emailaddress has characters an address cannot have")
    try:
        # IDNA turns a Unicode domain into the form the configuration is written in.
        domain = domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise AddressError("emailaddress has an invalid domain") from None
    labels = domain.split(".")
    if len(domain) > 253 or any(not 0 < len(lb) <= 63 or lb[0] == "-" or lb[-1] == "-"
                                or not all(c.isascii() and (c.isalnum() or c == "-") for c in lb)
                                for lb in labels):
        raise AddressError("emailaddress has an invalid domain")
    return local, domain


def served_domain(config: Config, domain: str) -> tuple[str, DomainConfig] | None:
    """The configured main domain (and its settings) that ``domain`` is, or is an alias of; None otherwise."""
    d = domain.lower()
    for name, dc in config.domains.items():
        if d == name.lower() or d in (a.lower() for a in dc.aliases):
            return name, dc
    return None


def offered_services(config: Config, smtp_backend: str = "") -> list[MailService]:
    """The published mail servers plus the gateway's other TLS flavour of IMAP and POP3, best first.

    [autodiscover] publishes one flavour per protocol (what Outlook's single entry
    can hold); where its port is the gateway's own listener, the listener for the
    other flavour is just as reachable, so clients that list alternatives get it.
    RFC 8314 asks that implicit TLS be preferred, so it sorts first.
    """
    out = list(mail_services(config, smtp_backend))
    ad, srv = config.autodiscover, config.server
    for s in list(out):
        if s.kind not in ("imap", "pop3") or getattr(ad, f"{s.kind}_port"):
            continue
        if s.tls == "implicit":
            port, tls = getattr(srv, f"{s.kind}_port"), "starttls"
        else:
            port, tls = getattr(srv, f"{s.kind}s_port"), "implicit"
        if port:
            out.append(MailService(s.kind, s.host, port, tls))
    return sorted(out, key=lambda s: (_KIND_ORDER[s.kind], _TLS_ORDER.get(s.tls, 3)))


def _server(parent: etree._Element, tag: str, kind: str, host: str, port: int, tls: str) -> etree._Element:
    server = etree.SubElement(parent, tag, type=kind)
    # password-cleartext is Thunderbird's name for LOGIN/AUTH PLAIN and HTTP Basic, which is what we
    # take; "cleartext" is inside the TLS session wherever socketType says so.
    for name, value in (("hostname", host), ("port", str(port)), ("socketType", _SOCKET_TYPES[tls]),
                        ("authentication", "password-cleartext"), ("username", USERNAME)):
        etree.SubElement(server, name).text = value
    return server


def build_client_config(domain: str, aliases: Sequence[str], services: Sequence[MailService],
                        ews_url: str = "", eas_url: str = "") -> bytes:
    """The clientConfig document (version 1.1) for ``domain`` and its aliases.

    Incoming servers keep the order given; Thunderbird takes the first it can use
    and offers the rest as alternatives.  The ``exchange`` entry (EWS and ActiveSync
    URLs, read by Thunderbird 102 and later) comes last among them: readers that do
    not know the type skip it, and Thunderbird ranks it after IMAP anyway.
    """
    root = etree.Element("clientConfig", version="1.1")
    provider = etree.SubElement(root, "emailProvider", id=domain)
    for d in (domain, *aliases):
        etree.SubElement(provider, "domain").text = d
    etree.SubElement(provider, "displayName").text = f"{domain} mail"
    etree.SubElement(provider, "displayShortName").text = domain
    for s in services:
        if s.kind in ("imap", "pop3"):
            _server(provider, "incomingServer", s.kind, s.host, s.port, s.tls)
    if ews_url:
        parts = urlsplit(ews_url)
        entry = _server(provider, "incomingServer", "exchange", parts.hostname or "", parts.port or 443,
                        "implicit")
        etree.SubElement(entry, "ewsURL").text = ews_url
        if eas_url:
            etree.SubElement(entry, "easURL").text = eas_url
    for s in services:
        if s.kind == "smtp":
            _server(provider, "outgoingServer", "smtp", s.host, s.port, s.tls)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def client_config_for(config: Config, domain: str) -> bytes | None:
    """The document for any address on ``domain``, or None when the gateway does not serve that domain."""
    served = served_domain(config, domain)
    if served is None:
        return None
    name, dc = served
    # The domain's routing only: a per-user override would tell a stranger that the user exists.
    pub = published(config, dc.smtp)
    return build_client_config(name.lower(), [a.lower() for a in dc.aliases], offered_services(config, dc.smtp),
                               pub.ews_url, pub.eas_url)


async def client_config(request: web.Request) -> web.Response:
    """No authentication: Thunderbird asks before it has a password, so the answer depends on the domain only."""
    from ..http.app import CTX  # the app module imports the front ends' register functions
    try:
        _, domain = parse_address(request.query.get("emailaddress"))
    except AddressError as exc:
        raise web.HTTPBadRequest(text=f"{exc}\n") from None
    body = client_config_for(request.app[CTX].config, domain)
    if body is None:
        raise web.HTTPNotFound(text="no configuration for that domain\n")
    return web.Response(body=body, content_type=CONTENT_TYPE, charset="utf-8",
                        headers={"Cache-Control": "public, max-age=3600"})


def register_extra(app: web.Application) -> None:
    """Mount both places Thunderbird looks: on autoconfig.DOMAIN and under /.well-known on the domain itself."""
    for path in PATHS:
        app.router.add_get(path, client_config)
