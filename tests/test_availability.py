"""The Availability service against a real Radicale over TLS: access levels, ctag cache, shared fetches, failures."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from datetime import datetime, timedelta, timezone

import pytest

from adapters.dav import CalDavCalendarStore
from adapters.errors import NotFound, PermissionDenied
from adapters.interfaces import Credentials
from fixtures_dav import SERVICE_USER
from gateway.config import from_dict
from gateway.demo.procs import free_port
from gateway.services.availability import (AccessLevel, AvailabilityError, AvailabilityService,
                                           MailboxAvailability)
from gateway.services.backends import Backends
from gateway.services.directory import StaticDirectory, parse_users
from gateway.services.freebusy import BusyType, WorkingHours, merged_free_busy

UTC = timezone.utc
ALICE, BOB = "alice@example.test", "bob@example.test"


def day(n: int, h: int = 0, mi: int = 0) -> datetime:
    # Far from the adapter tests' dates; each test takes its own day so their events never meet.
    return datetime(2031, 3, 1, tzinfo=UTC) + timedelta(days=n, hours=h, minutes=mi)


def vevent(uid: str, start: datetime, minutes: int, summary: str, *props: str) -> str:
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//casgate//tests//EN", "BEGIN:VEVENT", f"UID:{uid}",
             "DTSTAMP:20310101T000000Z", f"DTSTART:{start:%Y%m%dT%H%M%SZ}",
             f"DTEND:{start + timedelta(minutes=minutes):%Y%m%dT%H%M%SZ}", f"SUMMARY:{summary}", *props,
             "END:VEVENT", "END:VCALENDAR"]
    return "\r\n".join(lines) + "\r\n"


@pytest.fixture
async def stack():
    async with AsyncExitStack() as s:
        yield s


@pytest.fixture
def calendar_of(radicale, certs, users, stack):
    """The user's own store and default calendar, for seeding."""
    async def make(login: str) -> tuple[CalDavCalendarStore, str]:
        store = CalDavCalendarStore(radicale.url, Credentials(login, users[login]), certs.ca_cert, timeout=5)
        await store.start(stack)
        return store, (await store.ensure_default_calendar()).url
    return make


@pytest.fixture
async def hung_port():
    """A TCP server that accepts and never says a word (not even a TLS handshake)."""
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()
    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


@pytest.fixture
def make_service(radicale, certs, hung_port):
    def make(clock=time.monotonic, domain_caldav: str = "dav", **availability) -> AvailabilityService:
        service = {"service_login": SERVICE_USER[0], "service_password": SERVICE_USER[1]}
        config = from_dict({
            "tls": {"ca_file": str(certs.ca_cert)},
            # revalidate_after 0: every lookup asks for the ctags, as the cache tests count on.
            "availability": {"timeout": 5.0, "revalidate_after": 0.0, **availability},
            "backends": {
                "mail": {"type": "imap", "url": "imaps://127.0.0.1:1"},
                "dav": {"type": "caldav", "url": radicale.url, "timeout": 5.0, **service},
                "nosvc": {"type": "caldav", "url": radicale.url},
                "dead": {"type": "caldav", "url": f"https://127.0.0.1:{free_port()}/", **service},
                "slow": {"type": "caldav", "url": f"https://127.0.0.1:{hung_port}/", "timeout": 30.0,
                         **service},
            },
            "domains": {"example.test": {"imap": "mail", "caldav": domain_caldav}},
        })
        directory = StaticDirectory(config, parse_users(config, {"user": [
            {"address": ALICE}, {"address": BOB}, {"address": "carol@example.test"},
            {"address": "dave@example.test", "caldav": "dead"},
            {"address": "erin@example.test", "caldav": "slow"},
            {"address": "ivan@example.test"},  # on Radicale, but never logged in: no calendar home
            {"address": "henry@other.test", "imap": "mail"},  # no calendar back end at all
        ]}))
        return AvailabilityService(config, directory, Backends(config), clock=clock)
    return make


def requester(service: AvailabilityService, address: str = ALICE):
    return service._directory.find(address)


