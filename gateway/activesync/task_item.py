"""Tasks class items (MS-ASTASK): a VCALENDAR holding one VTODO as AirSync:ApplicationData, and the VTODO to
store for the ApplicationData a device sends.

Choices made here where the specifications leave room:

* Dates. EAS carries StartDate and DueDate twice, as the device's wall clock and in UTC. A wall clock of
  midnight is a date-only task, stored as VALUE=DATE; any other time is stored in UTC (a device that sends
  one form only gets it back as both). The device's UTC offset (wall clock minus UTC) is kept in an X-EAS-UTC-OFFSET
  parameter so the same pair goes back. A stored TZID time goes out as its wall clock and its UTC instant.
* A Change keeps a stored property exactly as it is (TZID, parameters, relative alarm triggers, WKST...)
  when the device sends back the value it was given for it; only the fields whose values differ are written.
* Complete is STATUS:COMPLETED, a COMPLETED date or PERCENT-COMPLETE:100; anything else, CANCELLED included
  (EAS has no such state), is incomplete.
* Sensitivity: 0 is no CLASS (PUBLIC is the default), 1 X-PERSONAL, 2 PRIVATE, 3 CONFIDENTIAL; a class this
  module does not know reads as private, as RFC 5545 asks.
* Reminder: the first VALARM whose time can be computed (absolute, or relative to DTSTART or DUE). A new time
  becomes that alarm's absolute TRIGGER, its other properties kept; ReminderSet 0 removes every alarm whose
  time can be computed and keeps the others.
* Recurrence: RRULE with Start as DTSTART (a task that has no StartDate gets one from it, since RFC 5545
  counts a rule from DTSTART); Regenerate and DeadOccur as X-EAS-REGENERATE and X-EAS-DEADOCCUR properties;
  CalendarType and IsLeapMonth as X-EAS-CALENDARTYPE and X-EAS-ISLEAPMONTH parameters of the RRULE. RFC 7529
  RSCALE would say the same, but Radicale (through dateutil) refuses an object whose rule carries it, so the
  rule itself stays a Gregorian one every store can expand. A rule EAS cannot express (RSCALE's included) is
  not sent, and is kept when the device sends no Recurrence.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from icalendar import Alarm, Calendar, Journal, Todo, vBroken, vRecur
from icalendar.cal.component_factory import ComponentFactory

from .email_item import BodyOptions, ItemError
from .pimbody import body_element, body_text, legacy_body
from .wbxml import Element

__all__ = ["to_application_data", "from_application_data", "incomplete", "ItemError"]

NS = "Tasks"
UTC = timezone.utc
MAX_CATEGORIES = 300
OFFSET_PARAM = "X-EAS-UTC-OFFSET"
PRODID = "-//casgate//ActiveSync gateway//EN"
_VERSIONS = {"2.5": (2, 5), "12.0": (12, 0), "12.1": (12, 1), "14.0": (14, 0), "14.1": (14, 1),
             "16.0": (16, 0), "16.1": (16, 1)}
# What icalendar and the standard library raise for text they cannot make sense of.
PARSE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError)


# --- helpers shared with note_item ----------------------------------------------------------------------

def version_of(version: object) -> tuple[int, int]:
    if not isinstance(version, str) or version not in _VERSIONS:
        raise ItemError(f"unknown ActiveSync protocol version {version!r}")
    return _VERSIONS[version]


_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


def clean(text: str) -> str:
    """Text safe for both iCalendar and WBXML: LF line ends, no control characters, NULs or lone surrogates."""
    return _CONTROLS.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def leaf(data: Element, name: str, ns: str) -> str | None:
    """The text of a device's leaf element (an empty one is ""), None when absent."""
    element = data.find(name, ns)
    if element is None:
        return None
    if element.children or element.opaque is not None:
        raise ItemError(f"{name} must hold text")
    return element.text or ""


def number(data: Element, name: str, ns: str, low: int, high: int) -> int | None:
    text = leaf(data, name, ns)
    if not text:
        return None
    text = text.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 10) or not low <= int(text) <= high:
        raise ItemError(f"{name} {text[:20]!r} is not a number in {low}..{high}")
    return int(text)


_INSTANT = re.compile(r"(\d{4})-?(\d\d)-?(\d\d)(?:T(\d\d):?(\d\d)(?::?(\d\d)(?:\.\d{1,7})?)?)?Z?", re.ASCII)


