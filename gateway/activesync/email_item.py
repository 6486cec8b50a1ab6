"""An RFC 5322 message as an ActiveSync Email item (MS-ASEMAIL, MS-ASAIRS): raw bytes in, ApplicationData out.

The sync engine hands over a message exactly as IMAP stored it, with its
flags and INTERNALDATE; ``email_application_data`` returns the
``AirSync:ApplicationData`` element a phone expects for the client's
protocol version and body preferences, and ``parse_options`` reads those
preferences from a Sync or ItemOperations ``Options`` element.

Messages are hostile input, so the module parses MIME itself instead of using
the stdlib feed parser (which recurses once per nesting level and re-checks
every line against every open boundary): one linear pass per level, at most
``MAX_DEPTH`` levels and ``MAX_PARTS`` parts, every header read capped, and
only regular expressions whose alternatives cannot backtrack into each other.
What lies past a cap is left out of the item; nothing raises except
``ItemError``.

Choices the specifications leave open, made here:

* Body choice: the first BodyPreference the message can satisfy, in client
  order. Types 1 (plain) and 2 (HTML) always can (one is made from the other);
  RTF (3) never can; MIME (4) can unless MIMESupport is 1 and the message is
  not S/MIME. MIMESupport 2 (or 1 for an S/MIME message) puts MIME first. A
  preference with AllOrNone whose body is too large is passed over for the
  next that fits; if none fits, the first such body is sent without Data and
  with Truncated 1. No preference at all means plain text cut at the 2.5
  Truncation size.
* MIME bodies (Data of type 4, 2.5 MIMEData) are the exact stored bytes, sent
  as WBXML opaque data; every other value is a UTF-8 string without NULs.
* Categories are the IMAP keywords that are not system flags (``\\Seen``...),
  not ``$``-prefixed client internals ($Forwarded, $MDNSent, $Junk...) and
  not the un-prefixed junk/forwarding markers some clients set; Thunderbird's
  ``$label1``..``$label5`` become its default tag names.
* ConversationId is the MD5 of the thread's root Message-ID (first of
  References, else In-Reply-To, else the message's own Message-ID), else of
  the normalised subject, else of the header block.
"""

from __future__ import annotations

import binascii
import codecs
import encodings
import encodings.aliases
import hashlib
import html
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_tz
from typing import Callable, Sequence
from urllib.parse import unquote_to_bytes

from lxml import etree

from gateway.activesync.wbxml import Element
from gateway.services.mailsync import categories

__all__ = ["ItemError", "BodyPreference", "BodyOptions", "parse_options", "email_application_data",
           "conversation_id", "MAX_MESSAGE_BYTES", "MAX_DEPTH", "MAX_PARTS", "MAX_ATTACHMENTS"]

VERSIONS = {"2.5": (2, 5), "12.0": (12, 0), "12.1": (12, 1), "14.0": (14, 0), "14.1": (14, 1),
            "16.0": (16, 0), "16.1": (16, 1)}
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 16            # multipart levels followed; what lies deeper is left out
MAX_PARTS = 10_000        # MIME entities parsed per message
MAX_ATTACHMENTS = 1_000   # attachments listed in one item
MAX_CATEGORIES = 300      # MS-ASEMAIL: no more than 300 Category elements
_MAX_HEADER_BLOCK = 256 * 1024   # bytes of one entity's header block that are read
_MAX_HEADER_LINES = 4_000        # lines of one header block that are read
_MAX_HEADER_VALUE = 64 * 1024    # characters kept of one header field
_MAX_PARAM_VALUE = 16 * 1024     # characters of Content-Type / Content-Disposition that are parsed
_MAX_PARAMS = 64
_MAX_ADDRESSES = 1_000
_MAX_PREVIEW_SOURCE = 64 * 1024  # characters of HTML converted to make a Preview
_MAX_RESPONSE_LEVELS = 100       # 5-byte blocks copied from a Thread-Index

# MS-ASCMD 2.2.3.111 MIMETruncation and 2.2.3.185 Truncation codes, as octets (None: do not truncate).
_MIME_TRUNCATION = (0, 4096, 5120, 7168, 10240, 20480, 51200, 102400, None)
_TRUNCATION = (0, 512, 1024, 2048, 5120, 10240, 20480, 51200, 102400, None)

_WANTED = frozenset({
    b"from", b"to", b"cc", b"reply-to", b"subject", b"date", b"message-id", b"in-reply-to", b"references",
    b"importance", b"x-priority", b"priority", b"thread-topic", b"thread-index", b"content-type",
    b"content-transfer-encoding", b"content-disposition", b"content-id", b"content-location"})
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=timezone.utc)


class ItemError(ValueError):
    """The message, the options or an argument cannot be turned into an Email item."""


def _version(version: object) -> tuple[int, int]:
    if not isinstance(version, str) or version not in VERSIONS:
        raise ItemError(f"unknown ActiveSync protocol version {version!r}; expected one of {', '.join(VERSIONS)}")
    return VERSIONS[version]


def _optional_int(name: str, value: object, high: int) -> None:
    if value is not None and (type(value) is not int or not 0 <= value <= high):
        raise ItemError(f"{name} must be None or an int in 0..{high}, not {value!r}")


@dataclass(frozen=True)
class BodyPreference:
    """One AirSyncBase:BodyPreference: a body type and how much of it the client wants."""

    type: int                      # 1 plain text, 2 HTML, 3 RTF, 4 MIME
    truncation_size: int | None = None
    all_or_none: bool = False
    preview: int | None = None     # 14.0+: Preview size in characters (0..255)

    def __post_init__(self) -> None:
        if type(self.type) is not int or self.type not in (1, 2, 3, 4):
            raise ItemError(f"BodyPreference type must be 1, 2, 3 or 4, not {self.type!r}")
        _optional_int("TruncationSize", self.truncation_size, 0xFFFFFFFF)
        if type(self.all_or_none) is not bool:
            raise ItemError(f"AllOrNone must be a bool, not {self.all_or_none!r}")
        _optional_int("Preview", self.preview, 255)


