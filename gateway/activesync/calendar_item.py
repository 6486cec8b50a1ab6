"""The Calendar class (MS-ASCAL): one stored CalDAV object as AirSync:ApplicationData, and back.

The stored object is a VCALENDAR holding one UID: the master VEVENT (maybe with RRULE and EXDATE), the
VEVENTs that override single instances (RECURRENCE-ID), and VTIMEZONEs. Pure: no I/O, no asyncio.

Choices the specifications leave open, made here:

* Floating times (no TZID) are read as UTC; all-day events (DTSTART;VALUE=DATE) go out as midnight UTC
  with a UTC Timezone blob, so every device reads the date as written. An all-day item coming in takes the
  date of StartTime in the item's zone when that is a midnight there, else the UTC date when that is a
  midnight (EAS 16 devices write "local midnight as UTC"), else it covers the days the times touch.
* MeetingStatus: no attendees is an appointment (0); with attendees, the user organised it (1) when the
  ORGANIZER is the ``owner`` address or there is no ORGANIZER, else it was received (3); STATUS:CANCELLED
  adds 4 (5, 7). Without an ``owner`` a meeting with an ORGANIZER counts as received.
* ORGANIZER is the server's to keep: a device that leaves OrganizerEmail out does not remove it.
* Sensitivity 1 (personal) is CLASS:X-PERSONAL, which other clients must read as PRIVATE (RFC 5545 3.8.1.3).
* BusyStatus is TRANSP plus X-MICROSOFT-CDO-BUSYSTATUS for what TRANSP cannot say (tentative, out of
  office, working elsewhere). AppointmentReplyTime is kept in X-CASGATE-REPLYTIME.
* A Change leaves alone what EAS cannot express: X- properties, parameters on attendees, ATTACH, alarms
  other than the first relative one (and that one keeps its other properties), other components, and an
  RRULE that EAS cannot state (BYHOUR, BYSETPOS lists...): such an item goes out without Recurrence, so
  the device cannot have meant to remove it.
* From EAS 16.0 on, an element a device leaves out of a Change keeps its value (MS-ASCAL 3.1.5.3); before,
  it is removed, except Body (always kept when absent) and the elements outside ``supported`` when the
  client listed its Supported elements.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import uuid
from typing import Iterable

import icalendar

from .email_item import BodyOptions, ItemError
from .pimbody import body_element, body_text, legacy_body
from .tzblob import blob_for, decode_b64, tzid_for, vtimezone_for, zone_for
from .wbxml import Element

__all__ = ["to_application_data", "from_application_data", "delete_instance", "ItemError"]

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
_PRODID = "-//casgate//ActiveSync Calendar//EN"
_UTC = dt.timezone.utc
_UTC_NAMES = frozenset({"UTC", "Etc/UTC", "Etc/GMT", "GMT", "Etc/Zulu", "Zulu", "UCT", "Etc/UCT", "Universal",
                        "Etc/Universal", "Etc/GMT0", "Etc/GMT+0", "Etc/GMT-0", "Etc/Greenwich", "Greenwich"})
_COMPACT = re.compile(r"(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z")
_LONG = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.\d{1,7})?Z")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_DAYS = ("SU", "MO", "TU", "WE", "TH", "FR", "SA")   # EAS DayOfWeek bit n is day n, Sunday first
_LUNAR = frozenset({6, 8, 14, 15, 20})   # CalendarType values whose months are not Gregorian months
_BUSY = {"FREE": 0, "TENTATIVE": 1, "BUSY": 2, "OOF": 3, "WORKINGELSEWHERE": 4}
_BUSY_NAMES = {value: name for name, value in _BUSY.items()}
_CLASS = {"PUBLIC": 0, "X-PERSONAL": 1, "PRIVATE": 2, "CONFIDENTIAL": 3}
_CLASS_NAMES = {1: "X-PERSONAL", 2: "PRIVATE", 3: "CONFIDENTIAL"}
_PARTSTAT_OUT = {"NEEDS-ACTION": 5, "ACCEPTED": 3, "TENTATIVE": 2, "DECLINED": 4}
_PARTSTAT_IN = {2: "TENTATIVE", 3: "ACCEPTED", 4: "DECLINED", 5: "NEEDS-ACTION"}
_MEETING_STATUS = frozenset({0, 1, 3, 5, 7, 9, 11, 13, 15})
_REPLY_TIME = "X-CASGATE-REPLYTIME"
_RRULE_KEYS = frozenset({"FREQ", "INTERVAL", "COUNT", "UNTIL", "BYDAY", "BYMONTHDAY", "BYMONTH", "BYSETPOS",
                         "WKST"})
_MAX_TEXT = 1 << 20


def _version(version: object) -> tuple[int, int]:
    if not isinstance(version, str) or version not in _VERSIONS:
        raise ItemError(f"unknown ActiveSync protocol version {version!r}")
    return _VERSIONS[version]


def _has(v: tuple[int, int], key: str) -> bool:
    low, high = _SUPPORT.get(key, (None, None))
    return (low is None or v >= low) and (high is None or v <= high)


def _el(name: str, text: object, ns: str = "Calendar") -> Element:
    return Element(ns, name, text=str(text))


# --- dates ------------------------------------------------------------------------------------------------

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


# --- reading the stored object ----------------------------------------------------------------------------

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


# --- stored object -> ApplicationData ---------------------------------------------------------------------

def to_application_data(text: str, version: str, options: BodyOptions, *, owner: str | None = None) -> Element:
    """The AirSync:ApplicationData of a stored calendar object for a client speaking ``version``; ``owner`` is
    the user's address (it decides MeetingStatus and ResponseType). Raises ItemError for what it cannot read."""
    v = _version(version)
    if not isinstance(options, BodyOptions):
        raise ItemError("options must be BodyOptions")
    cal = _parse(text)
    try:
        return _application_data(cal, v, options, owner)
    except ItemError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as exc:
        raise ItemError(f"stored event cannot be converted: {type(exc).__name__}: {exc}") from None


