"""The EWS SOAP core: parse a request envelope, build reply and fault envelopes (pure, no I/O)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lxml import etree

from adapters.interfaces import Credentials

from ..xmlsafe import XmlRejected, parse_untrusted

__all__ = ["SOAP_NS", "T_NS", "M_NS", "E_NS", "ServerVersion", "EXCHANGE_2010_SP3", "SERVER_VERSION",
           "REQUEST_VERSIONS", "EwsRequest", "SoapFault", "parse_envelope", "version_at_least", "t", "m",
           "sub", "xml_text", "envelope", "fault_envelope", "response_name", "response_message", "operation_error",
           "not_implemented"]

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"
T_NS = "http://schemas.microsoft.com/exchange/services/2006/types"
M_NS = "http://schemas.microsoft.com/exchange/services/2006/messages"
E_NS = "http://schemas.microsoft.com/exchange/services/2006/errors"
NSMAP = {"s": SOAP_NS, "m": M_NS, "t": T_NS}
MAX_REQUEST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class ServerVersion:
    """What the ServerVersionInfo header reports."""

    major: int
    minor: int
    major_build: int
    minor_build: int
    version: str  # the schema name; Exchange 2010 SP3 still reports its SP2 schema


EXCHANGE_2010_SP3 = ServerVersion(14, 3, 123, 4, "Exchange2010_SP2")
SERVER_VERSION = EXCHANGE_2010_SP3

# RequestServerVersion values we answer, oldest first. Newer clients (exchangelib
# starts at Exchange2016) are served with the 2010 SP2 schema, and the header
# tells them so; Exchange2007 (RTM) lacks ConvertId and is refused.
REQUEST_VERSIONS = ("Exchange2007_SP1", "Exchange2010", "Exchange2010_SP1", "Exchange2010_SP2",
                    "Exchange2013", "Exchange2013_SP1", "Exchange2016")


def version_at_least(requested: str | None, minimum: str) -> bool:
    """True when the request's schema version is ``minimum`` or newer; no header counts as the oldest."""
    return REQUEST_VERSIONS.index(requested or REQUEST_VERSIONS[0]) >= REQUEST_VERSIONS.index(minimum)


def t(name: str) -> str:
    return f"{{{T_NS}}}{name}"


def m(name: str) -> str:
    return f"{{{M_NS}}}{name}"


@dataclass(frozen=True)
class EwsRequest:
    """One parsed request: the body element's local name, the element itself and the SOAP header.

    ``credentials`` are the requester's own (from Basic auth), for services
    that may read the requester's data with them; they are never logged.
    """

    operation: str
    body: etree._Element
    server_version: str | None
    header: etree._Element | None
    credentials: Credentials | None = field(default=None, repr=False, compare=False)


class SoapFault(Exception):
    """A request refused as a whole, answered with a SOAP Fault.

    ``status`` is 400 when the bytes were not an EWS envelope at all and 500
    (as Exchange and SOAP 1.1 do) when a well-formed request was refused, so
    that clients read the ResponseCode from the fault detail.
    """

    def __init__(self, response_code: str, message: str, *, status: int = 500, faultcode: str | None = None) -> None:
        super().__init__(message)
        self.response_code = response_code
        self.message = message
        self.status = status
        self.faultcode = faultcode or ("s:Client" if status == 400 else f"a:{response_code}")


def _client_fault(message: str, code: str = "ErrorSchemaValidation") -> SoapFault:
    return SoapFault(code, message, status=400)


def parse_envelope(data: bytes, *, max_bytes: int = MAX_REQUEST_BYTES) -> EwsRequest:
    """The request in ``data``; raises SoapFault for anything that is not an acceptable EWS envelope."""
    if len(data) > max_bytes:
        raise _client_fault(f"The request is larger than {max_bytes} bytes.", "ErrorRequestStreamTooBig")
    try:
        root = parse_untrusted(data, max_bytes=max_bytes)
    except XmlRejected as exc:
        raise _client_fault(f"The request was refused: {exc}") from None
    if root.tag == f"{{{SOAP12_NS}}}Envelope":
        raise SoapFault("ErrorSchemaValidation", "SOAP 1.2 envelopes are not supported; send SOAP 1.1.",
                        status=400, faultcode="s:VersionMismatch")
    if root.tag != f"{{{SOAP_NS}}}Envelope":
        raise _client_fault("The request is not a SOAP 1.1 envelope.")
    header = root.find(f"{{{SOAP_NS}}}Header")
    body = root.find(f"{{{SOAP_NS}}}Body")
    if body is None:
        raise _client_fault("The SOAP envelope has no Body.")
    children = [c for c in body if isinstance(c.tag, str)]
    if len(children) != 1:
        raise _client_fault(f"The SOAP Body must hold exactly one request element, not {len(children)}.")
    request = children[0]
    qname = etree.QName(request)
    if len(qname.localname) > 100:  # it is echoed in the reply; no EWS operation name comes near this
        raise _client_fault("The request element's name is too long to be an EWS operation.")
    if qname.namespace != M_NS:
        raise _client_fault(f"The request element {qname.localname} is not in the EWS messages namespace.")
    version = None
    if header is not None:
        if header.find(t("ExchangeImpersonation")) is not None:
            raise SoapFault("ErrorImpersonationDenied", "Impersonation is not supported by this server.")
        rsv = header.find(t("RequestServerVersion"))
        if rsv is not None:
            version = rsv.get("Version")
            if version not in REQUEST_VERSIONS:
                raise SoapFault("ErrorInvalidServerVersion", "The specified server version is invalid.")
    return EwsRequest(qname.localname, request, version, header)


