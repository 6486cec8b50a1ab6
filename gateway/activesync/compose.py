"""Outgoing mail for ActiveSync SendMail, SmartReply and SmartForward: the client's MIME in, what to submit out.

A phone sends a complete RFC 5322 message. ``compose`` decides what the
submission service hands to the SMTP server and what it files in Sent Items:

* The top-level header is checked line by line before anything interprets it:
  a bare CR, line endings that change within the header, a NUL, a line over 998
  octets or a line that is neither a field nor a continuation is refused, so no
  two parsers (ours, the stdlib's, the MTA's) can disagree about which fields
  exist. Recipients come from every To, Cc and Bcc field (``getaddresses``,
  group members included); an item it cannot read is refused, not dropped. The
  rewritten header is parsed again with the stdlib and must give the same
  recipients.
* From is the user (no send-as); Sender and Reply-To survive only if they name
  the user. Date and Message-ID are added when missing. ``message`` has no Bcc
  or Resent-Bcc field, ``sent_copy`` keeps them. Line ends become CRLF.
* Mode "send", or ``replace_mime``: the body is sent as the client wrote it.
  "reply" and "forward" (Exchange's SmartReply/SmartForward without
  ReplaceMime) append the original below the client's text: a text/plain body
  gets an "-----Original Message-----" block with the original's plain text
  (its HTML converted to text when it has no plain part); a text/html body gets
  the same text HTML-escaped inside a ``<div>``. The original's HTML is never
  inserted, so nothing of it can run or load in the reader's client. Modified
  parts are re-encoded as UTF-8 quoted-printable, a leading "-" written "=2D"
  so that no line can be taken for a boundary. "forward" also copies the
  original's attachments (Content-Disposition attachment, enclosed messages,
  non-text leaves with a file name) byte for byte, line ends aside, making the
  message multipart/mixed when it is not. Signed or encrypted client messages
  are sent unchanged: rewriting them would break them.
* The stdlib parser recurses once per MIME level, so before it runs the bytes
  are scanned for Content-Type fields that can open a level (more than
  ``MAX_NESTING_FIELDS`` is refused) and for lines that can start a part; after
  parsing, more than ``MAX_DEPTH`` levels is refused. Serialising recurses at
  most that deep; every other walk is a loop.

Every refusal is a ``ComposeError`` carrying the ComposeMail ``Status`` to
answer (MS-ASCMD 2.2.2 common status codes).
"""

from __future__ import annotations

import html
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from email import quoprimime
from email.header import Header, decode_header, make_header
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from email.utils import format_datetime, getaddresses, parsedate_to_datetime
from enum import IntEnum
from typing import Iterable

__all__ = ["ComposeError", "ComposeStatus", "Outgoing", "compose", "MAX_MESSAGE_BYTES", "MAX_RECIPIENTS",
           "MAX_DEPTH"]

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_RECIPIENTS = 500
MAX_DEPTH = 50
MAX_NESTING_FIELDS = 100    # multipart/message Content-Type fields; bounds the parser's recursion at 2x this
MAX_PART_LINES = 20_000     # lines starting "--": bounds how many parts (objects) the parser may build
MAX_HEADER_BYTES = 1024 * 1024
MAX_ADDRESS_BYTES = 256 * 1024
MAX_LINE = 998
_MODES = ("send", "reply", "forward")
_UNTOUCHABLE = ("multipart/signed", "multipart/encrypted", "application/pkcs7-mime", "application/x-pkcs7-mime")


class ComposeStatus(IntEnum):
    """The ComposeMail Status values this module answers with (MS-ASCMD 2.2.2)."""

    INVALID_MIME = 107
    SERVER_ERROR = 110            # the caller passed something unusable (mode, user address...)
    RECIPIENT_UNRESOLVED = 116
    NO_RECIPIENT = 119
    SUBMISSION_FAILED = 120       # more recipients than we submit
    REPLY_FAILED = 121            # the original cannot be quoted or forwarded
    TOO_LARGE = 122
    ITEM_NOT_FOUND = 150


