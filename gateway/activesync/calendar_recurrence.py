"""RRULE <-> EAS Recurrence, and the dates that name one instance of a series (Exceptions, EXDATE)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Iterable

from .calendar_ical import _DAYS, _UTC, _compact, _el, _has, _instant, _local_date, _number, _utc
from .email_item import ItemError
from .wbxml import Element

_LUNAR = frozenset({6, 8, 14, 15, 20})   # CalendarType values whose months are not Gregorian months
_RRULE_KEYS = frozenset({"FREQ", "INTERVAL", "COUNT", "UNTIL", "BYDAY", "BYMONTHDAY", "BYMONTH", "BYSETPOS",
                         "WKST"})


# --- recurrence out -------------------------------------------------------------------------------------------

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


# --- recurrence in --------------------------------------------------------------------------------------------

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


# --- instances ------------------------------------------------------------------------------------------------

def _exdates(event) -> list[dt.date | dt.datetime]:
    value = event.get("EXDATE")
    out = []
    for prop in value if isinstance(value, list) else [] if value is None else [value]:
        out.extend(item.dt for item in getattr(prop, "dts", []))
    return out


def _instance_ids(rid: dt.date | dt.datetime, v: tuple[int, int]) -> list[Element]:
    out = []
    if _has(v, "Exception/ExceptionStartTime"):
        out.append(_el("ExceptionStartTime", _compact(_utc(rid))))
    if _has(v, "Exception/InstanceId"):
        out.append(_el("InstanceId", _compact(_utc(rid)), "AirSyncBase"))
    return out


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


def _set_list(event, name: str, values: list) -> None:
    event.pop(name, None)
    for value in sorted(values, key=_utc):
        event.add(name, value)