@dataclass(frozen=True)
class BodyOptions:
    """What a client asked for about bodies, from one Options element (see ``parse_options``)."""

    preferences: tuple[BodyPreference, ...] = ()   # client order; empty = the 2.5 defaults
    mime_support: int = 0          # Email:MIMESupport 0 never, 1 S/MIME only, 2 always
    mime_truncation: int | None = None   # 2.5 MIMETruncation code (0..8) as octets
    truncation: int | None = None        # 2.5 AirSync:Truncation code as octets

    def __post_init__(self) -> None:
        if not isinstance(self.preferences, tuple) or not all(
                isinstance(p, BodyPreference) for p in self.preferences):
            raise ItemError("BodyOptions.preferences must be a tuple of BodyPreference")
        types = [p.type for p in self.preferences]
        if len(set(types)) != len(types):
            raise ItemError(f"BodyPreference types repeat: {types}")
        if type(self.mime_support) is not int or self.mime_support not in (0, 1, 2):
            raise ItemError(f"MIMESupport must be 0, 1 or 2, not {self.mime_support!r}")
        _optional_int("mime_truncation", self.mime_truncation, 0xFFFFFFFF)
        _optional_int("truncation", self.truncation, 0xFFFFFFFF)


# --- Options --------------------------------------------------------------------------------------------

def _int_value(element: Element, high: int) -> int:
    """The unsigned integer text of a leaf element, in 0..high."""
    text = element.text
    if element.children or element.opaque is not None or text is None:
        raise ItemError(f"{element.name} must hold a number")
    if not (text.isascii() and text.isdigit() and len(text) <= 10) or int(text) > high:
        raise ItemError(f"{element.name} value {text[:20]!r} is not a number in 0..{high}")
    return int(text)


def _body_preference(element: Element, version: tuple[int, int]) -> BodyPreference:
    values: dict[str, int] = {}
    limits = {"Type": 4, "TruncationSize": 0xFFFFFFFF, "AllOrNone": 1, "Preview": 255}
    for child in element.children:
        if not isinstance(child, Element) or child.ns != "AirSyncBase" or child.name not in limits:
            raise ItemError(f"unexpected {getattr(child, 'name', child)!r} in BodyPreference")
        if child.name in values:
            raise ItemError(f"BodyPreference has more than one {child.name}")
        values[child.name] = _int_value(child, limits[child.name])
    if "Type" not in values or values["Type"] == 0:
        raise ItemError("BodyPreference needs a Type of 1, 2, 3 or 4")
    preview = values.get("Preview") if version >= (14, 0) else None  # Preview exists from 14.0 on
    return BodyPreference(values["Type"], values.get("TruncationSize"), bool(values.get("AllOrNone", 0)), preview)


def parse_options(options: Element | None, version: str) -> BodyOptions:
    """The body options of an AirSync:Options (Sync) or ItemOperations:Options element; None gives defaults."""
    v = _version(version)
    if options is None:
        return BodyOptions()
    if not isinstance(options, Element) or options.name != "Options" or options.ns not in ("AirSync", "ItemOperations"):
        raise ItemError("options must be an AirSync:Options or ItemOperations:Options element")
    preferences: list[BodyPreference] = []
    single: dict[str, int] = {}
    for child in options.children:
        if not isinstance(child, Element):
            raise ItemError(f"Options holds a {type(child).__name__}, not an Element")
        if (child.ns, child.name) == ("AirSyncBase", "BodyPreference"):
            preferences.append(_body_preference(child, v))
        elif child.ns == "AirSync" and child.name in ("MIMESupport", "MIMETruncation", "Truncation"):
            if child.name in single:
                raise ItemError(f"Options has more than one {child.name}")
            single[child.name] = _int_value(child, {"MIMESupport": 2, "MIMETruncation": 8, "Truncation": 9}[child.name])
        # FilterType, Class, Conflict, MaxItems, BodyPartPreference, Schema...: not about this item's body.
    mime_truncation = _MIME_TRUNCATION[single["MIMETruncation"]] if "MIMETruncation" in single else None
    truncation = _TRUNCATION[single["Truncation"]] if "Truncation" in single else None
    return BodyOptions(tuple(preferences), single.get("MIMESupport", 0), mime_truncation, truncation)


# --- bytes and text -------------------------------------------------------------------------------------

_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_JUNK = bytes(b for b in range(256) if b not in _B64_ALPHABET)


def _b64(data: bytes) -> bytes:
    """Base64 decoded leniently: junk characters and bad padding lose bytes, never raise."""
    try:
        return binascii.a2b_base64(data)
    except (binascii.Error, ValueError):
        clean = data.translate(None, _B64_JUNK)
        clean = clean[:len(clean) - len(clean) % 4] if len(clean) % 4 == 1 else clean + b"=" * (-len(clean) % 4)
        try:
            return binascii.a2b_base64(clean)
        except (binascii.Error, ValueError):
            return b""


def _qp(data: bytes, header: bool = False) -> bytes:
    try:
        return binascii.a2b_qp(data, header=header)
    except (binascii.Error, ValueError):
        return data


# Charset names are looked up only if Python knows them under some alias: a lookup of an unknown
# name is cached by the codec registry forever, so hostile names must not reach it.
_CHARSET_ALIASES = {"ks_c_5601_1987": "cp949", "ks_c_5601": "cp949", "x_sjis": "shift_jis", "gb2312": "gb18030",
                    "gbk": "gb18030", "x_gbk": "gb18030", "iso_8859_8_i": "iso8859_8", "x_user_defined": "latin_1",
                    "unicode_1_1_utf_7": "utf_7", "x_mac_roman": "mac_roman", "windows_874": "cp874"}
_KNOWN_CHARSETS = (frozenset(encodings.aliases.aliases) | frozenset(encodings.aliases.aliases.values())
                   | frozenset(_CHARSET_ALIASES.values()) | {"koi8_u", "cp874", "cp1125", "gb18030", "cp949"})
_UNSAFE_CODECS = frozenset({"idna", "punycode", "undefined", "unicode_escape", "raw_unicode_escape",
                            "mbcs", "oem", "ascii"})  # ascii: mislabelled 8-bit text is better read as UTF-8