class ComposeError(ValueError):
    """The client's message (or the original) cannot be sent; ``status`` is what to answer."""

    def __init__(self, status: ComposeStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Outgoing:
    """What to submit: the envelope, the bytes for SMTP and the bytes for Sent Items."""

    sender: str
    recipients: tuple[str, ...]
    message: bytes
    sent_copy: bytes


@dataclass(frozen=True)
class _Field:
    name: str      # lower case
    raw: bytes     # the whole field, folded lines joined by CRLF, no final CRLF

    @property
    def value(self) -> str:
        return _unfold(self.raw[self.raw.index(b":") + 1:].decode("ascii", "surrogateescape"))


@dataclass(frozen=True)
class _Quote:
    plain: str
    html: str


_FIELD_START = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")
_EOL = re.compile(rb"\r\n|\r|\n")
_BAD_ADDRESS = re.compile(r"[\x00-\x20\x7f<>(),;]")
_DOMAIN_LITERAL = re.compile(r"\[[^\[\]\\]+\]")
_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_MSG_ID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]{1,900}>")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
# The stdlib strips str.strip() whitespace (which includes \x1c-\x1f) before the media type.
_NESTING = re.compile(rb"(?:^|[\r\n])content-type[ \t]*:[\s\x1c-\x1f]*(multipart|message)", re.I)
_BODY_END = re.compile(r"</body\s*>", re.I)
_META_CHARSET = re.compile(r"(<meta\b[^>]{0,200}?charset\s*=\s*[\"']?)([A-Za-z0-9_.:-]+)", re.I)
_HTML_OPEN = re.compile(r"<[!?/A-Za-z]")
_HTML_TAG = re.compile(r"(/?)([A-Za-z][A-Za-z0-9]*)")
_HTML_SKIP = {"script": re.compile(r"</script\s*>", re.I), "style": re.compile(r"</style\s*>", re.I),
              "title": re.compile(r"</title\s*>", re.I)}
_HTML_BLOCK = frozenset("br p div tr li ul ol h1 h2 h3 h4 h5 h6 table blockquote pre hr dd dt".split())
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")


def _unfold(value: str) -> str:
    return value.replace("\r\n", "").replace("\n", "").replace("\r", "").strip(" \t")


def _crlf(data: bytes) -> bytes:
    return _EOL.sub(b"\r\n", data)


def _as_bytes(value: object, what: str) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise ComposeError(ComposeStatus.SERVER_ERROR, f"{what} must be bytes, not {type(value).__name__}")


# --- the top-level header, checked as lines ------------------------------------------------------------------

def _split_header(data: bytes) -> tuple[list[_Field], bytes]:
    """Cut the header into fields; refuse anything two parsers could read differently."""
    groups: list[list[bytes]] = []
    pos, size, crlf = 0, len(data), None
    body = b""
    while pos < size:
        if pos > MAX_HEADER_BYTES:
            raise ComposeError(ComposeStatus.INVALID_MIME, "the header is larger than 1 MiB")
        nl = data.find(b"\n", pos)
        line = data[pos:] if nl < 0 else data[pos:nl]
        if nl >= 0:
            ends_crlf = line.endswith(b"\r")
            line = line[:-1] if ends_crlf else line
            if crlf is None:
                crlf = ends_crlf
            elif crlf != ends_crlf:
                raise ComposeError(ComposeStatus.INVALID_MIME, "the header mixes CRLF and bare LF line ends")
        if not line and nl >= 0:
            body = data[nl + 1:]
            break
        if b"\r" in line:
            raise ComposeError(ComposeStatus.INVALID_MIME, "a header line contains a bare CR")
        if b"\x00" in line:
            raise ComposeError(ComposeStatus.INVALID_MIME, "a header line contains NUL")
        if len(line) > MAX_LINE:
            raise ComposeError(ComposeStatus.INVALID_MIME, "a header line is longer than 998 octets")
        if line[:1] in (b" ", b"\t"):
            if not groups:
                raise ComposeError(ComposeStatus.INVALID_MIME, "the header starts with a continuation line")
            groups[-1].append(line)
        elif line and _FIELD_START.match(line):
            groups.append([line])
        else:
            raise ComposeError(ComposeStatus.INVALID_MIME, "a header line is not a field")
        pos = size if nl < 0 else nl + 1
    fields = [_Field(g[0][:g[0].index(b":")].decode("ascii").lower(), b"\r\n".join(g)) for g in groups]
    return fields, body


