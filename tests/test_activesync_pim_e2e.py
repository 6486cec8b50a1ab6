"""ActiveSync contacts, calendar, tasks and notes through the gateway to the session's real Radicale (and
Dovecot for mail), driven by pyactivesync and by raw WBXML requests; what the phone writes is read back
from Radicale with the caldav library, and what is written there reaches the phone."""

from __future__ import annotations

import asyncio
import email
import imaplib
import re
import ssl
import time
import uuid
from contextlib import AsyncExitStack

import pytest
import requests
from pyactivesync import Client
from pyactivesync.models import Contact, ContactChange

from adapters.dav import CalDavCalendarStore, CardDavContactStore
from adapters.interfaces import Credentials
from gateway.activesync import wbxml
from gateway.activesync.codepages import tag_token
from gateway.activesync.wbxml import Element
from gateway.demo.procs import free_port
from gatewayproc import config_toml, start_gateway, stop_gateway, users_toml, write_config

USER = "tablet@example.test"
WBXML = "application/vnd.ms-sync.wbxml"


@pytest.fixture(scope="module")
def pim(workdir, certs, dovecot, radicale, users, submission):
    root = workdir / f"eas-pim-{free_port()}"
    https = free_port()
    extra = (f'[backends.dav]\ntype = "caldav"\nurl = "{radicale.url}"\n'
             f'[backends.book]\ntype = "carddav"\nurl = "{radicale.url}"\n'
             f'[backends.deaddav]\ntype = "caldav"\nurl = "https://127.0.0.1:{free_port()}/"\ntimeout = 2\n'
             f'[backends.submission]\ntype = "smtp"\nurl = "smtp://127.0.0.1:{submission.port}"\ntls = "starttls"\n'
             '[domains."example.test"]\nimap = "dovecot"\ncaldav = "dav"\ncarddav = "book"\nsmtp = "submission"\n'
             # The Ping's own look a minute apart: a held Ping must be woken by the push hub's DAV look.
             "[activesync]\nping_min_heartbeat = 1\nping_check_interval = 60\npush_poll_interval = 1\n")
    write_config(root, config_toml(certs, dovecot, https=https, extra=extra), users_toml([USER]))
    proc = start_gateway(root, [https])
    yield {"port": https, "ca": str(certs.ca_cert), "root": root, "radicale": radicale, "certs": certs,
           "password": users[USER], "dovecot": dovecot, "users": users}
    stop_gateway(proc)


def _client(pim, device=None) -> Client:
    c = Client(f"127.0.0.1:{pim['port']}", USER, pim["password"], device_id=device or uuid.uuid4().hex[:16].upper(),
               verify_ssl=True)
    c._transport.session.verify = pim["ca"]
    c._transport.session.trust_env = False
    return c


async def _dav(pim, kind):
    stack = AsyncExitStack()
    cls = CardDavContactStore if kind == "card" else CalDavCalendarStore
    store = cls(pim["radicale"].url, Credentials(USER, pim["password"]), pim["certs"].ca_cert, timeout=5)
    await store.start(stack)
    return store, stack


def _folders_by_type(c: Client) -> dict[int, list]:
    out: dict[int, list] = {}
    for f in c.list_folders():
        out.setdefault(int(getattr(f.type, "value", f.type)), []).append(f)
    return out


def _sync_all(c: Client, folder_id: str, key: str = "0"):
    """(the key after syncing everything, every item added, changed, deleted)."""
    if key == "0":
        key = c.sync_folder(folder_id).sync_key
    added, changed, deleted = [], [], []
    while True:
        result = c.sync_folder(folder_id, key, window_size=50)
        added += result.added
        changed += result.changed
        deleted += result.deleted
        key = result.sync_key
        if not result.more_available:
            return key, added, changed, deleted


def test_foldersync_lists_calendar_contacts_tasks_and_notes(pim):
    c = _client(pim)
    by_type = _folders_by_type(c)
    # Default Tasks (7), Calendar (8), Contacts (9), Notes (10), beside the mail folders (Inbox 2).
    for kind, name in ((7, "Tasks"), (8, "Calendar"), (9, "Contacts"), (10, "Notes")):
        assert [f.name for f in by_type.get(kind, [])] == [name], by_type
    assert 2 in by_type


