"""Windows time zones from zoneinfo and CLDR: ids, display names and year-by-year Rules, as Exchange publishes them."""

from __future__ import annotations

import calendar
import datetime as dt
import functools
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from .timezones import LAST, Change, Rule

__all__ = ["FIRST_YEAR", "LAST_YEAR", "zone_rules", "rule_for_year", "windows_ids", "iana_zone", "windows_id",
           "display_name"]

FIRST_YEAR, LAST_YEAR = 2000, 2037  # rules are derived for these years; earlier/later years reuse the ends
_UTC = dt.timezone.utc


def _minutes(td: dt.timedelta) -> int:
    return int(td.total_seconds()) // 60


@dataclass(frozen=True)
class _Switch:
    local: dt.datetime  # wall time in the offset being left
    old: dt.timedelta
    new: dt.timedelta
    new_dst: bool


def _switches(tz: ZoneInfo) -> dict[int, list[_Switch]]:
    """Every offset change from FIRST_YEAR to LAST_YEAR, by the local year it happens in."""
    def state(ts: int) -> dt.timedelta:
        return dt.datetime.fromtimestamp(ts, tz).utcoffset()  # type: ignore[return-value]

    found: dict[int, list[_Switch]] = {}
    ts = int(dt.datetime(FIRST_YEAR - 1, 12, 30, tzinfo=_UTC).timestamp())
    end = int(dt.datetime(LAST_YEAR + 1, 1, 2, tzinfo=_UTC).timestamp())
    step = 6 * 86400  # no zone has kept an offset for less than a week since 2000
    before = state(ts)
    while ts < end:
        nxt = min(ts + step, end)
        after = state(nxt)
        if after != before:
            lo, hi = ts, nxt
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if state(mid) == before else (lo, mid)
            local = dt.datetime.fromtimestamp(hi, _UTC).replace(tzinfo=None) + before
            new_dst = bool(dt.datetime.fromtimestamp(hi, tz).dst())
            found.setdefault(local.year, []).append(_Switch(local, before, after, new_dst))
        ts, before = nxt, after
    return found


