"""Meetings a phone organizes: the iMIP messages (RFC 6047) that creating, changing or deleting a meeting
in its calendar sends to the attendees, and the SEQUENCE the stored object gets.

From protocol 16.0 on the server sends these (MS-ASCAL: a 16.x client no longer mails invitations
itself); before 16.0 the device sends its own through SendMail, so nothing is sent here for it.
Pure: iCalendar text in, (text to store, messages to send) out.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import uuid
from dataclasses import dataclass
from email.charset import QP, Charset
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import icalendar

from .email_item import ItemError

__all__ = ["Mail", "plan"]

_QP = Charset("utf-8")
_QP.body_encoding = QP
#: What attendees must hear about: a change to any of these is a new version of the meeting (RFC 5546 2.1.4).
_SIGNIFICANT = ("DTSTART", "DTEND", "DURATION", "RRULE", "RDATE", "EXDATE", "LOCATION", "SUMMARY", "STATUS")


@dataclass(frozen=True)
class Mail:
    """One iMIP message to send."""

    recipients: tuple[str, ...]
    message: bytes


def _address(value: object) -> str:
    text = str(value or "")
    return (text[7:] if text.lower().startswith("mailto:") else text).strip()


def _attendees(event) -> list:
    found = event.get("ATTENDEE")
    return found if isinstance(found, list) else [found] if found is not None else []


def _events(text: str | None) -> list:
    if not text:
        return []
    try:
        return list(icalendar.Calendar.from_ical(text).walk("VEVENT"))
    except (ValueError, KeyError, IndexError) as exc:
        raise ItemError(f"not iCalendar: {exc}") from None


def _organized_by(events: list, me: set[str]) -> bool:
    """Whether the user organizes this meeting: ORGANIZER is them, or absent with attendees invited."""
    for event in events:
        organizer = _address(event.get("ORGANIZER")).lower()
        if organizer:
            return organizer in me
    return any(_attendees(e) for e in events)


def _guests(events: list, me: set[str]) -> set[str]:
    return {_address(a).lower() for e in events for a in _attendees(e) if _address(a) and
            _address(a).lower() not in me}


def _fingerprint(events: list) -> list:
    return sorted((str(e.get("RECURRENCE-ID", "")), [e.get(n).to_ical() if hasattr(e.get(n), "to_ical")
                                                     else str(e.get(n)) for n in _SIGNIFICANT if n in e],
                   sorted(_address(a).lower() for a in _attendees(e))) for e in events)


def plan(old: str | None, new: str | None, me: set[str], name: str, now: dt.datetime | None = None
         ) -> tuple[str | None, list[Mail]]:
    """(the text to store instead of ``new`` (None: store ``new`` as it is), the iMIP mails to send) for a
    phone's change of one calendar object from ``old`` to ``new`` (None: created / deleted). ``me`` are
    the user's addresses (lower case), ``name`` their display name."""
    before, after = _events(old), _events(new)
    user = sorted(me)[0]
    if not _organized_by(after or before, me):
        return None, []
    mails: list[Mail] = []
    if not after:  # deleted: the meeting is off for everyone
        if guests := _guests(before, me):
            mails.append(_mail("CANCEL", old or "", sorted(guests), user, name, now))
        return None, mails
    changed = _fingerprint(before) != _fingerprint(after)
    if before and not changed:
        return None, []
    cal = icalendar.Calendar.from_ical(new or "")
    sequence = max((int(e.get("SEQUENCE", 0)) for e in before), default=-1) + 1
    for event in cal.walk("VEVENT"):
        if "ORGANIZER" not in event and _attendees(event):
            organizer = icalendar.vCalAddress("mailto:" + user)
            if name:
                organizer.params["CN"] = name
            event.add("ORGANIZER", organizer)
        if before:
            event.pop("SEQUENCE", None)
            event.add("SEQUENCE", sequence)
    text = cal.to_ical().decode("utf-8")
    gone = _guests(before, me) - _guests(after, me)
    if guests := _guests(after, me):
        mails.append(_mail("REQUEST", text, sorted(guests), user, name, now))
    if gone:
        mails.append(_mail("CANCEL", old or "", sorted(gone), user, name, now))
    return text, mails


def _mail(method: str, text: str, recipients: list[str], sender: str, name: str,
          now: dt.datetime | None) -> Mail:
    source = icalendar.Calendar.from_ical(text)
    cal = icalendar.Calendar()
    cal.add("PRODID", "-//casgate//ActiveSync scheduling//EN")
    cal.add("VERSION", "2.0")
    cal.add("METHOD", method)
    summary = ""
    for component in source.subcomponents:
        if component.name == "VEVENT":
            summary = summary or str(component.get("SUMMARY", ""))
            if method == "CANCEL":
                component.pop("STATUS", None)
                component.add("STATUS", "CANCELLED")
            component.pop("DTSTAMP", None)
            component.add("DTSTAMP", now or dt.datetime.now(dt.timezone.utc))
        if component.name in ("VEVENT", "VTIMEZONE"):
            cal.add_component(component)
    message = MIMEMultipart("alternative")
    message["From"] = email.utils.formataddr((name, sender)) if name else sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = f"{'Canceled: ' if method == 'CANCEL' else ''}{summary}" or method.title()
    message["Date"] = email.utils.formatdate(localtime=False)
    message["Message-ID"] = f"<{uuid.uuid4()}@{sender.rpartition('@')[2] or 'localhost'}>"
    message["Content-Class"] = "urn:content-classes:calendarmessage"
    words = "has been canceled" if method == "CANCEL" else "is a meeting invitation"
    message.attach(MIMEText(f"{summary or 'This'} {words}.", "plain", _QP))
    part = MIMEText(cal.to_ical().decode("utf-8"), "calendar", _QP)
    part.set_param("method", method)
    message.attach(part)
    return Mail(tuple(recipients), message.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
