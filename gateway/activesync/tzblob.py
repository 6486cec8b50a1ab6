"""EAS time zone blobs (MS-ASDTYPE 2.7.6: a Windows TIME_ZONE_INFORMATION, 172 bytes) to and from tzinfo.

A blob holds one year's rule: a bias, and optionally two yearly clock changes
written as Windows SYSTEMTIMEs ("the 5th = last Sunday of October at 03:00",
local wall time of the period that ends). ``blob_for`` derives the rule a zone
follows in one year; ``zone_for`` goes back, preferring a real IANA zone whose
clock changes in that year are exactly the blob's, and otherwise returns a
``RuleZone`` that follows the blob every year, named like ``Custom/Bias-60``.
``vtimezone_for`` writes the VTIMEZONE a stored object needs for either.

Everything here is pure; bad blobs raise ``ItemError`` and nothing else.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import datetime as dt
import functools
import re
import struct
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import icalendar

from .email_item import ItemError

__all__ = ["BLOB_SIZE", "Change", "Rule", "RuleZone", "parse_blob", "pack_rule", "rule_for", "blob_for",
           "zone_for", "tzid_for", "vtimezone_for", "decode_b64", "ItemError"]

BLOB_SIZE = 172
# Bias, StandardName, StandardDate (8 WORDs), StandardBias, DaylightName, DaylightDate, DaylightBias.
_LAYOUT = struct.Struct("<i64s8Hi64s8Hi")
_UTC = dt.timezone.utc
_DAY = 86400
_MAX_OFFSET = dt.timedelta(hours=18)  # tzinfo offsets must stay within a day; real zones stay within 14 h
_BYDAY = ("SU", "MO", "TU", "WE", "TH", "FR", "SA")  # Windows numbers weekdays from Sunday
_ZONE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+){0,2}")

# Zones tried, in this order, when a blob has to be matched to an IANA name: where several share the same
# rules (Berlin, Paris, Rome...), the first one is the answer unless the caller prefers another.
COMMON_ZONES = (
    "UTC", "Europe/London", "Europe/Dublin", "Europe/Lisbon", "Europe/Berlin", "Europe/Paris", "Europe/Amsterdam",
    "Europe/Brussels", "Europe/Madrid", "Europe/Rome", "Europe/Vienna", "Europe/Zurich", "Europe/Stockholm",
    "Europe/Oslo", "Europe/Copenhagen", "Europe/Warsaw", "Europe/Prague", "Europe/Budapest", "Europe/Athens",
    "Europe/Helsinki", "Europe/Kyiv", "Europe/Bucharest", "Europe/Istanbul", "Europe/Moscow",
    "America/New_York", "America/Chicago", "America/Denver", "America/Phoenix", "America/Los_Angeles",
    "America/Anchorage", "Pacific/Honolulu", "America/Halifax", "America/St_Johns", "America/Mexico_City",
    "America/Bogota", "America/Lima", "America/Caracas", "America/Santiago", "America/Sao_Paulo",
    "America/Argentina/Buenos_Aires", "Asia/Dubai", "Asia/Karachi", "Asia/Kolkata", "Asia/Kathmandu",
    "Asia/Dhaka", "Asia/Bangkok", "Asia/Jakarta", "Asia/Shanghai", "Asia/Hong_Kong", "Asia/Singapore",
    "Asia/Taipei", "Asia/Manila", "Asia/Tokyo", "Asia/Seoul", "Asia/Jerusalem", "Asia/Tehran", "Asia/Riyadh",
    "Australia/Perth", "Australia/Darwin", "Australia/Adelaide", "Australia/Brisbane", "Australia/Sydney",
    "Australia/Melbourne", "Australia/Hobart", "Pacific/Auckland", "Africa/Johannesburg", "Africa/Lagos",
    "Africa/Cairo", "Africa/Nairobi", "Africa/Casablanca")


@dataclass(frozen=True)
class Change:
    """A yearly clock change as a Windows SYSTEMTIME: the ``week``-th (5 = last) ``weekday`` (0 = Sunday) of
    ``month`` at ``hour``:``minute``:``second``.``millis`` wall time; with ``year`` set (an "absolute" date),
    ``week`` is the day of the month instead."""

    month: int
    weekday: int
    week: int
    hour: int
    minute: int = 0
    second: int = 0
    millis: int = 0
    year: int = 0

    def local(self, year: int) -> dt.datetime:
        """When the change happens in ``year``, as wall time of the period it ends."""
        days = calendar.monthrange(year, self.month)[1]
        if self.year:
            day = min(self.week, days)
        else:
            first = (self.weekday - (dt.date(year, self.month, 1).weekday() + 1)) % 7 + 1
            day = first + 7 * (self.week - 1)
            while day > days:  # "5" (and a 4th that does not exist, which Windows reads the same way)
                day -= 7
        return dt.datetime(year, self.month, day, self.hour, self.minute, self.second, self.millis * 1000)

    def words(self) -> tuple[int, ...]:
        return (self.year, self.month, self.weekday, self.week, self.hour, self.minute, self.second, self.millis)


@dataclass(frozen=True)
class Rule:
    """One TIME_ZONE_INFORMATION: UTC = local + bias + (standard_bias or daylight_bias), in minutes."""

    bias: int
    standard: Change | None = None
    daylight: Change | None = None
    standard_bias: int = 0
    daylight_bias: int = 0
    standard_name: str = ""
    daylight_name: str = ""

    @property
    def standard_offset(self) -> dt.timedelta:
        return dt.timedelta(minutes=-(self.bias + self.standard_bias))

    @property
    def daylight_offset(self) -> dt.timedelta:
        return dt.timedelta(minutes=-(self.bias + self.daylight_bias))

    @property
    def has_dst(self) -> bool:
        return (self.standard is not None and self.daylight is not None
                and self.standard_offset != self.daylight_offset)

    def same_clock(self, other: Rule) -> bool:
        """Whether both rules describe the same clock (names aside)."""
        if self.has_dst != other.has_dst or self.standard_offset != other.standard_offset:
            return False
        return not self.has_dst or (self.daylight_offset, self.standard, self.daylight) == (
            other.daylight_offset, other.standard, other.daylight)


# --- bytes ----------------------------------------------------------------------------------------------

def decode_b64(text: str | None) -> bytes:
    """The bytes of a Timezone element's base64 text; ItemError when it is not base64 of one blob."""
    try:
        raw = base64.b64decode("".join((text or "").split()), validate=True)
    except (binascii.Error, ValueError):
        raise ItemError("Timezone is not valid base64") from None
    if len(raw) != BLOB_SIZE:
        raise ItemError(f"Timezone holds {len(raw)} bytes; a TIME_ZONE_INFORMATION has {BLOB_SIZE}")
    return raw