async def test_contacts_both_ways_with_radicale(pim):
    c = _client(pim)
    contacts = _folders_by_type(c)[9][0]
    key, before, _, _ = await asyncio.to_thread(_sync_all, c, contacts.id)
    # Phone -> Radicale.
    added = await asyncio.to_thread(c.create_contact, contacts.id, key,
                                    Contact(first_name="Ada", last_name="Lovelace", company_name="Engines Ltd",
                                            email1_address="ada@example.test", mobile_phone_number="+44 20 7946 0000"))
    assert added.status == "1" and added.server_id
    store, stack = await _dav(pim, "card")
    async with stack:
        book = (await store.list_address_books())[0].url
        cards = [x for x in await store.contacts(book) if "Lovelace" in x.vcard]
        assert len(cards) == 1
        assert "ada@example.test" in cards[0].vcard and "Engines Ltd" in cards[0].vcard
        assert "+44 20 7946 0000" in cards[0].vcard
        # Radicale -> phone.
        uid = f"from-radicale-{uuid.uuid4()}"
        await store.put_contact(book, f"BEGIN:VCARD\r\nVERSION:3.0\r\nUID:{uid}\r\nFN:Grace Hopper\r\n"
                                      "N:Hopper;Grace;;;\r\nEMAIL;TYPE=INTERNET:grace@example.test\r\n"
                                      "TEL;TYPE=WORK:+1 555 0100\r\nEND:VCARD\r\n")
        key, new, _, _ = await asyncio.to_thread(_sync_all, c, contacts.id, added.sync_key)
        [grace] = [i for i in new if i.fields.get("Contacts.LastName") == "Hopper"]
        assert grace.fields.get("Contacts.FirstName") == "Grace"
        assert "grace@example.test" in grace.fields.get("Contacts.Email1Address", "")
        assert not [i for i in new if i.fields.get("Contacts.LastName") == "Lovelace"]  # the phone's own: not echoed
        fetched = await asyncio.to_thread(c.fetch_item, contacts.id, grace.server_id)
        assert fetched.fields.get("Contacts.FirstName") == "Grace"
        assert "+1 555 0100" in fetched.fields.values()
        # Phone changes and deletes; Radicale sees both.
        result = await asyncio.to_thread(
            c.apply_contact_changes, contacts.id, key,
            [ContactChange(grace.server_id, Contact(first_name="Grace", last_name="Hopper",
                                                    job_title="Rear Admiral", email1_address="grace@example.test")),
             ContactChange(added.server_id, delete=True)])
        assert set(result.statuses.values()) == {"1"}
        cards = await store.contacts(book)
        assert not [x for x in cards if "Lovelace" in x.vcard]
        [hopper] = [x for x in cards if uid in x.vcard]
        assert "Rear Admiral" in hopper.vcard
        # Radicale deletes; the phone is told.
        await store.delete(hopper.href)
        _, _, _, gone = await asyncio.to_thread(_sync_all, c, contacts.id, result.sync_key)
        assert gone == [grace.server_id]


def _imap(pim, who: str) -> imaplib.IMAP4_SSL:
    m = imaplib.IMAP4_SSL("127.0.0.1", pim["dovecot"].imaps_port,
                          ssl_context=ssl.create_default_context(cafile=str(pim["certs"].ca_cert)))
    m.login(who, pim["users"][who])
    return m


def _invitation(uid: str, organizer: str, attendee: str) -> bytes:
    ical = ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//tests//EN\r\nMETHOD:REQUEST\r\n"
            "BEGIN:VTIMEZONE\r\nTZID:Europe/Berlin\r\nBEGIN:STANDARD\r\nDTSTART:19701025T030000\r\n"
            "RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU\r\nTZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\nEND:STANDARD\r\n"
            "BEGIN:DAYLIGHT\r\nDTSTART:19700329T020000\r\nRRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU\r\n"
            "TZOFFSETFROM:+0100\r\nTZOFFSETTO:+0200\r\nEND:DAYLIGHT\r\nEND:VTIMEZONE\r\n"
            f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20261120T090000Z\r\nSEQUENCE:0\r\n"
            "DTSTART;TZID=Europe/Berlin:20261210T100000\r\nDTEND;TZID=Europe/Berlin:20261210T110000\r\n"
            "SUMMARY:Budget review\r\nLOCATION:Room 4\r\n"
            f"ORGANIZER;CN=Phone Owner:mailto:{organizer}\r\n"
            f"ATTENDEE;CN=Organizer;PARTSTAT=ACCEPTED;ROLE=CHAIR:mailto:{organizer}\r\n"
            f"ATTENDEE;RSVP=TRUE;PARTSTAT=NEEDS-ACTION;ROLE=REQ-PARTICIPANT:mailto:{attendee}\r\n"
            "BEGIN:VALARM\r\nACTION:DISPLAY\r\nTRIGGER:-PT15M\r\nDESCRIPTION:Reminder\r\nEND:VALARM\r\n"
            "END:VEVENT\r\nEND:VCALENDAR\r\n")
    return (f"From: Phone Owner <{organizer}>\r\nTo: {attendee}\r\nSubject: Invitation: Budget review\r\n"
            f"Date: Fri, 20 Nov 2026 09:00:00 +0000\r\nMessage-ID: <{uuid.uuid4()}@example.test>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b1\r\n\r\n"
            "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlease come.\r\n"
            "--b1\r\nContent-Type: text/calendar; charset=utf-8; method=REQUEST\r\n\r\n"
            f"{ical}--b1--\r\n").encode()


