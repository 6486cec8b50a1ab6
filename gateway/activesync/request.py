"""The ActiveSync request line (MS-ASHTTP 2.2.1.1): what a POST or OPTIONS says about itself, in either query form.

A client names its command, user, device and protocol version either in a
plain-text query (``Cmd=Sync&User=...&DeviceId=...&DeviceType=...`` plus the
MS-ASProtocolVersion and X-MS-PolicyKey headers) or in one base64 blob that
packs the same facts into bytes (12.1 and later only). ``parse_request``
reads both into one ``EasRequest``; ``encode_base64_query`` writes the blob
back, for tests and tools. Anything malformed raises ``RequestError``, whose
``status`` is the HTTP answer (400, or 501 for a command nobody defined) and
whose message quotes at most 20 characters of what the client sent.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import quote, unquote, unquote_plus

__all__ = ["COMMANDS", "COMMAND_NAMES", "EasRequest", "RequestError", "SUPPORTED_VERSIONS",
           "encode_base64_query", "parse_request"]

SUPPORTED_VERSIONS: tuple[str, ...] = ("2.5", "12.0", "12.1", "14.0", "14.1", "16.0", "16.1")
# The base64 query's version byte is the version without its dot; 2.5 and 12.0 MUST use plain text.
_VERSION_BYTE = {int(v.replace(".", "")): v for v in SUPPORTED_VERSIONS}
_PLAIN_ONLY = frozenset({"2.5", "12.0"})

# MS-ASHTTP 2.2.1.1.1.1.2. Codes 5-8 are unassigned there, and Find (16.1) has no code.
COMMANDS: dict[int, str] = {
    0: "Sync", 1: "SendMail", 2: "SmartForward", 3: "SmartReply", 4: "GetAttachment", 9: "FolderSync",
    10: "FolderCreate", 11: "FolderDelete", 12: "FolderUpdate", 13: "MoveItems", 14: "GetItemEstimate",
    15: "MeetingResponse", 16: "Search", 17: "Settings", 18: "Ping", 19: "ItemOperations", 20: "Provision",
    21: "ResolveRecipients", 22: "ValidateCert"}
# Every name MS-ASHTTP's own MS-ASProtocolCommands example lists (2.2.2.1.2), the legacy collection
# commands included; they are known (so 400/501 is decided by the command registry, not here).
COMMAND_NAMES: frozenset[str] = frozenset(
    {*COMMANDS.values(), "GetHierarchy", "CreateCollection", "DeleteCollection", "MoveCollection", "Find"})
_CANONICAL = {name.lower(): name for name in COMMAND_NAMES}
_CODE_OF = {name: code for code, name in COMMANDS.items()}

# Parameter tags (2.2.1.1.1.1.3). 5 (ParentId) is gone from the current table but earlier revisions and
# deployed servers read it; 2 and anything above 8 are refused. 7 (Options) is a bitmask, not text.
_TAGS = {0: "attachment_name", 1: "collection_id", 3: "item_id", 4: "long_id", 5: "parent_id",
         6: "occurrence", 8: "user"}
_OPTIONS_TAG = 7
_SAVE_IN_SENT, _ACCEPT_MULTIPART = 0x01, 0x02
# Plain-text command parameters (2.2.1.1.1.2.5), by lower-cased name: the ABNF's literals ignore case.
_PLAIN_PARAMS = {"attachmentname": "attachment_name", "collectionid": "collection_id", "itemid": "item_id",
                 "longid": "long_id", "parentid": "parent_id", "occurrence": "occurrence"}
_PARAM_FIELDS = tuple(_PLAIN_PARAMS.values())

MAX_QUERY_CHARS = 16 * 1024  # the largest base64 query, percent-encoded, is about 11 KB
MAX_FIELDS = 32
MAX_DEVICE_ID = 32
MAX_DEVICE_TYPE = 32
MAX_USER = 255
MAX_PARAM_CHARS = 1024  # LongId may reach 256 characters; leave room for percent-decoded file references

_COMMAND_NAME = re.compile(r"[A-Za-z]{1,40}")  # command-name = 1*ALPHA
_DEVICE_ID = re.compile(r"[A-Za-z0-9]+")  # device-id = 1*32(ALPHA / DIGIT)
_DEVICE_TYPE = re.compile(r"[!-~](?:[ -~]*[!-~])?")  # printable ASCII, no space at either end
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_UINT32 = re.compile(r"[0-9]{1,10}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_HEADERS = ("ms-asprotocolversion", "x-ms-policykey", "ms-asacceptmultipart")


class RequestError(ValueError):
    """The request line cannot be served: ``status`` is the HTTP answer, the message is safe to log and show."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class EasRequest:
    """What one ActiveSync request says about itself, whichever query form carried it."""

    command: str
    user: str
    device_id: str
    device_type: str
    version: str | None
    policy_key: int | None
    locale: int | None
    collection_id: str | None = None
    item_id: str | None = None
    long_id: str | None = None
    parent_id: str | None = None
    occurrence: str | None = None
    attachment_name: str | None = None
    save_in_sent: bool = False
    accept_multipart: bool = False
    base64_form: bool = False