def _name(raw: bytes) -> str:
    text = raw.decode("utf-16-le", "replace")
    return text.split("\x00", 1)[0]


def _change(words: tuple[int, ...], which: str) -> Change | None:
    year, month, weekday, day, hour, minute, second, millis = words
    if month == 0:
        return None
    if not (1 <= month <= 12 and weekday <= 6 and hour <= 23 and minute <= 59 and second <= 59 and millis <= 999):
        raise ItemError(f"Timezone {which}Date is not a valid SYSTEMTIME: {words}")
    if not (1 <= day <= (31 if year else 5)):
        raise ItemError(f"Timezone {which}Date day {day} is out of range")
    return Change(month, weekday, day, hour, minute, second, millis, year)


def parse_blob(blob: bytes) -> Rule:
    """The Rule of a 172-byte blob; ItemError when the blob is malformed or out of range."""
    if not isinstance(blob, (bytes, bytearray)) or len(blob) != BLOB_SIZE:
        raise ItemError(f"a Timezone blob has {BLOB_SIZE} bytes")
    fields = _LAYOUT.unpack(bytes(blob))
    bias, std_name, std_words, std_bias = fields[0], fields[1], fields[2:10], fields[10]
    dst_name, dst_words, dst_bias = fields[11], fields[12:20], fields[20]
    standard, daylight = _change(std_words, "Standard"), _change(dst_words, "Daylight")
    if standard is None or daylight is None:  # Windows ignores half a rule: no clock changes at all
        standard = daylight = None
        dst_bias = std_bias
    rule = Rule(bias, standard, daylight, std_bias, dst_bias, _name(std_name), _name(dst_name))
    for offset in (rule.standard_offset, rule.daylight_offset):
        if abs(offset) >= _MAX_OFFSET:
            raise ItemError(f"Timezone biases add up to {offset}, beyond any time zone")
    return rule