def _field(item, ns: str, name: str) -> str | None:
    """A field of a pyactivesync item, whose code page tables lack some names (it shows them as tokens)."""
    if (found := item.fields.get(f"{ns}.{name}")) is not None:
        return found
    _, token = tag_token(ns, name)
    return item.fields.get(f"{ns}.0x{token:02X}")


def _inbox_items(c: Client):
    inbox = next(f for f in c.list_folders() if int(getattr(f.type, "value", f.type)) == 2)
    key, added, _, _ = _sync_all(c, inbox.id)
    return inbox, added


async def test_meeting_request_response_round_trip(pim):
    organizer = "organizer@example.test"
    uid = f"meeting-{uuid.uuid4()}@example.test"
    m = await asyncio.to_thread(_imap, pim, USER)
    try:
        typ, _ = m.append("INBOX", None, None, _invitation(uid, organizer, USER))
        assert typ == "OK"
    finally:
        m.logout()
    c = _client(pim)
    inbox, added = await asyncio.to_thread(_inbox_items, c)
    [item] = [i for i in added if i.fields.get("Email.Subject") == "Invitation: Budget review"]
    assert item.fields.get("Email.MessageClass") == "IPM.Schedule.Meeting.Request"
    assert _field(item, "Email", "Organizer") == organizer
    assert _field(item, "Email", "Location") == "Room 4"
    assert _field(item, "Email", "StartTime") == "2026-12-10T09:00:00.000Z"  # 10:00 Berlin in winter
    assert _field(item, "Email", "Reminder") == "15" and _field(item, "Email", "GlobalObjId")

    request = Element("MeetingResponse", "MeetingResponse", [Element("MeetingResponse", "Request", [
        Element("MeetingResponse", "UserResponse", text="1"),
        Element("MeetingResponse", "CollectionId", text=inbox.id),
        Element("MeetingResponse", "RequestId", text=item.server_id),
        Element("MeetingResponse", "SendResponse", [])])])
    answer = wbxml.decode(await asyncio.to_thread(c._post, "MeetingResponse", wbxml.encode(request)))
    result = answer.find("Result")
    assert result.text_of("Status") == "1" and result.text_of("RequestId") == item.server_id

    store, stack = await _dav(pim, "cal")
    async with stack:
        calendar = (await store.list_calendars())[0].url
        stored = await store.find_uid(calendar, uid)
        assert stored is not None and "METHOD" not in stored.ical
        assert re.search(rf"^ATTENDEE[^:\r\n]*PARTSTAT=ACCEPTED[^:\r\n]*:mailto:{USER}",
                         stored.ical.replace("\r\n ", "").replace("\n ", ""), re.M)

    def organizer_got_reply() -> bytes | None:
        box = _imap(pim, organizer)
        try:
            for _ in range(50):
                box.select("INBOX")
                typ, found = box.search(None, "SUBJECT", '"Accepted: Invitation: Budget review"')
                if found[0]:
                    return box.fetch(found[0].split()[-1], "(RFC822)")[1][0][1]
                time.sleep(0.2)
            return None
        finally:
            box.logout()
    reply = await asyncio.to_thread(organizer_got_reply)
    assert reply is not None
    parsed = email.message_from_bytes(reply)
    [part] = [p for p in parsed.walk() if p.get_content_type() == "text/calendar"]
    assert part.get_param("method") == "REPLY"
    text = part.get_payload(decode=True).decode().replace("\r\n ", "")
    assert "METHOD:REPLY" in text and f"UID:{uid}" in text
    assert re.search(rf"^ATTENDEE[^:\r\n]*PARTSTAT=ACCEPTED[^:\r\n]*:mailto:{USER}", text, re.M)
    assert "ORGANIZER" in text and "needs-action" not in text.lower()
    # The answered request left the Inbox (Deleted Items now).
    _, left, _, _ = await asyncio.to_thread(_sync_all, c, inbox.id)
    assert not [i for i in left if i.fields.get("Email.Subject") == "Invitation: Budget review"]


