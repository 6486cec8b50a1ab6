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
from typing import Iterable

from .calendar_ical import (
    _BUSY, _CLASS, _PARTSTAT_OUT, _REPLY_TIME, _UTC, _address, _attendees, _categories, _clean, _compact, _el, _events,
    _has, _instant, _is_mine, _key, _moment, _owner_attendee, _parse, _prop, _reminder, _text, _times, _utc, _version)
from .calendar_input import _finish, _stamp, _store
from .calendar_recurrence import _exdates, _instance_ids, _instance_start, _recurrence_out, _set_list
from .email_item import BodyOptions, ItemError
from .pimbody import body_element, legacy_body
from .tzblob import blob_for
from .wbxml import Element

__all__ = ["to_application_data", "from_application_data", "delete_instance", "ItemError"]


# --- stored object -> ApplicationData -------------------------------------------------------------------------

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


# --- exceptions out -------------------------------------------------------------------------------------------

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


# --- ApplicationData -> stored object -------------------------------------------------------------------------

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
