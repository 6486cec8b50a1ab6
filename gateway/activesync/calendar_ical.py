"""What both directions of the Calendar converter share: versions, EAS date-times, reading a stored VEVENT."""

from __future__ import annotations

import datetime as dt
import re

import icalendar

from .email_item import ItemError
from .wbxml import Element

_VERSIONS = {"2.5": (2, 5), "12.0": (12, 0), "12.1": (12, 1), "14.0": (14, 0), "14.1": (14, 1),
             "16.0": (16, 0), "16.1": (16, 1)}
# What each protocol version gets (MS-ASCAL 2.2.2), as (first, last) version, for what not all versions get.
_SUPPORT: dict[str, tuple[tuple[int, int] | None, tuple[int, int] | None]] = {
    "Calendar:Body": (None, (2, 5)), "AirSyncBase:Body": ((12, 0), None),
    "Calendar:Location": (None, (14, 1)), "AirSyncBase:Location": ((16, 0), None),
    "AttendeeStatus": ((12, 0), None), "AttendeeType": ((12, 0), None),
    "ResponseRequested": ((14, 0), None), "DisallowNewTimeProposal": ((14, 0), None),
    "ResponseType": ((14, 0), None), "AppointmentReplyTime": ((14, 0), None),
    "CalendarType": ((14, 0), None), "IsLeapMonth": ((14, 0), None), "FirstDayOfWeek": ((14, 1), None),
    "Exception/UID": (None, (2, 5)), "Exception/ExceptionStartTime": (None, (14, 1)),
    "Exception/InstanceId": ((16, 0), None), "Exception/DtStamp": (None, (14, 1)),
    "Exception/Attendees": ((14, 0), None), "ClientUid": ((16, 0), None), "Ghosting": ((16, 0), None),
}
_UTC = dt.timezone.utc
_COMPACT = re.compile(r"(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z")
_LONG = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.\d{1,7})?Z")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_DAYS = ("SU", "MO", "TU", "WE", "TH", "FR", "SA")   # EAS DayOfWeek bit n is day n, Sunday first
_BUSY = {"FREE": 0, "TENTATIVE": 1, "BUSY": 2, "OOF": 3, "WORKINGELSEWHERE": 4}
_BUSY_NAMES = {value: name for name, value in _BUSY.items()}
_CLASS = {"PUBLIC": 0, "X-PERSONAL": 1, "PRIVATE": 2, "CONFIDENTIAL": 3}
_CLASS_NAMES = {1: "X-PERSONAL", 2: "PRIVATE", 3: "CONFIDENTIAL"}
_PARTSTAT_OUT = {"NEEDS-ACTION": 5, "ACCEPTED": 3, "TENTATIVE": 2, "DECLINED": 4}
_PARTSTAT_IN = {2: "TENTATIVE", 3: "ACCEPTED", 4: "DECLINED", 5: "NEEDS-ACTION"}
_REPLY_TIME = "X-CASGATE-REPLYTIME"


def _version(version: object) -> tuple[int, int]:
    if not isinstance(version, str) or version not in _VERSIONS:
        raise ItemError(f"unknown ActiveSync protocol version {version!r}")
    return _VERSIONS[version]


def _has(v: tuple[int, int], key: str) -> bool:
    low, high = _SUPPORT.get(key, (None, None))
    return (low is None or v >= low) and (high is None or v <= high)


def _el(name: str, text: object, ns: str = "Calendar") -> Element:
    return Element(ns, name, text=str(text))


def _clean(text: str | None) -> str:
    """Text a WBXML string can carry: no NULs or other C0 controls besides tab and line breaks."""
    return _CONTROL.sub("", text or "")


def _number(element: Element, name: str, low: int, high: int, ns: str = "Calendar") -> int | None:
    child = element.find(name, ns)
    if child is None:
        return None
    text = (child.text or "").strip()
    if not re.fullmatch(r"-?\d{1,10}", text) or not low <= int(text) <= high:
        raise ItemError(f"{name} must be a number from {low} to {high}, not {text[:20]!r}")
    return int(text)


# --- dates ----------------------------------------------------------------------------------------------------

def _compact(value: dt.datetime) -> str:
    return value.astimezone(_UTC).strftime("%Y%m%dT%H%M%SZ")


def _instant(text: str | None, name: str) -> dt.datetime:
    """An EAS date-time, compact or long form, as an aware UTC datetime."""
    text = (text or "").strip()
    match = _COMPACT.fullmatch(text) or _LONG.fullmatch(text)
    if match is None:
        raise ItemError(f"{name} {text[:40]!r} is not an EAS date-time")
    try:
        value = dt.datetime(*(int(part) for part in match.groups()), tzinfo=_UTC)
    except ValueError:
        raise ItemError(f"{name} {text!r} is not a valid date-time") from None
    if not 1601 <= value.year <= 4500:
        raise ItemError(f"{name} {text!r} is out of range")
    return value