def _values(fields: Iterable[_Field], names: tuple[str, ...]) -> list[str]:
    return [f.value for f in fields if f.name in names]


def _usable(address: str) -> bool:
    """Whether an address can go into an SMTP envelope as it is (RFC 6531 UTF-8 allowed): brackets only around
    a whole domain literal (``user@[192.0.2.1]``)."""
    local, at, domain = address.rpartition("@")
    if ("[" in domain or "]" in domain) and not _DOMAIN_LITERAL.fullmatch(domain):
        return False
    return bool(at and local and domain) and len(address) <= 320 and not _BAD_ADDRESS.search(address)


def _address(raw: str) -> str:
    """One parsed address (surrogate-escaped header text) as text, or ComposeError."""
    if "\r" in raw or "\n" in raw:
        raise ComposeError(ComposeStatus.INVALID_MIME, "an address contains CR or LF")
    try:
        text = raw.encode("ascii", "surrogateescape").decode("utf-8")
    except UnicodeError:
        raise ComposeError(ComposeStatus.RECIPIENT_UNRESOLVED, "an address is not valid UTF-8") from None
    if not _usable(text):
        raise ComposeError(ComposeStatus.RECIPIENT_UNRESOLVED, f"{text[:80]!r} is not a mail address")
    return text


def _items(value: str) -> list[str]:
    """The top-level items of an address list, without group names and comments."""
    items: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    comment = angle = 0
    for char in value:
        if escaped or (char == "\\" and (quoted or comment)):
            escaped = not escaped
        elif comment:
            comment += (char == "(") - (char == ")")
            continue
        elif quoted:
            quoted = char != '"'
        elif char == '"':
            quoted = True
        elif char == "(":
            comment = 1
            continue
        elif char in "<>":
            angle = angle + 1 if char == "<" else max(angle - 1, 0)
        elif not angle and char == ":":   # what came before was a group's name
            current = []
            continue
        elif not angle and char in ",;":
            items.append("".join(current))
            current = []
            continue
        if not comment:
            current.append(char)
    items.append("".join(current))
    return [item for item in (i.strip(" \t") for i in items) if item]


def _addresses(values: list[str]) -> tuple[str, ...]:
    """Member addresses of every mailbox and group, deduplicated case-insensitively, in order."""
    if sum(len(v) for v in values) > MAX_ADDRESS_BYTES:
        raise ComposeError(ComposeStatus.SUBMISSION_FAILED, "the address fields are too large")
    for value in values:   # getaddresses drops what it cannot parse ("bob@"): a recipient must not vanish
        for item in _items(value):
            if not any(address for _name, address in getaddresses([item])):
                shown = item.encode("ascii", "surrogateescape").decode("utf-8", "replace")[:80]
                raise ComposeError(ComposeStatus.RECIPIENT_UNRESOLVED, f"{shown!r} is not a mail address")
    seen: set[str] = set()
    found: list[str] = []
    for _name, raw in getaddresses(values):
        if not raw:
            continue    # an empty group, or a name without an address
        address = _address(raw)
        if address.casefold() not in seen:
            seen.add(address.casefold())
            found.append(address)
            if len(found) > MAX_RECIPIENTS:
                raise ComposeError(ComposeStatus.SUBMISSION_FAILED, f"more than {MAX_RECIPIENTS} recipients")
    return tuple(found)


def _is_user(field: _Field, user: str) -> bool:
    try:
        found = _addresses([field.value])
    except ComposeError:
        return False
    return len(found) == 1 and found[0].casefold() == user.casefold()


