"""Notes class items (MS-ASNOTE, protocol 14.0 and later): a VCALENDAR holding one VJOURNAL as
AirSync:ApplicationData, and the VJOURNAL to store for the ApplicationData a device sends.

Subject is SUMMARY, the body DESCRIPTION, Categories CATEGORIES and LastModifiedDate LAST-MODIFIED (else
DTSTAMP). MessageClass always goes out as IPM.StickyNote, the only class Exchange's Notes folders sync; a
different class a device sends is kept in X-EAS-MESSAGECLASS so it is not lost. As MS-ASNOTE asks of a
server, a Change without Subject or Body keeps them, while one without Categories removes them. A new note
gets DTSTART as the day it was made, which journal clients sort and filter by.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from icalendar import Journal

from .email_item import BodyOptions, ItemError
from .pimbody import body_element, body_text
from .task_item import (PARSE_ERRORS, as_utc, categories_element, categories_of, clean, device_categories, dump,
                        instant, leaf, load, long_form, new_calendar, set_categories, set_text, text_of, value_of,
                        version_of)
from .wbxml import Element

__all__ = ["to_application_data", "from_application_data", "ItemError", "MESSAGE_CLASS"]

NS = "Notes"
MESSAGE_CLASS = "IPM.StickyNote"
CLASS_PROPERTY = "X-EAS-MESSAGECLASS"
UTC = timezone.utc


def _version(version: str) -> tuple[int, int]:
    v = version_of(version)
    if v < (14, 0):
        raise ItemError(f"the Notes class does not exist in protocol {version}; it starts with 14.0")
    return v


def _modified(journal) -> datetime | None:
    for name in ("LAST-MODIFIED", "DTSTAMP"):
        value = value_of(journal.get(name))
        if isinstance(value, datetime):
            return as_utc(value)
    return None


def to_application_data(text: str, version: str, options: BodyOptions | None = None) -> Element:
    """The AirSync:ApplicationData of a stored VJOURNAL; ItemError before 14.0 or when it cannot be read."""
    v = _version(version)
    _, journal = load(text, "VJOURNAL")
    try:
        out = [body_element(text_of(journal, "DESCRIPTION") or "", options or BodyOptions(), v)]
        subject = text_of(journal, "SUMMARY")
        out += [Element(NS, "Subject", text=subject)] if subject else []
        out.append(Element(NS, "MessageClass", text=MESSAGE_CLASS))
        modified = _modified(journal)
        out += [Element(NS, "LastModifiedDate", text=long_form(modified))] if modified else []
        out += categories_element(NS, categories_of(journal))
    except ItemError:
        raise
    except PARSE_ERRORS as exc:
        raise ItemError(f"note cannot be converted: {str(exc)[:100]}") from None
    return Element("AirSync", "ApplicationData", out)


def from_application_data(data: Element, version: str, previous: str | None = None, *,
                          now: datetime | None = None) -> str:
    """The iCalendar text to store for a device's Notes ApplicationData: a new VJOURNAL for an Add
    (``previous`` None), else ``previous`` with the fields EAS carries replaced. ItemError on invalid input."""
    _version(version)
    if not isinstance(data, Element):
        raise ItemError("ApplicationData must be an Element")
    moment = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    subject, body = leaf(data, "Subject", NS), body_text(data, NS)
    message_class = " ".join(clean(leaf(data, "MessageClass", NS) or "").split())  # one line, as an X- value must
    modified, categories = instant(data, "LastModifiedDate", NS), device_categories(data, NS)
    if previous is None:
        calendar, journal = new_calendar(Journal, str(uuid.uuid4()), moment)
        journal.add("DTSTART", moment.date())
    else:
        calendar, journal = load(previous, "VJOURNAL")
    try:
        for name, value in (("SUMMARY", subject), ("DESCRIPTION", body)):
            if value is not None and clean(value) != (text_of(journal, name) or ""):
                set_text(journal, name, clean(value))
        if categories != categories_of(journal):
            set_categories(journal, categories)
        set_text(journal, CLASS_PROPERTY, message_class if message_class != MESSAGE_CLASS else None)
        for name, value in (("DTSTAMP", moment), ("LAST-MODIFIED", modified.replace(tzinfo=UTC) if modified
                                                  else moment)):
            journal.pop(name, None)
            journal.add(name, value)
    except ItemError:
        raise
    except PARSE_ERRORS as exc:
        raise ItemError(f"note cannot be stored: {str(exc)[:100]}") from None
    return dump(calendar)