def parse_instant(text: str, name: str) -> datetime:
    """An MS-ASDTYPE date-time, long ("2026-11-28T10:00:00.000Z") or compact ("20261128T100000Z"), naive."""
    match = _INSTANT.fullmatch(text.strip())
    if match is None:
        raise ItemError(f"{name} {text[:40]!r} is not a date-time")
    year, month, day, hour, minute, second = (int(part or 0) for part in match.groups())
    if not 1601 <= year <= 9000:
        raise ItemError(f"{name} year {year} is out of range")
    try:
        return datetime(year, month, day, hour, minute, second)
    except ValueError:
        raise ItemError(f"{name} {text[:40]!r} is not a valid date-time") from None


def instant(data: Element, name: str, ns: str) -> datetime | None:
    text = leaf(data, name, ns)
    return parse_instant(text, name) if text else None


def long_form(moment: datetime) -> str:
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
            f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}.000Z")


def as_utc(moment: datetime) -> datetime:
    """A naive UTC datetime; a naive input is taken as UTC already."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo is not None else moment


class _TolerantCalendar(Calendar):
    """A VCALENDAR in which an unreadable property (of the calendar, a task, a journal or an alarm) is kept as
    icalendar's vBroken instead of failing the whole object. The classes live in a private component factory,
    so icalendar's own classes, which other modules use, stay strict."""

    ignore_exceptions = True


def _tolerant_factory() -> ComponentFactory:
    factory = ComponentFactory()
    for kind in (Todo, Journal, Alarm):
        factory.add_component_class(type(f"Tolerant{kind.__name__}", (kind,), {"ignore_exceptions": True}))
    factory.add_component_class(_TolerantCalendar)
    return factory


_TolerantCalendar._components_factory = _tolerant_factory()


def load(text: str, kind: str) -> tuple[Calendar, Todo]:
    """The calendar in ``text`` and its main ``kind`` component (the first without RECURRENCE-ID)."""
    if not isinstance(text, str):
        raise ItemError("the stored object must be text")
    try:
        calendar = _TolerantCalendar.from_ical(text)
    except PARSE_ERRORS as exc:
        raise ItemError(f"not an iCalendar object: {str(exc)[:100]}") from None
    if isinstance(calendar, list) or calendar.name != "VCALENDAR":
        raise ItemError("not one VCALENDAR")
    found = [c for c in calendar.subcomponents if c.name == kind]
    if not found:
        raise ItemError(f"the calendar holds no {kind}")
    return calendar, next((c for c in found if "RECURRENCE-ID" not in c), found[0])


def new_calendar(kind: type, uid: str, now: datetime) -> tuple[Calendar, Todo]:
    calendar = Calendar()
    calendar.add("VERSION", "2.0")
    calendar.add("PRODID", PRODID)
    component = kind()
    component.add("UID", uid)
    component.add("DTSTAMP", now)
    component.add("CREATED", now)
    calendar.add_component(component)
    return calendar, component


def dump(calendar: Calendar) -> str:
    try:
        return calendar.to_ical().decode("utf-8")
    except PARSE_ERRORS as exc:
        raise ItemError(f"cannot write the iCalendar object: {str(exc)[:100]}") from None


def value_of(prop):
    """The value of a date, duration or trigger property; None when absent, repeated or unreadable."""
    return None if prop is None or isinstance(prop, (vBroken, list)) else getattr(prop, "dt", None)


def text_of(component, name: str) -> str | None:
    value = component.get(name)
    if isinstance(value, list):
        value = value[0] if value else None
    return (clean(str(value)) or None) if value is not None else None


def set_text(component, name: str, value: str | None) -> None:
    component.pop(name, None)
    if value:
        component.add(name, value)


def categories_of(component) -> tuple[str, ...]:
    found = component.get("CATEGORIES")
    out: list[str] = []
    for prop in found if isinstance(found, list) else [found] if found is not None else []:
        for item in getattr(prop, "cats", ()):
            name = clean(str(item)).strip()
            if name and name not in out:
                out.append(name)
    return tuple(out[:MAX_CATEGORIES])


def device_categories(data: Element, ns: str) -> tuple[str, ...]:
    element = data.find("Categories", ns)
    if element is None:
        return ()
    if element.text or element.opaque is not None:
        raise ItemError("Categories must hold Category elements")
    names = [" ".join(clean(leaf(Element(ns, "_", [c]), "Category", ns) or "").split())
             for c in element.findall("Category")]
    if len(names) > MAX_CATEGORIES:
        raise ItemError(f"more than {MAX_CATEGORIES} categories")
    return tuple(dict.fromkeys(name for name in names if name))