def _from_field(user: str, display_name: str) -> bytes:
    clean = display_name.encode("utf-8", "replace").decode("utf-8")   # lone surrogates become "?"
    name = " ".join(_CONTROL.sub(" ", clean).split())[:200]
    if not name:
        return f"From: <{user}>".encode("utf-8")
    if name.isascii():
        shown = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    else:
        shown = Header(name, "utf-8", header_name="From").encode(linesep="\r\n")
    return f"From: {shown} <{user}>".encode("utf-8")


def _id_domain(user: str, domain_for_ids: str) -> str:
    if domain_for_ids:
        return domain_for_ids
    domain = user.rpartition("@")[2]
    return domain if _DOMAIN.fullmatch(domain) else "localhost"


def _threading(names: set[str], source: Message) -> list[tuple[str, bytes]]:
    """In-Reply-To and References for a reply, where the client left them out."""
    message_id = _MSG_ID.search(_raw_header(source, "message-id"))
    if message_id is None:
        return []
    fields = []
    if "in-reply-to" not in names:
        fields.append(("in-reply-to", b"In-Reply-To: " + message_id.group().encode("ascii")))
    if "references" not in names:
        ids = _MSG_ID.findall(_raw_header(source, "references")[:65536])
        ids = ids or _MSG_ID.findall(_raw_header(source, "in-reply-to")[:65536])[:1]
        ids = ids[:1] + ids[1:][-18:]   # RFC 5322 3.6.4: keep the first, trim the middle
        ids.append(message_id.group())
        fields.append(("references", b"References: " + "\r\n ".join(ids).encode("ascii")))
    return fields


# --- MIME trees: parse under bounds, serialise without refolding ---------------------------------------------

def _parse(data: bytes, status: ComposeStatus, what: str) -> Message:
    kinds = [found.group(1).lower() for found in _NESTING.finditer(data)]
    if len(kinds) > MAX_NESTING_FIELDS:
        raise ComposeError(status, f"{what} opens more than {MAX_NESTING_FIELDS} nested MIME levels")
    if b"multipart" in kinds and data.count(b"\n--") + data.count(b"\r--") > MAX_PART_LINES:
        raise ComposeError(status, f"{what} has too many MIME parts")
    try:
        root = BytesParser(policy=compat32).parsebytes(data)
    except Exception as exc:   # hostile parameters (RFC 2231 charsets) make the stdlib raise at random
        raise ComposeError(status, f"{what} cannot be parsed as MIME: {exc.__class__.__name__}") from None
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ComposeError(status, f"{what} nests MIME parts deeper than {MAX_DEPTH} levels")
        if node.is_multipart():
            stack.extend((child, depth + 1) for child in node.get_payload())
    return root


def _raw_payload(part: Message) -> object:
    # The public getter re-decodes 8-bit text with the declared charset; the stdlib generator reads this too.
    return part._payload


def _header_bytes(part: Message) -> bytes:
    lines = (f"{name}: {value}".encode("utf-8", "surrogateescape") + b"\r\n" for name, value in part.raw_items())
    return _crlf(b"".join(lines))


def _boundary(part: Message, children: list[bytes]) -> bytes:
    try:
        current = part.get_boundary()
    except Exception:   # an RFC 2231 boundary in a charset Python cannot decode
        current = None
    if current is not None:
        delimiter = b"--" + current.encode("utf-8", "surrogateescape")
        if not any(c.startswith(delimiter) or b"\n" + delimiter in c for c in children):
            return delimiter[2:]
    fresh = "=_casgate_" + uuid.uuid4().hex
    try:
        part.set_boundary(fresh)
    except Exception:   # parameters the stdlib cannot re-encode: keep only the media type
        media_type = part.get_content_type()
        del part["Content-Type"]
        part["Content-Type"] = f'{media_type}; boundary="{fresh}"'
    return fresh.encode("ascii")