def _post(pim, cmd: str, body: Element, device: str, policy: str | None = None) -> requests.Response:
    url = (f"https://127.0.0.1:{pim['port']}/Microsoft-Server-ActiveSync?Cmd={cmd}&User={USER}"
           f"&DeviceId={device}&DeviceType=TestPhone")
    headers = {"Content-Type": WBXML, "MS-ASProtocolVersion": "16.1"}
    if policy:
        headers["X-MS-PolicyKey"] = policy
    session = requests.Session()
    session.trust_env = False
    return session.post(url, data=wbxml.encode(body), headers=headers, auth=(USER, pim["password"]),
                        verify=pim["ca"], timeout=30)


def test_phone_made_task_list_is_a_vtodo_calendar_renamed_and_removed(pim):
    from pyactivesync import FolderType
    from pyactivesync.exceptions import EASError
    c = _client(pim)
    by_type = _folders_by_type(c)
    made = c.create_folder("Errands", type=FolderType(15))
    store_calendars = asyncio.run(_calendars(pim))
    [errands] = [x for x in store_calendars if x.name == "Errands"]
    assert errands.components == ("VTODO",)
    assert [f.name for f in _folders_by_type(c)[15]] == ["Errands"]
    c.update_folder(made.id, "Shopping")
    assert [x.name for x in asyncio.run(_calendars(pim)) if x.url == errands.url] == ["Shopping"]
    with pytest.raises(EASError):  # the default calendar shows as Tasks and Notes too: it stays
        c.delete_folder(by_type[8][0].id)
    c.delete_folder(made.id)
    assert errands.url not in {x.url for x in asyncio.run(_calendars(pim))}
    assert 15 not in _folders_by_type(c)


async def _calendars(pim):
    store, stack = await _dav(pim, "cal")
    async with stack:
        return await store.list_calendars()


def _sync(c: Client, collection_id: str, key: str, *commands: Element, options: list[Element] = (),
          window: int = 100) -> Element | None:
    """One raw Sync of one collection; the response's Collection element (None for an empty answer)."""
    children = [Element("AirSync", "SyncKey", text=key), Element("AirSync", "CollectionId", text=collection_id),
                Element("AirSync", "WindowSize", text=str(window))]
    if commands:
        children += [Element("AirSync", "GetChanges", text="0"), Element("AirSync", "Commands", list(commands))]
    if options:
        children.append(Element("AirSync", "Options", list(options)))
    request = Element("AirSync", "Sync", [Element("AirSync", "Collections", [Element("AirSync", "Collection",
                                                                                      children)])])
    raw = c._post("Sync", wbxml.encode(request))
    if not raw:
        return None
    return wbxml.decode(raw).find("Collections").find("Collection")


def _primed(c: Client, folder_id: str, options: list[Element] = ()) -> tuple[str, list[Element]]:
    """(the key after a whole initial sync, the Add elements it brought)."""
    key = _sync(c, folder_id, "0", options=options).text_of("SyncKey")
    adds: list[Element] = []
    while True:
        answer = _sync(c, folder_id, key, options=options)
        if answer is None:
            return key, adds
        key = answer.text_of("SyncKey")
        commands = answer.find("Commands")
        adds += commands.findall("Add") if commands is not None else []
        if answer.find("MoreAvailable") is None:
            return key, adds


def _leaf(ns: str, name: str, text: str) -> Element:
    return Element(ns, name, text=text)