def _application_data(cal, v: tuple[int, int], options: BodyOptions, owner: str | None) -> Element:
    master, overrides = _events(cal)
    start, end, all_day = _times(master)
    zone = start.tzinfo if isinstance(start, dt.datetime) and start.tzinfo is not None else None
    out = [_el("Timezone", base64.b64encode(blob_for(zone, _utc(start).year)).decode("ascii"))]
    stamp = _moment(master, "DTSTAMP") or _moment(master, "LAST-MODIFIED") or _moment(master, "CREATED")
    if stamp is not None:
        out.append(_el("DtStamp", _compact(_utc(stamp))))
    out.append(_el("StartTime", _compact(_utc(start))))
    if _text(master, "SUMMARY") is not None:
        out.append(_el("Subject", _clean(_text(master, "SUMMARY"))))
    out.append(_el("UID", _clean(_text(master, "UID") or "")))
    organizer = _prop(master, "ORGANIZER")
    if organizer is not None:
        if organizer.params.get("CN"):
            out.append(_el("OrganizerName", _clean(str(organizer.params["CN"]))))
        out.append(_el("OrganizerEmail", _clean(_address(organizer))))
    elif owner and _attendees(master):
        out.append(_el("OrganizerEmail", owner))
    if _attendees(master):
        out.append(_attendees_out(master, v))
    out.extend(_location_out(master, v))
    out.append(_el("EndTime", _compact(_utc(end))))
    recurrence = _recurrence_out(master, start, v)
    if recurrence is not None:
        out.append(recurrence)
    out.extend(_body_out(master, v, options))
    out.append(_el("Sensitivity", _sensitivity(master)))
    out.append(_el("BusyStatus", _busy(master)))
    out.append(_el("AllDayEvent", int(all_day)))
    reminder = _reminder(master)
    if reminder is not None:
        out.append(_el("Reminder", reminder))
    categories = _categories(master)
    if categories:
        out.append(Element("Calendar", "Categories", [_el("Category", _clean(c)) for c in categories[:300]]))
    if recurrence is not None:
        exceptions = _exceptions_out(master, overrides, v, options, owner)
        if exceptions:
            out.append(Element("Calendar", "Exceptions", exceptions))
    out.append(_el("MeetingStatus", _meeting_status(master, owner)))
    if v >= (14, 0):
        out.extend(_meeting_extras(master, owner))
    return Element("AirSync", "ApplicationData", out)


def _clean(text: str | None) -> str:
    """Text a WBXML string can carry: no NULs or other C0 controls besides tab and line breaks."""
    return _CONTROL.sub("", text or "")


def _attendees_out(event, v: tuple[int, int]) -> Element:
    out = []
    for attendee in _attendees(event)[:1000]:
        email = _clean(_address(attendee))
        children = [_el("Email", email), _el("Name", _clean(str(attendee.params.get("CN") or email)))]
        if _has(v, "AttendeeStatus"):
            partstat = str(attendee.params.get("PARTSTAT", "")).upper()
            children.append(_el("AttendeeStatus", _PARTSTAT_OUT.get(partstat, 0)))
        if _has(v, "AttendeeType"):
            children.append(_el("AttendeeType", _attendee_type(attendee)))
        out.append(Element("Calendar", "Attendee", children))
    return Element("Calendar", "Attendees", out)


def _attendee_type(attendee) -> int:
    if str(attendee.params.get("CUTYPE", "")).upper() in ("RESOURCE", "ROOM"):
        return 3
    return 2 if str(attendee.params.get("ROLE", "")).upper() in ("OPT-PARTICIPANT", "NON-PARTICIPANT") else 1


def _location_out(event, v: tuple[int, int]) -> list[Element]:
    location = _text(event, "LOCATION")
    if location is None:
        return []
    if not _has(v, "AirSyncBase:Location"):
        return [_el("Location", _clean(location))]
    children = [_el("DisplayName", _clean(location), "AirSyncBase")]
    geo = _prop(event, "GEO")
    if geo is not None and hasattr(geo, "latitude"):
        children += [_el("Latitude", geo.latitude, "AirSyncBase"), _el("Longitude", geo.longitude, "AirSyncBase")]
    return [Element("AirSyncBase", "Location", children)]


def _body_out(event, v: tuple[int, int], options: BodyOptions) -> list[Element]:
    text = _clean(_text(event, "DESCRIPTION") or "")
    if _has(v, "AirSyncBase:Body"):
        return [body_element(text, options, v)]
    return legacy_body("Calendar", text, options)


def _sensitivity(event) -> int:
    value = (_text(event, "CLASS") or "PUBLIC").upper()
    return _CLASS.get(value, 2)  # RFC 5545: an unknown class is treated as PRIVATE


def _busy(event) -> int:
    for name in ("X-MICROSOFT-CDO-BUSYSTATUS", "X-MICROSOFT-CDO-INTENDEDSTATUS"):
        value = (_text(event, name) or "").upper()
        if value in _BUSY:
            return _BUSY[value]
    return 0 if (_text(event, "TRANSP") or "").upper() == "TRANSPARENT" else 2


def _meeting_status(event, owner: str | None) -> int:
    if not _attendees(event):
        return 0
    status = 1 if _is_mine(event, owner) else 3
    return status + 4 if (_text(event, "STATUS") or "").upper() == "CANCELLED" else status


def _meeting_extras(event, owner: str | None) -> list[Element]:
    """ResponseRequested, DisallowNewTimeProposal, ResponseType, AppointmentReplyTime (14.0 and later)."""
    out = []
    attendees = _attendees(event)
    mine = _owner_attendee(event, owner)
    if attendees:
        asked = mine if mine is not None and not _is_mine(event, owner) else None
        rsvp = [asked] if asked is not None else attendees
        out.append(_el("ResponseRequested", int(any(str(a.params.get("RSVP", "")).upper() == "TRUE" for a in rsvp))))
    counter = (_text(event, "X-MICROSOFT-DISALLOW-COUNTER") or "").upper() == "TRUE"
    out.append(_el("DisallowNewTimeProposal", int(counter)))
    if attendees and _is_mine(event, owner):
        out.append(_el("ResponseType", 1))
    elif mine is not None:
        out.append(_el("ResponseType", _PARTSTAT_OUT.get(str(mine.params.get("PARTSTAT", "")).upper(), 0)))
    try:  # an X- property reads back as text
        out.append(_el("AppointmentReplyTime", _compact(_instant(_text(event, _REPLY_TIME), _REPLY_TIME))))
    except ItemError:
        pass
    return out


