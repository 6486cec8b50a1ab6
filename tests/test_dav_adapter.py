"""The CalDAV and CardDAV adapters against a real Radicale over TLS."""

from __future__ import annotations

import datetime as dt
from contextlib import AsyncExitStack

import icalendar
import pytest
from caldav.davclient import DAVClient

from adapters.dav import CalDavCalendarStore, CardDavContactStore
from adapters.errors import (AuthenticationFailed, BackendError, BackendUnavailable, Conflict,
                             InvalidData, NotFound, PermissionDenied)
from adapters.interfaces import CalendarStore, ContactStore, Credentials
from gateway.demo.procs import free_port

UTC = dt.timezone.utc

BERLIN = """BEGIN:VTIMEZONE
TZID:Europe/Berlin
BEGIN:STANDARD
DTSTART:19701025T030000
RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU
TZOFFSETFROM:+0200
TZOFFSETTO:+0100
END:STANDARD
BEGIN:DAYLIGHT
DTSTART:19700329T020000
RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU
TZOFFSETFROM:+0100
TZOFFSETTO:+0200
END:DAYLIGHT
END:VTIMEZONE
"""


def crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


def vcalendar(*bodies: str, tz: str = "") -> str:
    events = "".join(f"BEGIN:VEVENT\r\nDTSTAMP:20250101T000000Z\r\n{crlf(b.strip())}\r\nEND:VEVENT\r\n"
                     for b in bodies)
    return f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//casgate//tests//EN\r\n{tz}{events}END:VCALENDAR\r\n"


SINGLE = vcalendar("UID:single-1\nSUMMARY:Dentist\nDTSTART:20250110T100000Z\nDTEND:20250110T110000Z")
ALL_DAY = vcalendar("UID:allday-1\nSUMMARY:Holiday\nDTSTART;VALUE=DATE:20250310\nDTEND;VALUE=DATE:20250311")
# Daily 09:00 Berlin (08:00Z) from Mon 6 Jan, five times; Wednesday's moved to 11:00.
RECURRING = vcalendar(
    "UID:standup-1\nSUMMARY:Standup\nDTSTART;TZID=Europe/Berlin:20250106T090000\n"
    "DTEND;TZID=Europe/Berlin:20250106T091500\nRRULE:FREQ=DAILY;COUNT=5",
    "UID:standup-1\nSUMMARY:Standup (moved)\nRECURRENCE-ID;TZID=Europe/Berlin:20250108T090000\n"
    "DTSTART;TZID=Europe/Berlin:20250108T110000\nDTEND;TZID=Europe/Berlin:20250108T111500",
    tz=crlf(BERLIN))

VCARD = ("BEGIN:VCARD\r\nVERSION:3.0\r\nUID:contact-bob\r\nFN:Bob Builder\r\nN:Builder;Bob;;;\r\n"
         "EMAIL;TYPE=INTERNET:bob@example.test\r\nTEL;TYPE=WORK:+49 30 1234567\r\nEND:VCARD\r\n")