async def test_calendar_both_ways_recurrence_exception_and_invitations(pim):
    c = _client(pim)
    calendar = _folders_by_type(c)[8][0]
    store, stack = await _dav(pim, "cal")
    async with stack:
        url = [x for x in await store.list_calendars() if x.url.rstrip("/").endswith("/calendar")][0].url
        uid = f"standup-{uuid.uuid4()}"
        # CalDAV -> phone: a weekly Berlin meeting with a moved and a cancelled occurrence.
        await store.put_event(url, (
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//tests//EN\r\n"
            "BEGIN:VTIMEZONE\r\nTZID:Europe/Berlin\r\nBEGIN:STANDARD\r\nDTSTART:19701025T030000\r\n"
            "RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU\r\nTZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\nEND:STANDARD\r\n"
            "BEGIN:DAYLIGHT\r\nDTSTART:19700329T020000\r\nRRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU\r\n"
            "TZOFFSETFROM:+0100\r\nTZOFFSETTO:+0200\r\nEND:DAYLIGHT\r\nEND:VTIMEZONE\r\n"
            f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20261101T000000Z\r\nSUMMARY:Standup\r\n"
            "DTSTART;TZID=Europe/Berlin:20270301T090000\r\nDTEND;TZID=Europe/Berlin:20270301T091500\r\n"
            "RRULE:FREQ=WEEKLY;BYDAY=MO;COUNT=8\r\nEXDATE;TZID=Europe/Berlin:20270315T090000\r\nEND:VEVENT\r\n"
            f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20261101T000000Z\r\nSUMMARY:Standup (moved)\r\n"
            "RECURRENCE-ID;TZID=Europe/Berlin:20270322T090000\r\n"
            "DTSTART;TZID=Europe/Berlin:20270322T110000\r\nDTEND;TZID=Europe/Berlin:20270322T111500\r\n"
            "END:VEVENT\r\nEND:VCALENDAR\r\n"))
        key, adds = await asyncio.to_thread(_primed, c, calendar.id)
        [item] = [a for a in adds if a.find("ApplicationData").text_of("Subject", "Calendar") == "Standup"]
        data = item.find("ApplicationData")
        assert data.text_of("StartTime", "Calendar") == "20270301T080000Z"  # 09:00 Berlin, winter time
        recurrence = data.find("Recurrence", "Calendar")
        assert recurrence.text_of("Type", "Calendar") == "1" and recurrence.text_of("Occurrences", "Calendar") == "8"
        exceptions = data.find("Exceptions", "Calendar").findall("Exception", "Calendar")
        # 16.x names an occurrence by AirSyncBase:InstanceId (compact UTC), earlier versions by ExceptionStartTime.
        by_start = {e.text_of("InstanceId", "AirSyncBase") or e.text_of("ExceptionStartTime", "Calendar"): e
                    for e in exceptions}
        assert by_start["20270315T080000Z"].text_of("Deleted", "Calendar") == "1"
        moved = by_start["20270322T080000Z"]
        assert moved.text_of("Subject", "Calendar") == "Standup (moved)"
        assert moved.text_of("StartTime", "Calendar") == "20270322T100000Z"
        assert data.text_of("Timezone", "Calendar")

        # Phone -> CalDAV: a 16.1 meeting with an attendee; the attendee is invited by iMIP.
        guest = "organizer@example.test"
        add = Element("AirSync", "Add", [_leaf("AirSync", "ClientId", "new-meeting-1"), Element(
            "AirSync", "ApplicationData", [
                _leaf("Calendar", "Timezone", data.text_of("Timezone", "Calendar")),
                _leaf("Calendar", "AllDayEvent", "0"),
                _leaf("Calendar", "StartTime", "20270405T070000Z"), _leaf("Calendar", "EndTime", "20270405T080000Z"),
                _leaf("Calendar", "Subject", "Roadmap"), _leaf("Calendar", "BusyStatus", "2"),
                _leaf("Calendar", "Sensitivity", "0"), _leaf("Calendar", "MeetingStatus", "1"),
                Element("Calendar", "Attendees", [Element("Calendar", "Attendee", [
                    _leaf("Calendar", "Email", guest), _leaf("Calendar", "Name", "Phone Owner"),
                    _leaf("Calendar", "AttendeeType", "1")])])])])
        answer = await asyncio.to_thread(_sync, c, calendar.id, key, add)
        [response] = answer.find("Responses").findall("Add")
        assert response.text_of("Status") == "1" and response.text_of("ServerId")
        # The same Add again (its answer lost): no second object, no second invitation.
        again = await asyncio.to_thread(_sync, c, calendar.id, key, add)
        assert again.find("Responses").find("Add").text_of("ServerId") == response.text_of("ServerId")
        objects = [o for o in await store.fetch_objects(url, list(await store.object_etags(url)))
                   if "SUMMARY:Roadmap" in o.ical]
        assert len(objects) == 1
        assert "ORGANIZER" in objects[0].ical and f"mailto:{guest}" in objects[0].ical
        assert "20270405T070000Z" in objects[0].ical or "TZID=" in objects[0].ical

    def invitations() -> list[bytes]:
        box = _imap(pim, guest)
        try:
            for _ in range(50):
                box.select("INBOX")
                _, found = box.search(None, "SUBJECT", '"Roadmap"')
                if found[0]:
                    time.sleep(0.5)  # a second one would have arrived by now
                    _, found = box.search(None, "SUBJECT", '"Roadmap"')
                    return [box.fetch(n, "(RFC822)")[1][0][1] for n in found[0].split()]
                time.sleep(0.2)
            return []
        finally:
            box.logout()
    [invite] = await asyncio.to_thread(invitations)
    [part] = [p for p in email.message_from_bytes(invite).walk() if p.get_content_type() == "text/calendar"]
    assert part.get_param("method") == "REQUEST"
    assert "SUMMARY:Roadmap" in part.get_payload(decode=True).decode()