# --- recurrence out ---------------------------------------------------------------------------------------

def _rule_of(event):
    """The one RRULE of an event, or None (also for several RRULEs, which EAS cannot carry)."""
    value = event.get("RRULE")
    if isinstance(value, list):
        return value[0] if len(value) == 1 else None
    return value


def _weekdays(values: Iterable) -> list[tuple[int | None, int]] | None:
    """BYDAY entries as (ordinal or None, EAS weekday 0 = Sunday); None when one cannot be read."""
    out = []
    for value in values:
        match = re.fullmatch(r"([+-]?\d{1,2})?(SU|MO|TU|WE|TH|FR|SA)", str(value).upper())
        if match is None:
            return None
        out.append((int(match.group(1)) if match.group(1) else None, _DAYS.index(match.group(2))))
    return out


def _nth(days: list[tuple[int | None, int]], setpos: list) -> tuple[int, int] | None:
    """(DayOfWeek mask, WeekOfMonth) of an "n-th weekday" rule, or None when EAS cannot say it."""
    if setpos:
        if len(setpos) != 1 or any(n is not None for n, _ in days):
            return None
        n = int(setpos[0])
    elif len(days) == 1 and days[0][0] is not None:
        n = days[0][0]
    else:
        return None
    if n not in (1, 2, 3, 4, -1):
        return None
    return sum(1 << day for _, day in days), 5 if n == -1 else n


def _recurrence_out(event, start: dt.date | dt.datetime, v: tuple[int, int]) -> Element | None:
    """The Recurrence element of the event's RRULE; None when there is none or EAS cannot express it."""
    rule = _rule_of(event)
    if rule is None or set(rule) - _RRULE_KEYS:
        return None
    parts = {key: list(values) if isinstance(values, list) else [values] for key, values in rule.items()}
    if any(len(parts.get(key, [])) > 1 for key in ("FREQ", "INTERVAL", "COUNT", "UNTIL", "BYMONTH", "BYMONTHDAY",
                                                    "WKST")):
        return None
    freq = str(parts["FREQ"][0]).upper() if parts.get("FREQ") else ""
    interval = int(parts.get("INTERVAL", [1])[0])
    days = _weekdays(parts.get("BYDAY", []))
    setpos, months, monthdays = parts.get("BYSETPOS", []), parts.get("BYMONTH", []), parts.get("BYMONTHDAY", [])
    if days is None or not 1 <= interval <= 999:
        return None
    fields: dict[str, int] = {}
    if freq == "DAILY" and not (months or monthdays or setpos):
        if not days:
            fields["Type"] = 0
        elif interval == 1 and all(n is None for n, _ in days):
            fields.update(Type=1, DayOfWeek=sum(1 << day for _, day in days))  # "every weekday"
        else:
            return None
    elif freq == "WEEKLY" and not (months or monthdays or setpos) and all(n is None for n, _ in days):
        weekday = (start.weekday() + 1) % 7
        fields.update(Type=1, DayOfWeek=sum(1 << day for _, day in days) if days else 1 << weekday)
    elif freq in ("MONTHLY", "YEARLY"):
        if freq == "YEARLY":
            fields["MonthOfYear"] = int(months[0]) if months else start.month
        elif months:
            return None
        if days:
            nth = _nth(days, setpos)
            if nth is None or monthdays or (freq == "YEARLY" and not months):
                return None
            fields.update(Type=3 if freq == "MONTHLY" else 6, DayOfWeek=nth[0], WeekOfMonth=nth[1])
        else:
            day = int(monthdays[0]) if monthdays else start.day
            if setpos or not 1 <= day <= 31:
                return None
            fields.update(Type=2 if freq == "MONTHLY" else 5, DayOfMonth=day)
    else:
        return None
    out = [_el("Type", fields["Type"])]
    if parts.get("COUNT"):
        out.append(_el("Occurrences", int(parts["COUNT"][0])))
    if interval != 1 or fields["Type"] in (0, 1, 2, 3):
        out.append(_el("Interval", interval))
    out += [_el(name, fields[name]) for name in ("WeekOfMonth", "DayOfWeek", "MonthOfYear") if name in fields]
    if parts.get("UNTIL"):
        until = parts["UNTIL"][0]
        if not isinstance(until, dt.datetime) and isinstance(start, dt.datetime):
            # a date UNTIL on a timed event includes that whole day
            until = dt.datetime.combine(until, dt.time(23, 59, 59), start.tzinfo)
        out.append(_el("Until", _compact(_utc(until))))
    if "DayOfMonth" in fields:
        out.append(_el("DayOfMonth", fields["DayOfMonth"]))
    if parts.get("WKST") and _has(v, "FirstDayOfWeek"):
        wkst = _weekdays(parts["WKST"])
        if wkst:
            out.append(_el("FirstDayOfWeek", wkst[0][1]))
    return Element("Calendar", "Recurrence", out)


# --- exceptions out -------------------------------------------------------------------------------------

def _exdates(event) -> list[dt.date | dt.datetime]:
    value = event.get("EXDATE")
    out = []
    for prop in value if isinstance(value, list) else [] if value is None else [value]:
        out.extend(item.dt for item in getattr(prop, "dts", []))
    return out


def _exceptions_out(master, overrides: list, v: tuple[int, int], options: BodyOptions,
                    owner: str | None) -> list[Element]:
    out: list[tuple] = []
    for exdate in _exdates(master):
        out.append((_key(exdate), [_el("Deleted", 1)] + _instance_ids(exdate, v)))
    for override in overrides:
        rid = _moment(override, "RECURRENCE-ID")
        if rid is None:
            continue
        if (_text(override, "STATUS") or "").upper() == "CANCELLED" and not _attendees(override):
            out.append((_key(rid), [_el("Deleted", 1)] + _instance_ids(rid, v)))
            continue
        out.append((_key(rid), _exception_out(master, override, rid, v, options, owner)))
    out.sort(key=lambda item: _utc(item[0]))
    return [Element("Calendar", "Exception", children) for _, children in out[:256]]