def _codec(charset: str | None) -> str | None:
    """A Python codec name for a MIME charset, or None if unknown, unsafe or no better than UTF-8."""
    if not charset or len(charset) > 64:
        return None
    name = encodings.normalize_encoding(charset.strip().strip('"').split("*", 1)[0].lower())
    name = _CHARSET_ALIASES.get(name, name)
    if name not in _KNOWN_CHARSETS:
        return None
    try:
        codec = codecs.lookup(name).name
    except (LookupError, ValueError, TypeError):
        return None
    return None if codec.replace("-", "_") in _UNSAFE_CODECS else codec


def _decode(data: bytes, charset: str | None) -> str:
    """Text of ``data``: the declared charset, else UTF-8, else the declared charset or UTF-8 with
    replacement when the damage is small, else Latin-1 (which reads any bytes)."""
    codec = _codec(charset)
    if codec is not None:
        try:
            return data.decode(codec)
        except (UnicodeError, LookupError, ValueError, TypeError):
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if codec is not None:
        try:
            return data.decode(codec, "replace")
        except (UnicodeError, LookupError, ValueError, TypeError):
            pass
    text = data.decode("utf-8", "replace")
    return text if text.count("\ufffd") <= len(data) // 50 else data.decode("latin-1")


def _clean(text: str) -> str:
    """Text a WBXML string can carry: no NUL, no lone surrogate."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _utf8(text: str) -> bytes:
    return _clean(text).encode("utf-8")


def _cut(data: bytes, limit: int | None) -> bytes:
    """At most ``limit`` octets of ``data``, never ending inside a UTF-8 sequence (a sequence is at most
    4 bytes, so the cut moves back at most 3; bytes that are not UTF-8 are cut at ``limit``)."""
    if limit is None or len(data) <= limit:
        return data
    for cut in range(limit, max(limit - 4, -1), -1):
        if data[cut] & 0xC0 != 0x80:
            return data[:cut]
    return data[:limit]


def _header_text(raw: bytes) -> str:
    raw = _cut(raw, _MAX_HEADER_VALUE)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.replace("\x00", "").strip()


def _decode_words(value: str) -> str:
    """RFC 2047 encoded words decoded; adjacent words of one charset are joined before decoding, so a
    character split across two words survives, and the white space between them is dropped (RFC 2047 6.2)."""
    if "=?" not in value:
        return value
    out: list[str] = []
    pending: tuple[str, bytearray] | None = None   # charset and bytes of the encoded words just read
    emitted = search = 0
    n = len(value)
    while True:
        start = value.find("=?", search)
        if start < 0:
            break
        q = value.find("?", start + 2, start + 82)
        end = -1
        if q > 0 and q + 2 < n and value[q + 1] in "bBqQ" and value[q + 2] == "?":
            end = value.find("?=", q + 3, q + 4003)
        if end < 0:
            search = start + 2
            continue
        charset = value[start + 2:q].lower()
        between = value[emitted:start]
        adjacent = pending is not None and not between.strip(" \t\r\n")
        if pending is not None and not (adjacent and pending[0] == charset):
            out.append(_decode(bytes(pending[1]), pending[0]))
            pending = None
        if not adjacent:
            out.append(between)
        text = value[q + 3:end].encode("ascii", "ignore")
        if pending is None:
            pending = (charset, bytearray())
        pending[1].extend(_b64(text) if value[q + 1] in "bB" else _qp(text, header=True))
        emitted = search = end + 2
    if pending is not None:
        out.append(_decode(bytes(pending[1]), pending[0]))
    out.append(value[emitted:])
    return "".join(out)


# --- header fields --------------------------------------------------------------------------------------

def _parse_header_block(block: bytes) -> dict[str, str]:
    """The header fields this module reads (first occurrence of each), unfolded and decoded to text."""
    headers: dict[str, str] = {}
    name: str | None = None
    pieces: list[bytes] = []
    for count, line in enumerate(block.split(b"\n")):
        if line.endswith(b"\r"):
            line = line[:-1]
        if line[:1] in (b" ", b"\t"):
            if name is not None:
                pieces.append(line)
            continue
        if name is not None and name not in headers:
            headers[name] = _header_text(b"".join(pieces))
        name = None
        if count > _MAX_HEADER_LINES:
            break
        colon = line.find(b":")
        if colon > 0:
            key = line[:colon].strip().lower()
            if key in _WANTED:
                name, pieces = key.decode("ascii"), [line[colon + 1:]]
    if name is not None and name not in headers:
        headers[name] = _header_text(b"".join(pieces))
    return headers


_PARAM = re.compile(r';\s*([^\s=;"]+)\s*=\s*("(?:[^"\\]|\\.)*"?|[^;]*)')
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)


def _unquote(value: str) -> str:
    value = value[1:-1] if len(value) > 1 and value.endswith('"') else value[1:]
    return _QUOTED_PAIR.sub(r"\1", value) if "\\" in value else value


def _parse_params(value: str) -> tuple[str, dict[str, str]]:
    """The lower-case main value of a Content-Type/-Disposition field and its parameters (RFC 2045, 2231)."""
    value = value[:_MAX_PARAM_VALUE]
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    sections: dict[str, dict[int, tuple[bool, str]]] = {}
    for count, match in enumerate(_PARAM.finditer(";" + rest)):
        if count >= _MAX_PARAMS:
            break
        name, text = match.group(1).lower(), match.group(2).strip()
        if text.startswith('"'):
            text = _unquote(text)
        if "*" not in name:
            params.setdefault(name, text)
            continue
        base, _, index = name.partition("*")  # name*, name*0, name*0*
        encoded = index == "" or index.endswith("*")
        index = index.rstrip("*") or "0"
        if index.isascii() and index.isdigit() and len(index) <= 3:
            sections.setdefault(base, {}).setdefault(int(index), (encoded, text))
    for base, parts in sections.items():
        data, charset = bytearray(), None
        for number, index in enumerate(sorted(parts)):
            encoded, text = parts[index]
            if encoded:
                if number == 0 and text.count("'") >= 2:
                    charset, _, text = text.split("'", 2)
                data += unquote_to_bytes(text)
            else:
                data += text.encode("utf-8", "replace")
        params[base] = _decode(bytes(data), charset)
    return main.strip().lower(), params


_ADDRESS_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|\((?:[^()\\]|\\.)*\)?|<[^<>]*>?|,|[^",(<]+', re.S)
_SPACES = re.compile(r"\s+")


def _address(tokens: list[str]) -> tuple[str, str] | None:
    """(display name, address) of one mailbox's tokens; group syntax and comments are dropped."""
    angle: str | None = None
    words: list[str] = []
    comments: list[str] = []
    for token in tokens:
        if token[0] == "<":
            angle = token[1:].rstrip(">").strip()
        elif token[0] == "(":
            comments.append(token[1:].rstrip(")"))
        elif token[0] == '"':
            words.append(_unquote(token))
        else:
            if ":" in token:  # "group: member" or "undisclosed-recipients:;"
                words = []
                token = token.rpartition(":")[2]
            words.append(token.replace(";", ""))
    if angle is not None:
        address, name = angle, "".join(words)
    else:
        address, name = "".join(words).strip(), " ".join(comments)
    address = _SPACES.sub("", address)
    if not address:
        return None
    name = _SPACES.sub(" ", _decode_words(name)).strip().strip('"').strip()
    return name, address


