"""Parse XML from the network: no DTDs, no entities, no network access, bounded size and depth."""

from __future__ import annotations

import re

from lxml import etree

__all__ = ["XmlRejected", "MalformedXml", "UnsafeXml", "XmlTooLarge", "parse_untrusted"]


class XmlRejected(ValueError):
    """The document was refused; nothing in it was acted on."""


class MalformedXml(XmlRejected):
    """Not well-formed XML (or not XML at all)."""


class UnsafeXml(XmlRejected):
    """Well-formed, but uses a feature we never accept from a peer: a DOCTYPE, DTD or entity declaration."""


class XmlTooLarge(XmlRejected):
    """More bytes, or deeper nesting, than the caller allows."""


# One parser configuration for everything that comes off the wire. Entities are
# never substituted and no DTD is ever fetched, so a document that declares them
# cannot expand (billion laughs) or read files and URLs (XXE) even before the
# DOCTYPE check below rejects it. huge_tree=False keeps libxml2's own limits on
# text node size and nesting as a second fence behind ours.
def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                           huge_tree=False, remove_pis=True, remove_comments=True, collect_ids=False,
                           recover=False)


# Where a DOCTYPE would have to be (before the first element) in the encodings
# a peer is likely to use; a "<!DOCTYPE" later on is text inside CDATA.
_SCANS = (  # (DOCTYPE marker, start of an element: "<" not followed by "?" or "!") per encoding
    ("<!doctype".encode("utf-8"), re.compile(rb"<[^?!]")),
    ("<!doctype".encode("utf-16-le"), re.compile(rb"<\x00(?![?!]\x00)")),
    ("<!doctype".encode("utf-16-be"), re.compile(rb"\x00<(?!\x00[?!])")),
)


def _has_declarations(data: bytes) -> bool:
    """True when the raw bytes carry a DOCTYPE before their first element.

    Checked before parsing so that not even the internal subset of a hostile
    DTD reaches libxml2; the parsed tree is checked again afterwards, which
    also covers encodings this scan cannot see.
    """
    lowered = data.lower()
    for marker, element_start in _SCANS:
        pos = lowered.find(marker)
        if pos >= 0:
            first = element_start.search(lowered)
            if first is None or pos < first.start():
                return True
    return False


def _check_depth(root: etree._Element, max_depth: int) -> None:
    stack = [(root, 1)]
    while stack:
        element, depth = stack.pop()
        if depth > max_depth:
            raise XmlTooLarge(f"elements nested deeper than {max_depth} levels")
        for child in element:
            if isinstance(child, etree._Entity):
                raise UnsafeXml("entity references are not accepted")
            stack.append((child, depth + 1))


def parse_untrusted(data: bytes, *, max_bytes: int = 2_000_000, max_depth: int = 64) -> etree._Element:
    """The root element of ``data``; raises MalformedXml, UnsafeXml or XmlTooLarge (all XmlRejected)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("parse_untrusted takes bytes")
    data = bytes(data)
    if len(data) > max_bytes:
        raise XmlTooLarge(f"document of {len(data)} bytes exceeds the limit of {max_bytes}")
    if not data.strip():
        raise MalformedXml("empty document")
    if _has_declarations(data):
        raise UnsafeXml("DOCTYPE and ENTITY declarations are not accepted")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise MalformedXml(f"not well-formed XML: {exc.msg}"[:300]) from None
    except (etree.LxmlError, ValueError, LookupError) as exc:
        # lxml reports unknown encodings and some byte-order problems outside XMLSyntaxError.
        raise MalformedXml(f"unreadable XML: {exc}"[:300]) from None
    if root is None:
        raise MalformedXml("no root element")
    info = root.getroottree().docinfo
    if info.doctype or info.internalDTD is not None or info.externalDTD is not None:
        raise UnsafeXml("DOCTYPE and ENTITY declarations are not accepted")
    _check_depth(root, max_depth)
    return root