def _instance_ids(rid: dt.date | dt.datetime, v: tuple[int, int]) -> list[Element]:
    out = []
    if _has(v, "Exception/ExceptionStartTime"):
        out.append(_el("ExceptionStartTime", _compact(_utc(rid))))
    if _has(v, "Exception/InstanceId"):
        out.append(_el("InstanceId", _compact(_utc(rid)), "AirSyncBase"))
    return out


def _exception_out(master, override, rid, v: tuple[int, int], options: BodyOptions,
                   owner: str | None) -> list[Element]:
    """An Exception for an overriding VEVENT: its times, and what differs from the master."""
    start, end, all_day = _times(override)
    out = _instance_ids(rid, v)
    if _text(override, "SUMMARY") != _text(master, "SUMMARY"):
        out.append(_el("Subject", _clean(_text(override, "SUMMARY"))))
    out += [_el("StartTime", _compact(_utc(start))), _el("EndTime", _compact(_utc(end)))]
    if _text(override, "DESCRIPTION") != _text(master, "DESCRIPTION"):
        body = _body_out(override, v, options)
        if not any(e.name == "Body" for e in body):  # 2.5 says "no body here" with an empty Body
            body.insert(0, _el("Body", ""))
        out.extend(body)
    if _text(override, "LOCATION") != _text(master, "LOCATION"):
        out.extend(_location_out(override, v) or [_el("Location", "") if v < (16, 0) else Element(
            "AirSyncBase", "Location", [_el("DisplayName", "", "AirSyncBase")])])
    if _categories(override) != _categories(master):
        out.append(Element("Calendar", "Categories", [_el("Category", _clean(c)) for c in _categories(override)]))
    for name, read in (("Sensitivity", _sensitivity), ("BusyStatus", _busy)):
        if read(override) != read(master):
            out.append(_el(name, read(override)))
    if all_day != (not isinstance(_moment(master, "DTSTART"), dt.datetime)):
        out.append(_el("AllDayEvent", int(all_day)))
    if _reminder(override) is not None and _reminder(override) != _reminder(master):
        out.append(_el("Reminder", _reminder(override)))
    stamp = _moment(override, "DTSTAMP")
    if stamp is not None and _has(v, "Exception/DtStamp"):
        out.append(_el("DtStamp", _compact(_utc(stamp))))
    if _meeting_status(override, owner) != _meeting_status(master, owner):
        out.append(_el("MeetingStatus", _meeting_status(override, owner)))
    if _has(v, "Exception/Attendees") and _attendees(override) and (
            [str(a) for a in _attendees(override)] != [str(a) for a in _attendees(master)]):
        out.append(_attendees_out(override, v))
    if v >= (14, 0):
        inherited = [(e.name, e.text) for e in _meeting_extras(master, owner)]
        out.extend(e for e in _meeting_extras(override, owner)
                   if e.name in ("AppointmentReplyTime", "ResponseType") and (e.name, e.text) not in inherited)
    if _has(v, "Exception/UID"):
        out.append(_el("UID", _clean(_text(master, "UID"))))
    return out


# --- ApplicationData -> stored object ---------------------------------------------------------------------

class _Fields:
    """The children of an ApplicationData or Exception element, and what an absent one means."""

    def __init__(self, element: Element, keep_absent) -> None:
        self.element = element
        self._keep_absent = keep_absent   # name -> bool: an absent element keeps the stored value

    def find(self, name: str, ns: str = "Calendar") -> Element | None:
        return self.element.find(name, ns)

    def text(self, name: str, ns: str = "Calendar") -> str | None:
        child = self.element.find(name, ns)
        return None if child is None else _clean(child.text or "")

    def number(self, name: str, low: int, high: int, ns: str = "Calendar") -> int | None:
        return _number(self.element, name, low, high, ns)

    def keep(self, name: str) -> bool:
        return self._keep_absent(name)


def _number(element: Element, name: str, low: int, high: int, ns: str = "Calendar") -> int | None:
    child = element.find(name, ns)
    if child is None:
        return None
    text = (child.text or "").strip()
    if not re.fullmatch(r"-?\d{1,10}", text) or not low <= int(text) <= high:
        raise ItemError(f"{name} must be a number from {low} to {high}, not {text[:20]!r}")
    return int(text)


def from_application_data(data: Element, version: str, previous: str | None = None, *, owner: str | None = None,
                          supported: Iterable[str] | None = None, instance_id: str | None = None) -> str:
    """The iCalendar text to store for the ApplicationData of a Sync Add (``previous`` None) or Change.

    ``owner`` is the user's address; ``supported`` the element names a pre-16.0 client listed in its Supported
    element (the others keep their stored values when absent); ``instance_id`` (EAS 16) makes the data a
    change of that one instance of a recurring event. Raises ItemError for data that cannot be stored.
    """
    v = _version(version)
    if not isinstance(data, Element) or data.name != "ApplicationData":
        raise ItemError("data must be an AirSync:ApplicationData element")
    cal = _parse(previous) if previous is not None else None
    wanted = None if supported is None else frozenset(supported)
    try:
        return _store(data, v, cal, owner, wanted, instance_id)
    except ItemError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as exc:
        raise ItemError(f"calendar item cannot be stored: {type(exc).__name__}: {exc}") from None


def delete_instance(previous: str, instance_id: str) -> str:
    """The stored text after an EAS 16 Sync Delete of one instance (AirSyncBase:InstanceId) of a series."""
    cal = _parse(previous)
    master, overrides = _events(cal)
    if "RRULE" not in master and "RDATE" not in master:
        raise ItemError("only an instance of a recurring event can be deleted")
    start, _, all_day = _times(master)
    rid = _instance_start(_instant(instance_id, "InstanceId"), start, all_day, _UTC)
    _set_list(master, "EXDATE", [*(d for d in _exdates(master) if _key(d) != _key(rid)), rid])
    kept = [o for o in overrides if _key(_moment(o, "RECURRENCE-ID") or rid) != _key(rid)]
    _stamp(master)
    return _finish(cal, master, kept)


