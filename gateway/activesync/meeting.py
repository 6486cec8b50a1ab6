"""Meetings by mail (iMIP, RFC 6047): an invitation's Email:MeetingRequest for a phone, and the calendar
object and the iMIP REPLY that a phone's MeetingResponse makes of it.

Pure: iCalendar text in, WBXML elements, iCalendar text and MIME bytes out.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import uuid
from email.charset import QP, Charset
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import icalendar

from .email_item import ItemError
from .wbxml import Element

__all__ = ["Invitation", "parse", "meeting_request", "respond", "reply_message", "global_object_id",
           "ACCEPTED", "TENTATIVE", "DECLINED"]

ACCEPTED, TENTATIVE, DECLINED = 1, 2, 3
_PARTSTAT = {ACCEPTED: "ACCEPTED", TENTATIVE: "TENTATIVE", DECLINED: "DECLINED"}
_VERB = {ACCEPTED: "Accepted", TENTATIVE: "Tentative", DECLINED: "Declined"}
# Outlook's class id of a Global Object ID (MS-OXOCAL 2.2.1.27), before the instance date.
_GOID_CLASS = bytes.fromhex("040000008200E00074C5B7101A82E008")
_QP = Charset("utf-8")
_QP.body_encoding = QP  # readable on the wire, as calendar clients write iMIP
_SENSITIVITY = {"PUBLIC": "0", "PRIVATE": "2", "CONFIDENTIAL": "3"}


class Invitation:
    """One iMIP message's calendar: its METHOD and the VEVENTs of its one UID."""

    def __init__(self, text: str) -> None:
        try:
            self.calendar = icalendar.Calendar.from_ical(text)
        except (ValueError, KeyError, IndexError) as exc:
            raise ItemError(f"invitation is not iCalendar: {exc}") from None
        self.method = str(self.calendar.get("METHOD", "")).upper()
        self.events = [c for c in self.calendar.walk("VEVENT")]
        if not self.events:
            raise ItemError("invitation holds no VEVENT")
        self.uid = str(self.events[0].get("UID", ""))
        if not self.uid:
            raise ItemError("invitation's event has no UID")
        masters = [e for e in self.events if "RECURRENCE-ID" not in e]
        self.main = masters[0] if masters else self.events[0]

    @property
    def organizer(self) -> str:
        return _address(self.main.get("ORGANIZER"))


def parse(text: str) -> Invitation:
    return Invitation(text)


def _address(value: object) -> str:
    text = str(value or "")
    return text[7:] if text.lower().startswith("mailto:") else text


def _moment(component, name: str) -> dt.datetime | dt.date | None:
    prop = component.get(name)
    return prop.dt if prop is not None else None