def _name_bytes(name: str) -> bytes:
    raw = name.encode("utf-16-le")[:62]
    return raw[:len(raw) - len(raw) % 2]  # struct pads with NULs to 64 bytes, keeping a terminator


def pack_rule(rule: Rule) -> bytes:
    """The 172-byte blob of ``rule``."""
    empty = (0,) * 8
    std = rule.standard.words() if rule.has_dst else empty
    dst = rule.daylight.words() if rule.has_dst else empty
    return _LAYOUT.pack(rule.bias, _name_bytes(rule.standard_name), *std, rule.standard_bias,
                        _name_bytes(rule.daylight_name), *dst, rule.daylight_bias if rule.has_dst else 0)


# --- a zone's rule for one year ---------------------------------------------------------------------------

def _offset_at(zone: dt.tzinfo, ts: int) -> dt.timedelta:
    return dt.datetime.fromtimestamp(ts, zone).utcoffset() or dt.timedelta(0)


def _transitions(zone: dt.tzinfo, year: int) -> tuple[dt.timedelta, tuple[tuple[int, dt.timedelta], ...]]:
    """(offset at the start of ``year`` UTC, ((UTC timestamp, new offset), ...) for the changes in the year)."""
    try:
        return _cached_transitions(zone, year)
    except TypeError:  # a tzinfo that cannot be hashed
        return _scan(zone, year)


def _scan(zone: dt.tzinfo, year: int) -> tuple[dt.timedelta, tuple[tuple[int, dt.timedelta], ...]]:
    start = int(dt.datetime(year, 1, 1, tzinfo=_UTC).timestamp())
    end = int(dt.datetime(year + 1, 1, 1, tzinfo=_UTC).timestamp())
    first = before = _offset_at(zone, start)
    found = []
    ts = start
    while ts < end:
        nxt = min(ts + _DAY, end)
        after = _offset_at(zone, nxt)
        if after != before:
            lo, hi = ts, nxt
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if _offset_at(zone, mid) == before else (lo, mid)
            if hi < end:
                found.append((hi, after))
        ts, before = nxt, after
    return first, tuple(found)


_cached_transitions = functools.lru_cache(maxsize=2048)(_scan)


def _signature(zone: dt.tzinfo, year: int) -> tuple:
    if isinstance(zone, RuleZone):
        return zone.transitions(year)
    return _transitions(zone, year)


def _when(ts: int, old: dt.timedelta) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, _UTC).replace(tzinfo=None) + old