def set_categories(component, names: tuple[str, ...]) -> None:
    component.pop("CATEGORIES", None)
    if names:
        component.add("CATEGORIES", list(names))


def categories_element(ns: str, names: tuple[str, ...]) -> list[Element]:
    return [Element(ns, "Categories", [Element(ns, "Category", text=n) for n in names])] if names else []


def touch(component, now: datetime) -> None:
    for name in ("DTSTAMP", "LAST-MODIFIED"):
        component.pop(name, None)
        component.add(name, now)


# --- dates ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class When:
    """A task date as EAS carries it: the wall clock and the UTC instant (both naive)."""

    local: datetime
    utc: datetime

    @property
    def offset(self) -> timedelta:
        return self.local - self.utc


_OFFSET = re.compile(r"([+-])(\d\d)(\d\d)", re.ASCII)


def _offset_param(prop) -> timedelta:
    match = _OFFSET.fullmatch(str(prop.params.get(OFFSET_PARAM, "")))
    if match is None or int(match[2]) > 18 or int(match[3]) > 59:
        return timedelta(0)
    size = timedelta(hours=int(match[2]), minutes=int(match[3]))
    return size if match[1] == "+" else -size


def _format_offset(offset: timedelta) -> str:
    minutes = round(offset.total_seconds() / 60)
    return f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"


def when_of(component, name: str) -> When | None:
    prop = component.get(name)
    value = value_of(prop)
    if isinstance(value, datetime):
        if value.tzinfo is not None and value.utcoffset() != timedelta(0):
            return When(value.replace(tzinfo=None), as_utc(value))
        utc = as_utc(value) if value.tzinfo is not None else None
        offset = _offset_param(prop)
        return When(utc + offset, utc) if utc is not None else When(value, value - offset)
    if isinstance(value, date):
        midnight = datetime(value.year, value.month, value.day)
        return When(midnight, midnight - _offset_param(prop))
    return None


def _write_when(component, name: str, when: When, as_date: bool) -> None:
    component.pop(name, None)
    params = {OFFSET_PARAM: _format_offset(when.offset)} if when.offset else {}
    if as_date:
        params["VALUE"] = "DATE"
        component.add(name, when.local.date(), parameters=params)
    else:
        component.add(name, when.utc.replace(tzinfo=UTC), parameters=params)


def _device_when(data: Element, name: str) -> When | None:
    local, utc = instant(data, name, NS), instant(data, "Utc" + name, NS)
    if local is None and utc is None:
        return None
    local = utc if local is None else local
    utc = local if utc is None else utc
    if abs(local - utc) > timedelta(hours=18):
        raise ItemError(f"{name} and Utc{name} are more than 18 hours apart")
    offset = timedelta(minutes=round((local - utc).total_seconds() / 60))
    return When(local, local - offset)


# --- the EAS view of a task ------------------------------------------------------------------------------

_CLASSES = {"PUBLIC": 0, "X-PERSONAL": 1, "PRIVATE": 2, "CONFIDENTIAL": 3}
_CLASS_NAMES = {1: "X-PERSONAL", 2: "PRIVATE", 3: "CONFIDENTIAL"}
KEEP = object()  # "leave what is stored": a ReminderSet 1 without a time, a rule EAS cannot express


@dataclass(frozen=True)
class Task:
    """What EAS says of a task, read from a VTODO or from a device's ApplicationData; a Change compares the two
    field by field."""

    subject: str | None = None
    importance: int = 1
    start: When | None = None
    due: When | None = None
    complete: bool = False
    completed: datetime | None = None
    sensitivity: int = 0
    reminder: object = None          # naive UTC datetime, None, or KEEP
    categories: tuple[str, ...] = ()
    recurrence: object = None        # Rule, None, or KEEP (a stored rule EAS cannot express)


def _importance(component) -> int:
    try:
        priority = int(str(component.get("PRIORITY", 0)))
    except ValueError:
        return 1
    return 2 if 1 <= priority <= 4 else 0 if 6 <= priority <= 9 else 1


def _is_complete(component) -> bool:
    try:
        percent = int(str(component.get("PERCENT-COMPLETE", 0)))
    except ValueError:
        percent = 0
    return (str(component.get("STATUS", "")).upper() == "COMPLETED" or "COMPLETED" in component
            or percent >= 100)


