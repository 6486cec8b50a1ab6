"""Bodies of contacts, calendar items, tasks and notes: the plain-text note of a vCard or iCalendar object
as an AirSyncBase:Body (12.0+) or a class's own 2.5 Body, and the text a device sent back.

A PIM item's body is plain text at the source (NOTE, DESCRIPTION). A device that asks for HTML only gets
the text as simple HTML; RTF (type 3) and MIME (type 4) are not offered for these classes, so plain text
answers them, as Exchange does for items that have no such form.
"""

from __future__ import annotations

from .email_item import BodyOptions, BodyPreference, ItemError, _cut, _html_to_text, _text_to_html, _utf8
from .wbxml import Element

__all__ = ["body_element", "legacy_body", "body_text", "ItemError"]


def _choice(options: BodyOptions) -> BodyPreference:
    for preference in options.preferences:
        if preference.type in (1, 2):
            return preference
    return BodyPreference(1, options.truncation)


def body_element(text: str, options: BodyOptions, version: tuple[int, int] = (16, 1)) -> Element:
    """AirSyncBase:Body (12.0+) for ``text``: Type, EstimatedDataSize, Truncated, Data, and Preview (14.0+)."""
    preference = _choice(options)
    full = _utf8(_text_to_html(text) if preference.type == 2 and text else text.replace("\r\n", "\n")
                 .replace("\n", "\r\n"))
    limit = preference.truncation_size
    sent: bytes | None = _cut(full, limit)
    if preference.all_or_none and limit is not None and len(full) > limit:
        sent = None
    truncated = sent is None or len(sent) < len(full)
    children = [Element("AirSyncBase", "Type", text=str(preference.type)),
                Element("AirSyncBase", "EstimatedDataSize", text=str(len(full))),
                Element("AirSyncBase", "Truncated", text=str(int(truncated)))]
    if sent is not None and (sent or not truncated):
        children.append(Element("AirSyncBase", "Data", text=sent.decode("utf-8")))
    if version >= (14, 0) and preference.preview and text:
        children.append(Element("AirSyncBase", "Preview", text=" ".join(text.split())[:preference.preview]))
    return Element("AirSyncBase", "Body", children)


def legacy_body(ns: str, text: str, options: BodyOptions) -> list[Element]:
    """A 2.5 item's own Body, BodySize (Contacts only knows it too) and BodyTruncated, in code page ``ns``."""
    full = _utf8(text.replace("\r\n", "\n").replace("\n", "\r\n"))
    sent = _cut(full, options.truncation)
    out = [Element(ns, "Body", text=sent.decode("utf-8"))] if sent else []
    if ns in ("Contacts", "Tasks"):
        out.append(Element(ns, "BodySize", text=str(len(full))))
    out.append(Element(ns, "BodyTruncated", text=str(int(len(sent) < len(full)))))
    return out


def body_text(data: Element, ns: str) -> str | None:
    """The body text a device sent in ApplicationData: AirSyncBase:Body/Data (HTML turned into text) or the
    2.5 ``ns``:Body; None when it sent no body at all (a Change then keeps the stored one)."""
    body = data.find("Body", "AirSyncBase")
    if body is not None:
        kind = body.text_of("Type", "AirSyncBase", "1")
        text = body.text_of("Data", "AirSyncBase")
        if text is None:
            element = body.find("Data", "AirSyncBase")
            if element is not None and element.opaque is not None:
                text = element.opaque.decode("utf-8", "replace")
        if text is None:
            return ""
        if kind == "2":
            return _html_to_text(text)
        if kind not in ("1", "2"):
            raise ItemError(f"body type {kind} is not accepted for this class (plain text or HTML only)")
        return text.replace("\r\n", "\n")
    legacy = data.find("Body", ns)
    if legacy is not None:
        return (legacy.text or "").replace("\r\n", "\n")
    return None
