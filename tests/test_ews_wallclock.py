"""WallClock writes UTC instants as wall time exactly as a plain tzinfo conversion would, around every change."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ews.timezones import WallClock


def slow(when: dt.datetime, tz: dt.tzinfo) -> str:
    return when.astimezone(tz).replace(tzinfo=None, microsecond=0).isoformat()


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu",
                                  "America/St_Johns", "UTC"])
def test_every_quarter_hour_around_the_changes(zone):
    tz = zoneinfo.ZoneInfo(zone)
    clock = WallClock(tz)
    start = dt.datetime(2031, 1, 1, tzinfo=dt.timezone.utc)
    for step in range(0, 365 * 24 * 4, 3):  # every 45 minutes for a year
        when = start + dt.timedelta(minutes=15 * step, seconds=step % 60)
        assert clock.wall(when) == slow(when, tz), when


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2037, 12, 31)),
       st.sampled_from(["Europe/London", "America/Santiago", "Pacific/Chatham", "Africa/Casablanca"]))
def test_matches_zoneinfo_anywhere(naive, zone):
    tz = zoneinfo.ZoneInfo(zone)
    when = naive.replace(tzinfo=dt.timezone.utc)
    assert WallClock(tz).wall(when) == slow(when, tz)
