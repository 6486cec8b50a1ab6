"""POX autodiscover (MS-OXDSCLI and MS-ASCMD Autodiscover): parse requests, build Outlook and mobile answers (pure)."""

from __future__ import annotations

import functools

import datetime as dt
import zlib
from dataclasses import dataclass

from lxml import etree

from ..ews.soap import SERVER_VERSION, ServerVersion, xml_text
from ..xmlsafe import MalformedXml, UnsafeXml, XmlRejected, parse_untrusted
from .published import Mailbox, Published

__all__ = ["REQUEST_OUTLOOK", "REQUEST_MOBILE", "RESPONSE", "RESPONSE_OUTLOOK", "RESPONSE_MOBILE", "PoxRequest",
           "PoxError", "parse_request", "server_version_hex", "outlook_settings", "outlook_redirect",
           "outlook_not_found", "mobile_settings", "mobile_redirect", "mobile_not_found", "error_response"]

_BASE = "http://schemas.microsoft.com/exchange/autodiscover/"
REQUEST_OUTLOOK = _BASE + "outlook/requestschema/2006"
REQUEST_MOBILE = _BASE + "mobilesync/requestschema/2006"
RESPONSE = _BASE + "responseschema/2006"
RESPONSE_OUTLOOK = _BASE + "outlook/responseschema/2006a"
RESPONSE_MOBILE = _BASE + "mobilesync/responseschema/2006"
NOT_FOUND = "The e-mail address cannot be found."


@dataclass(frozen=True)
class PoxRequest:
    """One request: which answer schema it accepts, the address asked about, and the legacy DN Outlook may send."""

    response_schema: str
    email: str
    legacy_dn: str = ""

    @property
    def mobile(self) -> bool:
        return self.response_schema == RESPONSE_MOBILE


class PoxError(Exception):
    """A request answered with the schema's Error element: 600 Invalid Request or 601 schema not supported.

    ``status`` is the HTTP status: 400 when the body was not usable XML at all,
    200 (as Exchange answers) when it was XML but not an acceptable request.
    """

    def __init__(self, code: int, message: str, status: int = 200) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def parse_request(data: bytes, max_bytes: int) -> PoxRequest:
    """The request in ``data``; raises PoxError for anything that is not one we can answer."""
    try:
        root = parse_untrusted(data, max_bytes=max_bytes, max_depth=8)
    except (MalformedXml, UnsafeXml) as exc:
        raise PoxError(600, "Invalid Request", 400) from exc
    except XmlRejected as exc:
        raise PoxError(600, "Invalid Request", 413) from exc
    ns = etree.QName(root).namespace
    if ns not in (REQUEST_OUTLOOK, REQUEST_MOBILE) or etree.QName(root).localname != "Autodiscover":
        raise PoxError(600, "Invalid Request")
    request = root.find(f"{{{ns}}}Request")
    if request is None:
        raise PoxError(600, "Invalid Request")
    schema = (request.findtext(f"{{{ns}}}AcceptableResponseSchema") or "").strip()
    email = (request.findtext(f"{{{ns}}}EMailAddress") or "").strip()
    legacy_dn = (request.findtext(f"{{{ns}}}LegacyDN") or "").strip()
    if schema not in (RESPONSE_OUTLOOK, RESPONSE_MOBILE):
        raise PoxError(601, "Requested schema version not supported")
    if not email and not legacy_dn or len(email) > 320 or len(legacy_dn) > 1024:
        raise PoxError(600, "Invalid Request")
    return PoxRequest(schema, email, legacy_dn)


def server_version_hex(v: ServerVersion = SERVER_VERSION) -> str:
    """ServerVersion as Outlook reads it: 4 spare bits, 6 bits major, 6 bits minor, a set bit, 15 bits build."""
    return f"{(0x7 << 28) | (v.major << 22) | (v.minor << 16) | 0x8000 | v.major_build:08X}"


def _doc(inner_ns: str | None) -> tuple[etree._Element, etree._Element]:
    root = etree.Element(f"{{{RESPONSE}}}Autodiscover", nsmap={None: RESPONSE})
    ns = inner_ns or RESPONSE
    response = etree.SubElement(root, f"{{{ns}}}Response", nsmap={None: ns} if inner_ns else None)
    return root, response


def _add(parent: etree._Element, name: str, text: str | None = None, **attrs: str) -> etree._Element:
    child = etree.SubElement(parent, f"{{{etree.QName(parent).namespace}}}{name}", attrs)
    # Display names come from the users file, which may hold characters XML cannot carry.
    child.text = None if text is None else xml_text(text)
    return child


def _bytes(root: etree._Element) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="utf-8")


def _error(parent: etree._Element, code: int, message: str, now: dt.datetime | None, error_id: str) -> None:
    now = now or dt.datetime.now(dt.timezone.utc)
    err = _add(parent, "Error", Time=now.strftime("%H:%M:%S.%f") + "0", Id=error_id)
    _add(err, "ErrorCode", str(code))
    _add(err, "Message", message)
    _add(err, "DebugData")


def _error_id(host: str) -> str:
    # Exchange names the answering server with a number; a checksum of our host name is as stable.
    return str(zlib.crc32(host.encode()))


def error_response(code: int, message: str, host: str = "", now: dt.datetime | None = None) -> bytes:
    """The schema-neutral error (responseschema/2006): 600 Invalid Request, 601 schema not supported..."""
    root, response = _doc(None)
    _error(response, code, message, now, _error_id(host))
    return _bytes(root)