def _alarm_time(alarm, start: When | None, due: When | None) -> datetime | None:
    trigger = alarm.get("TRIGGER")
    value = value_of(trigger)
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, timedelta):
        related = str(trigger.params.get("RELATED", "START")).upper()
        anchor = (due or start) if related == "END" else (start or due)
        return anchor.utc + value if anchor is not None else None
    return None


def _alarms(component, start: When | None, due: When | None) -> list[tuple[Alarm, datetime]]:
    out = []
    for alarm in component.subcomponents:
        if alarm.name == "VALARM":
            try:
                moment = _alarm_time(alarm, start, due)
            except OverflowError:
                moment = None
            if moment is not None:
                out.append((alarm, moment))
    return out


def _due_of(component, start: When | None) -> When | None:
    due = when_of(component, "DUE")
    duration = value_of(component.get("DURATION"))
    if due is None and start is not None and isinstance(duration, timedelta):
        return When(start.local + duration, start.utc + duration)
    return due


def task_of(component) -> Task:
    """What EAS can say of a stored VTODO."""
    start = when_of(component, "DTSTART")
    due = _due_of(component, start)
    completed = value_of(component.get("COMPLETED"))
    alarms = _alarms(component, start, due)
    klass = str(component.get("CLASS", "PUBLIC")).upper()
    return Task(subject=text_of(component, "SUMMARY"), importance=_importance(component), start=start, due=due,
                complete=_is_complete(component),
                completed=as_utc(completed) if isinstance(completed, datetime) else None,
                sensitivity=_CLASSES.get(klass, 2), reminder=alarms[0][1] if alarms else None,
                categories=categories_of(component), recurrence=rule_of(component, start or due))


# --- recurrence -----------------------------------------------------------------------------------------

_DAYS = ("SU", "MO", "TU", "WE", "TH", "FR", "SA")  # DayOfWeek bit i and FirstDayOfWeek i are _DAYS[i]
_FREQ = {0: "DAILY", 1: "WEEKLY", 2: "MONTHLY", 3: "MONTHLY", 5: "YEARLY", 6: "YEARLY"}
CALENDAR_PARAM, LEAP_PARAM = "X-EAS-CALENDARTYPE", "X-EAS-ISLEAPMONTH"
_RULE_PARTS = frozenset({"FREQ", "INTERVAL", "UNTIL", "COUNT", "BYDAY", "BYMONTHDAY", "BYMONTH", "BYSETPOS", "WKST"})
_BYDAY = re.compile(r"([+-]?\d{1,2})?(SU|MO|TU|WE|TH|FR|SA)", re.ASCII)


@dataclass(frozen=True)
class Rule:
    """A Tasks:Recurrence without its Start (which is DTSTART)."""

    type: int
    interval: int = 1
    until: datetime | None = None       # wall clock
    occurrences: int | None = None
    day_of_week: int | None = None
    day_of_month: int | None = None
    week_of_month: int | None = None
    month_of_year: int | None = None
    regenerate: bool = False
    dead_occur: bool = False
    calendar_type: int = 0
    is_leap_month: bool = False
    first_day_of_week: int | None = None


def _bit(moment: datetime) -> int:
    return 1 << (moment.isoweekday() % 7)


def _flag(component, name: str) -> bool:
    return str(component.get(name, "0")).strip() == "1"


def _nth(days: list[tuple[int | None, int]], month_days: list[int], positions: list[int]) -> tuple[int, int] | None:
    """(DayOfWeek, WeekOfMonth) of an "nth weekday" rule, None for a day-of-month rule; ValueError otherwise."""
    if not days and not positions:
        if month_days == [-1]:
            return 127, 5
        return None
    if month_days or len(positions) > 1:
        raise ValueError("mixed monthly rule")
    mask = sum(1 << day for _, day in days)
    if len(days) == 1 and days[0][0] is not None and not positions:
        week = days[0][0]
    elif positions and all(ordinal is None for ordinal, _ in days) and days:
        week = positions[0]
    else:
        raise ValueError("monthly rule EAS cannot express")
    if week not in (1, 2, 3, 4, -1):
        raise ValueError("week of month out of range")
    return mask, 5 if week == -1 else week