def _body_bytes(part: Message) -> bytes:
    payload = _raw_payload(part)
    if isinstance(payload, list):
        children = [_serialise(child) for child in payload]
        if part.get_content_maintype() != "multipart":
            return b"".join(children)   # message/*: the enclosed message(s)
        boundary = _boundary(part, children)
        out = bytearray()
        if part.preamble is not None:
            out += _crlf(part.preamble.encode("utf-8", "surrogateescape")) + b"\r\n"
        out += b"--" + boundary + b"\r\n" + (b"\r\n--" + boundary + b"\r\n").join(children)
        out += b"\r\n--" + boundary + b"--"
        # The parser gives the close delimiter's line end to the enclosing boundary (epilogue None) or to the
        # epilogue; writing it back the same way keeps nested multiparts byte for byte.
        if part.epilogue is not None:
            out += b"\r\n" + _crlf(part.epilogue.encode("utf-8", "surrogateescape"))
        return bytes(out)
    if isinstance(payload, str):
        return _crlf(payload.encode("utf-8", "surrogateescape"))
    return b""


def _serialise(part: Message) -> bytes:
    """Header fields as parsed (not refolded) and payloads as received, with CRLF line ends."""
    body = _body_bytes(part)   # first: it may give the part a new boundary
    return _header_bytes(part) + b"\r\n" + body


def _raw_header(part: Message, name: str) -> str:
    for key, value in part.raw_items():
        if key.lower() == name:
            return value if isinstance(value, str) else str(value)
    return ""


def _is_attachment(part: Message) -> bool:
    return part.get_content_disposition() == "attachment"


def _first_text(node: Message) -> Message | None:
    for _ in range(MAX_DEPTH + 1):
        if _is_attachment(node):
            return None
        if node.is_multipart():
            children = node.get_payload()
            if node.get_content_maintype() != "multipart" or not children:
                return None
            node = children[0]
            continue
        return node if node.get_content_type() in ("text/plain", "text/html") else None
    return None


def _body_parts(root: Message) -> list[Message]:
    """The readable body: every text alternative of the first part, as a reader would show it."""
    node = root
    for _ in range(MAX_DEPTH + 1):
        if node.get_content_type() == "multipart/alternative" and node.is_multipart():
            return [leaf for child in node.get_payload() if (leaf := _first_text(child)) is not None]
        if node.is_multipart() and node.get_content_maintype() == "multipart" and node.get_payload():
            node = node.get_payload()[0]
            continue
        leaf = _first_text(node)
        return [leaf] if leaf is not None else []
    return []


def _forwardable(root: Message) -> list[Message]:
    """The original's attachments, in order, without looking inside them."""
    found: list[Message] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if _is_attachment(node) or node.get_content_maintype() == "message" or (
                not node.is_multipart() and node.get_content_maintype() != "text"
                and (node.get_param("filename", None, "content-disposition") is not None
                     or node.get_param("name") is not None)):
            found.append(node if node is not root else _content_only(root))
        elif node.is_multipart() and node.get_content_maintype() == "multipart":
            stack.extend(reversed(node.get_payload()))
    return found


def _content_only(root: Message) -> Message:
    """A message whose whole body is the attachment, as a part: its From, Subject... stay behind."""
    part = Message()
    for name, value in root.raw_items():
        if name.lower().startswith("content-"):
            part[name] = value
    part.set_payload(_raw_payload(root))
    part.preamble, part.epilogue = root.preamble, root.epilogue
    return part


def _mixed(parts: list[Message]) -> Message:
    container = Message()
    container["Content-Type"] = f'multipart/mixed; boundary="=_casgate_{uuid.uuid4().hex}"'
    container.set_payload(parts)
    container.epilogue = ""   # a final line end after the close delimiter
    return container


# --- text -------------------------------------------------------------------------------------------------

def _decode(data: bytes, charset: str | None) -> str:
    label = (charset or "").strip().strip('"').lower()
    if label and label not in ("us-ascii", "ascii"):
        try:
            return data.decode(label, "replace")
        except Exception:   # unknown, non-text or strict-only codecs: fall back below
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("windows-1252", "replace")


def _part_text(part: Message) -> str:
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return ""
    charset = part.get_param("charset")
    if isinstance(charset, tuple):
        charset = charset[2]
    return _decode(data, charset if isinstance(charset, str) else None)