def _store(data: Element, v: tuple[int, int], cal, owner: str | None, supported, instance_id: str | None) -> str:
    ghosting = _has(v, "Ghosting")

    def keep_absent(name: str) -> bool:
        return ghosting or (supported is not None and name not in supported)

    fields = _Fields(data, keep_absent)
    if cal is None:
        if instance_id is not None:
            raise ItemError("an instance can only be changed on a stored event")
        cal = icalendar.Calendar()
        cal.add("PRODID", _PRODID)
        cal.add("VERSION", "2.0")
        master, overrides = icalendar.Event(), []
        master.add("UID", _new_uid(fields, v))
        master.add("CREATED", dt.datetime.now(_UTC).replace(microsecond=0))
        fields = _Fields(data, lambda name: False)
    else:
        master, overrides = _events(cal)
    if instance_id is not None:
        overrides = _change_instance(master, overrides, fields, v, _instant(instance_id, "InstanceId"), owner)
        return _finish(cal, master, overrides)
    previous_start = _moment(master, "DTSTART")
    fixed_rule = "RRULE" in master and previous_start is not None and _recurrence_out(
        master, previous_start, v) is None
    series = _series(master)
    zone = _zone_in(fields, master)
    _times_in(master, fields, zone, None)
    _apply(master, fields, v, owner, None)
    _recurrence_in(master, fields, zone, v, fixed_rule)
    if ghosting and previous_start is not None and _series(master) != series:
        # MS-ASCAL 16.0: a new pattern or new times for a series delete its exceptions
        master.pop("EXDATE", None)
        overrides = []
    overrides = _exceptions_in(master, overrides, fields, zone, v, owner, keep=fixed_rule)
    _stamp(master)
    return _finish(cal, master, overrides)


def _series(event) -> tuple:
    """What, changed, makes a series' exceptions meaningless: its times and its rule."""
    if _moment(event, "DTSTART") is None:
        return ()
    start, end, _ = _times(event)
    rule = _rule_of(event)
    return _utc(start), _utc(end), None if rule is None else rule.to_ical()


def _new_uid(fields: _Fields, v: tuple[int, int]) -> str:
    uid = (fields.text("UID") or (fields.text("ClientUid") if _has(v, "ClientUid") else None) or "").strip()
    if len(uid) > 300:
        raise ItemError("UID is longer than 300 characters")
    return uid or str(uuid.uuid4())


def _stamp(event) -> None:
    now = dt.datetime.now(_UTC).replace(microsecond=0)
    for name in ("DTSTAMP", "LAST-MODIFIED"):
        event.pop(name, None)
        event.add(name, now)


def _is_utc(zone: dt.tzinfo | None) -> bool:
    return zone is None or zone is _UTC or tzid_for(zone) in _UTC_NAMES or (
        tzid_for(zone) is None and zone.utcoffset(dt.datetime(2000, 1, 1)) == dt.timedelta(0)
        and zone.utcoffset(dt.datetime(2000, 7, 1)) == dt.timedelta(0))


def _zone_in(fields: _Fields, master) -> dt.tzinfo:
    """The zone of the item: the one the Timezone blob describes (the stored one when it fits), else the
    stored one, else UTC."""
    start = _moment(master, "DTSTART")
    stored = start.tzinfo if isinstance(start, dt.datetime) and start.tzinfo is not None else None
    text = fields.text("Timezone")
    if not (text or "").strip():
        return _UTC if _is_utc(stored) else stored  # type: ignore[return-value]
    when = fields.text("StartTime")
    year = _instant(when, "StartTime").year if when else (_utc(start).year if start is not None else 2000)
    zone = zone_for(decode_b64(text), year, prefer=stored)
    return _UTC if _is_utc(zone) else zone


def _times_in(event, fields: _Fields, zone: dt.tzinfo, original: dt.date | dt.datetime | None) -> None:
    """DTSTART/DTEND from StartTime, EndTime and AllDayEvent; an absent one keeps the stored value (an event
    always has a start), or for a new instance takes the original start and the event's duration."""
    has_start = _moment(event, "DTSTART") is not None
    old_start, old_end, old_all_day = _times(event) if has_start else (None, None, False)
    flag = fields.number("AllDayEvent", 0, 1)
    all_day = old_all_day if flag is None else bool(flag)
    text = fields.text("StartTime")
    if text:
        start = _instant(text, "StartTime")
    elif old_start is not None:
        start = _utc(old_start)
    elif original is not None:
        start = _utc(original)
    else:
        raise ItemError("StartTime is required")
    text = fields.text("EndTime")
    if text:
        end = _instant(text, "EndTime")
    elif old_start is not None:
        end = start + (_utc(old_end) - _utc(old_start))
    else:
        end = start + (dt.timedelta(days=1) if all_day else dt.timedelta(minutes=30))
    if end < start:
        raise ItemError("EndTime is before StartTime")
    for name in ("DTSTART", "DTEND", "DURATION", "X-MICROSOFT-CDO-ALLDAYEVENT"):
        event.pop(name, None)
    if all_day:
        first = _local_date(start, zone)
        last = max(_local_date(end, zone, ceil=True), first + dt.timedelta(days=1))
        event.add("DTSTART", first)
        event.add("DTEND", last)
    else:
        event.add("DTSTART", start.astimezone(zone))
        event.add("DTEND", end.astimezone(zone))