# Characters XML 1.0 cannot carry at all; calendar data from back ends sometimes holds them.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(value: str) -> str:
    """``value`` without the characters XML cannot represent (lxml would refuse the whole reply)."""
    return _NOT_XML.sub("", value)


def sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    """Append a child element; text and attribute values lose characters XML cannot carry."""
    child = etree.SubElement(parent, tag, {k: xml_text(v) for k, v in attrs.items()})
    if text is not None:
        child.text = xml_text(text)
    return child


def _envelope(version: ServerVersion) -> tuple[etree._Element, etree._Element]:
    env = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap=NSMAP)
    header = sub(env, f"{{{SOAP_NS}}}Header")
    sub(header, t("ServerVersionInfo"), MajorVersion=str(version.major), MinorVersion=str(version.minor),
        MajorBuildNumber=str(version.major_build), MinorBuildNumber=str(version.minor_build),
        Version=version.version)
    return env, sub(env, f"{{{SOAP_NS}}}Body")


def _serialise(env: etree._Element) -> bytes:
    return etree.tostring(env, xml_declaration=True, encoding="utf-8")


def envelope(response: etree._Element, version: ServerVersion = SERVER_VERSION) -> bytes:
    """A reply envelope around ``response`` (an m:...Response element) with the ServerVersionInfo header."""
    env, body = _envelope(version)
    body.append(response)
    return _serialise(env)


def fault_envelope(fault: SoapFault, version: ServerVersion = SERVER_VERSION) -> bytes:
    """A SOAP 1.1 Fault in Exchange's layout: the EWS ResponseCode and message in the detail."""
    env, body = _envelope(version)
    f = sub(body, f"{{{SOAP_NS}}}Fault")
    faultcode = etree.SubElement(f, "faultcode", nsmap={"a": T_NS})
    faultcode.text = fault.faultcode
    sub(f, "faultstring", fault.message, **{"{http://www.w3.org/XML/1998/namespace}lang": "en-US"})
    detail = etree.SubElement(f, "detail", nsmap={"e": E_NS})
    sub(detail, f"{{{E_NS}}}ResponseCode", fault.response_code)
    sub(detail, f"{{{E_NS}}}Message", fault.message)
    return _serialise(env)


def response_name(operation: str) -> str:
    """The response element's local name: GetUserAvailabilityRequest -> GetUserAvailabilityResponse."""
    base = operation[:-len("Request")] if operation.endswith("Request") else operation
    return base + "Response"


def response_message(parent: etree._Element, tag: str, code: str = "NoError",
                     text: str | None = None) -> etree._Element:
    """Append one ResponseMessage-shaped element: Success with NoError, or Error with its text and code."""
    if code == "NoError":
        msg = sub(parent, tag, ResponseClass="Success")
        sub(msg, m("ResponseCode"), code)
        return msg
    msg = sub(parent, tag, ResponseClass="Error")
    sub(msg, m("MessageText"), text or code)
    sub(msg, m("ResponseCode"), code)
    sub(msg, m("DescriptiveLinkKey"), "0")
    return msg


def operation_error(operation: str, code: str, text: str) -> etree._Element:
    """A whole operation answered with one error ResponseMessage, e.g. m:FindItemResponse/.../ResponseMessage."""
    name = response_name(operation)
    resp = etree.Element(m(name), nsmap={"m": M_NS, "t": T_NS})
    messages = sub(resp, m("ResponseMessages"))
    response_message(messages, m(name[:-len("Response")] + "ResponseMessage"), code, text)
    return resp


def not_implemented(operation: str) -> etree._Element:
    """The answer for an operation this gateway does not offer yet; clients see ErrorInvalidOperation."""
    return operation_error(operation, "ErrorInvalidOperation",
                           f"The operation {operation} is not implemented by this server yet.")