def _html_to_text(source: str) -> str:
    """Readable text of an HTML body; one forward pass, so hostile markup costs linear time."""
    out: list[str] = []
    pos, size = 0, len(source)

    def text(chunk: str) -> None:
        out.append(re.sub(r"[ \t\r\n\f]+", " ", html.unescape(chunk)))

    start = 0   # where the text not yet emitted begins; a "<" that opens nothing stays in it
    while pos < size:
        found = _HTML_OPEN.search(source, pos)
        if found is None:
            break
        lt = found.start()
        tag = _HTML_TAG.match(source, lt + 1)
        text(source[start:lt])
        closing = "-->" if source.startswith("<!--", lt) else ">"
        gt = source.find(closing, lt + (4 if closing == "-->" else 1))
        if gt < 0:
            start = size   # an unterminated tag or comment hides the rest, as in a browser
            break
        pos = start = gt + len(closing)
        if tag is None or closing == "-->":
            continue
        name = tag.group(2).lower()
        if name in _HTML_BLOCK:
            out.append("\n")
        if not tag.group(1) and name in _HTML_SKIP:
            end_tag = _HTML_SKIP[name].search(source, pos)
            if end_tag is None:
                start = size
                break
            pos = start = end_tag.end()
    text(source[start:])
    lines = [line.strip() for line in "".join(out).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def _display(raw: str) -> str:
    data = raw.encode("utf-8", "surrogateescape")[:8192]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("windows-1252", "replace")
    text = _unfold(text)
    try:
        text = str(make_header(decode_header(text)))
    except Exception:   # malformed encoded words: show them as they are
        pass
    return " ".join(_CONTROL.sub(" ", text).split())


def _sent(raw: str) -> str:
    shown = _display(raw)
    try:
        moment = parsedate_to_datetime(shown)
    except Exception:   # the stdlib raises TypeError, ValueError or OverflowError on bad dates
        return shown
    hour = moment.hour % 12 or 12
    half = "AM" if moment.hour < 12 else "PM"
    return (f"{_DAYS[moment.weekday()]}, {_MONTHS[moment.month - 1]} {moment.day}, {moment.year} "
            f"{hour}:{moment.minute:02d} {half}")


def _quote(source: Message) -> _Quote:
    summary = [("From", _display(_raw_header(source, "from"))), ("Sent", _sent(_raw_header(source, "date"))),
               ("To", _display(_raw_header(source, "to")))]
    cc = _display(_raw_header(source, "cc"))
    if cc:
        summary.append(("Cc", cc))
    summary.append(("Subject", _display(_raw_header(source, "subject"))))
    parts = _body_parts(source)
    plain = next((p for p in parts if p.get_content_subtype() == "plain"), None)
    if plain is not None:
        text = _part_text(plain)
    else:
        text = _html_to_text(_part_text(parts[0])) if parts else ""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    head = "".join(f"{label}: {value}\r\n" for label, value in summary)
    plain_quote = "\r\n\r\n-----Original Message-----\r\n" + head + "\r\n" + text.replace("\n", "\r\n")
    html_head = "<br>\r\n".join(f"<b>{label}:</b> {html.escape(value)}" for label, value in summary)
    html_text = html.escape(text).replace("\n", "<br>\r\n")
    html_quote = ('\r\n<div class="casgate-original"><br>\r\n<hr>\r\n<div>-----Original Message-----<br>\r\n'
                  f"{html_head}</div>\r\n<br>\r\n<div>{html_text}</div>\r\n</div>\r\n")
    return _Quote(plain_quote, html_quote)


def _set_text(part: Message, text: str, subtype: str) -> None:
    """Replace a text part's content with UTF-8 quoted-printable that no boundary can match."""
    encoded = quoprimime.body_encode(text.encode("utf-8").decode("latin-1"), maxlinelen=74, eol="\r\n")
    # A line starting "--" could be taken for a boundary of some enclosing part; "=2D" is the same text.
    encoded = "\r\n".join("=2D" + line[1:] if line.startswith("-") else line for line in encoded.split("\r\n"))
    del part["Content-Type"]
    del part["Content-Transfer-Encoding"]
    part["Content-Type"] = f'text/{subtype}; charset="utf-8"'
    part["Content-Transfer-Encoding"] = "quoted-printable"
    part.set_payload(encoded)


def _append_quote(part: Message, quote: _Quote) -> None:
    text = _part_text(part)
    if part.get_content_subtype() == "html":
        head, rest = text[:65536], text[65536:]
        text = _META_CHARSET.sub(lambda m: m.group(1) + "utf-8", head) + rest
        end = None
        for end in _BODY_END.finditer(text):
            pass
        text = text + quote.html if end is None else text[:end.start()] + quote.html + text[end.start():]
        _set_text(part, text, "html")
    else:
        _set_text(part, text + quote.plain, "plain")


def _media_type(fields: list[_Field]) -> str:
    probe = Message()
    for field in fields:
        if field.name == "content-type":
            probe["Content-Type"] = field.value
            break
    return probe.get_content_type()


def _rewrite(content: list[_Field], body: bytes, mode: str, source: Message) -> Message:
    """The client's MIME entity with the original quoted (and, forwarding, its attachments added)."""
    entity = b"".join(f.raw + b"\r\n" for f in content) + b"\r\n" + body
    root = _parse(entity, ComposeStatus.INVALID_MIME, "the message")
    quote = _quote(source)
    targets = _body_parts(root)
    for part in targets:
        _append_quote(part, quote)
    if not targets:
        note = Message()
        _set_text(note, quote.plain.lstrip("\r\n"), "plain")
        if root.get_content_type() == "multipart/mixed" and root.is_multipart():
            root.set_payload([note, *root.get_payload()])
        else:
            root = _mixed([note, root])
    if mode == "forward":
        attachments = _forwardable(source)
        if attachments and root.get_content_type() == "multipart/mixed" and root.is_multipart():
            root.set_payload([*root.get_payload(), *attachments])
        elif attachments:
            root = _mixed([root, *attachments])
    return root


# --- the whole message ------------------------------------------------------------------------------------

def _check(head: bytes, names: tuple[str, ...], expected: tuple[str, ...], keeps_bcc: bool) -> None:
    """Parse our own header with the stdlib: it must give the recipients we computed, and no stray Bcc."""
    if any(len(line) > MAX_LINE for line in head.split(b"\r\n")):
        raise ComposeError(ComposeStatus.INVALID_MIME, "a rewritten header line would exceed 998 octets")
    try:
        parsed = BytesParser(policy=compat32).parsebytes(head + b"\r\n", headersonly=True)
        items = [(key.lower(), _unfold(str(value))) for key, value in parsed.raw_items()]
    except Exception:
        raise ComposeError(ComposeStatus.INVALID_MIME, "the rewritten header does not parse") from None
    if _addresses([value for key, value in items if key in names]) != expected:
        raise ComposeError(ComposeStatus.INVALID_MIME, "the rewritten header does not give the same recipients")
    if not keeps_bcc and any(key in ("bcc", "resent-bcc") for key, _ in items):
        raise ComposeError(ComposeStatus.INVALID_MIME, "a Bcc field would reach the SMTP server")


def _kept_fields(fields: list[_Field], user: str, display_name: str, rewrite: bool) -> list[tuple[str, bytes]]:
    """The client's fields minus what it may not set: From is the user's, Sender/Reply-To only if the user's."""
    from_fields = [f for f in fields if f.name == "from"]
    keep_from = len(from_fields) == 1 and _is_user(from_fields[0], user)
    kept: list[tuple[str, bytes]] = []
    if not from_fields:
        kept.append(("from", _from_field(user, display_name)))
    for field in fields:
        if field.name == "from":
            if field is from_fields[0]:
                kept.append(("from", field.raw if keep_from else _from_field(user, display_name)))
        elif field.name in ("sender", "reply-to") and not _is_user(field, user):
            continue
        elif not (rewrite and field.name.startswith("content-")):   # rewritten: they come from the new tree
            kept.append((field.name, field.raw))
    return kept


def compose(mime: bytes, *, user_address: str, display_name: str = "", mode: str = "send",
            original: bytes | None = None, replace_mime: bool = False, now: datetime | None = None,
            domain_for_ids: str = "") -> Outgoing:
    """What SendMail (mode "send"), SmartReply ("reply") or SmartForward ("forward") submits."""
    data = _as_bytes(mime, "mime")
    if mode not in _MODES:
        raise ComposeError(ComposeStatus.SERVER_ERROR, f"mode must be one of {', '.join(_MODES)}")
    if not (isinstance(user_address, str) and user_address.isprintable() and _usable(user_address)):
        raise ComposeError(ComposeStatus.SERVER_ERROR, "user_address is not a mail address")
    user = user_address
    if not isinstance(display_name, str):
        raise ComposeError(ComposeStatus.SERVER_ERROR, "display_name must be a string")
    if domain_for_ids and not (isinstance(domain_for_ids, str) and _DOMAIN.fullmatch(domain_for_ids)):
        raise ComposeError(ComposeStatus.SERVER_ERROR, "domain_for_ids is not a domain name")
    if now is None:
        now = datetime.now(timezone.utc)
    elif not isinstance(now, datetime):
        raise ComposeError(ComposeStatus.SERVER_ERROR, "now must be a datetime")
    elif now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    wants_original = mode != "send" and not replace_mime
    source_bytes = b""
    if wants_original:
        if original is None:
            raise ComposeError(ComposeStatus.ITEM_NOT_FOUND, "the message to reply to or forward was not found")
        source_bytes = _as_bytes(original, "original")
        if len(source_bytes) > MAX_MESSAGE_BYTES:
            raise ComposeError(ComposeStatus.TOO_LARGE, "the original message is larger than 64 MiB")
    if len(data) > MAX_MESSAGE_BYTES:
        raise ComposeError(ComposeStatus.TOO_LARGE, "the message is larger than 64 MiB")

    fields, body = _split_header(data)
    # Signed or encrypted bodies go out as they came: a byte changed would break them.
    rewrite = wants_original and _media_type(fields) not in _UNTOUCHABLE
    recipients = _addresses(_values(fields, ("to", "cc", "bcc")))
    if not recipients:
        raise ComposeError(ComposeStatus.NO_RECIPIENT, "the message has no To, Cc or Bcc address")
    visible = _addresses(_values(fields, ("to", "cc")))
    names = {f.name for f in fields}
    kept = _kept_fields(fields, user, display_name, rewrite)
    if "date" not in names:
        kept.append(("date", b"Date: " + format_datetime(now).encode("ascii")))
    if "message-id" not in names:
        domain = _id_domain(user, domain_for_ids)
        kept.append(("message-id", f"Message-ID: <{uuid.uuid4().hex}@{domain}>".encode("ascii")))

    if rewrite:
        source = _parse(source_bytes, ComposeStatus.REPLY_FAILED, "the original message")
        if "mime-version" not in names:
            kept.append(("mime-version", b"MIME-Version: 1.0"))
        if mode == "reply":
            kept.extend(_threading(names, source))
        root = _rewrite([f for f in fields if f.name.startswith("content-")], body, mode, source)
        body = _body_bytes(root)   # before the header: it may give the root a new boundary
        content_head = _header_bytes(root)
    else:
        content_head, body = b"", _crlf(body)

    copy_head = b"".join(raw + b"\r\n" for _, raw in kept) + content_head
    message_head = b"".join(raw + b"\r\n" for name, raw in kept if name not in ("bcc", "resent-bcc"))
    message_head += content_head
    _check(message_head, ("to", "cc"), visible, keeps_bcc=False)
    _check(copy_head, ("to", "cc", "bcc"), recipients, keeps_bcc=True)
    message = message_head + b"\r\n" + body
    sent_copy = copy_head + b"\r\n" + body
    if len(sent_copy) > MAX_MESSAGE_BYTES:
        raise ComposeError(ComposeStatus.TOO_LARGE, "the message with the original is larger than 64 MiB")
    return Outgoing(sender=user, recipients=recipients, message=message, sent_copy=sent_copy)
