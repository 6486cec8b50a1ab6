"""Free/busy from iCalendar data: busy periods, Exchange merged strings and working hours (pure, no I/O)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

import icalendar
import recurring_ical_events

from ..config import DAYS, AvailabilityConfig

__all__ = ["BusyType", "BusyEvent", "WorkingHours", "events_to_busy", "merged_free_busy",
           "working_hours_from_config", "to_utc"]

log = logging.getLogger(__name__)
UTC = dt.timezone.utc
# Dates and floating times can lie up to 14 hours either side of UTC. The
# expander is asked for a day more on each side and the exact overlap test is
# done here, in floating_tz, so its own floating-time rules never decide.
_SLACK = dt.timedelta(days=1)


class BusyType(IntEnum):
    """How an event blocks time; the values are Exchange's LegacyFreeBusyStatus order."""

    FREE = 0
    TENTATIVE = 1
    BUSY = 2
    OOF = 3
    WORKING_ELSEWHERE = 4


_CDO_STATUS = {"FREE": BusyType.FREE, "TENTATIVE": BusyType.TENTATIVE, "BUSY": BusyType.BUSY,
               "OOF": BusyType.OOF, "WORKINGELSEWHERE": BusyType.WORKING_ELSEWHERE}


@dataclass(frozen=True)
class BusyEvent:
    """One occurrence of an event as free/busy sees it; start and end are aware UTC."""

    start: dt.datetime
    end: dt.datetime
    busy: BusyType
    subject: str | None
    location: str | None
    private: bool
    recurring: bool
    exception: bool
    meeting: bool
    reminder: bool
    uid: str


@dataclass(frozen=True)
class WorkingHours:
    """A mailbox's working week: IANA zone, day names (Sunday first) and minutes after midnight."""

    time_zone: str
    days: tuple[str, ...]
    start_minutes: int
    end_minutes: int


def to_utc(value: dt.date | dt.datetime, floating_tz: dt.tzinfo = UTC) -> dt.datetime:
    """An iCalendar date or date-time as aware UTC; dates and floating times are read in ``floating_tz``."""
    if not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        value = value.replace(tzinfo=floating_tz)
    return value.astimezone(UTC)


def _busy_type(ev: icalendar.cal.Component) -> BusyType | None:
    """The busy type of one occurrence, or None when it does not block time at all (cancelled)."""
    # A cancelled occurrence is gone whatever Outlook's own status says.
    if str(ev.get("STATUS", "")).upper() == "CANCELLED":
        return None
    cdo = _CDO_STATUS.get(str(ev.get("X-MICROSOFT-CDO-BUSYSTATUS", "")).strip().upper())
    if cdo is not None:
        return cdo
    if str(ev.get("TRANSP", "")).upper() == "TRANSPARENT":
        return BusyType.FREE
    if str(ev.get("STATUS", "")).upper() == "TENTATIVE":
        return BusyType.TENTATIVE
    return BusyType.BUSY


def _end_of(ev: icalendar.cal.Component, start: dt.date | dt.datetime) -> dt.date | dt.datetime:
    if "DTEND" in ev:
        return ev["DTEND"].dt
    if "DURATION" in ev:
        return start + ev["DURATION"].dt
    # RFC 5545 3.6.1: a date lasts one day, a date-time no time at all.
    return start if isinstance(start, dt.datetime) else start + dt.timedelta(days=1)


def _text(ev: icalendar.cal.Component, name: str) -> str | None:
    return str(ev[name]) if name in ev else None


def _occurrence(occ: icalendar.cal.Component, start: dt.datetime, end: dt.datetime, tz: dt.tzinfo,
                recurring: bool, exception: bool) -> BusyEvent | None:
    """``occ`` as a BusyEvent when it blocks time and overlaps [start, end), else None."""
    busy = _busy_type(occ)
    if busy is None:
        return None
    local_start = occ["DTSTART"].dt
    s = to_utc(local_start, tz)
    e = max(s, to_utc(_end_of(occ, local_start), tz))
    # Half-open overlap; an instant event counts where it happens.
    if not (s < end and (e > start or (s == e and s >= start))):
        return None
    return BusyEvent(
        start=s, end=e, busy=busy, subject=_text(occ, "SUMMARY"), location=_text(occ, "LOCATION"),
        private=str(occ.get("CLASS", "")).upper() in ("PRIVATE", "CONFIDENTIAL"),
        recurring=recurring, exception=exception, meeting="ATTENDEE" in occ,
        reminder=any(sub.name == "VALARM" for sub in occ.subcomponents), uid=str(occ.get("UID", "")))


