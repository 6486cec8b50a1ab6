"""ActiveSync WBXML (MS-ASWBXML over WBXML 1.3): bytes to an element tree and back, strictly bounded.

The tree is a small dataclass, ``Element``: a namespace (a code page name,
see ``codepages``), a tag name, and at most one kind of content: child
elements, a text value (``str``) or opaque bytes (``bytes``). EAS never mixes
them, so a document that does is refused. An element with none of them is an
empty tag (``<GetChanges/>``); ``text=""`` is an empty string, which WBXML
keeps apart from an empty tag.

``decode`` accepts what EAS peers send: WBXML version 1.3, public identifier
1 (unknown), charset 106 (UTF-8); tags, SWITCH_PAGE, END, STR_I, OPAQUE. A
string table is accepted up to ``Limits.max_string_table_bytes`` and STR_T
references are resolved against it (EAS itself always sends an empty table).
ENTITY, LITERAL*, EXT*, PI and attributes are refused. Every malformed or
oversized input raises ``WbxmlError`` and nothing else; decoding, encoding
and the XML view are loops, not recursion, so no depth reaches Python's
recursion limit.

``to_xml`` and ``from_xml`` give an XML view for logs, tests and tools.
Opaque data appears there as base64 inside an element marked
``wbxml:opaque="base64"`` (namespace ``urn:casgate:wbxml``), or, past an
optional size, as a ``wbxml:opaque="omitted"`` marker with its length, which
``from_xml`` refuses.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Iterator

from lxml import etree

from gateway.activesync.codepages import PAGES, TOKENS, page_for_namespace
from gateway.xmlsafe import XmlRejected, parse_untrusted

__all__ = ["Element", "Limits", "WbxmlError", "decode", "encode", "to_xml", "from_xml", "XML_VIEW_NS"]

SWITCH_PAGE, END, STR_I, STR_T, OPAQUE = 0x00, 0x01, 0x03, 0x83, 0xC3
HAS_CONTENT, HAS_ATTRIBUTES = 0x40, 0x80
HEADER = bytes((0x03, 0x01, 0x6A, 0x00))  # version 1.3, public id "unknown", UTF-8, empty string table
UTF8_MIB = 106
XML_VIEW_NS = "urn:casgate:wbxml"

# The global tokens EAS never uses, by value, for error messages.
_REFUSED = {0x02: "ENTITY", 0x04: "LITERAL", 0x40: "EXT_I_0", 0x41: "EXT_I_1", 0x42: "EXT_I_2", 0x43: "PI",
            0x44: "LITERAL_C", 0x80: "EXT_T_0", 0x81: "EXT_T_1", 0x82: "EXT_T_2", 0x84: "LITERAL_A",
            0xC0: "EXT_0", 0xC1: "EXT_1", 0xC2: "EXT_2", 0xC4: "LITERAL_AC"}
_PAGE_NAMES = tuple((page.namespace, page.names) for page in PAGES)


class WbxmlError(ValueError):
    """The bytes are not an ActiveSync WBXML document we accept, or a tree cannot be encoded."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what ``decode`` (and ``from_xml``) accept; exceeding any raises WbxmlError.

    The defaults fit real traffic with room to spare: Exchange 2010 caps an
    ActiveSync request at 10 MB by default, and a Sync response nests about a
    dozen levels deep and holds a few thousand elements.
    """

    max_input_bytes: int = 32 * 1024 * 1024
    max_depth: int = 64
    max_elements: int = 250_000
    max_string_table_bytes: int = 64 * 1024
    max_value_bytes: int = 16 * 1024 * 1024  # one text value or opaque blob (a MIME message), in bytes

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if type(value) is not int or value < 0:
                raise ValueError(f"Limits.{name} must be a non-negative int, not {value!r}")


DEFAULT_LIMITS = Limits()


@dataclass(slots=True)
class Element:
    """One WBXML element: ``ns`` (code page name), ``name``, and children, text or opaque bytes."""

    ns: str
    name: str
    children: list[Element] = field(default_factory=list)
    text: str | None = None
    opaque: bytes | None = None

    def find(self, name: str, ns: str | None = None) -> Element | None:
        """The first child called ``name`` in ``ns`` (default: this element's namespace), or None."""
        ns = self.ns if ns is None else ns
        for child in self.children:
            if child.name == name and child.ns == ns:
                return child
        return None

    def findall(self, name: str, ns: str | None = None) -> list[Element]:
        """Every child called ``name`` in ``ns`` (default: this element's namespace), in order."""
        ns = self.ns if ns is None else ns
        return [child for child in self.children if child.name == name and child.ns == ns]

    def text_of(self, name: str, ns: str | None = None, default: str | None = None) -> str | None:
        """The text of the first child called ``name``; ``default`` if there is none or it holds no text."""
        child = self.find(name, ns)
        return default if child is None or child.text is None else child.text

    def iter(self) -> Iterator[Element]:
        """This element and every element below it, in document order."""
        stack = [self]
        while stack:
            element = stack.pop()
            yield element
            stack.extend(reversed(element.children))


# --- decoding -------------------------------------------------------------------------------------------

def _read_mb(data: bytes, pos: int) -> tuple[int, int]:
    """The WBXML mb_u_int32 at ``pos`` and the position after it."""
    start, value = pos, 0
    for pos in range(pos, pos + 5):
        if pos >= len(data):
            raise WbxmlError(f"at byte {start}: input ends inside a multi-byte integer")
        byte = data[pos]
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            if value > 0xFFFFFFFF:
                raise WbxmlError(f"at byte {start}: multi-byte integer exceeds 32 bits")
            return value, pos + 1
    raise WbxmlError(f"at byte {start}: multi-byte integer longer than 5 bytes")


def _header(data: bytes, limits: Limits) -> tuple[bytes, int]:
    """Check the WBXML header; return the string table and the position of the body."""
    if not data:
        raise WbxmlError("empty input")
    if data[0] != 0x03:
        raise WbxmlError(f"WBXML version byte {data[0]:#04x}; ActiveSync uses 1.3 (0x03)")
    public_id, pos = _read_mb(data, 1)
    if public_id != 0x01:
        raise WbxmlError(f"public identifier {public_id}; ActiveSync uses 1 (unknown)")
    charset, pos = _read_mb(data, pos)
    if charset != UTF8_MIB:
        raise WbxmlError(f"charset MIBenum {charset}; ActiveSync uses 106 (UTF-8)")
    table_len, pos = _read_mb(data, pos)
    if table_len > limits.max_string_table_bytes:
        raise WbxmlError(f"string table of {table_len} bytes exceeds the limit of {limits.max_string_table_bytes}")
    if table_len > len(data) - pos:
        raise WbxmlError(f"string table of {table_len} bytes runs past the end of the input")
    return data[pos:pos + table_len], pos + table_len


def decode(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> Element:
    """The element tree of an ActiveSync WBXML document; raises WbxmlError for anything malformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode takes bytes, not {type(data).__name__}")
    if len(data) > limits.max_input_bytes:
        raise WbxmlError(f"input of {len(data)} bytes exceeds the limit of {limits.max_input_bytes}")
    data = bytes(data)
    table, pos = _header(data, limits)
    n = len(data)
    max_depth, max_elements, max_value = limits.max_depth, limits.max_elements, limits.max_value_bytes
    ns, names = _PAGE_NAMES[0]
    stack: list[Element] = []          # the open elements, root first
    values: list[list | None] = []     # per open element: None, or [is_text, raw piece, raw piece, ...]
    root: Element | None = None
    elements = 0
    while pos < n:
        byte = data[pos]
        pos += 1
        if byte == END:
            if not stack:
                raise WbxmlError(f"at byte {pos - 1}: END without an open element")
            element, value = stack.pop(), values.pop()
            if value is not None:
                _set_value(element, value, max_value)
            if not stack:
                break
        elif byte & 0x3F >= 0x05 and byte < HAS_ATTRIBUTES:  # a tag, the commonest byte
            name = names[byte & 0x3F]
            if name is None:
                raise WbxmlError(f"at byte {pos - 1}: no tag {byte & 0x3F:#04x} on code page {ns}")
            elements += 1
            if elements > max_elements:
                raise WbxmlError(f"more than {max_elements} elements")
            if len(stack) >= max_depth:
                raise WbxmlError(f"elements nested deeper than {max_depth} levels")
            element = Element(ns, name)
            if stack:
                if values[-1] is not None:
                    raise WbxmlError(f"at byte {pos - 1}: {name} follows data in {stack[-1].name} (mixed content)")
                stack[-1].children.append(element)
            else:
                root = element
            if byte & HAS_CONTENT:
                stack.append(element)
                values.append(None)
            elif not stack:
                break  # an empty root is the whole document
        elif byte == STR_I:
            end = data.find(b"\x00", pos, pos + max_value + 1)
            if end < 0:
                raise WbxmlError(f"at byte {pos - 1}: inline string unterminated or longer than {max_value} bytes")
            if values and values[-1] is None and not stack[-1].children:
                values[-1] = [True, data[pos:end]]
            else:
                _add_piece(stack, values, True, data[pos:end], pos - 1)
            pos = end + 1
        elif byte == OPAQUE:
            length, pos = _read_mb(data, pos)
            if length > max_value:
                raise WbxmlError(f"at byte {pos}: opaque data of {length} bytes exceeds the limit of {max_value}")
            if length > n - pos:
                raise WbxmlError(f"at byte {pos}: opaque data of {length} bytes runs past the end of the input")
            _add_piece(stack, values, False, data[pos:pos + length], pos)
            pos += length
        elif byte == SWITCH_PAGE:
            if pos >= n:
                raise WbxmlError("input ends inside SWITCH_PAGE")
            if data[pos] >= len(_PAGE_NAMES):
                raise WbxmlError(f"at byte {pos}: no ActiveSync code page {data[pos]}")
            ns, names = _PAGE_NAMES[data[pos]]
            pos += 1
        elif byte == STR_T:
            offset, after = _read_mb(data, pos)
            end = table.find(b"\x00", offset) if offset < len(table) else -1
            if end < 0:
                raise WbxmlError(f"at byte {pos}: string table reference {offset} is not a string in the table")
            _add_piece(stack, values, True, table[offset:end], pos)
            pos = after
        elif byte in _REFUSED:
            raise WbxmlError(f"at byte {pos - 1}: WBXML {_REFUSED[byte]} is not used by ActiveSync")
        else:
            raise WbxmlError(f"at byte {pos - 1}: tag byte {byte:#04x} has attributes, which ActiveSync never uses")
    if root is None:
        raise WbxmlError("no root element")
    if stack:
        raise WbxmlError(f"input ends inside {stack[-1].name} ({len(stack)} elements open)")
    if pos != n:
        raise WbxmlError(f"{n - pos} bytes after the root element")
    return root


def _add_piece(stack: list[Element], values: list[list | None], is_text: bool, raw: bytes, pos: int) -> None:
    """Keep a string or opaque piece for the innermost open element; WBXML may split one value in pieces."""
    if not stack:
        raise WbxmlError(f"at byte {pos}: data outside the root element")
    if stack[-1].children:
        raise WbxmlError(f"at byte {pos}: data after the child elements of {stack[-1].name} (mixed content)")
    value = values[-1]
    if value is None:
        values[-1] = [is_text, raw]
    elif value[0] is not is_text:
        raise WbxmlError(f"at byte {pos}: {stack[-1].name} mixes a string with opaque data")
    else:
        value.append(raw)


def _set_value(element: Element, value: list, max_value: int) -> None:
    """Join an element's pieces (checking their total size) and store them as its text or opaque data."""
    raw = value[1] if len(value) == 2 else b"".join(value[1:])  # one piece is the usual case
    if len(raw) > max_value:
        raise WbxmlError(f"value of {element.name} is {len(raw)} bytes, more than the limit of {max_value}")
    if not value[0]:
        element.opaque = raw
        return
    try:
        element.text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WbxmlError(f"text of {element.name} is not valid UTF-8 ({exc.reason})") from None


# --- encoding -------------------------------------------------------------------------------------------

def _write_mb(value: int) -> bytes:
    if value > 0xFFFFFFFF:
        raise WbxmlError(f"length {value} does not fit a WBXML multi-byte integer")
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def encode(root: Element) -> bytes:
    """The WBXML bytes of ``root``; raises WbxmlError for a tag not in the code pages or mixed content."""
    out = bytearray(HEADER)
    page = 0
    stack: list[Element | None] = [root]  # None: write the END of an element with children here
    tokens = TOKENS
    while stack:
        element = stack.pop()
        if element is None:
            out.append(END)
            continue
        if type(element) is not Element:
            raise TypeError(f"encode takes Element trees, found a {type(element).__name__}")
        key = tokens.get((element.ns, element.name))
        if key is None:
            raise WbxmlError(f"no ActiveSync tag {element.name!r} in namespace {element.ns!r}")
        if key[0] != page:  # switch only when the page changes; END needs no page
            page = key[0]
            out += bytes((SWITCH_PAGE, page))
        children, text, opaque = element.children, element.text, element.opaque
        kinds = bool(children) + (text is not None) + (opaque is not None)
        if kinds == 0:
            out.append(key[1])
        elif kinds > 1:
            raise WbxmlError(f"{element.name} has more than one of children, text and opaque data")
        elif text is not None:
            if "\x00" in text:
                raise WbxmlError(f"text of {element.name} contains NUL, which a WBXML string cannot carry")
            try:
                raw = text.encode("utf-8")
            except UnicodeEncodeError:
                raise WbxmlError(f"text of {element.name} cannot be encoded as UTF-8") from None
            out += bytes((key[1] | HAS_CONTENT, STR_I))
            out += raw
            out += b"\x00\x01"
        elif opaque is not None:
            out += bytes((key[1] | HAS_CONTENT, OPAQUE))
            out += _write_mb(len(opaque))
            out += opaque
            out.append(END)
        else:
            out.append(key[1] | HAS_CONTENT)
            stack.append(None)
            stack.extend(reversed(children))
    return bytes(out)


# --- the XML view ---------------------------------------------------------------------------------------

def _text_escapes() -> dict[int, str]:
    """str.translate table for element text: markup escaped, CR kept as a reference, and the
    characters XML 1.0 cannot carry at all shown as U+FFFD (the view is lossy only there)."""
    table: dict[int, str] = {ord("&"): "&amp;", ord("<"): "&lt;", ord(">"): "&gt;", ord("\r"): "&#13;"}
    for code in [*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0xD800, 0xE000), 0xFFFE, 0xFFFF]:
        table[code] = "\ufffd"
    return table


_TEXT_ESCAPES = _text_escapes()
_ATTR_ESCAPES = {**_TEXT_ESCAPES, ord('"'): "&quot;", ord("\n"): "&#10;", ord("\t"): "&#9;"}


def to_xml(root: Element, *, max_opaque_shown: int | None = None) -> str:
    """An indented XML document of the tree, every namespace declared on the root.

    Opaque data is written as base64; with ``max_opaque_shown`` set, larger
    blobs are replaced by a length marker (for logs).
    """
    prefixes: dict[str, str | None] = {root.ns: None}
    has_opaque = False
    for element in root.iter():
        has_opaque = has_opaque or element.opaque is not None
        if element.ns not in prefixes:
            page = page_for_namespace(element.ns)
            prefixes[element.ns] = page.prefix if page is not None else f"ns{len(prefixes)}"
    declarations = "".join(f' xmlns{"" if p is None else ":" + p}="{ns.translate(_ATTR_ESCAPES)}"'
                           for ns, p in prefixes.items())
    if has_opaque:
        declarations += f' xmlns:wbxml="{XML_VIEW_NS}"'
    lines = ['<?xml version="1.0" encoding="utf-8"?>']
    stack: list[tuple[Element, int, bool]] = [(root, 0, False)]  # (element, depth, write its end tag)
    while stack:
        element, depth, closing = stack.pop()
        indent = "  " * depth
        prefix = prefixes[element.ns]
        tag = element.name if prefix is None else f"{prefix}:{element.name}"
        if closing:
            lines.append(f"{indent}</{tag}>")
            continue
        attrs = declarations if depth == 0 else ""
        if element.children:
            lines.append(f"{indent}<{tag}{attrs}>")
            stack.append((element, depth, True))
            stack.extend((child, depth + 1, False) for child in reversed(element.children))
        elif element.text is not None:
            lines.append(f"{indent}<{tag}{attrs}>{element.text.translate(_TEXT_ESCAPES)}</{tag}>")
        elif element.opaque is not None:
            size = len(element.opaque)
            if max_opaque_shown is not None and size > max_opaque_shown:
                lines.append(f'{indent}<{tag}{attrs} wbxml:opaque="omitted" wbxml:length="{size}"/>')
            else:
                data = base64.b64encode(element.opaque).decode("ascii")
                lines.append(f'{indent}<{tag}{attrs} wbxml:opaque="base64">{data}</{tag}>')
        else:
            lines.append(f"{indent}<{tag}{attrs}/>")
    return "\n".join(lines) + "\n"


def from_xml(text: str | bytes, limits: Limits = DEFAULT_LIMITS) -> Element:
    """The tree of an XML document in the view ``to_xml`` writes (or an EAS specification example).

    The XML is parsed as untrusted (``gateway.xmlsafe``). Namespaces may be
    written "AirSync" or "AirSync:". Every tag must be in the code pages.
    Whitespace between child elements is ignored; a leaf keeps its text
    exactly, and an empty leaf (``<a/>`` or ``<a></a>``) has no text.
    """
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    try:
        node = parse_untrusted(data, max_bytes=2 * limits.max_input_bytes, max_depth=limits.max_depth)
    except XmlRejected as exc:
        raise WbxmlError(f"XML refused: {exc}") from None
    opaque_key = f"{{{XML_VIEW_NS}}}opaque"
    root: Element | None = None
    stack: list[tuple[etree._Element, Element | None]] = [(node, None)]
    count = 0
    while stack:
        node, parent = stack.pop()
        count += 1
        if count > limits.max_elements:
            raise WbxmlError(f"more than {limits.max_elements} elements")
        ns, _, name = node.tag[1:].partition("}") if node.tag.startswith("{") else ("", "", node.tag)
        ns = ns[:-1] if ns.endswith(":") else ns
        if (ns, name) not in TOKENS:
            raise WbxmlError(f"no ActiveSync tag {name!r} in namespace {ns!r}")
        element = Element(ns, name)
        children = [child for child in node if isinstance(child.tag, str)]
        marker = node.get(opaque_key)
        if marker is not None and (marker != "base64" or children):
            raise WbxmlError(f"{name}: opaque data is missing from this XML (wbxml:opaque={marker!r})")
        if set(node.attrib) - {opaque_key}:
            raise WbxmlError(f"{name} has attributes; only wbxml:opaque is understood")
        if marker is not None:
            try:
                element.opaque = base64.b64decode("".join((node.text or "").split()), validate=True)
            except binascii.Error:
                raise WbxmlError(f"{name}: opaque data is not valid base64") from None
        elif children:
            if (node.text or "").strip() or any((child.tail or "").strip() for child in children):
                raise WbxmlError(f"{name} has both text and child elements (mixed content)")
            stack.extend((child, element) for child in reversed(children))
        else:
            element.text = node.text or None
        if parent is None:
            root = element
        else:
            parent.children.append(element)
    assert root is not None
    return root
