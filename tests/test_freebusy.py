"""Free/busy from iCalendar (pure): busy rules, recurrences, time zones, merged strings, working hours."""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings, strategies as st

from gateway.config import AvailabilityConfig
from gateway.demo import sample_data as sd
from gateway.services.freebusy import (BusyEvent, BusyType, WorkingHours, events_to_busy, merged_free_busy,
                                       working_hours_from_config)

UTC = timezone.utc
WINDOW = (datetime(2030, 6, 1, tzinfo=UTC), datetime(2030, 6, 30, tzinfo=UTC))


def at(d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(2030, 6, d, h, mi, tzinfo=UTC)


def ics(*events: str, tz: str = "") -> str:
    body = "".join(f"BEGIN:VEVENT\nDTSTAMP:20300101T000000Z\n{e.strip()}\nEND:VEVENT\n" for e in events)
    return f"BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:-//casgate//tests//EN\n{tz}{body}END:VCALENDAR\n" \
        .replace("\n", "\r\n")


def one(*props: str, uid: str = "e1") -> str:
    return ics(f"UID:{uid}\nSUMMARY:Thing\nDTSTART:20300610T100000Z\nDTEND:20300610T110000Z\n" + "\n".join(props))


def busy_of(text: str) -> list[BusyType]:
    return [e.busy for e in events_to_busy([text], *WINDOW)]


# -- busy type --------------------------------------------------------------------------------------------

def test_busy_type_values_follow_exchange():
    assert [int(b) for b in BusyType] == [0, 1, 2, 3, 4]
    assert [b.name for b in BusyType] == ["FREE", "TENTATIVE", "BUSY", "OOF", "WORKING_ELSEWHERE"]


@pytest.mark.parametrize(("props", "expected"), [
    ((), [BusyType.BUSY]),
    (("TRANSP:TRANSPARENT",), [BusyType.FREE]),
    (("TRANSP:OPAQUE",), [BusyType.BUSY]),
    (("STATUS:TENTATIVE",), [BusyType.TENTATIVE]),
    (("STATUS:CONFIRMED",), [BusyType.BUSY]),
    (("STATUS:CANCELLED",), []),
    (("STATUS:CANCELLED", "X-MICROSOFT-CDO-BUSYSTATUS:BUSY"), []),
    (("X-MICROSOFT-CDO-BUSYSTATUS:OOF", "TRANSP:TRANSPARENT"), [BusyType.OOF]),
    (("X-MICROSOFT-CDO-BUSYSTATUS:FREE", "STATUS:TENTATIVE"), [BusyType.FREE]),
    (("X-MICROSOFT-CDO-BUSYSTATUS:TENTATIVE",), [BusyType.TENTATIVE]),
    (("X-MICROSOFT-CDO-BUSYSTATUS:BUSY", "TRANSP:TRANSPARENT"), [BusyType.BUSY]),
    (("X-MICROSOFT-CDO-BUSYSTATUS:WORKINGELSEWHERE",), [BusyType.WORKING_ELSEWHERE]),
    (("X-MICROSOFT-CDO-BUSYSTATUS:SOMETHING-NEW", "STATUS:TENTATIVE"), [BusyType.TENTATIVE]),
])
def test_busy_type_rules(props, expected):
    assert busy_of(one(*props)) == expected


@pytest.mark.parametrize(("props", "private"), [
    ((), False), (("CLASS:PUBLIC",), False), (("CLASS:PRIVATE",), True), (("CLASS:CONFIDENTIAL",), True)])
def test_private_from_class(props, private):
    (ev,) = events_to_busy([one(*props)], *WINDOW)
    assert ev.private is private and ev.subject == "Thing"


def test_meeting_reminder_and_details():
    text = one("LOCATION:Room 1", "ORGANIZER:mailto:a@example.test", "ATTENDEE:mailto:b@example.test",
               "BEGIN:VALARM\nACTION:DISPLAY\nTRIGGER:-PT15M\nDESCRIPTION:x\nEND:VALARM")
    (ev,) = events_to_busy([text], *WINDOW)
    assert (ev.meeting, ev.reminder, ev.recurring, ev.exception) == (True, True, False, False)
    assert (ev.subject, ev.location, ev.uid) == ("Thing", "Room 1", "e1")
    (plain,) = events_to_busy([one()], *WINDOW)
    assert (plain.meeting, plain.reminder, plain.location) == (False, False, None)


# -- time ------------------------------------------------------------------------------------------------

def test_overlap_is_half_open_and_events_are_not_clipped():
    text = one()  # 10:00-11:00Z on the 10th
    assert events_to_busy([text], at(10, 11), at(10, 12)) == []
    assert events_to_busy([text], at(10, 9), at(10, 10)) == []
    (ev,) = events_to_busy([text], at(10, 10, 30), at(10, 10, 45))
    assert (ev.start, ev.end) == (at(10, 10), at(10, 11))


def test_naive_window_is_utc():
    (ev,) = events_to_busy([one()], datetime(2030, 6, 10, 10, 30), datetime(2030, 6, 10, 10, 45))
    assert ev.start == at(10, 10)


def test_missing_dtend_uses_duration_or_the_defaults():
    with_duration = ics("UID:d\nDTSTART:20300610T100000Z\nDURATION:PT90M")
    instant = ics("UID:i\nDTSTART:20300610T100000Z")
    day = ics("UID:a\nDTSTART;VALUE=DATE:20300610")
    (d,) = events_to_busy([with_duration], *WINDOW)
    assert d.end == at(10, 11, 30)
    (i,) = events_to_busy([instant], *WINDOW)
    assert i.start == i.end == at(10, 10)
    # An instant counts where it happens, including exactly at the window's start.
    assert len(events_to_busy([instant], at(10, 10), at(10, 11))) == 1
    assert events_to_busy([instant], at(10, 9), at(10, 10)) == []
    (a,) = events_to_busy([day], *WINDOW)
    assert (a.start, a.end) == (at(10), at(11))


def test_all_day_and_floating_times_use_the_floating_zone():
    day = ics("UID:a\nDTSTART;VALUE=DATE:20300610\nDTEND;VALUE=DATE:20300612")
    floating = ics("UID:f\nDTSTART:20300610T090000\nDTEND:20300610T100000")
    ny = ZoneInfo("America/New_York")  # UTC-4 in June
    (a,) = events_to_busy([day], *WINDOW, floating_tz=ny)
    assert (a.start, a.end) == (at(10, 4), at(12, 4))
    (f,) = events_to_busy([floating], *WINDOW, floating_tz=ny)
    assert (f.start, f.end) == (at(10, 13), at(10, 14))
    (f_utc,) = events_to_busy([floating], *WINDOW)
    assert f_utc.start == at(10, 9)
    # The 11th in New York runs into the 12th UTC: a window on the 12th still sees it.
    assert len(events_to_busy([day], at(12, 0), at(12, 3), floating_tz=ny)) == 1
    assert events_to_busy([day], at(12, 4), at(12, 6), floating_tz=ny) == []
    # East of UTC the 10th starts on the 9th UTC.
    tokyo = ZoneInfo("Asia/Tokyo")
    assert [e.start for e in events_to_busy([day], at(9, 12), at(9, 18), floating_tz=tokyo)] == [at(9, 15)]


CUSTOM_TZ = """BEGIN:VTIMEZONE
TZID:Office Time
BEGIN:STANDARD
DTSTART:19700101T000000
TZOFFSETFROM:+0530
TZOFFSETTO:+0530
END:STANDARD
END:VTIMEZONE
"""


def test_tzid_with_its_own_vtimezone():
    text = ics("UID:t\nDTSTART;TZID=Office Time:20300610T100000\nDTEND;TZID=Office Time:20300610T110000",
               tz=CUSTOM_TZ)
    (ev,) = events_to_busy([text], *WINDOW)
    assert (ev.start, ev.end) == (at(10, 4, 30), at(10, 5, 30))
    assert ev.start.tzinfo == UTC


# -- recurrence ------------------------------------------------------------------------------------------

SERIES = ics(
    # Daily 09:00 Office Time (03:30Z) from Monday 3 June, six times; Tuesday excluded,
    # an extra instance on Sunday 9th by RDATE, Wednesday moved, Thursday cancelled.
    "UID:s\nSUMMARY:Daily\nDTSTART;TZID=Office Time:20300603T090000\nDURATION:PT30M\n"
    "RRULE:FREQ=DAILY;COUNT=6\nEXDATE;TZID=Office Time:20300604T090000\n"
    "RDATE;TZID=Office Time:20300609T090000\n"
    "BEGIN:VALARM\nACTION:DISPLAY\nTRIGGER:-PT5M\nDESCRIPTION:x\nEND:VALARM",
    "UID:s\nSUMMARY:Daily (moved)\nRECURRENCE-ID;TZID=Office Time:20300605T090000\n"
    "DTSTART;TZID=Office Time:20300605T140000\nDTEND;TZID=Office Time:20300605T150000\n"
    "X-MICROSOFT-CDO-BUSYSTATUS:OOF",
    "UID:s\nSUMMARY:Daily\nRECURRENCE-ID;TZID=Office Time:20300606T090000\n"
    "DTSTART;TZID=Office Time:20300606T090000\nDTEND;TZID=Office Time:20300606T093000\nSTATUS:CANCELLED",
    tz=CUSTOM_TZ)


def test_rrule_exdate_rdate_and_overrides():
    found = events_to_busy([SERIES], *WINDOW)
    assert [(e.start, e.subject, e.busy) for e in found] == [
        (at(3, 3, 30), "Daily", BusyType.BUSY),
        (at(5, 8, 30), "Daily (moved)", BusyType.OOF),
        (at(7, 3, 30), "Daily", BusyType.BUSY),
        (at(8, 3, 30), "Daily", BusyType.BUSY),
        (at(9, 3, 30), "Daily", BusyType.BUSY),
    ]
    assert all(e.recurring and e.uid == "s" for e in found)
    assert [e.exception for e in found] == [False, True, False, False, False]
    assert [e.reminder for e in found] == [True, False, True, True, True]
    assert found[0].end == at(3, 4) and found[1].end == at(5, 9, 30)


def test_expansion_stays_in_the_window_and_keeps_real_times():
    found = events_to_busy([SERIES], at(5, 9), at(8, 3, 45))
    # The moved instance overlaps the start (08:30-09:30Z) and keeps its real start.
    assert [e.start for e in found] == [at(5, 8, 30), at(7, 3, 30), at(8, 3, 30)]


def test_override_without_its_master_is_an_exception_of_a_series():
    text = ics("UID:o\nSUMMARY:Invited once\nRECURRENCE-ID:20300612T100000Z\n"
               "DTSTART:20300612T110000Z\nDTEND:20300612T120000Z")
    (ev,) = events_to_busy([text], *WINDOW)
    assert (ev.start, ev.recurring, ev.exception) == (at(12, 11), True, True)


# -- robustness ------------------------------------------------------------------------------------------

def test_malformed_calendars_are_skipped_counted_and_logged(caplog):
    bad = ["not a calendar at all",
           "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:x\r\nEND:VCARD\r\n",
           ics("UID:r\nDTSTART:20300610T100000Z\nRRULE:FREQ=SOMETIMES"),
           ics("UID:n\nSUMMARY:no start")]
    skipped: list[str] = []
    with caplog.at_level(logging.WARNING, logger="gateway.services.freebusy"):
        found = events_to_busy([bad[0], one(), *bad[1:]], *WINDOW, skipped=skipped)
    assert [e.uid for e in found] == ["e1"]
    assert len(skipped) == len(bad) and all(skipped)
    assert sum("skipped a calendar object" in r.message for r in caplog.records) == len(bad)
    assert events_to_busy(bad, *WINDOW) == []  # and never raises without the list


def test_sorted_by_start_across_calendars():
    late = one(uid="late").replace("20300610T1", "20300611T1")
    early = one(uid="early").replace("20300610T1", "20300609T1")
    assert [e.uid for e in events_to_busy([late, one(), early], *WINDOW)] == ["early", "e1", "late"]


# -- the demo's sample calendar ---------------------------------------------------------------------------

NOW = datetime(2030, 1, 14, 7, 30, tzinfo=UTC)  # a Monday in winter: Berlin is UTC+1


def test_demo_sample_calendar():
    people = sd.demo_people()
    texts = [e.ical for e in sd.events_for("alice@example.test", people, NOW)]
    found = events_to_busy(texts, NOW, NOW + timedelta(weeks=8))
    by = {}
    for e in found:
        by.setdefault(e.subject, []).append(e)
    standups = by["Team stand-up"] + by["Team stand-up (moved)"]
    first = datetime(2030, 1, 15, 9, tzinfo=UTC)
    # Six weekly, the third cancelled by EXDATE, the second moved an hour later.
    assert sorted(e.start for e in standups) == [first, first + timedelta(weeks=1, hours=1),
                                                 *(first + timedelta(weeks=w) for w in (3, 4, 5))]
    assert [e.exception for e in by["Team stand-up (moved)"]] == [True]
    assert all(e.recurring for e in standups) and not any(e.exception for e in by["Team stand-up"])
    assert by["Vendor demo: Contoso storage"][0].busy is BusyType.TENTATIVE
    assert by["Lunch & learn: IMAP IDLE"][0].busy is BusyType.FREE
    assert by["Dentist"][0].private and not by["Project review"][0].private
    offsite = by["Company offsite"][0]
    assert offsite.busy is BusyType.FREE and offsite.end - offsite.start == timedelta(days=1)
    assert offsite.start.hour == 0
    berlin = by["Call with the Berlin office"][0]
    assert (berlin.start.hour, berlin.end.hour) == (14, 15)  # 15:00-16:00 CET
    assert by["Quarterly planning"][0].meeting and not by["Project review"][0].meeting
    assert len(found) == 13


# -- merged free/busy ------------------------------------------------------------------------------------

def ev(start: datetime, end: datetime, busy: BusyType = BusyType.BUSY) -> BusyEvent:
    return BusyEvent(start=start, end=end, busy=busy, subject=None, location=None, private=False,
                     recurring=False, exception=False, meeting=False, reminder=False, uid="x")


def test_merged_examples():
    s = at(10, 8)
    events = [ev(at(10, 9), at(10, 10)), ev(at(10, 9, 30), at(10, 11), BusyType.TENTATIVE),
              ev(at(10, 12), at(10, 12, 1), BusyType.OOF), ev(at(10, 13), at(10, 14), BusyType.WORKING_ELSEWHERE),
              ev(at(10, 7), at(10, 8, 30), BusyType.TENTATIVE), ev(at(10, 15), at(10, 15))]
    assert merged_free_busy(events, s, at(10, 16), 60) == "12103000"
    assert merged_free_busy(events, s, at(10, 16), 30) == "1022110030000000"
    # The last, partial interval counts.
    assert merged_free_busy(events, s, at(10, 9, 15), 60) == "12"
    assert merged_free_busy([], s, at(10, 9, 15), 60) == "00"
    assert merged_free_busy(events, s, s, 60) == ""


def test_merged_rejects_a_bad_interval():
    with pytest.raises(ValueError):
        merged_free_busy([], at(10), at(11), 0)


def brute_force(events, start, end, interval):
    total = int((end - start) / timedelta(minutes=1))
    levels = []
    for m in range(total):
        t = start + timedelta(minutes=m)
        levels.append(max([0] + [0 if e.busy is BusyType.WORKING_ELSEWHERE else int(e.busy)
                                 for e in events if e.start <= t < e.end]))
    return "".join(str(max(levels[i:i + interval])) for i in range(0, total, interval))


@st.composite
def scenarios(draw):
    start = at(10) + timedelta(minutes=draw(st.integers(0, 600)))
    length = draw(st.integers(0, 600))
    interval = draw(st.integers(1, 120))
    events = [ev(start + timedelta(minutes=a), start + timedelta(minutes=a + d), draw(st.sampled_from(BusyType)))
              for a, d in draw(st.lists(st.tuples(st.integers(-200, 800), st.integers(0, 300)), max_size=12))]
    return events, start, start + timedelta(minutes=length), interval


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_merged_matches_minute_by_minute(scenario):
    events, start, end, interval = scenario
    merged = merged_free_busy(events, start, end, interval)
    assert merged == brute_force(events, start, end, interval)
    assert len(merged) == -(-(end - start) // timedelta(minutes=interval))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 300)), max_size=8),
       st.integers(0, 3000), st.integers(1, 1500))
def test_events_to_busy_returns_exactly_the_overlapping_ones(spans, offset, length):
    base = at(10)
    texts = [ics(f"UID:u{i}\nDTSTART:{(base + timedelta(minutes=a)):%Y%m%dT%H%M%SZ}\n"
                 f"DTEND:{(base + timedelta(minutes=a + d)):%Y%m%dT%H%M%SZ}") for i, (a, d) in enumerate(spans)]
    start, end = base + timedelta(minutes=offset), base + timedelta(minutes=offset + length)
    found = events_to_busy(texts, start, end)
    expected = sorted((base + timedelta(minutes=a), base + timedelta(minutes=a + d), f"u{i}")
                      for i, (a, d) in enumerate(spans)
                      if (a < offset + length and a + d > offset) or (d == 0 and offset <= a < offset + length))
    assert [(e.start, e.end, e.uid) for e in found] == expected


# -- working hours ---------------------------------------------------------------------------------------

def test_working_hours_from_config():
    assert working_hours_from_config(AvailabilityConfig()) == WorkingHours(
        "UTC", ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday"), 480, 1020)
    custom = AvailabilityConfig(working_days=["Saturday", "Sunday", "Wednesday", "Sunday"], working_start="07:30",
                                working_end="24:00", time_zone="Europe/Berlin")
    assert working_hours_from_config(custom) == WorkingHours(
        "Europe/Berlin", ("Sunday", "Wednesday", "Saturday"), 450, 1440)


def test_busy_event_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev(at(10), at(11)).busy = BusyType.FREE  # type: ignore[misc]