def _clip(value: str) -> str:
    """A client's value, short and escaped (never over about 60 characters), for a message that ends up in logs."""
    shown = repr(value[:20])
    return shown[:60] + ("..." if len(value) > 20 or len(shown) > 60 else "")


def parse_request(query: str, headers: Mapping[str, str], *, method: str = "POST") -> EasRequest:
    """The request ``query`` (after "?", still percent-encoded) and ``headers`` describe; RequestError if malformed."""
    if not isinstance(query, str):
        raise TypeError(f"query must be str, not {type(query).__name__}")
    verb = method.upper()
    if verb not in ("POST", "OPTIONS"):
        raise RequestError(f"method {_clip(method)} is neither OPTIONS nor POST", 405)
    if len(query) > MAX_QUERY_CHARS:
        raise RequestError(f"the query string exceeds {MAX_QUERY_CHARS} characters")
    found = _headers(headers)
    # Base64 padding may arrive unencoded, so only an "=" before the tail marks name=value pairs.
    plain = not query or "&" in query or "=" in query.rstrip("=")
    fields = _plain(query, found) if plain else _base64(query, found)
    if verb == "OPTIONS":
        fields["command"] = ""  # OPTIONS asks what the server offers; a command in its query means nothing
    req = EasRequest(**fields)
    _validate(req, required=verb == "POST", plain=plain)
    if req.command and req.command not in COMMAND_NAMES:
        raise RequestError(f"unknown command {_clip(req.command)}", 501)
    return req


def _headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The request headers this module reads, by lower-case name; a header repeated with two values is refused."""
    found: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower() if isinstance(name, str) else None
        if key not in _HEADERS:
            continue
        if not isinstance(value, str):
            raise TypeError(f"header values must be str, not {type(value).__name__}")
        value = value.strip()
        if found.get(key, value) != value:
            raise RequestError(f"header {key} is repeated with different values")
        found[key] = value
    return found


def _plain(query: str, found: dict[str, str]) -> dict:
    """Fields of a plain-text query value (2.2.1.1.1.2): form decoding, names case-insensitive, no repeats."""
    pairs: dict[str, str] = {}
    for part in query.split("&"):
        if not part:
            continue
        raw_name, eq, raw_value = part.partition("=")
        if not eq:
            raise RequestError(f"query field {_clip(raw_name)} has no '='")
        try:
            name, value = unquote_plus(raw_name, errors="strict"), unquote_plus(raw_value, errors="strict")
        except UnicodeDecodeError:
            raise RequestError("a query field is not percent-encoded UTF-8") from None
        key = name.lower()
        if key in pairs:
            raise RequestError(f"query parameter {_clip(name)} is repeated")
        if len(pairs) == MAX_FIELDS:
            raise RequestError(f"the query has more than {MAX_FIELDS} fields")
        pairs[key] = value
    command = pairs.get("cmd", "")
    if command:
        if not _COMMAND_NAME.fullmatch(command):
            raise RequestError(f"Cmd {_clip(command)} is not a command name")
        command = _CANONICAL.get(command.lower(), command)
    # pyactivesync sends the key as a query parameter while provisioning; the header wins when both exist.
    key_text = found.get("x-ms-policykey") or pairs.get("policykey", "")
    return {"command": command, "user": pairs.get("user", ""), "device_id": pairs.get("deviceid", ""),
            "device_type": pairs.get("devicetype", ""), "version": _version_header(found),
            "policy_key": _policy_key(key_text.strip()), "locale": None,
            "save_in_sent": _flag(pairs.get("saveinsent", ""), "SaveInSent"),
            "accept_multipart": _flag(found.get("ms-asacceptmultipart", ""), "MS-ASAcceptMultiPart"),
            **{field: pairs.get(key) or None for key, field in _PLAIN_PARAMS.items()}}


def _version_header(found: dict[str, str]) -> str | None:
    value = found.get("ms-asprotocolversion", "")
    if not value:
        return None
    if value not in SUPPORTED_VERSIONS:
        raise RequestError(f"MS-ASProtocolVersion {_clip(value)} is not a protocol version")
    return value


def _policy_key(text: str) -> int | None:
    if not text:
        return None
    if not _UINT32.fullmatch(text) or int(text) > 0xFFFFFFFF:
        raise RequestError(f"policy key {_clip(text)} is not an unsigned 32-bit integer")
    return int(text)


def _flag(text: str, name: str) -> bool:
    """A T/F switch (SaveInSent, MS-ASAcceptMultiPart); absent means F."""
    value = text.strip().upper()
    if value not in ("", "T", "F"):
        raise RequestError(f"{name} must be T or F, not {_clip(text)}")
    return value == "T"


class _Reader:
    """Bounds-checked reads from the decoded base64 query."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, count: int, what: str) -> bytes:
        if self.pos + count > len(self.data):
            raise RequestError(f"the base64 query ends inside the {what}")
        self.pos += count
        return self.data[self.pos - count:self.pos]

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]

    def done(self) -> bool:
        return self.pos == len(self.data)


