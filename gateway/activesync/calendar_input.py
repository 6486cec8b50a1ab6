"""A device's Calendar ApplicationData as iCalendar: a new VCALENDAR on Add, merged into the stored one on Change."""

from __future__ import annotations

import datetime as dt
import uuid

import icalendar

from .calendar_ical import (
    _BUSY_NAMES, _CLASS_NAMES, _PARTSTAT_IN, _REPLY_TIME, _UTC, _address, _attendees, _clean, _compact, _events, _has,
    _instant, _is_mine, _key, _local_date, _moment, _number, _owner_attendee, _prop, _reminder, _text, _times, _utc)
from .calendar_recurrence import (
    _exception_start, _instance_start, _recurrence_out, _rule_in, _rule_of, _set_list, _zone_of)
from .email_item import ItemError
from .pimbody import body_text
from .tzblob import decode_b64, tzid_for, vtimezone_for, zone_for
from .wbxml import Element

_PRODID = "-//casgate//ActiveSync Calendar//EN"
_UTC_NAMES = frozenset({"UTC", "Etc/UTC", "Etc/GMT", "GMT", "Etc/Zulu", "Zulu", "UCT", "Etc/UCT", "Universal",
                        "Etc/Universal", "Etc/GMT0", "Etc/GMT+0", "Etc/GMT-0", "Etc/Greenwich", "Greenwich"})
_MEETING_STATUS = frozenset({0, 1, 3, 5, 7, 9, 11, 13, 15})


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


# --- recurrence and exceptions in -----------------------------------------------------------------------------

def _recurrence_in(master, fields: _Fields, zone: dt.tzinfo, v: tuple[int, int], fixed_rule: bool) -> None:
    element = fields.find("Recurrence")
    if element is None:
        if not (fixed_rule or fields.keep("Recurrence")):
            master.pop("RRULE", None)
        return
    start, _, all_day = _times(master)
    master.pop("RRULE", None)
    master.add("RRULE", _rule_in(element, start, all_day, zone))


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


# --- writing --------------------------------------------------------------------------------------------------

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