def _addresses(value: str | None) -> list[tuple[str, str]]:
    if not value:
        return []
    found: list[tuple[str, str]] = []
    tokens: list[str] = []
    for match in _ADDRESS_TOKEN.finditer(value):
        token = match.group()
        if token != ",":
            tokens.append(token)
            continue
        mailbox = _address(tokens) if tokens else None
        tokens = []
        if mailbox:
            found.append(mailbox)
            if len(found) >= _MAX_ADDRESSES:
                return found
    mailbox = _address(tokens) if tokens else None
    if mailbox:
        found.append(mailbox)
    return found


def _format_addresses(mailboxes: list[tuple[str, str]]) -> str:
    """Addresses the way Exchange writes them: ``"Name" <address>``, joined by ", "."""
    out = []
    for name, address in mailboxes:
        if name and name != address:
            out.append('"' + name.replace("\\", "\\\\").replace('"', '\\"') + f'" <{address}>')
        else:
            out.append(address)
    return ", ".join(out)


def _date(value: str | None) -> datetime | None:
    """A Date header as an aware UTC datetime, or None if it cannot be read."""
    if not value:
        return None
    try:
        parsed = parsedate_tz(value[:200])
        if parsed is None:
            return None
        offset = timedelta(seconds=parsed[9] or 0)
        return datetime(*parsed[:6], tzinfo=timezone(offset)).astimezone(timezone.utc)
    except (ValueError, TypeError, IndexError, OverflowError, AttributeError):
        return None


_SUBJECT_PREFIX = re.compile(
    r"\s*(?:re|fwd?|aw|wg|sv|vs|tr|rv|antw|odp|res|enc)(?:\s?\[\d{1,4}\]|\s?\(\d{1,4}\))?\s?:\s*", re.I)


def _normalised_subject(subject: str) -> str:
    """The subject without reply and forward prefixes ("Re: Fwd: AW: x" -> "x")."""
    for _ in range(32):
        match = _SUBJECT_PREFIX.match(subject)
        if not match or match.end() == 0:
            break
        subject = subject[match.end():]
    return subject.strip()


_MESSAGE_ID = re.compile(r"<([^<>]*)>")


def _thread_root(headers: dict[str, str]) -> str:
    for name in ("references", "in-reply-to", "message-id"):
        value = headers.get(name, "")
        match = _MESSAGE_ID.search(value)
        if match and match.group(1).strip():
            return match.group(1).strip()
        if name != "references" and value.split():
            return value.split()[0]
    return ""


def _conversation_id(headers: dict[str, str], header_block: bytes) -> bytes:
    root = _thread_root(headers)
    if root:
        key = b"message-id:" + _utf8(root)
    else:
        subject = _SPACES.sub(" ", _normalised_subject(_decode_words(headers.get("subject", "")))).lower()
        key = b"subject:" + _utf8(subject) if subject else b"headers:" + header_block
    return hashlib.md5(key, usedforsecurity=False).digest()


def _filetime(moment: datetime) -> int:
    delta = moment - _FILETIME_EPOCH
    return max(0, (delta.days * 86400 + delta.seconds) * 10_000_000 + delta.microseconds * 10)


def _conversation_index(headers: dict[str, str], sent: datetime | None) -> bytes:
    """MS-ASCON 2.2.2.4: the 5-byte header (FILETIME bits 24..63, big-endian) and any response levels.

    A Thread-Index header (MS-OXOMSG PidTagConversationIndex, base64) gives both: its 5 time bytes
    after the reserved byte and its 5-byte response levels after the GUID.
    """
    thread_index = headers.get("thread-index")
    if thread_index:
        data = _b64(thread_index.encode("ascii", "ignore"))
        if len(data) >= 22 and (len(data) - 22) % 5 == 0:
            return data[1:6] + data[22:22 + 5 * _MAX_RESPONSE_LEVELS]
    ticks = _filetime(sent) if sent is not None else 0
    return ((ticks >> 24) & 0xFF_FFFF_FFFF).to_bytes(5, "big")