def _as_change(local: dt.datetime) -> Change:
    days = calendar.monthrange(local.year, local.month)[1]
    week = 5 if local.day + 7 > days else (local.day - 1) // 7 + 1
    return Change(local.month, (local.weekday() + 1) % 7, week, local.hour, local.minute, local.second,
                  local.microsecond // 1000)


def _minutes(delta: dt.timedelta) -> int:
    return int(delta.total_seconds() // 60)


def rule_for(zone: dt.tzinfo | None, year: int) -> Rule:
    """The rule ``zone`` follows in ``year`` (None means UTC). A year with one change (a zone moving to new
    rules) keeps the offset of its longer part; with more than two, the first and the last change count."""
    if not 1 <= year <= 9998:
        raise ItemError(f"year {year} is out of range")
    if zone is None:
        return Rule(0)
    if isinstance(zone, RuleZone):
        return zone.rule
    first, changes = _transitions(zone, year)
    names = _names(zone, year)
    if len(changes) >= 2 and changes[0][1] != changes[-1][1]:
        a, b = changes[0], changes[-1]
        old_a = first
        old_b = changes[-2][1]
        small, large = min(a[1], b[1]), max(a[1], b[1])
        to_daylight, to_standard = ((a, old_a), (b, old_b)) if a[1] == large else ((b, old_b), (a, old_a))
        daylight = _as_change(_when(to_daylight[0][0], to_daylight[1]))
        standard = _as_change(_when(to_standard[0][0], to_standard[1]))
        return Rule(-_minutes(small), standard, daylight, 0, _minutes(small) - _minutes(large), *names)
    if len(changes) == 1:
        ts, after = changes[0]
        start = dt.datetime(year, 1, 1, tzinfo=_UTC).timestamp()
        offset = first if ts - start > 183 * _DAY else after
    else:
        offset = first
    return Rule(-_minutes(offset), standard_name=names[0], daylight_name=names[0])


def _names(zone: dt.tzinfo, year: int) -> tuple[str, str]:
    """StandardName and DaylightName: the IANA key when there is one (it lets ``zone_for`` find the zone again
    at once), else the zone's abbreviations."""
    key = tzid_for(zone)
    if key and len(key) < 32:
        return key, key
    try:
        return (str(dt.datetime(year, 1, 15, 12, tzinfo=zone).tzname() or "")[:31],
                str(dt.datetime(year, 7, 15, 12, tzinfo=zone).tzname() or "")[:31])
    except (ValueError, OverflowError):
        return "", ""


def blob_for(zone: dt.tzinfo | None, year: int) -> bytes:
    """The Timezone blob of ``zone`` for events in ``year`` (None: UTC)."""
    return pack_rule(rule_for(zone, year))


# --- a tzinfo that follows one rule -----------------------------------------------------------------------

class RuleZone(dt.tzinfo):
    """A tzinfo following one Rule every year, with PEP 495 fold at the changes. ``key`` is its TZID."""

    def __init__(self, rule: Rule, key: str | None = None) -> None:
        self.rule = rule
        self.key = key or _custom_name(rule)

    def __repr__(self) -> str:
        return f"RuleZone({self.key!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RuleZone) and other.key == self.key and other.rule.same_clock(self.rule)

    def __hash__(self) -> int:
        return hash(self.key)

    def _changes(self, year: int) -> list[tuple[dt.datetime, dt.timedelta]]:
        r = self.rule
        assert r.daylight is not None and r.standard is not None
        return [(r.daylight.local(year) - r.standard_offset, r.daylight_offset),
                (r.standard.local(year) - r.daylight_offset, r.standard_offset)]

    def _offset_utc(self, utc: dt.datetime) -> dt.timedelta:
        """The offset in force at a naive UTC instant."""
        if not self.rule.has_dst:
            return self.rule.standard_offset
        year = max(2, min(utc.year, 9997))
        changes = sorted(c for y in (year - 1, year, year + 1) for c in self._changes(y))
        current = changes[0][1]
        current = self.rule.standard_offset if current == self.rule.daylight_offset else self.rule.daylight_offset
        for when, offset in changes:
            if when > utc:
                break
            current = offset
        return current

    def transitions(self, year: int) -> tuple[dt.timedelta, tuple[tuple[int, dt.timedelta], ...]]:
        """The same shape as the changes found by scanning a zone: offset at the year's start, then changes."""
        start, end = dt.datetime(year, 1, 1), dt.datetime(year + 1, 1, 1)
        first = self._offset_utc(start)
        found = []
        if self.rule.has_dst:
            current = first
            for when, offset in sorted(self._changes(year)):
                if start < when < end and offset != current:
                    found.append((int(when.replace(tzinfo=_UTC).timestamp()), offset))
                    current = offset
        return first, tuple(found)

    def utcoffset(self, when: dt.datetime | None) -> dt.timedelta:
        std, dst = self.rule.standard_offset, self.rule.daylight_offset
        if when is None or not self.rule.has_dst:
            return std
        wall = when.replace(tzinfo=None)
        fits = [off for off in (std, dst) if self._offset_utc(wall - off) == off]
        if len(fits) == 1:
            return fits[0]
        larger, smaller = max(std, dst), min(std, dst)
        if fits:  # clocks went back: fold 0 is the first pass, under the larger offset
            return smaller if when.fold else larger
        # clocks went forward over this wall time: fold 0 keeps the offset from before the change
        return self._offset_utc(wall - (smaller if when.fold else larger))

    def dst(self, when: dt.datetime | None) -> dt.timedelta:
        return self.utcoffset(when) - self.rule.standard_offset

    def tzname(self, when: dt.datetime | None) -> str:
        return self.key

    def fromutc(self, when: dt.datetime) -> dt.datetime:
        utc = when.replace(tzinfo=None)
        offset = self._offset_utc(utc)
        local = (utc + offset).replace(tzinfo=self)
        return local if self.utcoffset(local) == offset else local.replace(fold=1)


def _custom_name(rule: Rule) -> str:
    name = f"Custom/Bias{rule.bias + rule.standard_bias}"
    if rule.has_dst:
        assert rule.standard is not None and rule.daylight is not None
        parts = []
        for change in (rule.daylight, rule.standard):
            fixed = "D" if change.year else ""
            parts.append(f"{change.month}.{fixed}{change.week}.{change.weekday}."
                         f"{change.hour:02d}{change.minute:02d}{change.second:02d}")
        name += f"/Daylight{rule.daylight_bias - rule.standard_bias}/{parts[0]}/{parts[1]}"
    return name


# --- blob -> zone ------------------------------------------------------------------------------------------

def _iana(name: str | None) -> ZoneInfo | None:
    if not name or len(name) > 64 or ".." in name or not _ZONE_NAME.fullmatch(name):
        return None
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError, OSError, UnicodeError):
        return None


def _quick(zone: dt.tzinfo, year: int) -> tuple[dt.timedelta, dt.timedelta]:
    return tuple(dt.datetime(year, month, 15, 12, tzinfo=_UTC).astimezone(zone).utcoffset()  # type: ignore
                 for month in (1, 7))


def zone_for(blob: bytes, year: int, prefer: str | dt.tzinfo | None = None) -> dt.tzinfo:
    """A tzinfo whose clock in ``year`` is exactly the blob's: ``prefer`` (a zone or its name) if it fits, then
    the zone the blob names, then ``COMMON_ZONES``, then an ``Etc/GMT`` zone, else a ``RuleZone``."""
    rule = parse_blob(blob)
    if not 1 <= year <= 9997:
        raise ItemError(f"year {year} is out of range")
    wanted_zone = RuleZone(rule)
    wanted = wanted_zone.transitions(year)
    quick = _quick(wanted_zone, year)
    candidates: list[dt.tzinfo] = []
    if isinstance(prefer, dt.tzinfo):
        candidates.append(prefer)
    else:
        candidates.extend(z for z in (_iana(prefer),) if z is not None)
    candidates.extend(z for z in (_iana(rule.standard_name),) if z is not None)
    for candidate in candidates:
        try:
            if _quick(candidate, year) == quick and _signature(candidate, year) == wanted:
                return candidate
        except (ValueError, OverflowError, ItemError):
            continue
    for name in COMMON_ZONES:
        zone = ZoneInfo(name)
        if _quick(zone, year) == quick and _signature(zone, year) == wanted:
            return zone
    if not rule.has_dst and rule.standard_offset % dt.timedelta(hours=1) == dt.timedelta(0):
        hours = int(rule.standard_offset.total_seconds()) // 3600
        if -12 <= hours <= 14:
            return ZoneInfo(f"Etc/GMT{-hours:+d}" if hours else "Etc/UTC")
    return wanted_zone


def tzid_for(zone: dt.tzinfo | None) -> str | None:
    """The TZID a zone is written with: its IANA key, a RuleZone's name; None for UTC or a zone without one."""
    if zone is None or zone is _UTC:
        return None
    key = getattr(zone, "key", None) or getattr(zone, "_tzid", None)
    return str(key) if key else None


# --- VTIMEZONE ---------------------------------------------------------------------------------------------

def _observance(kind: str, start: dt.datetime, change: Change, old: dt.timedelta, new: dt.timedelta,
                name: str) -> icalendar.cal.Component:
    part = icalendar.TimezoneDaylight() if kind == "DAYLIGHT" else icalendar.TimezoneStandard()
    part.add("DTSTART", start.replace(microsecond=0))
    if change.year:
        part.add("RRULE", {"FREQ": "YEARLY", "BYMONTH": change.month, "BYMONTHDAY": start.day})
    else:
        week = -1 if change.week == 5 else change.week
        part.add("RRULE", {"FREQ": "YEARLY", "BYMONTH": change.month, "BYDAY": f"{week}{_BYDAY[change.weekday]}"})
    part.add("TZOFFSETFROM", old)
    part.add("TZOFFSETTO", new)
    if name:
        part.add("TZNAME", name)
    return part


def _rule_vtimezone(tzid: str, rule: Rule, year: int, zone: dt.tzinfo) -> icalendar.Timezone:
    vtz = icalendar.Timezone()
    vtz.add("TZID", tzid)
    first = max(year - 1, 1)
    if not rule.has_dst:
        part = icalendar.TimezoneStandard()
        part.add("DTSTART", dt.datetime(1970, 1, 1))
        part.add("TZOFFSETFROM", rule.standard_offset)
        part.add("TZOFFSETTO", rule.standard_offset)
        vtz.add_component(part)
        return vtz
    assert rule.standard is not None and rule.daylight is not None
    names = _abbreviations(zone, year)
    vtz.add_component(_observance("STANDARD", rule.standard.local(first), rule.standard, rule.daylight_offset,
                                  rule.standard_offset, names[0]))
    vtz.add_component(_observance("DAYLIGHT", rule.daylight.local(first), rule.daylight, rule.standard_offset,
                                  rule.daylight_offset, names[1]))
    return vtz


def _abbreviations(zone: dt.tzinfo, year: int) -> tuple[str, str]:
    if isinstance(zone, RuleZone):
        return "", ""
    try:
        winter = dt.datetime(year, 1, 15, 12, tzinfo=zone)
        summer = dt.datetime(year, 7, 15, 12, tzinfo=zone)
        if winter.dst():
            winter, summer = summer, winter
        return str(winter.tzname() or ""), str(summer.tzname() or "")
    except (ValueError, OverflowError):
        return "", ""


def vtimezone_for(zone: dt.tzinfo, year: int) -> icalendar.Timezone | None:
    """The VTIMEZONE for ``zone`` as events from ``year`` on use it, or None when it has no TZID (UTC).

    Zones whose rule stays the same for the next ten years get a compact RRULE-based definition (as Outlook
    writes them); others get the list of their changes up to 2037.
    """
    tzid = tzid_for(zone)
    if tzid is None:
        return None
    rule = rule_for(zone, year)
    stable = isinstance(zone, RuleZone) or all(rule_for(zone, y).same_clock(rule) for y in range(year, year + 10))
    if stable:
        return _rule_vtimezone(tzid, rule, year, zone)
    return _listed_vtimezone(tzid, zone, year)


def _listed_vtimezone(tzid: str, zone: dt.tzinfo, year: int) -> icalendar.Timezone:
    """A VTIMEZONE listing every change from ``year`` - 1 to 2037, one observance per (from, to) pair."""
    first = max(year - 1, 1)
    start_offset = _transitions(zone, first)[0]
    groups: dict[tuple[dt.timedelta, dt.timedelta], list[dt.datetime]] = {}
    before = start_offset
    for y in range(first, max(2038, first + 1)):
        for ts, after in _transitions(zone, y)[1]:
            groups.setdefault((before, after), []).append(_when(ts, before))
            before = after
    vtz = icalendar.Timezone()
    vtz.add("TZID", tzid)
    part = icalendar.TimezoneStandard()
    part.add("DTSTART", dt.datetime(first, 1, 1))
    part.add("TZOFFSETFROM", start_offset)
    part.add("TZOFFSETTO", start_offset)
    vtz.add_component(part)
    for (old, new), onsets in groups.items():
        part = icalendar.TimezoneDaylight() if new > old else icalendar.TimezoneStandard()
        part.add("DTSTART", onsets[0])
        if onsets[1:]:
            part.add("RDATE", onsets[1:])
        part.add("TZOFFSETFROM", old)
        part.add("TZOFFSETTO", new)
        vtz.add_component(part)
    return vtz