def when(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> dt.datetime:
    return dt.datetime(y, mo, d, h, mi, tzinfo=UTC)


def summaries(objects) -> list[str]:
    return sorted(str(icalendar.Calendar.from_ical(o.ical).walk("VEVENT")[0]["SUMMARY"]) for o in objects)


@pytest.fixture
async def stack():
    async with AsyncExitStack() as s:
        yield s


@pytest.fixture
def make_calendars(radicale, certs, users, stack):
    async def make(login: str, password: str | None = None, url: str | None = None,
                   ca=certs.ca_cert) -> CalDavCalendarStore:
        store = CalDavCalendarStore(url or radicale.url, Credentials(login, password or users[login]),
                                    ca, timeout=5)
        await store.start(stack)
        return store
    return make


@pytest.fixture
def make_contacts(radicale, certs, users, stack):
    async def make(login: str, password: str | None = None, url: str | None = None) -> CardDavContactStore:
        store = CardDavContactStore(url or radicale.url, Credentials(login, password or users[login]),
                                    certs.ca_cert, timeout=5)
        await store.start(stack)
        return store
    return make


@pytest.fixture
async def alice_cal(make_calendars):
    """Alice's store and a calendar of her own that no other test writes to."""
    store = await make_calendars("alice@example.test")
    info = await store.create_calendar("Scratch")
    return store, info.url


async def test_stores_satisfy_the_protocols(make_calendars, make_contacts):
    assert isinstance(await make_calendars("alice@example.test"), CalendarStore)
    assert isinstance(await make_contacts("alice@example.test"), ContactStore)


async def test_default_calendar_is_created_once(make_calendars):
    store = await make_calendars("carol@example.test")
    first = await store.list_calendars()
    assert [c.name for c in first] == ["Calendar"]
    again = await store.list_calendars()
    assert [c.url for c in again] == [first[0].url]
    assert (await store.ensure_default_calendar()).url == first[0].url


async def test_create_calendar_is_listed(make_calendars):
    store = await make_calendars("alice@example.test")
    created = await store.create_calendar("Work & Travel")
    listed = {c.url: c for c in await store.list_calendars()}
    assert created.url in listed
    assert listed[created.url].name == "Work & Travel"
    assert listed[created.url].ctag


async def test_single_event_round_trip_and_time_range(alice_cal):
    store, url = alice_cal
    put = await store.put_event(url, SINGLE)
    assert put.href.startswith(url) and put.href.endswith("/single-1.ics")
    assert put.etag and put.ical == SINGLE
    inside = await store.events_between(url, when(2025, 1, 10, 10, 30), when(2025, 1, 10, 12))
    assert [(o.href, o.etag) for o in inside] == [(put.href, put.etag)]
    assert "Dentist" in inside[0].ical
    # [start, end) is half-open: an event ending exactly at start is not in range.
    assert await store.events_between(url, when(2025, 1, 10, 11), when(2025, 1, 10, 12)) == []
    assert await store.events_between(url, when(2025, 1, 9), when(2025, 1, 10, 10)) == []


async def test_replacing_an_event_keeps_one_object(alice_cal):
    store, url = alice_cal
    first = await store.put_event(url, SINGLE)
    second = await store.put_event(url, SINGLE.replace("Dentist", "Dentist (rescheduled)"))
    assert second.href == first.href and second.etag != first.etag
    found = await store.events_between(url, when(2025, 1, 10), when(2025, 1, 11))
    assert summaries(found) == ["Dentist (rescheduled)"]


async def test_all_day_event_covers_its_day_only(alice_cal):
    store, url = alice_cal
    await store.put_event(url, ALL_DAY)
    assert summaries(await store.events_between(url, when(2025, 3, 10, 12), when(2025, 3, 10, 13))) \
        == ["Holiday"]
    assert await store.events_between(url, when(2025, 3, 11, 0), when(2025, 3, 11, 6)) == []
    assert await store.events_between(url, when(2025, 3, 9, 12), when(2025, 3, 9, 23)) == []


async def test_recurring_event_with_exception_and_tzid(alice_cal):
    store, url = alice_cal
    put = await store.put_event(url, RECURRING)
    window = (when(2025, 1, 7), when(2025, 1, 9))
    master = await store.events_between(url, *window)
    assert len(master) == 1 and "RRULE:FREQ=DAILY;COUNT=5" in master[0].ical

    instances = await store.events_between(url, *window, expand=True)
    assert summaries(instances) == ["Standup", "Standup (moved)"]
    assert all(o.href == put.href and o.etag == master[0].etag for o in instances)
    starts = {}
    for o in instances:
        ev = icalendar.Calendar.from_ical(o.ical).walk("VEVENT")[0]
        assert "RRULE" not in ev and "RECURRENCE-ID" in ev
        assert "TZID=Europe/Berlin" in o.ical  # client-side expansion keeps the zone
        starts[str(ev["SUMMARY"])] = ev["DTSTART"].dt.astimezone(UTC)
    assert starts == {"Standup": when(2025, 1, 7, 8), "Standup (moved)": when(2025, 1, 8, 10)}

    # Wednesday's 08:00Z slot is empty: the exception moved it to 10:00Z.
    assert await store.events_between(url, when(2025, 1, 8, 7, 30), when(2025, 1, 8, 9), expand=True) == []
    # Half-open at the end: Tuesday's instance starts exactly where this window ends.
    monday = await store.events_between(url, when(2025, 1, 6, 8), when(2025, 1, 7, 8), expand=True)
    assert len(monday) == 1 and "20250106T090000" in monday[0].ical
    week = await store.events_between(url, when(2025, 1, 6), when(2025, 1, 13), expand=True)
    assert len(week) == 5
    assert await store.events_between(url, when(2025, 1, 11), when(2025, 1, 20), expand=True) == []


async def test_uid_argument_names_the_object(alice_cal):
    store, url = alice_cal
    no_uid = SINGLE.replace("UID:single-1\r\n", "")
    put = await store.put_event(url, no_uid, uid="meeting-42@example.test")
    assert put.href.endswith("/meeting-42%40example.test.ics")
    assert "UID:meeting-42@example.test" in put.ical
    found = await store.events_between(url, when(2025, 1, 10), when(2025, 1, 11))
    assert [o.href for o in found] == [put.href]


async def test_delete_event(alice_cal):
    store, url = alice_cal
    put = await store.put_event(url, SINGLE)
    await store.delete(put.href)
    assert await store.events_between(url, when(2025, 1, 10), when(2025, 1, 11)) == []
    with pytest.raises(NotFound):
        await store.delete(put.href)


@pytest.mark.parametrize("junk", ["not a calendar", "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:x\r\nEND:VCARD\r\n",
                                  "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//x//EN\r\nEND:VCALENDAR\r\n"])
async def test_malformed_event_is_invalid_data(alice_cal, junk):
    store, url = alice_cal
    with pytest.raises(InvalidData):
        await store.put_event(url, junk)


async def test_data_the_server_refuses_is_invalid_data(alice_cal):
    store, url = alice_cal
    # icalendar parses this; Radicale refuses it (400).
    bad = SINGLE.replace("DTSTART:20250110T100000Z", "DTSTART:garbage")
    assert bad != SINGLE
    with pytest.raises(InvalidData):
        await store.put_event(url, bad)


async def test_missing_collections_are_not_found(make_calendars, make_contacts, radicale):
    missing = radicale.url + "alice%40example.test/no-such-collection/"
    cal = await make_calendars("alice@example.test")
    with pytest.raises(NotFound):
        await cal.events_between(missing, when(2025, 1, 1), when(2025, 2, 1))
    with pytest.raises(NotFound):  # Radicale's 409 for a missing parent, told apart from a UID clash
        await cal.put_event(missing, SINGLE)
    book = await make_contacts("alice@example.test")
    with pytest.raises(NotFound):
        await book.contacts(missing)
    with pytest.raises(NotFound):
        await book.put_contact(missing, VCARD)


async def test_uid_taken_by_another_resource_is_conflict(alice_cal, radicale, certs, users):
    store, url = alice_cal
    # Another client stored the same UID under a name of its own choosing.
    other = DAVClient(url, username="alice@example.test", password=users["alice@example.test"],
                      auth_type="basic", ssl_verify_cert=str(certs.ca_cert), enable_rfc6764=False)
    try:
        assert other.put(url + "chosen-by-other-client.ics", SINGLE,
                         {"Content-Type": "text/calendar"}).status == 201
    finally:
        other.close()
    with pytest.raises(Conflict):
        await store.put_event(url, SINGLE)
    found = await store.events_between(url, when(2025, 1, 10), when(2025, 1, 11))
    assert [o.href.rsplit("/", 1)[1] for o in found] == ["chosen-by-other-client.ics"]


async def test_contacts_put_list_delete(make_contacts):
    store = await make_contacts("alice@example.test")
    books = await store.list_address_books()
    assert books and books[0].name == "Contacts"
    book = books[0].url
    put = await store.put_contact(book, VCARD)
    assert put.href.endswith("/contact-bob.vcf") and put.etag
    listed = {c.href: c for c in await store.contacts(book)}
    assert put.href in listed
    assert "FN:Bob Builder" in listed[put.href].vcard and listed[put.href].etag == put.etag

    second = await store.put_contact(book, VCARD.replace("UID:contact-bob\r\n", ""), uid="other-bob")
    assert second.href.endswith("/other-bob.vcf") and "UID:other-bob" in second.vcard
    await store.delete(put.href)
    assert [c.href for c in await store.contacts(book)] == [second.href]
    with pytest.raises(NotFound):
        await store.delete(put.href)


async def test_created_address_book_is_listed(make_contacts):
    store = await make_contacts("bob@example.test")
    created = await store.create_address_book("Suppliers")
    listed = {b.url: b.name for b in await store.list_address_books()}
    assert listed[created.url] == "Suppliers"
    assert await store.contacts(created.url) == []


async def test_malformed_contact_is_invalid_data(make_contacts):
    store = await make_contacts("alice@example.test")
    book = (await store.ensure_default_address_book()).url
    with pytest.raises(InvalidData):
        await store.put_contact(book, "BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n")


async def test_wrong_password_is_authentication_failed(make_calendars, make_contacts):
    cal = await make_calendars("alice@example.test", password="wrong")
    with pytest.raises(AuthenticationFailed):
        await cal.list_calendars()
    book = await make_contacts("alice@example.test", password="wrong")
    with pytest.raises(AuthenticationFailed):
        await book.list_address_books()


async def test_closed_port_is_backend_unavailable(make_calendars, make_contacts):
    dead = f"https://127.0.0.1:{free_port()}/"
    cal = await make_calendars("alice@example.test", url=dead)
    with pytest.raises(BackendUnavailable) as info:
        await cal.list_calendars()
    assert info.value.transient
    book = await make_contacts("alice@example.test", url=dead)
    with pytest.raises(BackendUnavailable):
        await book.contacts(dead + "alice@example.test/contacts/")


async def test_certificate_is_verified(make_calendars):
    # Without our CA the system trust store cannot vouch for Radicale's certificate.
    store = await make_calendars("alice@example.test", ca=None)
    with pytest.raises(BackendUnavailable):
        await store.list_calendars()


async def test_owner_only_keeps_users_apart(alice_cal, make_calendars, make_contacts):
    store, url = alice_cal
    put = await store.put_event(url, SINGLE)
    bob = await make_calendars("bob@example.test")
    with pytest.raises((NotFound, PermissionDenied)):
        await bob.events_between(url, when(2025, 1, 10), when(2025, 1, 11))
    with pytest.raises((NotFound, PermissionDenied)):
        await bob.delete(put.href)
    with pytest.raises((NotFound, PermissionDenied)):
        await bob.put_event(url, SINGLE.replace("Dentist", "Hijacked"))
    assert summaries(await store.events_between(url, when(2025, 1, 10), when(2025, 1, 11))) == ["Dentist"]
    assert url not in {c.url for c in await bob.list_calendars()}

    alice_book = (await (await make_contacts("alice@example.test")).ensure_default_address_book()).url
    with pytest.raises((NotFound, PermissionDenied)):
        await (await make_contacts("bob@example.test")).contacts(alice_book)


async def test_store_used_before_start_raises_backend_error(radicale, certs):
    store = CalDavCalendarStore(radicale.url, Credentials("alice@example.test", "x"), certs.ca_cert)
    with pytest.raises(BackendError):
        await store.list_calendars()


async def test_time_range_query_returns_the_servers_text_unparsed(alice_cal, monkeypatch):
    import adapters.dav.caldav_store as caldav_store
    store, url = alice_cal
    put = await store.put_event(url, SINGLE)

    class NoParsing:
        class Calendar:
            @staticmethod
            def from_ical(*args, **kwargs):
                raise AssertionError("events_between parsed iCalendar")
    monkeypatch.setattr(caldav_store, "icalendar", NoParsing)
    found = await store.events_between(url, when(2025, 1, 10), when(2025, 1, 11))
    assert [(o.href, o.etag) for o in found] == [(put.href, put.etag)]
    assert "BEGIN:VCALENDAR" in found[0].ical and "SUMMARY:Dentist" in found[0].ical


async def test_etags_multiget_and_conditional_writes_on_a_calendar(alice_cal):
    store, url = alice_cal
    assert await store.object_etags(url) == {}
    one = await store.put_event(url, SINGLE)
    two = await store.put_event(url, ALL_DAY)
    tags = await store.object_etags(url)
    assert tags == {one.href: one.etag, two.href: two.etag}
    fetched = await store.fetch_objects(url, [two.href, one.href, url + "missing.ics"])
    assert [o.href for o in fetched] == [two.href, one.href]
    assert "Holiday" in fetched[0].ical and fetched[0].etag == two.etag

    changed = SINGLE.replace("Dentist", "Dentist (moved)")
    new_tag = await store.replace_object(one.href, changed, one.etag)
    assert new_tag and new_tag != one.etag
    with pytest.raises(Conflict):  # the version we saw is no longer there
        await store.replace_object(one.href, SINGLE, one.etag)
    assert "moved" in (await store.fetch_objects(url, [one.href]))[0].ical
    with pytest.raises(Conflict):  # If-None-Match: * on an existing object
        await store.replace_object(one.href, SINGLE, None)
    with pytest.raises(Conflict):
        await store.delete_object(one.href, one.etag)
    await store.delete_object(one.href, new_tag)
    await store.delete_object(one.href, new_tag)  # already gone: fine
    with pytest.raises(NotFound):
        await store.replace_object(one.href, SINGLE, new_tag)
    assert set(await store.object_etags(url)) == {two.href}
    created = await store.replace_object(url + "fresh.ics", SINGLE.replace("single-1", "fresh-1"), None)
    assert (await store.object_etags(url))[url + "fresh.ics"] == created


async def test_calendars_report_their_component_types(make_calendars):
    store = await make_calendars("alice@example.test")
    calendars = await store.list_calendars()
    assert all(set(c.components) <= {"VEVENT", "VTODO", "VJOURNAL"} for c in calendars)
    assert any("VEVENT" in c.components or not c.components for c in calendars)


async def test_etags_and_conditional_writes_on_an_address_book(make_contacts):
    store = await make_contacts("alice@example.test")
    book = (await store.create_address_book("Sync scratch")).url
    card = await store.put_contact(book, VCARD.replace("contact-bob", "sync-bob"))
    assert await store.object_etags(book) == {card.href: card.etag}
    [got] = await store.fetch_objects(book, [card.href])
    assert "Bob Builder" in got.vcard and got.etag == card.etag
    tag = await store.replace_object(card.href, got.vcard.replace("Bob Builder", "Robert Builder"), card.etag)
    with pytest.raises(Conflict):
        await store.replace_object(card.href, got.vcard, card.etag)
    await store.delete_object(card.href, tag)
    assert await store.object_etags(book) == {}


async def test_etags_of_one_component_type(alice_cal):
    store, url = alice_cal
    event = await store.put_event(url, SINGLE.replace("single-1", "typed-event"))
    todo = await store.put_event(url, "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VTODO\r\n"
                                      "UID:typed-todo\r\nDTSTAMP:20250101T000000Z\r\nSUMMARY:Do it\r\n"
                                      "END:VTODO\r\nEND:VCALENDAR\r\n")
    assert set(await store.object_etags(url, "VTODO")) == {todo.href}
    assert event.href in await store.object_etags(url, "VEVENT")
    assert todo.href not in await store.object_etags(url, "VEVENT")
    assert {event.href, todo.href} <= set(await store.object_etags(url))


async def test_find_an_object_by_uid_whatever_its_href(alice_cal):
    store, url = alice_cal
    href = url + "not-the-uid.ics"
    await store.replace_object(href, SINGLE.replace("single-1", "odd-uid@example.test"), None)
    found = await store.find_uid(url, "odd-uid@example.test")
    assert found is not None and found.href == href and "Dentist" in found.ical and found.etag
    assert await store.find_uid(url, "odd-uid") is None  # whole UIDs only
    assert await store.find_uid(url, "odd-uid@example.test", "VTODO") is None


async def test_calendar_of_one_type_renamed_and_deleted(make_calendars, make_contacts):
    store = await make_calendars("alice@example.test")
    info = await store.create_calendar("Chores", ("VTODO",))
    listed = {c.url: c for c in await store.list_calendars()}
    assert listed[info.url].components == ("VTODO",)
    await store.rename_collection(info.url, "House chores")
    assert {c.url: c.name for c in await store.list_calendars()}[info.url] == "House chores"
    await store.delete(info.url)
    assert info.url not in {c.url for c in await store.list_calendars()}
    books = await make_contacts("alice@example.test")
    book = await books.create_address_book("Club")
    await books.rename_collection(book.url, "Chess club")
    assert {b.url: b.name for b in await books.list_address_books()}[book.url] == "Chess club"


async def test_etags_since_a_moment_and_of_open_tasks(alice_cal):
    store, url = alice_cal
    old = await store.put_event(url, SINGLE.replace("single-1", "old-one"))  # 10 January 2025
    weekly = await store.put_event(url, vcalendar("UID:weekly-on\nSUMMARY:Weekly\nDTSTART:20250106T100000Z\n"
                                                  "DTEND:20250106T110000Z\nRRULE:FREQ=WEEKLY"))
    todo = ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VTODO\r\nUID:{uid}\r\n"
            "DTSTAMP:20250101T000000Z\r\nSUMMARY:Task\r\n{extra}END:VTODO\r\nEND:VCALENDAR\r\n")
    open_task = await store.put_event(url, todo.format(uid="open-task", extra=""))
    await store.put_event(url, todo.format(uid="done-task", extra="STATUS:COMPLETED\r\nCOMPLETED:20250102T000000Z\r\n"))
    recent = set(await store.object_etags(url, "VEVENT", since=when(2025, 6, 1)))
    assert weekly.href in recent and old.href not in recent  # a recurrence still running counts
    assert set(await store.object_etags(url, "VTODO", open_only=True)) == {open_task.href}