async def test_a_held_ping_on_contacts_wakes_when_radicale_changes(pim):
    c = _client(pim)
    contacts = _folders_by_type(c)[9][0]
    await asyncio.to_thread(_sync_all, c, contacts.id)
    store, stack = await _dav(pim, "card")
    async with stack:
        book = (await store.list_address_books())[0].url
        held = asyncio.ensure_future(asyncio.to_thread(c.ping, contacts.id, folder_class="Contacts", heartbeat=50))
        await asyncio.sleep(1.5)  # the Ping is held, its watcher has looked once
        assert not held.done()
        started = time.monotonic()
        await store.put_contact(book, f"BEGIN:VCARD\r\nVERSION:3.0\r\nUID:{uuid.uuid4()}\r\nFN:Pinged Person\r\n"
                                      "N:Person;Pinged;;;\r\nEND:VCARD\r\n")
        result = await asyncio.wait_for(held, 20)
        assert time.monotonic() - started < 15  # the Ping's own look is 60 s away: the hub woke it
        assert result.status == "2" and result.changed_folder_ids == [contacts.id]


async def test_tasks_and_notes_both_ways(pim):
    c = _client(pim)
    by_type = _folders_by_type(c)
    tasks, notes = by_type[7][0], by_type[10][0]
    store, stack = await _dav(pim, "cal")
    async with stack:
        url = [x for x in await store.list_calendars() if x.url.rstrip("/").endswith("/calendar")][0].url
        # Phone -> CalDAV: a task due on a date, high importance, with a reminder.
        key, _ = await asyncio.to_thread(_primed, c, tasks.id)
        start, due = "2027-04-01T00:00:00.000Z", "2027-04-30T00:00:00.000Z"
        add = Element("AirSync", "Add", [_leaf("AirSync", "ClientId", "task-1"), Element("AirSync", "ApplicationData", [
            _leaf("Tasks", "Subject", "File the tax return"), _leaf("Tasks", "Importance", "2"),
            _leaf("Tasks", "UtcStartDate", start), _leaf("Tasks", "StartDate", start),
            _leaf("Tasks", "UtcDueDate", due), _leaf("Tasks", "DueDate", due),
            _leaf("Tasks", "Complete", "0"), _leaf("Tasks", "Sensitivity", "0"),
            _leaf("Tasks", "ReminderSet", "1"), _leaf("Tasks", "ReminderTime", "2027-04-29T08:00:00.000Z")])])
        answer = await asyncio.to_thread(_sync, c, tasks.id, key, add)
        [response] = answer.find("Responses").findall("Add")
        assert response.text_of("Status") == "1"
        todos = await store.fetch_objects(url, list(await store.object_etags(url, "VTODO")))
        [todo] = [t for t in todos if "File the tax return" in t.ical]
        assert "BEGIN:VTODO" in todo.ical and "PRIORITY:1" in todo.ical and "DUE;VALUE=DATE:20270430" in todo.ical
        assert "BEGIN:VALARM" in todo.ical
        # CalDAV completes it; the phone hears a Change with Complete 1.
        done = todo.ical.replace("END:VTODO", "STATUS:COMPLETED\r\nCOMPLETED:20270402T100000Z\r\nEND:VTODO")
        await store.replace_object(todo.href, done, todo.etag)
        change = await asyncio.to_thread(_sync, c, tasks.id, answer.text_of("SyncKey"))
        [changed] = change.find("Commands").findall("Change")
        assert changed.text_of("ServerId") == response.text_of("ServerId")
        assert changed.find("ApplicationData").text_of("Complete", "Tasks") == "1"

        # CalDAV -> phone: a note (VJOURNAL) reaches the Notes folder, and only that folder.
        note_uid = f"note-{uuid.uuid4()}"
        await store.put_event(url, "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//tests//EN\r\nBEGIN:VJOURNAL\r\n"
                                   f"UID:{note_uid}\r\nDTSTAMP:20261101T000000Z\r\nSUMMARY:Door code\r\n"
                                   "DESCRIPTION:4711 then the bell\r\nCATEGORIES:Home\r\nEND:VJOURNAL\r\n"
                                   "END:VCALENDAR\r\n")
        key, adds = await asyncio.to_thread(_primed, c, notes.id, [Element("AirSyncBase", "BodyPreference", [
            _leaf("AirSyncBase", "Type", "1")])])
        [note] = [a for a in adds if a.find("ApplicationData").text_of("Subject", "Notes") == "Door code"]
        data = note.find("ApplicationData")
        assert data.text_of("MessageClass", "Notes") == "IPM.StickyNote"
        assert data.find("Body", "AirSyncBase").text_of("Data", "AirSyncBase") == "4711 then the bell"
        assert [x.text for x in data.find("Categories", "Notes").findall("Category", "Notes")] == ["Home"]
        assert not [a for a in adds
                    if a.find("ApplicationData").text_of("Subject", "Notes") == "File the tax return"]
        # Phone -> CalDAV: the note changed on the phone.
        body = Element("AirSyncBase", "Body", [_leaf("AirSyncBase", "Type", "1"), _leaf("AirSyncBase", "Data", "0815")])
        home = Element("Notes", "Categories", [_leaf("Notes", "Category", "Home")])
        edit = Element("AirSync", "Change", [_leaf("AirSync", "ServerId", note.text_of("ServerId")),
                                             Element("AirSync", "ApplicationData", [
                                                 _leaf("Notes", "Subject", "Door code (new)"), body, home])])
        answer = await asyncio.to_thread(_sync, c, notes.id, key, edit)
        assert answer.find("Responses") is None  # a Change that worked has no response of its own
        stored = await store.find_uid(url, note_uid, "VJOURNAL")
        assert "SUMMARY:Door code (new)" in stored.ical and "DESCRIPTION:0815" in stored.ical