def _rule(rrule: dict, anchor: When) -> Rule:
    """The EAS form of one RRULE; ValueError when EAS cannot express it."""
    if set(rrule) - _RULE_PARTS:
        raise ValueError("rule parts EAS lacks")

    def one(key: str):
        values = rrule.get(key) or []
        if len(values) > 1:
            raise ValueError(f"several {key}")
        return values[0] if values else None

    freq = str(one("FREQ") or "").upper()
    days = []
    for text in rrule.get("BYDAY", []):
        match = _BYDAY.fullmatch(str(text).upper())
        if match is None:
            raise ValueError("bad BYDAY")
        days.append((int(match[1]) if match[1] else None, _DAYS.index(match[2])))
    month_days = [int(day) for day in rrule.get("BYMONTHDAY", [])]
    positions = [int(position) for position in rrule.get("BYSETPOS", [])]
    month = one("BYMONTH")
    until = one("UNTIL")
    if isinstance(until, datetime):
        until = until.replace(tzinfo=None) if until.tzinfo is None else as_utc(until) + anchor.offset
    elif isinstance(until, date):
        until = datetime(until.year, until.month, until.day)
    week_start = one("WKST")
    fields = dict(interval=int(one("INTERVAL") or 1), until=until, occurrences=int(one("COUNT") or 0) or None,
                  first_day_of_week=_DAYS.index(str(week_start).upper()) if week_start else None)
    if not 1 <= fields["interval"] <= 999 or (fields["occurrences"] or 0) > 999:
        raise ValueError("interval or count out of the range EAS has")
    mask = sum(1 << day for _, day in days) or None
    if freq in ("DAILY", "WEEKLY"):
        if month_days or positions or month is not None or any(ordinal is not None for ordinal, _ in days):
            raise ValueError("daily or weekly rule EAS cannot express")
        if freq == "DAILY":
            return Rule(0, day_of_week=mask, **fields)
        return Rule(1, day_of_week=mask or _bit(anchor.local), **fields)
    if freq not in ("MONTHLY", "YEARLY") or (freq == "MONTHLY" and month is not None):
        raise ValueError("frequency EAS cannot express")
    yearly = freq == "YEARLY"
    month_of_year = (int(month) if month is not None else anchor.local.month) if yearly else None
    if month_of_year is not None and not 1 <= month_of_year <= 12:
        raise ValueError("month out of range")
    nth = _nth(days, month_days, positions)
    if nth is None:
        if len(month_days) > 1 or (month_days and not 1 <= month_days[0] <= 31):
            raise ValueError("day of month EAS cannot express")
        return Rule(5 if yearly else 2, day_of_month=month_days[0] if month_days else anchor.local.day,
                    month_of_year=month_of_year, **fields)
    return Rule(6 if yearly else 3, day_of_week=nth[0], week_of_month=nth[1], month_of_year=month_of_year,
                **fields)


def rule_of(component, anchor: When | None):
    """The Rule of a VTODO's RRULE; None without one; KEEP for a rule (or rules) EAS cannot express."""
    rrule = component.get("RRULE")
    if rrule is None:
        return None
    if not isinstance(rrule, dict) or anchor is None:
        return KEEP
    try:
        rule = _rule(rrule, anchor)
    except PARSE_ERRORS:
        return KEEP
    params = getattr(rrule, "params", {})
    kind = str(params.get(CALENDAR_PARAM, "0"))
    return dataclasses.replace(rule, regenerate=_flag(component, "X-EAS-REGENERATE"),
                               dead_occur=_flag(component, "X-EAS-DEADOCCUR"),
                               calendar_type=int(kind) if kind.isascii() and kind.isdigit() and len(kind) < 4 else 0,
                               is_leap_month=str(params.get(LEAP_PARAM, "0")) == "1")


def _rule_element(rule: Rule, anchor: When, version: tuple[int, int]) -> Element:
    def item(name: str, value) -> list[Element]:
        return [] if value is None else [Element(NS, name, text=str(int(value)))]

    out = [Element(NS, "Type", text=str(rule.type)), Element(NS, "Start", text=long_form(anchor.local))]
    out += [Element(NS, "Until", text=long_form(rule.until))] if rule.until and not rule.occurrences else []
    out += item("Occurrences", rule.occurrences) + item("Interval", rule.interval)
    out += item("DayOfMonth", rule.day_of_month) + item("DayOfWeek", rule.day_of_week)
    out += item("WeekOfMonth", rule.week_of_month) + item("MonthOfYear", rule.month_of_year)
    out += item("Regenerate", rule.regenerate) + item("DeadOccur", rule.dead_occur)
    if version >= (14, 0):
        out += item("CalendarType", rule.calendar_type) + item("IsLeapMonth", rule.is_leap_month)
    if version >= (14, 1):
        out += item("FirstDayOfWeek", rule.first_day_of_week)
    return Element(NS, "Recurrence", out)


