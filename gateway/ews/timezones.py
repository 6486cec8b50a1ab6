"""Windows-style time zone rules: read from and written to EWS TimeZone elements, and usable as tzinfo."""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass

from lxml import etree

from .soap import sub, t

__all__ = ["WEEKDAYS", "LAST", "Change", "Rule", "RuleTimeZone", "rule_from_xml", "rule_to_xml"]

WEEKDAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")  # Windows order
LAST = -1  # occurrence meaning "the last such weekday of the month" (DayOrder 5 on the wire)


@dataclass(frozen=True)
class Change:
    """A yearly clock change: the ``occurrence``-th ``weekday`` (0 = Sunday) of ``month`` (LAST = the last one),
    or with ``fixed_day`` the ``occurrence``-th day of the month; ``time`` is seconds after local midnight."""

    month: int
    weekday: int
    occurrence: int
    time: int
    fixed_day: bool = False

    def local(self, year: int) -> dt.datetime:
        """When the change happens in ``year``, as wall time of the period it ends."""
        days = calendar.monthrange(year, self.month)[1]
        if self.fixed_day:
            day = min(self.occurrence, days)
        else:
            first = (self.weekday - (dt.date(year, self.month, 1).weekday() + 1)) % 7 + 1
            day = first + 7 * (self.occurrence - 1)
            if self.occurrence == LAST or day > days:
                day = first + 7 * ((days - first) // 7)
        return dt.datetime(year, self.month, day) + dt.timedelta(seconds=self.time)


@dataclass(frozen=True)
class Rule:
    """One year's Windows TIME_ZONE_INFORMATION: UTC = local + bias + (standard_bias or daylight_bias), minutes."""

    bias: int
    standard_bias: int = 0
    daylight_bias: int = 0
    to_standard: Change | None = None
    to_daylight: Change | None = None

    @property
    def standard_offset(self) -> dt.timedelta:
        return dt.timedelta(minutes=-(self.bias + self.standard_bias))

    @property
    def daylight_offset(self) -> dt.timedelta:
        return dt.timedelta(minutes=-(self.bias + self.daylight_bias))

    @property
    def has_dst(self) -> bool:
        return (self.to_standard is not None and self.to_daylight is not None
                and self.standard_offset != self.daylight_offset)


class RuleTimeZone(dt.tzinfo):
    """A tzinfo following one Rule every year, with PEP 495 fold semantics at the changes."""

    def __init__(self, rule: Rule, name: str | None = None) -> None:
        self.rule, self.name = rule, name

    def __repr__(self) -> str:
        return f"RuleTimeZone({self.rule!r})"

    def _changes(self, year: int) -> list[tuple[dt.datetime, dt.timedelta]]:
        r = self.rule
        assert r.to_daylight is not None and r.to_standard is not None
        # Each change's time is wall time of the period it ends (as Windows defines it).
        return [(r.to_daylight.local(year) - r.standard_offset, r.daylight_offset),
                (r.to_standard.local(year) - r.daylight_offset, r.standard_offset)]

    def offset_at(self, utc: dt.datetime) -> dt.timedelta:
        """The offset in force at a naive UTC instant."""
        if not self.rule.has_dst:
            return self.rule.standard_offset
        changes = sorted(c for y in (utc.year - 1, utc.year, utc.year + 1) for c in self._changes(y))
        current = changes[0][1]
        for when, offset in changes:
            if when > utc:
                break
            current = offset
        return current

    def utcoffset(self, when: dt.datetime | None) -> dt.timedelta:
        std, dst = self.rule.standard_offset, self.rule.daylight_offset
        if when is None or not self.rule.has_dst:
            return std
        wall = when.replace(tzinfo=None)
        fits = [off for off in (std, dst) if self.offset_at(wall - off) == off]
        if len(fits) == 1:
            return fits[0]
        larger, smaller = max(std, dst), min(std, dst)  # the larger offset names the earlier instant
        if fits:  # clocks went back: fold 0 is the first time round
            return smaller if when.fold else larger
        # Clocks went forward over this wall time: fold 0 keeps the offset from before the change.
        return self.offset_at(wall - (smaller if when.fold else larger))

    def dst(self, when: dt.datetime | None) -> dt.timedelta:
        return self.utcoffset(when) - self.rule.standard_offset

    def tzname(self, when: dt.datetime | None) -> str | None:
        return self.name

    def fromutc(self, when: dt.datetime) -> dt.datetime:
        utc = when.replace(tzinfo=None)
        offset = self.offset_at(utc)
        local = (utc + offset).replace(tzinfo=self)
        return local if self.utcoffset(local) == offset else local.replace(fold=1)


# --- the availability TimeZone element (SerializableTimeZone) ---------------------------------------------


def _int(elem: etree._Element, name: str, default: int | None = None) -> int:
    child = elem.find(t(name))
    if child is None or not (child.text or "").strip():
        if default is None:
            raise ValueError(f"{name} is missing")
        return default
    return int(child.text.strip())


def _change_from_xml(elem: etree._Element) -> Change | None:
    month = _int(elem, "Month")
    if month == 0:
        return None  # Windows: no change at all
    if not 1 <= month <= 12:
        raise ValueError(f"Month {month} is out of range")
    hh, mm, ss = (int(part) for part in (elem.findtext(t("Time")) or "").strip().split(":"))
    if not (0 <= hh < 24 and 0 <= mm < 60 and 0 <= ss < 60):
        raise ValueError("Time is out of range")
    order = _int(elem, "DayOrder")
    weekday = WEEKDAYS.index((elem.findtext(t("DayOfWeek")) or "").strip())
    if elem.find(t("Year")) is not None:  # an absolute date, as in Windows: DayOrder is the day of the month
        if not 1 <= order <= 31:
            raise ValueError(f"DayOrder {order} is not a day of the month")
        return Change(month, weekday, order, hh * 3600 + mm * 60 + ss, fixed_day=True)
    if order not in (1, 2, 3, 4, 5, LAST):
        raise ValueError(f"DayOrder {order} is out of range")
    return Change(month, weekday, LAST if order == 5 else order, hh * 3600 + mm * 60 + ss)


def rule_from_xml(elem: etree._Element) -> Rule:
    """The Rule of a t:TimeZone element; raises ValueError when it is incomplete or out of range."""
    bias = _int(elem, "Bias")
    std, dst = elem.find(t("StandardTime")), elem.find(t("DaylightTime"))
    if std is None or dst is None:
        rule = Rule(bias)
    else:
        to_standard, to_daylight = _change_from_xml(std), _change_from_xml(dst)
        if to_standard is None or to_daylight is None:
            rule = Rule(bias, _int(std, "Bias"))
        else:
            rule = Rule(bias, _int(std, "Bias"), _int(dst, "Bias"), to_standard, to_daylight)
    # tzinfo offsets must lie strictly within a day; real zones stay within 14 hours.
    if any(abs(offset) > dt.timedelta(hours=18) for offset in (rule.standard_offset, rule.daylight_offset)):
        raise ValueError("the biases add up to more than 18 hours")
    return rule


def _change_to_xml(parent: etree._Element, tag: str, bias: int, change: Change | None) -> None:
    elem = sub(parent, t(tag))
    sub(elem, t("Bias"), str(bias))
    seconds = change.time if change else 0
    sub(elem, t("Time"), f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}")
    sub(elem, t("DayOrder"), str(0 if change is None else 5 if change.occurrence == LAST else change.occurrence))
    sub(elem, t("Month"), str(change.month if change else 0))
    sub(elem, t("DayOfWeek"), WEEKDAYS[change.weekday if change else 0])


def rule_to_xml(parent: etree._Element, rule: Rule) -> etree._Element:
    """Append a t:TimeZone element for ``rule`` (no clock changes are written as Month 0)."""
    elem = sub(parent, t("TimeZone"))
    sub(elem, t("Bias"), str(rule.bias))
    dst = rule.has_dst
    _change_to_xml(elem, "StandardTime", rule.standard_bias, rule.to_standard if dst else None)
    _change_to_xml(elem, "DaylightTime", rule.daylight_bias if dst else rule.standard_bias,
                   rule.to_daylight if dst else None)
    return elem


class WallClock:
    """Writes UTC instants as wall time in one zone, fast: the zone is asked once per UTC day.

    A free/busy answer can hold tens of thousands of times; converting each through
    a rule-based tzinfo costs tens of microseconds. Offsets only change at
    transitions, which fall on quarter hours of UTC in every real zone, so a day
    whose offset is the same at both ends is constant throughout, and a day with a
    transition is looked up per quarter hour.
    """

    _QUARTER = 900

    def __init__(self, tz: dt.tzinfo) -> None:
        self.tz = tz
        self._days: dict[int, dt.timedelta | None] = {}
        self._quarters: dict[int, dt.timedelta] = {}
        self._walls: dict[dt.datetime, str] = {}  # meetings share start and end times across mailboxes

    def _offset_at(self, when: dt.datetime) -> dt.timedelta:
        return when.astimezone(self.tz).utcoffset() or dt.timedelta(0)

    def offset(self, when: dt.datetime) -> dt.timedelta:
        utc = when.astimezone(dt.timezone.utc)
        day = utc.toordinal()
        if day not in self._days:
            start = dt.datetime(utc.year, utc.month, utc.day, tzinfo=dt.timezone.utc)
            first = self._offset_at(start)
            last = self._offset_at(start + dt.timedelta(days=1) - dt.timedelta(seconds=1))
            self._days[day] = first if first == last else None
        constant = self._days[day]
        if constant is not None:
            return constant
        quarter = int(utc.timestamp()) // self._QUARTER
        if quarter not in self._quarters:
            self._quarters[quarter] = self._offset_at(
                dt.datetime.fromtimestamp(quarter * self._QUARTER, dt.timezone.utc))
        return self._quarters[quarter]

    def wall(self, when: dt.datetime) -> str:
        """ISO 8601 wall time without offset, seconds precision, as Exchange writes these."""
        text = self._walls.get(when)
        if text is None:
            local = when.astimezone(dt.timezone.utc) + self.offset(when)
            text = self._walls[when] = local.replace(tzinfo=None, microsecond=0).isoformat()
        return text