def _apply(event, fields: _Fields, v: tuple[int, int], owner: str | None, inherit) -> None:
    """Set the properties EAS carries from ``fields``; an absent element takes the value of ``inherit`` (the
    master, for an exception), keeps the stored value, or removes it."""
    def absent(name: str, props: tuple[str, ...]) -> bool:
        """Handle an absent element; True when it was absent."""
        if fields.find(name) is not None:
            for prop in props:
                event.pop(prop, None)
            return False
        if inherit is not None:
            for prop in props:
                event.pop(prop, None)
                if prop in inherit:
                    event[prop] = inherit[prop]
        elif not fields.keep(name):
            for prop in props:
                event.pop(prop, None)
        return True

    if not absent("Subject", ("SUMMARY",)):
        event.add("SUMMARY", fields.text("Subject"))
    _location_in(event, fields, inherit)
    body = body_text(fields.element, "Calendar")
    if body is not None:
        event.pop("DESCRIPTION", None)
        if _clean(body):
            event.add("DESCRIPTION", _clean(body))
    elif inherit is not None:
        event.pop("DESCRIPTION", None)
        if "DESCRIPTION" in inherit:
            event["DESCRIPTION"] = inherit["DESCRIPTION"]
    if not absent("Sensitivity", ("CLASS",)):
        sensitivity = fields.number("Sensitivity", 0, 3)
        if sensitivity:
            event.add("CLASS", _CLASS_NAMES[sensitivity])
    busy_props = ("TRANSP", "X-MICROSOFT-CDO-BUSYSTATUS", "X-MICROSOFT-CDO-INTENDEDSTATUS")
    if not absent("BusyStatus", busy_props):
        busy = fields.number("BusyStatus", 0, 4)
        event.add("TRANSP", "TRANSPARENT" if busy == 0 else "OPAQUE")
        if busy in (1, 3, 4):
            event.add("X-MICROSOFT-CDO-BUSYSTATUS", _BUSY_NAMES[busy])
    if not absent("Categories", ("CATEGORIES",)):
        categories = [_clean(c.text or "").strip() for c in fields.find("Categories").findall("Category")]
        if any(categories):
            event.add("CATEGORIES", [c for c in categories if c][:300])
    if fields.find("Reminder") is not None:
        _set_reminder(event, fields.number("Reminder", 0, 10 * 366 * 1440))
    elif inherit is not None:
        _set_reminder(event, _reminder(inherit))
    elif not fields.keep("Reminder"):
        _set_reminder(event, None)
    if not absent("DisallowNewTimeProposal", ("X-MICROSOFT-DISALLOW-COUNTER",)):
        if fields.number("DisallowNewTimeProposal", 0, 1):
            event.add("X-MICROSOFT-DISALLOW-COUNTER", "TRUE")
    if not absent("AppointmentReplyTime", (_REPLY_TIME,)):
        event.add(_REPLY_TIME, _compact(_instant(fields.text("AppointmentReplyTime"), "AppointmentReplyTime")))
    _people_in(event, fields, v, owner, inherit)


def _location_in(event, fields: _Fields, inherit) -> None:
    rich = fields.find("Location", "AirSyncBase")
    plain = fields.find("Location")
    if rich is None and plain is None:
        if inherit is not None:
            for prop in ("LOCATION", "GEO"):
                event.pop(prop, None)
                if prop in inherit:
                    event[prop] = inherit[prop]
        elif not fields.keep("Location"):
            event.pop("LOCATION", None)
        return
    event.pop("LOCATION", None)
    text = _clean(plain.text or "") if rich is None else _clean(rich.text_of("DisplayName", "AirSyncBase") or "")
    if text:
        event.add("LOCATION", text)
    if rich is not None:
        event.pop("GEO", None)
        try:
            lat = float(rich.text_of("Latitude", "AirSyncBase") or "nan")
            lon = float(rich.text_of("Longitude", "AirSyncBase") or "nan")
        except ValueError:
            raise ItemError("Location Latitude/Longitude must be numbers") from None
        if -90 <= lat <= 90 and -180 <= lon <= 180:
            event.add("GEO", (lat, lon))


def _set_reminder(event, minutes: int | None) -> None:
    """Set (or with None remove) the first alarm with a relative trigger; the event's other alarms and that
    alarm's other properties stay."""
    alarm = next((a for a in event.subcomponents if a.name == "VALARM"
                  and isinstance(getattr(a.get("TRIGGER"), "dt", None), dt.timedelta)), None)
    if minutes is None:
        if alarm is not None:
            event.subcomponents.remove(alarm)
        return
    if alarm is None:
        alarm = icalendar.Alarm()
        alarm.add("ACTION", "DISPLAY")
        alarm.add("DESCRIPTION", "Reminder")
        event.add_component(alarm)
    alarm.pop("TRIGGER", None)
    alarm.add("TRIGGER", dt.timedelta(minutes=-minutes))


def _people_in(event, fields: _Fields, v: tuple[int, int], owner: str | None, inherit) -> None:
    """ORGANIZER, ATTENDEE, the cancelled STATUS, and the RSVP and PARTSTAT that ResponseRequested and
    ResponseType speak of."""
    email, name = fields.text("OrganizerEmail"), fields.text("OrganizerName")
    if email and email.strip():
        old = _prop(event, "ORGANIZER")
        organizer = icalendar.vCalAddress("mailto:" + email.strip())
        if old is not None and _address(old).lower() == email.strip().lower():
            organizer.params = icalendar.Parameters(dict(old.params))
        if name:
            organizer.params["CN"] = name
        event.pop("ORGANIZER", None)
        event.add("ORGANIZER", organizer)
    elif inherit is not None:
        event.pop("ORGANIZER", None)
        if "ORGANIZER" in inherit:
            event["ORGANIZER"] = inherit["ORGANIZER"]
    element = fields.find("Attendees")
    if element is not None and (inherit is None or _has(v, "Exception/Attendees")):
        _attendees_in(event, element, v)
    elif inherit is not None:
        event.pop("ATTENDEE", None)
        if "ATTENDEE" in inherit:
            event["ATTENDEE"] = inherit["ATTENDEE"]
    elif not fields.keep("Attendees"):
        event.pop("ATTENDEE", None)
    status = fields.number("MeetingStatus", 0, 15)
    if status is not None and status not in _MEETING_STATUS:
        raise ItemError(f"MeetingStatus {status} is not a defined value")
    if not _attendees(event):
        if not email:
            event.pop("ORGANIZER", None)
    elif "ORGANIZER" not in event and owner and status in (None, 1, 5, 9, 13):
        event.add("ORGANIZER", icalendar.vCalAddress("mailto:" + owner))
    cancelled = status in (5, 7, 13, 15) if status is not None else (
        inherit is not None and (_text(inherit, "STATUS") or "").upper() == "CANCELLED")
    keep = status is None and inherit is None and fields.keep("MeetingStatus")
    if not keep:
        if cancelled:
            event.pop("STATUS", None)
            event.add("STATUS", "CANCELLED")
        elif (_text(event, "STATUS") or "").upper() == "CANCELLED":
            event.pop("STATUS", None)
    requested = fields.number("ResponseRequested", 0, 1)
    if requested is not None and _attendees(event) and _is_mine(event, owner):
        organizer = _address(event.get("ORGANIZER")).lower()
        for attendee in _attendees(event):
            if _address(attendee).lower() != organizer:
                attendee.params.pop("RSVP", None)
                if requested:
                    attendee.params["RSVP"] = "TRUE"
    response = fields.number("ResponseType", 0, 5)
    mine = _owner_attendee(event, owner)
    if response in _PARTSTAT_IN and mine is not None:
        mine.params["PARTSTAT"] = _PARTSTAT_IN[response]