def _device_rule(data: Element) -> tuple[Rule, datetime | None] | None:
    element = data.find("Recurrence", NS)
    if element is None:
        return None
    if element.text or element.opaque is not None:
        raise ItemError("Recurrence must hold elements")

    def get(name: str, low: int, high: int) -> int | None:
        return number(element, name, NS, low, high)

    kind = get("Type", 0, 6)
    if kind is None or kind == 4:
        raise ItemError("Recurrence needs a Type of 0, 1, 2, 3, 5 or 6")
    rule = Rule(kind, interval=get("Interval", 0, 999) or 1, until=instant(element, "Until", NS),
                occurrences=get("Occurrences", 0, 999) or None, day_of_week=get("DayOfWeek", 1, 127),
                day_of_month=get("DayOfMonth", 1, 31), week_of_month=get("WeekOfMonth", 1, 5),
                month_of_year=get("MonthOfYear", 1, 12), regenerate=bool(get("Regenerate", 0, 1)),
                dead_occur=bool(get("DeadOccur", 0, 1)), calendar_type=get("CalendarType", 0, 255) or 0,
                is_leap_month=bool(get("IsLeapMonth", 0, 1)), first_day_of_week=get("FirstDayOfWeek", 0, 6))
    if kind in (3, 6) and (rule.day_of_week is None or rule.week_of_month is None):
        raise ItemError("a monthly or yearly nth-day Recurrence needs DayOfWeek and WeekOfMonth")
    if kind in (5, 6) and rule.month_of_year is None:
        raise ItemError("a yearly Recurrence needs MonthOfYear")
    return rule, instant(element, "Start", NS)


def _until_text(component, until: datetime) -> str:
    """UNTIL in the value type of the rule's DTSTART, as RFC 5545 requires."""
    anchor = value_of(component.get("DTSTART"))
    if not isinstance(anchor, datetime):
        return f"{until.year:04d}{until.month:02d}{until.day:02d}"
    if anchor.tzinfo is None:
        return f"{until:%Y%m%dT%H%M%S}"
    if anchor.utcoffset() == timedelta(0):
        moment = until - (when_of(component, "DTSTART") or When(until, until)).offset
    else:
        moment = as_utc(until.replace(tzinfo=anchor.tzinfo))
    return f"{moment:%Y%m%dT%H%M%S}Z"


def _write_rule(component, rule: Rule) -> None:
    parts = [f"FREQ={_FREQ[rule.type]}"]
    if rule.interval > 1:
        parts.append(f"INTERVAL={rule.interval}")
    if rule.occurrences:
        parts.append(f"COUNT={rule.occurrences}")
    elif rule.until:
        parts.append(f"UNTIL={_until_text(component, rule.until)}")
    days = [name for bit, name in enumerate(_DAYS) if (rule.day_of_week or 0) >> bit & 1]
    if rule.type in (5, 6):
        parts.append(f"BYMONTH={rule.month_of_year}")
    if rule.type in (0, 1) and days:
        parts.append(f"BYDAY={','.join(days)}")
    elif rule.type in (2, 5) and rule.day_of_month:
        parts.append(f"BYMONTHDAY={rule.day_of_month}")
    elif rule.type in (3, 6):
        week = -1 if rule.week_of_month == 5 else rule.week_of_month
        parts.append(f"BYDAY={week}{days[0]}" if len(days) == 1 else f"BYDAY={','.join(days)};BYSETPOS={week}")
    if rule.first_day_of_week is not None:
        parts.append(f"WKST={_DAYS[rule.first_day_of_week]}")
    for name in ("RRULE", "RDATE", "X-EAS-REGENERATE", "X-EAS-DEADOCCUR"):
        component.pop(name, None)
    params = {CALENDAR_PARAM: str(rule.calendar_type)} if rule.calendar_type else {}
    if rule.is_leap_month:
        params[LEAP_PARAM] = "1"
    component.add("RRULE", vRecur.from_ical(";".join(parts)), parameters=params)
    for name, value in (("X-EAS-REGENERATE", rule.regenerate), ("X-EAS-DEADOCCUR", rule.dead_occur)):
        if value:
            component.add(name, "1")