def _utc(value: dt.date | dt.datetime, tz: dt.tzinfo | None = None) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day, tzinfo=tz or dt.timezone.utc)
    elif value.tzinfo is None:
        value = value.replace(tzinfo=tz or dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def _long(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def global_object_id(uid: str, instance: dt.date | None = None) -> bytes:
    """The Outlook Global Object ID of an iCalendar UID (MS-OXOCAL 2.2.1.27): Outlook's own UIDs are the
    hex of one; any other UID is wrapped as "vCal-Uid" data, as Exchange does."""
    head = _GOID_CLASS.hex().upper()
    if len(uid) >= 82 and uid.upper().startswith(head) and all(c in "0123456789abcdefABCDEF" for c in uid):
        raw = bytearray(bytes.fromhex(uid))
    else:
        data = b"vCal-Uid" + (1).to_bytes(4, "little") + uid.encode("utf-8") + b"\x00"
        raw = bytearray(_GOID_CLASS + bytes(4) + bytes(8) + bytes(8) + len(data).to_bytes(4, "little") + data)
    if instance is not None:
        raw[16:20] = bytes([instance.year >> 8, instance.year & 0xFF, instance.month, instance.day])
    return bytes(raw)


def _timezone_blob(event) -> str:
    start = _moment(event, "DTSTART")
    zone = start.tzinfo if isinstance(start, dt.datetime) and start.tzinfo is not None else dt.timezone.utc
    try:
        from .tzblob import blob_for
        return base64.b64encode(blob_for(zone, start.year if start else 2026)).decode()
    except (ImportError, ItemError, ValueError):
        return base64.b64encode(bytes(172)).decode()  # UTC: no bias, no daylight saving


def meeting_request(text: str, version: tuple[int, int]) -> Element:
    """The Email:MeetingRequest element of an invitation (MS-ASEMAIL 2.2.2.48), in schema order."""
    invite = parse(text)
    event = invite.main
    start, end = _moment(event, "DTSTART"), _moment(event, "DTEND")
    if start is None:
        raise ItemError("invitation's event has no DTSTART")
    all_day = not isinstance(start, dt.datetime)
    if end is None:
        duration = event.get("DURATION")
        end = start + (duration.dt if duration is not None else dt.timedelta(days=1 if all_day else 0))
    stamp = _moment(event, "DTSTAMP") or dt.datetime.now(dt.timezone.utc)
    recurring = "RRULE" in event or "RDATE" in event
    out = [Element("Email", "AllDayEvent", text="1" if all_day else "0"),
           Element("Email", "StartTime", text=_long(_utc(start))),
           Element("Email", "DtStamp", text=_long(_utc(stamp))),
           Element("Email", "EndTime", text=_long(_utc(end))),
           Element("Email", "InstanceType", text="1" if recurring else ("3" if "RECURRENCE-ID" in event else "0"))]
    if "LOCATION" in event:
        out.append(Element("Email", "Location", text=str(event["LOCATION"])))
    if invite.organizer:
        out.append(Element("Email", "Organizer", text=invite.organizer))
    if "RECURRENCE-ID" in event:
        out.append(Element("Email", "RecurrenceId", text=_long(_utc(_moment(event, "RECURRENCE-ID")))))
    reminder = _reminder(event)
    if reminder is not None:
        out.append(Element("Email", "Reminder", text=str(reminder)))
    out.append(Element("Email", "ResponseRequested", text="1"))
    out.append(Element("Email", "Sensitivity", text=_SENSITIVITY.get(str(event.get("CLASS", "")).upper(), "0")))
    busy = str(event.get("X-MICROSOFT-CDO-INTENDEDSTATUS", "")).upper()
    out.append(Element("Email", "BusyStatus", text={"FREE": "0", "TENTATIVE": "1", "OOF": "3"}.get(busy, "2")))
    out.append(Element("Email", "TimeZone", text=_timezone_blob(event)))
    out.append(Element("Email", "GlobalObjId", text=base64.b64encode(global_object_id(invite.uid)).decode()))
    if version >= (14, 1):
        out.append(Element("Email2", "MeetingMessageType", text="1" if invite.method == "REQUEST" else "0"))
    return Element("Email", "MeetingRequest", out)


def _reminder(event) -> int | None:
    for alarm in event.walk("VALARM"):
        trigger = alarm.get("TRIGGER")
        if trigger is not None and isinstance(trigger.dt, dt.timedelta) and trigger.dt <= dt.timedelta(0):
            return int(-trigger.dt.total_seconds() // 60)
    return None


def _is_me(attendee: object, me: set[str]) -> bool:
    return _address(attendee).lower() in me


def respond(text: str, me: set[str], response: int, now: dt.datetime | None = None) -> tuple[str, str, str]:
    """(the calendar object to keep, without METHOD; the iMIP REPLY; the organizer's address) for the
    user (any of the addresses ``me``, lower case) answering ``response`` to an invitation."""
    if response not in _PARTSTAT:
        raise ItemError(f"UserResponse must be 1, 2 or 3, not {response}")
    invite = parse(text)
    now = now or dt.datetime.now(dt.timezone.utc)
    partstat = _PARTSTAT[response]
    keep = icalendar.Calendar()
    reply = icalendar.Calendar()
    for cal in (keep, reply):
        cal.add("PRODID", "-//casgate//ActiveSync meeting response//EN")
        cal.add("VERSION", "2.0")
    reply.add("METHOD", "REPLY")
    for component in invite.calendar.subcomponents:
        if component.name == "VTIMEZONE":
            keep.add_component(component)
            reply.add_component(component)
    found = False
    for event in invite.events:
        mine = None
        attendees = event.get("ATTENDEE")
        for attendee in attendees if isinstance(attendees, list) else [attendees] if attendees is not None else []:
            if _is_me(attendee, me):
                mine = attendee
                attendee.params["PARTSTAT"] = partstat
                attendee.params.pop("RSVP", None)
        found |= mine is not None
        keep.add_component(event)
        answer = icalendar.Event()
        for name in ("UID", "RECURRENCE-ID", "SEQUENCE", "DTSTART", "DTEND", "SUMMARY", "ORGANIZER"):
            if name in event:
                answer.add(name, event[name]) if name != "SEQUENCE" else answer.add(name, int(event[name]))
        answer.add("DTSTAMP", now)
        if mine is not None:
            answer.add("ATTENDEE", mine)
        reply.add_component(answer)
    if not found:
        # Invited through a list or an alias the directory does not know: answer as the user anyway.
        for event, answer in zip(invite.events, reply.walk("VEVENT")):
            attendee = icalendar.vCalAddress("mailto:" + sorted(me)[0])
            attendee.params["PARTSTAT"] = partstat
            answer.add("ATTENDEE", attendee)
    return keep.to_ical().decode("utf-8"), reply.to_ical().decode("utf-8"), invite.organizer


def reply_message(reply_ical: str, sender: str, sender_name: str, organizer: str, subject: str, response: int,
                  domain: str) -> bytes:
    """The iMIP REPLY mail (RFC 6047 2.4): a short text and the REPLY as text/calendar; method=REPLY."""
    message = MIMEMultipart("alternative")
    message["From"] = email.utils.formataddr((sender_name, sender)) if sender_name else sender
    message["To"] = organizer
    message["Subject"] = f"{_VERB[response]}: {subject}" if subject else _VERB[response]
    message["Date"] = email.utils.formatdate(localtime=False)
    message["Message-ID"] = f"<{uuid.uuid4()}@{domain}>"
    message["Content-Class"] = "urn:content-classes:calendarmessage"
    text = f"{sender_name or sender} has {_VERB[response].lower()} this meeting."
    message.attach(MIMEText(text, "plain", _QP))
    part = MIMEText(reply_ical, "calendar", _QP)
    part.set_param("method", "REPLY")
    message.attach(part)
    return message.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