def _utc(value: dt.date | dt.datetime) -> dt.datetime:
    """A stored date or date-time as UTC: dates are midnight UTC, floating times are read as UTC."""
    if not isinstance(value, dt.datetime):
        return dt.datetime(value.year, value.month, value.day, tzinfo=_UTC)
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=_UTC)
    return value.astimezone(_UTC)


def _local_date(value: dt.datetime, zone: dt.tzinfo, ceil: bool = False) -> dt.date:
    local = value.astimezone(zone)
    if local.time() == dt.time(0):
        return local.date()
    if value.time() == dt.time(0):
        return value.date()
    return local.date() + dt.timedelta(days=1 if ceil else 0)


def _key(value: dt.date | dt.datetime) -> dt.date | dt.datetime:
    """What identifies an instance: its date for all-day events, else its UTC instant."""
    return value if not isinstance(value, dt.datetime) else _utc(value).replace(tzinfo=None)


# --- reading the stored object --------------------------------------------------------------------------------

def _parse(text: str) -> icalendar.Calendar:
    if not isinstance(text, str):
        raise ItemError("the stored calendar object must be text")
    try:
        cal = icalendar.Calendar.from_ical(text)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ItemError(f"stored object is not iCalendar: {exc}") from None
    if not isinstance(cal, icalendar.Calendar) or cal.name != "VCALENDAR":
        raise ItemError("stored object is not a VCALENDAR")
    return cal


def _events(cal: icalendar.Calendar) -> tuple[icalendar.Event, list[icalendar.Event]]:
    """(the master VEVENT, the overriding VEVENTs of its UID)."""
    events = [c for c in cal.subcomponents if c.name == "VEVENT"]
    if not events:
        raise ItemError("stored object holds no VEVENT")
    masters = [e for e in events if "RECURRENCE-ID" not in e]
    master = masters[0] if masters else events[0]
    uid = _text(master, "UID")
    overrides = [e for e in events if e is not master and "RECURRENCE-ID" in e and _text(e, "UID") == uid]
    return master, overrides


def _prop(component, name: str):
    value = component.get(name)
    return value[0] if isinstance(value, list) and value else value


def _text(component, name: str) -> str | None:
    value = _prop(component, name)
    return None if value is None else str(value)


def _moment(component, name: str) -> dt.date | dt.datetime | None:
    value = _prop(component, name)
    moment = getattr(value, "dt", None)
    return moment if isinstance(moment, (dt.date, dt.datetime)) else None


def _times(event) -> tuple[dt.date | dt.datetime, dt.date | dt.datetime, bool]:
    """(start, end, all-day) of a VEVENT; DTEND comes from DURATION or the RFC 5545 defaults when absent."""
    start = _moment(event, "DTSTART")
    if start is None:
        raise ItemError("event has no DTSTART")
    all_day = not isinstance(start, dt.datetime)
    end = _moment(event, "DTEND")
    if end is None or isinstance(end, dt.datetime) == all_day:
        duration = getattr(_prop(event, "DURATION"), "dt", None)
        if not isinstance(duration, dt.timedelta):
            duration = dt.timedelta(days=1) if all_day else dt.timedelta(0)
        end = start + duration
    return start, end, all_day


def _address(value: object) -> str:
    text = str(value or "")
    return text[7:] if text.lower().startswith("mailto:") else text


def _attendees(event) -> list:
    value = event.get("ATTENDEE")
    return list(value) if isinstance(value, list) else [] if value is None else [value]


def _categories(event) -> list[str]:
    value = event.get("CATEGORIES")
    out: list[str] = []
    for prop in value if isinstance(value, list) else [] if value is None else [value]:
        out.extend(str(c) for c in getattr(prop, "cats", [prop]))
    return [c for c in out if c]


def _reminder(event) -> int | None:
    """Minutes before the start of the first alarm with a relative trigger, or None."""
    for alarm in event.walk("VALARM"):
        trigger = alarm.get("TRIGGER")
        delta = getattr(trigger, "dt", None)
        if isinstance(delta, dt.timedelta) and str(trigger.params.get("RELATED", "START")).upper() == "START":
            if delta <= dt.timedelta(0):
                return int(-delta.total_seconds() // 60)
    return None


def _is_mine(event, owner: str | None) -> bool:
    organizer = _address(event.get("ORGANIZER")).lower()
    return not organizer or (owner is not None and organizer == owner.lower())


def _owner_attendee(event, owner: str | None):
    if owner is None:
        return None
    return next((a for a in _attendees(event) if _address(a).lower() == owner.lower()), None)