def _base64(query: str, found: dict[str, str]) -> dict:
    """Fields of a base64-encoded query value (2.2.1.1.1.1), read byte by byte."""
    text = unquote(query)  # clients percent-encode "+", "/" and "="
    if not _BASE64.fullmatch(text) or len(text.rstrip("=")) % 4 == 1:
        raise RequestError("the query is neither name=value pairs nor base64")
    text = text.rstrip("=")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise RequestError("the base64 query does not decode") from None
    r = _Reader(data)
    version_byte = r.byte("protocol version")
    command_code = r.byte("command code")
    locale = int.from_bytes(r.take(2, "locale"), "little")
    id_length = r.byte("device ID length")
    if id_length == 0:
        raise RequestError("the base64 query has an empty device ID")
    raw_id = r.take(id_length, "device ID")
    key_length = r.byte("policy key length")
    if key_length not in (0, 4):
        raise RequestError(f"the policy key length is {key_length}, not 0 or 4")
    policy_key = int.from_bytes(r.take(4, "policy key"), "little") if key_length else None
    raw_type = r.take(r.byte("device type length"), "device type")
    fields: dict = {"user": "", "save_in_sent": False, "accept_multipart": False}
    seen: set[int] = set()
    while not r.done():
        tag = r.byte("parameter tag")
        value = r.take(r.byte("parameter length"), "parameter value")
        if tag in seen:
            raise RequestError(f"parameter tag {tag} is repeated")
        seen.add(tag)
        if tag == _OPTIONS_TAG:
            if len(value) != 1:
                raise RequestError("the Options parameter is not one byte")
            # Bits beyond the two defined flags are reserved: ignored, as a later version may use them.
            fields["save_in_sent"] = bool(value[0] & _SAVE_IN_SENT)
            fields["accept_multipart"] = bool(value[0] & _ACCEPT_MULTIPART)
        elif tag in _TAGS:
            try:
                text_value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise RequestError(f"parameter tag {tag} is not UTF-8") from None
            fields[_TAGS[tag]] = text_value if tag == 8 else text_value or None
        else:
            raise RequestError(f"unknown parameter tag {tag}")
    if version_byte not in _VERSION_BYTE:
        raise RequestError(f"protocol version byte {version_byte} names no supported version")
    version = _VERSION_BYTE[version_byte]
    if version in _PLAIN_ONLY:
        raise RequestError(f"protocol version {version} must use the plain-text query")
    try:
        device_type = raw_type.decode("ascii")
    except UnicodeDecodeError:
        raise RequestError("the device type is not ASCII") from None
    if header_key := found.get("x-ms-policykey"):
        policy_key = policy_key if policy_key is not None else _policy_key(header_key)
    if found.get("ms-asacceptmultipart"):
        fields["accept_multipart"] |= _flag(found["ms-asacceptmultipart"], "MS-ASAcceptMultiPart")
    return {**fields, "command": COMMANDS.get(command_code, f"#{command_code}"), "device_id": _device_id(raw_id),
            "device_type": device_type, "version": version, "policy_key": policy_key, "locale": locale,
            "base64_form": True}