def outlook_not_found(host: str = "", now: dt.datetime | None = None) -> bytes:
    """What Outlook gets for an address that is not the caller's, whether or not anyone has it."""
    root, response = _doc(RESPONSE_OUTLOOK)
    _error(response, 500, NOT_FOUND, now, _error_id(host))
    return _bytes(root)


def outlook_redirect(target: str) -> bytes:
    root, response = _doc(RESPONSE_OUTLOOK)
    account = _add(response, "Account")
    _add(account, "AccountType", "email")
    _add(account, "Action", "redirectAddr")
    _add(account, "RedirectAddr", target)
    return _bytes(root)


def _flag(on: bool) -> str:
    return "on" if on else "off"


def _mail_protocol(account: etree._Element, kind: str, host: str, port: int, tls: str, login: str) -> None:
    proto = _add(account, "Protocol")
    _add(proto, "Type", kind.upper())
    _add(proto, "Server", host)
    _add(proto, "Port", str(port))
    _add(proto, "DomainRequired", "off")
    _add(proto, "LoginName", login)
    _add(proto, "SPA", "off")
    # SSL says whether TLS is used at all; Encryption (read first by Outlook 2010+ and Thunderbird) says how.
    _add(proto, "SSL", _flag(tls != "none"))
    _add(proto, "Encryption", {"implicit": "SSL", "starttls": "TLS"}.get(tls, "None"))
    _add(proto, "AuthRequired", "on")
    if kind == "smtp":
        _add(proto, "UsePOPAuth", "off")
        _add(proto, "SMTPLast", "off")


def _exchange_protocol(account: etree._Element, kind: str, view: Published) -> None:
    proto = _add(account, "Protocol")
    _add(proto, "Type", kind)
    _add(proto, "Server", view.host)
    if kind == "EXCH":
        _add(proto, "ServerVersion", server_version_hex())
    else:  # EXPR: Outlook Anywhere, reached over HTTPS with Basic authentication
        _add(proto, "SSL", "On")
        _add(proto, "AuthPackage", "Basic")
    # ASUrl (availability) and OOFUrl are the EWS URL, as on Exchange; OAB and UM are not offered.
    _add(proto, "ASUrl", view.ews_url)
    _add(proto, "EwsUrl", view.ews_url)
    _add(proto, "EcpUrl", view.ecp_url)
    _add(proto, "OOFUrl", view.ews_url)


def _web_protocol(account: etree._Element, view: Published) -> None:
    proto = _add(account, "Protocol")
    _add(proto, "Type", "WEB")
    for place, inner in (("External", "EXPR"), ("Internal", "EXCH")):
        side = _add(proto, place)
        _add(side, "OWAUrl", view.owa_url, AuthenticationMethod="Basic")
        nested = _add(side, "Protocol")
        _add(nested, "Type", inner)
        _add(nested, "ASUrl", view.ews_url)


@functools.lru_cache(maxsize=4096)  # pure in immutable inputs: a repeated client's answer is built once
def outlook_settings(mailbox: Mailbox, view: Published) -> bytes:
    """The outlook/responseschema/2006a answer: User, then EXCH, EXPR, WEB and the mail protocols."""
    root, response = _doc(RESPONSE_OUTLOOK)
    user = _add(response, "User")
    _add(user, "DisplayName", mailbox.display_name)
    _add(user, "LegacyDN", mailbox.legacy_dn)
    _add(user, "AutoDiscoverSMTPAddress", mailbox.address)
    _add(user, "DeploymentId", view.deployment_id)
    account = _add(response, "Account")
    _add(account, "AccountType", "email")
    _add(account, "Action", "settings")
    for kind in ("EXCH", "EXPR"):
        _exchange_protocol(account, kind, view)
    _web_protocol(account, view)
    for s in view.services:
        _mail_protocol(account, s.kind, s.host, s.port, s.tls, mailbox.login)
    return _bytes(root)


def _mobile_doc(requested: str, culture: str, display_name: str = "") -> tuple[etree._Element, etree._Element]:
    root, response = _doc(RESPONSE_MOBILE)
    _add(response, "Culture", culture)
    user = _add(response, "User")
    if display_name:
        _add(user, "DisplayName", display_name)
    _add(user, "EMailAddress", requested)
    return root, _add(response, "Action")


@functools.lru_cache(maxsize=4096)
def mobile_settings(mailbox: Mailbox, view: Published) -> bytes:
    """The mobilesync answer: one MobileSync server whose Url and Name are both the ActiveSync URL."""
    root, action = _mobile_doc(mailbox.address, view.culture, mailbox.display_name)
    server = _add(_add(action, "Settings"), "Server")
    _add(server, "Type", "MobileSync")
    _add(server, "Url", view.eas_url)
    _add(server, "Name", view.eas_url)
    return _bytes(root)


def mobile_redirect(requested: str, target: str, culture: str) -> bytes:
    root, action = _mobile_doc(requested, culture)
    _add(action, "Redirect", target)
    return _bytes(root)


def mobile_not_found(requested: str, culture: str) -> bytes:
    """Status 2 (protocol error) is the only failure MS-ASCMD defines; the message says which."""
    root, action = _mobile_doc(requested, culture)
    err = _add(action, "Error")
    _add(err, "Status", "2")
    _add(err, "Message", NOT_FOUND)
    _add(err, "DebugData", "MailUser")
    return _bytes(root)
