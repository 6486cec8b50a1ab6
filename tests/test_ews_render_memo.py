"""Rendered free/busy text is reused for the same immutable events, never across zones, windows or views."""

from __future__ import annotations

import datetime as dt
import zoneinfo

from gateway.ews import soap
from gateway.ews.operations.availability_request import AvailabilityQuery
from gateway.ews.operations.get_user_availability import render
from gateway.services.availability import AccessLevel, MailboxAvailability
from gateway.services.freebusy import BusyEvent, BusyType, WorkingHours

UTC = dt.timezone.utc
START = dt.datetime(2031, 10, 20, tzinfo=UTC)
HOURS = WorkingHours("Europe/Berlin", ("Monday",), 480, 1020)
EVENTS = tuple(BusyEvent(START + dt.timedelta(hours=3 * i), START + dt.timedelta(hours=3 * i + 1),
                         BusyType.BUSY if i % 2 else BusyType.TENTATIVE, f"Talk {i}", "Room", False, False, False,
                         True, False, f"u{i}") for i in range(40))


def _reply(zone: str, view: str = "DetailedMerged", days: int = 5, interval: int = 30, events=EVENTS) -> bytes:
    query = AvailabilityQuery(["bob@example.test"], START, START + dt.timedelta(days=days),
                              zoneinfo.ZoneInfo(zone), view, interval, True, False)
    answer = MailboxAvailability("bob@example.test", events, AccessLevel.LIMITED, HOURS)
    return soap.envelope(render(query, [answer], "Exchange2010_SP2"))


def test_same_request_same_bytes_and_lists_are_rendered_too():
    first = _reply("Europe/Berlin")
    assert _reply("Europe/Berlin") == first
    assert _reply("Europe/Berlin", events=list(EVENTS)) == first  # a list is rendered, not memoised
    assert b"<t:StartTime>2031-10-20T02:00:00</t:StartTime>" in first  # 00:00 UTC in CEST


def test_zone_window_interval_and_view_each_change_the_text():
    berlin, new_york = _reply("Europe/Berlin"), _reply("America/New_York")
    assert b"<t:StartTime>2031-10-19T20:00:00</t:StartTime>" in new_york and berlin != new_york
    short = _reply("Europe/Berlin", days=2)
    assert short.count(b"<t:MergedFreeBusy>") == 1
    merged = lambda body: body.split(b"<t:MergedFreeBusy>")[1].split(b"<")[0]  # noqa: E731
    assert len(merged(short)) == 2 * 48 and len(merged(berlin)) == 5 * 48
    assert len(merged(_reply("Europe/Berlin", interval=60))) == 5 * 24
    assert b"<t:Subject>" not in _reply("Europe/Berlin", view="FreeBusy")