def _attendees_in(event, element: Element, v: tuple[int, int]) -> None:
    previous = {_address(a).lower(): a for a in _attendees(event)}
    out, seen = [], set()
    for item in element.findall("Attendee")[:1000]:
        email = _clean(item.text_of("Email") or "").strip()
        if not email or len(email) > 320 or any(c in email for c in " <>\"\r\n\t"):
            raise ItemError(f"Attendee Email {email[:40]!r} is not an address")
        if email.lower() in seen:
            continue
        seen.add(email.lower())
        attendee = icalendar.vCalAddress("mailto:" + email)
        old = previous.get(email.lower())
        attendee.params = icalendar.Parameters(dict(old.params) if old is not None else {})
        name = _clean(item.text_of("Name") or "").strip()
        if name:
            attendee.params["CN"] = name
        status = _number(item, "AttendeeStatus", 0, 5)
        if status in _PARTSTAT_IN:
            attendee.params["PARTSTAT"] = _PARTSTAT_IN[status]
        kind = _number(item, "AttendeeType", 1, 3)
        if kind is not None:
            for param in ("ROLE", "CUTYPE"):
                attendee.params.pop(param, None)
            if kind == 3:
                was_room = old is not None and str(old.params.get("CUTYPE", "")).upper() == "ROOM"
                attendee.params["CUTYPE"] = "ROOM" if was_room else "RESOURCE"
                attendee.params["ROLE"] = "NON-PARTICIPANT"
            else:
                attendee.params["ROLE"] = "REQ-PARTICIPANT" if kind == 1 else "OPT-PARTICIPANT"
        out.append(attendee)
    event.pop("ATTENDEE", None)
    for attendee in out:
        event.add("ATTENDEE", attendee)


# --- recurrence and exceptions in -------------------------------------------------------------------------

def _recurrence_in(master, fields: _Fields, zone: dt.tzinfo, v: tuple[int, int], fixed_rule: bool) -> None:
    element = fields.find("Recurrence")
    if element is None:
        if not (fixed_rule or fields.keep("Recurrence")):
            master.pop("RRULE", None)
        return
    start, _, all_day = _times(master)
    master.pop("RRULE", None)
    master.add("RRULE", _rule_in(element, start, all_day, zone))


def _rule_in(element: Element, start: dt.date | dt.datetime, all_day: bool, zone: dt.tzinfo) -> dict:
    kind = _number(element, "Type", 0, 6)
    if kind is None or kind == 4:
        raise ItemError("Recurrence Type must be 0, 1, 2, 3, 5 or 6")
    calendar_type = _number(element, "CalendarType", 0, 20)
    leap = _number(element, "IsLeapMonth", 0, 1)
    if kind in (2, 3, 5, 6) and (calendar_type in _LUNAR or leap):
        raise ItemError(f"a monthly or yearly recurrence in calendar type {calendar_type} (or a leap month) "
                        "cannot be stored as a Gregorian rule")
    interval = _number(element, "Interval", 0, 999) or 1
    mask = _number(element, "DayOfWeek", 0, 127) or 0
    days = [_DAYS[day] for day in range(7) if mask & (1 << day)]
    week = _number(element, "WeekOfMonth", 1, 5)
    month = _number(element, "MonthOfYear", 1, 12) or start.month
    day = _number(element, "DayOfMonth", 1, 31) or start.day
    rule: dict = {}
    if kind == 0:
        rule["FREQ"] = "DAILY"
        if days:
            rule["BYDAY"] = days
    elif kind == 1:
        rule.update(FREQ="WEEKLY", BYDAY=days or [_DAYS[(start.weekday() + 1) % 7]])
    elif kind in (2, 5):
        rule.update(FREQ="MONTHLY" if kind == 2 else "YEARLY", BYMONTHDAY=[day])
        if kind == 5:
            rule["BYMONTH"] = [month]
    else:
        if not days or week is None:
            raise ItemError("a Recurrence of Type 3 or 6 needs DayOfWeek and WeekOfMonth")
        n = -1 if week == 5 else week
        rule["FREQ"] = "MONTHLY" if kind == 3 else "YEARLY"
        if kind == 6:
            rule["BYMONTH"] = [month]
        if len(days) == 1:
            rule["BYDAY"] = [f"{n}{days[0]}"]
        else:
            rule.update(BYDAY=days, BYSETPOS=[n])
    if interval > 1:
        rule["INTERVAL"] = interval
    count = _number(element, "Occurrences", 0, 999_999)
    until = element.text_of("Until")
    if count:
        rule["COUNT"] = count
    elif until:
        moment = _instant(until, "Until")
        rule["UNTIL"] = _local_date(moment, zone) if all_day else moment
    first = _number(element, "FirstDayOfWeek", 0, 6)
    if first is not None:
        rule["WKST"] = _DAYS[first]
    return rule