# --- ApplicationData out ---------------------------------------------------------------------------------

def _render(task: Task, body: str, version: tuple[int, int], options: BodyOptions) -> Element:
    def item(name: str, value: str) -> Element:
        return Element(NS, name, text=value)

    out = [body_element(body, options, version)] if version >= (12, 0) else legacy_body(NS, body, options)
    out += categories_element(NS, task.categories)
    out.append(item("Complete", str(int(task.complete))))
    if task.complete and task.completed is not None:
        out.append(item("DateCompleted", long_form(task.completed)))
    if task.due is not None:
        out += [item("DueDate", long_form(task.due.local)), item("UtcDueDate", long_form(task.due.utc))]
    out.append(item("Importance", str(task.importance)))
    anchor = task.start or task.due
    if isinstance(task.recurrence, Rule) and anchor is not None:
        out.append(_rule_element(task.recurrence, anchor, version))
    out.append(item("ReminderSet", "1" if isinstance(task.reminder, datetime) else "0"))
    if isinstance(task.reminder, datetime):
        out.append(item("ReminderTime", long_form(task.reminder)))
    out.append(item("Sensitivity", str(task.sensitivity)))
    if task.start is not None:
        out += [item("StartDate", long_form(task.start.local)), item("UtcStartDate", long_form(task.start.utc))]
    if task.subject:
        out.append(item("Subject", task.subject))
    return Element("AirSync", "ApplicationData", out)


def to_application_data(text: str, version: str, options: BodyOptions | None = None) -> Element:
    """The AirSync:ApplicationData of a stored VTODO for protocol ``version``; ItemError when it cannot be read."""
    v = version_of(version)
    _, todo = load(text, "VTODO")
    try:
        return _render(task_of(todo), text_of(todo, "DESCRIPTION") or "", v, options or BodyOptions())
    except ItemError:
        raise
    except PARSE_ERRORS as exc:
        raise ItemError(f"task cannot be converted: {str(exc)[:100]}") from None


def incomplete(text: str) -> bool:
    """Whether a stored task is still to do (Sync FilterType 8 sends only these); ItemError if unreadable."""
    return not _is_complete(load(text, "VTODO")[1])


# --- ApplicationData in ----------------------------------------------------------------------------------

def _device_task(data: Element) -> Task:
    start, due = _device_when(data, "StartDate"), _device_when(data, "DueDate")
    recurrence = _device_rule(data)
    if recurrence is not None and start is None:
        anchor = recurrence[1] or (due.local if due is not None else None)
        if anchor is None:
            raise ItemError("a recurring task needs a Start, StartDate or DueDate")
        start = When(anchor, anchor - (due.offset if due is not None else timedelta(0)))
    if start is not None and due is not None and due.local < start.local:
        raise ItemError("DueDate is before StartDate")
    reminder_set, reminder_time = number(data, "ReminderSet", NS, 0, 1), instant(data, "ReminderTime", NS)
    if reminder_set == 0:
        reminder = None
    else:
        reminder = reminder_time if reminder_time is not None else KEEP if reminder_set else None
    return Task(subject=clean(leaf(data, "Subject", NS) or "") or None,
                importance=number(data, "Importance", NS, 0, 2) if leaf(data, "Importance", NS) else 1,
                start=start, due=due, complete=bool(number(data, "Complete", NS, 0, 1)),
                completed=instant(data, "DateCompleted", NS),
                sensitivity=number(data, "Sensitivity", NS, 0, 3) or 0, reminder=reminder,
                categories=device_categories(data, NS), recurrence=recurrence[0] if recurrence else None)


def _apply_dates(todo, old: Task, new: Task) -> bool:
    """Write DTSTART and DUE when either changed, both in one value type (RFC 5545); True if they did."""
    if (new.start, new.due) == (old.start, old.due):
        return False
    for name in ("DTSTART", "DUE", "DURATION"):
        todo.pop(name, None)
    as_dates = all(w.local.time() == datetime.min.time() for w in (new.start, new.due) if w is not None)
    for name, when in (("DTSTART", new.start), ("DUE", new.due)):
        if when is not None:
            _write_when(todo, name, when, as_dates)
    return True


