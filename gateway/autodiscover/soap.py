"""SOAP autodiscover (MS-OXWSADISC): parse GetUserSettings/GetDomainSettings, answer with settings and errors (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from ..ews.soap import REQUEST_VERSIONS, SERVER_VERSION, xml_text
from ..xmlsafe import XmlRejected, parse_untrusted
from .user_settings import DOMAIN_SETTINGS, KNOWN_USER_SETTINGS, Value

__all__ = ["ANS", "WSA", "XSI", "ACTION_BASE", "SoapRequest", "SoapFault", "UserOutcome", "parse_request",
           "user_settings_response", "domain_settings_response", "fault_envelope", "MAX_USERS"]

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
ANS = "http://schemas.microsoft.com/exchange/2010/Autodiscover"
WSA = "http://www.w3.org/2005/08/addressing"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
ACTION_BASE = ANS + "/Autodiscover/"
OPERATIONS = ("GetUserSettings", "GetDomainSettings")
MAX_USERS = 100  # Exchange's own cap on users (and domains) per request
# SOAP autodiscover began with Exchange 2010; newer clients name newer versions and get the 2010 answer.
ACCEPTED_VERSIONS = tuple(v for v in REQUEST_VERSIONS if not v.startswith("Exchange2007")) + (
    "Exchange2015", "Exchange2019")


class SoapFault(Exception):
    """The request is refused as a whole with a SOAP Fault (400: not an envelope at all; 500: refused)."""

    def __init__(self, code: str, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass(frozen=True)
class SoapRequest:
    operation: str
    names: tuple[str, ...]  # mailboxes (GetUserSettings) or domains (GetDomainSettings)
    settings: tuple[str, ...]
    requested_version: str | None
    message_id: str | None
    error: str | None = None  # InvalidRequest text when the request is answered with a Response-level error


@dataclass(frozen=True)
class UserOutcome:
    """The answer for one mailbox: settings, a redirect to ``target``, or InvalidUser."""

    mailbox: str
    kind: str
    target: str = ""
    values: tuple[tuple[str, Value | None], ...] = ()  # (requested name, value; None = not available)


def _texts(parent: etree._Element | None, path: str) -> tuple[str, ...]:
    if parent is None:
        return ()
    return tuple(dict.fromkeys((e.text or "").strip() for e in parent.iterfind(path, {"a": ANS})))


def parse_request(data: bytes, max_bytes: int) -> SoapRequest:
    try:
        root = parse_untrusted(data, max_bytes=max_bytes, max_depth=16)
    except XmlRejected as exc:
        raise SoapFault("s:Client", f"The request was refused: {exc}", 400) from None
    if root.tag != f"{{{SOAP_NS}}}Envelope" or (body := root.find(f"{{{SOAP_NS}}}Body")) is None:
        raise SoapFault("s:Client", "The request is not a SOAP 1.1 envelope.", 400)
    children = [c for c in body if isinstance(c.tag, str)]
    qname = etree.QName(children[0]) if len(children) == 1 else None
    operation = qname.localname.removesuffix("RequestMessage") if qname else ""
    header = root.find(f"{{{SOAP_NS}}}Header")
    action = header.findtext(f"{{{WSA}}}Action") if header is not None else None
    if qname is None or qname.namespace != ANS or operation not in OPERATIONS:
        raise SoapFault("a:ActionNotSupported", "The message's operation is not supported by this endpoint.")
    # WCF dispatches on wsa:Action; a body that disagrees with it is refused as Exchange refuses it.
    if action is not None and action.strip() != ACTION_BASE + operation:
        raise SoapFault("a:ActionNotSupported", f"The action {action.strip()[:200]!r} is not supported.")
    version = header.findtext(f"{{{ANS}}}RequestedServerVersion") if header is not None else None
    message_id = header.findtext(f"{{{WSA}}}MessageID") if header is not None else None
    request = children[0].find(f"{{{ANS}}}Request")
    if operation == "GetUserSettings":
        names = _texts(request, "a:Users/a:User/a:Mailbox")
    else:
        names = _texts(request, "a:Domains/a:Domain")
    settings = _texts(request, "a:RequestedSettings/a:Setting")
    error = None
    if version is not None and version.strip() not in ACCEPTED_VERSIONS:
        error = "The requested server version is not supported."
    elif request is None or not names or not settings:
        error = f"The request must name at least one {'user' if operation == 'GetUserSettings' else 'domain'} " \
                "and one setting."
    elif len(names) > MAX_USERS:
        error = f"A request may name at most {MAX_USERS} users or domains."
    return SoapRequest(operation, names, settings, version and version.strip(), message_id, error)


def _sub(parent: etree._Element, name: str, text: str | None = None, ns: str = ANS) -> etree._Element:
    child = etree.SubElement(parent, f"{{{ns}}}{name}")
    child.text = None if text is None else xml_text(text)  # the users file may hold characters XML cannot carry
    return child


def _envelope(operation: str, message_id: str | None) -> tuple[etree._Element, etree._Element]:
    env = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={"s": SOAP_NS, "a": WSA})
    header = _sub(env, "Header", ns=SOAP_NS)
    action = _sub(header, "Action", ACTION_BASE + operation + "Response", ns=WSA)
    action.set(f"{{{SOAP_NS}}}mustUnderstand", "1")
    if message_id:
        _sub(header, "RelatesTo", message_id.strip()[:400], ns=WSA)
    info = etree.SubElement(header, f"{{{ANS}}}ServerVersionInfo", nsmap={"h": ANS, "i": XSI})
    v = SERVER_VERSION
    for name, value in (("MajorVersion", v.major), ("MinorVersion", v.minor), ("MajorBuildNumber", v.major_build),
                        ("MinorBuildNumber", v.minor_build), ("Version", v.version)):
        _sub(info, name, str(value))
    body = _sub(env, "Body", ns=SOAP_NS)
    message = etree.SubElement(body, f"{{{ANS}}}{operation}ResponseMessage", nsmap={None: ANS})
    # xsi is declared once here for the i:nil markers below, as Exchange (WCF) does.
    return env, etree.SubElement(message, f"{{{ANS}}}Response", nsmap={"i": XSI})


def _nil(parent: etree._Element, name: str) -> None:
    _sub(parent, name).set(f"{{{XSI}}}nil", "true")


def _codes(parent: etree._Element, code: str, message: str) -> None:
    _sub(parent, "ErrorCode", code)
    _sub(parent, "ErrorMessage", message)


def _setting(parent: etree._Element, name: str, value: Value) -> None:
    el = _sub(parent, "UserSetting" if parent.tag.endswith("UserSettings") else "DomainSetting")
    el.set(f"{{{XSI}}}type", value.xsi_type)
    _sub(el, "Name", name)
    value.write(el, lambda p, n, t=None: _sub(p, n, t))


def _setting_errors(parent: etree._Element, tag: str, errors: list[tuple[str, str]]) -> None:
    container = _sub(parent, f"{tag}Errors")
    for name, code in errors:
        err = _sub(container, tag + "Error")
        _codes(err, code, "The requested setting is invalid." if code == "InvalidSetting"
               else "The requested setting is not available.")
        _sub(err, "SettingName", name[:200])


def _serialise(env: etree._Element) -> bytes:
    return etree.tostring(env, xml_declaration=True, encoding="utf-8")


def user_settings_response(req: SoapRequest, outcomes: list[UserOutcome]) -> bytes:
    env, response = _envelope("GetUserSettings", req.message_id)
    if req.error:
        _codes(response, "InvalidRequest", req.error)
        _nil(response, "UserResponses")
        return _serialise(env)
    _codes(response, "NoError", "")
    users = _sub(response, "UserResponses")
    for out in outcomes:
        user = _sub(users, "UserResponse")
        if out.kind == "unknown":
            _codes(user, "InvalidUser", f"Invalid user: '{out.mailbox[:320]}'")
            _nil(user, "RedirectTarget")
            continue
        if out.kind == "redirect":
            _codes(user, "RedirectAddress", "Redirection address.")
            _sub(user, "RedirectTarget", out.target)
            continue
        _codes(user, "NoError", "No error.")
        _nil(user, "RedirectTarget")
        errors = [(n, "SettingIsNotAvailable" if n in KNOWN_USER_SETTINGS else "InvalidSetting")
                  for n, v in out.values if v is None]
        _setting_errors(user, "UserSetting", errors)
        settings = _sub(user, "UserSettings")
        for name, value in out.values:
            if value is not None:
                _setting(settings, name, value)
    return _serialise(env)


def domain_settings_response(req: SoapRequest, served: dict[str, dict[str, Value]]) -> bytes:
    """``served`` maps each requested domain the gateway serves to its setting values; others are InvalidDomain."""
    env, response = _envelope("GetDomainSettings", req.message_id)
    if req.error:
        _codes(response, "InvalidRequest", req.error)
        _nil(response, "DomainResponses")
        return _serialise(env)
    _codes(response, "NoError", "")
    domains = _sub(response, "DomainResponses")
    for name in req.names:
        entry = _sub(domains, "DomainResponse")
        values = served.get(name.lower())
        if values is None:
            _codes(entry, "InvalidDomain", f"The domain '{name[:253]}' is not valid.")
            continue
        _codes(entry, "NoError", "No error.")
        _setting_errors(entry, "DomainSetting", [(s, "InvalidSetting") for s in req.settings
                                                 if s not in DOMAIN_SETTINGS])
        settings = _sub(entry, "DomainSettings")
        for s in req.settings:
            if s in values:
                _setting(settings, s, values[s])
        _nil(entry, "RedirectTarget")
    return _serialise(env)


def fault_envelope(fault: SoapFault) -> bytes:
    env = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={"s": SOAP_NS, "a": WSA})
    header = _sub(env, "Header", ns=SOAP_NS)
    _sub(header, "Action", WSA + "/fault", ns=WSA)
    f = _sub(_sub(env, "Body", ns=SOAP_NS), "Fault", ns=SOAP_NS)
    etree.SubElement(f, "faultcode").text = fault.code
    string = etree.SubElement(f, "faultstring")
    string.text = fault.message
    string.set("{http://www.w3.org/XML/1998/namespace}lang", "en-US")
    return _serialise(env)