def _calendar_busy(text: str, start: dt.datetime, end: dt.datetime, tz: dt.tzinfo) -> list[BusyEvent]:
    cal = icalendar.Calendar.from_ical(text)
    if cal.name != "VCALENDAR":
        raise ValueError(f"expected VCALENDAR, got {cal.name}")
    vevents = [c for c in cal.subcomponents if c.name == "VEVENT"]
    if not any("RRULE" in c or "RDATE" in c or "RECURRENCE-ID" in c for c in vevents):
        # Nothing recurs (most objects): each VEVENT is its own only occurrence, read as it stands.
        found = []
        for comp in vevents:
            if "DTSTART" not in comp:
                raise ValueError("VEVENT without DTSTART")  # as the expander refuses it
            if (ev := _occurrence(comp, start, end, tz, recurring=False, exception=False)) is not None:
                found.append(ev)
        return found
    series: set[str] = set()  # UIDs whose master recurs
    overrides: set[tuple[str, dt.datetime]] = set()  # (UID, RECURRENCE-ID) of modified instances
    for comp in vevents:
        uid = str(comp.get("UID", ""))
        if "RECURRENCE-ID" in comp:
            overrides.add((uid, to_utc(comp["RECURRENCE-ID"].dt, tz)))
        elif "RRULE" in comp or "RDATE" in comp:
            series.add(uid)
    found = []
    # The expander gives every occurrence a RECURRENCE-ID, even of single
    # events; only the overrides collected above are exceptions.
    for occ in recurring_ical_events.of(cal, components=["VEVENT"]).between(start - _SLACK, end + _SLACK):
        uid = str(occ.get("UID", ""))
        rid = occ.get("RECURRENCE-ID")
        exception = rid is not None and (uid, to_utc(rid.dt, tz)) in overrides
        # An override whose master we lack still belongs to a series.
        ev = _occurrence(occ, start, end, tz, recurring=uid in series or exception, exception=exception)
        if ev is not None:
            found.append(ev)
    return found


def events_to_busy(ical_texts: Iterable[str], start: dt.datetime, end: dt.datetime,
                   floating_tz: dt.tzinfo = UTC, *, skipped: list[str] | None = None) -> list[BusyEvent]:
    """Every occurrence overlapping [start, end) of the VEVENTs in ``ical_texts``, sorted by start.

    Occurrences keep their real start and end (nothing is clipped). A calendar
    that cannot be parsed or expanded is left out, never raised: it is logged
    at WARNING and, when ``skipped`` is given, one reason per calendar is
    appended to it. Naive ``start``/``end`` are UTC.
    """
    start, end = to_utc(start), to_utc(end)
    found: list[BusyEvent] = []
    for text in ical_texts:
        try:
            found.extend(_calendar_busy(text, start, end, floating_tz))
        except Exception as exc:  # icalendar, dateutil and the expander raise many kinds on bad data
            reason = f"{type(exc).__name__}: {exc}"[:200]
            log.warning("skipped a calendar object free/busy cannot read: %s", reason)
            if skipped is not None:
                skipped.append(reason)
    found.sort(key=lambda ev: (ev.start, ev.end, ev.uid))
    return found


def merged_free_busy(events: Sequence[BusyEvent], start: dt.datetime, end: dt.datetime,
                     interval_minutes: int) -> str:
    """Exchange's MergedFreeBusy: one digit per interval from ``start``, the last partial one included.

    Each digit is the highest busy type (0 free, 1 tentative, 2 busy, 3 OOF) of
    the events overlapping that interval by more than an instant; working
    elsewhere shows as free.
    """
    if interval_minutes <= 0:
        raise ValueError("interval_minutes must be greater than 0")
    start, end = to_utc(start), to_utc(end)
    step = dt.timedelta(minutes=interval_minutes)
    digits = [0] * max(0, -(-(end - start) // step))
    for ev in events:
        value = 0 if ev.busy is BusyType.WORKING_ELSEWHERE else int(ev.busy)
        lo, hi = max(ev.start, start), min(ev.end, end)
        if value == 0 or lo >= hi:
            continue
        for i in range((lo - start) // step, -(-(hi - start) // step)):
            digits[i] = max(digits[i], value)
    return "".join(map(str, digits))


def _minutes(hhmm: str) -> int:
    hours, _, minutes = hhmm.partition(":")
    return int(hours) * 60 + int(minutes)


def working_hours_from_config(cfg: AvailabilityConfig) -> WorkingHours:
    """The organisation's default working hours, days in week order (Sunday first) without repeats."""
    return WorkingHours(time_zone=cfg.time_zone, days=tuple(d for d in DAYS if d in cfg.working_days),
                        start_minutes=_minutes(cfg.working_start), end_minutes=_minutes(cfg.working_end))