def conversation_id(raw_headers_or_message: bytes | bytearray | memoryview | str) -> bytes:
    """16 bytes naming the thread a message belongs to: a reply gets the same value as its original."""
    data = raw_headers_or_message
    if isinstance(data, str):
        data = data.encode("utf-8", "replace")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ItemError(f"conversation_id takes the message bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_MESSAGE_BYTES:
        raise ItemError(f"message of {len(data)} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")
    headers, body_start = _read_headers(data, 0, len(data))
    return _conversation_id(headers, data[:min(body_start, _MAX_HEADER_BLOCK)])


# --- MIME structure -------------------------------------------------------------------------------------

@dataclass(slots=True, eq=False)
class _Part:
    """One MIME entity: its IMAP section number, type, header fields and where its body lies in the raw bytes."""

    path: str
    ctype: str
    params: dict[str, str]
    headers: dict[str, str]
    start: int
    end: int
    depth: int
    disposition: str = ""
    dparams: dict[str, str] = field(default_factory=dict)
    children: list[_Part] = field(default_factory=list)


def _read_headers(raw: bytes, start: int, end: int) -> tuple[dict[str, str], int]:
    """The header fields of the entity in raw[start:end] and the offset of its body."""
    if raw.startswith(b"\n", start, end):
        return {}, start + 1
    if raw.startswith(b"\r\n", start, end):
        return {}, start + 2
    crlf, lf = raw.find(b"\n\r\n", start, end), raw.find(b"\n\n", start, end)
    if crlf < 0 and lf < 0:
        header_end, body = end, end
    elif lf < 0 or 0 <= crlf < lf:
        header_end, body = crlf + 1, crlf + 3
    else:
        header_end, body = lf + 1, lf + 2
    return _parse_header_block(raw[start:min(header_end, start + _MAX_HEADER_BLOCK)]), body


def _make_part(raw: bytes, start: int, end: int, path: str, depth: int, default_type: str) -> _Part:
    headers, body = _read_headers(raw, start, end)
    ctype, params = default_type, {}
    if "content-type" in headers:
        ctype, params = _parse_params(headers["content-type"])
        major, slash, minor = ctype.partition("/")
        if not (slash and major.strip() and minor.strip()) or " " in ctype:
            ctype = "text/plain"  # RFC 2045 5.2: an unreadable Content-Type means text/plain
    part = _Part(path, ctype, params, headers, min(body, end), end, depth)
    if "content-disposition" in headers:
        part.disposition, part.dparams = _parse_params(headers["content-disposition"])
    return part


def _split_multipart(raw: bytes, start: int, end: int, boundary: bytes, limit: int) -> list[tuple[int, int]]:
    """The (start, end) spans of a multipart body's parts: one left-to-right scan for delimiter lines."""
    marker = b"--" + boundary
    spans: list[tuple[int, int]] = []
    part_start = -1
    pos = start
    while len(spans) < limit:
        at = raw.find(marker, pos, end)
        if at < 0:
            break
        if at != start and raw[at - 1] != 0x0A:
            pos = at + 1
            continue
        after = at + len(marker)
        closing = raw.startswith(b"--", after, end)
        eol = raw.find(b"\n", after, min(end, after + 256))
        line_end = end if eol < 0 and end - after <= 256 else eol
        if line_end < 0 or raw[after + 2 * closing:line_end].strip():
            pos = at + 1  # "--boundaryX" or a delimiter line with junk after it: not a delimiter
            continue
        if part_start >= 0:
            stop = at - 1 if at > start and raw[at - 1] == 0x0A else at
            stop = stop - 1 if stop > part_start and raw[stop - 1] == 0x0D else stop
            spans.append((part_start, max(part_start, stop)))
        if closing:
            return spans
        part_start = pos = min(line_end + 1, end)
    if part_start >= 0 and len(spans) < limit:
        spans.append((part_start, end))  # no closing delimiter: the last part runs to the end
    return spans


def _parse_mime(raw: bytes) -> tuple[_Part, list[_Part]]:
    """The root entity and every entity in document order, following at most MAX_DEPTH multipart levels."""
    root = _make_part(raw, 0, len(raw), "", 0, "text/plain")
    order: list[_Part] = []
    stack = [root]
    count = 1
    while stack:
        part = stack.pop()
        order.append(part)
        boundary = part.params.get("boundary", "")
        if not part.ctype.startswith("multipart/") or part.depth >= MAX_DEPTH or not 0 < len(boundary) <= 200:
            continue
        default = "message/rfc822" if part.ctype == "multipart/digest" else "text/plain"
        encoded = boundary.encode("utf-8", "replace")
        for number, (start, end) in enumerate(
                _split_multipart(raw, part.start, part.end, encoded, MAX_PARTS - count), 1):
            path = f"{part.path}.{number}" if part.path else str(number)
            part.children.append(_make_part(raw, start, end, path, part.depth + 1, default))
        count += len(part.children)
        stack.extend(reversed(part.children))
    return root, order


def _filename(part: _Part) -> str:
    name = part.dparams.get("filename") or part.params.get("name") or ""
    if not name:
        return ""
    name = _decode_words(name).replace("\\", "/").rpartition("/")[2]
    return "".join(ch for ch in name if ch >= " " and ch != "\x7f").strip()[:255]


def _is_attachment(part: _Part) -> bool:
    return part.disposition == "attachment" or bool(_filename(part))


def _find_body(part: _Part, found: dict[str, _Part]) -> None:
    """The text/plain and text/html parts a reader sees as the message body (first of each)."""
    if part.children:
        if part.ctype == "multipart/alternative":
            for child in part.children:
                _find_body(child, found)
        elif part.ctype == "multipart/related":
            wanted = part.params.get("start", "").strip("<> ")
            root = next((c for c in part.children if wanted and c.headers.get("content-id", "").strip("<> ") == wanted),
                        part.children[0])
            _find_body(root, found)
        else:  # mixed, signed, report...: the first inline part that holds a body
            for child in part.children:
                inner: dict[str, _Part] = {}
                if not _is_attachment(child):
                    _find_body(child, inner)
                if inner:
                    for ctype, body in inner.items():
                        found.setdefault(ctype, body)
                    return
    elif part.ctype in ("text/plain", "text/html") and not _is_attachment(part):
        found.setdefault(part.ctype, part)


def _payload(raw: bytes, part: _Part) -> bytes:
    data = raw[part.start:part.end]
    encoding = part.headers.get("content-transfer-encoding", "").strip().lower()
    if encoding == "base64":
        return _b64(data)
    if encoding == "quoted-printable":
        return _qp(data)
    return data


def _decoded_size(raw: bytes, part: _Part) -> int:
    """The size of a part once its transfer encoding is undone, estimated without decoding it."""
    size = part.end - part.start
    encoding = part.headers.get("content-transfer-encoding", "").strip().lower()
    if encoding == "base64":
        size -= raw.count(b"\n", part.start, part.end) + raw.count(b"\r", part.start, part.end)
        padding = min(2, raw.count(b"=", max(part.start, part.end - 8), part.end))
        return max(0, max(0, size) * 3 // 4 - padding)
    return size


# --- HTML and plain text --------------------------------------------------------------------------------

_BLOCK_TAGS = frozenset("p div tr li ul ol dl dt dd h1 h2 h3 h4 h5 h6 table blockquote pre hr address section "
                        "article header footer nav aside form fieldset figure center".split())
_BREAK_TAGS = _BLOCK_TAGS | {"br"}
_SKIPPED_TAGS = frozenset({"script", "style", "head", "title", "template"})
_RUNS_OF_SPACE = re.compile(r"[ \t\r\n\f\v]+")


def _tidy(text: str) -> str:
    """Lines stripped, runs of blank lines kept to one, CRLF line ends."""
    lines: list[str] = []
    for line in text.replace("\xa0", " ").split("\n"):
        line = line.strip()
        if line or (lines and lines[-1]):
            lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    return "\r\n".join(lines)


def _strip_tags(source: str) -> str:
    """A fallback HTML-to-text for what lxml refuses: drop everything between < and >, linear."""
    out: list[str] = []
    pos = 0
    while True:
        start = source.find("<", pos)
        if start < 0:
            out.append(source[pos:])
            break
        out.append(source[pos:start])
        pos = source.find(">", start)
        if pos < 0:
            break
        pos += 1
    return _tidy(html.unescape(_RUNS_OF_SPACE.sub(" ", "".join(out))))


def _html_to_text(source: str) -> str:
    """Readable plain text of an HTML body (lxml's recovering parser, walked without recursion).

    Line breaks the markup makes are written as NUL (which ``_utf8`` has removed from the source),
    so one pass at the end can fold all other white space, except inside <pre>.
    """
    data = _utf8(source)
    try:
        parser = etree.HTMLParser(encoding="utf-8", remove_comments=True, remove_pis=True, no_network=True)
        root = etree.fromstring(data, parser)
    except (etree.LxmlError, ValueError, TypeError):
        return _strip_tags(source)
    if root is None:
        return ""
    out: list[str] = []
    append = out.append
    in_pre = 0
    walker = etree.iterwalk(root, events=("start", "end"))
    for event, element in walker:
        tag = element.tag  # lower case from the HTML parser; a function for comments and entities
        if event == "start":
            if tag in _SKIPPED_TAGS:
                walker.skip_subtree()
                continue
            if tag in _BREAK_TAGS:
                append("\x00")
            elif tag == "td" or tag == "th":
                append(" ")
            if tag == "pre":
                in_pre += 1
            text = element.text
        else:
            if tag == "pre":
                in_pre = max(0, in_pre - 1)
            if tag in _BLOCK_TAGS:
                append("\x00")
            text = element.tail
        if text:
            append(text.replace("\n", "\x00") if in_pre else text)
    return _tidy(_RUNS_OF_SPACE.sub(" ", "".join(out)).replace("\x00", "\n"))


def _text_to_html(text: str) -> str:
    """A simple HTML body for a plain-text message: escaped lines joined by <br>."""
    body = "<br>\r\n".join(html.escape(line, quote=False) for line in text.splitlines())
    return ('<html><head><meta http-equiv="Content-Type" content="text/html; charset=utf-8"></head><body>'
            f"{body}</body></html>")


class _Message:
    """A parsed message and its bodies, each made only when an item needs it."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.root, self.parts = _parse_mime(raw)
        self.headers = self.root.headers
        found: dict[str, _Part] = {}
        _find_body(self.root, found)
        self.plain_part, self.html_part = found.get("text/plain"), found.get("text/html")
        self._plain: str | None = None
        self._html: str | None = None
        protocol = self.root.params.get("protocol", "").lower()
        self.smime_class = (
            "IPM.Note.SMIME" if self.root.ctype in ("application/pkcs7-mime", "application/x-pkcs7-mime")
            else "IPM.Note.SMIME.MultipartSigned" if self.root.ctype == "multipart/signed" and "pgp" not in protocol
            else None)

    def _text(self, part: _Part) -> str:
        return _decode(_payload(self.raw, part), part.params.get("charset"))

    def plain(self) -> str:
        if self._plain is None:
            self._plain = (self._text(self.plain_part) if self.plain_part is not None
                           else _html_to_text(self.html()) if self.html_part is not None else "")
        return self._plain

    def html(self) -> str:
        if self._html is None:
            self._html = self._text(self.html_part) if self.html_part is not None else _text_to_html(self.plain())
        return self._html

    def preview(self, size: int) -> str:
        if self._plain is None and self.plain_part is None and self.html_part is not None:
            source = _html_to_text(self.html()[:_MAX_PREVIEW_SOURCE])
        else:
            source = self.plain()
        return " ".join(source[:size * 4 + 1024].split())[:size]

    def message_class(self) -> str:
        if self.smime_class:
            return self.smime_class
        calendars = [p for p in self.parts if p.ctype == "text/calendar" and not p.children][:10]
        for part in calendars:
            method = part.params.get("method", "").upper()
            if method == "REQUEST" or (not method and b"METHOD:REQUEST" in _payload(self.raw, part)[:1 << 20].upper()):
                return "IPM.Schedule.Meeting.Request"
        return "IPM.Note"

    def calendar(self) -> tuple[str, str] | None:
        """(METHOD, text) of the message's first iCalendar part, None when it has none."""
        for part in [p for p in self.parts if p.ctype == "text/calendar" and not p.children][:10]:
            data = _payload(self.raw, part)[:1 << 20]
            text = _decode(data, part.params.get("charset"))
            method = part.params.get("method", "").upper()
            if not method:
                found = re.search(r"^METHOD:(\w+)", text, re.MULTILINE | re.IGNORECASE)
                method = found.group(1).upper() if found else ""
            return method, text
        return None

    def attachments(self) -> list[tuple[_Part, str]]:
        """(part, display name) of every part shown as an attachment, names made up where missing."""
        body = {id(self.plain_part), id(self.html_part)}
        found: list[tuple[_Part, str]] = []
        unnamed = 0
        for part in self.parts:
            if part.children or part.ctype.startswith("multipart/") or id(part) in body:
                continue
            name = _filename(part)
            if not name and part.ctype == "message/rfc822":
                inner, _ = _read_headers(self.raw, part.start, part.end)
                subject = _clean(_decode_words(inner.get("subject", ""))).strip()
                name = "".join(ch for ch in subject if ch >= " ")[:200] + ".eml" if subject else ""
            if not name:
                unnamed += 1
                name = f"ATT{unnamed:05d}{_EXTENSIONS.get(part.ctype, '.dat')}"
            found.append((part, name))
            if len(found) >= MAX_ATTACHMENTS:
                break
        return found


_EXTENSIONS = {"text/plain": ".txt", "text/html": ".htm", "text/calendar": ".ics", "message/rfc822": ".eml",
               "image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif", "application/pdf": ".pdf"}


# --- the item -------------------------------------------------------------------------------------------

def _leaf(ns: str, name: str, text: str) -> Element:
    return Element(ns, name, text=_clean(text))


def _importance(headers: dict[str, str]) -> int:
    value = headers.get("importance", "").strip().lower()
    if value in ("low", "normal", "high"):
        return ("low", "normal", "high").index(value)
    priority = headers.get("x-priority", "").strip()[:1]
    if priority in ("1", "2", "3", "4", "5"):
        return 2 if priority in "12" else 1 if priority == "3" else 0
    value = headers.get("priority", "").strip().lower()
    return 2 if value == "urgent" else 0 if value == "non-urgent" else 1


def _categories(flags: list[str]) -> list[str]:
    return [_clean(name) for name in categories(flags)[:MAX_CATEGORIES]]


def _body_25(message: _Message, options: BodyOptions, use_mime: bool) -> list[Element]:
    """MS-ASEMAIL 2.5: Email:Body (plain text) or Email:MIMEData, with their sizes and truncation flags."""
    if use_mime:
        data = _cut(message.raw, options.mime_truncation)
        truncated = len(data) < len(message.raw)
        out = [Element("Email", "MIMEData", opaque=data)] if data or not truncated else []
        return out + [_leaf("Email", "MIMETruncated", str(int(truncated))),
                      _leaf("Email", "MIMESize", str(len(message.raw)))]
    full = _utf8(message.plain())
    data = _cut(full, options.truncation)
    out = [Element("Email", "Body", text=data.decode("utf-8"))]
    if len(data) < len(full):
        out.append(_leaf("Email", "BodySize", str(len(full))))
    return out + [_leaf("Email", "BodyTruncated", str(int(len(data) < len(full))))]


def _body(message: _Message, options: BodyOptions, version: tuple[int, int]) -> Element:
    """AirSyncBase:Body for 12.0+: the first preference the message satisfies (see the module notes)."""
    mime_refused = options.mime_support == 1 and message.smime_class is None
    mime_forced = options.mime_support == 2 or (options.mime_support == 1 and message.smime_class is not None)
    preferences = list(options.preferences) or [BodyPreference(1, options.truncation)]
    if mime_forced and not any(p.type == 4 for p in preferences):
        preferences.insert(0, BodyPreference(4, options.mime_truncation))
    elif mime_forced:
        preferences.sort(key=lambda p: p.type != 4)
    candidates = [p for p in preferences if p.type in (1, 2) or (p.type == 4 and not mime_refused)]
    too_big: tuple[BodyPreference, bytes] | None = None
    for preference in candidates or [BodyPreference(1, options.truncation)]:
        data = (message.raw if preference.type == 4 else
                _utf8(message.html() if preference.type == 2 else message.plain()))
        limit = preference.truncation_size
        if preference.all_or_none and limit is not None and len(data) > limit:
            too_big = too_big or (preference, data)
            continue
        return _body_element(message, preference, data, _cut(data, limit), version)
    assert too_big is not None
    return _body_element(message, too_big[0], too_big[1], None, version)


def _body_element(message: _Message, preference: BodyPreference, full: bytes, sent: bytes | None,
                  version: tuple[int, int]) -> Element:
    truncated = sent is None or len(sent) < len(full)
    children = [_leaf("AirSyncBase", "Type", str(preference.type)),
                _leaf("AirSyncBase", "EstimatedDataSize", str(len(full))),
                _leaf("AirSyncBase", "Truncated", str(int(truncated)))]
    if sent is not None and (sent or not truncated):
        children.append(Element("AirSyncBase", "Data", opaque=sent) if preference.type == 4
                        else Element("AirSyncBase", "Data", text=sent.decode("utf-8")))
    if version >= (14, 0) and preference.preview:
        preview = message.preview(preference.preview)
        if preview:
            children.append(_leaf("AirSyncBase", "Preview", preview))
    return Element("AirSyncBase", "Body", children)


def _attachments(message: _Message, version: tuple[int, int], file_reference: Callable[[str], str]) -> Element | None:
    found = message.attachments()
    if not found:
        return None
    items: list[Element] = []
    for part, name in found:
        reference = file_reference(part.path or "1")
        if not isinstance(reference, str):
            raise ItemError(f"file_reference returned a {type(reference).__name__}, not a str")
        size = str(_decoded_size(message.raw, part))
        method = "5" if part.ctype == "message/rfc822" else "1"
        if version < (12, 0):
            items.append(Element("Email", "Attachment", [
                _leaf("Email", "AttMethod", method), _leaf("Email", "AttSize", size),
                _leaf("Email", "DisplayName", name), _leaf("Email", "AttName", reference)]))
            continue
        children = [_leaf("AirSyncBase", "DisplayName", name), _leaf("AirSyncBase", "FileReference", reference),
                    _leaf("AirSyncBase", "Method", method), _leaf("AirSyncBase", "EstimatedDataSize", size)]
        content_id = part.headers.get("content-id", "").strip().strip("<>").strip()
        if content_id:
            children.append(_leaf("AirSyncBase", "ContentId", content_id))
        location = part.headers.get("content-location", "").strip()
        if location:
            children.append(_leaf("AirSyncBase", "ContentLocation", location))
        if part.disposition == "inline" or (not part.disposition and content_id):
            children.append(_leaf("AirSyncBase", "IsInline", "1"))
        items.append(Element("AirSyncBase", "Attachment", children))
    ns = "Email" if version < (12, 0) else "AirSyncBase"
    return Element(ns, "Attachments", items)


def _part_reference(part_path: str) -> str:
    """The default FileReference: the IMAP section number itself."""
    return part_path


def _utc_text(moment: datetime) -> str:
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{moment.microsecond // 1000:03d}Z"


def email_application_data(raw: bytes, *, version: str, options: BodyOptions, flags: Sequence[str] = (),
                           internal_date: datetime | None = None,
                           file_reference: Callable[[str], str] = _part_reference) -> Element:
    """The AirSync:ApplicationData of one message for a client of ``version`` with these body ``options``.

    ``flags`` are the message's IMAP flags and keywords (any collection of str, a set will do), ``internal_date`` its
    INTERNALDATE (naive means UTC), ``file_reference`` maps a MIME part number
    ("2", "1.2") to the FileReference (2.5: AttName) the client will fetch.
    """
    v = _version(version)
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise ItemError(f"the message must be bytes, not {type(raw).__name__}")
    raw = bytes(raw)
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ItemError(f"message of {len(raw)} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")
    if not isinstance(options, BodyOptions):
        raise ItemError(f"options must be BodyOptions, not {type(options).__name__}")
    if isinstance(flags, (str, bytes)) or not isinstance(flags, Iterable):
        raise ItemError("flags must be a collection of str")
    flags = list(flags)
    if not all(isinstance(f, str) for f in flags):
        raise ItemError("flags must all be str")
    if internal_date is not None and not isinstance(internal_date, datetime):
        raise ItemError(f"internal_date must be a datetime, not {type(internal_date).__name__}")
    if internal_date is not None:
        try:
            internal_date = (internal_date.replace(tzinfo=timezone.utc) if internal_date.tzinfo is None
                             else internal_date.astimezone(timezone.utc))
        except (OverflowError, ValueError):
            raise ItemError(f"internal_date {internal_date!r} is out of range") from None
    if not callable(file_reference):
        raise ItemError("file_reference must be callable")

    message = _Message(raw)
    headers = message.headers
    sent = _date(headers.get("date"))
    system = {f.lower() for f in flags if f.startswith("\\")}
    subject = _decode_words(headers.get("subject", "")).strip()
    to = _addresses(headers.get("to"))
    out: list[Element] = []
    for name, header in (("To", "to"), ("Cc", "cc"), ("From", "from"), ("Subject", None), ("ReplyTo", "reply-to")):
        mailboxes = to if header == "to" else _addresses(headers.get(header)) if header else []
        text = subject if header is None else _format_addresses(mailboxes)
        if text:
            out.append(_leaf("Email", name, text))
    received = internal_date or sent
    if received is not None:
        out.append(_leaf("Email", "DateReceived", _utc_text(received)))
    display_to = "; ".join(name or address for name, address in to)
    if display_to:
        out.append(_leaf("Email", "DisplayTo", display_to))
    topic = _decode_words(headers.get("thread-topic", "")).strip() or _normalised_subject(subject)
    if topic:
        out.append(_leaf("Email", "ThreadTopic", topic))
    out.append(_leaf("Email", "Importance", str(_importance(headers))))
    out.append(_leaf("Email", "Read", "1" if "\\seen" in system else "0"))
    attachments = _attachments(message, v, file_reference)
    if attachments is not None:
        out.append(attachments)
    if v < (12, 0):
        use_mime = options.mime_support == 2 or (options.mime_support == 1 and message.smime_class is not None)
        out.extend(_body_25(message, options, use_mime))
        out.append(_leaf("Email", "MessageClass", message.message_class()))
        return Element("AirSync", "ApplicationData", out)
    out.append(_body(message, options, v))
    out.append(_leaf("Email", "MessageClass", message.message_class()))
    invitation = message.calendar() if message.smime_class is None else None
    if invitation is not None and invitation[0] in ("REQUEST", "CANCEL"):
        from .meeting import meeting_request
        try:
            out.append(meeting_request(invitation[1], v))
        except ItemError:
            pass  # an invitation we cannot read stays a plain message with its .ics attached
        else:
            if invitation[0] == "CANCEL":
                out[-2] = _leaf("Email", "MessageClass", "IPM.Schedule.Meeting.Canceled")
    out.append(_leaf("Email", "InternetCPID", "65001"))
    out.append(Element("Email", "Flag", [
        _leaf("Email", "Status", "2"), _leaf("Email", "FlagType", "Flag for follow up")]
        if "\\flagged" in system else []))
    out.append(_leaf("Email", "ContentClass", "urn:content-classes:message"))
    out.append(_leaf("AirSyncBase", "NativeBodyType", "2" if message.html_part is not None else "1"))
    if v >= (14, 0):
        header_block = raw[:min(message.root.start, _MAX_HEADER_BLOCK)]
        out.append(Element("Email2", "ConversationId", opaque=_conversation_id(headers, header_block)))
        out.append(Element("Email2", "ConversationIndex", opaque=_conversation_index(headers, sent or received)))
        out.append(Element("Email", "Categories", [_leaf("Email", "Category", c) for c in _categories(flags)]))
    return Element("AirSync", "ApplicationData", out)


def attachment_content(raw: bytes, part_path: str) -> tuple[str, str, bytes]:
    """(content type, file name, decoded bytes) of the MIME part with IMAP section number ``part_path``.

    Raises ItemError when the message has no such part; used by ItemOperations to fetch an attachment
    named by the FileReference that ``email_application_data`` gave it.
    """
    if not isinstance(raw, (bytes, bytearray, memoryview)) or len(raw) > MAX_MESSAGE_BYTES:
        raise ItemError("message too large or not bytes")
    raw = bytes(raw)
    _, order = _parse_mime(raw)
    wanted = "" if part_path == "1" and not order[0].children else part_path
    for part in order:
        if part.path == wanted and not part.children:
            return part.ctype, _filename(part), _payload(raw, part)
    raise ItemError(f"no MIME part {part_path[:20]!r}")