def _zone_of(start: dt.date | dt.datetime) -> dt.tzinfo:
    return start.tzinfo if isinstance(start, dt.datetime) and start.tzinfo is not None else _UTC


def _instance_start(original: dt.datetime, start: dt.date | dt.datetime, all_day: bool,
                    zone: dt.tzinfo) -> dt.date | dt.datetime:
    """The RECURRENCE-ID of the instance that started at ``original`` (UTC) in the master's terms; ``zone`` is
    the device's, which decides the date of an all-day instance."""
    return _local_date(original, zone) if all_day else original.astimezone(_zone_of(start))


def _exception_start(element: Element) -> dt.datetime:
    text = element.text_of("ExceptionStartTime") or element.text_of("InstanceId", "AirSyncBase")
    if not text:
        raise ItemError("Exception has neither ExceptionStartTime nor InstanceId")
    return _instant(text, "ExceptionStartTime")


def _exceptions_in(master, overrides: list, fields: _Fields, zone: dt.tzinfo, v: tuple[int, int],
                   owner: str | None, keep: bool) -> list:
    """The overriding VEVENTs after a Change, with the master's EXDATEs set from the Deleted exceptions;
    ``keep``: the series went out without Recurrence, so the device never saw its exceptions."""
    element = fields.find("Exceptions")
    if "RRULE" not in master and "RDATE" not in master:
        master.pop("EXDATE", None)
        return []
    if element is None:
        if keep or fields.keep("Exceptions"):
            return overrides
        master.pop("EXDATE", None)
        return []
    start, _, all_day = _times(master)
    stored = {_key(_moment(o, "RECURRENCE-ID") or start): o for o in overrides}
    exdates, kept = [], {}
    for item in element.findall("Exception")[:256]:
        original = _exception_start(item)
        rid = _instance_start(original, start, all_day, zone)
        key = _key(rid)
        if (_number(item, "Deleted", 0, 1) or 0) == 1:
            old = stored.get(key)
            if old is not None and (_text(old, "STATUS") or "").upper() == "CANCELLED" and not _attendees(old):
                kept[key] = old
            else:
                exdates.append(rid)
            continue
        kept[key] = _override(master, stored.get(key), rid, _Fields(item, lambda name: False), v, owner)
    _set_list(master, "EXDATE", exdates)
    return list(kept.values())


def _override(master, old, rid, fields: _Fields, v: tuple[int, int], owner: str | None):
    """An overriding VEVENT for one instance: ``old`` changed, or a new one."""
    event = old if old is not None else icalendar.Event()
    if old is None:
        event.add("UID", _text(master, "UID"))
        event.add("RECURRENCE-ID", rid)
        if "SEQUENCE" in master:
            event["SEQUENCE"] = master["SEQUENCE"]
    start, end, _ = _times(master)
    for name in ("DTSTART", "DTEND", "DURATION"):
        event.pop(name, None)
    event.add("DTSTART", rid)  # an absent StartTime or EndTime means the instance's own times
    event.add("DTEND", rid + (end - start))
    _times_in(event, fields, _zone_of(start), rid)
    _apply(event, fields, v, owner, master)
    _stamp(event)
    return event


def _change_instance(master, overrides: list, fields: _Fields, v: tuple[int, int], original: dt.datetime,
                     owner: str | None) -> list:
    """EAS 16: a Change with InstanceId changes that instance only; absent elements keep its values."""
    start, _, all_day = _times(master)
    rid = _instance_start(original, start, all_day, _UTC)
    stored = {_key(_moment(o, "RECURRENCE-ID") or start): o for o in overrides}
    event = stored.get(_key(rid))
    if event is None:
        event = _override(master, None, rid, _Fields(Element("Calendar", "Exception"), lambda name: False), v,
                          owner)
        overrides = [*overrides, event]
    _times_in(event, fields, _zone_of(start), rid)
    _apply(event, fields, v, owner, None)
    _stamp(event)
    return overrides


def _set_list(event, name: str, values: list) -> None:
    event.pop(name, None)
    for value in sorted(values, key=_utc):
        event.add(name, value)


# --- writing ---------------------------------------------------------------------------------------------

def _finish(cal, master, overrides: list) -> str:
    """The calendar text: the master, its overrides, the other components, and a VTIMEZONE for every TZID."""
    others = [c for c in cal.subcomponents if c.name not in ("VEVENT", "VTIMEZONE")]
    timezones = [c for c in cal.subcomponents if c.name == "VTIMEZONE"]
    unrelated = [c for c in cal.subcomponents if c.name == "VEVENT" and c is not master and c not in overrides
                 and _text(c, "UID") != _text(master, "UID")]
    overrides = sorted(overrides, key=lambda o: _utc(_moment(o, "RECURRENCE-ID") or dt.date(1970, 1, 1)))
    events = [master, *overrides, *unrelated]
    used: dict[str, tuple[dt.tzinfo, int]] = {}
    for event in events:
        for name in ("DTSTART", "DTEND", "RECURRENCE-ID", "EXDATE", "RDATE"):
            value = event.get(name)
            for prop in value if isinstance(value, list) else [] if value is None else [value]:
                for moment in [getattr(p, "dt", None) for p in getattr(prop, "dts", [prop])]:
                    if isinstance(moment, dt.datetime) and moment.tzinfo is not None and not _is_utc(moment.tzinfo):
                        tzid = tzid_for(moment.tzinfo) or ""
                        year = min(moment.year, used.get(tzid, (None, 9999))[1])
                        used[tzid] = (moment.tzinfo, year)
    cal.subcomponents[:] = []
    defined = set()
    for vtz in timezones:
        tzid = _text(vtz, "TZID")
        if tzid in used and tzid not in defined:
            cal.add_component(vtz)
            defined.add(tzid)
    for tzid, (zone, year) in used.items():
        if tzid and tzid not in defined:
            vtz = vtimezone_for(zone, year)
            if vtz is not None:
                cal.add_component(vtz)
                defined.add(tzid)
    for component in [*events, *others]:
        cal.add_component(component)
    return cal.to_ical().decode("utf-8")
