"""Synthetic calendars for the availability benchmark: deterministic events of every kind free/busy handles."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator

UTC = dt.timezone.utc
#: The seeded events cover DATA_DAYS days from DATA_START; the measured window lies in the middle
#: and crosses the start of summer time in Europe/Berlin (30 March 2031).
DATA_START = dt.datetime(2031, 3, 3, tzinfo=UTC)
DATA_DAYS = 91
WINDOW_DAYS = 42
WINDOW_START = DATA_START + dt.timedelta(days=(DATA_DAYS - WINDOW_DAYS) // 2)
RECURRING_EVERY = 10  # one event in ten recurs

_BERLIN = "\r\n".join([
    "BEGIN:VTIMEZONE", "TZID:Europe/Berlin",
    "BEGIN:STANDARD", "DTSTART:19701025T030000", "RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU",
    "TZOFFSETFROM:+0200", "TZOFFSETTO:+0100", "TZNAME:CET", "END:STANDARD",
    "BEGIN:DAYLIGHT", "DTSTART:19700329T020000", "RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU",
    "TZOFFSETFROM:+0100", "TZOFFSETTO:+0200", "TZNAME:CEST", "END:DAYLIGHT",
    "END:VTIMEZONE"])


def address(n: int) -> str:
    return f"user{n:03d}@example.test"


def window(shift_minutes: int = 0) -> tuple[dt.datetime, dt.datetime]:
    """The measured window (aware UTC), moved by ``shift_minutes`` so that no cache entry matches it."""
    start = WINDOW_START + dt.timedelta(minutes=shift_minutes)
    return start, start + dt.timedelta(days=WINDOW_DAYS)


def _utc(t: dt.datetime) -> str:
    return t.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def _local(t: dt.datetime) -> str:
    return t.strftime("%Y%m%dT%H%M%S")


def _wrap(events: list[list[str]], tz: bool) -> str:
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//casgate bench//EN"]
    if tz:
        lines.append(_BERLIN)
    for ev in events:
        lines += ["BEGIN:VEVENT", *ev, "END:VEVENT"]
    lines.append("END:VCALENDAR")
    return "\r\n".join(lines) + "\r\n"


def _single(rng: random.Random, uid: str, n: int) -> tuple[list[str], bool]:
    """One non-recurring event; returns its lines and whether it uses the Berlin zone."""
    day = DATA_START + dt.timedelta(days=rng.randrange(DATA_DAYS))
    props = [f"UID:{uid}", "DTSTAMP:20310101T000000Z", f"SUMMARY:Appointment {n}"]
    kind = rng.random()
    if kind < 0.06:  # all-day, sometimes over several days
        first = day.date()
        props += [f"DTSTART;VALUE=DATE:{first:%Y%m%d}",
                  f"DTEND;VALUE=DATE:{first + dt.timedelta(days=rng.choice((1, 1, 2, 3))):%Y%m%d}"]
        if rng.random() < 0.3:
            props.append("X-MICROSOFT-CDO-BUSYSTATUS:OOF")
        return props, False
    start = day.replace(hour=rng.randrange(7, 18), minute=rng.choice((0, 15, 30, 45)))
    end = start + dt.timedelta(minutes=rng.choice((15, 30, 30, 60, 60, 90, 120)))
    berlin = rng.random() < 0.25
    if berlin:  # the same wall time read in Europe/Berlin
        props += [f"DTSTART;TZID=Europe/Berlin:{_local(start)}", f"DTEND;TZID=Europe/Berlin:{_local(end)}"]
    else:
        props += [f"DTSTART:{_utc(start)}", f"DTEND:{_utc(end)}"]
    if kind < 0.14:
        props.append("STATUS:TENTATIVE")
    elif kind < 0.20:
        props.append("TRANSP:TRANSPARENT")
    elif kind < 0.26:
        props.append("CLASS:PRIVATE")
    elif kind < 0.28:
        props.append("STATUS:CANCELLED")
    if rng.random() < 0.4:
        props.append(f"LOCATION:Room {rng.randrange(1, 40)}")
    if rng.random() < 0.3:
        props += ["ORGANIZER:mailto:boss@example.test", "ATTENDEE;PARTSTAT=ACCEPTED:mailto:peer@example.test"]
    return props, berlin


def _series(rng: random.Random, uid: str, n: int) -> list[list[str]]:
    """A recurring event in Europe/Berlin: weekly or daily, some with an EXDATE, some with one moved instance."""
    first = DATA_START + dt.timedelta(days=rng.randrange(28))
    start = first.replace(hour=rng.randrange(8, 17), minute=rng.choice((0, 30)))
    end = start + dt.timedelta(minutes=rng.choice((30, 60)))
    weekly = rng.random() < 0.7
    step = dt.timedelta(weeks=1) if weekly else dt.timedelta(days=1)
    # Weekly for two or three months; daily for one to two weeks.
    count = rng.randrange(8, 14) if weekly else rng.randrange(5, 15)
    rule = f"FREQ={'WEEKLY' if weekly else 'DAILY'};COUNT={count}"
    master = [f"UID:{uid}", "DTSTAMP:20310101T000000Z", f"SUMMARY:Series {n}",
              f"DTSTART;TZID=Europe/Berlin:{_local(start)}", f"DTEND;TZID=Europe/Berlin:{_local(end)}",
              f"RRULE:{rule}"]
    if rng.random() < 0.2:
        master.append("STATUS:TENTATIVE")
    if (n // RECURRING_EVERY) % 3 == 0:  # a third of the series skip their third instance
        master.append(f"EXDATE;TZID=Europe/Berlin:{_local(start + 2 * step)}")
    events = [master]
    if (n // RECURRING_EVERY) % 4 == 0:  # a quarter move one instance two hours later
        rid = start + 3 * step
        events.append([f"UID:{uid}", "DTSTAMP:20310101T000000Z", f"SUMMARY:Series {n} (moved)",
                       f"RECURRENCE-ID;TZID=Europe/Berlin:{_local(rid)}",
                       f"DTSTART;TZID=Europe/Berlin:{_local(rid + dt.timedelta(hours=2))}",
                       f"DTEND;TZID=Europe/Berlin:{_local(end + 3 * step + dt.timedelta(hours=2))}"])
    return events


def calendar_items(user: int, count: int) -> Iterator[tuple[str, str]]:
    """(UID, iCalendar text) of each of ``count`` calendar objects of user number ``user``, always the same."""
    rng = random.Random(user)
    for i in range(count):
        uid = f"u{user:03d}-e{i:04d}"
        if i % RECURRING_EVERY == 0:
            yield uid, _wrap(_series(rng, uid, i), tz=True)
        else:
            props, tz = _single(rng, uid, i)
            yield uid, _wrap([props], tz=tz)