@pytest.fixture
def counted(monkeypatch):
    """Counts PROPFINDs (calendars_at) and event queries (events_between) the service makes."""
    calls = {"calendars_at": 0, "events_between": 0}
    for name in calls:
        original = getattr(CalDavCalendarStore, name)

        def wrapper(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(CalDavCalendarStore, name, wrapper)
    return calls


async def test_lookup_in_order_with_intervals_and_visibility(make_service, calendar_of):
    alice, alice_cal = await calendar_of(ALICE)
    await alice.put_event(alice_cal, vevent("a1", day(1, 9), 60, "Alice focus", "LOCATION:Desk"))
    await alice.put_event(alice_cal, vevent("a2", day(1, 11), 60, "Alice doctor", "CLASS:PRIVATE"))
    bob, bob_cal = await calendar_of(BOB)
    await bob.put_event(bob_cal, vevent("b1", day(1, 10), 60, "Bob review", "LOCATION:Room 5"))
    await bob.put_event(bob_cal, vevent("b2", day(1, 15), 30, "Bob maybe", "STATUS:TENTATIVE"))
    travel = await bob.create_calendar("Travel")  # every calendar of the home counts
    await bob.put_event(travel.url, vevent("b3", day(1, 13), 60, "Bob flight", "X-MICROSOFT-CDO-BUSYSTATUS:OOF"))

    service = make_service()
    start, end = day(1, 8), day(1, 16)
    mine, bobs, unknown = await service.lookup(requester(service), [ALICE, "Bob@Example.Test",
                                                                    "unknown@example.test"], start, end)
    assert isinstance(mine, MailboxAvailability) and isinstance(bobs, MailboxAvailability)
    assert (mine.address, mine.access) == (ALICE, AccessLevel.LIMITED)
    assert [(e.subject, e.private) for e in mine.events] == [("Alice focus", False), ("Alice doctor", True)]
    assert mine.events[0].location == "Desk" and mine.events[1].uid == "a2"

    assert (bobs.address, bobs.access) == (BOB, AccessLevel.AVAILABILITY)
    assert [(e.start, e.busy) for e in bobs.events] == [
        (day(1, 10), BusyType.BUSY), (day(1, 13), BusyType.OOF), (day(1, 15), BusyType.TENTATIVE)]
    assert all(e.subject is None and e.location is None and e.uid == "" for e in bobs.events)
    assert merged_free_busy(bobs.events, start, end, 60) == "00200301"
    assert merged_free_busy(mine.events, start, end, 60) == "02020000"
    assert mine.working_hours == bobs.working_hours == WorkingHours(
        "UTC", ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday"), 480, 1020)

    assert isinstance(unknown, AvailabilityError) and unknown.kind == "not-found"
    assert "radicale" not in unknown.message.lower() and "127.0.0.1" not in unknown.message


@pytest.mark.parametrize(("settings", "access", "shown"), [
    ({"default_access": "limited"}, AccessLevel.LIMITED, ["Bob public", None]),
    ({"user_access": {"Bob@example.test": "limited"}}, AccessLevel.LIMITED, ["Bob public", None]),
    ({"default_access": "limited", "user_access": {BOB: "availability"}}, AccessLevel.AVAILABILITY, [None, None]),
    ({}, AccessLevel.AVAILABILITY, [None, None]),
])
async def test_details_follow_the_access_level(make_service, calendar_of, settings, access, shown):
    bob, bob_cal = await calendar_of(BOB)
    await bob.put_event(bob_cal, vevent("p1", day(2, 9), 60, "Bob public", "LOCATION:Lab"))
    await bob.put_event(bob_cal, vevent("p2", day(2, 10), 60, "Bob secret", "CLASS:CONFIDENTIAL",
                                        "LOCATION:Home"))
    service = make_service(**settings)
    (answer,) = await service.lookup(requester(service), [BOB], day(2), day(3))
    assert answer.access is access
    assert [e.subject for e in answer.events] == shown
    assert [e.location for e in answer.events] == (["Lab", None] if shown[0] else [None, None])
    assert [e.private for e in answer.events] == [False, True]
    # Bob himself always sees everything, private items included.
    (own,) = await service.lookup(requester(service, BOB), [BOB], day(2), day(3))
    assert [e.subject for e in own.events] == ["Bob public", "Bob secret"]


async def test_access_none_answers_without_events(make_service, calendar_of, counted):
    bob, bob_cal = await calendar_of(BOB)
    await bob.put_event(bob_cal, vevent("n1", day(3, 9), 60, "Hidden entirely"))
    service = make_service(user_access={BOB: "none"})
    (answer,) = await service.lookup(requester(service), [BOB], day(3), day(4))
    assert answer.access is AccessLevel.NONE and answer.events == ()
    assert counted == {"calendars_at": 0, "events_between": 0}  # nothing is even read
    with pytest.raises(AvailabilityError) as info:
        await service.freebusy_for(requester(service), BOB, day(3), day(4))
    assert info.value.kind == "denied"
    own = await service.freebusy_for(requester(service, BOB), BOB, day(3), day(4))
    assert [e.subject for e in own.events] == ["Hidden entirely"]


async def test_cache_hit_skips_the_query_until_a_ctag_changes(make_service, calendar_of, counted):
    bob, bob_cal = await calendar_of(BOB)
    await bob.put_event(bob_cal, vevent("c1", day(4, 9), 60, "First"))
    service = make_service()
    me = requester(service)
    (first,) = await service.lookup(me, [BOB], day(4), day(5))
    assert [e.start for e in first.events] == [day(4, 9)]
    queries = counted["events_between"]
    assert counted["calendars_at"] == 1 and queries >= 1

    (second,) = await service.lookup(me, [BOB], day(4), day(5))
    assert second.events == first.events
    assert counted == {"calendars_at": 2, "events_between": queries}  # one PROPFIND, no query

    await bob.put_event(bob_cal, vevent("c2", day(4, 14), 30, "Added later"))
    (third,) = await service.lookup(me, [BOB], day(4), day(5))
    assert [e.start for e in third.events] == [day(4, 9), day(4, 14)]
    assert counted["events_between"] == 2 * queries

    # Another window is another entry.
    await service.lookup(me, [BOB], day(4), day(4, 12))
    assert counted["events_between"] == 3 * queries


async def test_cache_expires_after_its_ttl(make_service, calendar_of, counted):
    bob, bob_cal = await calendar_of(BOB)
    await bob.put_event(bob_cal, vevent("t1", day(5, 9), 60, "Steady"))
    now = [1000.0]
    service = make_service(clock=lambda: now[0], cache_ttl=60.0)
    me = requester(service)
    await service.lookup(me, [BOB], day(5), day(6))
    queries = counted["events_between"]
    now[0] += 59
    await service.lookup(me, [BOB], day(5), day(6))
    assert counted["events_between"] == queries
    now[0] += 2
    (late,) = await service.lookup(me, [BOB], day(5), day(6))
    assert counted["events_between"] == 2 * queries and [e.start for e in late.events] == [day(5, 9)]


async def test_concurrent_identical_lookups_share_one_fetch(make_service, calendar_of, counted):
    bob, bob_cal = await calendar_of(BOB)
    await bob.put_event(bob_cal, vevent("s1", day(6, 9), 60, "Shared"))
    service = make_service()
    me = requester(service)
    answers = await asyncio.gather(service.lookup(me, [BOB, BOB], day(6), day(7)),
                                   service.lookup(me, [BOB], day(6), day(7)))
    events = [a.events for batch in answers for a in batch]
    assert len(events) == 3 and all(e == events[0] for e in events) and len(events[0]) == 1
    assert counted["calendars_at"] == 1


async def test_down_and_slow_back_ends_fail_alone(make_service, calendar_of):
    bob, bob_cal = await calendar_of(BOB)
    await bob.put_event(bob_cal, vevent("d1", day(7, 9), 60, "Still answered"))
    service = make_service(timeout=0.5)
    t0 = time.monotonic()
    dave, erin, bobs = await service.lookup(requester(service), ["dave@example.test", "erin@example.test", BOB],
                                            day(7), day(8))
    elapsed = time.monotonic() - t0
    assert isinstance(dave, AvailabilityError) and dave.kind == "unavailable"
    assert dave.message == "dave@example.test: the calendar server is unavailable"
    assert isinstance(erin, AvailabilityError) and erin.kind == "timeout"
    assert isinstance(bobs, MailboxAvailability) and [e.start for e in bobs.events] == [day(7, 9)]
    assert 0.5 <= elapsed < 3.0


async def test_without_a_service_account_only_the_own_calendar_with_credentials(make_service, calendar_of,
                                                                                 users):
    alice, alice_cal = await calendar_of(ALICE)
    await alice.put_event(alice_cal, vevent("o1", day(8, 9), 60, "Mine"))
    service = make_service(domain_caldav="nosvc")
    me = requester(service)
    own, bobs = await service.lookup(me, [ALICE, BOB], day(8), day(9),
                                     credentials=Credentials(ALICE, users[ALICE]))
    assert [e.subject for e in own.events] == ["Mine"]
    assert isinstance(bobs, AvailabilityError) and bobs.kind == "unavailable"
    assert "not set up" in bobs.message
    (no_creds,) = await service.lookup(me, [ALICE], day(8), day(9))
    assert isinstance(no_creds, AvailabilityError) and no_creds.kind == "unavailable"


async def test_mailboxes_without_a_calendar(make_service):
    service = make_service()
    henry, ivan = await service.lookup(requester(service), ["henry@other.test", "ivan@example.test"],
                                       day(9), day(10))
    assert isinstance(henry, AvailabilityError) and henry.kind == "no-calendar-backend"
    # A known user whose calendar home was never created has nothing booked.
    assert isinstance(ivan, MailboxAvailability) and ivan.events == ()


async def test_freebusy_for_and_bad_windows(make_service, calendar_of):
    bob, bob_cal = await calendar_of(BOB)
    await bob.put_event(bob_cal, vevent("f1", day(10, 9), 60, "Single"))
    service = make_service()
    one = await service.freebusy_for(None, BOB, day(10), day(11))  # anonymous: the default access
    assert one.access is AccessLevel.AVAILABILITY and [e.start for e in one.events] == [day(10, 9)]
    with pytest.raises(AvailabilityError) as info:
        await service.freebusy_for(None, "nobody@example.test", day(10), day(11))
    assert info.value.kind == "not-found"
    with pytest.raises(ValueError):
        await service.lookup(None, [BOB], day(11), day(10))
    with pytest.raises(ValueError):
        AvailabilityError("bogus", "no such kind")


async def test_service_account_reads_every_calendar_and_writes_none(radicale, certs, calendar_of, stack):
    bob, bob_cal = await calendar_of(BOB)
    await bob.put_event(bob_cal, vevent("w1", day(12, 9), 60, "Bob's own"))
    svc = CalDavCalendarStore(radicale.url, Credentials(*SERVICE_USER), certs.ca_cert, timeout=5)
    await svc.start(stack)
    listed = await svc.calendars_at(radicale.url + "bob@example.test/")
    assert bob_cal in {c.url for c in listed} and all(c.ctag for c in listed)
    assert len(await svc.events_between(bob_cal, day(12), day(13))) == 1
    with pytest.raises((PermissionDenied, NotFound)):
        await svc.put_event(bob_cal, vevent("w2", day(12, 11), 60, "Forged"))
    with pytest.raises((PermissionDenied, NotFound)):
        await svc.delete(bob_cal + "w1.ics")
    assert [o.href.rsplit("/", 1)[1] for o in await bob.events_between(bob_cal, day(12), day(13))] == ["w1.ics"]
    # Ordinary users still cannot read each other's homes.
    alice, _ = await calendar_of(ALICE)
    with pytest.raises((PermissionDenied, NotFound)):
        await alice.calendars_at(radicale.url + "bob@example.test/")


async def test_recently_checked_answers_skip_the_ctag_check(make_service, calendar_of, counted):
    bob, bob_cal = await calendar_of(BOB)
    await bob.put_event(bob_cal, vevent("r1", day(13, 9), 60, "Known"))
    now = [1000.0]
    service = make_service(clock=lambda: now[0], revalidate_after=15.0, cache_ttl=60.0)
    me = requester(service)
    await service.lookup(me, [BOB], day(13), day(14))
    fetched = dict(counted)
    assert fetched["calendars_at"] == 1 and fetched["events_between"] >= 1

    await bob.put_event(bob_cal, vevent("r2", day(13, 14), 30, "Added meanwhile"))
    now[0] += 14.9  # younger than revalidate_after: served as cached, the server is not asked at all
    (young,) = await service.lookup(me, [BOB], day(13), day(14))
    assert [e.start for e in young.events] == [day(13, 9)] and counted == fetched

    now[0] += 0.2  # older: revalidated by ctag, which changed, so fetched again
    (checked,) = await service.lookup(me, [BOB], day(13), day(14))
    assert [e.start for e in checked.events] == [day(13, 9), day(13, 14)]
    assert counted["calendars_at"] == 2 and counted["events_between"] == 2 * fetched["events_between"]

    now[0] += 10  # fresh again from that fetch
    await service.lookup(me, [BOB], day(13), day(14))
    assert counted["calendars_at"] == 2
    now[0] += 6  # a ctag check that finds nothing changed restarts the clock, without a query
    await service.lookup(me, [BOB], day(13), day(14))
    assert counted["calendars_at"] == 3 and counted["events_between"] == 2 * fetched["events_between"]
    now[0] += 14
    await service.lookup(me, [BOB], day(13), day(14))
    assert counted["calendars_at"] == 3
    await service.close()


async def test_one_client_per_back_end_and_login_closed_with_the_service(make_service, calendar_of, monkeypatch):
    from adapters.dav.common import DavConnection
    bob, bob_cal = await calendar_of(BOB)
    await bob.put_event(bob_cal, vevent("k1", day(14, 9), 60, "Kept"))
    started, closed = [], []
    start, close = DavConnection.start, DavConnection._close

    async def counting_start(self, stack):
        started.append(self)
        await start(self, stack)

    def counting_close(self):
        closed.append(self)
        close(self)
    monkeypatch.setattr(DavConnection, "start", counting_start)
    monkeypatch.setattr(DavConnection, "_close", counting_close)
    service = make_service()
    for n in range(3):
        answers = await service.lookup(requester(service), [BOB, "carol@example.test", ALICE], day(14), day(15, n))
        assert all(isinstance(a, MailboxAvailability) for a in answers)
    assert len(started) == 1 and closed == []
    await service.close()
    assert closed == started
    (late,) = await service.lookup(requester(service), [BOB], day(14), day(16))
    assert isinstance(late, AvailabilityError) and late.kind == "unavailable"


async def test_timeout_counts_from_when_a_mailbox_gets_a_dav_thread(make_service, calendar_of, monkeypatch):
    import gateway.services.availability as availability
    monkeypatch.setattr(availability, "DAV_THREADS", 1)  # every mailbox queues behind the one before
    original = CalDavCalendarStore._calendars_at

    def slow(self, home):
        time.sleep(0.3)
        return original(self, home)
    monkeypatch.setattr(CalDavCalendarStore, "_calendars_at", slow)
    bob, bob_cal = await calendar_of(BOB)
    await bob.put_event(bob_cal, vevent("q1", day(15, 9), 60, "Queued"))
    service = make_service(timeout=0.8)
    t0 = time.monotonic()
    answers = await service.lookup(requester(service), [ALICE, BOB, "carol@example.test", "ivan@example.test"],
                                   day(15), day(16))
    assert time.monotonic() - t0 >= 1.2  # longer than the timeout in all, yet nobody timed out
    assert all(isinstance(a, MailboxAvailability) for a in answers)
    assert [e.start for e in answers[1].events] == [day(15, 9)]
    await service.close()


async def test_hidden_copies_are_made_once_per_cached_calendar_and_level(make_service, calendar_of, monkeypatch):
    import gateway.services.availability as availability_module
    bob, bob_cal = await calendar_of(BOB)
    await bob.put_event(bob_cal, vevent("h1", day(40, 9), 60, "Bob visible"))
    await bob.put_event(bob_cal, vevent("h2", day(40, 11), 60, "Bob hidden", "CLASS:PRIVATE"))
    service = make_service()
    hidden = []
    real_hide = availability_module._hide
    monkeypatch.setattr(availability_module, "_hide", lambda ev: hidden.append(ev.uid) or real_hide(ev))
    # Carol sees bob at the default level, availability: no details at all.
    as_carol = requester(service, "carol@example.test")
    (first,) = await service.lookup(as_carol, [BOB], day(40), day(41))
    assert [e.subject for e in first.events] == [None, None] and len(hidden) == 2
    (again,) = await service.lookup(as_carol, [BOB], day(40), day(41))
    assert again.events is first.events and len(hidden) == 2  # served from the filtered copy
    assert isinstance(again.events, tuple)  # shared, so nobody may change it
    (own,) = await service.lookup(requester(service, BOB), [BOB], day(40), day(41))
    assert [e.subject for e in own.events] == ["Bob visible", "Bob hidden"]