def _device_id(raw: bytes) -> str:
    """A device ID as text; one that is not printable ASCII (a binary GUID) as upper-case hex."""
    if all(0x20 <= b <= 0x7E for b in raw):
        return raw.decode("ascii")
    return raw.hex().upper()


def _validate(req: EasRequest, *, required: bool, plain: bool) -> None:
    """Field rules both forms share; ``required`` for POST (Cmd, DeviceId, DeviceType, and User in plain text)."""
    if required:
        for value, name in ((req.command, "Cmd"), (req.device_id, "DeviceId"), (req.device_type, "DeviceType"),
                            (req.user if plain else "-", "User")):
            if not value:
                raise RequestError(f"{name} is missing")
    if req.device_id:
        if len(req.device_id) > MAX_DEVICE_ID:
            raise RequestError(f"DeviceId is longer than {MAX_DEVICE_ID} characters")
        if not _DEVICE_ID.fullmatch(req.device_id):
            raise RequestError(f"DeviceId {_clip(req.device_id)} is not letters and digits")
    if req.device_type:
        if len(req.device_type) > MAX_DEVICE_TYPE:
            raise RequestError(f"DeviceType is longer than {MAX_DEVICE_TYPE} characters")
        if not _DEVICE_TYPE.fullmatch(req.device_type):
            raise RequestError(f"DeviceType {_clip(req.device_type)} is not printable ASCII")
    if len(req.user) > MAX_USER:
        raise RequestError(f"User is longer than {MAX_USER} characters")
    if _CONTROL.search(req.user):
        raise RequestError("User contains control characters")
    for field in _PARAM_FIELDS:
        value = getattr(req, field)
        if value is not None and (len(value) > MAX_PARAM_CHARS or _CONTROL.search(value)):
            raise RequestError(f"{field} is longer than {MAX_PARAM_CHARS} characters or has control characters")


def encode_base64_query(req: EasRequest) -> str:
    """The base64 query value (percent-encoded, ready after "?") that ``parse_request`` reads back as ``req``."""
    _validate(req, required=True, plain=False)
    if req.version is None or req.version in _PLAIN_ONLY or req.version not in SUPPORTED_VERSIONS:
        raise RequestError(f"protocol version {req.version} has no base64 query form")
    if req.command not in _CODE_OF:
        status = 400 if req.command in COMMAND_NAMES else 501
        raise RequestError(f"command {_clip(req.command)} has no base64 command code", status)
    locale = req.locale or 0
    if not 0 <= locale <= 0xFFFF:
        raise RequestError(f"locale {locale} does not fit in 16 bits")
    key = b""
    if req.policy_key is not None:
        if not 0 <= req.policy_key <= 0xFFFFFFFF:
            raise RequestError("the policy key does not fit in 32 bits")
        key = req.policy_key.to_bytes(4, "little")
    device_id, device_type = req.device_id.encode("ascii"), req.device_type.encode("ascii")
    out = bytearray((int(req.version.replace(".", "")), _CODE_OF[req.command]))
    out += locale.to_bytes(2, "little")
    out += bytes((len(device_id),)) + device_id + bytes((len(key),)) + key + bytes((len(device_type),)) + device_type
    for tag, field in _TAGS.items():
        value = getattr(req, field)
        if value is None or (tag == 8 and not value):
            continue
        raw = value.encode("utf-8")
        if not 0 < len(raw) <= 255:
            raise RequestError(f"{field} must be 1 to 255 bytes of UTF-8 in the base64 form")
        out += bytes((tag, len(raw))) + raw
    options = (_SAVE_IN_SENT if req.save_in_sent else 0) | (_ACCEPT_MULTIPART if req.accept_multipart else 0)
    if options:
        out += bytes((_OPTIONS_TAG, 1, options))
    return quote(base64.b64encode(bytes(out)).decode("ascii"), safe="")