async def test_moving_a_contact_to_another_address_book(pim):
    from pyactivesync import FolderType
    c = _client(pim)
    contacts = _folders_by_type(c)[9][0]
    club = await asyncio.to_thread(c.create_folder, f"Club {uuid.uuid4().hex[:6]}", type=FolderType(14))
    key, _, _, _ = await asyncio.to_thread(_sync_all, c, contacts.id)
    club_key, _, _, _ = await asyncio.to_thread(_sync_all, c, club.id)
    added = await asyncio.to_thread(c.create_contact, contacts.id, key,
                                    Contact(first_name="Moving", last_name="Member"))
    new_id = await asyncio.to_thread(c.move_item, added.server_id, contacts.id, club.id)
    assert new_id.startswith(club.id + ":")
    store, stack = await _dav(pim, "card")
    async with stack:
        books = {b.name: b.url for b in await store.list_address_books()}
        moved = [x for x in await store.contacts(books[club.name]) if "Member" in x.vcard]
        assert len(moved) == 1
        assert not [x for x in await store.contacts(books["Contacts"]) if "FN:Moving Member" in x.vcard]
    # Neither folder sends the move back to the phone that made it.
    _, adds, changes, deletes = await asyncio.to_thread(_sync_all, c, contacts.id, added.sync_key)
    assert not [i for i in adds + changes if i.fields.get("Contacts.LastName") == "Member"] and not deletes
    _, adds, _, _ = await asyncio.to_thread(_sync_all, c, club.id, club_key)
    assert adds == []