def _apply_completion(todo, old: Task, new: Task, now: datetime) -> None:
    completed = (new.completed or old.completed) if new.complete else None
    if (new.complete, completed) == (old.complete, old.completed if old.complete else None):
        return
    todo.pop("COMPLETED", None)
    if new.complete:
        for name, value in (("STATUS", "COMPLETED"), ("PERCENT-COMPLETE", 100)):
            todo.pop(name, None)
            todo.add(name, value)
        todo.add("COMPLETED", (completed or now).replace(tzinfo=UTC))
        return
    if str(todo.get("STATUS", "")).upper() == "COMPLETED":
        todo.pop("STATUS")
        todo.add("STATUS", "NEEDS-ACTION")
    if _is_complete(todo):
        todo.pop("PERCENT-COMPLETE", None)


def _apply_reminder(todo, before: list, new: Task) -> None:
    if new.reminder is KEEP:
        return
    start = when_of(todo, "DTSTART")
    now_alarms = _alarms(todo, start, _due_of(todo, start))
    if new.reminder is None:
        doomed = {id(alarm) for alarm, _ in before + now_alarms}
        todo.subcomponents = [c for c in todo.subcomponents if id(c) not in doomed]
        return
    if now_alarms and now_alarms[0][1] == new.reminder:
        return
    alarm = now_alarms[0][0] if now_alarms else before[0][0] if before else None
    if alarm is None:
        alarm = Alarm()
        alarm.add("ACTION", "DISPLAY")
        alarm.add("DESCRIPTION", new.subject or "Reminder")
        todo.add_component(alarm)
    alarm.pop("TRIGGER", None)
    alarm.add("TRIGGER", new.reminder.replace(tzinfo=UTC), parameters={"VALUE": "DATE-TIME"})


def _apply(todo, old: Task, new: Task, version: tuple[int, int], now: datetime) -> None:
    alarms_before = _alarms(todo, old.start, old.due)
    if new.subject != old.subject:
        set_text(todo, "SUMMARY", new.subject)
    if new.importance != old.importance:
        todo.pop("PRIORITY", None)
        todo.add("PRIORITY", {0: 9, 1: 5, 2: 1}[new.importance])
    if new.sensitivity != old.sensitivity:
        todo.pop("CLASS", None)
        if new.sensitivity:
            todo.add("CLASS", _CLASS_NAMES[new.sensitivity])
    if new.categories != old.categories:
        set_categories(todo, new.categories)
    dates_changed = _apply_dates(todo, old, new)
    _apply_completion(todo, old, new, now)
    _apply_reminder(todo, alarms_before, new)
    rule = new.recurrence
    if rule is None:
        if old.recurrence is not KEEP:
            for name in ("RRULE", "RDATE", "EXDATE", "X-EAS-REGENERATE", "X-EAS-DEADOCCUR"):
                todo.pop(name, None)
        return
    if isinstance(old.recurrence, Rule):  # what this device's version cannot say stays as stored
        if version < (14, 0):
            rule = dataclasses.replace(rule, calendar_type=old.recurrence.calendar_type,
                                       is_leap_month=old.recurrence.is_leap_month)
        if version < (14, 1):
            rule = dataclasses.replace(rule, first_day_of_week=old.recurrence.first_day_of_week)
    if rule != old.recurrence or dates_changed:
        _write_rule(todo, rule)


def from_application_data(data: Element, version: str, previous: str | None = None, *,
                          now: datetime | None = None) -> str:
    """The iCalendar text to store for a device's Tasks ApplicationData: a new VTODO for an Add (``previous``
    None), else ``previous`` with the fields EAS carries replaced. ItemError on invalid input."""
    v = version_of(version)
    if not isinstance(data, Element):
        raise ItemError("ApplicationData must be an Element")
    moment = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0, tzinfo=None)
    new = _device_task(data)
    body = body_text(data, NS)
    if previous is None:
        calendar, todo = new_calendar(Todo, str(uuid.uuid4()), moment.replace(tzinfo=UTC))
    else:
        calendar, todo = load(previous, "VTODO")
    try:
        old = task_of(todo) if previous is not None else Task()
        _apply(todo, old, new, v, moment)
        if body is not None and clean(body) != (text_of(todo, "DESCRIPTION") or ""):
            set_text(todo, "DESCRIPTION", clean(body))
            todo.pop("X-ALT-DESC", None)  # Outlook's HTML copy of the old description would contradict it
        touch(todo, moment.replace(tzinfo=UTC))
    except ItemError:
        raise
    except PARSE_ERRORS as exc:
        raise ItemError(f"task cannot be stored: {str(exc)[:100]}") from None
    return dump(calendar)