def _candidates(local: dt.datetime) -> tuple[int, int, int, frozenset[int]]:
    """(month, weekday, seconds, occurrences that describe this day): e.g. the 29th may be the 5th or LAST."""
    weekday = (local.weekday() + 1) % 7
    occurrences = {(local.day - 1) // 7 + 1}
    if local.day + 7 > calendar.monthrange(local.year, local.month)[1]:
        occurrences.add(LAST)
    seconds = local.hour * 3600 + local.minute * 60 + local.second
    return local.month, weekday, seconds, frozenset(occurrences)


def _year_shape(tz: ZoneInfo, year: int, switches: list[_Switch]) -> tuple:
    """One year as (bias, daylight_bias, into-daylight candidates, into-standard candidates)."""
    start = dt.datetime(year, 1, 1)
    switches = [s for s in switches if s.local != start]  # a change at the first instant sets the year's start
    if not switches:
        return (-_minutes(tz.utcoffset(dt.datetime(year, 7, 1)) or dt.timedelta()), 0, None, None)
    if len(switches) > 2:  # e.g. a Ramadan pause inside summer time: keep the outer changes
        switches = [switches[0], switches[-1]]
    if len(switches) == 1:  # one change in the year: model the year's start as the other period
        only = switches[0]
        switches = [_Switch(start, only.old, only.old, bool(tz.dst(start))), only]
    a, b = switches
    if a.new == b.new:
        return (-_minutes(b.new), 0, None, None)
    daylight, standard = (b, a) if b.new_dst and not a.new_dst else (a, b)
    return (-_minutes(standard.new), _minutes(standard.new) - _minutes(daylight.new),
            _candidates(daylight.local), _candidates(standard.local))


def _merge(shape: tuple, other: tuple) -> tuple | None:
    """The shape both years fit, or None when one rule cannot describe them both."""
    if shape[:2] != other[:2] or (shape[2] is None) != (other[2] is None):
        return None
    if shape[2] is None:
        return shape
    merged = []
    for mine, theirs in zip(shape[2:], other[2:]):
        both = mine[3] & theirs[3]
        if mine[:3] != theirs[:3] or not both:
            return None
        merged.append((*mine[:3], both))
    return (*shape[:2], *merged)


def _to_change(candidate: tuple) -> Change:
    month, weekday, seconds, occurrences = candidate
    return Change(month, weekday, LAST if LAST in occurrences else min(occurrences), seconds)


@functools.lru_cache(maxsize=None)
def zone_rules(zone: str) -> tuple[tuple[int, Rule], ...]:
    """The rules of an IANA zone as (first year, Rule) pairs; the first also covers earlier years."""
    tz = ZoneInfo(zone)
    switches = _switches(tz)
    groups: list[list] = []
    for year in range(FIRST_YEAR, LAST_YEAR + 1):
        shape = _year_shape(tz, year, switches.get(year, []))
        merged = _merge(groups[-1][1], shape) if groups else None
        if merged is None:
            groups.append([year, shape])
        else:
            groups[-1][1] = merged
    rules = []
    for year, (bias, daylight_bias, to_daylight, to_standard) in groups:
        if to_daylight is None:
            rules.append((year, Rule(bias)))
        else:
            rules.append((year, Rule(bias, 0, daylight_bias, _to_change(to_standard), _to_change(to_daylight))))
    return tuple(rules)


def rule_for_year(zone: str, year: int) -> Rule:
    """The rule an IANA zone follows in ``year``, as GetServerTimeZones publishes it."""
    rules = zone_rules(zone)
    return next((rule for first, rule in reversed(rules) if first <= year), rules[0][1])


# --- Windows ids <-> IANA names, from the CLDR windowsZones table exchangelib carries ----------------------


@functools.lru_cache(maxsize=1)
def _cldr() -> tuple[dict[str, str], dict[str, str], dict[str, tuple[str, ...]]]:
    """(Windows id -> its main IANA zone, IANA zone or alias -> Windows id, Windows id -> all its IANA zones)."""
    from exchangelib.winzone import CLDR_TO_MS_TIMEZONE_MAP, IANA_TO_MS_TIMEZONE_MAP  # imported late: it is slow

    main = {win: iana for iana, (win, territory) in CLDR_TO_MS_TIMEZONE_MAP.items() if territory == "001"}
    to_windows = {iana: win for iana, (win, _territory) in IANA_TO_MS_TIMEZONE_MAP.items()}
    members: dict[str, list[str]] = {}
    for iana, (win, _territory) in sorted(CLDR_TO_MS_TIMEZONE_MAP.items()):
        members.setdefault(win, []).append(iana)
    return main, to_windows, {win: tuple(zones) for win, zones in members.items()}


def iana_zone(windows: str) -> str | None:
    """The IANA zone a Windows time zone id stands for (None when the id is unknown)."""
    return _cldr()[0].get(windows)


def windows_id(iana: str) -> str | None:
    """The Windows time zone id of an IANA zone or alias (None when CLDR has no mapping)."""
    return _cldr()[1].get(iana)


@functools.lru_cache(maxsize=1)
def windows_ids() -> tuple[str, ...]:
    """Every Windows id we publish, ordered like Windows lists them: by current UTC offset, then name."""
    def key(win: str) -> tuple[int, str]:
        return (zone_rules(iana_zone(win) or "UTC")[-1][1].bias * -1, display_name(win))
    return tuple(sorted(_cldr()[0], key=key))


@functools.lru_cache(maxsize=None)
def display_name(windows: str) -> str:
    """A Windows-like display name: "(UTC+01:00) Berlin, Amsterdam, Andorra, Arctic Longyearbyen".

    Windows' own names are not part of CLDR; the cities of the IANA zones that
    map to the id stand in for them.
    """
    zone = iana_zone(windows)
    if zone is None:
        return windows
    minutes = -zone_rules(zone)[-1][1].bias
    sign = "+" if minutes >= 0 else "-"
    offset = "(UTC)" if minutes == 0 and windows == "UTC" else \
        f"(UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d})"
    def city(z: str) -> str:
        return z.split("/", 1)[-1].replace("_", " ").replace("/", " ")

    others = sorted((city(z) for z in _cldr()[2].get(windows, ()) if not z.startswith("Etc/")))
    names = list(dict.fromkeys([city(zone)] * (not zone.startswith("Etc/")) + others))
    if not names:  # Etc/ zones only, as Windows names them: "Coordinated Universal Time-11"
        names = ["Coordinated Universal Time" + windows[3:]] if windows.startswith("UTC") else [windows]
    return f"{offset} {', '.join(names[:4])}"
